//! Wire-level behaviour through pgstepup with a raw socket client: encryption negotiation,
//! startup handling, protocol versions, byte fidelity, cancel keys, and bad input. Every case
//! must end in a clear error or a clean close, never a hang.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, BytesMut};
use proto_tests::{app_role, client_tls_config, Auth, TestProxy, APP_DB, APP_PASSWORD, APP_USER};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::error::SqlState;

const STEP: Duration = Duration::from_secs(10);

/// A minimal frontend for tests: raw messages in, whole backend messages out.
struct Raw<S> {
    io: S,
    buf: BytesMut,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Raw<S> {
    fn new(io: S) -> Self {
        Raw {
            io,
            buf: BytesMut::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.unwrap();
        self.io.flush().await.unwrap();
    }

    /// Next backend message as (tag, body); `None` on a clean close.
    async fn recv(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes(self.buf[1..5].try_into().unwrap()) as usize;
                if self.buf.len() > len {
                    let tag = self.buf[0];
                    self.buf.advance(5);
                    return Some((tag, self.buf.split_to(len - 4).to_vec()));
                }
            }
            let n = tokio::time::timeout(STEP, self.io.read_buf(&mut self.buf))
                .await
                .expect("the proxy answered in time")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
        }
    }

    /// Reads until ReadyForQuery, returning everything before it.
    async fn until_ready(&mut self) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        loop {
            let m = self.recv().await.expect("session open");
            if m.0 == b'Z' {
                out.push(m);
                return out;
            }
            out.push(m);
        }
    }
}

fn startup(minor: u16, params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = BytesMut::new();
    body.put_u32((3 << 16) | u32::from(minor));
    for (k, v) in params {
        body.put_slice(k.as_bytes());
        body.put_u8(0);
        body.put_slice(v.as_bytes());
        body.put_u8(0);
    }
    body.put_u8(0);
    let mut out = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn query(sql: &[u8]) -> Vec<u8> {
    let mut body = sql.to_vec();
    body.push(0);
    message(b'Q', &body)
}

/// A Parse of `sql` as statement `name` (empty: the unnamed one), no parameter types.
fn parse_message(name: &str, sql: &str) -> Vec<u8> {
    let mut body = name.as_bytes().to_vec();
    body.push(0);
    body.extend_from_slice(sql.as_bytes());
    body.extend_from_slice(&[0, 0, 0]);
    message(b'P', &body)
}

/// Bind (no parameters) and Execute of statement `name`, then Sync.
fn bind_execute_sync(name: &str) -> Vec<u8> {
    let mut bind = vec![0];
    bind.extend_from_slice(name.as_bytes());
    bind.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0]);
    let mut out = message(b'B', &bind);
    out.extend(message(b'E', &[0, 0, 0, 0, 0]));
    out.extend(message(b'S', &[]));
    out
}

fn field(body: &[u8], code: u8) -> Option<String> {
    pgstepup_protocol::error_field(body, code)
}

const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
const GSSENC_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30];

/// Logs in through a passthrough proxy (trust upstream) as `postgres`.
async fn logged_in(
    proxy: &TestProxy,
    params: &[(&str, &str)],
) -> (Raw<TcpStream>, Vec<(u8, Vec<u8>)>) {
    let mut raw = Raw::new(TcpStream::connect(proxy.addr).await.unwrap());
    let mut all = vec![("user", "postgres"), ("database", "postgres")];
    all.extend_from_slice(params);
    raw.send(&startup(0, &all)).await;
    let hello = raw.until_ready().await;
    assert!(hello.iter().any(|m| m.0 == b'R'), "{hello:?}");
    (raw, hello)
}

/// A passthrough proxy deciding by the policy file at `policy`, and a session logged in to it.
async fn session_under(policy: &std::path::Path) -> (TestProxy, Raw<TcpStream>) {
    let proxy = TestProxy::with(Auth::Passthrough, false, |c| {
        proto_tests::use_policy_file(c, policy)
    });
    let (raw, _) = logged_in(&proxy, &[]).await;
    (proxy, raw)
}

async fn simple(raw: &mut Raw<TcpStream>, sql: &str) -> Vec<(u8, Vec<u8>)> {
    raw.send(&query(sql.as_bytes())).await;
    raw.until_ready().await
}

fn first_value(messages: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let (_, row) = messages.iter().find(|m| m.0 == b'D').expect("a row");
    let len = i32::from_be_bytes(row[2..6].try_into().unwrap()) as usize;
    row[6..6 + len].to_vec()
}

#[tokio::test]
async fn ssl_request_is_refused_without_a_certificate_and_gssenc_always() {
    let proxy = TestProxy::with(Auth::Passthrough, false, |_| {});
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    tcp.write_all(&GSSENC_REQUEST).await.unwrap();
    assert_eq!(tcp.read_u8().await.unwrap(), b'N');
    tcp.write_all(&SSL_REQUEST).await.unwrap();
    assert_eq!(tcp.read_u8().await.unwrap(), b'N');
    let mut raw = Raw::new(tcp);
    raw.send(&startup(0, &[("user", "postgres")])).await;
    let hello = raw.until_ready().await;
    assert_eq!(hello.last().unwrap(), &(b'Z', b"I".to_vec()));
}

