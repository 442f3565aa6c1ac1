//! Operating pgstepup: Prometheus metrics that move by exactly what happened, health and
//! readiness, graceful shutdown (open transactions finish, held statements do not run),
//! connection limits, and reloading the policy and certificate under load.

use std::time::{Duration, Instant};

use tokio_postgres::error::SqlState;

use proto_tests::stepup::{
    assert_reply, connect_noticed, count, enrolled, last_segment, link_in, stepup_proxy,
    table_of_three, WebClient,
};
use proto_tests::{
    app_role, use_policy_file, write_policy_as_is, Auth, TestProxy, APP_DB, APP_PASSWORD, APP_USER,
};

/// One scrape of `/metrics`, parsed with a Prometheus text-format parser.
struct Scrape(prometheus_parse::Scrape);

impl Scrape {
    async fn of(web: &WebClient) -> Self {
        Self::parse(&web.metrics_text().await)
    }

    /// From a web listener that serves HTTPS with the test CA's certificate.
    async fn of_https(addr: std::net::SocketAddr) -> Self {
        let ca = std::fs::read(&proto_tests::certs().ca).unwrap();
        let http = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
            .build()
            .unwrap();
        let url = format!("https://localhost:{}/metrics", addr.port());
        let text = http.get(url).send().await.unwrap().text().await.unwrap();
        Self::parse(&text)
    }

    fn parse(text: &str) -> Self {
        let lines = text.lines().map(|l| Ok(l.to_owned()));
        Scrape(prometheus_parse::Scrape::parse(lines).expect("valid exposition format"))
    }

    /// A counter's or gauge's value (0 when the series does not exist yet); for a histogram,
    /// its observation count.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match &s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => *v,
                prometheus_parse::Value::Histogram(buckets) => buckets
                    .iter()
                    .find(|b| b.less_than.is_infinite())
                    .map_or(0.0, |b| b.count),
                prometheus_parse::Value::Summary(_) => 0.0,
            })
            .sum()
    }
}

fn policy(hold: &str) -> String {
    format!(
        r#"
[[rule]]
name = "held-writes"
tables = ["public.stepup_*"]
kinds = ["write"]
action = "step_up"
lifetime = "0"
timeout = "{hold}"

[[rule]]
name = "vault"
tables = ["public.vault_*"]
action = "deny"
"#
    )
}

