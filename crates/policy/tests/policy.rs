//! Rule precedence, roles, lifetimes and file errors.

use std::path::Path;
use std::time::Duration;

use pgstepup_classify::{classify, SearchPath};
use pgstepup_policy::{Action, Mode, Policy, PolicyError, Subject};

fn policy(text: &str) -> Policy {
    pgstepup_policy::PolicySource::File {
        path: write(text),
        embedded: false,
    }
    .load()
    .unwrap()
}

fn write(text: &str) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let path = std::env::temp_dir().join(format!(
        "pgstepup-policy-{}-{}.toml",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&path, text).unwrap();
    path
}

/// Each of `sqls`, run by bob, gets `expected` (action, rule).
fn decides_all(policy: &Policy, sqls: &[&str], expected: (Action, &str)) {
    for sql in sqls {
        let (action, rule) = decide(policy, "bob", &[], sql);
        assert_eq!((action, rule.as_str()), expected, "{sql}");
    }
}

fn decide(policy: &Policy, user: &str, roles: &[&str], sql: &str) -> (Action, String) {
    let subject = Subject::new(user.into(), roles.iter().map(|r| r.to_string()).collect());
    let classification = classify(sql, &policy.read_only_functions);
    let d = policy.evaluate(&classification, &subject);
    (d.action, d.rule.to_string())
}

const POLICY: &str = r#"
mode = "enforce"
read_only_functions = ["app.safe_fn"]

[roles.oncall]
users = ["alice"]

[roles.intern]
users = ["ivan"]
can_elevate = false

[roles.dba]
upstream_roles = ["dba_team"]

[[rule]]
name = "sensitive-customers"
tables = ["public.customers", "billing.*"]
kinds = ["read"]
action = "step_up"
lifetime = "5m"
scope = "user"

[[rule]]
name = "scratch-is-free"
tables = ["scratch.*"]
action = "allow"

[[rule]]
name = "oncall-writes"
kinds = ["write"]
roles = ["oncall"]
action = "step_up"
lifetime = "30m"

[[rule]]
name = "no-drops-on-billing"
tables = ["billing.*"]
kinds = ["ddl"]
action = "deny"

[[rule]]
name = "dba-anything"
roles = ["dba"]
action = "allow"
"#;

#[test]
fn most_specific_rule_wins_per_facet_and_strictest_facet_wins() {
    let p = policy(POLICY);
    assert_eq!(
        decide(&p, "bob", &[], "SELECT * FROM orders"),
        (Action::Allow, "default-read".into())
    );
    // A sensitive table makes even a read need step-up; unqualified names match restrictive
    // rules (the search_path could resolve them there).
    assert_eq!(
        decide(&p, "bob", &[], "SELECT * FROM customers").1,
        "sensitive-customers"
    );
    assert_eq!(
        decide(&p, "bob", &[], "SELECT * FROM billing.invoices").0,
        Action::StepUp
    );
    // Allow rules need the schema written: an unqualified name might be elsewhere.
    assert_eq!(
        decide(&p, "bob", &[], "DELETE FROM scratch.tmp"),
        (Action::Allow, "scratch-is-free".into())
    );
    assert_eq!(decide(&p, "bob", &[], "DELETE FROM tmp").0, Action::StepUp);
    // Strictest facet: writing scratch while reading a sensitive table.
    let (action, rule) = decide(
        &p,
        "bob",
        &[],
        "INSERT INTO scratch.copy SELECT * FROM public.customers",
    );
    assert_eq!(
        (action, rule.as_str()),
        (Action::StepUp, "sensitive-customers")
    );
    // However a sensitive table is reached: through a CTE of its own name, a built-in that
    // names it, or a CTE whose scope has ended.
    for sql in [
        "WITH customers AS (SELECT * FROM customers) SELECT * FROM customers",
        "WITH x AS (SELECT * FROM customers), customers AS (SELECT 1) SELECT * FROM x",
        "SELECT * FROM (WITH customers AS (SELECT 1) SELECT * FROM customers) a, customers",
        "SELECT table_to_xml('public.customers', true, false, '')",
        "SELECT 1 UNION TABLE customers",
        "COPY (TABLE public.customers) TO STDOUT",
    ] {
        assert_eq!(
            decide(&p, "bob", &[], sql),
            (Action::StepUp, "sensitive-customers".into()),
            "{sql}"
        );
    }
    // A CTE that shadows the name reads nothing sensitive.
    assert_eq!(
        decide(
            &p,
            "bob",
            &[],
            "WITH customers AS (SELECT 1) SELECT * FROM customers"
        )
        .0,
        Action::Allow
    );
    // Exact table beats glob beats no table.
    assert_eq!(
        decide(&p, "bob", &[], "DROP TABLE billing.invoices"),
        (Action::Deny, "no-drops-on-billing".into())
    );
}

