//! A PostgreSQL-aware scanner (standard_conforming_strings on, as pgstepup pins it): comments
//! (nested), quoted identifiers, standard, E'', U&'', B'' and X'' strings, dollar quotes,
//! numbers, parameters and operators. It splits a query text into statements where the server
//! would, finds each statement's leading keywords for the fallback classifier, and computes the
//! statement *shape* the decision cache is keyed on.

/// One lexical token, borrowing from the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Token<'a> {
    /// Unquoted identifier or keyword (not yet case-folded).
    Word(&'a str),
    /// `"..."` or `U&"..."`, with its quotes.
    QuotedIdent(&'a str),
    /// Any string literal, as written.
    Str(&'a str),
    /// A numeric literal.
    Number(&'a str),
    /// `$1`.
    Param(&'a str),
    /// Operators and punctuation other than `;`.
    Symbol(&'a str),
    /// Statement separator.
    Semicolon,
}

/// Text the scanner refuses: the caller must not derive a shape from it (and the statement
/// falls back to exact matching or to classification without the cache).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LexError {
    #[error("unterminated comment")]
    UnterminatedComment,
    #[error("unterminated quoted string or identifier")]
    Unterminated,
    #[error("a number directly followed by identifier characters reads differently across PostgreSQL versions")]
    AmbiguousNumber,
}

/// Iterates the tokens of a query text.
pub(crate) struct Lexer<'a> {
    src: &'a str,
    pos: usize,
}

impl<'a> Lexer<'a> {
    pub(crate) fn new(src: &'a str) -> Self {
        Lexer { src, pos: 0 }
    }

    /// Byte offset just after the last token returned.
    pub(crate) fn offset(&self) -> usize {
        self.pos
    }

    fn bytes(&self) -> &'a [u8] {
        self.src.as_bytes()
    }

    fn peek(&self, ahead: usize) -> Option<u8> {
        self.bytes().get(self.pos + ahead).copied()
    }

    fn skip_space_and_comments(&mut self) -> Result<(), LexError> {
        loop {
            match (self.peek(0), self.peek(1)) {
                (Some(b), _) if b.is_ascii_whitespace() => self.pos += 1,
                (Some(b'-'), Some(b'-')) => {
                    while let Some(b) = self.peek(0) {
                        self.pos += 1;
                        if b == b'\n' || b == b'\r' {
                            break;
                        }
                    }
                }
                (Some(b'/'), Some(b'*')) => {
                    self.pos += 2;
                    let mut depth = 1;
                    while depth > 0 {
                        match (self.peek(0), self.peek(1)) {
                            (Some(b'/'), Some(b'*')) => {
                                depth += 1;
                                self.pos += 2;
                            }
                            (Some(b'*'), Some(b'/')) => {
                                depth -= 1;
                                self.pos += 2;
                            }
                            (Some(_), _) => self.pos += 1,
                            (None, _) => return Err(LexError::UnterminatedComment),
                        }
                    }
                }
                _ => return Ok(()),
            }
        }
    }

    /// Reads a quoted run starting at the opening `quote`; `backslash` makes `\x` an escape.
    fn quoted(&mut self, quote: u8, backslash: bool) -> Result<(), LexError> {
        self.pos += 1;
        loop {
            match self.peek(0) {
                None => return Err(LexError::Unterminated),
                Some(b'\\') if backslash => self.pos += 2,
                Some(b) if b == quote => {
                    if self.peek(1) == Some(quote) {
                        self.pos += 2;
                    } else {
                        self.pos += 1;
                        return Ok(());
                    }
                }
                Some(_) => self.pos += 1,
            }
        }
    }

    /// `$tag$...$tag$` starting at `$`; `None` when this `$` does not open a dollar quote.
    fn dollar_quote(&mut self) -> Option<Result<(), LexError>> {
        let rest = &self.bytes()[self.pos + 1..];
        let tag_len = rest
            .iter()
            .take_while(|&&b| is_ident_char(b) && b != b'$')
            .count();
        if rest.get(tag_len) != Some(&b'$') || rest.first().is_some_and(u8::is_ascii_digit) {
            return None;
        }
        let tag = &self.src[self.pos..self.pos + tag_len + 2];
        let body_start = self.pos + tag.len();
        Some(match self.src[body_start..].find(tag) {
            Some(end) => {
                self.pos = body_start + end + tag.len();
                Ok(())
            }
            None => Err(LexError::Unterminated),
        })
    }

    fn number(&mut self) -> Result<(), LexError> {
        let digits = |l: &mut Self| {
            while l.peek(0).is_some_and(|b| b.is_ascii_digit()) {
                l.pos += 1;
            }
        };
        digits(self);
        if self.peek(0) == Some(b'.') && self.peek(1) != Some(b'.') {
            self.pos += 1;
            digits(self);
        }
        if matches!(self.peek(0), Some(b'e' | b'E')) {
            let sign = usize::from(matches!(self.peek(1), Some(b'+' | b'-')));
            if self.peek(1 + sign).is_some_and(|b| b.is_ascii_digit()) {
                self.pos += 1 + sign;
                digits(self);
            }
        }
        // `1_000`, `0x1F`, `123abc`: PostgreSQL 16 reads some of these as numbers, older
        // versions as a number followed by an alias. Never guess.
        if self.peek(0).is_some_and(is_ident_char) {
            return Err(LexError::AmbiguousNumber);
        }
        Ok(())
    }
}

/// Characters that may continue an unquoted identifier (high-bit bytes included, as PostgreSQL).
pub(crate) fn is_ident_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

fn is_operator_char(b: u8) -> bool {
    matches!(
        b,
        b'+' | b'-'
            | b'*'
            | b'/'
            | b'<'
            | b'>'
            | b'='
            | b'~'
            | b'!'
            | b'@'
            | b'#'
            | b'%'
            | b'^'
            | b'&'
            | b'|'
            | b'`'
            | b'?'
    )
}

impl<'a> Iterator for Lexer<'a> {
    type Item = Result<Token<'a>, LexError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Err(e) = self.skip_space_and_comments() {
            self.pos = self.src.len();
            return Some(Err(e));
        }
        let start = self.pos;
        let first = self.peek(0)?;
        let second = self.peek(1);
        let result = match first {
            b';' => {
                self.pos += 1;
                return Some(Ok(Token::Semicolon));
            }
            b'\'' => self
                .quoted(b'\'', false)
                .map(|_| Token::Str as fn(&'a str) -> Token<'a>),
            b'"' => self
                .quoted(b'"', false)
                .map(|_| Token::QuotedIdent as fn(&'a str) -> Token<'a>),
            b'e' | b'E' if second == Some(b'\'') => {
                self.pos += 1;
                self.quoted(b'\'', true)
                    .map(|_| Token::Str as fn(&'a str) -> Token<'a>)
            }
            b'b' | b'B' | b'x' | b'X' | b'n' | b'N' if second == Some(b'\'') => {
                self.pos += 1;
                self.quoted(b'\'', false)
                    .map(|_| Token::Str as fn(&'a str) -> Token<'a>)
            }
            b'u' | b'U' if second == Some(b'&') && matches!(self.peek(2), Some(b'\'' | b'"')) => {
                self.pos += 2;
                let quote = self.peek(0).expect("checked");
                self.quoted(quote, false).map(|_| {
                    if quote == b'"' {
                        Token::QuotedIdent as fn(&'a str) -> Token<'a>
                    } else {
                        Token::Str
                    }
                })
            }
            b'$' if second.is_some_and(|b| b.is_ascii_digit()) => {
                self.pos += 1;
                while self.peek(0).is_some_and(|b| b.is_ascii_digit()) {
                    self.pos += 1;
                }
                Ok(Token::Param as fn(&'a str) -> Token<'a>)
            }
            b'$' => match self.dollar_quote() {
                Some(r) => r.map(|_| Token::Str as fn(&'a str) -> Token<'a>),
                None => {
                    self.pos += 1;
                    Ok(Token::Symbol as fn(&'a str) -> Token<'a>)
                }
            },
            b'0'..=b'9' => self
                .number()
                .map(|_| Token::Number as fn(&'a str) -> Token<'a>),
            b'.' if second.is_some_and(|b| b.is_ascii_digit()) => self
                .number()
                .map(|_| Token::Number as fn(&'a str) -> Token<'a>),
            b if is_ident_start(b) => {
                while self.peek(0).is_some_and(is_ident_char) {
                    self.pos += 1;
                }
                Ok(Token::Word as fn(&'a str) -> Token<'a>)
            }
            b if is_operator_char(b) => {
                // An operator never swallows the start of a comment.
                while self.peek(0).is_some_and(is_operator_char)
                    && !matches!(
                        (self.peek(0), self.peek(1)),
                        (Some(b'-'), Some(b'-')) | (Some(b'/'), Some(b'*'))
                    )
                {
                    self.pos += 1;
                }
                if self.pos == start {
                    self.pos += 1;
                }
                Ok(Token::Symbol as fn(&'a str) -> Token<'a>)
            }
            b':' if second == Some(b':') => {
                self.pos += 2;
                Ok(Token::Symbol as fn(&'a str) -> Token<'a>)
            }
            _ => {
                // Punctuation, or any other single character (one whole UTF-8 scalar).
                let len = self.src[start..].chars().next().map_or(1, char::len_utf8);
                self.pos += len;
                Ok(Token::Symbol as fn(&'a str) -> Token<'a>)
            }
        };
        Some(match result {
            Ok(make) => Ok(make(&self.src[start..self.pos])),
            Err(e) => {
                self.pos = self.src.len();
                Err(e)
            }
        })
    }
}

/// Statements whose literals never change the decision (their kind comes from keywords and
/// names), so the shape may replace them. Everything else keeps its literals.
const LITERAL_FREE_LEADERS: &[&str] = &[
    "select", "insert", "update", "delete", "with", "values", "table", "merge",
];

/// Names whose literal arguments do change the decision.
const LITERAL_SENSITIVE_NAMES: &[&str] = &["set_config"];

/// The statement shape of a whole query text: tokens with comments and spacing dropped,
/// unquoted words case-folded, and literals replaced by `?` where they cannot matter.
/// Two texts with the same shape always get the same classification.
pub fn shape(sql: &str) -> Result<String, LexError> {
    let mut out = String::with_capacity(sql.len());
    shape_into(sql, &mut out)?;
    Ok(out)
}

/// [`shape`] into a caller-owned buffer (cleared first), so the hot path reuses one allocation.
/// One pass in the common case; a second only when a statement turns out to need its literals.
pub fn shape_into(sql: &str, out: &mut String) -> Result<(), LexError> {
    if write_shape(sql, out, true)? {
        return Ok(());
    }
    write_shape(sql, out, false).map(|_| ())
}

/// Writes the shape; with `hide_literals`, stops early and returns `false` as soon as a
/// statement whose literals may matter is seen.
fn write_shape(sql: &str, out: &mut String, hide_literals: bool) -> Result<bool, LexError> {
    out.clear();
    let mut at_start = true;
    for token in Lexer::new(sql) {
        let token = token?;
        if hide_literals && !literal_free(&token, &mut at_start) {
            return Ok(false);
        }
        if !out.is_empty() {
            out.push(' ');
        }
        match token {
            Token::Word(w) => {
                // Copied, then folded in place: far cheaper than pushing char by char.
                let start = out.len();
                out.push_str(w);
                out[start..].make_ascii_lowercase();
            }
            Token::Str(_) | Token::Number(_) if hide_literals => out.push('?'),
            Token::Str(s)
            | Token::Number(s)
            | Token::QuotedIdent(s)
            | Token::Param(s)
            | Token::Symbol(s) => out.push_str(s),
            Token::Semicolon => out.push(';'),
        }
    }
    Ok(true)
}

/// Whether, so far, every statement's literals are free to hide (see
/// [`LITERAL_FREE_LEADERS`] and [`LITERAL_SENSITIVE_NAMES`]).
fn literal_free(token: &Token<'_>, at_start: &mut bool) -> bool {
    match token {
        Token::Semicolon => {
            *at_start = true;
            true
        }
        Token::Word(w) if *at_start => {
            *at_start = false;
            LITERAL_FREE_LEADERS
                .iter()
                .any(|k| w.eq_ignore_ascii_case(k))
        }
        // A statement that starts with a parenthesis, a literal or anything else: keep.
        _ if *at_start => false,
        Token::Word(w) => !LITERAL_SENSITIVE_NAMES
            .iter()
            .any(|n| w.eq_ignore_ascii_case(n)),
        // Quoted or escaped identifiers could spell a sensitive name.
        Token::QuotedIdent(q) => {
            q.starts_with('"')
                && !LITERAL_SENSITIVE_NAMES
                    .iter()
                    .any(|n| q.trim_matches('"') == *n)
        }
        _ => true,
    }
}

/// The statements of a query text, as source slices (comments inside kept), empty ones
/// dropped. `None` when the text does not scan.
pub(crate) fn split_statements(sql: &str) -> Option<Vec<&str>> {
    let mut lexer = Lexer::new(sql);
    let mut statements = Vec::new();
    let mut start = 0;
    let mut seen_token = false;
    while let Some(token) = lexer.next() {
        match token.ok()? {
            Token::Semicolon => {
                if seen_token {
                    statements.push(sql[start..lexer.pos - 1].trim());
                }
                start = lexer.pos;
                seen_token = false;
            }
            _ => seen_token = true,
        }
    }
    if seen_token {
        statements.push(sql[start..].trim());
    }
    Some(statements)
}

/// The first `n` words of a statement, lower-cased (comments skipped).
pub(crate) fn leading_words(statement: &str, n: usize) -> Vec<String> {
    Lexer::new(statement)
        .map_while(|t| match t {
            Ok(Token::Word(w)) => Some(w.to_ascii_lowercase()),
            _ => None,
        })
        .take(n)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(sql: &str) -> Vec<Token<'_>> {
        Lexer::new(sql).collect::<Result<_, _>>().unwrap()
    }

    #[test]
    fn strings_comments_and_dollar_quotes() {
        assert_eq!(
            tokens("SELECT 'a''b', E'c\\'d', $x$ ; $y$ $x$ /* /* nested */ ; */ -- ;\n;"),
            vec![
                Token::Word("SELECT"),
                Token::Str("'a''b'"),
                Token::Symbol(","),
                Token::Str("E'c\\'d'"),
                Token::Symbol(","),
                Token::Str("$x$ ; $y$ $x$"),
                Token::Semicolon,
            ]
        );
        // With standard_conforming_strings on, a backslash does not escape the quote.
        assert_eq!(
            split_statements("SELECT 'a\\'; DELETE FROM t; --'").unwrap(),
            vec!["SELECT 'a\\'", "DELETE FROM t"]
        );
        assert_eq!(
            tokens("a$b $1 $$x$$")[..2],
            [Token::Word("a$b"), Token::Param("$1")]
        );
        assert_eq!(
            tokens("U&\"d\\0061ta\" U&'x'"),
            vec![Token::QuotedIdent("U&\"d\\0061ta\""), Token::Str("U&'x'")]
        );
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        for bad in [
            "SELECT 'abc",
            "SELECT $q$ abc",
            "/* /* */",
            "SELECT \"x",
            "SELECT 1_000",
            "SELECT 0x1F",
        ] {
            assert!(Lexer::new(bad).any(|t| t.is_err()), "{bad}");
            assert!(shape(bad).is_err());
        }
    }

    #[test]
    fn shapes_hide_literals_only_where_they_cannot_matter() {
        assert_eq!(
            shape("select * FROM t WHERE id = 42 AND name = 'x' -- c").unwrap(),
            shape("SELECT  *  from T where ID = 7 and NAME = E'y\\'z' /* c */").unwrap()
        );
        assert_eq!(
            shape("SELECT 1; SELECT 'a'").unwrap(),
            "select ? ; select ?"
        );
        assert_ne!(shape("SET x = 'a'").unwrap(), shape("SET x = 'b'").unwrap());
        assert_ne!(
            shape("SELECT set_config('a', 'b', false)").unwrap(),
            shape("SELECT set_config('c', 'd', false)").unwrap()
        );
        assert_ne!(
            shape("SELECT 1; SET x = 1").unwrap(),
            shape("SELECT 1; SET x = 2").unwrap()
        );
        assert_ne!(shape("SELECT \"T\"").unwrap(), shape("SELECT t").unwrap());
        assert_eq!(shape("").unwrap(), "");
    }

    #[test]
    fn splits_and_reads_leading_words() {
        assert_eq!(
            split_statements(";; SELECT 1 ; /* x */ ;\nDO $$ BEGIN; END $$;").unwrap(),
            vec!["SELECT 1", "DO $$ BEGIN; END $$"]
        );
        assert_eq!(
            leading_words("/* c */ VACUUM (VERBOSE) t", 3),
            vec!["vacuum"]
        );
        assert_eq!(
            leading_words("alter  System set x = 1", 2),
            vec!["alter", "system"]
        );
    }
}
