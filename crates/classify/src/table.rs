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