#[tokio::test]
async fn gssenc_then_ssl_request_upgrades_to_tls() {
    app_role().await;
    let proxy = TestProxy::with(Auth::Passthrough, true, |_| {});
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    tcp.write_all(&GSSENC_REQUEST).await.unwrap();
    assert_eq!(tcp.read_u8().await.unwrap(), b'N');
    tcp.write_all(&SSL_REQUEST).await.unwrap();
    assert_eq!(tcp.read_u8().await.unwrap(), b'S');
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_tls_config(&[])));
    let tls = connector
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .expect("TLS with the test CA");
    let mut raw = Raw::new(tls);
    raw.send(&startup(0, &[("user", "postgres")])).await;
    raw.until_ready().await;
    raw.send(&query(
        b"SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
    ))
    .await;
    let reply = raw.until_ready().await;
    assert!(reply.iter().any(|m| m.0 == b'D'));
}

#[tokio::test]
async fn plaintext_after_ssl_request_is_refused() {
    let proxy = TestProxy::with(Auth::Passthrough, true, |_| {});
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    // An SSLRequest immediately followed by plaintext (the CVE-2021-23222 pattern).
    let mut bytes = SSL_REQUEST.to_vec();
    bytes.extend_from_slice(&startup(0, &[("user", "postgres")]));
    tcp.write_all(&bytes).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(STEP, tcp.read_to_end(&mut answer))
        .await
        .unwrap()
        .ok();
    // Either the connection is closed outright or refused; never a session.
    assert!(!answer.windows(1).any(|w| w == b"Z"), "{answer:?}");
}

#[tokio::test]
async fn direct_tls_needs_alpn_postgresql() {
    app_role().await;
    let proxy = TestProxy::with(Auth::Passthrough, true, |_| {});
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_tls_config(&[b"postgresql"])));
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let tls = connector
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let mut raw = Raw::new(tls);
    raw.send(&startup(0, &[("user", "postgres")])).await;
    assert_eq!(raw.until_ready().await.last().unwrap().0, b'Z');

    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_tls_config(&[])));
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let tls = connector
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let mut raw = Raw::new(tls);
    let (tag, body) = raw.recv().await.expect("an error before closing");
    assert_eq!(tag, b'E');
    assert!(field(&body, b'M').unwrap().contains("ALPN"));
}

#[tokio::test]
async fn tls_can_be_required() {
    let proxy = TestProxy::with(Auth::Passthrough, true, |c| c.tls.require = true);
    let mut raw = Raw::new(TcpStream::connect(proxy.addr).await.unwrap());
    raw.send(&startup(0, &[("user", "postgres")])).await;
    let (tag, body) = raw.recv().await.unwrap();
    assert_eq!(tag, b'E');
    assert_eq!(field(&body, b'C').as_deref(), Some("28000"));
    assert!(raw.recv().await.is_none());
}

#[tokio::test]
async fn replication_connections_are_refused() {
    let proxy = TestProxy::with(Auth::Passthrough, false, |_| {});
    let mut raw = Raw::new(TcpStream::connect(proxy.addr).await.unwrap());
    raw.send(&startup(
        0,
        &[("user", "postgres"), ("replication", "database")],
    ))
    .await;
    let (tag, body) = raw.recv().await.unwrap();
    assert_eq!(tag, b'E');
    assert_eq!(field(&body, b'C').as_deref(), Some("0A000"));
    assert!(field(&body, b'M').unwrap().contains("replication"));
    assert!(raw.recv().await.is_none());
}

#[tokio::test]
async fn startup_parameters_reach_the_server_unchanged_so_reset_restores_them() {
    let proxy = TestProxy::with(Auth::Passthrough, false, |_| {});
    let (mut raw, hello) = logged_in(
        &proxy,
        &[
            ("application_name", "wire-test"),
            (
                "options",
                "-c statement_timeout=1234 -c search_path=pg_catalog",
            ),
        ],
    )
    .await;
    assert!(hello
        .iter()
        .any(|m| m.0 == b'S' && m.1.starts_with(b"application_name\0wire-test\0")));
    simple(&mut raw, "SET statement_timeout = 5").await;
    simple(&mut raw, "RESET statement_timeout").await;
    let reply = simple(&mut raw, "SHOW statement_timeout").await;
    // RESET goes back to the session default the startup packet set, as without a proxy.
    assert_eq!(first_value(&reply), b"1234ms");
    let reply = simple(&mut raw, "SHOW search_path").await;
    assert_eq!(first_value(&reply), b"pg_catalog");
}

#[tokio::test]
async fn protocol_3_2_request_is_negotiated() {
    // Passthrough: the server's own NegotiateProtocolVersion is relayed and the cancel key
    // follows the version the server chose.
    let proxy = TestProxy::with(Auth::Passthrough, false, |_| {});
    let mut raw = Raw::new(TcpStream::connect(proxy.addr).await.unwrap());
    raw.send(&startup(2, &[("user", "postgres")])).await;
    let hello = raw.until_ready().await;
    let server_minor = match hello.iter().find(|m| m.0 == b'v') {
        Some((_, body)) => u32::from_be_bytes(body[..4].try_into().unwrap()) & 0xffff,
        None => 2,
    };
    let key = hello.iter().find(|m| m.0 == b'K').expect("a cancel key");
    let expected_len = if server_minor >= 2 { 4 + 32 } else { 8 };
    assert_eq!(key.1.len(), expected_len);

    // SCRAM: pgstepup negotiates itself (3.2) and drops unknown _pq_ options.
    app_role().await;
    let proxy = TestProxy::with(Auth::Scram, false, |_| {});
    let mut raw = Raw::new(TcpStream::connect(proxy.addr).await.unwrap());
    raw.send(&startup(
        3,
        &[
            ("user", APP_USER),
            ("database", APP_DB),
            ("_pq_.nonsense", "1"),
        ],
    ))
    .await;
    let (tag, body) = raw.recv().await.unwrap();
    assert_eq!(tag, b'v');
    assert_eq!(&body[..8], &[0, 3, 0, 2, 0, 0, 0, 1]);
    assert_eq!(&body[8..], b"_pq_.nonsense\0");
    let (tag, _) = raw.recv().await.unwrap();
    assert_eq!(tag, b'R');
}