/// A schema where anything goes.
const SCRATCH_IS_FREE: &str = r#"
[[rule]]
name = "scratch-is-free"
tables = ["scratch.*"]
action = "allow"
"#;

/// A schema where anything goes must not open a way to write a protected one: a view that
/// writes through, a child or a partition linked to a protected table writes that table.
#[test]
fn objects_in_a_free_schema_cannot_become_a_way_to_write_a_protected_one() {
    let p = policy(&format!(
        r#"{SCRATCH_IS_FREE}
[[rule]]
name = "billing-is-read-only"
tables = ["billing.*"]
kinds = ["write", "ddl"]
action = "deny"
"#
    ));
    decides_all(
        &p,
        &[
            "CREATE VIEW scratch.cards AS SELECT * FROM billing.cards",
            "CREATE TABLE scratch.more_cards () INHERITS (billing.cards)",
            "CREATE TABLE scratch.cards_2 PARTITION OF billing.cards FOR VALUES IN (2)",
            "ALTER TABLE scratch.all_cards ATTACH PARTITION billing.cards FOR VALUES IN (1)",
            "ALTER TABLE scratch.more_cards INHERIT billing.cards",
            "CREATE TABLE scratch.uses (card int REFERENCES billing.cards)",
            "CREATE TABLE scratch.uses (card int, FOREIGN KEY (card) REFERENCES billing.cards (id))",
            "ALTER TABLE scratch.uses ADD CONSTRAINT c FOREIGN KEY (card) REFERENCES billing.cards",
            "ALTER TABLE scratch.uses ADD COLUMN card int REFERENCES billing.cards",
        ],
        (Action::Deny, "billing-is-read-only"),
    );
    // Copied defaults call the source's sequences on every insert: not the free schema's alone.
    assert_eq!(
        decide(
            &p,
            "bob",
            &[],
            "CREATE TABLE scratch.copy (LIKE billing.cards INCLUDING DEFAULTS)"
        )
        .0,
        Action::StepUp
    );
    // A CASCADE reaches tables and views the text does not name (billing's, perhaps): not
    // the free schema's alone.
    for sql in [
        "TRUNCATE scratch.customers CASCADE",
        "DROP TABLE scratch.customers CASCADE",
        "DROP VIEW scratch.customer_list CASCADE",
        "ALTER TABLE scratch.customers DROP COLUMN id CASCADE",
        "ALTER TABLE scratch.customers DROP CONSTRAINT customers_pkey CASCADE",
    ] {
        assert_eq!(decide(&p, "bob", &[], sql).0, Action::StepUp, "{sql}");
    }
    decides_all(
        &p,
        &[
            "TRUNCATE scratch.customers",
            "DROP TABLE scratch.customers",
            "ALTER TABLE scratch.customers DROP COLUMN id",
        ],
        (Action::Allow, "scratch-is-free"),
    );
    // What cannot write through, and partitioned tables of the free schema's own, stay free.
    decides_all(
        &p,
        &[
            "CREATE VIEW scratch.totals AS SELECT count(*) FROM billing.cards GROUP BY brand",
            "CREATE TABLE scratch.events (id int, at date) PARTITION BY RANGE (at)",
            "CREATE TABLE scratch.uses (card int REFERENCES scratch.cards)",
            "CREATE TABLE scratch.copy (LIKE billing.cards)",
        ],
        (Action::Allow, "scratch-is-free"),
    );
}

