//! The policy enforced by a running pgstepup: refusals that keep client and server in step,
//! extended-protocol and fast-path gating, pinned settings, observe mode, and hot reload.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use proto_tests::{
    admin, admin_in, app_role, audit_records, use_policy_file, write_policy, Auth, TestProxy,
    APP_DB, APP_USER, REFUSE_AT_ONCE,
};
use tokio_postgres::error::SqlState;
use tokio_postgres::SimpleQueryMessage;

const POLICY: &str = r#"
[[rule]]
name = "gate-tables-writable"
tables = ["public.gate_ok_*"]
kinds = ["write", "ddl"]
action = "allow"

[[rule]]
name = "no-touching-vault"
tables = ["public.gate_vault"]
action = "deny"
"#;

fn proxy_with(policy: &str) -> TestProxy {
    let path = write_policy(policy);
    TestProxy::with(Auth::Scram, true, |c| use_policy_file(c, &path))
}

async fn table(name: &str) -> String {
    let table = format!("{name}_{}", std::process::id());
    admin_in(
        APP_DB,
        &format!(
            "DROP TABLE IF EXISTS public.{table}; CREATE TABLE public.{table} (v int); \
             ALTER TABLE public.{table} OWNER TO {APP_USER};"
        ),
    )
    .await;
    table
}