#[tokio::test]
async fn latin1_bytes_pass_through_unchanged() {
    let proxy = TestProxy::with(Auth::Passthrough, false, |_| {});
    let (mut raw, _) = logged_in(&proxy, &[("client_encoding", "LATIN1")]).await;
    // 0xE9 is 'é' in LATIN1 and invalid UTF-8: a re-encoding proxy would corrupt it.
    let reply = {
        raw.send(&query(b"SELECT '\xe9t\xe9' AS v, ascii('\xe9')"))
            .await;
        raw.until_ready().await
    };
    assert_eq!(first_value(&reply), b"\xe9t\xe9");
    let row = &reply.iter().find(|m| m.0 == b'D').unwrap().1;
    assert!(row.ends_with(b"233"), "{row:?}");
}

#[tokio::test]
async fn fast_path_function_call_passes_through() {
    let proxy = TestProxy::with(Auth::Passthrough, false, |_| {});
    let (mut raw, _) = logged_in(&proxy, &[]).await;
    let reply = simple(&mut raw, "SELECT 'pg_catalog.int4abs'::regproc::oid").await;
    let oid: u32 = String::from_utf8(first_value(&reply))
        .unwrap()
        .parse()
        .unwrap();
    // FunctionCall: oid, 1 arg format (binary), 1 arg (int4 -5), result format binary.
    let mut body = oid.to_be_bytes().to_vec();
    body.extend_from_slice(&[0, 1, 0, 1, 0, 1, 0, 0, 0, 4]);
    body.extend_from_slice(&(-5i32).to_be_bytes());
    body.extend_from_slice(&[0, 1]);
    raw.send(&message(b'F', &body)).await;
    let reply = raw.until_ready().await;
    let (tag, body) = &reply[0];
    assert_eq!(*tag, b'V');
    assert_eq!(&body[..], &[0, 0, 0, 4, 0, 0, 0, 5]);
}

#[tokio::test]
async fn fast_path_function_call_is_gated_like_sql() {
    // The built-in policy: a call by OID could be any function, so it needs step-up.
    let policy = proto_tests::write_policy("");
    let (_proxy, mut raw) = session_under(&policy).await;
    simple(&mut raw, "BEGIN").await;
    let mut body = 1397u32.to_be_bytes().to_vec(); // int4abs
    body.extend_from_slice(&[0, 1, 0, 1, 0, 1, 0, 0, 0, 4]);
    body.extend_from_slice(&(-5i32).to_be_bytes());
    body.extend_from_slice(&[0, 1]);
    raw.send(&message(b'F', &body)).await;
    let reply = raw.until_ready().await;
    assert_eq!(reply.len(), 2, "{reply:?}");
    assert_eq!(reply[0].0, b'E');
    assert_eq!(field(&reply[0].1, b'C').as_deref(), Some("42501"));
    assert!(field(&reply[0].1, b'D').unwrap().contains("fast-path"));
    // The server's transaction failed with it.
    assert_eq!(reply[1], (b'Z', b"E".to_vec()));
}

#[tokio::test]
async fn cancel_key_is_the_proxys_and_survives_an_immediate_close() {
    let proxy = TestProxy::with(Auth::Passthrough, false, |_| {});
    let (mut raw, hello) = logged_in(&proxy, &[]).await;
    let key = hello.iter().find(|m| m.0 == b'K').unwrap().1.clone();
    let reply = simple(&mut raw, "SELECT pg_backend_pid()").await;
    let backend_pid: i32 = String::from_utf8(first_value(&reply))
        .unwrap()
        .parse()
        .unwrap();
    let our_pid = i32::from_be_bytes(key[..4].try_into().unwrap());
    assert_ne!(our_pid, backend_pid, "the upstream's pid must not leak");

    raw.send(&query(b"SELECT pg_sleep(30)")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A wrong secret does nothing.
    let mut wrong = key.clone();
    wrong[4] ^= 0xff;
    send_cancel(proxy.addr, &wrong).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The right key, on a connection closed right after sending.
    send_cancel(proxy.addr, &key).await;
    let reply = raw.until_ready().await;
    let error = reply.iter().find(|m| m.0 == b'E').expect("canceled");
    assert_eq!(field(&error.1, b'C').as_deref(), Some("57014"));
}

async fn send_cancel(addr: std::net::SocketAddr, key: &[u8]) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let mut packet = ((8 + key.len()) as u32).to_be_bytes().to_vec();
    packet.extend_from_slice(&80877102u32.to_be_bytes());
    packet.extend_from_slice(key);
    tcp.write_all(&packet).await.unwrap();
    drop(tcp);
}

