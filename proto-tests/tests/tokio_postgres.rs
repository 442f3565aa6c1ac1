//! tokio-postgres through pgstepup over TLS with SCRAM: the protocol features an application
//! uses, each checked against real values from the real PostgreSQL.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt, TryStreamExt};
use proto_tests::{app_role, TestProxy, APP_DB, APP_PASSWORD, APP_USER};
use tokio_postgres::error::SqlState;
use tokio_postgres::AsyncMessage;

async fn table(client: &tokio_postgres::Client, name: &str, columns: &str) -> String {
    let table = format!("{name}_{}", std::process::id());
    client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} ({columns})"
        ))
        .await
        .unwrap();
    table
}

#[tokio::test]
async fn simple_multi_statement_and_extended_queries() {
    app_role().await;
    let proxy = TestProxy::start();
    let (client, _conn) = proxy.connect_app().await;

    let messages = client
        .simple_query("SELECT 1 AS a; SELECT 'two' AS b")
        .await
        .unwrap();
    let values: Vec<String> = messages
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap().to_owned()),
            _ => None,
        })
        .collect();
    assert_eq!(values, ["1", "two"]);

    let row = client
        .query_one(
            "SELECT $1::int + 1, $2::text || '!', current_user",
            &[&41i32, &"hi"],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
    assert_eq!(row.get::<_, String>(1), "hi!");
    // The upstream session runs as the client's own user, not the proxy's auth login.
    assert_eq!(row.get::<_, String>(2), APP_USER);
}

#[tokio::test]
async fn prepared_statement_reuse_and_pipelining() {
    app_role().await;
    let proxy = TestProxy::start();
    let (client, _conn) = proxy.connect_app().await;
    let stmt = client.prepare("SELECT $1::int * 2").await.unwrap();
    for i in 0..20i32 {
        let row = client.query_one(&stmt, &[&i]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), i * 2);
    }
    // Many statements in flight at once: tokio-postgres pipelines them on one connection.
    let futures = (0..50i32).map(|i| {
        let client = &client;
        let stmt = &stmt;
        async move {
            client
                .query_one(stmt, &[&i])
                .await
                .unwrap()
                .get::<_, i32>(0)
        }
    });
    let results = futures_util::future::join_all(futures).await;
    assert_eq!(results, (0..50).map(|i| i * 2).collect::<Vec<_>>());
}

#[tokio::test]
async fn transactions_commit_rollback_and_savepoints() {
    app_role().await;
    let proxy = TestProxy::start();
    let (mut client, _conn) = proxy.connect_app().await;
    let t = table(&client, "tp_tx", "id int").await;

    let tx = client.transaction().await.unwrap();
    tx.execute(&format!("INSERT INTO {t} VALUES (1)"), &[])
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    let tx = client.transaction().await.unwrap();
    tx.execute(&format!("INSERT INTO {t} VALUES (2)"), &[])
        .await
        .unwrap();
    {
        let mut tx = tx;
        let sp = tx.savepoint("sp").await.unwrap();
        sp.execute(&format!("INSERT INTO {t} VALUES (3)"), &[])
            .await
            .unwrap();
        sp.rollback().await.unwrap();
        tx.commit().await.unwrap();
    }
    let ids: Vec<i32> = client
        .query(&format!("SELECT id FROM {t} ORDER BY id"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids, [2]);
    client
        .batch_execute(&format!("DROP TABLE {t}"))
        .await
        .unwrap();
}

#[tokio::test]
async fn copy_in_and_out_large() {
    app_role().await;
    let proxy = TestProxy::start();
    let (client, _conn) = proxy.connect_app().await;
    let t = table(&client, "tp_copy", "id int, payload text").await;

    let sink = client
        .copy_in(&format!("COPY {t} FROM STDIN"))
        .await
        .unwrap();
    futures_util::pin_mut!(sink);
    let rows = 200_000;
    let mut batch = String::new();
    for i in 0..rows {
        batch.push_str(&format!("{i}\tpayload-{i}-ä\n"));
        if batch.len() > 64 * 1024 {
            sink.send(bytes::Bytes::from(std::mem::take(&mut batch)))
                .await
                .unwrap();
        }
    }
    sink.send(bytes::Bytes::from(batch)).await.unwrap();
    assert_eq!(sink.finish().await.unwrap(), rows as u64);

    let stream = client
        .copy_out(&format!("COPY {t} TO STDOUT"))
        .await
        .unwrap();
    let chunks: Vec<bytes::Bytes> = stream.try_collect().await.unwrap();
    let text: Vec<u8> = chunks.concat();
    let text = String::from_utf8(text).unwrap();
    assert_eq!(text.lines().count(), rows);
    assert!(text.contains("199999\tpayload-199999-ä\n"));
    client
        .batch_execute(&format!("DROP TABLE {t}"))
        .await
        .unwrap();
}

#[tokio::test]
async fn listen_notify_reaches_an_idle_client() {
    app_role().await;
    let proxy = TestProxy::start();
    let (listener, mut conn) = tokio_postgres::connect(
        &proxy.conn_str(APP_USER, APP_PASSWORD, APP_DB, "require"),
        proto_tests::tls_connector(),
    )
    .await
    .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
    tokio::spawn(async move {
        while let Some(Ok(message)) = messages.next().await {
            if let AsyncMessage::Notification(n) = message {
                let _ = tx.send((n.channel().to_owned(), n.payload().to_owned()));
            }
        }
    });
    listener.batch_execute("LISTEN stepup_chan").await.unwrap();

    let (notifier, _c) = proxy.connect_app().await;
    notifier
        .batch_execute("NOTIFY stepup_chan, 'payload ✓'")
        .await
        .unwrap();
    // The listener sends nothing: the notification must arrive while it is idle.
    let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("notification delivered to the idle client")
        .unwrap();
    assert_eq!(got, ("stepup_chan".to_owned(), "payload ✓".to_owned()));
}

#[tokio::test]
async fn cancel_stops_a_running_query() {
    app_role().await;
    let proxy = TestProxy::start();
    let (client, _conn) = proxy.connect_app().await;
    let token = client.cancel_token();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        token
            .cancel_query(proto_tests::tls_connector())
            .await
            .unwrap();
    });
    let started = Instant::now();
    let err = client
        .batch_execute("SELECT pg_sleep(30)")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
    canceller.await.unwrap();
    // The session is still usable.
    let row = client.query_one("SELECT 7", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 7);
}

