//! `*` and `?` wildcards for table patterns.

/// Whether `text` matches `pattern` (`*` any run, `?` one character).
pub(crate) fn matches(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Whether the pattern has wildcards.
pub(crate) fn is_glob(pattern: &str) -> bool {
    pattern.contains(['*', '?'])
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn wildcards() {
        assert!(matches("*", "anything"));
        assert!(matches("card_*", "card_numbers"));
        assert!(!matches("card_*", "cards"));
        assert!(matches("c?rd", "card"));
        assert!(matches("*secret*", "my_secret_table"));
        assert!(!matches("users", "users2"));
        assert!(matches("", ""));
        assert!(!matches("", "x"));
    }
}
