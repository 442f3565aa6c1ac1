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
}

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
            parts.push(part);
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

/// Case folding as PostgreSQL does it for identifiers: ASCII letters only.
pub(crate) fn fold(ident: &Ident) -> String {
    match ident.quote_style {
        Some(_) => ident.value.clone(),
        None => ident.value.to_ascii_lowercase(),
    }
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
        for not_a_name in ["16384", "", "a..b", "a.b.c.d", r#""open"#, "a b", r#"a"b""#] {
            assert_eq!(name(not_a_name), None, "{not_a_name}");
        }
    }
}
