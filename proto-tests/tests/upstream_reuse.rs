//! Upstream connections reused across clients (`upstream.pool_size`, scram auth): a client
//! that says goodbye outside a transaction leaves its backend, reset by DISCARD ALL, to the
//! next client of the same login; nothing of the first session shows in the second. A client
//! that leaves mid-transaction or mid-batch, passthrough auth, and `pool_size = 0` never
//! leave theirs; a parked backend the server ended, or one that does not answer its check
//! (frozen), is not handed out; an unused one closes after `pool_idle_timeout_secs`. The pool
//! size caps what all session threads keep together.

use std::time::Duration;

use pgstepup_protocol::startup::StartupMessage;

use pgstepup_protocol::{tag, Connection, Frame, Stream, DEFAULT_MAX_FRAME};
use pgstepup_upstream::{login, Credential};
use proto_tests::stepup::WebClient;
use proto_tests::{admin_client, app_role, Auth, TestProxy, APP_DB, APP_PASSWORD, APP_USER};

/// A proxy with SCRAM, no TLS (the raw client below speaks plain TCP) and one session
/// thread, so successive clients meet the same thread's idle connections.
fn proxy(tweak: impl FnOnce(&mut pgstepup_config::Config)) -> TestProxy {
    TestProxy::with(Auth::Scram, false, |c| {
        c.proxy.worker_threads = 1;
        tweak(c);
    })
}

async fn connect(proxy: &TestProxy, application_name: &str) -> tokio_postgres::Client {
    let conn_str = format!(
        "{} application_name={application_name}",
        proxy.conn_str(APP_USER, APP_PASSWORD, APP_DB, "disable")
    );
    proxy.connect_with(&conn_str).await.expect("connects").0
}

async fn backend_pid(client: &tokio_postgres::Client) -> i32 {
    client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0)
}

/// Drops the client (tokio-postgres then sends Terminate) and waits until the proxy has
/// dealt with its upstream connection: parked it, or closed it.
async fn say_goodbye(client: tokio_postgres::Client, web: &WebClient, parked: f64) {
    drop(client);
    settle(web, parked, 0.0).await;
}

/// Waits until the proxy keeps `parked` idle upstream connections and serves `clients`.
async fn settle(web: &WebClient, parked: f64, clients: f64) {
    for _ in 0..100 {
        if metric(web, "pgstepup_upstream_idle_connections").await == parked
            && metric(web, "pgstepup_client_connections").await == clients
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "the proxy did not settle with {parked} idle upstream connections and {clients} clients"
    );
}

async fn metric(web: &WebClient, name: &str) -> f64 {
    web.metrics_text()
        .await
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} in the metrics"))
}

/// Connects, notes the backend's pid, and says goodbye: the backend is then parked.
async fn parked_backend(proxy: &TestProxy, web: &WebClient, application_name: &str) -> i32 {
    let client = connect(proxy, application_name).await;
    let pid = backend_pid(&client).await;
    say_goodbye(client, web, 1.0).await;
    pid
}

async fn backend_alive(pid: i32) -> bool {
    admin_client("postgres")
        .await
        .query_opt("SELECT 1 FROM pg_stat_activity WHERE pid = $1", &[&pid])
        .await
        .unwrap()
        .is_some()
}