#[tokio::test]
async fn error_then_good_query_and_pipeline_recovery() {
    app_role().await;
    let proxy = TestProxy::start();
    let (client, _conn) = proxy.connect_app().await;
    let err = client.simple_query("SELECT 1/0").await.unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::DIVISION_BY_ZERO));
    assert_eq!(
        client
            .query_one("SELECT 2", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        2
    );
    // An error in the middle of a pipeline fails only its own statement.
    let (a, b, c) = tokio::join!(
        client.query_one("SELECT 1::int", &[]),
        client.query_one("SELECT 1/0", &[]),
        client.query_one("SELECT 3::int", &[]),
    );
    assert_eq!(a.unwrap().get::<_, i32>(0), 1);
    assert_eq!(b.unwrap_err().code(), Some(&SqlState::DIVISION_BY_ZERO));
    assert_eq!(c.unwrap().get::<_, i32>(0), 3);
}

#[tokio::test]
async fn hundred_thousand_rows_and_a_large_row() {
    app_role().await;
    let proxy = TestProxy::start();
    let (client, _conn) = proxy.connect_app().await;
    let rows = client
        .query(
            "SELECT g, md5(g::text) FROM generate_series(1, 100000) g",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 100_000);
    let sum: i64 = rows.iter().map(|r| i64::from(r.get::<_, i32>(0))).sum();
    assert_eq!(sum, 5_000_050_000);
    assert_eq!(
        rows[99_999].get::<_, String>(1),
        "14ee22eaba297944c96afdbe5b16c65b"
    );

    // One 40 MB value, both ways.
    let big = "x".repeat(40 * 1024 * 1024);
    let row = client
        .query_one("SELECT $1::text || 'y', length($1::text)", &[&big])
        .await
        .unwrap();
    let back: String = row.get(0);
    assert_eq!(back.len(), big.len() + 1);
    assert!(back.ends_with("xy"));
    assert_eq!(row.get::<_, i32>(1) as usize, big.len());
}

#[tokio::test]
async fn types_round_trip() {
    app_role().await;
    let proxy = TestProxy::start();
    let (client, _conn) = proxy.connect_app().await;
    let text = "héllo wörld ✓ 日本語 🎉";
    let bytes: Vec<u8> = (0..=255u8).collect();
    let ints = vec![1i32, -2, 3];
    let row = client
        .query_one(
            "SELECT $1::text, $2::bytea, $3::int4[], '2024-02-29 12:34:56.789+05:30'::timestamptz::text, \
             (12345678901234567890.123456789012345::numeric * 2)::text, \
             '{\"a\": {\"b\": [1, 2, null]}}'::jsonb::text, ARRAY['x', NULL, 'z']::text[]",
            &[&text, &bytes, &ints],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), text);
    assert_eq!(row.get::<_, Vec<u8>>(1), bytes);
    assert_eq!(row.get::<_, Vec<i32>>(2), ints);
    let ts: String = row.get(3);
    assert!(ts.starts_with("2024-02-29"), "{ts}");
    assert_eq!(
        row.get::<_, String>(4),
        "24691357802469135780.246913578024690"
    );
    assert_eq!(row.get::<_, String>(5), r#"{"a": {"b": [1, 2, null]}}"#);
    assert_eq!(
        row.get::<_, Vec<Option<String>>>(6),
        [Some("x".to_owned()), None, Some("z".to_owned())]
    );
}
