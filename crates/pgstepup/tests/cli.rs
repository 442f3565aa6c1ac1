//! The `pgstepup` binary as a DBA runs it: flags without a file, a config file, and the
//! errors a bad file gets.

use std::process::{Command, Stdio};
use std::time::Duration;

fn pgstepup() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pgstepup"))
}

/// Runs a command that must fail; returns what it said on standard error.
fn fails(command: &mut Command) -> String {
    let out = command.output().unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn temp_file(name: &str, text: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("pgstepup-cli-{}-{name}", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn config_errors_name_the_file_the_key_and_the_problem() {
    let path = temp_file("bad.toml", "[upstream]\nurl = \"mysql://db:3306\"\n");
    let stderr = fails(pgstepup().args(["serve", "--config"]).arg(&path));
    assert!(stderr.contains(&path.display().to_string()), "{stderr}");
    assert!(stderr.contains("upstream.url"), "{stderr}");
    assert!(stderr.contains("mysql"), "{stderr}");

    let path = temp_file("typo.toml", "[proxy]\nlisten = \"127.0.0.1:1\"\nport = 5\n");
    let stderr = fails(pgstepup().args(["serve", "--config"]).arg(&path));
    assert!(
        stderr.contains("line 3") && stderr.contains("port"),
        "{stderr}"
    );

    let stderr = fails(pgstepup().args(["serve", "--listen", "no-port-here"]));
    assert!(
        stderr.contains("command-line") && stderr.contains("proxy.listen"),
        "{stderr}"
    );
}

/// Starts `pgstepup serve` with `args` on a free port and connects as `postgres` (trust
/// upstream, passthrough auth), retrying while it comes up.
async fn serve_and_connect(args: &[&str]) -> (tokio::process::Child, tokio_postgres::Client) {
    let port = free_port();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgstepup"))
        .arg("serve")
        .args(args)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--upstream", "postgres://127.0.0.1:5432"])
        .args(["--web-listen", "127.0.0.1:0"])
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let conn_str = format!("host=127.0.0.1 port={port} user=postgres dbname=postgres");
    for _ in 0..50 {
        if let Ok((client, conn)) = tokio_postgres::connect(&conn_str, tokio_postgres::NoTls).await
        {
            tokio::spawn(conn);
            return (child, client);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("pgstepup did not come up on port {port}");
}

#[tokio::test]
async fn serves_with_flags_only_and_stops_on_sigterm() {
    let (mut child, client) = serve_and_connect(&[]).await;
    let row = client.query_one("SELECT 40 + 2", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);

    let pid = child.id().unwrap().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("stops on SIGTERM")
        .unwrap();
    assert!(status.success(), "{status:?}");
}

fn check(args: &[&str], stdin: &str) -> (bool, String) {
    use std::io::Write;
    let mut child = pgstepup()
        .arg("check")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn check_explains_a_decision_for_a_person() {
    let (ok, out) = check(&["DELETE FROM public.orders WHERE id = 7"], "");
    assert!(ok, "{out}");
    assert!(out.contains("decision:  step_up"), "{out}");
    assert!(out.contains("rule:      default-write"), "{out}");
    assert!(out.contains("writes:    public.orders"), "{out}");
    // SQL from stdin too.
    let (ok, out) = check(&[], "SELECT * FROM pg_class");
    assert!(ok && out.contains("decision:  allow"), "{out}");
}

#[test]
fn check_jsonl_prints_one_object_per_line() {
    let input = [
        "\"SELECT 1\"",
        "\"INSERT INTO t VALUES (1); SELECT 2\"",
        "\"SET standard_conforming_strings = off\"",
        "\"DO $$ BEGIN END $$\"",
    ]
    .join("\n");
    let (ok, out) = check(&["--jsonl"], &input);
    assert!(ok, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    let decisions: Vec<String> = lines
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            for key in ["decision", "kinds", "tables", "rule", "reason"] {
                assert!(v.get(key).is_some(), "{key} missing in {l}");
            }
            v["decision"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(decisions, ["allow", "step_up", "deny", "step_up"]);
}

#[test]
fn check_uses_the_configured_policy_and_the_users_roles() {
    let policy = temp_file(
        "policy.toml",
        "[roles.oncall]\nusers = [\"alice\"]\n\n[[rule]]\nname = \"oncall-writes\"\nkinds = [\"write\"]\nroles = [\"oncall\"]\naction = \"allow\"\n",
    );
    let config = temp_file(
        "with-policy.toml",
        &format!("[policy]\nfile = \"{}\"\n", policy.display()),
    );
    let config = config.display().to_string();
    let (_, out) = check(
        &["--config", &config, "--user", "alice", "UPDATE t SET a = 1"],
        "",
    );
    assert!(
        out.contains("decision:  allow") && out.contains("oncall-writes"),
        "{out}"
    );
    let (_, out) = check(
        &["--config", &config, "--user", "bob", "UPDATE t SET a = 1"],
        "",
    );
    assert!(out.contains("decision:  step_up"), "{out}");
}

#[test]
fn check_decides_as_a_session_with_the_search_path_given() {
    let policy = temp_file(
        "billing-policy.toml",
        "[[rule]]\nname = \"billing\"\ntables = [\"billing.*\"]\nkinds = [\"read\"]\naction = \"deny\"\n",
    );
    let policy = policy.display().to_string();
    let read = "SELECT * FROM invoices";
    let (_, out) = check(&["--policy", &policy, read], "");
    assert!(out.contains("decision:  allow"), "{out}");
    let (_, out) = check(
        &[
            "--policy",
            &policy,
            "--search-path",
            "billing, public",
            read,
        ],
        "",
    );
    assert!(
        out.contains("decision:  deny") && out.contains("billing"),
        "{out}"
    );
}

#[test]
fn lint_reports_problems_and_refuses_invalid_files() {
    let good = temp_file(
        "good-policy.toml",
        "[[rule]]\nname = \"r\"\nkinds = [\"write\"]\naction = \"deny\"\n",
    );
    let (ok, out) = check(&["--policy", &good.display().to_string(), "--lint"], "");
    assert!(ok, "{out}");
    assert!(out.contains("valid, 1 rule(s)"), "{out}");

    let warned = temp_file(
        "warned-policy.toml",
        "[[rule]]\nname = \"r\"\ntables = [\"public.Users\"]\naction = \"deny\"\n",
    );
    let (ok, out) = check(&["--policy", &warned.display().to_string(), "--lint"], "");
    assert!(!ok && out.contains("upper case"), "{out}");

    let bad = temp_file(
        "bad-policy.toml",
        "\n[[rule]]\nname = \"r\"\nkinds = [\"wirte\"]\naction = \"deny\"\n",
    );
    let (ok, out) = check(&["--policy", &bad.display().to_string(), "--lint"], "");
    assert!(!ok, "{out}");
    assert!(
        out.contains(&bad.display().to_string()) && out.contains("wirte") && out.contains("line 4"),
        "{out}"
    );
}

#[test]
fn audit_verify_checks_the_chain() {
    let path =
        std::env::temp_dir().join(format!("pgstepup-cli-{}-audit.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let log = pgstepup_audit::AuditLog::open(&path, "test".into()).unwrap();
    for user in ["alice", "bob"] {
        log.record(&pgstepup_audit::Record {
            event: "statement_refused",
            user: Some(user.into()),
            ..Default::default()
        })
        .unwrap();
    }
    drop(log);
    let out = pgstepup()
        .args(["audit", "verify"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("2 record(s)"));

    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("\"bob\"", "\"eve\"");
    std::fs::write(&path, text).unwrap();
    let stderr = fails(pgstepup().args(["audit", "verify"]).arg(&path));
    assert!(stderr.contains("line 2"), "{stderr}");
}

#[tokio::test]
async fn sighup_reloads_the_policy() {
    let table = format!("cli_sighup_{}", std::process::id());
    let allow = format!(
        "[[rule]]\nname = \"may-write\"\ntables = [\"public.{table}\"]\nkinds = [\"write\", \"ddl\"]\naction = \"allow\"\n"
    );
    let policy = temp_file("sighup-policy.toml", &allow);
    let config = temp_file(
        "sighup.toml",
        &format!(
            "[policy]\nfile = \"{}\"\n[audit]\nfile = \"{}.audit\"\n",
            policy.display(),
            policy.display()
        ),
    );
    let config = config.display().to_string();
    let (mut child, client) = serve_and_connect(&["--config", &config]).await;
    client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS public.{table}; CREATE TABLE public.{table} (v int)"
        ))
        .await
        .unwrap();
    let insert = format!("INSERT INTO public.{table} VALUES (1)");
    client.batch_execute(&insert).await.unwrap();

    // Rewrite the policy but keep its modification time, so only SIGHUP can bring it in.
    let modified = std::fs::metadata(&policy).unwrap().modified().unwrap();
    // The built-in default, with step-up refused at once rather than held.
    std::fs::write(&policy, "[applications]\nrefuse_at_once = [\"*\"]\n").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&policy)
        .unwrap()
        .set_modified(modified)
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    client
        .batch_execute(&insert)
        .await
        .expect("not reloaded without a signal");

    let pid = child.id().unwrap().to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    let mut refused = false;
    for _ in 0..50 {
        if client.batch_execute(&insert).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(refused, "SIGHUP did not reload the policy");
    let _ = child.kill().await;
    let (admin, conn) = tokio_postgres::connect(
        "host=127.0.0.1 port=5432 user=postgres dbname=postgres",
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    admin
        .batch_execute(&format!("DROP TABLE public.{table}"))
        .await
        .unwrap();
}

#[tokio::test]
async fn enroll_and_keys_reach_the_running_server_through_its_admin_socket() {
    let socket =
        std::env::temp_dir().join(format!("pgstepup-cli-admin-{}.sock", std::process::id()));
    let socket = socket.display().to_string();
    let credentials = temp_file("cli-credentials.json", "[]");
    let config = temp_file(
        "admin.toml",
        &format!(
            "[step_up]\ncredentials = \"{}\"\n[web]\npublic_url = \"https://stepup.example.com\"\n",
            credentials.display()
        ),
    );
    let config = config.display().to_string();
    let (mut child, _client) =
        serve_and_connect(&["--config", &config, "--admin-socket", &socket]).await;
    let mode = std::fs::metadata(&socket).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600,
        "only the service's user may use the admin socket"
    );

    // As an admin runs them: the same configuration as `serve`.
    let admin = |args: &[&str]| {
        pgstepup()
            .args(args)
            .args(["--config", &config, "--admin-socket", &socket])
            .output()
            .unwrap()
    };
    let out = admin(&["enroll", "alice"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let link = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        link.starts_with("https://stepup.example.com/enroll/") && link.len() > 50,
        "{link}"
    );

    let out = admin(&["keys", "list", "alice"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no keys registered"));

    let out = admin(&["keys", "revoke", "alice", "nope"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("alice has no key nope"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = child.kill().await;

    // With no server behind the socket, the command says what to check.
    let stderr = fails(pgstepup().args([
        "enroll",
        "alice",
        "--admin-socket",
        "/nonexistent/pgstepup.sock",
    ]));
    assert!(stderr.contains("pgstepup serve"), "{stderr}");
}

#[tokio::test]
async fn json_logs_carry_the_connection_span_and_no_secrets() {
    use tokio::io::AsyncBufReadExt;
    let port = free_port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgstepup"))
        .args(["serve", "--log-format", "json"])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--upstream", "postgres://127.0.0.1:5432"])
        .args(["--web-listen", "127.0.0.1:0"])
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let conn_str = format!(
        "host=127.0.0.1 port={port} user=postgres password=not-logged dbname=postgres application_name=json-test"
    );
    let mut client = None;
    for _ in 0..50 {
        if let Ok((c, conn)) = tokio_postgres::connect(&conn_str, tokio_postgres::NoTls).await {
            tokio::spawn(conn);
            client = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let client = client.expect("pgstepup came up");
    client.simple_query("SELECT 'visible'").await.unwrap();
    let pid = child.id().unwrap().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut session_started = None;
    let mut all = String::new();
    while let Ok(Ok(Some(line))) =
        tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await
    {
        let record: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        if record["message"] == "session started" {
            session_started = Some(record);
        }
        all.push_str(&line);
    }
    let record = session_started.expect("a session started line");
    assert_eq!(record["span"]["user"], "postgres", "{record}");
    assert_eq!(record["span"]["application_name"], "json-test", "{record}");
    assert!(record["span"]["peer"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    assert!(!all.contains("not-logged"), "a password reached the log");
    let _ = child.wait().await;
}