async fn count(table: &str) -> i64 {
    let client = proto_tests::admin_client(APP_DB).await;
    client
        .query_one(&format!("SELECT count(*) FROM public.{table}"), &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn refused_statement_reports_the_rule_and_the_session_goes_on() {
    app_role().await;
    let other = table("gate_other").await;
    let proxy = proxy_with(POLICY);
    let (client, _c) = proxy.connect_app().await;
    let err = client
        .simple_query(&format!("DELETE FROM public.{other}"))
        .await
        .unwrap_err();
    let db = err.as_db_error().unwrap();
    assert_eq!(db.code(), &SqlState::INSUFFICIENT_PRIVILEGE);
    assert!(
        db.message().contains("step-up") && db.message().contains("default-write"),
        "{}",
        db.message()
    );
    assert!(db.detail().unwrap().contains(&other), "{:?}", db.detail());
    let err = client
        .simple_query("SELECT * FROM gate_vault")
        .await
        .unwrap_err();
    assert!(err
        .as_db_error()
        .unwrap()
        .message()
        .contains("denied by policy rule \"no-touching-vault\""));
    // Reads flow, and the connection is fine.
    let rows = client.simple_query("SELECT 41 + 1").await.unwrap();
    assert!(matches!(&rows[1], SimpleQueryMessage::Row(r) if r.get(0) == Some("42")));
}

#[tokio::test]
async fn refusals_and_reloads_are_audited_in_a_verifiable_chain() {
    app_role().await;
    let other = table("gate_other_audit").await;
    let policy = write_policy(POLICY);
    let audit = proto_tests::audit_file();
    let proxy = TestProxy::with(Auth::Scram, true, |c| {
        use_policy_file(c, &policy);
        c.audit.file = audit.clone();
    });
    let (client, _c) = proxy
        .connect_with(&format!(
            "{} application_name=audit-test",
            proxy.conn_str(APP_USER, proto_tests::APP_PASSWORD, APP_DB, "require")
        ))
        .await
        .unwrap();
    let delete = format!("DELETE FROM public.{other} WHERE v = 1");
    client.simple_query(&delete).await.unwrap_err();
    std::fs::write(&policy, format!("{POLICY}\n{REFUSE_AT_ONCE}")).unwrap();
    let mut records = Vec::new();
    for _ in 0..50 {
        records = audit_records(&audit);
        if records.iter().any(|r| r["event"] == "policy_reload") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refused = records
        .iter()
        .find(|r| r["event"] == "challenge_issued")
        .expect("refusal audited, with the challenge it was refused with");
    assert!(refused["reason"]
        .as_str()
        .unwrap()
        .contains("refused at once"));
    assert_eq!(refused["user"], APP_USER);
    assert_eq!(refused["statement"], delete.as_str());
    assert_eq!(refused["decision"], "step_up");
    assert_eq!(refused["rule"], "default-write");
    assert_eq!(refused["application_name"], "audit-test");
    assert!(refused["client_addr"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    assert!(records.iter().any(|r| r["event"] == "policy_reload"));
    assert_eq!(pgstepup_audit::verify(&audit).unwrap(), records.len());
}

#[tokio::test]
async fn refusal_inside_a_transaction_fails_the_servers_transaction_too() {
    app_role().await;
    let ok = table("gate_ok_tx").await;
    let other = table("gate_other_tx").await;
    let proxy = proxy_with(POLICY);
    let (client, _c) = proxy.connect_app().await;
    client.batch_execute("BEGIN").await.unwrap();
    client
        .batch_execute(&format!("INSERT INTO public.{ok} VALUES (1)"))
        .await
        .unwrap();
    let err = client
        .batch_execute(&format!("DELETE FROM public.{other}"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE));
    // The server's transaction failed as well: a statement now is refused by the server...
    let err = client.batch_execute("SELECT 1").await.unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::IN_FAILED_SQL_TRANSACTION));
    // ...and COMMIT cannot commit the INSERT before the refusal.
    let messages = client.simple_query("COMMIT").await.unwrap();
    assert!(matches!(
        &messages[0],
        SimpleQueryMessage::CommandComplete(_)
    ));
    assert_eq!(count(&ok).await, 0);

    // The same statement outside a block leaves nothing half-applied either.
    let err = client
        .simple_query(&format!(
            "INSERT INTO public.{ok} VALUES (2); DELETE FROM public.{other}"
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE));
    assert_eq!(
        count(&ok).await,
        0,
        "a multi-statement query is refused as a whole"
    );
    client
        .batch_execute(&format!("INSERT INTO public.{ok} VALUES (3)"))
        .await
        .unwrap();
    assert_eq!(count(&ok).await, 1);
}

#[tokio::test]
async fn extended_protocol_parse_is_gated_and_the_pipeline_recovers() {
    app_role().await;
    let other = table("gate_other_ext").await;
    let proxy = proxy_with(POLICY);
    let (client, _c) = proxy.connect_app().await;
    let err = client
        .prepare(&format!("DELETE FROM public.{other} WHERE v = $1"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE));
    let delete = format!("DELETE FROM public.{other} WHERE v = 1");
    let (a, b, c) = tokio::join!(
        client.query_one("SELECT 1::int", &[]),
        client.execute(delete.as_str(), &[]),
        client.query_one("SELECT 3::int", &[]),
    );
    assert_eq!(a.unwrap().get::<_, i32>(0), 1);
    assert_eq!(
        b.unwrap_err().code(),
        Some(&SqlState::INSUFFICIENT_PRIVILEGE)
    );
    assert_eq!(c.unwrap().get::<_, i32>(0), 3);
    // A named statement that was allowed keeps working.
    let stmt = client.prepare("SELECT $1::int + 1").await.unwrap();
    for i in 0..3 {
        assert_eq!(
            client
                .query_one(&stmt, &[&i])
                .await
                .unwrap()
                .get::<_, i32>(0),
            i + 1
        );
    }
}

#[tokio::test]
async fn pinned_settings_cannot_be_turned_off() {
    app_role().await;
    let proxy = proxy_with("");
    let (client, _c) = proxy.connect_app().await;
    for sql in [
        "SET standard_conforming_strings = off",
        "SELECT set_config('standard_conforming_strings', 'off', false)",
        "SET backslash_quote = on",
    ] {
        let err = client.simple_query(sql).await.unwrap_err();
        let db = err.as_db_error().unwrap();
        assert!(
            db.message().contains("pinned-setting"),
            "{sql}: {}",
            db.message()
        );
    }
    client
        .simple_query("SET standard_conforming_strings = on")
        .await
        .unwrap();

    // In the startup packet.
    let conn = format!(
        "{} options='-c standard_conforming_strings=off'",
        proxy.conn_str(
            APP_USER,
            proto_tests::APP_PASSWORD,
            proto_tests::APP_DB,
            "require"
        )
    );
    let err = proxy
        .connect_with(&conn)
        .await
        .expect_err("refused at login");
    assert!(
        format!("{err:?}").contains("standard_conforming_strings"),
        "{err:?}"
    );

    // Set on the server side for a role (its own, so parallel tests are not affected): the
    // session is refused when the server reports it.
    admin(
        "DO $$BEGIN
           IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'stepup_unpinned') THEN
             CREATE ROLE stepup_unpinned LOGIN;
           END IF;
         END$$;
         SET password_encryption = 'scram-sha-256';
         ALTER ROLE stepup_unpinned PASSWORD 'unpinned-pass';
         ALTER ROLE stepup_unpinned SET standard_conforming_strings = off;",
    )
    .await;
    let err = proxy
        .connect_with(&proxy.conn_str(
            "stepup_unpinned",
            "unpinned-pass",
            proto_tests::APP_DB,
            "require",
        ))
        .await
        .expect_err("refused when the server reports it off");
    assert!(
        format!("{err:?}").contains("standard_conforming_strings"),
        "{err:?}"
    );
}

#[tokio::test]
async fn observe_mode_forwards_and_only_reports() {
    app_role().await;
    let other = table("gate_other_obs").await;
    let path = write_policy("mode = \"observe\"\n");
    let proxy = TestProxy::with(Auth::Scram, true, |c| use_policy_file(c, &path));
    let (client, _c) = proxy.connect_app().await;
    client
        .batch_execute(&format!("INSERT INTO public.{other} VALUES (1)"))
        .await
        .unwrap();
    assert_eq!(count(&other).await, 1);

    // --observe on the command line wins over an enforcing policy.
    let path = write_policy(POLICY);
    let proxy = TestProxy::with(Auth::Scram, true, |c| {
        use_policy_file(c, &path);
        c.proxy.observe = true;
    });
    let (client, _c) = proxy.connect_app().await;
    client
        .batch_execute(&format!("DELETE FROM public.{other}"))
        .await
        .unwrap();
    assert_eq!(count(&other).await, 0);
}

#[tokio::test]
async fn unsafe_client_encodings_are_refused() {
    app_role().await;
    let proxy = proxy_with("");
    let (client, _c) = proxy.connect_app().await;
    // SJIS can hide a quote or backslash byte inside a multi-byte character.
    let err = client
        .simple_query("SET client_encoding = 'SJIS'")
        .await
        .unwrap_err();
    assert!(err
        .as_db_error()
        .unwrap()
        .detail()
        .unwrap()
        .contains("client_encoding"));
    client
        .simple_query("SET client_encoding = 'LATIN1'")
        .await
        .unwrap();

    let mut raw = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut body = (3u32 << 16).to_be_bytes().to_vec();
    body.extend_from_slice(b"user\0stepup_app\0client_encoding\0SJIS\0\0");
    let mut packet = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    packet.extend_from_slice(&body);
    raw.write_all(&packet).await.unwrap();
    let mut answer = Vec::new();
    raw.read_to_end(&mut answer).await.unwrap();
    assert_eq!(answer[0], b'E');
    assert!(String::from_utf8_lossy(&answer).contains("client_encoding"));
}

#[tokio::test]
async fn policy_file_changes_apply_to_the_next_statement_and_bad_ones_are_rejected() {
    app_role().await;
    let other = table("gate_other_reload").await;
    let path = write_policy("");
    let proxy = TestProxy::with(Auth::Scram, true, |c| use_policy_file(c, &path));
    let (client, _c) = proxy.connect_app().await;
    let insert = format!("INSERT INTO public.{other} VALUES (1)");
    assert!(client.batch_execute(&insert).await.is_err());

    let allow = format!(
        "[[rule]]\nname = \"now-allowed\"\ntables = [\"public.{other}\"]\naction = \"allow\"\n"
    );
    std::fs::write(&path, format!("{allow}{REFUSE_AT_ONCE}")).unwrap();
    wait_until(|| async { client.batch_execute(&insert).await.is_ok() }).await;

    // An invalid file is rejected and the previous policy stays in force.
    std::fs::write(
        &path,
        "[[rule]]\nname = \"broken\"\naction = \"sometimes\"\n",
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    client
        .batch_execute(&insert)
        .await
        .expect("old policy still applies");

    // A valid tighter policy applies again, on the same connection.
    std::fs::write(&path, REFUSE_AT_ONCE).unwrap();
    wait_until(|| async { client.batch_execute(&insert).await.is_err() }).await;
}

async fn wait_until<F, Fut>(mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..50 {
        if condition().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("the policy change never took effect");
}

#[tokio::test]
async fn policy_roles_follow_upstream_role_membership() {
    app_role().await;
    let ledger = table("gate_ledger").await;
    admin(
        "DO $$BEGIN
           IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'stepup_bookkeepers') THEN
             CREATE ROLE stepup_bookkeepers NOLOGIN;
           END IF;
         END$$;",
    )
    .await;
    let policy = format!(
        "[roles.bookkeeping]\nupstream_roles = [\"stepup_bookkeepers\"]\n\n\
         [[rule]]\nname = \"bookkeepers-write-the-ledger\"\ntables = [\"public.{ledger}\"]\n\
         kinds = [\"write\"]\nroles = [\"bookkeeping\"]\naction = \"allow\"\n"
    );
    let proxy = proxy_with(&policy);
    let insert = format!("INSERT INTO public.{ledger} VALUES (1)");

    admin(&format!("REVOKE stepup_bookkeepers FROM {APP_USER}")).await;
    let (client, _c) = proxy.connect_app().await;
    assert!(
        client.batch_execute(&insert).await.is_err(),
        "not a member yet"
    );

    // Membership is looked up by the auth login at each login.
    admin(&format!("GRANT stepup_bookkeepers TO {APP_USER}")).await;
    let (client, _c) = proxy.connect_app().await;
    let result = client.batch_execute(&insert).await;
    admin(&format!("REVOKE stepup_bookkeepers FROM {APP_USER}")).await;
    result.expect("a member of the upstream role gets the policy role");
    assert_eq!(count(&ledger).await, 1);
}

#[tokio::test]
async fn prepared_statements_are_decided_again_after_a_policy_change() {
    app_role().await;
    let ok = table("gate_ok_prepared").await;
    let path = write_policy(POLICY);
    let proxy = TestProxy::with(Auth::Scram, true, |c| use_policy_file(c, &path));
    let (client, _c) = proxy.connect_app().await;
    let insert = client
        .prepare(&format!("INSERT INTO public.{ok} VALUES ($1)"))
        .await
        .unwrap();
    client.execute(&insert, &[&1i32]).await.unwrap();

    // The statement was parsed under the old policy; its next execution must not escape the
    // new one, although no Parse is sent again.
    let probe_table = table("gate_ok_probe").await;
    let probe = format!("INSERT INTO public.{probe_table} VALUES (1)");
    std::fs::write(&path, REFUSE_AT_ONCE).unwrap();
    wait_until(|| async { client.batch_execute(&probe).await.is_err() }).await;
    for value in [2i32, 3] {
        let err = client.execute(&insert, &[&value]).await.unwrap_err();
        assert_eq!(err.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE));
    }
    let err = client.execute(&insert, &[&4i32]).await.unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE));
    let rows = client.query_one("SELECT 1::int", &[]).await.unwrap();
    assert_eq!(rows.get::<_, i32>(0), 1);
    assert_eq!(
        count(&ok).await,
        1,
        "only the execution under the old policy ran"
    );
}

