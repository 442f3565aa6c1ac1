//! Statements sqlparser cannot parse, recognised by their leading keywords. PostgreSQL forms
//! that sqlparser lacks (DO, VACUUM (...), CLUSTER, REINDEX, CHECKPOINT, TABLE t, ALTER SYSTEM,
//! two-phase commit ...) get their real kind; anything else is `unknown`, never a read.

use crate::kind::Kind;
use crate::lexer::{leading_words, Lexer, Token};
use crate::table::{truncate_identifier, TableName};
use crate::Facet;

/// Classifies one statement's text by its keywords.
pub(crate) fn classify(statement: &str) -> (Vec<Facet>, Option<String>) {
    let words = leading_words(statement, 3);
    let word = |i: usize| words.get(i).map(String::as_str).unwrap_or_default();
    let facet = |kind| Facet { kind, table: None };
    let (kind, reason): (Kind, &str) = match (word(0), word(1)) {
        ("do", _) => (Kind::Write, "DO runs arbitrary procedural code"),
        ("vacuum" | "analyze" | "analyse" | "cluster" | "reindex" | "checkpoint", _) => {
            let reason = Some("maintenance".to_owned());
            let tables = maintained_tables(statement);
            if tables.is_empty() {
                return (vec![facet(Kind::Admin)], reason);
            }
            let facets = tables
                .into_iter()
                .map(|table| Facet {
                    kind: Kind::Admin,
                    table: Some(table),
                })
                .collect();
            return (facets, reason);
        }
        ("alter", "sequence") => {
            // Its values are what the next inserts into its table get.
            let tokens = tokens(statement);
            let start = if tokens.get(2).is_some_and(|t| is_word(t, "if")) {
                4
            } else {
                2
            };
            let table = qualified_name(&tokens[start.min(tokens.len())..]);
            let mut facets = moved_into(statement);
            facets.push(Facet {
                kind: Kind::Ddl,
                table,
            });
            return (facets, None);
        }
        ("alter", "system") => (Kind::Admin, "ALTER SYSTEM changes the server configuration"),
        ("prepare", "transaction") | ("commit" | "rollback", "prepared") => {
            (Kind::Admin, "two-phase commit")
        }
        ("load", _) => (Kind::Admin, "LOAD loads a shared library"),
        ("insert" | "update" | "delete" | "merge" | "truncate" | "copy", _) => {
            // Only the target is known: whatever else the text names (other tables, functions,
            // a COPY's query, file or program) is not, so it is also `unknown`, which no rule
            // on the target's name can allow.
            let mut facets = vec![facet(Kind::Unknown)];
            facets.extend(names_read(statement));
            let copy = word(0) == "copy";
            if !copy || has_word(statement, "from") {
                facets.push(Facet {
                    kind: Kind::Write,
                    table: dml_target(statement),
                });
            }
            if copy && has_word(statement, "program") {
                facets.push(facet(Kind::Admin));
            }
            return (facets, Some(unparsed(statement)));
        }
        ("explain", _) if has_word(statement, "analyze") || has_word(statement, "analyse") => {
            // It runs the statement: classify what follows the EXPLAIN options.
            return match explained_statement(statement) {
                Some(inner) => {
                    let inner = crate::classify(inner, &[]);
                    (inner.facets, inner.reasons.into_iter().next())
                }
                None => (
                    vec![facet(Kind::Write)],
                    Some("EXPLAIN ANALYZE runs the statement".into()),
                ),
            };
        }
        ("select" | "with" | "values" | "table", _) => {
            let found = lexical_select(statement);
            if found.kind == Kind::Read {
                return (vec![found], None);
            }
            // The tables it reads are not known either: no rule that allows the write may
            // let it through.
            let mut facets = vec![facet(Kind::Unknown)];
            facets.extend(names_read(statement));
            facets.push(found);
            return (facets, Some(unparsed(statement)));
        }
        (
            "begin" | "start" | "end" | "abort" | "commit" | "rollback" | "savepoint" | "release",
            _,
        ) => (Kind::Transaction, ""),
        ("set", "constraints" | "transaction") => (Kind::Transaction, ""),
        ("set", _) => match set_kind(statement) {
            Some(Kind::Admin) => (Kind::Admin, "logging and trigger settings"),
            Some(kind) => (kind, ""),
            None => (Kind::Utility, ""),
        },
        ("reset" | "show" | "discard" | "deallocate" | "listen" | "unlisten", _) => {
            (Kind::Utility, "")
        }
        ("fetch" | "move" | "close", _) => (Kind::Read, ""),
        ("reassign", "owned") | ("drop", "owned") => (Kind::Dcl, "ownership and privileges"),
        ("create" | "alter" | "drop", "user") if word(2) == "mapping" => (Kind::Ddl, ""),
        ("create" | "alter" | "drop", "user" | "role" | "group") => (Kind::Dcl, ""),
        ("create" | "alter" | "drop", "publication" | "subscription") => {
            (Kind::Admin, "logical replication")
        }
        ("grant" | "revoke", _) => (Kind::Dcl, ""),
        ("create" | "alter" | "drop" | "comment" | "security" | "import", _) => (Kind::Ddl, ""),
        _ => {
            let mut facets = vec![facet(Kind::Unknown)];
            facets.extend(names_read(statement));
            return (facets, Some(unparsed(statement)));
        }
    };
    let reason = (!reason.is_empty()).then(|| reason.to_owned());
    let mut facets = Vec::new();
    if matches!(kind, Kind::Ddl | Kind::Dcl | Kind::Admin) {
        // What the text seems to name meets its rules, so a deny on a table does not become
        // the default step-up of the kind because the parser could not read the text.
        facets.extend(moved_into(statement));
        for read in names_read(statement) {
            // Named in a text that changes schema or privileges: the change may be theirs.
            facets.push(Facet {
                kind,
                table: read.table.clone(),
            });
            facets.push(read);
        }
    }
    facets.push(facet(kind));
    (facets, reason)
}

