//! The classification corpus (crates/classify/tests/corpus/*.jsonl): real client traffic and
//! every hidden-write form, each with the decision the built-in policy must reach. A write
//! that slips through as a read fails this test.

use std::path::Path;

use pgstepup_classify::classify;
use pgstepup_policy::{Policy, Subject};
use serde_json::Value;

#[test]
fn corpus_decisions_under_the_default_policy() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../classify/tests/corpus");
    let policy = Policy::builtin();
    let subject = Subject::default();
    let mut failures = Vec::new();
    let mut total = 0;
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("the corpus directory")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            total += 1;
            let entry: Value = serde_json::from_str(line).unwrap();
            let sql = entry["sql"].as_str().unwrap();
            let classification = classify(sql, &[]);
            let decision = policy.evaluate(&classification, &subject);
            let expected = entry["decision"].as_str().unwrap();
            let mut problems = Vec::new();
            if decision.action.name() != expected {
                problems.push(format!(
                    "decision {} (rule {}), expected {expected}",
                    decision.action, decision.rule
                ));
            }
            for kind in entry["kinds"].as_array().unwrap() {
                let kind = kind.as_str().unwrap();
                if !classification.kinds.iter().any(|k| k.name() == kind) {
                    problems.push(format!("missing kind {kind}"));
                }
            }
            if let Some(writes) = entry.get("writes").and_then(Value::as_array) {
                let reported: Vec<String> = classification
                    .writes()
                    .iter()
                    .map(|t| t.to_string())
                    .collect();
                for table in writes {
                    let table = table.as_str().unwrap();
                    if !reported.iter().any(|r| r == table) {
                        problems.push(format!("write to {table} not reported (got {reported:?})"));
                    }
                }
            }
            if !problems.is_empty() {
                let name = file.file_name().unwrap().to_string_lossy();
                let shown: String = sql.chars().take(120).collect();
                failures.push(format!(
                    "{name}:{}: {}\n    {shown:?}",
                    n + 1,
                    problems.join("; ")
                ));
            }
        }
    }
    assert!(total >= 300, "the corpus has {total} entries");
    assert!(
        failures.is_empty(),
        "{} of {total} corpus entries failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