#[tokio::test]
async fn local_clients_reach_the_unix_socket_under_the_same_policy() {
    app_role().await;
    let other = table("gate_unix_socket").await;
    let policy = write_policy(POLICY);
    let audit = proto_tests::audit_file();
    let dir = std::env::temp_dir().join(format!("pgstepup-unix-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let proxy = TestProxy::with(Auth::Scram, true, |c| {
        use_policy_file(c, &policy);
        c.audit.file = audit.clone();
        // TCP clients must use TLS; the local socket is exempt, as in pgbouncer.
        c.tls.require = true;
        c.proxy.unix_socket_dir = Some(dir.clone());
    });
    let socket = dir.join(format!(".s.PGSQL.{}", proxy.addr.port()));
    assert!(
        socket.exists(),
        "named after the TCP port, as libpq looks for it"
    );

    // psql as a local user runs it: -h names the directory, sslmode as libpq defaults it.
    let mut psql = tokio::process::Command::new("psql");
    psql.envs(proxy.client_env("prefer"))
        .env("PGHOST", &dir)
        .args(["-X", "-At", "-c", "SELECT 40 + 2"])
        .args(["-c", &format!("DELETE FROM public.{other} WHERE v = 1")]);
    let out = psql.output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stdout.trim(), "42", "{stderr}");
    assert!(stderr.contains("needs step-up approval"), "{stderr}");

    let records = audit_records(&audit);
    let refused = records
        .iter()
        .find(|r| r["event"] == "challenge_issued")
        .expect("the refusal is audited");
    let client_addr = refused["client_addr"].as_str().unwrap();
    assert!(
        client_addr.starts_with("unix socket uid=0 pid="),
        "the local user and process are named: {client_addr}"
    );

    // A client asking for TLS on the socket is told N, as PostgreSQL tells it there.
    let mut raw = tokio::net::UnixStream::connect(&socket).await.unwrap();
    raw.write_all(&[0, 0, 0, 8, 4, 210, 22, 47]).await.unwrap();
    assert_eq!(raw.read_u8().await.unwrap(), b'N');

    // Over TCP without TLS the requirement still holds.
    let err = proxy
        .connect_with(&proxy.conn_str(APP_USER, proto_tests::APP_PASSWORD, APP_DB, "disable"))
        .await
        .expect_err("plain TCP refused");
    let db = err.as_db_error().expect("pgstepup's own refusal");
    assert!(db.message().contains("only TLS"), "{}", db.message());

    // Ctrl-C from a local client comes back on the socket and reaches its statement.
    let (client, connection) = tokio_postgres::connect(
        &format!(
            "host={} port={} user={APP_USER} password='{}' dbname={APP_DB}",
            dir.display(),
            proxy.addr.port(),
            proto_tests::APP_PASSWORD
        ),
        tokio_postgres::NoTls,
    )
    .await
    .expect("tokio-postgres over the socket");
    tokio::spawn(connection);
    proto_tests::cancel_a_sleep(client).await;

    drop(proxy);
    assert!(!socket.exists(), "the socket file goes with the proxy");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A sensitive schema's tables read by unqualified names: after `SET search_path`, through a