#[tokio::test]
async fn garbage_first_bytes_get_a_clean_close() {
    let proxy = TestProxy::with(Auth::Passthrough, false, |_| {});
    for garbage in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        &[0, 0, 0, 2][..],
        &[0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4][..],
        &[0, 0, 0, 8, 0, 2, 0, 0][..],
    ] {
        let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
        tcp.write_all(garbage).await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(STEP, tcp.read_to_end(&mut answer))
            .await
            .expect("closed, not hung")
            .ok();
        if !answer.is_empty() {
            assert_eq!(answer[0], b'E', "{garbage:?} -> {answer:?}");
        }
    }
    // The proxy still serves.
    logged_in(&proxy, &[]).await;
}

#[tokio::test]
async fn bad_frame_lengths_are_refused_with_an_error() {
    let proxy = TestProxy::with(Auth::Passthrough, false, |c| {
        c.limits.max_message_bytes = 1024 * 1024;
    });
    for (bytes, code) in [
        (vec![b'Q', 0, 0, 0, 3], "08P01"),
        (vec![b'Q', 0x7f, 0xff, 0xff, 0xff], "54000"),
        (vec![b'Q', 0, 0x20, 0, 0], "54000"),
        (message(b'Q', b"SELECT 1"), "08P01"),
    ] {
        let (mut raw, _) = logged_in(&proxy, &[]).await;
        raw.send(&bytes).await;
        let (tag, body) = raw.recv().await.expect("an error");
        assert_eq!(tag, b'E');
        assert_eq!(field(&body, b'C').as_deref(), Some(code), "{bytes:?}");
        assert!(raw.recv().await.is_none(), "then a close");
    }
}

/// Requests sent before unreadable input get their answers first, as PostgreSQL gives them: an
/// INSERT that commits says so before the error; a COPY the bad input interrupts is ended
/// (nothing copied) without waiting for data that will not come.
#[tokio::test]
async fn requests_before_bad_input_are_answered_before_the_error() {
    let proxy = TestProxy::with(Auth::Passthrough, false, |_| {});
    let table = format!("before_bad_input_{}", std::process::id());
    let (mut raw, _) = logged_in(&proxy, &[]).await;
    simple(
        &mut raw,
        &format!("DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (v int)"),
    )
    .await;
    let mut bytes = query(format!("INSERT INTO {table} VALUES (1)").as_bytes());
    bytes.extend_from_slice(&[b'Q', 0, 0, 0, 3]);
    raw.send(&bytes).await;
    let mut tags = Vec::new();
    let mut last = Vec::new();
    while let Some((tag, body)) = raw.recv().await {
        tags.push(tag);
        last = body;
    }
    assert_eq!(
        tags,
        [b'C', b'Z', b'E'],
        "answered, then the error, then a close"
    );
    assert_eq!(field(&last, b'C').as_deref(), Some("08P01"));
    assert_eq!(rows_in(&table).await, 1);

    let (mut raw, _) = logged_in(&proxy, &[]).await;
    raw.send(&query(format!("COPY {table} FROM STDIN").as_bytes()))
        .await;
    assert_eq!(raw.recv().await.unwrap().0, b'G');
    let mut bytes = message(b'd', b"2\n");
    bytes.extend_from_slice(&[b'd', 0, 0, 0, 2]);
    raw.send(&bytes).await;
    let started = std::time::Instant::now();
    let mut tags = Vec::new();
    while let Some((tag, _)) = raw.recv().await {
        tags.push(tag);
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "not left waiting"
    );
    assert_eq!(tags, [b'E', b'Z', b'E'], "the COPY failed, then the error");
    assert_eq!(rows_in(&table).await, 1, "nothing copied");
    proto_tests::admin_client("postgres")
        .await
        .batch_execute(&format!("DROP TABLE {table}"))
        .await
        .unwrap();
}

#[tokio::test]
async fn truncated_frame_then_close_leaves_no_session_behind() {
    let proxy = TestProxy::with(Auth::Passthrough, false, |_| {});
    let (mut raw, _) = logged_in(&proxy, &[("application_name", "truncated-frame")]).await;
    let full = query(b"SELECT 1");
    raw.send(&full[..full.len() - 3]).await;
    drop(raw);
    wait_for_no_backend("truncated-frame").await;
}

/// Rows in `table`, counted directly on the server.
async fn rows_in(table: &str) -> i64 {
    proto_tests::admin_client("postgres")
        .await
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()
        .get(0)
}

async fn wait_for_no_backend(application_name: &str) {
    let client = proto_tests::admin_client("postgres").await;
    for _ in 0..100 {
        let n: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                &[&application_name],
            )
            .await
            .unwrap()
            .get(0);
        if n == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the upstream session of {application_name} was not closed");
}

#[tokio::test]
async fn client_vanishing_mid_copy_commits_nothing() {
    let proxy = TestProxy::with(Auth::Passthrough, false, |_| {});
    let (mut raw, _) = logged_in(&proxy, &[("application_name", "vanish-copy")]).await;
    let table = format!("vanish_copy_{}", std::process::id());
    simple(
        &mut raw,
        &format!("DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (v int)"),
    )
    .await;
    raw.send(&query(format!("COPY {table} FROM STDIN").as_bytes()))
        .await;
    assert_eq!(raw.recv().await.unwrap().0, b'G');
    for i in 0..1000 {
        raw.send(&message(b'd', format!("{i}\n").as_bytes())).await;
    }
    drop(raw);
    wait_for_no_backend("vanish-copy").await;
    assert_eq!(rows_in(&table).await, 0);
    proto_tests::admin_client("postgres")
        .await
        .batch_execute(&format!("DROP TABLE {table}"))
        .await
        .unwrap();
}

