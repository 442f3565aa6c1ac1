//! `pgstepup check`: the DBA's tool to try a policy on SQL, or to lint a policy file.

use std::io::{BufRead, Read, Write};
use std::path::PathBuf;

use anyhow::Context;
use pgstepup_classify::{classify, Classification, SearchPath};
use pgstepup_config::{Config, Overrides};
use pgstepup_policy::{Decision, Policy, PolicySource, Subject};

#[derive(clap::Args)]
pub struct CheckArgs {
    /// Configuration file whose policy to use; the built-in default without it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// A policy file of its own (instead of the configuration's policy).
    #[arg(long, value_name = "FILE", conflicts_with = "config")]
    policy: Option<PathBuf>,
    /// Decide as this user (their policy roles apply; upstream roles are not looked up here).
    #[arg(long, value_name = "NAME", default_value = "")]
    user: String,
    /// Decide as a session that has put these schemas on its search_path (`billing, public`):
    /// its unqualified table names may then be in any of them.
    #[arg(long, value_name = "SCHEMAS")]
    search_path: Option<String>,
    /// Read one JSON string per stdin line (one query text each); print one JSON object per line.
    #[arg(long, conflicts_with = "sql")]
    jsonl: bool,
    /// Validate the policy and report problems instead of checking SQL.
    #[arg(long, conflicts_with_all = ["sql", "jsonl"])]
    lint: bool,
    /// The SQL to check; read from stdin when absent.
    sql: Option<String>,
}

pub fn run(args: CheckArgs) -> anyhow::Result<()> {
    let source = match &args.policy {
        Some(path) => PolicySource::File {
            path: path.clone(),
            embedded: false,
        },
        None => {
            let config = Config::load(args.config.as_deref(), Overrides::default())?;
            PolicySource::for_config(config.path.as_deref(), config.policy.as_ref())
        }
    };
    let policy = source.load()?;
    if args.lint {
        return lint(&policy, &source);
    }
    let subject = Subject {
        search_path: args.search_path.as_deref().map(SearchPath::from_value),
        ..Subject::new(args.user.clone(), policy.roles_of(&args.user, &[]))
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if args.jsonl {
        for (n, line) in std::io::stdin().lock().lines().enumerate() {
            let line = line.context("reading stdin")?;
            if line.trim().is_empty() {
                continue;
            }
            let sql: String = serde_json::from_str(&line)
                .with_context(|| format!("stdin line {}: expected one JSON string", n + 1))?;
            let classification = classify(&sql, &policy.read_only_functions);
            let decision = policy.evaluate(&classification, &subject);
            writeln!(out, "{}", json(&classification, &decision))?;
        }
        return Ok(());
    }
    let sql = match args.sql {
        Some(sql) => sql,
        None => {
            let mut sql = String::new();
            std::io::stdin()
                .read_to_string(&mut sql)
                .context("reading stdin")?;
            sql
        }
    };
    let classification = classify(&sql, &policy.read_only_functions);
    let decision = policy.evaluate(&classification, &subject);
    write!(out, "{}", human(&classification, &decision, &policy))?;
    Ok(())
}

fn lint(policy: &Policy, source: &PolicySource) -> anyhow::Result<()> {
    let warnings = policy.lint();
    let origin = match source.path() {
        Some(path) => path.display().to_string(),
        None => "built-in default policy".into(),
    };
    let rules = policy.rules.iter().filter(|r| !r.builtin).count();
    println!("{origin}: valid, {rules} rule(s), mode {:?}", policy.mode);
    for warning in &warnings {
        println!("warning: {warning}");
    }
    if !warnings.is_empty() {
        // Warnings are findings, not failures of the tool: report them through the exit code.
        std::process::exit(1);
    }
    Ok(())
}

fn names<T: ToString>(items: impl IntoIterator<Item = T>) -> Vec<String> {
    items.into_iter().map(|i| i.to_string()).collect()
}

fn tables(c: &Classification) -> Vec<String> {
    let mut all = names(c.writes().into_iter().chain(c.reads()));
    let mut seen = std::collections::HashSet::new();
    all.retain(|t| seen.insert(t.clone()));
    all
}

fn json(c: &Classification, d: &Decision) -> serde_json::Value {
    serde_json::json!({
        "decision": d.action.name(),
        "rule": d.rule,
        "reason": d.reason(),
        "kinds": names(c.kinds.iter().map(|k| k.name())),
        "tables": tables(c),
        "reads": names(c.reads()),
        "writes": names(c.writes()),
        "functions": c.functions,
        "lifetime_secs": d.lifetime.as_secs(),
        "scope": format!("{:?}", d.scope).to_lowercase(),
        "parsed": c.fully_parsed,
    })
}

fn human(c: &Classification, d: &Decision, policy: &Policy) -> String {
    let list = |items: Vec<String>| {
        if items.is_empty() {
            "-".to_owned()
        } else {
            items.join(", ")
        }
    };
    let mut out = String::new();
    out.push_str(&format!("decision:  {}\n", d.action));
    out.push_str(&format!("rule:      {}\n", d.rule));
    out.push_str(&format!("reason:    {}\n", d.reason()));
    out.push_str(&format!(
        "kinds:     {}\n",
        list(names(c.kinds.iter().map(|k| k.name())))
    ));
    out.push_str(&format!("reads:     {}\n", list(names(c.reads()))));
    out.push_str(&format!("writes:    {}\n", list(names(c.writes()))));
    out.push_str(&format!("functions: {}\n", list(c.functions.clone())));
    if d.action == pgstepup_policy::Action::StepUp {
        let lifetime = d.lifetime.as_secs();
        let lifetime = if lifetime == 0 {
            "this statement only".to_owned()
        } else {
            format!("{lifetime}s")
        };
        out.push_str(&format!("elevation: {lifetime}, scope {:?}\n", d.scope).to_lowercase());
    }
    for reason in c.reasons.iter().skip(1) {
        out.push_str(&format!("also:      {reason}\n"));
    }
    if !c.fully_parsed {
        out.push_str("note:      not everything parsed; keywords decided (fail closed)\n");
    }
    if policy.mode == pgstepup_policy::Mode::Observe {
        out.push_str("mode:      observe (reported only, nothing is held)\n");
    }
    out
}