#[tokio::test]
async fn the_next_client_gets_the_backend_reset_as_from_a_fresh_login() {
    app_role().await;
    let proxy = proxy(|_| {});
    let web = WebClient::of(&proxy);
    let first = connect(&proxy, "reuse-first").await;
    let pid = backend_pid(&first).await;
    first
        .batch_execute(
            "SET work_mem = '77MB';
             SET application_name = 'changed-by-first';
             PREPARE left_behind AS SELECT 1;
             CREATE TEMP TABLE left_behind (x int);
             LISTEN left_behind;
             SELECT pg_advisory_lock(724242);",
        )
        .await
        .unwrap();
    say_goodbye(first, &web, 1.0).await;
    assert!(backend_alive(pid).await, "the backend stays open for reuse");

    let second = connect(&proxy, "reuse-first").await;
    assert_eq!(
        backend_pid(&second).await,
        pid,
        "the same backend serves the next client"
    );
    assert_eq!(metric(&web, "pgstepup_upstream_reused_total").await, 1.0);
    assert_eq!(
        metric(&web, "pgstepup_upstream_idle_connections").await,
        0.0
    );
    let row = second
        .query_one(
            "SELECT current_setting('work_mem'),
                    current_setting('application_name'),
                    (SELECT count(*) FROM pg_prepared_statements WHERE name = 'left_behind'),
                    to_regclass('pg_temp.left_behind') IS NULL,
                    (SELECT count(*) FROM pg_listening_channels()),
                    (SELECT count(*) FROM pg_locks
                      WHERE locktype = 'advisory' AND pid = pg_backend_pid())",
            &[],
        )
        .await
        .unwrap();
    assert_ne!(row.get::<_, String>(0), "77MB");
    // RESET ALL goes back to the StartupMessage's values, not the server default.
    assert_eq!(row.get::<_, String>(1), "reuse-first");
    assert_eq!(row.get::<_, i64>(2), 0, "prepared statements are gone");
    assert!(row.get::<_, bool>(3), "the temporary table is gone");
    assert_eq!(row.get::<_, i64>(4), 0, "LISTENs are gone");
    assert_eq!(row.get::<_, i64>(5), 0, "advisory locks are released");
    // Still gated as any session is: the statement classifier sees the new client.
    let refused = second
        .batch_execute("GRANT ALL ON SCHEMA public TO PUBLIC")
        .await;
    assert!(refused.is_err(), "DCL is refused by the test policy");

    // Another login (other startup parameters) does not get it.
    say_goodbye(second, &web, 1.0).await;
    let other = connect(&proxy, "reuse-other").await;
    assert_ne!(backend_pid(&other).await, pid);
}

/// `pool_size` counts across the session threads: two clients served by two threads leave one
/// backend parked, not one per thread.
#[tokio::test]
async fn the_pool_size_caps_what_all_session_threads_keep() {
    app_role().await;
    let proxy = TestProxy::with(Auth::Scram, false, |c| {
        c.proxy.worker_threads = 2;
        // Dealt to the least busy thread: the two clients land on different threads.
        c.proxy.spill_after_sessions = 0;
        c.upstream.pool_size = 1;
    });
    let web = WebClient::of(&proxy);
    let first = connect(&proxy, "pool-cap").await;
    let second = connect(&proxy, "pool-cap").await;
    let pids = (backend_pid(&first).await, backend_pid(&second).await);
    drop(first);
    settle(&web, 1.0, 1.0).await;
    say_goodbye(second, &web, 1.0).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        metric(&web, "pgstepup_upstream_idle_connections").await,
        1.0,
        "one backend kept across both threads"
    );
    let alive = [backend_alive(pids.0).await, backend_alive(pids.1).await];
    assert_eq!(
        alive.iter().filter(|&&a| a).count(),
        1,
        "the backend over the pool size is closed: {alive:?}"
    );
}