#[tokio::test]
async fn metrics_move_by_exactly_what_happened() {
    app_role().await;
    let orders = table_of_three("stepup_metrics").await;
    let quick = table_of_three("stepup_metrics_quick").await;
    let path = write_policy_as_is(&policy("30s"));
    let proxy = TestProxy::with(Auth::Scram, true, |c| use_policy_file(c, &path));
    let web = WebClient::of(&proxy);
    let mut key = enrolled(&proxy, &web, APP_USER).await;
    let before = Scrape::of(&web).await;

    let (client, mut notices) = connect_noticed(&proxy, "metrics-test").await;
    // Three reads of one shape (only the literal differs), one denied statement.
    for i in 0..3 {
        client
            .simple_query(&format!("SELECT count(*) + {i} FROM public.{orders}"))
            .await
            .unwrap();
    }
    let denied = client.simple_query("DELETE FROM public.vault_x").await;
    assert!(denied.is_err());
    // Held, then approved.
    let client = std::sync::Arc::new(client);
    let run = |sql: String| {
        let client = client.clone();
        tokio::spawn(async move { client.simple_query(&sql).await.map(|_| ()) })
    };
    let held = run(format!("DELETE FROM public.{orders} WHERE v = 1"));
    let link = notices.next_link().await;
    let mid = Scrape::of(&web).await;
    assert_eq!(mid.value("pgstepup_held_statements", &[]), 1.0);
    let (_, status, reply) = web.approve(&link, &mut key).await;
    assert_reply(status, &reply, 200, "approved");
    held.await.unwrap().unwrap();
    // Held, then denied.
    let held = run(format!("DELETE FROM public.{orders} WHERE v = 2"));
    let link = notices.next_link().await;
    let (status, reply) = web.deny(&link).await;
    assert_reply(status, &reply, 200, "denied");
    assert!(held.await.unwrap().is_err());
    // One failed WebAuthn attempt.
    let held = run(format!("DELETE FROM public.{orders} WHERE v = 3"));
    let link = notices.next_link().await;
    let (status, _) = web
        .post_raw(
            &format!("/api/approve/{}/finish", last_segment(&link)),
            b"{}".to_vec(),
        )
        .await;
    assert_eq!(status, 403);
    let (status, reply) = web.deny(&link).await;
    assert_reply(status, &reply, 200, "denied");
    assert!(held.await.unwrap().is_err());

    // A second proxy on the same metrics? No: each instance has its own registry. Timeouts
    // are counted where the statement was held.
    let quick_path = write_policy_as_is(&policy("1s"));
    let quick_proxy = TestProxy::with(Auth::Scram, true, |c| use_policy_file(c, &quick_path));
    let quick_web = WebClient::of(&quick_proxy);
    let quick_before = Scrape::of(&quick_web).await;
    let (quick_client, _n) = connect_noticed(&quick_proxy, "metrics-test").await;
    let error = quick_client
        .simple_query(&format!("DELETE FROM public.{quick}"))
        .await
        .unwrap_err();
    assert!(link_in(error.as_db_error().unwrap().message()).is_some());
    let quick_after = Scrape::of(&quick_web).await;
    let quick_delta = |name: &str, labels: &[(&str, &str)]| {
        quick_after.value(name, labels) - quick_before.value(name, labels)
    };
    assert_eq!(
        quick_delta(
            "pgstepup_stepup_challenges_total",
            &[("outcome", "expired")]
        ),
        1.0
    );

    let after = Scrape::of(&web).await;
    let delta = |name: &str, labels: &[(&str, &str)]| {
        after.value(name, labels) - before.value(name, labels)
    };
    assert_eq!(
        delta(
            "pgstepup_statements_total",
            &[("decision", "allow"), ("kind", "read")]
        ),
        3.0
    );
    assert_eq!(
        delta("pgstepup_statements_total", &[("decision", "deny")]),
        1.0
    );
    assert_eq!(
        delta("pgstepup_statements_total", &[("decision", "step_up")]),
        3.0
    );
    for (outcome, expected) in [
        ("approved", 1.0),
        ("denied", 2.0),
        ("expired", 0.0),
        ("cancelled", 0.0),
        ("failed", 0.0),
    ] {
        assert_eq!(
            delta("pgstepup_stepup_challenges_total", &[("outcome", outcome)]),
            expected,
            "{outcome}"
        );
    }
    assert_eq!(after.value("pgstepup_held_statements", &[]), 0.0);
    assert_eq!(delta("pgstepup_stepup_approval_seconds", &[]), 1.0);
    assert_eq!(
        delta(
            "pgstepup_webauthn_failures_total",
            &[("reason", "malformed")]
        ),
        1.0
    );
    assert_eq!(after.value("pgstepup_client_connections", &[]), 1.0);
    assert_eq!(delta("pgstepup_client_connections_total", &[]), 1.0);
    assert_eq!(after.value("pgstepup_upstream_connections", &[]), 1.0);
    // Classified: the first read (the session remembers its shape, so the other literals
    // need no classification), the denied statement and the three held ones.
    let classified = delta("pgstepup_classification_cache_hits_total", &[])
        + delta("pgstepup_classification_cache_misses_total", &[]);
    assert_eq!(classified, 5.0);
    // The second and third held statements differ from the first only in a literal: found
    // by shape after the session's own byte comparison with the first.
    let hits_by = |lookup: &str| {
        delta(
            "pgstepup_classification_cache_hits_total",
            &[("lookup", lookup)],
        )
    };
    assert_eq!((hits_by("shape"), hits_by("text")), (2.0, 0.0));
    // Sampled (one client message in 8, the first of a session always): at least one.
    assert!(delta("pgstepup_statement_overhead_seconds", &[]) >= 1.0);
    assert_eq!(after.value("pgstepup_ready", &[]), 1.0);
    assert_eq!(
        after.value(
            "pgstepup_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    // No user names, SQL or tokens in labels.
    for sample in &after.0.samples {
        for (_, value) in sample.labels.iter() {
            assert!(
                !value.contains(APP_USER) && !value.contains("DELETE") && value.len() < 40,
                "{}: {value}",
                sample.metric
            );
        }
    }
    assert_eq!(count(&orders).await, 2);

    // Another session's first sight of a statement the first session ran, with another
    // literal: recalled from the shared cache by its text, not scanned.
    let (other, _notices) = connect_noticed(&proxy, "metrics-test-2").await;
    other
        .simple_query(&format!("SELECT count(*) + 70 FROM public.{orders}"))
        .await
        .unwrap();
    let last = Scrape::of(&web).await;
    let hits_since = |lookup: &str| {
        let name = "pgstepup_classification_cache_hits_total";
        last.value(name, &[("lookup", lookup)]) - after.value(name, &[("lookup", lookup)])
    };
    assert_eq!((hits_since("text"), hits_since("shape")), (1.0, 0.0));
}

#[tokio::test]
async fn health_readiness_and_limits() {
    app_role().await;
    let proxy = TestProxy::with(Auth::Scram, true, |c| {
        c.limits.max_client_connections = 2;
        c.limits.client_idle_timeout_secs = 1;
    });
    let web = WebClient::of(&proxy);
    let (status, _) = web.get("/healthz").await;
    assert_eq!(status, 200);
    web.await_readiness(200).await;
    let before = Scrape::of(&web).await;

    let conn = proxy.conn_str(APP_USER, APP_PASSWORD, APP_DB, "require");
    let (first, _a) = proxy.connect_with(&conn).await.unwrap();
    // Activity keeps a session open past the limit: a query every 300 ms for 1.8 s.
    for _ in 0..6 {
        first.simple_query("SELECT 1").await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (second, _b) = proxy.connect_with(&conn).await.unwrap();
    let third = match proxy.connect_with(&conn).await {
        Ok(_) => panic!("a third connection is over the limit"),
        Err(error) => error,
    };
    assert_eq!(third.code(), Some(&SqlState::TOO_MANY_CONNECTIONS));
    // Idle past the limit outside a transaction: closed with 57P05; in a transaction: kept.
    second.batch_execute("BEGIN").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(first.simple_query("SELECT 1").await.is_err());
    second.batch_execute("SELECT 1").await.unwrap();
    second.batch_execute("COMMIT").await.unwrap();
    let after = Scrape::of(&web).await;
    let increase = |name: &str, reason: &str| {
        after.value(name, &[("reason", reason)]) - before.value(name, &[("reason", reason)])
    };
    assert_eq!(
        increase("pgstepup_client_connections_rejected_total", "too_many"),
        1.0
    );
    assert_eq!(
        increase("pgstepup_client_sessions_closed_total", "idle_timeout"),
        1.0
    );
}

/// A connection that never finishes its startup is closed after `limits.startup_timeout_secs`
/// and counted; one that finishes in time is unaffected and keeps working past the limit.
#[tokio::test]
async fn a_silent_connection_is_closed_after_the_startup_timeout() {
    use tokio::io::AsyncReadExt;

    app_role().await;
    let proxy = TestProxy::with(Auth::Scram, true, |c| {
        c.limits.startup_timeout_secs = 1;
    });
    let web = WebClient::of(&proxy);
    web.await_readiness(200).await;
    let before = Scrape::of(&web).await;

    let (working, _conn) = proxy
        .connect_with(&proxy.conn_str(APP_USER, APP_PASSWORD, APP_DB, "require"))
        .await
        .unwrap();
    let started = Instant::now();
    let mut silent = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut byte))
        .await
        .expect("the proxy closes a silent connection");
    assert_eq!(read.unwrap(), 0, "closed without a reply");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "closed after {waited:?}, before the timeout"
    );
    working.simple_query("SELECT 1").await.unwrap();

    let after = Scrape::of(&web).await;
    let timed_out = |s: &Scrape| {
        s.value(
            "pgstepup_client_connections_rejected_total",
            &[("reason", "startup_timeout")],
        )
    };
    assert_eq!(timed_out(&after) - timed_out(&before), 1.0);
    assert_eq!(after.value("pgstepup_upstream_connections", &[]), 1.0);
}