#[tokio::test]
async fn upstream_going_away_mid_query_gives_the_client_an_error() {
    let proxy = TestProxy::with(Auth::Passthrough, false, |_| {});
    let (mut raw, _) = logged_in(&proxy, &[("application_name", "upstream-dies")]).await;
    raw.send(&query(b"SELECT pg_sleep(30)")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let admin = proto_tests::admin_client("postgres").await;
    admin
        .batch_execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'upstream-dies'",
        )
        .await
        .unwrap();
    let mut codes = Vec::new();
    while let Some((tag, body)) = raw.recv().await {
        if tag == b'E' {
            codes.push(field(&body, b'C').unwrap());
        }
    }
    // The server's own FATAL, then a close, as from PostgreSQL (a second FATAL of
    // pgstepup's only when the server gave no reason).
    assert_eq!(codes, ["57P01"]);
    logged_in(&proxy, &[]).await;
}

#[tokio::test]
async fn scram_login_errors_match_postgresql() {
    app_role().await;
    let proxy = TestProxy::start();
    for (user, password) in [(APP_USER, "wrong"), ("no_such_user_xyz", "whatever")] {
        let err = proxy
            .connect_with(&proxy.conn_str(user, password, APP_DB, "require"))
            .await
            .expect_err("login refused");
        let db = err.as_db_error().expect("a server error");
        assert_eq!(db.code(), &SqlState::INVALID_PASSWORD);
        assert_eq!(
            db.message(),
            format!("password authentication failed for user \"{user}\"")
        );
    }
}

#[tokio::test]
async fn scram_plus_binds_to_the_proxy_certificate() {
    app_role().await;
    let proxy = TestProxy::start();
    let conn = format!(
        "{} channel_binding=require",
        proxy.conn_str(APP_USER, APP_PASSWORD, APP_DB, "require")
    );
    let (client, _c) = proxy
        .connect_with(&conn)
        .await
        .expect("SCRAM-SHA-256-PLUS login");
    let row = client.query_one("SELECT current_user", &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), APP_USER);

    // Without TLS there is nothing to bind to, so a client requiring it is refused.
    let plain = TestProxy::with(Auth::Scram, false, |_| {});
    let conn = format!(
        "{} channel_binding=require",
        plain.conn_str(APP_USER, APP_PASSWORD, APP_DB, "disable")
    );
    assert!(plain.connect_with(&conn).await.is_err());
}

#[tokio::test]
async fn auth_query_through_a_security_definer_function_and_a_non_superuser_login() {
    app_role().await;
    proto_tests::admin(
        "DO $$BEGIN
           IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'pgstepup_auth') THEN
             CREATE ROLE pgstepup_auth LOGIN PASSWORD 'auth-pass';
           END IF;
         END$$;
         CREATE SCHEMA IF NOT EXISTS pgstepup;
         CREATE OR REPLACE FUNCTION pgstepup.get_auth(p_user text) RETURNS text
           LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog AS
           $f$ SELECT rolpassword FROM pg_authid WHERE rolname = p_user AND rolcanlogin $f$;
         REVOKE ALL ON FUNCTION pgstepup.get_auth(text) FROM PUBLIC;
         GRANT USAGE ON SCHEMA pgstepup TO pgstepup_auth;
         GRANT EXECUTE ON FUNCTION pgstepup.get_auth(text) TO pgstepup_auth;",
    )
    .await;
    let proxy = TestProxy::with(Auth::Scram, true, |c| {
        c.upstream.url = "postgres://pgstepup_auth:auth-pass@127.0.0.1:5432/postgres".into();
        c.auth.query = Some("SELECT pgstepup.get_auth($1)".into());
    });
    app_login_works_and_a_wrong_password_does_not(&proxy).await;
}

#[tokio::test]
async fn verifier_file_replaces_the_auth_query() {
    app_role().await;
    let admin = proto_tests::admin_client("postgres").await;
    let verifier: String = admin
        .query_one(
            "SELECT rolpassword FROM pg_authid WHERE rolname = $1",
            &[&APP_USER],
        )
        .await
        .unwrap()
        .get(0);
    let path = std::env::temp_dir().join(format!("pgstepup-userlist-{}.txt", std::process::id()));
    std::fs::write(
        &path,
        format!("; pgbouncer auth_file format\n\"{APP_USER}\" \"{verifier}\"\n"),
    )
    .unwrap();
    // No login in the upstream URL: the file is the only verifier source.
    let proxy = TestProxy::with(Auth::Scram, true, |c| {
        c.upstream.url = "postgres://127.0.0.1:5432".into();
        c.auth.file = Some(path.clone());
    });
    app_login_works_and_a_wrong_password_does_not(&proxy).await;
    // A user missing from the file is refused the same way.
    let err = proxy
        .connect_with(&proxy.conn_str("postgres", "anything", "postgres", "require"))
        .await
        .expect_err("unknown user refused");
    assert_eq!(err.code(), Some(&SqlState::INVALID_PASSWORD));
    std::fs::remove_file(&path).unwrap();
}

/// The app user logs in through `proxy` as itself; a wrong password gets PostgreSQL's error.
async fn app_login_works_and_a_wrong_password_does_not(proxy: &TestProxy) {
    let (client, _c) = proxy.connect_app().await;
    let row = client.query_one("SELECT current_user", &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), APP_USER);
    let err = proxy
        .connect_with(&proxy.conn_str(APP_USER, "wrong", APP_DB, "require"))
        .await
        .expect_err("wrong password refused");
    assert_eq!(err.code(), Some(&SqlState::INVALID_PASSWORD));
}