#[tokio::test]
async fn a_client_leaving_mid_transaction_or_mid_batch_takes_its_backend_with_it() {
    app_role().await;
    let proxy = proxy(|_| {});
    let web = WebClient::of(&proxy);
    let table = format!("reuse_mid_{}", std::process::id());
    let setup = connect(&proxy, "reuse-mid").await;
    setup
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (x int)"
        ))
        .await
        .unwrap();
    say_goodbye(setup, &web, 1.0).await;

    // Inside a transaction: Terminate ends the backend, which rolls the transaction back.
    let in_transaction = connect(&proxy, "reuse-mid").await;
    let pid = backend_pid(&in_transaction).await;
    in_transaction
        .batch_execute(&format!("BEGIN; INSERT INTO {table} VALUES (1)"))
        .await
        .unwrap();
    say_goodbye(in_transaction, &web, 0.0).await;

    // Mid-batch: Parse/Bind/Execute of an INSERT, run (Flush) but without its Sync, then
    // Terminate. Reusing the backend would commit the INSERT (its reset ends the implicit
    // transaction).
    let mut raw = raw_login(&proxy, "reuse-mid").await;
    let insert = format!("INSERT INTO {table} VALUES (2)\0");
    let mut parse = vec![0];
    parse.extend_from_slice(insert.as_bytes());
    parse.extend_from_slice(&[0, 0]);
    raw.queue_frame(&Frame::new(tag::PARSE, &parse));
    raw.queue_frame(&Frame::new(tag::BIND, &[0; 8]));
    raw.queue_frame(&Frame::new(tag::EXECUTE, &[0, 0, 0, 0, 0]));
    // Flush: the server runs the INSERT and answers, all before any Sync.
    raw.queue_frame(&Frame::new(tag::FLUSH, &[]));
    raw.flush().await.unwrap();
    loop {
        let frame = raw.read_frame().await.unwrap();
        assert_ne!(frame.tag(), b'E', "{:?}", frame.body());
        if frame.tag() == b'C' {
            break;
        }
    }
    leaves_nothing_parked(raw, &web).await;
    // Even a batch that changed nothing yet (a Parse, answered) leaves the backend waiting
    // for its Sync: not reused either. (The INSERT above would also make this server's
    // DISCARD ALL fail, "cannot run inside a pipeline"; older servers would run it, and
    // commit.)
    let mut raw = raw_login(&proxy, "reuse-mid").await;
    raw.queue_frame(&Frame::new(tag::PARSE, b"\0SELECT 1\0\0\0"));
    raw.queue_frame(&Frame::new(tag::FLUSH, &[]));
    raw.flush().await.unwrap();
    assert_eq!(raw.read_frame().await.unwrap().tag(), b'1', "ParseComplete");
    leaves_nothing_parked(raw, &web).await;

    let after = connect(&proxy, "reuse-mid").await;
    assert_ne!(backend_pid(&after).await, pid);
    let rows: i64 = after
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        rows, 0,
        "neither the open transaction nor the unsynced INSERT committed"
    );
    after
        .batch_execute(&format!("DROP TABLE {table}"))
        .await
        .unwrap();
    assert!(
        !backend_alive(pid).await,
        "the backend of the client that left mid-transaction is gone"
    );
}