/// Statements about a protected table that change no row (privileges, triggers, comments,
/// its schema) meet the table's rules, not only the default for their kind.
#[test]
fn privileges_triggers_comments_and_schemas_meet_the_rules_of_their_tables() {
    let p = policy(&format!(
        r#"{SCRATCH_IS_FREE}
[[rule]]
name = "cards-locked"
tables = ["billing.cards"]
action = "deny"
"#
    ));
    decides_all(
        &p,
        &[
            "GRANT SELECT ON billing.cards TO PUBLIC",
            "GRANT ALL ON TABLE scratch.t, billing.cards TO bob",
            "REVOKE SELECT ON billing.cards FROM bob",
            "GRANT SELECT ON ALL TABLES IN SCHEMA billing TO bob",
            "GRANT USAGE ON SCHEMA billing TO PUBLIC",
            "CREATE TRIGGER t BEFORE INSERT ON billing.cards FOR EACH ROW EXECUTE FUNCTION f()",
            "DROP TRIGGER t ON billing.cards",
            "COMMENT ON TABLE billing.cards IS 'x'",
            "COMMENT ON COLUMN billing.cards.number IS 'x'",
            "DROP SCHEMA billing CASCADE",
            "DROP SCHEMA scratch, billing",
            "ALTER SCHEMA billing RENAME TO b2",
            "VACUUM FULL billing.cards",
            "VACUUM (VERBOSE) scratch.t (c), billing.cards",
            "CLUSTER billing.cards USING cards_pkey",
            "REINDEX TABLE CONCURRENTLY billing.cards",
            "REINDEX SCHEMA billing",
        ],
        (Action::Deny, "cards-locked"),
    );
    // Sequences and indexes are relations of their schema.
    let schema_locked =
        policy("[[rule]]\nname = \"billing\"\ntables = [\"billing.*\"]\naction = \"deny\"\n");
    decides_all(
        &schema_locked,
        &[
            "ALTER SEQUENCE billing.cards_id_seq RESTART",
            "DROP SEQUENCE billing.cards_id_seq",
            "DROP INDEX billing.cards_pkey",
            "ALTER INDEX billing.cards_pkey RENAME TO k",
            "GRANT USAGE ON SEQUENCE billing.cards_id_seq TO bob",
        ],
        (Action::Deny, "billing"),
    );
    // A whole free schema, and objects that are only in it, stay free.
    decides_all(
        &p,
        &[
            "GRANT SELECT ON ALL TABLES IN SCHEMA scratch TO bob",
            "GRANT SELECT ON scratch.t TO bob",
            "COMMENT ON COLUMN scratch.t.c IS 'x'",
            "DROP SCHEMA scratch",
            "DROP SEQUENCE scratch.s",
            "DROP INDEX scratch.i",
            "VACUUM scratch.t",
            "REINDEX SCHEMA scratch",
        ],
        (Action::Allow, "scratch-is-free"),
    );
    // A rule allowing one table of a schema does not allow the whole schema.
    let one_table =
        policy("[[rule]]\nname = \"one\"\ntables = [\"scratch.t\"]\naction = \"allow\"\n");
    assert_eq!(
        decide(&one_table, "bob", &[], "DROP SCHEMA scratch").0,
        Action::StepUp
    );
}

/// A text the parser cannot read, or a name longer than PostgreSQL keeps, still meets the
/// rule of the table it names: a deny does not become the default step-up.
#[test]
fn unparsed_texts_and_long_names_meet_the_rules_of_their_tables() {
    let long = format!("customer_cards_{}", "x".repeat(48));
    assert_eq!(long.len(), 63);
    let p = policy(&format!(
        "[[rule]]\nname = \"cards\"\ntables = [\"billing.cards\", \"{long}\"]\naction = \"deny\"\n"
    ));
    decides_all(
        &p,
        &[
            "SELECT xmlpi(name x, (SELECT num FROM billing.cards LIMIT 1))",
            "SELECT xmlpi(name x, (SELECT num FROM U&\"\\0062illing\".cards LIMIT 1))",
            &format!("SELECT * FROM {long}_ignored_suffix"),
            &format!("SELECT * FROM \"{long}_ignored\""),
        ],
        (Action::Deny, "cards"),
    );
}

