//! Statements sqlparser cannot parse, recognised by their leading keywords. PostgreSQL forms
//! that sqlparser lacks (DO, VACUUM (...), CLUSTER, REINDEX, CHECKPOINT, TABLE t, ALTER SYSTEM,
//! two-phase commit ...) get their real kind; anything else is `unknown`, never a read.

use crate::kind::Kind;
use crate::lexer::{leading_words, Lexer, Token};
use crate::table::TableName;
use crate::Facet;

/// Classifies one statement's text by its keywords.
pub(crate) fn classify(statement: &str) -> (Vec<Facet>, Option<String>) {
    let words = leading_words(statement, 3);
    let word = |i: usize| words.get(i).map(String::as_str).unwrap_or_default();
    let facet = |kind| Facet { kind, table: None };
    let (kind, reason): (Kind, &str) = match (word(0), word(1)) {
        ("do", _) => (Kind::Write, "DO runs arbitrary procedural code"),
        ("vacuum" | "analyze" | "analyse" | "cluster" | "reindex" | "checkpoint", _) => {
            (Kind::Admin, "maintenance")
        }
        ("alter", "system") => (Kind::Admin, "ALTER SYSTEM changes the server configuration"),
        ("prepare", "transaction") | ("commit" | "rollback", "prepared") => {
            (Kind::Admin, "two-phase commit")
        }
        ("load", _) => (Kind::Admin, "LOAD loads a shared library"),
        ("table", _) => {
            return match table_statement_target(statement) {
                Some(table) => (
                    vec![Facet {
                        kind: Kind::Read,
                        table: Some(table),
                    }],
                    None,
                ),
                None => (vec![facet(Kind::Unknown)], Some(unparsed(statement))),
            };
        }
        ("set", "constraints") => (Kind::Transaction, ""),
        ("reassign", "owned") | ("drop", "owned") => (Kind::Dcl, "ownership and privileges"),
        ("grant" | "revoke", _) => (Kind::Dcl, ""),
        ("create" | "alter" | "drop" | "comment" | "security" | "import", _) => (Kind::Ddl, ""),
        _ => return (vec![facet(Kind::Unknown)], Some(unparsed(statement))),
    };
    let reason = (!reason.is_empty()).then(|| reason.to_owned());
    (vec![facet(kind)], reason)
}

fn unparsed(statement: &str) -> String {
    let head: String = statement.chars().take(40).collect();
    format!("not understood by the SQL parser: {head:?}")
}

/// `TABLE [ONLY] name [*]`: the shorthand for `SELECT * FROM name`, only when nothing else
/// follows that could hide more (ORDER BY and LIMIT are fine).
fn table_statement_target(statement: &str) -> Option<TableName> {
    let mut tokens = Lexer::new(statement).skip(1).peekable();
    if matches!(tokens.peek(), Some(Ok(Token::Word(w))) if w.eq_ignore_ascii_case("only")) {
        tokens.next();
    }
    let mut parts = Vec::new();
    loop {
        match tokens.next()?.ok()? {
            Token::Word(w) => parts.push(w.to_lowercase()),
            Token::QuotedIdent(q) if q.starts_with('"') => {
                parts.push(q[1..q.len() - 1].replace("\"\"", "\""))
            }
            _ => return None,
        }
        match tokens.peek() {
            Some(Ok(Token::Symbol("."))) => {
                tokens.next();
            }
            _ => break,
        }
    }
    for token in tokens {
        match token.ok()? {
            Token::Word(_) | Token::Number(_) | Token::Symbol(",") | Token::Symbol("*") => {}
            _ => return None,
        }
    }
    let name = parts.pop()?;
    Some(TableName {
        schema: parts.pop(),
        name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(sql: &str) -> Kind {
        classify(sql).0[0].kind
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
        assert_eq!(kind("FROBNICATE"), Kind::Unknown);
    }

    #[test]
    fn table_shorthand_is_a_read_of_that_table() {
        let (facets, _) = classify("TABLE ONLY public.\"Users\" ORDER BY 1 LIMIT 5");
        assert_eq!(facets[0].kind, Kind::Read);
        assert_eq!(
            facets[0].table.as_ref().unwrap().to_string(),
            "public.Users"
        );
        assert_eq!(kind("TABLE t; DELETE FROM t"), Kind::Unknown);
    }
}