/// The approval page is open to anyone who can reach it: a client that never finishes its
/// request's headers is closed after the header timeout, and others are served meanwhile.
#[tokio::test]
async fn a_web_client_that_stalls_in_its_headers_is_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let proxy = TestProxy::with(Auth::Scram, true, |_| {});
    let web = WebClient::of(&proxy);
    let started = Instant::now();
    let mut stalled = tokio::net::TcpStream::connect(proxy.web_addr)
        .await
        .unwrap();
    stalled
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let (status, _) = web.get("/healthz").await;
    assert_eq!(status, 200, "served while another client stalls");
    let limit = pgstepup_web::HEADER_TIMEOUT + Duration::from_secs(5);
    let mut answer = Vec::new();
    tokio::time::timeout(limit, stalled.read_to_end(&mut answer))
        .await
        .expect("the stalled connection is closed")
        .unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= pgstepup_web::HEADER_TIMEOUT - Duration::from_millis(100),
        "closed after {waited:?}, before the timeout"
    );
    assert!(
        !String::from_utf8_lossy(&answer).contains("200 OK"),
        "the unfinished request was not served"
    );
}

#[tokio::test]
async fn shutdown_lets_an_open_transaction_commit_then_closes_with_57p01() {
    app_role().await;
    let table = table_of_three("free_shutdown").await;
    let audit = proto_tests::audit_file();
    let mut proxy = TestProxy::with(Auth::Scram, true, |c| {
        c.proxy.shutdown_grace_secs = 20;
        c.audit.file = audit.clone();
    });
    let web = WebClient::of(&proxy);
    let (client, _c) = proxy.connect_app().await;
    client.batch_execute("BEGIN").await.unwrap();
    client
        .batch_execute(&format!("INSERT INTO public.{table} VALUES (10)"))
        .await
        .unwrap();
    let started = Instant::now();
    proxy.begin_shutdown();
    // Not ready any more; no new connections.
    web.await_readiness(503).await;
    assert!(tokio::net::TcpStream::connect(proxy.addr).await.is_err());
    // The transaction goes on and commits.
    client
        .batch_execute(&format!("INSERT INTO public.{table} VALUES (11)"))
        .await
        .unwrap();
    client.batch_execute("COMMIT").await.unwrap();
    assert_eq!(count(&table).await, 5);
    // Then the session is closed, well before the grace period ends.
    let error = client.simple_query("SELECT 1").await.unwrap_err();
    assert!(
        error.code() == Some(&SqlState::ADMIN_SHUTDOWN) || error.is_closed(),
        "{error:?}"
    );
    drop(proxy);
    assert!(started.elapsed() < Duration::from_secs(15));
    let text = std::fs::read_to_string(&audit).unwrap();
    assert!(text
        .lines()
        .last()
        .unwrap()
        .contains("\"event\":\"shutdown\""));
}

