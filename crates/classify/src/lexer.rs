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
                (Some(b), _) if is(b, SPACE) => self.pos += 1,
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

/// Byte classes, looked up in one table: the scanner's inner loops test one bit per byte.
const IDENT_CHAR: u8 = 1;
const IDENT_START: u8 = 2;
const OPERATOR: u8 = 4;
const SPACE: u8 = 8;

static CLASSES: [u8; 256] = classes();

const fn classes() -> [u8; 256] {
    let mut table = [0u8; 256];
    let mut b = 0usize;
    while b < 256 {
        let c = b as u8;
        let mut class = 0;
        // High-bit bytes continue and start identifiers, as in PostgreSQL.
        if c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80 {
            class |= IDENT_CHAR;
        }
        if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 {
            class |= IDENT_START;
        }
        if matches!(
            c,
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
        ) {
            class |= OPERATOR;
        }
        if c.is_ascii_whitespace() {
            class |= SPACE;
        }
        table[b] = class;
        b += 1;
    }
    table
}

fn is(b: u8, class: u8) -> bool {
    CLASSES[b as usize] & class != 0
}

/// Characters that may continue an unquoted identifier (high-bit bytes included, as PostgreSQL).
pub(crate) fn is_ident_char(b: u8) -> bool {
    is(b, IDENT_CHAR)
}

