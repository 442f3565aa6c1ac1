//! Settings pgstepup pins because they change how SQL text is read. With
//! `standard_conforming_strings` off, `'a\'; DROP TABLE t; --'` is one string to pgstepup but
//! a DROP to the server; so any statement that would turn it off (or loosen `backslash_quote`)
//! is denied, whatever the policy says.

use std::sync::LazyLock;

use aho_corasick::AhoCorasick;

use crate::lexer::{Lexer, Token};

/// The settings whose safe values are known.
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

/// Client encoding names pgstepup reads text alike with the server, as PostgreSQL's own
/// table spells them once cleaned (letters and digits only, lower case: `Windows-1252`,
/// `WIN_1252` and `win1252` are one name to it). Left out are the encodings whose
/// multi-byte characters can contain ASCII quote or backslash bytes (SJIS, SHIFT_JIS_2004,
/// BIG5, GBK, UHC, GB18030, JOHAB and their aliases: the server converts them before lexing,
/// pgstepup would not) and anything PostgreSQL does not know. An allowlist, so an alias
/// nobody listed cannot get through.
const SAFE_ENCODINGS: &[&str] = &[
    "abc",
    "alt",
    "euccn",
    "eucjis2004",
    "eucjp",
    "euckr",
    "euctw",
    "iso88591",
    "iso885910",
    "iso885913",
    "iso885914",
    "iso885915",
    "iso885916",
    "iso88592",
    "iso88593",
    "iso88594",
    "iso88595",
    "iso88596",
    "iso88597",
    "iso88598",
    "iso88599",
    "koi8",
    "koi8r",
    "koi8u",
    "latin1",
    "latin10",
    "latin2",
    "latin3",
    "latin4",
    "latin5",
    "latin6",
    "latin7",
    "latin8",
    "latin9",
    "muleinternal",
    "sqlascii",
    "tcvn",
    "tcvn5712",
    "unicode",
    "utf8",
    "vscii",
    "win",
    "win1250",
    "win1251",
    "win1252",
    "win1253",
    "win1254",
    "win1255",
    "win1256",
    "win1257",
    "win1258",
    "win866",
    "win874",
    "windows1250",
    "windows1251",
    "windows1252",
    "windows1253",
    "windows1254",
    "windows1255",
    "windows1256",
    "windows1257",
    "windows1258",
    "windows866",
    "windows874",
    // Back to the value the session started with, which was checked at login.
    "default",
];

/// For a startup parameter or `-c name=value` option: `Some(false)` when `name` is pinned and
/// `value` would unpin it, `Some(true)` when pinned and safe, `None` when not pinned.
pub fn safe_value(name: &str, value: &str) -> Option<bool> {
    let name = name.trim().to_ascii_lowercase().replace('-', "_");
    let value = value.trim().trim_matches('\'').to_ascii_lowercase();
    if name == "client_encoding" || name == "names" {
        // PostgreSQL's clean_encoding_name: only letters and digits count.
        let cleaned: String = value.chars().filter(char::is_ascii_alphanumeric).collect();
        return Some(SAFE_ENCODINGS.contains(&cleaned.as_str()));
    }
    let (_, safe) = PINNED.iter().find(|(n, _)| *n == name)?;
    Some(safe.contains(&value.as_str()))
}

/// What a statement that unpins a setting must mention: the pinned settings, the encoding
/// settings, `pg_settings` and `set_config`.
const MENTIONED: &[&str] = &[
    "standard_conforming_strings",
    "backslash_quote",
    "client_encoding",
    "names",
    "pg_settings",
    "set_config",
];

fn pinned_message(name: &str) -> String {
    format!("pgstepup pins {name}: the proxy and the server must read SQL text alike")
}

