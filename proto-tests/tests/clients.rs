//! psql, psycopg 3, asyncpg, pgJDBC and node-postgres, run as real programs through a real pgstepup
//! (TLS with certificate verification, SCRAM) against the real PostgreSQL. Each script checks
//! real values and exits non-zero on any failed check (see proto-tests/clients/README.md).

use std::path::{Path, PathBuf};
use std::time::Duration;

use proto_tests::{app_role, use_policy_file, write_policy, Auth, TestProxy};

fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("clients")
}

async fn run_client(program: &str, args: &[&str]) {
    run_client_through(TestProxy::start(), program, args).await;
}

async fn run_client_through(proxy: TestProxy, program: &str, args: &[&str]) {
    app_role().await;
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .current_dir(clients_dir())
        .envs(proxy.client_env("verify-full"))
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(180), command.output())
        .await
        .unwrap_or_else(|_| panic!("{program} {args:?} did not finish in time"))
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(
        output.status.success(),
        "{program} {args:?} failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    assert!(stdout.contains("ok "), "no checks reported:\n{stdout}");
    assert!(!stdout.contains("FAIL"), "{stdout}");
}

#[tokio::test]
async fn psql() {
    run_client("bash", &["psql/run.sh"]).await;
}

#[tokio::test]
async fn psycopg3() {
    run_client("python3", &["python/psycopg_client.py"]).await;
}

/// asyncpg under the built-in default policy (no test allowances), every step-up refused at
/// once: its pool's reset and type introspection must pass as the reads they are.
#[tokio::test]
async fn asyncpg() {
    let proxy = TestProxy::with(Auth::Scram, true, |config| {
        use_policy_file(config, &write_policy(""));
    });
    run_client_through(proxy, "python3", &["python/asyncpg_client.py"]).await;
}

#[tokio::test]
async fn pgjdbc() {
    run_client(
        "java",
        &[
            "-cp",
            "/usr/share/java/postgresql.jar",
            "java/JdbcClient.java",
        ],
    )
    .await;
}

/// DBeaver's and DataGrip's connect and refresh queries through pgJDBC under the built-in
/// default policy, every step-up refused at once: DataGrip's `txid_current()` probe included.
#[tokio::test]
async fn pgjdbc_ide_introspection() {
    let proxy = TestProxy::with(Auth::Scram, true, |config| {
        use_policy_file(config, &write_policy(""));
    });
    run_client_through(
        proxy,
        "java",
        &[
            "-cp",
            "/usr/share/java/postgresql.jar",
            "java/JdbcClient.java",
            "ide-introspection",
        ],
    )
    .await;
}

#[tokio::test]
async fn node_postgres() {
    run_client("node", &["node/pg_client.js"]).await;
}

/// pg_dump through pgstepup under the built-in default policy, every step-up refused at once:
/// a dump reads, so it must run without a prompt. Its own traffic: `set_config(name, ...)
/// FROM pg_settings WHERE name = ...`, `LOCK TABLE ... IN ACCESS SHARE MODE` on every table,
/// `PREPARE`d catalog queries it then `EXECUTE`s (functions, types), with `-j` an exported
/// snapshot, and with `-t` a lookup through `OPERATOR(pg_catalog.=) ANY`.
#[tokio::test]
async fn pg_dump() {
    let database = format!("pgdump_{}", std::process::id());
    proto_tests::admin(&format!("DROP DATABASE IF EXISTS {database}")).await;
    proto_tests::admin(&format!("CREATE DATABASE {database}")).await;
    proto_tests::admin_in(
        &database,
        "CREATE TYPE mood AS ENUM ('calm', 'busy');
         CREATE TABLE visits (id int PRIMARY KEY, mood mood, note text);
         INSERT INTO visits VALUES (1, 'calm', 'first'), (2, 'busy', 'second');
         CREATE FUNCTION visit_note(int) RETURNS text LANGUAGE sql STABLE
             AS $$ SELECT note FROM visits WHERE id = $1 $$;
         CREATE VIEW calm_visits AS SELECT * FROM visits WHERE mood = 'calm';",
    )
    .await;
    let proxy = TestProxy::with(Auth::Passthrough, false, |config| {
        use_policy_file(config, &write_policy(""));
    });
    let port = proxy.addr.port().to_string();
    let dir = std::env::temp_dir().join(format!("{database}-dir"));
    let _ = std::fs::remove_dir_all(&dir);
    let dir_arg = dir.display().to_string();
    let plain = ["-d", &database];
    let parallel = ["-d", &database, "-Fd", "-j", "2", "-f", &dir_arg];
    // A table pattern: its lookup writes `OPERATOR(pg_catalog.=) ANY (...)`.
    let one_table = ["-d", &database, "-t", "visits"];
    for args in [&plain[..], &parallel[..], &one_table[..]] {
        let output = tokio::process::Command::new("pg_dump")
            .args(["-h", "127.0.0.1", "-p", &port, "-U", "postgres"])
            .args(args)
            .env("PGSSLMODE", "disable")
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(Duration::from_secs(120), output)
            .await
            .expect("pg_dump finished in time")
            .expect("pg_dump runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "pg_dump {args:?}: {stderr}");
        if args == plain {
            let dump = String::from_utf8_lossy(&output.stdout);
            for expected in [
                "CREATE TYPE public.mood AS ENUM",
                "CREATE FUNCTION public.visit_note(integer)",
                "CREATE VIEW public.calm_visits",
                "1\tcalm\tfirst",
            ] {
                assert!(
                    dump.contains(expected),
                    "no {expected:?} in the dump:\n{dump}"
                );
            }
        }
    }
    assert!(dir.join("toc.dat").exists());
    let _ = std::fs::remove_dir_all(&dir);
    drop(proxy);
    proto_tests::admin(&format!("DROP DATABASE {database} WITH (FORCE)")).await;
}