/// What the token being scanned turned out to be; the slice is cut once, at the end.
#[derive(Clone, Copy)]
enum Scanned {
    Word,
    QuotedIdent,
    Str,
    Number,
    Param,
    Symbol,
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
        let scanned = match first {
            b';' => {
                self.pos += 1;
                return Some(Ok(Token::Semicolon));
            }
            _ if is(first, IDENT_START) && second != Some(b'\'') && second != Some(b'&') => {
                // The common case first: a word that is not a string or identifier prefix.
                self.pos += 1;
                let rest = &self.bytes()[self.pos..];
                self.pos += rest.iter().take_while(|&&b| is(b, IDENT_CHAR)).count();
                Ok(Scanned::Word)
            }
            b'\'' => self.quoted(b'\'', false).map(|_| Scanned::Str),
            b'"' => self.quoted(b'"', false).map(|_| Scanned::QuotedIdent),
            b'e' | b'E' if second == Some(b'\'') => {
                self.pos += 1;
                self.quoted(b'\'', true).map(|_| Scanned::Str)
            }
            b'b' | b'B' | b'x' | b'X' | b'n' | b'N' if second == Some(b'\'') => {
                self.pos += 1;
                self.quoted(b'\'', false).map(|_| Scanned::Str)
            }
            b'u' | b'U' if second == Some(b'&') && matches!(self.peek(2), Some(b'\'' | b'"')) => {
                self.pos += 2;
                let quote = self.peek(0).expect("checked");
                self.quoted(quote, false).map(|_| {
                    if quote == b'"' {
                        Scanned::QuotedIdent
                    } else {
                        Scanned::Str
                    }
                })
            }
            b'$' if second.is_some_and(|b| b.is_ascii_digit()) => {
                self.pos += 1;
                while self.peek(0).is_some_and(|b| b.is_ascii_digit()) {
                    self.pos += 1;
                }
                Ok(Scanned::Param)
            }
            b'$' => match self.dollar_quote() {
                Some(r) => r.map(|_| Scanned::Str),
                None => {
                    self.pos += 1;
                    Ok(Scanned::Symbol)
                }
            },
            b'0'..=b'9' => self.number().map(|_| Scanned::Number),
            b'.' if second.is_some_and(|b| b.is_ascii_digit()) => {
                self.number().map(|_| Scanned::Number)
            }
            _ if is(first, IDENT_START) => {
                // A prefix letter (`e`, `u`, ...) not followed by its quote: a plain word.
                self.pos += 1;
                while self.peek(0).is_some_and(is_ident_char) {
                    self.pos += 1;
                }
                Ok(Scanned::Word)
            }
            _ if is(first, OPERATOR) => {
                // An operator never swallows the start of a comment.
                while self.peek(0).is_some_and(|b| is(b, OPERATOR))
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
                Ok(Scanned::Symbol)
            }
            b':' if second == Some(b':') => {
                self.pos += 2;
                Ok(Scanned::Symbol)
            }
            _ => {
                // Punctuation, or any other single character (one whole UTF-8 scalar).
                let len = self.src[start..].chars().next().map_or(1, char::len_utf8);
                self.pos += len;
                Ok(Scanned::Symbol)
            }
        };
        Some(match scanned {
            Ok(scanned) => {
                let text = &self.src[start..self.pos];
                Ok(match scanned {
                    Scanned::Word => Token::Word(text),
                    Scanned::QuotedIdent => Token::QuotedIdent(text),
                    Scanned::Str => Token::Str(text),
                    Scanned::Number => Token::Number(text),
                    Scanned::Param => Token::Param(text),
                    Scanned::Symbol => Token::Symbol(text),
                })
            }
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
const LITERAL_SENSITIVE_NAMES: &[&str] = &[
    "set_config",
    // Read the table their first argument names.
    "table_to_xml",
    "table_to_xml_and_xmlschema",
    // Read or write the sequence their first argument names.
    "nextval",
    "setval",
    "currval",
    "pg_sequence_last_value",
];

/// The statement shape of a whole query text: tokens with comments and spacing dropped,
/// unquoted words case-folded, and literals replaced by `?` where they cannot matter.
/// Two texts with the same shape always get the same classification.
pub fn shape(sql: &str) -> Result<String, LexError> {
    let mut out = String::with_capacity(sql.len());
    shape_into(sql, &mut out)?;
    Ok(out)
}

/// [`shape`] into a caller-owned buffer (cleared first), so the hot path reuses one allocation.
/// Typical statements take one tight pass ([`fast_shape`]); anything unusual takes the full
/// scanner, once, or twice when a statement turns out to need its literals.
pub fn shape_into(sql: &str, out: &mut String) -> Result<(), LexError> {
    if fast_shape(sql, out, |_, _, _| {}).is_some() {
        return Ok(());
    }
    full_shape_into(sql, out)
}

/// The full scanner's shape: literals hidden where they cannot matter.
fn full_shape_into(sql: &str, out: &mut String) -> Result<(), LexError> {
    if write_shape(sql, out, true)? {
        return Ok(());
    }
    write_shape(sql, out, false).map(|_| ())
}

/// The longest text a [`ShapeTemplate`] keeps.
pub const MAX_TEMPLATE_TEXT: usize = 512;

/// A shape buffer larger than this is not reused for the next text.
const MAX_KEPT_SHAPE_BUFFER: usize = 4 * 1024;

/// A literal the fast path hides, as a [`ShapeTemplate`] lets it vary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Literal {
    /// A run of digits.
    Integer,
    /// A standard string, `'...'` (a doubled quote inside is an escaped one).
    Str,
}

/// A text the fast path shaped, its shape, and where its hidden integer and string literals
/// lie. A text that differs from it only inside those literals (each replaced by another run
/// of digits, or another standard string) has the same shape: this is checked by comparing
/// bytes, with no scan. It is how statements built by interpolating values (pgbench
/// `-M simple`, ORMs and drivers that bind parameters on the client) skip the scanner.
#[derive(Debug, Default, Clone)]
pub struct ShapeTemplate {
    text: Vec<u8>,
    literals: Vec<(u16, u16, Literal)>,
    shape: String,
    /// Whether `text` and `literals` describe the text `shape` was made from.
    matchable: bool,
}

impl ShapeTemplate {
    /// Whether `sql` has the shape of the template's text (false when unsure).
    pub fn same_shape(&self, sql: &str) -> bool {
        if !self.matchable {
            return false;
        }
        let (old, new) = (self.text.as_slice(), sql.as_bytes());
        let (mut at_old, mut at_new) = (0, 0);
        for &(start, end, kind) in &self.literals {
            let (start, end) = (usize::from(start), usize::from(end));
            let same = &old[at_old..start];
            if new.get(at_new..at_new + same.len()) != Some(same) {
                return false;
            }
            at_new += same.len();
            at_new = match kind {
                Literal::Integer => {
                    let digits = new[at_new..]
                        .iter()
                        .take_while(|b| b.is_ascii_digit())
                        .count();
                    if digits == 0 {
                        return false;
                    }
                    at_new + digits
                }
                Literal::Str => {
                    if new.get(at_new) != Some(&b'\'') {
                        return false;
                    }
                    match quoted_end(new, at_new) {
                        Some(end) => end,
                        None => return false,
                    }
                }
            };
            at_old = end;
        }
        new.get(at_new..) == Some(&old[at_old..])
    }

    /// The shape of the text last given to [`shape_into_template`] (whether or not the
    /// template can match others).
    pub fn shape(&self) -> &str {
        &self.shape
    }

    /// Whether the template can match texts (the fast path took its text, short enough).
    pub fn is_matchable(&self) -> bool {
        self.matchable
    }

    /// Makes this template a copy of `other`, reusing its own buffers.
    pub fn copy_from(&mut self, other: &ShapeTemplate) {
        self.text.clone_from(&other.text);
        self.literals.clone_from(&other.literals);
        self.shape.clone_from(&other.shape);
        self.matchable = other.matchable;
    }
}

/// A seeded hash of `sql` blind to the literals a [`ShapeTemplate`] lets vary: every text a
/// template matches has the template's own text's key, so a cache keyed on it finds a
/// template to compare with without scanning. Runs of digits that do not continue a word are
/// left out, and so is everything from a single quote to the quote closing it (a doubled
/// quote inside included). Texts with other shapes may share a key (`t1` and `t2`, say): the
/// template's comparison tells them apart.
pub fn text_key(sql: &[u8], seed: u64) -> u64 {
    // One pass, eight bytes at a time: a word with none of those bytes is mixed in whole; in
    // one with some, the bytes before the first are, and the literal is skipped. Where words
    // start depends only on the bytes outside the literals, as the key must.
    let mut key = KeyHasher(seed);
    let mut at = 0;
    while at < sql.len() {
        let x = load_at(sql, at);
        let y = x & !HIGH_BITS;
        let found = (within(y, b'0', b'9') | equal(y, b'\'')) & !x & HIGH_BITS;
        let before = (found.trailing_zeros() / 8) as usize;
        let in_text = sql.len() - at;
        if before >= in_text.min(8) {
            key.mix(x);
            at += 8;
            continue;
        }
        if before > 0 {
            key.mix(x & (u64::MAX >> (64 - 8 * before)));
        }
        let found = at + before;
        at = if sql[found] == b'\'' {
            key.mix(KeyHasher::LEFT_OUT - Literal::Str as u64);
            quoted_end(sql, found).unwrap_or(sql.len())
        } else if found > 0 && is(sql[found - 1], IDENT_CHAR) {
            // A digit inside a name: part of the text.
            key.mix(u64::from(sql[found]) << 8);
            found + 1
        } else {
            key.mix(KeyHasher::LEFT_OUT - Literal::Integer as u64);
            found
                + sql[found..]
                    .iter()
                    .take_while(|b| b.is_ascii_digit())
                    .count()
        };
    }
    key.0
}

/// The eight bytes at `at` as a little-endian word, zeros past the end; near the end of a
/// text of eight bytes or more, one load of its last eight bytes, shifted (no byte loop).
fn load_at(bytes: &[u8], at: usize) -> u64 {
    if at + 8 <= bytes.len() {
        return u64::from_le_bytes(bytes[at..at + 8].try_into().expect("eight bytes"));
    }
    if bytes.len() >= 8 {
        let last = bytes.len() - 8;
        let word = u64::from_le_bytes(bytes[last..].try_into().expect("eight bytes"));
        return word >> (8 * (at - last));
    }
    load(&bytes[at..])
}

/// The mixing behind [`text_key`]: a folded multiply per word (a collision only costs a
/// comparison that fails, so speed beats strength here; the seed is per process).
struct KeyHasher(u64);

impl KeyHasher {
    const MULTIPLIER: u64 = 0x9e37_79b9_7f4a_7c15;
    /// Less the literal's kind, stands for a literal left out: no word of UTF-8 text is one
    /// of these (bytes 0xfe and 0xff never occur in it).
    const LEFT_OUT: u64 = u64::MAX;

    fn mix(&mut self, word: u64) {
        let product = u128::from(self.0 ^ word) * u128::from(Self::MULTIPLIER);
        self.0 = (product as u64) ^ ((product >> 64) as u64);
    }
}

/// Shapes `sql` into `template`: its shape always, and what lets it match texts of the same
/// shape when the fast path took it and it is short enough to keep (otherwise it matches
/// nothing).
pub fn shape_into_template(sql: &str, template: &mut ShapeTemplate) -> Result<(), LexError> {
    if template.shape.capacity() > MAX_KEPT_SHAPE_BUFFER {
        // Grown by one long text: a session keeps several templates, each only small.
        template.shape = String::new();
    }
    template.matchable = false;
    template.literals.clear();
    let keep = sql.len() <= MAX_TEMPLATE_TEXT;
    let literals = &mut template.literals;
    let fast = fast_shape(sql, &mut template.shape, |kind, start, end| {
        if keep {
            // Both fit: the text is at most MAX_TEMPLATE_TEXT bytes long.
            literals.push((start as u16, end as u16, kind));
        }
    });
    if fast.is_none() {
        return full_shape_into(sql, &mut template.shape);
    }
    if keep {
        template.text.clear();
        template.text.extend_from_slice(sql.as_bytes());
        template.matchable = true;
    }
    Ok(())
}

/// The shape of the common case in one pass over the bytes, without tokens: ASCII words,
/// standard strings, plain numbers, `$n` parameters, quoted identifiers, operators,
/// punctuation and `--` comments, in statements whose literals can all be hidden. `None` at
/// the first thing outside that (the full scanner then decides, and gives the same shape for
/// everything this accepts: a test holds the two to it). `literal` is told where each hidden
/// integer or string literal lies.
fn fast_shape(
    sql: &str,
    out: &mut String,
    literal: impl FnMut(Literal, usize, usize),
) -> Option<()> {
    // Built as bytes: copying and folding runs of bytes is far cheaper than pushing chars.
    let mut shape = ShapeOut::new(std::mem::take(out).into_bytes(), sql.len());
    let shaped = fast_shape_bytes(sql, &mut shape, literal);
    let bytes = shape.finish();
    debug_assert!(std::str::from_utf8(&bytes).is_ok());
    // SAFETY: every byte written is ASCII (separators, `?`, `;`, `::`, operators, folded ASCII
    // words) except quoted identifiers, which are copied whole from `sql` (valid UTF-8) between
    // ASCII quotes; bytes a word's 8-byte store wrote past its end are overwritten by the next
    // piece or cut off by `finish`. Checking it again cost 5% of the scan.
    *out = unsafe { String::from_utf8_unchecked(bytes) };
    shaped
}

fn fast_shape_bytes(
    sql: &str,
    out: &mut ShapeOut,
    mut literal: impl FnMut(Literal, usize, usize),
) -> Option<()> {
    let bytes = sql.as_bytes();
    let len = bytes.len();
    let at = |i: usize| bytes.get(i).copied().unwrap_or(0);
    let mut at_start = true;
    let mut i = 0;
    while i < len {
        let b = bytes[i];
        if is(b, SPACE) {
            i += 1;
            continue;
        }
        if b == b'-' && at(i + 1) == b'-' {
            while i < len && !matches!(bytes[i], b'\n' | b'\r') {
                i += 1;
            }
            continue;
        }
        let start = i;
        if b == b';' {
            out.separate();
            out.byte(b';');
            at_start = true;
            i += 1;
            continue;
        }
        if b < 0x80 && is(b, IDENT_START) {
            i += ascii_word_len(&bytes[i..]);
            // Non-ASCII letters, and prefixes such as E'..', U&'..': the full scanner.
            if at(i) >= 0x80 || at(i) == b'\'' || (at(i) == b'&' && i - start == 1) {
                return None;
            }
            let word = &sql[start..i];
            if at_start {
                at_start = false;
                if !LITERAL_FREE_LEADERS
                    .iter()
                    .any(|k| word.eq_ignore_ascii_case(k))
                {
                    return None;
                }
            } else if LITERAL_SENSITIVE_NAMES
                .iter()
                .any(|n| word.eq_ignore_ascii_case(n))
            {
                return None;
            }
            out.separate();
            out.folded(&bytes[start..], word.len());
            continue;
        }
        if at_start {
            return None;
        }
        match b {
            b'\'' => {
                i = quoted_end(bytes, i)?;
                literal(Literal::Str, start, i);
                out.separate();
                out.byte(b'?');
            }
            b'"' => {
                i = quoted_end(bytes, i)?;
                let quoted = &sql[start..i];
                if LITERAL_SENSITIVE_NAMES
                    .iter()
                    .any(|n| quoted.trim_matches('"') == *n)
                {
                    return None;
                }
                out.separate();
                out.bytes(quoted.as_bytes());
            }
            b'0'..=b'9' => {
                while at(i).is_ascii_digit() {
                    i += 1;
                }
                let integer_end = i;
                if at(i) == b'.' && at(i + 1) != b'.' {
                    i += 1;
                    while at(i).is_ascii_digit() {
                        i += 1;
                    }
                }
                // Exponents and digits run into letters: the full scanner.
                if is(at(i), IDENT_CHAR) {
                    return None;
                }
                if i == integer_end {
                    literal(Literal::Integer, start, i);
                }
                out.separate();
                out.byte(b'?');
            }
            b'$' if at(i + 1).is_ascii_digit() => {
                i += 1;
                while at(i).is_ascii_digit() {
                    i += 1;
                }
                out.separate();
                out.bytes(&bytes[start..i]);
            }
            b':' if at(i + 1) == b':' => {
                i += 2;
                out.separate();
                out.bytes(b"::");
            }
            _ if is(b, OPERATOR) => {
                if b == b'/' && at(i + 1) == b'*' {
                    return None;
                }
                while i < len
                    && is(bytes[i], OPERATOR)
                    && !matches!((bytes[i], at(i + 1)), (b'-', b'-') | (b'/', b'*'))
                {
                    i += 1;
                }
                out.separate();
                out.bytes(&bytes[start..i]);
            }
            b'.' if at(i + 1).is_ascii_digit() => return None,
            b'$' | 0x80.. => return None,
            _ => {
                i += 1;
                out.separate();
                out.bytes(&bytes[start..i]);
            }
        }
    }
    Some(())
}

/// Just past the quote that closes the run opened at `open` (a doubled quote is an escaped
/// one); `None` when it is not closed.
fn quoted_end(bytes: &[u8], open: usize) -> Option<usize> {
    let quote = bytes[open];
    let mut i = open + 1;
    loop {
        match *bytes.get(i)? {
            b if b == quote && bytes.get(i + 1) == Some(&quote) => i += 2,
            b if b == quote => return Some(i + 1),
            _ => i += 1,
        }
    }
}

/// Tokens in a shape are separated by one space.
fn separate(out: &mut String) {
    if !out.is_empty() {
        out.push(' ');
    }
}

/// Eight bytes at a time (SWAR): a word of the typical statement is two or three steps, not
/// a dozen table lookups.
const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH_BITS: u64 = 0x8080_8080_8080_8080;

/// The high bit of each byte of `y` (whose bytes are all below 0x80) set where the byte is at
/// least `c`.
fn at_least(y: u64, c: u8) -> u64 {
    y.wrapping_add(ONES * u64::from(0x80 - c)) & HIGH_BITS
}

/// Per byte, high bit set where the byte lies in `lo..=hi`.
fn within(y: u64, lo: u8, hi: u8) -> u64 {
    at_least(y, lo) & !at_least(y, hi + 1)
}

/// Up to eight bytes as a little-endian word, zero-padded (zero is no identifier byte).
fn load(bytes: &[u8]) -> u64 {
    if let Some(eight) = bytes.first_chunk::<8>() {
        return u64::from_le_bytes(*eight);
    }
    let mut word = [0u8; 8];
    for (to, from) in word.iter_mut().zip(bytes) {
        *to = *from;
    }
    u64::from_le_bytes(word)
}

/// Per byte of `x` (all below 0x80), high bit set where the byte equals `c`.
fn equal(x: u64, c: u8) -> u64 {
    let diff = x ^ (ONES * u64::from(c));
    !diff.wrapping_add(ONES * 0x7f) & HIGH_BITS
}

/// The length of the run of ASCII identifier characters (`[A-Za-z0-9_$]`) `bytes` starts with.
fn ascii_word_len(bytes: &[u8]) -> usize {
    let mut at = 0;
    while at < bytes.len() {
        let x = load(&bytes[at..]);
        let y = x & !HIGH_BITS;
        // Setting bit 5 maps exactly the upper-case letters onto the lower-case ones.
        let ident = (within(y | (ONES * 0x20), b'a', b'z')
            | within(y, b'0', b'9')
            | equal(y, b'_')
            | equal(y, b'$'))
            & !x;
        let stops = !ident & HIGH_BITS;
        if stops != 0 {
            return (at + stops.trailing_zeros() as usize / 8).min(bytes.len());
        }
        at += 8;
    }
    bytes.len()
}

/// The fast path's output: a buffer sized once for the longest shape a text can have and
/// written by index, so a token costs no capacity check and a folded word is whole 8-byte
/// stores.
struct ShapeOut {
    buf: Vec<u8>,
    len: usize,
}

impl ShapeOut {
    /// Every token adds at most its own length and one separator, and a word is written eight
    /// bytes at a time (up to seven past its end, overwritten or cut off later): `2n + 8`.
    fn new(mut buf: Vec<u8>, text_len: usize) -> Self {
        let room = 2 * text_len + 8;
        if buf.len() < room {
            buf.resize(room, 0);
        }
        ShapeOut { buf, len: 0 }
    }

    /// Tokens in a shape are separated by one space.
    fn separate(&mut self) {
        if self.len > 0 {
            self.byte(b' ');
        }
    }

    fn byte(&mut self, b: u8) {
        self.buf[self.len] = b;
        self.len += 1;
    }

    fn bytes(&mut self, bytes: &[u8]) {
        self.buf[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }

    /// The ASCII word of `word_len` bytes that `text` starts with, folded to lower case,
    /// eight bytes at a time (read past the word where the text goes on: whole loads are
    /// cheap, padded ones are not).
    fn folded(&mut self, text: &[u8], word_len: usize) {
        let mut at = 0;
        while at < word_len {
            let x = load(&text[at..]);
            let upper = within(x & !HIGH_BITS, b'A', b'Z') & !x;
            let to = self.len + at;
            self.buf[to..to + 8].copy_from_slice(&(x | (upper >> 2)).to_le_bytes());
            at += 8;
        }
        self.len += word_len;
    }

    fn finish(mut self) -> Vec<u8> {
        self.buf.truncate(self.len);
        self.buf
    }
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
        separate(out);
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

/// `sql` with each `OPERATOR(pg_catalog.op)` written as the plain `op`, for a parser that
/// lacks the explicit form in some places (before `ANY`/`ALL`, as pg_dump writes its pattern
/// lookups); the text sent to the server is never this. The same operator either way for the
/// classifier, which takes a plain operator for PostgreSQL's own. `None` when the text has no
/// such operator or does not scan.
pub(crate) fn builtin_operators_spelled_plainly(sql: &str) -> Option<String> {
    let tokens: Vec<Token<'_>> = Lexer::new(sql).collect::<Result<_, _>>().ok()?;
    let start_of = |token: &Token<'_>| -> Option<usize> {
        let text = match token {
            Token::Word(t)
            | Token::QuotedIdent(t)
            | Token::Str(t)
            | Token::Number(t)
            | Token::Param(t)
            | Token::Symbol(t) => t,
            Token::Semicolon => return None,
        };
        Some(text.as_ptr() as usize - sql.as_ptr() as usize)
    };
    let mut out = String::with_capacity(sql.len());
    let mut copied = 0;
    for window in tokens.windows(6) {
        let [Token::Word(keyword), Token::Symbol("("), Token::Word(schema), Token::Symbol("."), Token::Symbol(operator), close @ Token::Symbol(")")] =
            window
        else {
            continue;
        };
        if !keyword.eq_ignore_ascii_case("operator") || !schema.eq_ignore_ascii_case("pg_catalog") {
            continue;
        }
        let (from, to) = (start_of(&window[0])?, start_of(close)? + 1);
        out.push_str(&sql[copied..from]);
        out.push(' ');
        out.push_str(operator);
        out.push(' ');
        copied = to;
    }
    if copied == 0 {
        return None;
    }
    out.push_str(&sql[copied..]);
    Some(out)
}

/// Where each statement of a query text ends: the byte offset just after its semicolon, or
/// the text's end for a last statement without one; empty statements left out. `None` when
/// the text does not scan.
pub fn statement_ends(sql: &str) -> Option<Vec<usize>> {
    let mut lexer = Lexer::new(sql);
    let mut ends = Vec::new();
    let mut seen_token = false;
    while let Some(token) = lexer.next() {
        match token.ok()? {
            Token::Semicolon => {
                if seen_token {
                    ends.push(lexer.pos);
                }
                seen_token = false;
            }
            _ => seen_token = true,
        }
    }
    if seen_token {
        ends.push(sql.len());
    }
    Some(ends)
}

/// The first `n` words of a statement, lower-cased (comments skipped).
pub fn leading_words(statement: &str, n: usize) -> Vec<String> {
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
            shape("SELECT table_to_xml('orders', true, true, '')").unwrap(),
            shape("SELECT pg_catalog.TABLE_TO_XML('customers', true, true, '')").unwrap()
        );
        assert_ne!(
            shape("SELECT 1; SET x = 1").unwrap(),
            shape("SELECT 1; SET x = 2").unwrap()
        );
        assert_ne!(shape("SELECT \"T\"").unwrap(), shape("SELECT t").unwrap());
        assert_eq!(shape("").unwrap(), "");
    }

    /// The full scanner's shape, bypassing the fast path.
    fn full_shape(sql: &str) -> Result<String, LexError> {
        let mut out = String::new();
        if !write_shape(sql, &mut out, true)? {
            write_shape(sql, &mut out, false)?;
        }
        Ok(out)
    }

    #[test]
    fn fast_shape_takes_typical_statements() {
        for sql in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;",
            "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2",
            "select \"Id\", name from \"Orders\" o -- note\n where o.total >= 10.5 and o.tag = 'it''s'",
            "INSERT INTO t (a, b) VALUES (1, 'x'), (2, 'y') RETURNING a::text",
        ] {
            let mut out = String::new();
            assert!(fast_shape(sql, &mut out, |_, _, _| {}).is_some(), "{sql}");
            assert_eq!(Ok(out), full_shape(sql), "{sql}");
        }
    }