/// Sends Terminate and checks that, once the session has ended, no backend is kept.
async fn leaves_nothing_parked(mut raw: Connection, web: &WebClient) {
    raw.queue_frame(&Frame::new(tag::TERMINATE, &[]));
    raw.flush().await.unwrap();
    drop(raw);
    for _ in 0..100 {
        if metric(web, "pgstepup_client_connections").await == 0.0 {
            assert_eq!(metric(web, "pgstepup_upstream_idle_connections").await, 0.0);
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("a client session did not end");
}

/// Logs in over plain TCP with SCRAM, as a raw protocol client.
async fn raw_login(proxy: &TestProxy, application_name: &str) -> Connection {
    let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let mut conn = Connection::new(Stream::Plain(tcp), DEFAULT_MAX_FRAME);
    let startup = StartupMessage::build(
        0,
        &[
            ("user", APP_USER),
            ("database", APP_DB),
            ("application_name", application_name),
        ],
    );
    login(&mut conn, startup.raw(), Credential::Password(APP_PASSWORD))
        .await
        .expect("raw SCRAM login through the proxy");
    conn
}

#[tokio::test]
async fn passthrough_and_pool_size_zero_never_reuse() {
    app_role().await;
    let configs: [(&str, TestProxy); 2] = [
        (
            "passthrough",
            TestProxy::with(Auth::Passthrough, false, |c| c.proxy.worker_threads = 1),
        ),
        ("pool_size = 0", proxy(|c| c.upstream.pool_size = 0)),
    ];
    for (what, proxy) in configs {
        let web = WebClient::of(&proxy);
        let first = connect(&proxy, "reuse-never").await;
        let pid = backend_pid(&first).await;
        say_goodbye(first, &web, 0.0).await;
        let second = connect(&proxy, "reuse-never").await;
        assert_ne!(backend_pid(&second).await, pid, "{what}");
        assert_eq!(metric(&web, "pgstepup_upstream_reused_total").await, 0.0);
    }
}

#[tokio::test]
async fn a_parked_backend_the_server_ended_is_not_handed_out() {
    app_role().await;
    let proxy = proxy(|_| {});
    let web = WebClient::of(&proxy);
    let pid = parked_backend(&proxy, &web, "reuse-killed").await;
    admin_client("postgres")
        .await
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    while backend_alive(pid).await {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let second = connect(&proxy, "reuse-killed").await;
    let new_pid = backend_pid(&second).await;
    assert_ne!(new_pid, pid, "a fresh login, and the first query works");
    assert_eq!(metric(&web, "pgstepup_upstream_reused_total").await, 0.0);
}

#[tokio::test]
async fn an_unused_parked_backend_closes_after_the_idle_timeout() {
    app_role().await;
    let proxy = proxy(|c| c.upstream.pool_idle_timeout_secs = 1);
    let web = WebClient::of(&proxy);
    let pid = parked_backend(&proxy, &web, "reuse-timeout").await;
    for _ in 0..100 {
        if !backend_alive(pid).await {
            assert_eq!(
                metric(&web, "pgstepup_upstream_idle_connections").await,
                0.0
            );
            assert_eq!(metric(&web, "pgstepup_upstream_connections").await, 0.0);
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the parked backend was still open 10 s after a 1 s idle timeout");
}

#[tokio::test]
async fn a_kept_backend_is_checked_after_the_check_delay_and_a_frozen_one_is_not_handed_out() {
    app_role().await;
    let proxy = proxy(|c| {
        c.upstream.pool_check_delay_secs = 0;
        c.upstream.connect_timeout_secs = 1;
    });
    let web = WebClient::of(&proxy);
    let admin = admin_client("postgres").await;
    let last_query = |pid: i32| {
        let admin = &admin;
        async move {
            admin
                .query_one("SELECT query FROM pg_stat_activity WHERE pid = $1", &[&pid])
                .await
                .unwrap()
                .get::<_, String>(0)
        }
    };

    // Healthy: checked with an empty query (the backend's last query), then reused.
    let pid = parked_backend(&proxy, &web, "reuse-check").await;
    assert_eq!(last_query(pid).await, "DISCARD ALL");
    let second = connect(&proxy, "reuse-check").await;
    assert_eq!(
        last_query(pid).await,
        "",
        "the check ran before the client got it"
    );
    assert_eq!(backend_pid(&second).await, pid);
    say_goodbye(second, &web, 1.0).await;

    // Frozen (alive to the socket, answering nothing): a fresh login after the check times out.
    signal(pid, "-STOP");
    let thaw = Thaw(pid);
    let fresh = tokio::time::timeout(Duration::from_secs(15), async {
        let third = connect(&proxy, "reuse-check").await;
        backend_pid(&third).await
    })
    .await
    .expect("the client is not handed the frozen backend");
    drop(thaw);
    assert_ne!(fresh, pid);
    assert_eq!(metric(&web, "pgstepup_upstream_reused_total").await, 1.0);
    // The frozen backend was told to end: once thawed, it does.
    while backend_alive(pid).await {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Wakes a stopped backend when dropped, whatever the test's outcome.
struct Thaw(i32);

impl Drop for Thaw {
    fn drop(&mut self) {
        signal(self.0, "-CONT");
    }
}

fn signal(pid: i32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill {signal} {pid}");
}