/// Why the statement text would unpin a setting, if it would.
pub(crate) fn violation(sql: &str) -> Option<String> {
    // Every violation names one of these (as a word, identifier or string), so text that
    // contains none needs no token-by-token look: one pass, no allocation.
    static MENTIONS: LazyLock<AhoCorasick> = LazyLock::new(|| {
        AhoCorasick::builder()
            .ascii_case_insensitive(true)
            .build(MENTIONED)
            .expect("fixed ASCII patterns")
    });
    if !MENTIONS.is_match(sql) {
        return None;
    }
    let lowered = sql.to_ascii_lowercase();
    let tokens: Vec<Token<'_>> = Lexer::new(sql).collect::<Result<_, _>>().ok()?;
    for statement in tokens.split(|t| matches!(t, Token::Semicolon)) {
        let Some(leader) = statement.first().and_then(setting_name) else {
            continue;
        };
        // Procedural bodies can set anything at run time.
        if matches!(leader.as_str(), "do" | "create")
            && PINNED.iter().any(|(name, _)| lowered.contains(name))
            && statement
                .iter()
                .any(|t| matches!(t, Token::Str(_)) || is_word(t, "set"))
        {
            let name = PINNED
                .iter()
                .find(|(n, _)| lowered.contains(n))
                .map(|(n, _)| *n)?;
            return Some(pinned_message(name));
        }
        if leader == "update"
            && statement
                .iter()
                .any(|t| setting_name(t).as_deref() == Some("pg_settings"))
        {
            return Some(
                "pgstepup pins some settings: pg_settings cannot be updated through it".into(),
            );
        }
        for (i, token) in statement.iter().enumerate() {
            if setting_name(token).as_deref() == Some("set_config")
                && matches!(statement.get(i + 1), Some(Token::Symbol("(")))
            {
                match statement.get(i + 2) {
                    Some(Token::Str(name)) if name.starts_with('\'') => {
                        let name = name.trim_matches('\'');
                        // The value counts only as a lone literal: `'win' || '932'` is SJIS.
                        let value = match statement.get(i + 5) {
                            Some(Token::Symbol(",")) => statement.get(i + 4).and_then(setting_name),
                            _ => None,
                        }
                        .unwrap_or_default();
                        if safe_value(name, &value) == Some(false) {
                            return Some(pinned_message(name));
                        }
                    }
                    // A name computed from the rows (`set_config(name, ...) FROM pg_settings
                    // WHERE name = '...'`) may be any string the statement holds.
                    _ => {
                        let named = statement.iter().filter_map(setting_name).find(|n| {
                            PINNED.iter().any(|(pinned, _)| pinned == n) || n == "client_encoding"
                        });
                        if let Some(name) = named {
                            return Some(pinned_message(&name));
                        }
                    }
                }
                continue;
            }
            let Some(name) = setting_name(token) else {
                continue;
            };
            let pinned = PINNED.iter().any(|(n, _)| *n == name)
                || name == "client_encoding"
                || name == "names";
            if !pinned || !is_assignment(&leader, &statement[..i]) {
                continue;
            }
            let value = statement[i + 1..]
                .iter()
                .find(|t| !matches!(t, Token::Symbol("=" | ",")) && !is_word(t, "to"))
                .and_then(setting_name)
                .unwrap_or_default();
            if safe_value(&name, &value) != Some(true) {
                return Some(pinned_message(&name));
            }
        }
    }
    None
}

fn is_word(token: &Token<'_>, word: &str) -> bool {
    matches!(token, Token::Word(w) if w.eq_ignore_ascii_case(word))
}

/// The lower-cased text of a word, quoted identifier or string literal.
fn setting_name(token: &Token<'_>) -> Option<String> {
    match token {
        Token::Word(w) => Some(w.to_ascii_lowercase()),
        // PostgreSQL looks settings up case-insensitively, even quoted ones.
        Token::QuotedIdent(q) if q.starts_with('"') => {
            Some(q.trim_matches('"').to_ascii_lowercase())
        }
        Token::Str(s) if s.starts_with('\'') => Some(s.trim_matches('\'').to_ascii_lowercase()),
        Token::Number(n) => Some((*n).to_owned()),
        _ => None,
    }
}

/// `SET [SESSION|LOCAL] name`, `ALTER ... SET name`, `CREATE FUNCTION ... SET name` (not a
/// column of that name in `UPDATE ... SET`).
fn is_assignment(leader: &str, before: &[Token<'_>]) -> bool {
    matches!(leader, "set" | "alter" | "create")
        && before
            .iter()
            .rev()
            .find(|t| !is_word(t, "session") && !is_word(t, "local"))
            .is_some_and(|t| is_word(t, "set"))
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
            "SET client_encoding = 'SJIS'",
            "SET NAMES 'GBK'",
            "SELECT set_config('client_encoding', 'BIG5', false)",
            "UPDATE pg_settings SET setting = 'off' WHERE name = 'standard_conforming_strings'",
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql SET standard_conforming_strings = off AS 'SELECT 1'",
            "DO $$ BEGIN SET standard_conforming_strings = off; END $$",
            // Setting names are case-insensitive to PostgreSQL, quoted or not.
            "SET Standard_Conforming_Strings = off",
            "SET \"STANDARD_CONFORMING_STRINGS\" = off",
            "select SET_CONFIG('Client_Encoding', 'sjis', false)",
            // Every spelling PostgreSQL accepts for an unsafe encoding, and values that are
            // not a plain literal.
            "SET client_encoding = 'S-JIS'",
            "SET client_encoding = 'Windows-932'",
            "SET client_encoding TO 'WIN-936'",
            "SET client_encoding = 'gb-18030'",
            "SET NAMES 'b.i.g.5'",
            "SET client_encoding = shiftjis2004",
            "SET client_encoding = U&'sji\\0073'",
            "SET client_encoding = E'sji\\163'",
            "SET client_encoding = $$sjis$$",
            "SELECT set_config('client_encoding', 'sj' || 'is', false)",
            "SELECT set_config('client_encoding', 'win' || '932', false)",
            "SELECT set_config('client_encoding', (SELECT 'sjis'), false)",
            "SET client_encoding = 'no-such-encoding'",
            "SELECT set_config(name, 'off', false) FROM pg_settings WHERE name = 'standard_conforming_strings'",
            "SELECT set_config(name, 'SJIS', false) FROM pg_settings WHERE name = 'client_encoding'",
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
            "SET client_encoding = 'LATIN1'",
            "SET NAMES 'UTF8'",
            "SET client_encoding = 'Windows-1252'",
            "SET client_encoding = 'ISO_8859_5'",
            "SET client_encoding TO DEFAULT",
            "SELECT set_config('client_encoding', 'UTF8', false)",
            "SELECT set_config('search_path', 'public', false)",
            "SELECT 'SET standard_conforming_strings = off'",
            "UPDATE t SET standard_conforming_strings = 0",
        ] {
            assert!(violation(sql).is_none(), "{sql}");
        }
    }
}