/// A free schema cannot reach a protected one through a trigger's function, a move between
/// schemas, a column of the protected table's row type, its sequences, or DDL the parser
/// cannot read.
#[test]
fn moves_row_types_sequences_and_triggers_meet_the_protected_tables_rules() {
    let p = policy(&format!(
        r#"{SCRATCH_IS_FREE}
[[rule]]
name = "billing-locked"
tables = ["billing.*"]
action = "deny"
"#
    ));
    decides_all(
        &p,
        &[
            "ALTER SEQUENCE scratch.s SET SCHEMA billing",
            "ALTER TABLE scratch.t SET SCHEMA billing",
            "ALTER TABLE billing.cards SET SCHEMA scratch",
            "CREATE TABLE scratch.l (extra int, LIKE billing.cards)",
            "CREATE TABLE scratch.w (c billing.cards)",
            "ALTER TABLE scratch.t ADD COLUMN c billing.cards[]",
            "SELECT pg_sequence_last_value('billing.cards_id_seq')",
            "SELECT currval('billing.cards_id_seq')",
            "SELECT setval('billing.cards_id_seq', 1)",
            "CREATE MATERIALIZED VIEW scratch.mv AS SELECT * FROM billing.cards WITH NO DATA",
            "CREATE TABLE scratch.o OF billing.cards",
        ],
        (Action::Deny, "billing-locked"),
    );
    // Attaching a function as a trigger calls it at every firing: not the free schema's alone.
    for sql in [
        "CREATE TRIGGER tr AFTER INSERT ON scratch.t FOR EACH ROW EXECUTE FUNCTION billing.audit()",
        "CREATE TRIGGER tr AFTER INSERT ON scratch.t FOR EACH ROW EXECUTE PROCEDURE audit()",
    ] {
        assert_eq!(decide(&p, "bob", &[], sql).0, Action::StepUp, "{sql}");
    }
    decides_all(
        &p,
        &["CREATE TABLE scratch.e (m public.mood, n int[])"],
        (Action::Allow, "scratch-is-free"),
    );
}

/// A rule that freezes a schema's definitions (DDL and privileges only) meets every
/// statement that changes a table there, parsed or not.
#[test]
fn a_frozen_schema_meets_every_change_of_its_tables() {
    let p = policy(
        "[[rule]]\nname = \"billing-frozen\"\ntables = [\"billing.*\"]\nkinds = [\"ddl\", \"dcl\"]\naction = \"deny\"\n",
    );
    decides_all(
        &p,
        &[
            "ALTER TABLE billing.inv SET SCHEMA b3",
            "ALTER TABLE IF EXISTS billing.inv SET SCHEMA b3",
            "CREATE RULE r AS ON INSERT TO billing.inv DO INSTEAD NOTHING",
            "DROP RULE r ON billing.inv",
            "CREATE POLICY p ON billing.inv USING (true)",
            "ALTER POLICY p ON billing.inv USING (false)",
            "DROP POLICY p ON billing.inv",
            "ALTER TRIGGER t ON billing.inv RENAME TO u",
            "ALTER VIEW billing.v OWNER TO x",
            "SECURITY LABEL ON TABLE billing.inv IS 'x'",
            "CREATE STATISTICS s ON a, b FROM billing.inv",
            "GRANT SELECT ON billing.inv TO PUBLIC",
        ],
        (Action::Deny, "billing-frozen"),
    );
}

#[test]
fn the_earliest_of_equally_specific_rules_decides() {
    let p = policy(
        r#"
[[rule]]
name = "first"
tables = ["public.orders"]
kinds = ["write"]
action = "step_up"
lifetime = "5m"

[[rule]]
name = "second"
tables = ["public.orders"]
kinds = ["write"]
action = "step_up"
lifetime = "30m"
"#,
    );
    assert_eq!(
        decide(&p, "bob", &[], "UPDATE public.orders SET n = 1"),
        (Action::StepUp, "first".into())
    );
}

#[test]
fn roles_select_rules_and_can_bar_elevation() {
    let p = policy(POLICY);
    assert_eq!(p.roles_of("alice", &[]), vec!["oncall".to_owned()]);
    assert_eq!(
        p.roles_of("carol", &["dba_team".into()]),
        vec!["dba".to_owned()]
    );
    let update = classify("UPDATE orders SET x = 1", &[]);
    let d = p.evaluate(
        &update,
        &Subject::new("alice".into(), vec!["oncall".into()]),
    );
    assert_eq!(
        (d.action, d.rule, d.lifetime),
        (Action::StepUp, "oncall-writes", Duration::from_secs(1800))
    );
    // A role-specific rule beats the built-in default for the same kind; others get the default.
    assert_eq!(
        decide(&p, "bob", &[], "UPDATE orders SET x = 1").1,
        "default-write"
    );
    // The dba role allows everything not more specifically ruled.
    assert_eq!(
        decide(&p, "carol", &["dba"], "VACUUM orders").0,
        Action::Allow
    );
    assert_eq!(
        decide(&p, "carol", &["dba"], "DROP TABLE billing.x").0,
        Action::Deny
    );
    // Interns may read but any step-up becomes a denial.
    assert_eq!(decide(&p, "ivan", &["intern"], "SELECT 1").0, Action::Allow);
    let (action, _) = decide(&p, "ivan", &["intern"], "DELETE FROM orders");
    assert_eq!(action, Action::Deny);
}

