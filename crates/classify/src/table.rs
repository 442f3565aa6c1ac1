//! Table names as PostgreSQL resolves their spelling: unquoted parts folded to lower case,
//! quoted parts kept exactly.

use std::fmt;

use sqlparser::ast::{Ident, ObjectName, ObjectNamePart};

/// A possibly schema-qualified table name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableName {
    pub schema: Option<String>,
    pub name: String,
}

impl TableName {
    /// Builds from parser parts (`db.schema.table` keeps the last two).
    pub(crate) fn from_object_name(name: &ObjectName) -> Option<Self> {
        // The last two parts, folded as they go by (no list of all parts, no copies).
        let (mut schema, mut last) = (None, None);
        for part in &name.0 {
            let ObjectNamePart::Identifier(ident) = part else {
                return None;
            };
            schema = last.replace(fold(ident));
        }
        Some(TableName {
            schema,
            name: last?,
        })
    }

    /// Every table of a schema (`GRANT ... ON ALL TABLES IN SCHEMA s`, `DROP SCHEMA s`), shown
    /// as `s.*`: restrictive rules on any table of the schema meet it, and only a rule allowing
    /// the whole schema allows it. `None` for a name that is not a schema's.
    pub(crate) fn every_table_in(schema: &ObjectName) -> Option<Self> {
        // `db.schema` keeps the schema, as table names keep their last two parts.
        match schema.0.last()? {
            ObjectNamePart::Identifier(ident) => Some(Self::every_table_of(fold(ident))),
            ObjectNamePart::Function(_) => None,
        }
    }

    /// Every table of the schema named `schema` (already folded).
    pub(crate) fn every_table_of(schema: String) -> Self {
        TableName {
            schema: Some(schema),
            name: EVERY_TABLE.to_owned(),
        }
    }

    /// Whether this stands for every table of its schema. A table really named `*` (quoted)
    /// counts as that too: the safe side.
    pub fn is_every_table(&self) -> bool {
        self.name == EVERY_TABLE
    }
}

/// The name [`TableName::every_table_in`] gives.
const EVERY_TABLE: &str = "*";

impl TableName {
    /// Reads a table name the way `regclass` input does (`orders`, `Sales.Orders`,
    /// `"Odd"."Name"`): unquoted parts folded, `db.schema.table` keeping the last two. `None` for
    /// an OID or anything that is not a name.
    pub(crate) fn from_regclass_text(text: &str) -> Option<Self> {
        let mut parts: Vec<String> = Vec::new();
        let mut chars = text.chars().peekable();
        loop {
            while chars.next_if(|c| c.is_whitespace()).is_some() {}
            let mut part = String::new();
            if chars.next_if_eq(&'"').is_some() {
                loop {
                    match chars.next()? {
                        '"' if chars.next_if_eq(&'"').is_some() => part.push('"'),
                        '"' => break,
                        c => part.push(c),
                    }
                }
            } else {
                while let Some(c) = chars.next_if(|c| *c != '.' && !c.is_whitespace()) {
                    if c == '"' {
                        return None;
                    }
                    part.push(c.to_ascii_lowercase());
                }
                if part.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
            }
            if part.is_empty() {
                return None;
            }
            parts.push(truncate_identifier(part));
            while chars.next_if(|c| c.is_whitespace()).is_some() {}
            match chars.next() {
                None => break,
                Some('.') => continue,
                Some(_) => return None,
            }
        }
        let name = parts.pop()?;
        let schema = parts.pop();
        (parts.len() <= 1).then_some(TableName { schema, name })
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.schema {
            Some(schema) => write!(f, "{schema}.{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// Case folding as PostgreSQL does it for identifiers: ASCII letters only; then cut to the
/// length PostgreSQL keeps.
pub(crate) fn fold(ident: &Ident) -> String {
    truncate_identifier(match ident.quote_style {
        Some(_) => ident.value.clone(),
        None => ident.value.to_ascii_lowercase(),
    })
}

/// PostgreSQL keeps the first 63 bytes of a longer identifier (NAMEDATALEN - 1, whole
/// characters), so `customers_` followed by 60 more letters names the table whose name is the
/// first 63 bytes of that.
pub(crate) fn truncate_identifier(mut name: String) -> String {
    const MAX_IDENTIFIER_BYTES: usize = 63;
    if name.len() > MAX_IDENTIFIER_BYTES {
        let mut end = MAX_IDENTIFIER_BYTES;
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        name.truncate(end);
    }
    name
}

/// A function name, folded, with `pg_catalog.` kept only when written.
pub(crate) fn function_name(name: &ObjectName) -> String {
    name.0
        .iter()
        .map(|p| match p {
            ObjectNamePart::Identifier(ident) => fold(ident),
            ObjectNamePart::Function(_) => String::from("?"),
        })
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_keep_the_63_bytes_postgresql_keeps() {
        let long = "a".repeat(70);
        assert_eq!(truncate_identifier(long.clone()), long[..63]);
        // Whole characters: a two-byte character across the limit goes.
        let accented = format!("{}é", "a".repeat(62));
        assert_eq!(truncate_identifier(accented), "a".repeat(62));
        assert_eq!(truncate_identifier("short".into()), "short");
    }

    #[test]
    fn reads_regclass_text_as_postgresql_does() {
        let name = |text: &str| TableName::from_regclass_text(text).map(|t| t.to_string());
        assert_eq!(name("Customers").as_deref(), Some("customers"));
        assert_eq!(
            name(" Billing . Invoices ").as_deref(),
            Some("billing.invoices")
        );
        assert_eq!(name(r#""Odd ""x"".y""#).as_deref(), Some(r#"Odd "x".y"#));
        assert_eq!(name(r#"app."Mixed""#).as_deref(), Some("app.Mixed"));
        assert_eq!(name("db.s.t").as_deref(), Some("s.t"));
        let long = "c".repeat(70);
        assert_eq!(
            name(&format!("s.{long}")),
            Some(format!("s.{}", &long[..63]))
        );
        for not_a_name in ["16384", "", "a..b", "a.b.c.d", r#""open"#, "a b", r#"a"b""#] {
            assert_eq!(name(not_a_name), None, "{not_a_name}");
        }
    }
}