/// `... SET SCHEMA s`: the object moves among the tables of `s`, a schema change there.
fn moved_into(statement: &str) -> Vec<Facet> {
    let tokens = tokens(statement);
    let uescape = uescape_of(&tokens);
    tokens
        .windows(3)
        .filter(|w| is_word(&w[0], "set") && is_word(&w[1], "schema"))
        .filter_map(|w| identifier(&w[2], uescape))
        .map(|schema| Facet {
            kind: Kind::Ddl,
            table: Some(TableName::every_table_of(schema)),
        })
        .collect()
}

/// What a SET the parser lacks does, by the setting it names: PostgreSQL matches setting names
/// whatever their case, quoted or not (`"ROLE"`, `U&"role"`). A role switch (`SET [LOCAL |
/// SESSION] ROLE ...`, `... SESSION AUTHORIZATION ...`, the settings `role` and
/// `session_authorization`) is session_privilege unless its value is the word NONE or DEFAULT
/// (a value that is not a plain word, such as E'alice', names a role); a setting that turns off
/// triggers or audit logging is admin; `None` for any other setting.
fn set_kind(statement: &str) -> Option<Kind> {
    let tokens = tokens(statement);
    let uescape = uescape_of(&tokens);
    let name = |i: usize| {
        tokens
            .get(i)
            .and_then(|t| identifier(t, uescape))
            .map(|n| n.to_ascii_lowercase())
            .unwrap_or_default()
    };
    let session_authorization =
        |at: usize| name(at) == "session" && name(at + 1) == "authorization";
    let mut at = 1;
    if matches!(name(at).as_str(), "local" | "session") && !session_authorization(at) {
        at += 1;
    }
    let setting = if session_authorization(at) {
        at += 2;
        "session_authorization".to_owned()
    } else {
        at += 1;
        name(at - 1)
    };
    match setting.as_str() {
        "role" | "session_authorization" => {
            if name(at) == "to" || matches!(tokens.get(at), Some(Token::Symbol("="))) {
                at += 1;
            }
            let back =
                matches!(tokens.get(at), Some(t) if is_word(t, "none") || is_word(t, "default"));
            Some(if back {
                Kind::Utility
            } else {
                Kind::SessionPrivilege
            })
        }
        setting if crate::analyze::is_admin_setting(setting) => Some(Kind::Admin),
        _ => None,
    }
}

fn unparsed(statement: &str) -> String {
    let head: String = statement.chars().take(40).collect();
    format!("not understood by the SQL parser: {head:?}")
}