#[tokio::test]
async fn an_idle_session_is_closed_with_57p01_as_soon_as_shutdown_begins() {
    let mut proxy = TestProxy::with(Auth::Passthrough, false, |c| {
        c.proxy.shutdown_grace_secs = 60;
    });
    let (mut raw, _) = logged_in(&proxy, &[]).await;
    // Some traffic first: the session is in its steady loop, not just started.
    for _ in 0..3 {
        simple(&mut raw, "SELECT 1").await;
    }
    proxy.begin_shutdown();
    // Nothing else happens on the connection: only the lifecycle can wake the session, and
    // it must, long before the grace period ends (`recv` gives up after a few seconds).
    let (tag, body) = raw.recv().await.expect("an error before the close");
    assert_eq!(tag, b'E');
    assert_eq!(field(&body, b'C').as_deref(), Some("57P01"));
    assert_eq!(raw.recv().await, None);
}

/// Tags and SQLSTATEs of a reply, to compare with what PostgreSQL itself answers.
fn outline(reply: &[(u8, Vec<u8>)]) -> Vec<String> {
    reply
        .iter()
        .map(|(tag, body)| match tag {
            b'E' => format!("E {}", field(body, b'C').unwrap_or_default()),
            b'Z' => format!("Z {}", body[0] as char),
            b'C' => format!("C {}", String::from_utf8_lossy(&body[..body.len() - 1])),
            other => (*other as char).to_string(),
        })
        .collect()
}

/// A refused statement in a text of several fails where it stands: the statements before it
/// run as PostgreSQL would run them had it failed there (a BEGIN opens the transaction that
/// the refusal then fails, a COMMIT commits), and the rest do not.
#[tokio::test]
async fn a_refusal_among_several_statements_fails_where_it_stands() {
    let policy = proto_tests::write_policy(
        "[[rule]]\nname = \"secret\"\ntables = [\"secret.*\"]\naction = \"deny\"\n\
         [[rule]]\nname = \"writes\"\nkinds = [\"write\", \"ddl\"]\naction = \"allow\"\n",
    );
    let (_proxy, mut raw) = session_under(&policy).await;
    let table = format!("refused_among_{}", std::process::id());
    simple(
        &mut raw,
        &format!("DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (v int)"),
    )
    .await;
    let refused = "INSERT INTO secret.cards VALUES (1)";

    let reply = simple(
        &mut raw,
        &format!(
            "BEGIN; INSERT INTO {table} VALUES (1); {refused}; INSERT INTO {table} VALUES (9)"
        ),
    )
    .await;
    assert_eq!(
        outline(&reply),
        ["C BEGIN", "C INSERT 0 1", "E 42501", "Z E"],
        "{reply:?}"
    );
    // The transaction is failed on the server too: nothing more runs, COMMIT rolls back.
    let reply = simple(&mut raw, &format!("INSERT INTO {table} VALUES (2)")).await;
    assert_eq!(outline(&reply), ["E 25P02", "Z E"]);
    let reply = simple(&mut raw, "COMMIT").await;
    assert_eq!(outline(&reply), ["C ROLLBACK", "Z I"]);
    assert_eq!(rows_in(&table).await, 0);

    // What a COMMIT before the refusal committed stays; what follows it never runs.
    let reply = simple(
        &mut raw,
        &format!(
            "INSERT INTO {table} VALUES (3); COMMIT; {refused}; INSERT INTO {table} VALUES (4)"
        ),
    )
    .await;
    assert_eq!(reply.last().unwrap(), &(b'Z', b"I".to_vec()), "{reply:?}");
    assert!(
        outline(&reply).contains(&"E 42501".to_string()),
        "{reply:?}"
    );
    assert_eq!(rows_in(&table).await, 1);

    // Without transaction control the text is one implicit transaction: all or nothing.
    let reply = simple(
        &mut raw,
        &format!("INSERT INTO {table} VALUES (5); {refused}"),
    )
    .await;
    assert_eq!(outline(&reply), ["C INSERT 0 1", "E 42501", "Z I"]);
    assert_eq!(rows_in(&table).await, 1);

    // A text PostgreSQL cannot parse runs none of its statements: nor does the refusal's.
    let reply = simple(
        &mut raw,
        &format!("SET application_name = 'leaked'; INSERT INTO {table} VALUES (6"),
    )
    .await;
    assert_eq!(outline(&reply), ["E 42501", "Z I"]);
    let reply = simple(&mut raw, "SHOW application_name").await;
    assert_ne!(first_value(&reply), b"leaked");
    simple(&mut raw, &format!("DROP TABLE {table}")).await;
}

