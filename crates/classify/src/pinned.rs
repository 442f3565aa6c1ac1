//! Settings pgstepup pins because they change how SQL text is read. With
//! `standard_conforming_strings` off, `'a\'; DROP TABLE t; --'` is one string to pgstepup but
//! a DROP to the server; so any statement that would turn it off (or loosen `backslash_quote`)
//! is denied, whatever the policy says.

use crate::lexer::{Lexer, Token};

/// The settings, and the values that keep them safe.
const PINNED: &[(&str, &[&str])] = &[
    (
        "standard_conforming_strings",
        &["on", "true", "yes", "1", "default"],
    ),
    (
        "backslash_quote",
        &["off", "false", "no", "0", "safe_encoding", "default"],
    ),
];

/// Why the statement text would unpin a setting, if it would.
pub(crate) fn violation(sql: &str) -> Option<String> {
    let tokens: Vec<Token<'_>> = Lexer::new(sql).collect::<Result<_, _>>().ok()?;
    for (i, token) in tokens.iter().enumerate() {
        let Some(name) = setting_name(token) else {
            continue;
        };
        let Some((_, safe)) = PINNED.iter().find(|(n, _)| *n == name) else {
            continue;
        };
        if !is_assignment(&tokens[..i], token) {
            continue;
        }
        let value = tokens[i + 1..]
            .iter()
            .find(|t| !matches!(t, Token::Symbol("=" | ",")) && !is_word(t, "to"))
            .and_then(setting_name);
        let safe_value = value.as_deref().is_some_and(|v| safe.contains(&v));
        if !safe_value {
            return Some(format!(
                "pgstepup pins {name}: the proxy and the server must read SQL text alike"
            ));
        }
    }
    None
}

/// For a startup parameter or `-c name=value` option: `Some(false)` when `name` is pinned and
/// `value` would unpin it, `Some(true)` when pinned and safe, `None` when not pinned.
pub fn safe_value(name: &str, value: &str) -> Option<bool> {
    let name = name.trim().to_ascii_lowercase().replace('-', "_");
    let (_, safe) = PINNED.iter().find(|(n, _)| *n == name)?;
    Some(
        safe.contains(
            &value
                .trim()
                .trim_matches('\'')
                .to_ascii_lowercase()
                .as_str(),
        ),
    )
}

fn is_word(token: &Token<'_>, word: &str) -> bool {
    matches!(token, Token::Word(w) if w.eq_ignore_ascii_case(word))
}

/// The lower-cased text of a word, quoted identifier or string literal.
fn setting_name(token: &Token<'_>) -> Option<String> {
    match token {
        Token::Word(w) => Some(w.to_ascii_lowercase()),
        Token::QuotedIdent(q) if q.starts_with('"') => Some(q.trim_matches('"').to_owned()),
        Token::Str(s) if s.starts_with('\'') => Some(s.trim_matches('\'').to_ascii_lowercase()),
        Token::Number(n) => Some((*n).to_owned()),
        _ => None,
    }
}

/// `SET [SESSION|LOCAL] name`, `ALTER ... SET name`, or `set_config('name', ...)` (not a
/// column of that name in `UPDATE ... SET`).
fn is_assignment(before: &[Token<'_>], name: &Token<'_>) -> bool {
    let statement_start = before
        .iter()
        .rposition(|t| matches!(t, Token::Semicolon))
        .map_or(0, |i| i + 1);
    let leader = before.get(statement_start);
    let leader_sets = leader.is_some_and(|t| is_word(t, "set") || is_word(t, "alter"));
    let mut back = before
        .iter()
        .rev()
        .filter(|t| !is_word(t, "session") && !is_word(t, "local"));
    match name {
        Token::Str(_) => {
            matches!(back.next(), Some(Token::Symbol("(")))
                && matches!(back.next(), Some(t) if setting_name(t).as_deref() == Some("set_config"))
        }
        _ => leader_sets && back.next().is_some_and(|t| is_word(t, "set")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denies_unpinning_in_every_form() {
        for sql in [
            "SET standard_conforming_strings = off",
            "set standard_conforming_strings to 'off'",
            "SET LOCAL standard_conforming_strings = false",
            "SELECT set_config('standard_conforming_strings', 'off', false)",
            "SELECT pg_catalog.set_config('standard_conforming_strings', current_setting('x'), true)",
            "ALTER ROLE app SET standard_conforming_strings = off",
            "ALTER DATABASE d SET standard_conforming_strings TO off",
            "SET backslash_quote = on",
            "SELECT 1; SET standard_conforming_strings = 0",
        ] {
            assert!(violation(sql).is_some(), "{sql}");
        }
    }

    #[test]
    fn startup_values() {
        assert_eq!(
            safe_value("standard_conforming_strings", "off"),
            Some(false)
        );
        assert_eq!(safe_value("standard-conforming-strings", "on"), Some(true));
        assert_eq!(safe_value("backslash_quote", "on"), Some(false));
        assert_eq!(safe_value("search_path", "x"), None);
    }

    #[test]
    fn leaves_safe_and_unrelated_statements_alone() {
        for sql in [
            "SET standard_conforming_strings = on",
            "SET standard_conforming_strings TO DEFAULT",
            "RESET standard_conforming_strings",
            "SHOW standard_conforming_strings",
            "SELECT current_setting('standard_conforming_strings')",
            "SET backslash_quote = safe_encoding",
            "SELECT 'SET standard_conforming_strings = off'",
            "UPDATE t SET standard_conforming_strings = 0",
        ] {
            assert!(violation(sql).is_none(), "{sql}");
        }
    }
}
