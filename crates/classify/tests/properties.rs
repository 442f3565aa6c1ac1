//! Properties the classifier must keep on any input: it never panics; statements with the same
//! shape are classified alike (so the shape-keyed cache is sound); and adding a harmless
//! prefix or comment never weakens what a statement is found to do.

use pgstepup_classify::lexer::{shape, ShapeTemplate};
use pgstepup_classify::{classify, Classification, Classifier, Kind};

/// A small deterministic PRNG (xorshift), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[(self.next() % items.len() as u64) as usize]
    }
}

const TEMPLATES: &[&str] = &[
    "SELECT * FROM users WHERE id = {} AND name = {}",
    "select a, b from public.orders o join items i on i.o = o.id where o.total > {} limit {}",
    "UPDATE accounts SET balance = balance - {} WHERE id = {}",
    "DELETE FROM sessions WHERE created < now() - interval {} OR id = {}",
    "INSERT INTO t (a, b) VALUES ({}, {}) ON CONFLICT (a) DO UPDATE SET b = {}",
    "WITH x AS (SELECT {} AS v) SELECT v, {} FROM x",
    "SELECT {}::text || {}, lower({})",
    "SELECT * FROM t WHERE a IN ({}, {}, {}) FOR UPDATE",
    "SELECT {}; DELETE FROM t WHERE id = {}",
    "SELECT count(*) FROM pg_catalog.pg_class WHERE relname = {} AND relkind = {}",
    "SELECT nextval({}), {}",
    "VALUES ({}, {})",
];

const LITERALS: &[&str] = &[
    "1",
    "42",
    "-7",
    "3.14",
    "1e10",
    ".5",
    "'x'",
    "''",
    "'it''s'",
    "'a\\'",
    "E'a\\'b'",
    "E'\\\\'",
    "$$dollar; DELETE FROM t; $$",
    "$q$ ' $q$",
    "'; DELETE FROM t; --'",
    "'*/ DROP TABLE t; /*'",
    "B'101'",
    "X'ff'",
    "'日本語'",
    "U&'\\0041'",
    "'SET ROLE admin'",
    "'standard_conforming_strings'",
];

fn fill(template: &str, rng: &mut Rng) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(at) = rest.find("{}") {
        out.push_str(&rest[..at]);
        let literal: &&str = rng.pick(LITERALS);
        out.push_str(literal);
        rest = &rest[at + 2..];
    }
    out.push_str(rest);
    out
}

fn summary(c: &Classification) -> (Vec<Kind>, Vec<String>, Vec<String>, Vec<String>) {
    let mut kinds: Vec<Kind> = c.kinds.iter().collect();
    kinds.sort();
    let names = |t: Vec<&pgstepup_classify::TableName>| {
        let mut v: Vec<String> = t.iter().map(|t| t.to_string()).collect();
        v.sort();
        v
    };
    let mut functions = c.functions.clone();
    functions.sort();
    (kinds, names(c.reads()), names(c.writes()), functions)
}

#[test]
fn same_shape_same_classification() {
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    for template in TEMPLATES {
        let mut by_shape: std::collections::HashMap<String, (String, _)> = Default::default();
        for _ in 0..60 {
            let sql = fill(template, &mut rng);
            let Ok(key) = shape(&sql) else { continue };
            let got = summary(&classify(&sql, &[]));
            if let Some((first_sql, first)) = by_shape.get(&key) {
                assert_eq!(
                    first, &got,
                    "same shape, different classification:\n  {first_sql}\n  {sql}\n  shape: {key}"
                );
            } else {
                by_shape.insert(key, (sql, got));
            }
        }
    }
}

#[test]
fn cache_hits_return_what_a_fresh_classification_would() {
    let classifier = Classifier::new(64, Vec::new());
    let mut scratch = ShapeTemplate::default();
    let mut rng = Rng(0xfeed_beef_0000_0042);
    for _ in 0..400 {
        let template = *rng.pick(TEMPLATES);
        let sql = fill(template, &mut rng);
        let cached = classifier.classify(&sql, &mut scratch);
        assert_eq!(summary(&cached), summary(&classify(&sql, &[])), "{sql}");
    }
    // The same shape again is served from the cache: the same shared classification.
    let sql = "SELECT * FROM users WHERE id = 1 AND name = 'x'";
    let first = classifier.classify(sql, &mut scratch);
    let again = classifier.classify(
        "SELECT * FROM users WHERE id = 2 AND name = 'y'",
        &mut scratch,
    );
    assert!(std::sync::Arc::ptr_eq(&first, &again));
    assert!(classifier.len() <= 64 + 16, "bounded: {}", classifier.len());
}

const PREFIXES: &[&str] = &[
    "/* harmless */ ",
    "-- comment\n",
    "  \n\t",
    "/* /* nested */ */",
    ";",
    "; ;",
    "SELECT 1; ",
    "/* DELETE FROM t; */ ",
];

#[test]
fn harmless_prefixes_never_weaken_the_classification() {
    let statements = [
        "DELETE FROM t",
        "UPDATE t SET a = 1",
        "DROP TABLE t",
        "GRANT ALL ON t TO x",
        "SET ROLE admin",
        "VACUUM t",
        "DO $$ BEGIN END $$",
        "SELECT * FROM t FOR UPDATE",
        "SELECT pg_terminate_backend(1)",
        "COPY t FROM STDIN",
        "FROBNICATE",
        "SET standard_conforming_strings = off",
        "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
    ];
    for statement in statements {
        let base = classify(statement, &[]);
        for prefix in PREFIXES {
            let sql = format!("{prefix}{statement}");
            let with_prefix = classify(&sql, &[]);
            for kind in base.kinds.iter() {
                assert!(with_prefix.kinds.contains(kind), "{sql:?} lost {kind}");
            }
            assert_eq!(
                base.pinned_violation.is_some(),
                with_prefix.pinned_violation.is_some(),
                "{sql:?}"
            );
            let suffixed = format!("{statement} -- trailing\n");
            assert!(
                base.kinds
                    .iter()
                    .all(|k| classify(&suffixed, &[]).kinds.contains(k)),
                "{suffixed:?}"
            );
        }
    }
}

#[test]
fn never_panics_on_garbage() {
    let mut rng = Rng(0x0123_4567_89ab_cdef);
    let alphabet: Vec<char> = "SELECT FROM WHERE ;'\"$$/*--*/()[]:,.\\eEuU&0123abc\n\t日€ "
        .chars()
        .collect();
    for _ in 0..3000 {
        let len = (rng.next() % 80) as usize;
        let sql: String = (0..len).map(|_| *rng.pick(&alphabet)).collect();
        let c = classify(&sql, &[]);
        // Whatever it is, something that is not understood is never a plain read.
        if !c.fully_parsed {
            assert!(
                c.kinds.iter().any(|k| k != Kind::Read) || c.kinds.is_empty(),
                "{sql:?}"
            );
        }
        let _ = shape(&sql);
    }
    // Too deep for the parser: still never a read when it hides a call.
    let deep = format!("SELECT {}my_fn(1){}", "(".repeat(500), ")".repeat(500));
    assert!(classify(&deep, &[]).kinds.contains(Kind::Write));
}
