//! What a statement does, in the categories a policy speaks of.

use std::fmt;

/// One category of effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Read,
    Write,
    Ddl,
    /// Privileges and roles (GRANT, REVOKE, CREATE ROLE ...).
    Dcl,
    /// Changing who the session acts as (SET ROLE, SET SESSION AUTHORIZATION).
    SessionPrivilege,
    /// Maintenance and server administration (VACUUM, ALTER SYSTEM, file and program access ...).
    Admin,
    Transaction,
    /// Session housekeeping (SET of ordinary settings, SHOW, DISCARD, LISTEN ...).
    Utility,
    /// Not understood: pgstepup could not parse or recognise it.
    Unknown,
}

impl Kind {
    /// Every kind, in a stable order.
    pub const ALL: [Kind; 9] = [
        Kind::Read,
        Kind::Write,
        Kind::Ddl,
        Kind::Dcl,
        Kind::SessionPrivilege,
        Kind::Admin,
        Kind::Transaction,
        Kind::Utility,
        Kind::Unknown,
    ];

    /// The name used in policies and reports.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Read => "read",
            Kind::Write => "write",
            Kind::Ddl => "ddl",
            Kind::Dcl => "dcl",
            Kind::SessionPrivilege => "session_privilege",
            Kind::Admin => "admin",
            Kind::Transaction => "transaction",
            Kind::Utility => "utility",
            Kind::Unknown => "unknown",
        }
    }

    /// Parses a policy name.
    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }

    fn bit(self) -> u16 {
        1 << self as u16
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct KindSet(u16);

impl KindSet {
    pub fn insert(&mut self, kind: Kind) {
        self.0 |= kind.bit();
    }

    pub fn contains(self, kind: Kind) -> bool {
        self.0 & kind.bit() != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The kinds present, in [`Kind::ALL`] order.
    pub fn iter(self) -> impl Iterator<Item = Kind> {
        Kind::ALL.into_iter().filter(move |k| self.contains(*k))
    }
}

impl FromIterator<Kind> for KindSet {
    fn from_iter<I: IntoIterator<Item = Kind>>(iter: I) -> Self {
        let mut set = KindSet::default();
        for kind in iter {
            set.insert(kind);
        }
        set
    }
}