/// Refusing a Bind or a fast-path call must not cost the client its unnamed statement
/// (PostgreSQL keeps it when a named Parse fails, and a Query in place of a FunctionCall
/// would drop it).
#[tokio::test]
async fn refusals_keep_the_clients_unnamed_statement() {
    let policy = proto_tests::write_policy(
        "[[rule]]\nname = \"secret\"\ntables = [\"secret.*\"]\naction = \"deny\"\n",
    );
    let (_proxy, mut raw) = session_under(&policy).await;
    let unnamed_still_answers = |reply: Vec<(u8, Vec<u8>)>| {
        assert_eq!(first_value(&reply), b"42", "{reply:?}");
    };
    // A named statement allowed where it was prepared...
    let mut batch = parse_message("s1", "SELECT 1 FROM pg_class LIMIT 1");
    batch.extend(message(b'S', &[]));
    raw.send(&batch).await;
    raw.until_ready().await;
    // ... is refused at its Bind once an unqualified pg_class may be secret's.
    simple(&mut raw, "SET search_path = secret, public").await;
    let mut batch = parse_message("", "SELECT 42");
    batch.extend(message(b'S', &[]));
    raw.send(&batch).await;
    raw.until_ready().await;
    raw.send(&bind_execute_sync("s1")).await;
    assert_eq!(outline(&raw.until_ready().await), ["E 42501", "Z I"]);
    raw.send(&bind_execute_sync("")).await;
    unnamed_still_answers(raw.until_ready().await);

    // A fast-path call (any function by OID: needs step-up, refused at once here).
    let mut call = 1397u32.to_be_bytes().to_vec(); // int4abs
    call.extend_from_slice(&[0, 1, 0, 1, 0, 1, 0, 0, 0, 4]);
    call.extend_from_slice(&(-5i32).to_be_bytes());
    call.extend_from_slice(&[0, 1]);
    raw.send(&message(b'F', &call)).await;
    assert_eq!(outline(&raw.until_ready().await), ["E 42501", "Z I"]);
    raw.send(&bind_execute_sync("")).await;
    unnamed_still_answers(raw.until_ready().await);
}

/// In a failed transaction the server refuses everything but its end, so a statement that
/// needs step-up is not held (no approval asked for what cannot run): the client gets the
/// server's 25P02 at once, as without pgstepup. Outside one it is held as ever.
#[tokio::test]
async fn a_failed_transaction_is_answered_without_a_hold() {
    let policy = proto_tests::write_policy_as_is(
        "[[rule]]\nname = \"writes\"\nkinds = [\"write\"]\naction = \"step_up\"\n",
    );
    let (_proxy, mut raw) = session_under(&policy).await;
    let reply = simple(&mut raw, "BEGIN; SELECT 1/0").await;
    assert_eq!(outline(&reply), ["C BEGIN", "E 22012", "Z E"]);
    let write = "INSERT INTO pg_temp.nowhere VALUES (1)";
    let reply = simple(&mut raw, write).await;
    assert_eq!(outline(&reply), ["E 25P02", "Z E"], "{reply:?}");
    let reply = simple(&mut raw, "ROLLBACK").await;
    assert_eq!(outline(&reply), ["C ROLLBACK", "Z I"]);
    // Now it would run: held, with the approval link in a NOTICE.
    raw.send(&query(write.as_bytes())).await;
    let (tag, body) = raw.recv().await.expect("the hold's notice");
    assert_eq!(tag, b'N', "{:?}", String::from_utf8_lossy(&body));
}

/// A setting that would need step-up as a SET after login (a role switch, a search_path that
/// puts a schema before pg_catalog) is refused in the startup packet: a connection cannot be
/// held before it exists.
#[tokio::test]
async fn startup_settings_that_need_step_up_are_refused() {
    let proxy = TestProxy::with(Auth::Passthrough, false, |_| {});
    for params in [
        &[("options", "-c role=pg_monitor")][..],
        &[("role", "pg_monitor")],
        &[("search_path", "public, pg_catalog")],
    ] {
        let mut raw = Raw::new(TcpStream::connect(proxy.addr).await.unwrap());
        let mut all = vec![("user", "postgres"), ("database", "postgres")];
        all.extend_from_slice(params);
        raw.send(&startup(0, &all)).await;
        let (tag, body) = raw.recv().await.expect("an error");
        assert_eq!(tag, b'E', "{params:?}");
        assert_eq!(field(&body, b'C').as_deref(), Some("42501"), "{params:?}");
        assert!(raw.recv().await.is_none(), "closed after the error");
    }
    // Ordinary options still pass.
    let (mut raw, _) = logged_in(&proxy, &[("options", "-c statement_timeout=5s")]).await;
    assert_eq!(
        first_value(&simple(&mut raw, "SHOW statement_timeout").await),
        b"5s"
    );
}

/// A client that half-closes its socket, or says goodbye, right after its last request still
/// gets the answer, as from PostgreSQL (the statement ran and committed either way).
#[tokio::test]
async fn the_last_request_is_answered_after_a_half_close_or_terminate() {
    let proxy = TestProxy::with(Auth::Passthrough, false, |_| {});
    let (mut raw, _) = logged_in(&proxy, &[]).await;
    raw.send(&query(b"SELECT pg_sleep(0.2), 42")).await;
    raw.io.shutdown().await.unwrap();
    let reply = raw.until_ready().await;
    assert_eq!(outline(&reply).last().map(String::as_str), Some("Z I"));
    assert!(
        outline(&reply).contains(&"C SELECT 1".to_string()),
        "{reply:?}"
    );
    assert!(raw.recv().await.is_none(), "closed after the answer");

    let (mut raw, _) = logged_in(&proxy, &[]).await;
    let mut batch = query(b"SELECT pg_sleep(0.2), 42");
    batch.extend(message(b'X', &[]));
    raw.send(&batch).await;
    let reply = raw.until_ready().await;
    assert!(
        outline(&reply).contains(&"C SELECT 1".to_string()),
        "{reply:?}"
    );
    assert!(raw.recv().await.is_none(), "closed after the answer");
}