/// statement prepared before it, in the same text as the SET, with the search_path in the
/// startup packet, and in a database whose default search_path lists the schema. The same
/// name resolves to an ordinary table while the session keeps the default path.
#[tokio::test]
async fn unqualified_names_follow_the_sessions_search_path() {
    app_role().await;
    let id = std::process::id();
    let (vault, ledger) = (format!("sp_vault_{id}"), format!("sp_ledger_{id}"));
    admin_in(
        APP_DB,
        &format!(
            "DROP SCHEMA IF EXISTS {vault} CASCADE; CREATE SCHEMA {vault} AUTHORIZATION {APP_USER};
             CREATE TABLE {vault}.{ledger} (v int); INSERT INTO {vault}.{ledger} VALUES (1), (2);
             ALTER TABLE {vault}.{ledger} OWNER TO {APP_USER};
             DROP TABLE IF EXISTS public.{ledger}; CREATE TABLE public.{ledger} (v int);
             ALTER TABLE public.{ledger} OWNER TO {APP_USER};"
        ),
    )
    .await;
    let proxy = proxy_with(&format!(
        "[[rule]]\nname = \"vault\"\ntables = [\"{vault}.*\"]\nkinds = [\"read\"]\naction = \"deny\"\n"
    ));
    let read = format!("SELECT count(*) FROM {ledger}");
    let denied = |result: Result<Vec<SimpleQueryMessage>, tokio_postgres::Error>| {
        let error = result.expect_err("the vault's table was read");
        let message = error
            .as_db_error()
            .expect("a server error")
            .message()
            .to_owned();
        assert!(message.contains("\"vault\""), "{message}");
    };

    let (client, _c) = proxy.connect_app().await;
    let prepared = client.prepare(&read).await.unwrap();
    let public: i64 = client.query_one(&prepared, &[]).await.unwrap().get(0);
    assert_eq!(public, 0, "the default path reads public's table");
    client
        .batch_execute(&format!("SET search_path = {vault}, public"))
        .await
        .unwrap();
    denied(client.simple_query(&read).await);
    let error = client.query_one(&prepared, &[]).await.unwrap_err();
    assert_eq!(
        error.code(),
        Some(&SqlState::INSUFFICIENT_PRIVILEGE),
        "{error}"
    );
    // Going back does not narrow what the session may mean (a SET LOCAL's end, or a SET that
    // failed, is not seen).
    client
        .batch_execute("SET search_path = public")
        .await
        .unwrap();
    denied(client.simple_query(&read).await);
    assert_eq!(
        client
            .query_one("SELECT 1", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        1
    );

    let (client, _c) = proxy.connect_app().await;
    assert!(
        client.simple_query(&read).await.is_ok(),
        "default path: allowed"
    );
    denied(
        client
            .simple_query(&format!(
                "SELECT set_config('search_path', '{vault}', false); {read}"
            ))
            .await,
    );

    let options = format!(
        "{} options='-c search_path={vault}'",
        proxy.conn_str(APP_USER, proto_tests::APP_PASSWORD, APP_DB, "require")
    );
    let (client, _c) = proxy.connect_with(&options).await.unwrap();
    denied(client.simple_query(&read).await);

    // A default set on the server (ALTER DATABASE ... SET search_path), which no SQL of the
    // session shows.
    let database = format!("sp_db_{id}");
    admin(&format!("DROP DATABASE IF EXISTS {database}")).await;
    admin(&format!("CREATE DATABASE {database} OWNER {APP_USER}")).await;
    admin_in(
        &database,
        &format!(
            "CREATE SCHEMA {vault} AUTHORIZATION {APP_USER};
             CREATE TABLE {vault}.{ledger} (v int); ALTER TABLE {vault}.{ledger} OWNER TO {APP_USER};
             ALTER DATABASE {database} SET search_path = {vault}, public;"
        ),
    )
    .await;
    let in_database = proxy.conn_str(APP_USER, proto_tests::APP_PASSWORD, &database, "require");
    let (client, connection) = proxy.connect_with(&in_database).await.unwrap();
    denied(client.simple_query(&read).await);
    drop(client);
    let _ = connection.await;
    admin(&format!("DROP DATABASE {database} WITH (FORCE)")).await;
}