#[test]
fn lifetimes_scopes_functions_and_pinned_settings() {
    let p = policy(POLICY);
    let billing = classify("SELECT * FROM billing.x", &[]);
    let d = p.evaluate(&billing, &Subject::default());
    assert_eq!(d.lifetime, Duration::from_secs(300));
    assert_eq!(d.scope, pgstepup_policy::Scope::User);
    let grant = classify("GRANT SELECT ON t TO x", &[]);
    let d = p.evaluate(&grant, &Subject::default());
    assert_eq!((d.action, d.lifetime), (Action::StepUp, Duration::ZERO));
    assert_eq!(
        decide(&p, "bob", &[], "SELECT app.safe_fn(1)").0,
        Action::Allow
    );
    assert_eq!(
        decide(&p, "bob", &[], "SELECT app.other_fn(1)").0,
        Action::StepUp
    );
    assert_eq!(
        decide(
            &p,
            "carol",
            &["dba"],
            "SET standard_conforming_strings = off"
        ),
        (Action::Deny, "pinned-setting".into())
    );
}

#[test]
fn builtin_default_and_observe_mode() {
    let p = Policy::builtin();
    assert_eq!(p.mode, Mode::Enforce);
    for (sql, action) in [
        ("SELECT 1", Action::Allow),
        ("BEGIN", Action::Allow),
        ("SET application_name = 'x'", Action::Allow),
        ("INSERT INTO t VALUES (1)", Action::StepUp),
        ("CREATE TABLE t (x int)", Action::StepUp),
        ("GRANT SELECT ON t TO u", Action::StepUp),
        ("SET ROLE admin", Action::StepUp),
        ("VACUUM t", Action::StepUp),
        ("FROBNICATE", Action::StepUp),
        ("", Action::Allow),
    ] {
        assert_eq!(decide(&p, "u", &[], sql).0, action, "{sql}");
    }
    assert_eq!(policy("mode = \"observe\"\n").mode, Mode::Observe);
}

#[test]
fn errors_name_file_line_and_reason() {
    let cases = [
        ("[[rule]]\nname = \"x\"\naction = \"maybe\"\n", "maybe"),
        (
            "[[rule]]\nname = \"x\"\nkinds = [\"reads\"]\naction = \"allow\"\n",
            "unknown kind",
        ),
        (
            "\n\n[[rule]]\nname = \"x\"\nroles = [\"ghost\"]\naction = \"allow\"\n",
            "ghost",
        ),
        (
            "[[rule]]\nname = \"x\"\naction = \"step_up\"\nlifetime = \"soon\"\n",
            "lifetime",
        ),
        (
            "[[rule]]\nname = \"x\"\ntables = [\"a.b.c\"]\naction = \"deny\"\n",
            "schema.table",
        ),
        ("[[rule]]\nname = \"x\"\nactoin = \"deny\"\n", "actoin"),
        ("", "empty"),
        ("# only a comment\n\n", "empty"),
    ];
    for (text, needle) in cases {
        let path = write(text);
        let err = pgstepup_policy::PolicySource::File {
            path: path.clone(),
            embedded: false,
        }
        .load()
        .unwrap_err();
        let message = err.to_string();
        assert!(
            message.starts_with(&path.display().to_string()),
            "{message}"
        );
        assert!(message.contains(needle), "{message}");
        assert!(message.contains("line"), "{message}");
    }
    let err = pgstepup_policy::PolicySource::File {
        path: Path::new("/nonexistent/policy.toml").into(),
        embedded: false,
    }
    .load()
    .unwrap_err();
    assert!(matches!(err, PolicyError::Read { .. }));
}

#[test]
fn embedded_in_the_main_configuration() {
    let path = write("[proxy]\nlisten = \"127.0.0.1:1\"\n\n[policy]\nmode = \"observe\"\n\n[[policy.rule]]\nname = \"r\"\nkinds = [\"write\"]\naction = \"deny\"\n");
    let p = pgstepup_policy::PolicySource::File {
        path,
        embedded: true,
    }
    .load()
    .unwrap();
    assert_eq!(p.mode, Mode::Observe);
    assert_eq!(p.rules[0].name, "r");
    assert_eq!(p.rules[0].line, Some(7));
}

