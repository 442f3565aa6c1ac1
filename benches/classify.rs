//! The per-statement cost of deciding: a session's own memo hit (the steady state: one lookup,
//! after a byte comparison with the texts scanned recently or a shape scan), a shared cache hit
//! (shape scan, cache, policy evaluation), a miss on a short statement, a miss on a long
//! catalog query, and sqlparser's own parse for comparison.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use pgstepup_classify::lexer::{self, ShapeTemplate};
use pgstepup_classify::{classify, Classifier, ShapeMemo};
use pgstepup_policy::{Policy, Subject};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

const PGBENCH_SELECT: &str = "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;";
/// The same statement as `pgbench -M extended` sends it, verbatim every time.
const PGBENCH_SELECT_PARAMETERISED: &str = "SELECT abalance FROM pgbench_accounts WHERE aid = $1;";

/// pgJDBC's DatabaseMetaData.getColumns query (what DBeaver sends when browsing a table).
const JDBC_GET_COLUMNS: &str = include_str!("jdbc_get_columns.sql");

fn decide(c: &mut Criterion) {
    let policy = Policy::builtin();
    let subject = Subject::default();
    let classifier = Classifier::new(10_000, Vec::new());
    let mut scratch = ShapeTemplate::default();
    classifier.classify(PGBENCH_SELECT, &mut scratch);
    let mut shape = String::new();
    // Simple-protocol clients inline a different literal every time; the shape still hits.
    let other_literal = "SELECT abalance FROM pgbench_accounts WHERE aid = 7;";
    c.bench_function("shape scan (pgbench select)", |b| {
        b.iter(|| lexer::shape_into(std::hint::black_box(other_literal), &mut shape).is_ok())
    });
    // What a session does for a statement it already allowed: one lookup in its own memo,
    // by shape when the literal changed, by exact text for a parameterised statement.
    let mut memo = ShapeMemo::new(16 * 1024);
    let allowed = |sql: &str, scratch: &mut ShapeTemplate| {
        policy
            .evaluate(&classifier.classify(sql, scratch), &subject)
            .action
    };
    for sql in [PGBENCH_SELECT, PGBENCH_SELECT_PARAMETERISED] {
        assert_eq!(memo.get(sql), Ok(None));
        memo.remember(sql, allowed(sql, &mut scratch));
    }
    // Simple-protocol pgbench: a new id each time, the rest the same as the text last scanned.
    let new_ids = [
        "SELECT abalance FROM pgbench_accounts WHERE aid = 7;",
        "SELECT abalance FROM pgbench_accounts WHERE aid = 912344;",
        "SELECT abalance FROM pgbench_accounts WHERE aid = 48;",
    ];
    let mut next = new_ids.iter().cycle();
    c.bench_function(
        "session memo hit, only an integer changed (pgbench select, no scan)",
        |b| b.iter(|| memo.get(std::hint::black_box(next.next().expect("cycle")))),
    );
    // Statements in turn, each with new integer and string literals (what ORMs and drivers
    // that interpolate values send): each matches one of the texts scanned recently.
    let branches = "SELECT bbalance FROM pgbench_branches WHERE bid = 3 AND note > 'x';";
    memo.get(branches).expect("scans");
    memo.remember(branches, allowed(branches, &mut scratch));
    let mut next = [
        "SELECT abalance FROM pgbench_accounts WHERE aid = 90210;",
        "SELECT bbalance FROM pgbench_branches WHERE bid = 5 AND note > 'it''s';",
    ]
    .into_iter()
    .cycle();
    c.bench_function(
        "session memo hit, statements in turn with new literals (no scan)",
        |b| b.iter(|| memo.get(std::hint::black_box(next.next().expect("cycle")))),
    );
    // A literal no recent text lets vary (a decimal): found by shape after a scan.
    let decimal = "SELECT abalance FROM pgbench_accounts WHERE aid = 4.5;";
    memo.get(decimal).expect("scans");
    memo.remember(decimal, allowed(decimal, &mut scratch));
    // More distinct texts than a memo keeps, so none is matched without a scan.
    let decimals: Vec<String> = (0..64)
        .map(|i| format!("SELECT abalance FROM pgbench_accounts WHERE aid = {i}.5;"))
        .collect();
    let mut next = decimals.iter().map(String::as_str).cycle();
    c.bench_function(
        "session memo hit by shape (pgbench select, new decimal, scanned)",
        |b| b.iter(|| memo.get(std::hint::black_box(next.next().expect("cycle")))),
    );
    c.bench_function(
        "session memo hit by text (pgbench select, parameterised)",
        |b| b.iter(|| memo.get(std::hint::black_box(PGBENCH_SELECT_PARAMETERISED))),
    );
    // A session's first sight of a statement another session classified: recalled by the
    // text key when only an integer changed (no scan); a literal recall does not let vary (a
    // decimal) is scanned, then found by shape.
    let mut shared_hit = |name: &str, texts: Vec<&str>| {
        let mut next = texts.into_iter().cycle();
        c.bench_function(name, |b| {
            b.iter(|| {
                let sql = std::hint::black_box(next.next().expect("cycle"));
                let classification = classifier.classify(sql, &mut scratch);
                policy.evaluate(&classification, &subject).action
            })
        });
    };
    shared_hit(
        "shared cache hit + policy (pgbench select, new integer, recalled)",
        new_ids.to_vec(),
    );
    shared_hit(
        "shared cache hit + policy (pgbench select, new decimal, scanned)",
        decimals.iter().map(String::as_str).collect(),
    );
    c.bench_function("miss: short statement (classify + policy)", |b| {
        b.iter(|| {
            policy
                .evaluate(
                    &classify(std::hint::black_box(PGBENCH_SELECT), &[]),
                    &subject,
                )
                .action
        })
    });
    // What a miss costs in the session: the scan and the recall that find nothing, then the
    // parse, the classification and both cache entries (a new table name every time).
    let new_shapes: Vec<String> = (0..4096)
        .map(|i| format!("SELECT abalance FROM pgbench_accounts_{i} WHERE aid = 48213;"))
        .collect();
    let mut next = new_shapes.iter().map(String::as_str).cycle();
    let small = Classifier::new(256, Vec::new());
    c.bench_function(
        "miss through the cache: short statement (scan, classify, insert + policy)",
        |b| {
            b.iter(|| {
                let sql = std::hint::black_box(next.next().expect("cycle"));
                policy
                    .evaluate(&small.classify(sql, &mut scratch), &subject)
                    .action
            })
        },
    );
    // The same misses into a cache with room, as the default 10,000 entries mostly have, to
    // set beside the full cache's above: no entry is let go (each cache is filled with one
    // pass over the texts, then dropped outside the timing).
    c.bench_function(
        "miss into a cache with room: short statement (scan, classify, insert + policy)",
        |b| {
            b.iter_custom(|iterations| {
                let mut elapsed = Duration::ZERO;
                let mut left = iterations as usize;
                while left > 0 {
                    let roomy = Classifier::new(2 * new_shapes.len(), Vec::new());
                    let batch = &new_shapes[..left.min(new_shapes.len())];
                    let started = Instant::now();
                    for sql in batch {
                        let classification =
                            roomy.classify(std::hint::black_box(sql), &mut scratch);
                        std::hint::black_box(policy.evaluate(&classification, &subject).action);
                    }
                    elapsed += started.elapsed();
                    left -= batch.len();
                }
                elapsed
            })
        },
    );
    c.bench_function("miss: pgJDBC getColumns (classify + policy)", |b| {
        b.iter(|| {
            policy
                .evaluate(
                    &classify(std::hint::black_box(JDBC_GET_COLUMNS), &[]),
                    &subject,
                )
                .action
        })
    });
    let parse_only = |sql: &str| {
        Parser::parse_sql(&PostgreSqlDialect {}, std::hint::black_box(sql)).map(|s| s.len())
    };
    c.bench_function("sqlparser parse only: short statement", |b| {
        b.iter(|| parse_only(PGBENCH_SELECT))
    });
    // The miss through the cache's texts, for a comparison on the same input.
    let mut next = new_shapes.iter().map(String::as_str).cycle();
    c.bench_function(
        "sqlparser parse only: short statement, a new table name each time",
        |b| b.iter(|| parse_only(next.next().expect("cycle"))),
    );
    c.bench_function("sqlparser parse only: pgJDBC getColumns", |b| {
        b.iter(|| parse_only(JDBC_GET_COLUMNS))
    });
    c.bench_function(
        "cache fill: 1000 distinct shapes into a 256-entry cache",
        |b| {
            let statements: Vec<String> = (0..1000)
                .map(|i| format!("SELECT c{i} FROM t WHERE id = 1"))
                .collect();
            b.iter_batched(
                || Classifier::new(256, Vec::new()),
                |small| {
                    let mut scratch = ShapeTemplate::default();
                    for s in &statements {
                        small.classify(s, &mut scratch);
                    }
                    small.len()
                },
                BatchSize::LargeInput,
            )
        },
    );
}

criterion_group!(benches, decide);
criterion_main!(benches);