/// PostgreSQL sends messages up to 1 GiB (a value near that size in a row): pgstepup relays
/// what the server sends, however large (a 256 MiB limit used to end the session).
#[tokio::test]
async fn a_row_larger_than_256_mib_reaches_the_client() {
    let proxy = TestProxy::with(Auth::Passthrough, false, |_| {});
    let (mut raw, _) = logged_in(&proxy, &[]).await;
    let reply = simple(&mut raw, "SELECT repeat('x', 300000000)").await;
    let (_, row) = reply.iter().find(|m| m.0 == b'D').expect("the row");
    assert_eq!(row.len(), 2 + 4 + 300_000_000);
    assert_eq!(outline(&reply).last().map(String::as_str), Some("Z I"));
}

/// Once a statement of an extended-protocol batch fails, the server skips the rest up to the
/// Sync: a later statement that needs step-up is not held for an approval of what cannot run
/// (the client used to wait out every rule's timeout, with a link for each).
#[tokio::test]
async fn a_failed_batch_holds_nothing_after_its_error() {
    let policy = proto_tests::write_policy_as_is(
        "[[rule]]\nname = \"writes\"\nkinds = [\"write\"]\naction = \"step_up\"\n\
         [[rule]]\nname = \"secret\"\ntables = [\"secret.*\"]\naction = \"deny\"\n",
    );
    let (_proxy, mut raw) = session_under(&policy).await;
    let statement = |sql: &str| {
        let mut out = parse_message("", sql);
        out.extend(message(b'B', &[0, 0, 0, 0, 0, 0, 0, 0]));
        out.extend(message(b'E', &[0, 0, 0, 0, 0]));
        out
    };
    let held = "INSERT INTO pg_temp.nowhere VALUES (1)";
    for (first, error) in [
        ("SELECT 1/0", "E 22012"),
        ("INSERT INTO secret.cards VALUES (1)", "E 42501"),
    ] {
        let mut batch = statement(first);
        batch.extend(statement(held));
        batch.extend(statement(held));
        batch.extend(message(b'S', &[]));
        raw.send(&batch).await;
        let reply: Vec<String> = outline(&raw.until_ready().await)
            .into_iter()
            .filter(|m| m != "N")
            .collect();
        assert!(reply.contains(&error.to_string()), "{first}: {reply:?}");
        assert_eq!(reply.last().map(String::as_str), Some("Z I"), "{first}");
    }
}

/// A Parse under a name the server already holds fails there and the old statement stays:
/// its Binds are decided as either text, so a second Parse cannot make a Bind of the first
/// pass unchecked (a denied read ran after a re-Parse of its name as `SELECT 1`).
#[tokio::test]
async fn a_statement_name_parsed_again_is_decided_as_either_text() {
    let policy = proto_tests::write_policy(
        "[[rule]]\nname = \"secret\"\ntables = [\"secret.*\"]\nkinds = [\"read\"]\naction = \"deny\"\n",
    );
    let (_proxy, mut raw) = session_under(&policy).await;
    let parse_sync = |name: &str, sql: &str| {
        let mut out = parse_message(name, sql);
        out.extend(message(b'S', &[]));
        out
    };
    raw.send(&parse_sync("n1", "SELECT count(*) FROM pg_class"))
        .await;
    assert_eq!(outline(&raw.until_ready().await), ["1", "Z I"]);
    // From now on an unqualified pg_class may be secret's.
    simple(&mut raw, "SET search_path = secret, public").await;
    raw.send(&parse_sync("n1", "SELECT 1")).await;
    assert_eq!(outline(&raw.until_ready().await), ["E 42P05", "Z I"]);
    raw.send(&bind_execute_sync("n1")).await;
    assert_eq!(outline(&raw.until_ready().await), ["E 42501", "Z I"]);

    // A DEALLOCATE (here one the server refuses) does not make pgstepup forget a name: its
    // Binds are still decided as what it was prepared as.
    raw.send(&parse_sync("n2", "SELECT count(*) FROM pg_class"))
        .await;
    raw.until_ready().await;
    let reply = simple(&mut raw, "DEALLOCATE no_such_statement").await;
    assert_eq!(outline(&reply), ["E 26000", "Z I"]);
    raw.send(&bind_execute_sync("n2")).await;
    assert_eq!(outline(&raw.until_ready().await), ["E 42501", "Z I"]);
    // A name pgstepup never saw prepared runs something unknown: step-up (refused at once).
    simple(&mut raw, "PREPARE by_sql AS SELECT 1").await;
    raw.send(&bind_execute_sync("by_sql")).await;
    assert_eq!(outline(&raw.until_ready().await), ["E 42501", "Z I"]);
}

/// After a DEALLOCATE ALL, a Bind of a name the server no longer holds gets the server's own
/// error (26000), which drivers answer by preparing again: not a refusal of pgstepup's.
#[tokio::test]
async fn a_deallocated_statement_gets_the_servers_own_error() {
    let policy = proto_tests::write_policy(
        "[[rule]]\nname = \"secret\"\ntables = [\"secret.*\"]\naction = \"deny\"\n",
    );
    let (_proxy, mut raw) = session_under(&policy).await;
    let mut batch = parse_message("s1", "SELECT 1");
    batch.extend(message(b'S', &[]));
    raw.send(&batch).await;
    raw.until_ready().await;
    simple(&mut raw, "DEALLOCATE ALL").await;
    raw.send(&bind_execute_sync("s1")).await;
    assert_eq!(outline(&raw.until_ready().await), ["E 26000", "Z I"]);
}
