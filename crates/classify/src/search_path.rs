//! The schemas a session puts on its search_path, where its unqualified table names may then
//! be found. pgstepup sees the session's `SET search_path` and `set_config('search_path', ...)`
//! but not whether each one ran, nor when a `SET LOCAL` ended: sessions keep the union of every
//! schema they listed (a name may resolve to any of them), which can only make rules on
//! schema-qualified tables apply more often.

use crate::table::truncate_identifier;

/// Schemas a text (or a session) puts on the search_path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SearchPath {
    /// These schemas, folded as names are (`$user` as written).
    Schemas(Vec<String>),
    /// Not known before it runs: a computed value, or text that was not fully understood.
    Unknown,
}

impl SearchPath {
    /// A search_path setting's value as the server reads it (`'app, "Odd", pg_catalog'`).
    pub fn from_value(value: &str) -> SearchPath {
        SearchPath::Schemas(split(value))
    }

    /// Adds what `other` lists; whether anything new was added.
    fn widen(&mut self, other: &SearchPath) -> bool {
        match (&mut *self, other) {
            (SearchPath::Unknown, _) => false,
            (this, SearchPath::Unknown) => {
                *this = SearchPath::Unknown;
                true
            }
            (SearchPath::Schemas(mine), SearchPath::Schemas(theirs)) => {
                let before = mine.len();
                for schema in theirs {
                    if !mine.contains(schema) {
                        mine.push(schema.clone());
                    }
                }
                mine.len() > before
            }
        }
    }

    /// Whether a schema for which `matches` holds may be on the path (`user` for `$user`).
    pub fn may_list(&self, user: &str, matches: impl Fn(&str) -> bool) -> bool {
        match self {
            SearchPath::Unknown => true,
            SearchPath::Schemas(schemas) => schemas
                .iter()
                .any(|schema| matches(if schema == "$user" { user } else { schema })),
        }
    }

    /// Widens `path` by what this lists, starting it when there is none yet; whether anything
    /// was added.
    pub fn add_to(&self, path: &mut Option<SearchPath>) -> bool {
        match path {
            Some(path) => path.widen(self),
            // An empty path (pg_dump's `set_config('search_path', '', false)`) adds nothing.
            None if matches!(self, SearchPath::Schemas(schemas) if schemas.is_empty()) => false,
            None => {
                *path = Some(self.clone());
                true
            }
        }
    }
}

/// A search_path string's schemas (`'app, "Odd", pg_catalog'`), folded as names are.
pub(crate) fn split(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(
            |entry| match entry.strip_prefix('"').and_then(|e| e.strip_suffix('"')) {
                Some(quoted) => truncate_identifier(quoted.replace("\"\"", "\"")),
                None => truncate_identifier(entry.to_ascii_lowercase()),
            },
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schemas(list: &[&str]) -> SearchPath {
        SearchPath::Schemas(list.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn widening_keeps_the_union_and_says_when_it_grew() {
        let mut path = schemas(&["billing"]);
        assert!(!path.widen(&schemas(&["billing"])));
        assert!(path.widen(&schemas(&["public", "Sales"])));
        assert_eq!(path, schemas(&["billing", "public", "Sales"]));
        assert!(path.widen(&SearchPath::Unknown));
        assert!(!path.widen(&schemas(&["more"])));
        assert_eq!(path, SearchPath::Unknown);

        let mut none = None;
        assert!(!schemas(&[]).add_to(&mut none));
        assert_eq!(none, None);
        assert!(schemas(&["app"]).add_to(&mut none));
        assert!(!schemas(&["app"]).add_to(&mut none));
    }

    #[test]
    fn values_are_read_as_the_server_reads_them() {
        assert_eq!(
            SearchPath::from_value(r#"billing, "Odd""Name", $user,PUBLIC"#),
            schemas(&["billing", "Odd\"Name", "$user", "public"])
        );
        let path = schemas(&["$user", "billing"]);
        assert!(path.may_list("dave", |s| s == "dave"));
        assert!(path.may_list("dave", |s| s == "billing"));
        assert!(!path.may_list("dave", |s| s == "public"));
        assert!(SearchPath::Unknown.may_list("dave", |_| false));
    }
}
