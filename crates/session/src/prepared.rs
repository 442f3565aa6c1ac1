//! [`PreparedStatements`]: the named prepared statements a session's gate let through, looked
//! up at every Bind so an execution can be decided again after a policy reload.
//!
//! Clients mostly execute one statement again and again (a pgJDBC loop, `pgbench -M
//! prepared`), so the name a Bind last found allowed is kept inline beside the map: a repeat
//! costs one byte comparison instead of a hash lookup, whose control bytes, bucket and key live
//! in three places in memory (the lookup's cache misses showed in profiles at 32 clients). Every
//! change to the map forgets that name, so it can only ever vouch for an entry that is still
//! there, still allowed, under the same policy generation.

use std::collections::HashMap;
use std::sync::Arc;

use pgstepup_classify::Classification;
use pgstepup_protocol::backend::PgError;

use crate::gate::StepUpRule;

/// A named prepared statement the gate let through, kept so its executions can be re-decided
/// when the policy changes after it was parsed.
pub(crate) struct Prepared {
    pub(crate) classification: Arc<Classification>,
    pub(crate) sql: String,
    /// The policy generation it was last decided under, and what was decided.
    pub(crate) generation: u64,
    pub(crate) decided: PreparedDecision,
}

#[derive(Clone)]
pub(crate) enum PreparedDecision {
    Allow,
    /// Each execution needs an elevation under this rule.
    StepUp(StepUpRule),
    Refused(PgError),
}

/// Names up to this long are remembered inline (driver-generated names are far shorter:
/// `S_12`, `_pg3_0`, `__asyncpg_stmt_1__`).
const INLINE_NAME: usize = 32;

/// The name of the statement the last Bind found allowed, and under which generation.
struct LastAllowed {
    name: [u8; INLINE_NAME],
    /// 0: nothing remembered (the unnamed statement is never kept here).
    len: usize,
    generation: u64,
}

/// A session's named prepared statements (a fast seeded hash: names are short and only this
/// session's client chooses them).
pub(crate) struct PreparedStatements {
    map: HashMap<Box<[u8]>, Prepared, foldhash::fast::RandomState>,
    last_allowed: LastAllowed,
}

impl PreparedStatements {
    pub(crate) fn new() -> Self {
        PreparedStatements {
            map: HashMap::default(),
            last_allowed: LastAllowed {
                name: [0; INLINE_NAME],
                len: 0,
                generation: 0,
            },
        }
    }

    /// Whether `name` is known allowed under `generation` without a lookup: the last
    /// statement a Bind found allowed, with nothing changed since.
    #[inline]
    pub(crate) fn is_allowed_repeat(&self, name: &[u8], generation: u64) -> bool {
        let last = &self.last_allowed;
        last.len != 0 && last.generation == generation && last.name[..last.len] == *name
    }

    /// Notes that a Bind found `name` allowed under `generation` (see
    /// [`PreparedStatements::is_allowed_repeat`]).
    pub(crate) fn note_allowed(&mut self, name: &[u8], generation: u64) {
        if name.is_empty() || name.len() > INLINE_NAME {
            return;
        }
        let last = &mut self.last_allowed;
        last.name[..name.len()].copy_from_slice(name);
        last.len = name.len();
        last.generation = generation;
    }

    pub(crate) fn get(&self, name: &[u8]) -> Option<&Prepared> {
        self.map.get(name)
    }

    pub(crate) fn get_mut(&mut self, name: &[u8]) -> Option<&mut Prepared> {
        self.forget_last_allowed();
        self.map.get_mut(name)
    }

    pub(crate) fn insert(&mut self, name: &[u8], prepared: Prepared) {
        self.forget_last_allowed();
        self.map.insert(name.into(), prepared);
    }

    /// Removes `name`'s statement and hands it back.
    pub(crate) fn take(&mut self, name: &[u8]) -> Option<Prepared> {
        self.forget_last_allowed();
        self.map.remove(name)
    }

    pub(crate) fn remove(&mut self, name: &[u8]) {
        self.forget_last_allowed();
        self.map.remove(name);
    }

    /// Makes every statement be decided again at its next Bind (the session's search_path
    /// grew: an unqualified name in one may now mean a table a rule restricts).
    pub(crate) fn decide_again(&mut self) {
        self.forget_last_allowed();
        for prepared in self.map.values_mut() {
            // A generation no policy has.
            prepared.generation = u64::MAX;
        }
    }

    fn forget_last_allowed(&mut self) {
        self.last_allowed.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(generation: u64) -> Prepared {
        Prepared {
            classification: Arc::new(Classification::default()),
            sql: "SELECT 1".into(),
            generation,
            decided: PreparedDecision::Allow,
        }
    }

    #[test]
    fn a_repeat_is_vouched_for_only_while_nothing_changed() {
        let mut statements = PreparedStatements::new();
        statements.insert(b"S_1", allowed(1));
        assert!(!statements.is_allowed_repeat(b"S_1", 1));
        statements.note_allowed(b"S_1", 1);
        assert!(statements.is_allowed_repeat(b"S_1", 1));
        // Another name, a prefix of it, or another policy generation: not vouched for.
        assert!(!statements.is_allowed_repeat(b"S_2", 1));
        assert!(!statements.is_allowed_repeat(b"S_", 1));
        assert!(!statements.is_allowed_repeat(b"S_1", 2));

        // Every change to the statements forgets it (a re-Parse under the same name may now
        // need step-up; a Close drops it; a re-decision may refuse it).
        type Change = fn(&mut PreparedStatements);
        let changes: [Change; 4] = [
            |s| s.insert(b"S_1", allowed(1)),
            |s| s.remove(b"S_1"),
            |s| {
                s.take(b"S_1");
            },
            |s| {
                s.get_mut(b"S_1");
            },
        ];
        for change in changes {
            statements.insert(b"S_1", allowed(1));
            statements.note_allowed(b"S_1", 1);
            change(&mut statements);
            assert!(!statements.is_allowed_repeat(b"S_1", 1));
        }
    }

    #[test]
    fn the_unnamed_statement_and_long_names_are_not_kept_inline() {
        let mut statements = PreparedStatements::new();
        statements.note_allowed(b"", 1);
        assert!(!statements.is_allowed_repeat(b"", 1));
        let long = [b'x'; INLINE_NAME + 1];
        statements.note_allowed(&long, 1);
        assert!(!statements.is_allowed_repeat(&long, 1));
        let longest = [b'y'; INLINE_NAME];
        statements.note_allowed(&longest, 1);
        assert!(statements.is_allowed_repeat(&longest, 1));
    }
}