    /// Pieces random statements are made of.
    const PIECES: &[&str] = &[
        "SELECT",
        "select",
        "insert",
        "UPDATE",
        "with",
        "set",
        "SET",
        "show",
        "set_config",
        "\"set_config\"",
        "table_to_xml",
        "\"a\"\"b\"",
        "t",
        "e",
        "E",
        "u",
        "U",
        "x",
        "n",
        "b",
        "a$b",
        "é",
        "'s'",
        "'a''b'",
        "''",
        "'日本'",
        "'open",
        "\"open",
        "1",
        "42",
        "3.14",
        "1.",
        ".5",
        "1e5",
        "1_000",
        "0x1F",
        "12abc",
        "1..2",
        "$1",
        "$12",
        "$",
        "$$ q $$",
        "$a$ x $a$",
        "&",
        "'",
        "\"",
        "=",
        "<>",
        "+-",
        "--",
        "-- c\n",
        "/*",
        "/* c */",
        "*/",
        "::",
        ":",
        ";",
        ",",
        "(",
        ")",
        "[",
        "]",
        ".",
        " ",
        "\n",
        "\t",
        "\u{b}",
        "@",
        "#",
        "?",
        "|",
        "\\",
        "~",
        "%",
    ];

    /// A small deterministic PRNG (xorshift), so failures reproduce.
    struct Random(u64);

