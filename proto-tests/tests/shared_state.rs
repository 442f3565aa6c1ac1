//! Step-up state in a real Redis: two pgstepup instances act as one (hold on one, approve or
//! cancel through the other), registered keys live in a PostgreSQL table, and a Redis outage
//! refuses step-up at once while reads keep flowing, then recovers by itself.

use std::time::{Duration, Instant};

use serde_json::json;
use tokio_postgres::error::SqlState;

use pgstepup_config::Config;
use proto_tests::stepup::{
    assert_reply, connect_noticed_plain, count, enrolled, last_segment, stepup_policy,
    table_of_three, WebClient,
};
use proto_tests::{
    admin_client, admin_in, app_role, free_port, use_policy_file, write_policy_as_is, Auth,
    OwnRedis, TestProxy, APP_DB, APP_USER,
};

/// What both instances are reached at through the load balancer: the WebAuthn origin.
const PUBLIC_URL: &str = "http://localhost:9";

fn instance(
    redis: &str,
    prefix: &str,
    policy: &std::path::Path,
    tweak: impl FnOnce(&mut Config),
) -> TestProxy {
    TestProxy::with(Auth::Scram, false, |c| {
        use_policy_file(c, policy);
        c.redis.url = Some(redis.into());
        c.redis.prefix = prefix.into();
        c.web.public_url = Some(PUBLIC_URL.into());
        tweak(c);
    })
}

#[tokio::test]
async fn two_instances_behind_a_load_balancer_act_as_one() {
    app_role().await;
    let orders = table_of_three("stepup_shared").await;
    // Registered keys in a PostgreSQL table both instances use (created on first use).
    admin_in(APP_DB, "DROP TABLE IF EXISTS pgstepup_credentials").await;
    let credentials = format!("postgres://postgres@127.0.0.1:5432/{APP_DB}?sslmode=disable");
    let prefix = format!("pgstepup-test-{}:", std::process::id());
    let policy = write_policy_as_is(&stepup_policy("30s"));
    let redis = "redis://127.0.0.1:6379";
    let a = instance(redis, &prefix, &policy, |c| {
        c.step_up.credentials = credentials.clone()
    });
    let b = instance(redis, &prefix, &policy, |c| {
        c.step_up.credentials = credentials.clone()
    });
    let web_a = WebClient::at(&a, PUBLIC_URL);
    let web_b = WebClient::at(&b, PUBLIC_URL);
    // Enrollment issued by A's admin socket, completed through B's page.
    let link = proto_tests::stepup::enrollment_link(&a.admin_socket, APP_USER).await;
    let mut key = proto_tests::stepup::Authenticator::default();
    let reply = web_b.enroll(&link, &mut key).await;
    assert_eq!(reply["result"], "enrolled", "{reply}");

    // Held on A, cancelled by a CancelRequest that reaches B.
    let (client, mut notices) = connect_noticed_plain(&a).await;
    let cancel = client.cancel_token();
    let delete = format!("DELETE FROM public.{orders} WHERE v = 1");
    let held = tokio::spawn(async move {
        let result = client.execute(delete.as_str(), &[]).await;
        (client, result)
    });
    let link = notices.next_link().await;
    let stream = tokio::net::TcpStream::connect(b.addr).await.unwrap();
    cancel
        .cancel_query_raw(stream, tokio_postgres::NoTls)
        .await
        .unwrap();
    let (client, result) = tokio::time::timeout(Duration::from_secs(10), held)
        .await
        .expect("the cancel through B ends the hold on A")
        .unwrap();
    assert_eq!(result.unwrap_err().code(), Some(&SqlState::QUERY_CANCELED));
    let (_, status) = web_b
        .get(&format!("/api/approve/{}", last_segment(&link)))
        .await;
    assert_eq!(status["status"], "cancelled");

    // Held on A, approved through B's page.
    let delete = format!("DELETE FROM public.{orders} WHERE v = 1");
    let held = tokio::spawn(async move {
        let result = client.execute(delete.as_str(), &[]).await;
        (client, result)
    });
    let link = notices.next_link().await;
    assert!(link.starts_with(PUBLIC_URL), "{link}");
    let (_, status, reply) = web_b.approve(&link, &mut key).await;
    assert_reply(status, &reply, 200, "approved");
    let (_client, result) = tokio::time::timeout(Duration::from_secs(10), held)
        .await
        .expect("B's approval releases the statement held on A")
        .unwrap();
    assert_eq!(result.unwrap(), 1);

    // The elevation is the user's on every instance.
    let (on_b, _notices) = connect_noticed_plain(&b).await;
    let deleted = tokio::time::timeout(
        Duration::from_secs(5),
        on_b.execute(&format!("DELETE FROM public.{orders} WHERE v = 2"), &[]),
    )
    .await
    .expect("no hold on B")
    .unwrap();
    assert_eq!(deleted, 1);
    assert_eq!(count(&orders).await, 1);
    // The key survived in PostgreSQL, with its signature counter.
    let stored: i64 = admin_client(APP_DB)
        .await
        .query_one(
            "SELECT count(*) FROM pgstepup_credentials WHERE username = $1 AND last_used_at IS NOT NULL",
            &[&APP_USER],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 1);
    let _ = web_a;
}

#[tokio::test]
async fn redis_down_refuses_step_up_at_once_reads_flow_and_it_recovers() {
    app_role().await;
    let orders = table_of_three("stepup_redis_down").await;
    let mut redis = OwnRedis::start(free_port()).await;
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let policy = write_policy_as_is(&stepup_policy("1s"));
    let proxy = instance(&url, "pgstepup:", &policy, |_| {});
    let web = WebClient::of(&proxy);
    let _key = enrolled(&proxy, &web, APP_USER).await;
    let (client, _notices) = connect_noticed_plain(&proxy).await;
    let delete = format!("DELETE FROM public.{orders} WHERE v = 1");

    // Redis up: the statement is held (and times out after 1 s here).
    let error = client.execute(delete.as_str(), &[]).await.unwrap_err();
    let message = error.as_db_error().unwrap().message().to_owned();
    assert!(message.contains("no step-up approval within"), "{message}");

    redis.stop().await;
    let started = Instant::now();
    let error = client.execute(delete.as_str(), &[]).await.unwrap_err();
    let db = error.as_db_error().unwrap();
    assert_eq!(db.code(), &SqlState::INSUFFICIENT_PRIVILEGE);
    assert!(
        db.message().contains("step-up is unavailable"),
        "{}",
        db.message()
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "refused without waiting for a hold"
    );
    // Reads keep flowing.
    let rows = client
        .query(&format!("SELECT v FROM public.{orders}"), &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 3);

    // Redis back on the same port: step-up works again without a restart.
    let _redis = OwnRedis::start(redis.port).await;
    let mut recovered = false;
    for _ in 0..30 {
        let error = client.execute(delete.as_str(), &[]).await.unwrap_err();
        if error
            .as_db_error()
            .unwrap()
            .message()
            .contains("no step-up approval within")
        {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(recovered, "step-up did not come back with Redis");
    assert_eq!(count(&orders).await, 3);
    let (status, reply) = web
        .post("/api/pending/begin", &json!({"user": APP_USER}))
        .await;
    assert_eq!(status, 200, "{reply}");
}