fn tokens(statement: &str) -> Vec<Token<'_>> {
    Lexer::new(statement).map_while(Result::ok).collect()
}

fn is_word(token: &Token<'_>, word: &str) -> bool {
    matches!(token, Token::Word(w) if w.eq_ignore_ascii_case(word))
}

fn has_word(statement: &str, word: &str) -> bool {
    tokens(statement).iter().any(|t| is_word(t, word))
}

/// Words that make a SELECT-like statement do more than read.
const NOT_READ_WORDS: &[&str] = &[
    "insert",
    "update",
    "delete",
    "merge",
    "truncate",
    "copy",
    "call",
    "do",
    "into",
    "grant",
    "revoke",
    "create",
    "alter",
    "drop",
    "lock",
    "notify",
    "execute",
    "prepare",
    "listen",
    "vacuum",
    "analyze",
    "refresh",
    "returning",
];

/// Words that may stand right before a parenthesis without being a function call.
const PAREN_KEYWORDS: &[&str] = &[
    "in",
    "exists",
    "any",
    "all",
    "some",
    "over",
    "filter",
    "from",
    "values",
    "as",
    "on",
    "using",
    "cast",
    "row",
    "array",
    "lateral",
    "and",
    "or",
    "not",
    "when",
    "then",
    "else",
    "where",
    "by",
    "select",
    "with",
    "join",
    "union",
    "intersect",
    "except",
    "is",
    "like",
    "ilike",
    "similar",
    "to",
    "between",
    "having",
    "partition",
    "group",
    "within",
    "rows",
    "only",
    "table",
    "case",
    "distinct",
    "recursive",
    "materialized",
    "ordinality",
    "name",
    "window",
    "range",
    "groups",
    "cube",
    "rollup",
    "sets",
    "escape",
    "at",
    "zone",
    "first",
    "last",
    "nulls",
    "limit",
    "offset",
    "fetch",
    "asc",
    "desc",
    "cycle",
    "search",
];

/// A SELECT-like statement sqlparser could not parse, read by its tokens. It is never taken
/// for a read (the parser did not confirm what it is), except the `TABLE name` shorthand; but
/// a row lock or a call of a function not known to be read-only makes it a `Write`, which is
/// what the policy then weighs.
fn lexical_select(statement: &str) -> Facet {
    let unknown = Facet {
        kind: Kind::Unknown,
        table: None,
    };
    let Ok(tokens) = Lexer::new(statement).collect::<Result<Vec<Token<'_>>, _>>() else {
        return unknown;
    };
    let mut only_table_shorthand = true;
    for (i, token) in tokens.iter().enumerate() {
        let Token::Word(word) = token else { continue };
        let word = word.to_ascii_lowercase();
        if NOT_READ_WORDS.contains(&word.as_str()) {
            return unknown;
        }
        if word == "for" && !tokens.get(i + 1).is_some_and(|t| is_word(t, "read")) {
            return Facet {
                kind: Kind::Write,
                table: None,
            };
        }
        if matches!(tokens.get(i + 1), Some(Token::Symbol("(")))
            && !PAREN_KEYWORDS.contains(&word.as_str())
        {
            only_table_shorthand = false;
            let qualified = match (
                i.checked_sub(2).map(|j| &tokens[j]),
                i.checked_sub(1).map(|j| &tokens[j]),
            ) {
                (Some(Token::Word(schema)), Some(Token::Symbol("."))) => {
                    format!("{}.{word}", schema.to_ascii_lowercase())
                }
                _ => word.clone(),
            };
            if !crate::functions::is_read_only(&qualified, &[]) {
                return Facet {
                    kind: Kind::Write,
                    table: None,
                };
            }
        }
    }
    match table_statement_target(statement) {
        Some(table) if only_table_shorthand && table_shorthand_is_plain(&tokens) => Facet {
            kind: Kind::Read,
            table: Some(table),
        },
        _ => unknown,
    }
}

