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