    impl Random {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        /// One of `leaders`, then up to `pieces` random [`PIECES`], some spaced.
        fn statement(&mut self, leaders: &[&str], pieces: u64) -> String {
            let mut sql = String::from(leaders[self.next() as usize % leaders.len()]);
            for _ in 0..(self.next() % pieces) {
                sql.push_str(PIECES[self.next() as usize % PIECES.len()]);
                if !self.next().is_multiple_of(3) {
                    sql.push(' ');
                }
            }
            sql
        }
    }

    #[test]
    fn fast_shape_agrees_with_the_full_scanner() {
        let mut random = Random(0x2545_f491_4f6c_dd1d);
        let (mut taken, mut out) = (0, String::new());
        for _ in 0..50_000 {
            let sql = random.statement(&["SELECT ", "select ", "UPDATE ", "with ", "", "SET "], 12);
            if fast_shape(&sql, &mut out, |_, _, _| {}).is_some() {
                taken += 1;
                assert_eq!(Ok(out.clone()), full_shape(&sql), "{sql:?}");
            }
        }
        assert!(taken > 5_000, "the fast path took only {taken} texts");
    }

    #[test]
    fn a_template_matches_only_texts_of_its_shape() {
        let mut template = ShapeTemplate::default();
        let sql = "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;";
        shape_into_template(sql, &mut template).unwrap();
        assert_eq!(template.shape(), shape(sql).unwrap());
        for same in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 7;",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 1234567890123;",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;",
        ] {
            assert!(template.same_shape(same), "{same}");
        }
        for other in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 7.5;",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 7e5;",
            "SELECT abalance FROM pgbench_accounts WHERE aid = ;",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 48213",
            "SELECT abalance FROM pgbench_accounts1 WHERE aid = 48213;",
            "SELECT abalance FROM pgbench_accounts WHERE aid = $1;",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 4821x;",
            "SELECT abalance FROM pgbench_accounts WHERE aid = '7';",
        ] {
            assert!(!template.same_shape(other), "{other}");
        }
        // Standard strings vary too, whatever they hold; other literals do not.
        shape_into_template(
            "SELECT * FROM t WHERE name = 'bob' AND n > 2",
            &mut template,
        )
        .unwrap();
        for same in [
            "SELECT * FROM t WHERE name = '' AND n > 2",
            "SELECT * FROM t WHERE name = 'it''s; DELETE FROM t' AND n > 25",
            "SELECT * FROM t WHERE name = '日本' AND n > 2",
        ] {
            assert!(template.same_shape(same), "{same}");
            assert_eq!(shape(same).as_deref(), Ok(template.shape()), "{same}");
        }
        for other in [
            "SELECT * FROM t WHERE name = E'bob' AND n > 2",
            "SELECT * FROM t WHERE name = 7 AND n > 2",
            "SELECT * FROM t WHERE name = 'bob' AND n > 2'",
            "SELECT * FROM t WHERE name = 'bob AND n > 2",
            "SELECT * FROM t WHERE name = 'a' 'b' AND n > 2",
            "SELECT * FROM t WHERE name = $$bob$$ AND n > 2",
        ] {
            assert!(!template.same_shape(other), "{other}");
        }
        // Digits in a quoted identifier or a parameter are not a literal.
        shape_into_template("SELECT \"12\" FROM t WHERE a = $1 AND b = 3", &mut template).unwrap();
        assert!(!template.same_shape("SELECT \"13\" FROM t WHERE a = $1 AND b = 3"));
        assert!(!template.same_shape("SELECT \"12\" FROM t WHERE a = $2 AND b = 3"));
        assert!(template.same_shape("SELECT \"12\" FROM t WHERE a = $1 AND b = 30"));
        // Only integers: `7.a` is not `1.5.a` with another number (it scans as `7.` then `a`).
        shape_into_template("SELECT 1.5.a", &mut template).unwrap();
        assert!(!template.same_shape("SELECT 7.a"));
        // What the fast path does not take (literals that matter), or too long, matches nothing
        // but still gives its shape.
        shape_into_template("SET x = 1", &mut template).unwrap();
        assert!(!template.same_shape("SET x = 1") && !template.same_shape("SET x = 2"));
        assert_eq!(template.shape(), "set x = 1");
        let long = format!("SELECT 1 FROM t WHERE a IN ({}1)", "1, ".repeat(4000));
        shape_into_template(&long, &mut template).unwrap();
        assert!(!template.same_shape(&long) && !template.is_matchable());
        // Its large buffer is not kept for the next text.
        shape_into_template("SELECT 1", &mut template).unwrap();
        assert!(template.shape.capacity() <= MAX_KEPT_SHAPE_BUFFER);
        // A text that does not scan leaves a template that matches nothing.
        shape_into_template("SELECT 1", &mut template).unwrap();
        assert!(shape_into_template("SELECT 'open", &mut template).is_err());
        assert!(!template.same_shape("SELECT 1"));
    }

    #[test]
    fn text_keys_are_blind_to_the_literals_a_template_lets_vary() {
        let key = |sql: &str| text_key(sql.as_bytes(), 0x5eed);
        let base = key("SELECT a FROM t1 WHERE id = 42 AND name = 'bob' LIMIT 10");
        for same in [
            "SELECT a FROM t1 WHERE id = 7 AND name = 'it''s' LIMIT 1000",
            "SELECT a FROM t1 WHERE id = 123456789 AND name = '' LIMIT 0",
            "SELECT a FROM t1 WHERE id = 0 AND name = '日本' LIMIT 3",
        ] {
            assert_eq!(key(same), base, "{same}");
        }
        for other in [
            // Digits in a name, other words, another literal kind, spacing: other keys.
            "SELECT a FROM t2 WHERE id = 42 AND name = 'bob' LIMIT 10",
            "SELECT b FROM t1 WHERE id = 42 AND name = 'bob' LIMIT 10",
            "SELECT a FROM t1 WHERE id = 4.2 AND name = 'bob' LIMIT 10",
            "SELECT a FROM t1 WHERE id = 42 AND name = 'bob' LIMIT 10 ",
            "SELECT a FROM t1 WHERE id = 'x' AND name = 'bob' LIMIT 10",
            "SELECT a FROM t1 WHERE id = 42 AND name = 'bob' LIMIT $1",
        ] {
            assert_ne!(key(other), base, "{other}");
        }
        // Pieces cannot run into each other, and the seed matters.
        assert_ne!(key("ab1c"), key("a1bc"));
        assert_ne!(key("x = 1 AND y"), key("x = 1AND y"));
        assert_ne!(text_key(b"SELECT 1", 1), text_key(b"SELECT 1", 2));
        // Whatever the bytes, a key (unclosed quotes and non-ASCII included), and these
        // texts all differ in what the key keeps.
        let odd: std::collections::HashSet<u64> = [
            &b"'"[..],
            b"x = 'open",
            b"\xff\xfe'1",
            b"",
            b"12345678901234567",
            b"a1",
        ]
        .iter()
        .map(|text| text_key(text, 0))
        .collect();
        assert_eq!(odd.len(), 6);
    }

    #[test]
    fn template_matches_agree_with_the_scanner() {
        let mut random = Random(0x9e37_79b9_7f4a_7c15);
        let (mut template, mut matched) = (ShapeTemplate::default(), 0);
        for _ in 0..20_000 {
            let sql = random.statement(&["SELECT ", "update ", "WITH ", "SET "], 10);
            if shape_into_template(&sql, &mut template).is_err() {
                continue;
            }
            for _ in 0..4 {
                // Every run of digits (in literals, names, parameters, strings alike) may be
                // swapped for another, every quote may gain a piece after it, and one piece
                // may be put anywhere.
                let mut variant = String::new();
                let mut chars = sql.chars().peekable();
                while let Some(c) = chars.next() {
                    if c.is_ascii_digit() && random.next().is_multiple_of(2) {
                        while chars.peek().is_some_and(char::is_ascii_digit) {
                            chars.next();
                        }
                        for _ in 0..=(random.next() % 3) {
                            variant.push(char::from(b'0' + (random.next() % 10) as u8));
                        }
                    } else {
                        variant.push(c);
                        if c == '\'' && random.next().is_multiple_of(3) {
                            variant.push_str(PIECES[random.next() as usize % PIECES.len()]);
                        }
                    }
                }
                let at = (random.next() as usize) % (variant.len() + 1);
                if random.next().is_multiple_of(4) && variant.is_char_boundary(at) {
                    variant.insert_str(at, PIECES[random.next() as usize % PIECES.len()]);
                }
                if template.same_shape(&variant) {
                    matched += 1;
                    assert_eq!(
                        shape(&variant).as_deref(),
                        Ok(template.shape()),
                        "{sql:?} -> {variant:?}"
                    );
                    // What lets a cache keyed on the text find the template.
                    assert_eq!(
                        text_key(variant.as_bytes(), 7),
                        text_key(sql.as_bytes(), 7),
                        "{sql:?} -> {variant:?}"
                    );
                }
            }
        }
        assert!(matched > 5_000, "only {matched} variants matched");
    }

    #[test]
    fn splits_and_reads_leading_words() {
        assert_eq!(
            split_statements(";; SELECT 1 ; /* x */ ;\nDO $$ BEGIN; END $$;").unwrap(),
            vec!["SELECT 1", "DO $$ BEGIN; END $$"]
        );
        assert_eq!(
            builtin_operators_spelled_plainly(
                "SELECT 1 WHERE k OPERATOR(pg_catalog.=) ANY ('{r}') AND n Operator ( PG_CATALOG . ~ ) '^x$' AND s = 'OPERATOR(pg_catalog.=)'"
            )
            .as_deref(),
            Some("SELECT 1 WHERE k  =  ANY ('{r}') AND n  ~  '^x$' AND s = 'OPERATOR(pg_catalog.=)'")
        );
        assert_eq!(
            builtin_operators_spelled_plainly("SELECT a OPERATOR(app.=) b"),
            None
        );
        let text = ";; SELECT 1 ; /* x */ ;\nDO $$ BEGIN; END $$; SELECT ';'";
        let ends = statement_ends(text).unwrap();
        let through = |end: usize| &text[..end];
        assert_eq!(through(ends[0]), ";; SELECT 1 ;");
        assert_eq!(
            through(ends[1]),
            ";; SELECT 1 ; /* x */ ;\nDO $$ BEGIN; END $$;"
        );
        assert_eq!(ends[2], text.len());
        assert_eq!(ends.len(), 3);
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
