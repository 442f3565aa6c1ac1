//! The workload behind `benches/miss_instructions.py`: what a classification miss costs
//! against sqlparser's own parse, counted by callgrind rather than timed. The three are
//! interleaved on one heap (a new table name each time, so nothing is ever a cache hit), since
//! the allocator's state moves a parse's count by up to a tenth: the same statement parsed in
//! separate loops gives separate answers.
//!
//! `cargo run --release -p pgstepup-benches --example miss_cost -- short|jdbc`

use std::hint::black_box;

use pgstepup_classify::lexer::ShapeTemplate;
use pgstepup_classify::{classify, Classifier};
use pgstepup_policy::{Action, Policy, Subject};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

const ROUNDS: usize = 4000;

/// sqlparser's parse, with the drop of its tree.
#[inline(never)]
fn parse_only(sql: &str) -> usize {
    Parser::parse_sql(&PostgreSqlDialect {}, black_box(sql)).map_or(0, |s| s.len())
}

/// pgstepup's classification of a text (parse and analysis) and the policy's decision.
#[inline(never)]
fn classify_only(sql: &str, policy: &Policy, subject: &Subject) -> Action {
    policy
        .evaluate(&classify(black_box(sql), &[]), subject)
        .action
}

/// A session's miss: the cache's recall and scan that find nothing, the classification, both
/// cache entries, the policy's decision.
#[inline(never)]
fn miss_through_cache(
    sql: &str,
    cache: &Classifier,
    template: &mut ShapeTemplate,
    policy: &Policy,
    subject: &Subject,
) -> Action {
    policy
        .evaluate(&cache.classify(black_box(sql), template), subject)
        .action
}

fn main() {
    let statement = match std::env::args().nth(1).as_deref() {
        Some("short") => "SELECT abalance FROM pgbench_accounts_{} WHERE aid = 48213;",
        Some("jdbc") => include_str!("../jdbc_get_columns.sql"),
        _ => {
            eprintln!("usage: miss_cost short|jdbc");
            std::process::exit(2);
        }
    };
    // A new table name for each call (`{}`), or a new sort column for the catalog query.
    let text = |tag: &str, i: usize| {
        if statement.contains("{}") {
            statement.replace("{}", &format!("{tag}{i}"))
        } else {
            format!("{statement}, {tag}{i}")
        }
    };
    let policy = Policy::builtin();
    let subject = Subject::default();
    // As a proxy's: bounded, and full long before the measured rounds.
    let cache = Classifier::new(256, Vec::new());
    let mut template = ShapeTemplate::default();
    for i in 0..600 {
        cache.classify(&text("warm", i), &mut template);
    }
    let mut allowed = 0;
    for i in 0..ROUNDS {
        parse_only(&text("p", i));
        let decisions = [
            classify_only(&text("c", i), &policy, &subject),
            miss_through_cache(&text("m", i), &cache, &mut template, &policy, &subject),
        ];
        allowed += decisions.iter().filter(|&&a| a == Action::Allow).count();
    }
    println!("rounds {ROUNDS} allowed {allowed}");
}