/// A statement still running when the grace period ends is cancelled before the client is
/// told its session ended: it must not commit afterwards.
#[tokio::test]
async fn shutdown_cancels_what_still_runs_after_the_grace_period() {
    app_role().await;
    let table = table_of_three("running_shutdown").await;
    let mut proxy = TestProxy::with(Auth::Scram, true, |c| c.proxy.shutdown_grace_secs = 1);
    let (client, _c) = proxy.connect_app().await;
    let insert = format!("INSERT INTO public.{table} SELECT 20 FROM pg_sleep(6)");
    let running = tokio::spawn(async move { client.batch_execute(&insert).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    proxy.begin_shutdown();
    // Within the grace period (1 s) and the closing work's bound (lifecycle::CLOSING_WORK,
    // 5 s), with room for a loaded machine; a statement not cancelled would succeed instead.
    let error = tokio::time::timeout(Duration::from_secs(9), running)
        .await
        .expect("ended soon after the grace period")
        .unwrap()
        .unwrap_err();
    assert!(
        error.code() == Some(&SqlState::QUERY_CANCELED)
            || error.code() == Some(&SqlState::ADMIN_SHUTDOWN),
        "{error:?}"
    );
    drop(proxy);
    // Past the moment the statement would have finished: nothing was inserted.
    tokio::time::sleep(Duration::from_secs(7).saturating_sub(started.elapsed())).await;
    assert_eq!(count(&table).await, 3);
}

#[tokio::test]
async fn shutdown_with_a_held_statement_runs_nothing() {
    app_role().await;
    let orders = table_of_three("stepup_shutdown").await;
    let mut proxy = stepup_proxy("60s", |c| c.proxy.shutdown_grace_secs = 1);
    let (client, mut notices) = connect_noticed(&proxy, "psql").await;
    client.batch_execute("BEGIN").await.unwrap();
    let delete = format!("DELETE FROM public.{orders}");
    let held = tokio::spawn(async move { client.batch_execute(&delete).await });
    let link = notices.next_link().await;
    proxy.begin_shutdown();
    let error = tokio::time::timeout(Duration::from_secs(10), held)
        .await
        .expect("closed once the grace period is over")
        .unwrap()
        .unwrap_err();
    assert!(
        error.code() == Some(&SqlState::ADMIN_SHUTDOWN) || error.is_closed(),
        "{error:?}"
    );
    drop(proxy);
    assert_eq!(count(&orders).await, 3);
    let _ = link;
}

#[tokio::test]
async fn reloading_policy_and_certificate_under_load_drops_nobody() {
    app_role().await;
    let dir = proto_tests::certs().dir.clone();
    let (cert, key) = (dir.join("reload-cert.pem"), dir.join("reload-key.pem"));
    std::fs::copy(&proto_tests::certs().cert, &cert).unwrap();
    std::fs::copy(&proto_tests::certs().key, &key).unwrap();
    let (cert_in_use, key_in_use) = (cert.clone(), key.clone());
    let proxy = TestProxy::with(Auth::Scram, true, |c| {
        c.tls.cert = Some(cert_in_use.clone());
        c.tls.key = Some(key_in_use.clone());
        c.web.tls_cert = Some(cert_in_use);
        c.web.tls_key = Some(key_in_use);
    });
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (client, _c) = proxy.connect_app().await;
        let stop = stop.clone();
        workers.push(tokio::spawn(async move {
            let mut queries = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let row = client.query_one("SELECT 1::int", &[]).await?;
                assert_eq!(row.get::<_, i32>(0), 1);
                queries += 1;
            }
            Ok::<u64, tokio_postgres::Error>(queries)
        }));
    }
    // A new certificate (a fresh key, signed by the same test CA) replaces the old one.
    proto_tests::issue_certificate(&cert, &key);
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        proxy.reloader.reload("test");
    }
    use rustls_pki_types::pem::PemObject;
    let expected = rustls_pki_types::CertificateDer::pem_file_iter(&cert)
        .map(|mut certs| certs.next().unwrap().unwrap())
        .unwrap();
    let presented = proto_tests::server_certificate(proxy.addr, true).await;
    assert_eq!(
        presented,
        expected.as_ref(),
        "new connections get the new certificate"
    );
    let presented = proto_tests::server_certificate(proxy.web_addr, false).await;
    assert_eq!(presented, expected.as_ref(), "so do the approval pages");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for worker in workers {
        let queries = worker.await.unwrap().expect("no connection was dropped");
        assert!(queries > 0);
    }

    // A renewal that cannot be read keeps the old certificate, and says so in the metrics
    // (an alert fires on it): both listeners' attempts count.
    let before = Scrape::of_https(proxy.web_addr).await;
    std::fs::write(&cert, "not a certificate").unwrap();
    proxy.reloader.reload("test");
    let after = Scrape::of_https(proxy.web_addr).await;
    let failures = |scrape: &Scrape| {
        scrape.value(
            "pgstepup_certificate_reloads_total",
            &[("result", "failure")],
        )
    };
    assert_eq!(failures(&after) - failures(&before), 2.0);
    let presented = proto_tests::server_certificate(proxy.addr, true).await;
    assert_eq!(presented, expected.as_ref(), "the old certificate stays");
}