/// `TABLE [ONLY] name [*] [ORDER BY ...] [LIMIT n] [OFFSET n]` and nothing else.
fn table_shorthand_is_plain(tokens: &[Token<'_>]) -> bool {
    const ALLOWED: &[&str] = &[
        "table", "only", "order", "by", "asc", "desc", "nulls", "first", "last", "limit", "offset",
        "all",
    ];
    tokens.iter().all(|t| {
        matches!(
            t,
            Token::Word(_)
                | Token::QuotedIdent(_)
                | Token::Number(_)
                | Token::Symbol("." | "," | "*")
        )
    }) && tokens
        .iter()
        .filter_map(|t| match t {
            Token::Word(w) => Some(w.to_ascii_lowercase()),
            _ => None,
        })
        .all(|w| ALLOWED.contains(&w.as_str()) || !PAREN_KEYWORDS.contains(&w.as_str()))
}

/// The statement after `EXPLAIN [ANALYZE|ANALYSE] [VERBOSE]` or `EXPLAIN (options)`.
fn explained_statement(statement: &str) -> Option<&str> {
    let mut lexer = Lexer::new(statement);
    let mut depth = 0;
    let mut at = 0;
    while let Some(token) = lexer.next() {
        match token.ok()? {
            Token::Symbol("(") => depth += 1,
            Token::Symbol(")") => depth -= 1,
            Token::Word(w)
                if depth == 0
                    && !["explain", "analyze", "analyse", "verbose"]
                        .contains(&w.to_ascii_lowercase().as_str()) =>
            {
                return statement.get(at..);
            }
            _ => {}
        }
        at = lexer.offset();
    }
    None
}

/// The table a DML statement writes, read from its tokens.
fn dml_target(statement: &str) -> Option<TableName> {
    let tokens = tokens(statement);
    let mut i = 1;
    let skip = ["from", "into", "only", "table"];
    while tokens
        .get(i)
        .is_some_and(|t| skip.iter().any(|w| is_word(t, w)))
    {
        i += 1;
    }
    qualified_name(&tokens[i.min(tokens.len())..])
}

/// What an unparsed text may read, guessed from its tokens: every `a.b` (a schema-qualified
/// table, or a column of an alias: the guess errs towards more tables) and every name after
/// FROM, JOIN, TABLE, INTO, UPDATE, USING or ONLY. The text is `unknown` already, so no rule
/// can allow it; these let a rule that denies or holds a table meet it too, so a deny does
/// not become the default step-up because the parser could not read the text.
fn names_read(statement: &str) -> Vec<Facet> {
    const BEFORE_TABLE: &[&str] = &["from", "join", "table", "into", "update", "using", "only"];
    let tokens = tokens(statement);
    let uescape = uescape_of(&tokens);
    let mut facets: Vec<Facet> = Vec::new();
    for (i, token) in tokens.iter().enumerate() {
        let follows_keyword = i > 0 && BEFORE_TABLE.iter().any(|w| is_word(&tokens[i - 1], w));
        let qualified = matches!(tokens.get(i + 1), Some(Token::Symbol(".")));
        if !follows_keyword && !qualified {
            continue;
        }
        let Some(first) = identifier(token, uescape) else {
            continue;
        };
        if follows_keyword && !qualified && matches!(first.as_str(), "if" | "not" | "exists") {
            continue;
        }
        let table = match tokens.get(i + 2).filter(|_| qualified) {
            Some(next) => match identifier(next, uescape) {
                Some(name) => TableName {
                    schema: Some(first),
                    name,
                },
                None => continue,
            },
            None => TableName {
                schema: None,
                name: first,
            },
        };
        if !facets.iter().any(|f| f.table.as_ref() == Some(&table)) {
            facets.push(Facet {
                kind: Kind::Read,
                table: Some(table),
            });
        }
    }
    facets
}

/// The tables a VACUUM, ANALYZE, CLUSTER or REINDEX names (every table of the schema for
/// `REINDEX SCHEMA s`); none when it names none (then it works on all it may).
fn maintained_tables(statement: &str) -> Vec<TableName> {
    let tokens = tokens(statement);
    let reindex = tokens.first().is_some_and(|t| is_word(t, "reindex"));
    let mut i = 1;
    let mut every_table = false;
    loop {
        match tokens.get(i) {
            // An option list: `VACUUM (VERBOSE, ANALYZE) t`.
            Some(Token::Symbol("(")) => i = after_parentheses(&tokens, i),
            Some(t)
                if [
                    "full",
                    "freeze",
                    "verbose",
                    "analyze",
                    "analyse",
                    "concurrently",
                ]
                .iter()
                .any(|w| is_word(t, w)) =>
            {
                i += 1
            }
            Some(t) if reindex && (is_word(t, "table") || is_word(t, "index")) => i += 1,
            // The whole database: no table of its own.
            Some(t) if reindex && (is_word(t, "database") || is_word(t, "system")) => {
                return Vec::new()
            }
            Some(t) if reindex && is_word(t, "schema") => {
                every_table = true;
                i += 1
            }
            _ => break,
        }
    }
    let mut tables = Vec::new();
    while let Some(mut table) = qualified_name(&tokens[i.min(tokens.len())..]) {
        if every_table {
            table = TableName::every_table_of(table.name);
        }
        tables.push(table);
        // Past the name, its column list, and on to the next after a comma.
        while tokens
            .get(i)
            .is_some_and(|t| !matches!(t, Token::Symbol(",") | Token::Symbol("(")))
        {
            i += 1;
        }
        if matches!(tokens.get(i), Some(Token::Symbol("("))) {
            i = after_parentheses(&tokens, i);
        }
        if !matches!(tokens.get(i), Some(Token::Symbol(","))) {
            break;
        }
        i += 1;
    }
    tables
}

/// The index after the parenthesised group that opens at `open`.
fn after_parentheses(tokens: &[Token<'_>], open: usize) -> usize {
    let mut depth = 0usize;
    for (i, token) in tokens.iter().enumerate().skip(open) {
        match token {
            Token::Symbol("(") => depth += 1,
            Token::Symbol(")") => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
    }
    tokens.len()
}

/// The escape character of `U&` identifiers: UESCAPE's, else a backslash.
fn uescape_of(tokens: &[Token<'_>]) -> char {
    tokens
        .iter()
        .position(|t| is_word(t, "uescape"))
        .and_then(|i| match tokens.get(i + 1) {
            Some(Token::Str(s)) => s.trim_matches('\'').chars().next(),
            _ => None,
        })
        .unwrap_or('\\')
}

/// `name[.name]` at the start of `tokens`, folded as PostgreSQL folds identifiers.
fn qualified_name(tokens: &[Token<'_>]) -> Option<TableName> {
    let uescape = uescape_of(tokens);
    let mut parts = Vec::new();
    let mut i = 0;
    loop {
        parts.push(identifier(tokens.get(i)?, uescape)?);
        if matches!(tokens.get(i + 1), Some(Token::Symbol("."))) {
            i += 2;
        } else {
            break;
        }
    }
    let name = parts.pop()?;
    Some(TableName {
        schema: parts.pop(),
        name,
    })
}

fn identifier(token: &Token<'_>, uescape: char) -> Option<String> {
    let name = match token {
        Token::Word(w) => Some(w.to_ascii_lowercase()),
        Token::QuotedIdent(q) if q.starts_with('"') => {
            Some(q[1..q.len() - 1].replace("\"\"", "\""))
        }
        Token::QuotedIdent(q) => {
            decode_unicode_escapes(&q[3..q.len() - 1].replace("\"\"", "\""), uescape)
        }
        _ => None,
    };
    name.map(truncate_identifier)
}

/// `U&"..."` escapes: `\XXXX` and `\+XXXXXX` (or another escape character from UESCAPE).
fn decode_unicode_escapes(body: &str, escape: char) -> Option<String> {
    let mut out = String::new();
    let mut chars = body.chars().peekable();
    while let Some(c) = chars.next() {
        if c != escape {
            out.push(c);
            continue;
        }
        if chars.peek() == Some(&escape) {
            chars.next();
            out.push(escape);
            continue;
        }
        let digits = if chars.peek() == Some(&'+') {
            chars.next();
            6
        } else {
            4
        };
        let hex: String = (0..digits).filter_map(|_| chars.next()).collect();
        out.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
    }
    Some(out)
}

/// `TABLE [ONLY] name [*]`: the shorthand for `SELECT * FROM name`.
fn table_statement_target(statement: &str) -> Option<TableName> {
    let tokens = tokens(statement);
    if !tokens.first().is_some_and(|t| is_word(t, "table")) {
        return None;
    }
    let start = if tokens.get(1).is_some_and(|t| is_word(t, "only")) {
        2
    } else {
        1
    };
    qualified_name(&tokens[start.min(tokens.len())..])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kind that decides: the last facet (an unparsed text's own comes after `unknown`).
    fn kind(sql: &str) -> Kind {
        classify(sql).0.last().expect("a facet").kind
    }

    #[test]
    fn recognises_postgresql_forms_sqlparser_lacks() {
        assert_eq!(kind("DO $$ BEGIN DELETE FROM t; END $$"), Kind::Write);
        assert_eq!(kind("vacuum (verbose, analyze) t"), Kind::Admin);
        assert_eq!(kind("CLUSTER t USING i"), Kind::Admin);
        assert_eq!(kind("CHECKPOINT"), Kind::Admin);
        assert_eq!(kind("ALTER SYSTEM SET work_mem = '1GB'"), Kind::Admin);
        assert_eq!(kind("COMMIT PREPARED 'x'"), Kind::Admin);
        assert_eq!(kind("REASSIGN OWNED BY a TO b"), Kind::Dcl);
        assert_eq!(kind("SELECT ((( broken"), Kind::Unknown);
        assert_eq!(
            kind("SELECT x FROM t FOR NO KEY UPDATE NOWAIT ((("),
            Kind::Write
        );
        assert_eq!(kind("SELECT my_fn(((1"), Kind::Write);
        assert_eq!(
            kind("WITH d AS (DELETE FROM t RETURNING *) SELECT ((("),
            Kind::Unknown
        );
        assert_eq!(kind("FROBNICATE"), Kind::Unknown);
    }

    /// A text the parser cannot read still meets the rules of the tables it seems to name.
    #[test]
    fn unparsed_texts_name_what_they_may_read() {
        let reads = |sql: &str| {
            let (facets, _) = classify(sql);
            assert!(facets.iter().any(|f| f.kind == Kind::Unknown), "{sql}");
            facets
                .iter()
                .filter(|f| f.kind == Kind::Read)
                .filter_map(|f| f.table.as_ref().map(|t| t.to_string()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            reads("SELECT xmlpi(name x, (SELECT num FROM billing.cards LIMIT 1))"),
            ["billing.cards"]
        );
        assert_eq!(
            reads("SELECT xmlpi(name x, (SELECT c.num FROM U&\"\\0062illing\".cards c JOIN customers USING (id)))"),
            ["c.num", "billing.cards", "customers"]
        );
        assert_eq!(reads("FROBNICATE FROM Secret.Stuff"), ["secret.stuff"]);
    }

    /// Maintenance names its tables (a schema's every table for REINDEX SCHEMA); with none
    /// named it has none.
    #[test]
    fn maintenance_names_the_tables_it_works_on() {
        let tables = |sql: &str| {
            classify(sql)
                .0
                .iter()
                .map(|f| {
                    assert_eq!(f.kind, Kind::Admin, "{sql}");
                    f.table.as_ref().map(|t| t.to_string())
                })
                .collect::<Vec<_>>()
        };
        let some = |names: &[&str]| {
            names
                .iter()
                .map(|n| Some(n.to_string()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            tables("VACUUM (VERBOSE, ANALYZE) a.t (x, y), \"U\", b.v"),
            some(&["a.t", "U", "b.v"])
        );
        assert_eq!(tables("vacuum full freeze t"), some(&["t"]));
        assert_eq!(tables("CLUSTER VERBOSE s.t USING i"), some(&["s.t"]));
        assert_eq!(
            tables("REINDEX (VERBOSE) TABLE CONCURRENTLY s.t"),
            some(&["s.t"])
        );
        assert_eq!(tables("REINDEX INDEX s.i"), some(&["s.i"]));
        assert_eq!(tables("REINDEX SCHEMA Billing"), some(&["billing.*"]));
        for whole in [
            "VACUUM",
            "CLUSTER",
            "REINDEX DATABASE d",
            "REINDEX SYSTEM",
            "CHECKPOINT",
        ] {
            assert_eq!(tables(whole), [None], "{whole}");
        }
    }

    /// A role switch in any spelling the parser lacks; NONE and DEFAULT switch back.
    #[test]
    fn role_switches_are_session_privilege_however_spelled() {
        for sql in [
            "SET LOCAL SESSION AUTHORIZATION alice",
            "SET SESSION SESSION AUTHORIZATION alice",
            "SET LOCAL role TO alice",
            "SET SESSION role TO alice",
            "SET LOCAL ROLE E'alice'",
            "SET LOCAL ROLE $$alice$$",
            "SET SESSION ROLE U&\"alice\"",
            "SET session_authorization = alice",
            "SET role = 'alice'",
            "SET LOCAL \"ROLE\" = alice",
            "SET SESSION \"Role\" TO 'alice'",
            "SET LOCAL U&\"r!006Fle\" UESCAPE '!' TO alice",
            "SET LOCAL \"Session_Authorization\" TO alice",
        ] {
            assert_eq!(kind(sql), Kind::SessionPrivilege, "{sql}");
        }
        for sql in [
            "SET role TO DEFAULT",
            "SET LOCAL ROLE NONE",
            "SET session_authorization = DEFAULT",
            "SET SESSION AUTHORIZATION DEFAULT",
        ] {
            assert_eq!(kind(sql), Kind::Utility, "{sql}");
        }
    }

    /// Settings that turn off triggers or audit logging, however their names are spelled.
    #[test]
    fn admin_settings_are_admin_however_spelled() {
        for sql in [
            "SET LOCAL \"SESSION_REPLICATION_ROLE\" = replica",
            "SET SESSION \"Log_Statement\" TO none",
            "SET LOCAL U&\"log_statement\" = none",
        ] {
            assert_eq!(kind(sql), Kind::Admin, "{sql}");
        }
        assert_eq!(kind("SET LOCAL \"Work_Mem\" = '1MB'"), Kind::Utility);
    }

    /// A DML or COPY text the parser lacks is `unknown` besides its target's write, so no
    /// rule on the target can allow what else it names; a COPY that does not read from the
    /// client is never a read.
    #[test]
    fn unparsed_dml_and_copy_are_unknown_too() {
        // (Besides the reads it seems to make: `unparsed_texts_name_what_they_may_read`.)
        let kinds = |sql: &str| {
            classify(sql)
                .0
                .iter()
                .map(|f| f.kind)
                .filter(|k| *k != Kind::Read)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            kinds("TRUNCATE scratch.x, billing.U&\"cards\""),
            [Kind::Unknown, Kind::Write]
        );
        assert_eq!(
            kinds("COPY t TO PROGRAM 'touch /tmp/x' (FORMAT csv, FORCE_QUOTE *)"),
            [Kind::Unknown, Kind::Admin]
        );
        assert_eq!(kinds("COPY BINARY t TO '/tmp/out.bin'"), [Kind::Unknown]);
        assert_eq!(
            kinds("COPY (UPDATE v SET x = 98 WHERE NOT x ISNULL RETURNING x) TO STDOUT"),
            [Kind::Unknown]
        );
        assert_eq!(
            kinds("COPY scratch.x FROM STDIN WHERE nextval('s') > 0"),
            [Kind::Unknown, Kind::Write]
        );
    }

    /// A SELECT the parser lacks that locks rows or calls a function is a write whose tables
    /// are not known: `unknown` too, so no rule allowing writes lets it read a protected table.
    #[test]
    fn unparsed_selects_that_write_are_unknown_too() {
        for sql in [
            "TABLE billing.cards FOR UPDATE",
            "SELECT num FROM billing.cards WHERE id ISNULL OR true FOR UPDATE",
            "SELECT scratch.f4() FROM billing.cards WHERE 1 ISNULL",
        ] {
            let kinds: Vec<Kind> = classify(sql)
                .0
                .iter()
                .map(|f| f.kind)
                .filter(|k| *k != Kind::Read)
                .collect();
            assert_eq!(kinds, [Kind::Unknown, Kind::Write], "{sql}");
        }
    }

    #[test]
    fn table_shorthand_is_a_read_of_that_table() {
        let (facets, _) = classify("TABLE ONLY public.\"Users\" ORDER BY 1 LIMIT 5");
        assert_eq!(facets[0].kind, Kind::Read);
        assert_eq!(
            facets[0].table.as_ref().unwrap().to_string(),
            "public.Users"
        );
        assert_eq!(kind("TABLE jobs FOR UPDATE"), Kind::Write);
    }
}