#[test]
fn the_documented_example_policy_loads_and_lints_clean() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/policy.example.toml");
    let p = pgstepup_policy::PolicySource::File {
        path,
        embedded: false,
    }
    .load()
    .unwrap();
    assert!(p.lint().is_empty(), "{:?}", p.lint());
    assert_eq!(
        decide(
            &p,
            "alice",
            &p.roles_of("alice", &[])
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
            "SELECT * FROM public.customers"
        )
        .1,
        "customer-data"
    );
}

#[test]
fn hold_timeouts_and_refuse_at_once_applications() {
    let p = policy(
        r#"
[[rule]]
name = "slow-approvers"
tables = ["public.orders"]
action = "step_up"
timeout = "45s"

[applications]
refuse_at_once = ["DBeaver*", "PostgreSQL JDBC Driver"]
"#,
    );
    let subject = Subject::new("alice".into(), Vec::new());
    let held = classify("DELETE FROM orders", &[]);
    assert_eq!(
        p.evaluate(&held, &subject).hold_timeout,
        Duration::from_secs(45)
    );
    let default = classify("DELETE FROM invoices", &[]);
    assert_eq!(
        p.evaluate(&default, &subject).hold_timeout,
        Duration::from_secs(120)
    );
    assert!(p.refuses_at_once("DBeaver 24.1.0 - Main"));
    assert!(p.refuses_at_once("PostgreSQL JDBC Driver"));
    assert!(!p.refuses_at_once("psql"));
    assert!(!Policy::builtin().refuses_at_once(""));

    let err = pgstepup_policy::PolicySource::File {
        path: write("\n[[rule]]\nname = \"r\"\naction = \"step_up\"\ntimeout = \"0\"\n"),
        embedded: false,
    }
    .load()
    .unwrap_err();
    assert!(
        matches!(&err, PolicyError::Invalid { line: 2, .. }) && err.to_string().contains("timeout"),
        "{err}"
    );
}

#[test]
fn unqualified_names_may_be_in_any_schema_the_search_path_lists() {
    let p = policy(
        r#"
[[rule]]
name = "billing"
tables = ["billing.*"]
kinds = ["read"]
action = "step_up"

[[rule]]
name = "passwords"
tables = ["pg_catalog.pg_authid"]
action = "deny"

[[rule]]
name = "scratch"
tables = ["scratch.*"]
action = "allow"
"#,
    );
    let decide_as = |search_path: Option<SearchPath>, sql: &str| {
        let subject = Subject {
            search_path,
            ..Subject::new("dave".into(), Vec::new())
        };
        let classification = classify(sql, &[]);
        let decision = p.evaluate(&classification, &subject);
        (decision.action, decision.rule.to_owned())
    };
    let listed = |schemas: &[&str]| {
        Some(SearchPath::Schemas(
            schemas.iter().map(|s| s.to_string()).collect(),
        ))
    };
    let read = "SELECT * FROM invoices";
    assert_eq!(
        decide_as(None, read),
        (Action::Allow, "default-read".into())
    );
    for path in [
        listed(&["billing", "public"]),
        listed(&["Billing", "billing"]),
        Some(SearchPath::Unknown),
    ] {
        assert_eq!(
            decide_as(path.clone(), read),
            (Action::StepUp, "billing".into()),
            "{path:?}"
        );
    }
    assert_eq!(
        decide_as(listed(&["hr"]), read),
        (Action::Allow, "default-read".into())
    );
    // The text's own SET counts for its later statements.
    assert_eq!(
        decide_as(None, "SET search_path = billing; SELECT * FROM invoices"),
        (Action::StepUp, "billing".into())
    );
    // pg_catalog is searched first whatever the path says.
    assert_eq!(
        decide_as(None, "SELECT * FROM pg_authid"),
        (Action::Deny, "passwords".into())
    );
    // A rule that allows still needs its schema written.
    assert_eq!(
        decide_as(listed(&["scratch"]), "INSERT INTO notes VALUES (1)"),
        (Action::StepUp, "default-write".into())
    );
    assert_eq!(
        decide_as(None, "INSERT INTO scratch.notes VALUES (1)"),
        (Action::Allow, "scratch".into())
    );
}
