//! Step-up end to end: a real pgstepup holds statements for tokio-postgres, the approval runs
//! through the real web API with a software passkey (webauthn-authenticator-rs), state lives
//! in memory or in a real Redis, and the audit trail records every step.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio_postgres::error::SqlState;

use proto_tests::stepup::{
    assert_reply, connect_noticed, count, enrolled, enrollment_link, last_segment, link_in,
    stepup_policy, stepup_proxy, table_of_three, Authenticator, WebClient,
};
use proto_tests::{
    app_role, audit_records as audit_events, use_policy_file, write_policy_as_is, Auth, TestProxy,
    APP_USER,
};

#[tokio::test]
async fn held_delete_runs_after_approval_and_the_elevation_lasts() {
    app_role().await;
    let orders = table_of_three("stepup_orders").await;
    let audit = proto_tests::audit_file();
    let proxy = stepup_proxy("30s", |c| c.audit.file = audit.clone());
    let web = WebClient::of(&proxy);
    let mut key = enrolled(&proxy, &web, APP_USER).await;
    let (client, mut notices) = connect_noticed(&proxy, "psql").await;

    // Reads never wait.
    let rows = client
        .query(&format!("SELECT v FROM public.{orders}"), &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 3);

    let delete = format!("DELETE FROM public.{orders} WHERE v = 1");
    let held = tokio::spawn(async move {
        let result = client.execute(delete.as_str(), &[]).await;
        (client, result)
    });
    let link = notices.next_link().await;
    assert!(link.starts_with(&proxy.public_url), "{link}");
    assert!(last_segment(&link).len() >= 43, "at least 128 random bits");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(count(&orders).await, 3, "nothing runs while held");

    // What the approval page shows.
    let (status, details) = web
        .get(&format!("/api/approve/{}", last_segment(&link)))
        .await;
    assert_eq!(status, 200, "{details}");
    assert_eq!(details["user"], APP_USER);
    assert_eq!(details["status"], "pending");
    assert_eq!(details["rule"], "stepup-tables");
    assert_eq!(details["application_name"], "psql");
    assert!(details["statement"]
        .as_str()
        .unwrap()
        .contains("DELETE FROM"));
    assert!(details["seconds_left"].as_u64().unwrap() > 60);

    let (_, status, reply) = web.approve(&link, &mut key).await;
    assert_reply(status, &reply, 200, "approved");
    let (client, result) = tokio::time::timeout(Duration::from_secs(10), held)
        .await
        .expect("the held statement runs after approval")
        .unwrap();
    assert_eq!(result.unwrap(), 1);
    assert_eq!(count(&orders).await, 2);

    // For the rule's lifetime, further writes run without asking.
    let started = Instant::now();
    let deleted = client
        .execute(&format!("DELETE FROM public.{orders} WHERE v = 2"), &[])
        .await
        .unwrap();
    assert_eq!(deleted, 1);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(notices.0.try_recv().is_err(), "no second challenge");

    // The link was single-use.
    let (status, reply) = web
        .post(
            &format!("/api/approve/{}/begin", last_segment(&link)),
            &json!({}),
        )
        .await;
    assert_eq!(status, 400, "{reply}");
    assert_eq!(reply["result"], "invalid");

    let events = audit_events(&audit);
    let names: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    for expected in [
        "enrollment_issued",
        "enrollment_completed",
        "challenge_issued",
        "challenge_approved",
        "statement_elevated",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
    let approved = events
        .iter()
        .find(|e| e["event"] == "challenge_approved")
        .unwrap();
    assert!(approved["credential_id"]
        .as_str()
        .is_some_and(|c| !c.is_empty()));
    assert!(approved["elevation_expires"].as_u64().is_some());
    assert_eq!(approved["user"], APP_USER);
    assert!(approved["statement"].as_str().unwrap().contains("DELETE"));
    let elevated = events
        .iter()
        .filter(|e| e["event"] == "statement_elevated")
        .count();
    assert_eq!(
        elevated, 2,
        "every statement run under the elevation is audited"
    );
    assert_eq!(pgstepup_audit::verify(&audit).unwrap(), events.len());
}

/// COPY FROM STDIN is held at its Query, before the server asks for data: the client waits for
/// CopyInResponse, so nothing is buffered meanwhile, and after approval the data streams in.
#[tokio::test]
async fn a_held_copy_from_stdin_streams_its_rows_after_approval() {
    use futures_util::SinkExt;
    app_role().await;
    let orders = table_of_three("stepup_copy").await;
    let proxy = stepup_proxy("30s", |_| {});
    let web = WebClient::of(&proxy);
    let mut key = enrolled(&proxy, &web, APP_USER).await;
    let (client, mut notices) = connect_noticed(&proxy, "psql").await;

    let copy = format!("COPY public.{orders} (v) FROM STDIN");
    let held = tokio::spawn(async move {
        let sink = client.copy_in(copy.as_str()).await?;
        futures_util::pin_mut!(sink);
        let rows: String = (10..1010).map(|v| format!("{v}\n")).collect();
        sink.send(bytes::Bytes::from(rows)).await?;
        let copied = sink.finish().await?;
        Ok::<_, tokio_postgres::Error>((client, copied))
    });
    let link = notices.next_link().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(count(&orders).await, 3, "nothing is copied while held");
    assert!(
        !held.is_finished(),
        "the client waits for the server's CopyInResponse"
    );

    let (_, status, reply) = web.approve(&link, &mut key).await;
    assert_reply(status, &reply, 200, "approved");
    let (client, copied) = tokio::time::timeout(Duration::from_secs(10), held)
        .await
        .expect("the held COPY runs after approval")
        .unwrap()
        .expect("COPY succeeds");
    assert_eq!(copied, 1000);
    assert_eq!(count(&orders).await, 1003);
    // The session goes on, in step with the server.
    let rows = client
        .query(&format!("SELECT count(*) FROM public.{orders}"), &[])
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, i64>(0), 1003);
}

#[tokio::test]
async fn denial_inside_a_transaction_fails_the_servers_transaction_too() {
    app_role().await;
    let orders = table_of_three("stepup_orders_tx").await;
    let free = table_of_three("free_tx").await;
    let proxy = stepup_proxy("30s", |_| {});
    let web = WebClient::of(&proxy);
    let (client, mut notices) = connect_noticed(&proxy, "psql").await;
    client.batch_execute("BEGIN").await.unwrap();
    client
        .batch_execute(&format!("INSERT INTO public.{free} VALUES (10)"))
        .await
        .unwrap();
    let delete = format!("DELETE FROM public.{orders}");
    let held = tokio::spawn(async move {
        let result = client.batch_execute(&delete).await;
        (client, result)
    });
    let link = notices.next_link().await;
    let (status, reply) = web.deny(&link).await;
    assert_reply(status, &reply, 200, "denied");
    let (client, result) = held.await.unwrap();
    let error = result.unwrap_err();
    assert_eq!(error.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE));
    assert!(error.as_db_error().unwrap().message().contains("denied"));
    // The server's transaction failed with it: COMMIT cannot commit the INSERT before.
    let after = client.batch_execute("SELECT 1").await.unwrap_err();
    assert_eq!(after.code(), Some(&SqlState::IN_FAILED_SQL_TRANSACTION));
    client.batch_execute("COMMIT").await.unwrap();
    assert_eq!(
        count(&free).await,
        3,
        "the INSERT before the refusal was not committed"
    );
    assert_eq!(count(&orders).await, 3);
    let (_, page) = web
        .get(&format!("/api/approve/{}", last_segment(&link)))
        .await;
    assert_eq!(page["status"], "denied");
}

#[tokio::test]
async fn timeout_refuses_with_the_link_and_a_later_approval_lets_the_rerun_pass() {
    app_role().await;
    let orders = table_of_three("stepup_orders_late").await;
    let proxy = stepup_proxy("2s", |_| {});
    let web = WebClient::of(&proxy);
    let mut key = enrolled(&proxy, &web, APP_USER).await;
    let (client, _notices) = connect_noticed(&proxy, "DBeaver 24.1").await;
    let delete = format!("DELETE FROM public.{orders} WHERE v = 3");
    let started = Instant::now();
    let error = client.execute(delete.as_str(), &[]).await.unwrap_err();
    assert!(started.elapsed() >= Duration::from_secs(2));
    let db = error.as_db_error().unwrap();
    assert_eq!(db.code(), &SqlState::INSUFFICIENT_PRIVILEGE);
    let link = link_in(db.message()).expect("the error repeats the link");
    assert!(db
        .hint()
        .unwrap()
        .contains("re-running the statement will pass"));
    assert_eq!(count(&orders).await, 3);

    // Approved after the timeout: the user is elevated and the re-run passes at once; the
    // page says the statement itself did not run.
    let (_, status, reply) = web.approve(&link, &mut key).await;
    assert_reply(status, &reply, 200, "approved");
    let message = reply["message"].as_str().unwrap();
    assert!(message.contains("was not run"), "{message}");
    assert_eq!(client.execute(delete.as_str(), &[]).await.unwrap(), 1);
}

/// A link that expires before the rule's timeout ends the hold with it: the client is not
/// kept waiting on a link nobody can approve any more, nor offered it again.
#[tokio::test]
async fn a_link_shorter_than_the_timeout_ends_the_hold() {
    app_role().await;
    let orders = table_of_three("stepup_orders_short_link").await;
    let proxy = stepup_proxy("60s", |c| c.step_up.link_ttl_secs = 2);
    let (client, mut notices) = connect_noticed(&proxy, "psql").await;
    let delete = format!("DELETE FROM public.{orders} WHERE v = 3");
    let started = Instant::now();
    let held = tokio::spawn(async move { client.execute(delete.as_str(), &[]).await });
    let notice = notices.next_message().await;
    assert!(notice.contains("within 2 s"), "{notice}");
    let error = held.await.unwrap().unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(30));
    let db = error.as_db_error().unwrap();
    assert_eq!(db.code(), &SqlState::INSUFFICIENT_PRIVILEGE);
    assert!(
        db.message().contains("link has expired"),
        "{}",
        db.message()
    );
    assert_eq!(link_in(db.message()), None);
    assert_eq!(count(&orders).await, 3);
}

#[tokio::test]
async fn applications_listed_in_the_policy_get_the_link_at_once() {
    app_role().await;
    let orders = table_of_three("stepup_orders_atonce").await;
    let policy = write_policy_as_is(&format!(
        "{}\n[applications]\nrefuse_at_once = [\"DBeaver*\"]\n",
        stepup_policy("60s")
    ));
    let proxy = TestProxy::with(Auth::Scram, true, |c| use_policy_file(c, &policy));
    let (client, _notices) = connect_noticed(&proxy, "DBeaver 24.1").await;
    let link = refused_at_once(&client, &format!("DELETE FROM public.{orders}")).await;
    let (status, page) = WebClient::of(&proxy)
        .get(&format!("/api/approve/{}", last_segment(&link)))
        .await;
    assert_eq!((status, page["status"].as_str()), (200, Some("pending")));

    // pgJDBC (DBeaver's driver) names the application with SET after login: the server's
    // report of the new name counts as the startup packet's would.
    let (client, _notices) = connect_noticed(&proxy, "psql").await;
    client
        .batch_execute("SET application_name = 'DBeaver 24.1'")
        .await
        .unwrap();
    refused_at_once(&client, &format!("DELETE FROM public.{orders}")).await;
    assert_eq!(count(&orders).await, 3);
}

/// Runs `sql`, which must be refused with 42501 at once (not held); the link in the error.
async fn refused_at_once(client: &tokio_postgres::Client, sql: &str) -> String {
    let started = Instant::now();
    let error = client.batch_execute(sql).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5), "not held");
    let db = error.as_db_error().unwrap();
    assert_eq!(db.code(), &SqlState::INSUFFICIENT_PRIVILEGE);
    link_in(db.message()).expect("the link is in the error")
}

#[tokio::test]
async fn replayed_assertions_other_users_keys_and_tampered_tokens_fail() {
    app_role().await;
    let orders = table_of_three("stepup_orders_attack").await;
    let audit = proto_tests::audit_file();
    let proxy = stepup_proxy("30s", |c| c.audit.file = audit.clone());
    let web = WebClient::of(&proxy);
    let mut alice = enrolled(&proxy, &web, APP_USER).await;
    let mut mallory = enrolled(&proxy, &web, "mallory").await;
    let (client, mut notices) = connect_noticed(&proxy, "psql").await;
    let delete = format!("DELETE FROM public.{orders} WHERE v = 1");
    let held = tokio::spawn(async move { client.execute(delete.as_str(), &[]).await });
    let link = notices.next_link().await;
    let token = last_segment(&link).to_owned();

    // Tampered and garbage tokens and bodies: clear errors, no statement runs.
    let mut tampered = token.clone();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    for bad in [tampered.as_str(), "x", "../../etc/passwd", &"A".repeat(43)] {
        let (status, reply) = web.get(&format!("/api/approve/{bad}")).await;
        assert!(status == 400 || status == 404, "{bad}: {status} {reply}");
        assert_eq!(reply["result"], "invalid", "{bad}");
        let (status, reply) = web
            .post(&format!("/api/approve/{bad}/finish"), &json!({}))
            .await;
        assert!(status == 400 || status == 404, "{bad}: {status} {reply}");
        assert_eq!(reply["result"], "invalid", "{bad}");
    }
    let (status, reply) = web
        .post_raw(
            &format!("/api/approve/{token}/finish"),
            b"\xff{not json".to_vec(),
        )
        .await;
    assert_reply(status, &reply, 403, "invalid");

    // Mallory's key, in a ceremony started for alice's statement: refused.
    let (status, options) = web
        .post(&format!("/api/approve/{token}/begin"), &json!({}))
        .await;
    assert_eq!(status, 200);
    let (_, mallory_options) = web
        .post("/api/pending/begin", &json!({"user": "mallory"}))
        .await;
    assert!(
        options["publicKey"]["allowCredentials"]
            .as_array()
            .unwrap()
            .len()
            == 1
    );
    let foreign = mallory.assert(&web.origin, mallory_options);
    let (status, reply) = web
        .post(&format!("/api/approve/{token}/finish"), &foreign)
        .await;
    assert_reply(status, &reply, 403, "invalid");

    // Another site's form (not JSON) cannot deny it: it stays held.
    let (status, reply) = {
        let response = web
            .http
            .post(format!("{}/api/approve/{token}/deny", web.base))
            .header("content-type", "text/plain")
            .header("origin", "http://evil.example")
            .body("x")
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json::<Value>().await.unwrap())
    };
    assert_reply(status, &reply, 415, "invalid");
    let (_, page) = web.get(&format!("/api/approve/{token}")).await;
    assert_eq!(page["status"], "pending");

    // Alice approves; replaying her exact assertion fails.
    let (assertion, status, reply) = web.approve(&link, &mut alice).await;
    assert_reply(status, &reply, 200, "approved");
    assert_eq!(held.await.unwrap().unwrap(), 1);
    let (status, reply) = web
        .post(&format!("/api/approve/{token}/finish"), &assertion)
        .await;
    assert_eq!(reply["result"], "invalid", "{status} {reply}");

    // Replayed against a fresh ceremony (the pending page's sign-in): its challenge differs.
    let (status, _) = web
        .post("/api/pending/begin", &json!({"user": APP_USER}))
        .await;
    assert_eq!(status, 200);
    let (status, reply) = web
        .post(
            "/api/pending/finish",
            &json!({"user": APP_USER, "credential": assertion}),
        )
        .await;
    assert_reply(status, &reply, 403, "invalid");

    let failures: Vec<Value> = audit_events(&audit)
        .into_iter()
        .filter(|e| e["event"] == "webauthn_failed")
        .collect();
    assert!(failures.len() >= 4, "{failures:?}");
    assert!(failures.iter().all(|f| f["reason"].as_str().is_some()));
    // The replay on the used link is a failed attempt too.
    assert!(
        failures
            .iter()
            .any(|f| f["reason"].as_str().unwrap().contains("already approved")),
        "{failures:?}"
    );
}

#[tokio::test]
async fn cancel_and_disconnect_while_held_run_nothing() {
    app_role().await;
    let orders = table_of_three("stepup_orders_cancel").await;
    let proxy = stepup_proxy("60s", |_| {});
    let web = WebClient::of(&proxy);

    // Cancel (what Ctrl-C in psql sends): 57014 at once, nothing runs.
    let (client, mut notices) = connect_noticed(&proxy, "psql").await;
    let cancel = client.cancel_token();
    let delete = format!("DELETE FROM public.{orders}");
    let held = tokio::spawn(async move {
        let result = client.batch_execute(&delete).await;
        (client, result)
    });
    let link = notices.next_link().await;
    cancel
        .cancel_query(proto_tests::tls_connector())
        .await
        .unwrap();
    let (client, result) = tokio::time::timeout(Duration::from_secs(5), held)
        .await
        .expect("cancel ends the hold")
        .unwrap();
    assert_eq!(result.unwrap_err().code(), Some(&SqlState::QUERY_CANCELED));
    assert_eq!(
        client
            .query_one("SELECT 1", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        1
    );
    let (status, reply) = web
        .post(
            &format!("/api/approve/{}/begin", last_segment(&link)),
            &json!({}),
        )
        .await;
    assert_reply(status, &reply, 410, "expired");
    assert_eq!(count(&orders).await, 3);

    // Disconnect: the challenge is dropped.
    let (client, mut notices) = connect_noticed(&proxy, "psql").await;
    let delete = format!("DELETE FROM public.{orders}");
    let held = tokio::spawn(async move { client.batch_execute(&delete).await });
    let link = notices.next_link().await;
    notices.disconnect();
    assert!(held.await.unwrap().is_err());
    let mut status = Value::Null;
    for _ in 0..50 {
        status = web
            .get(&format!("/api/approve/{}", last_segment(&link)))
            .await
            .1["status"]
            .clone();
        if status == "cancelled" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, "cancelled");
    assert_eq!(count(&orders).await, 3);
}

#[tokio::test]
async fn enrolling_a_second_key_needs_the_first() {
    app_role().await;
    let audit = proto_tests::audit_file();
    let proxy = stepup_proxy("30s", |c| c.audit.file = audit.clone());
    let web = WebClient::of(&proxy);
    let mut first = enrolled(&proxy, &web, "erin").await;
    let link = enrollment_link(&proxy.admin_socket, "erin").await;
    let token = last_segment(&link);
    let (_, info) = web.get(&format!("/api/enroll/{token}")).await;
    assert_eq!(info["has_keys"], true);
    // Skipping the proof of the existing key is refused.
    let (_, options) = web
        .post(&format!("/api/enroll/{token}/begin"), &json!({}))
        .await;
    assert_eq!(options["step"], "authenticate");
    let mut second = Authenticator::default();
    let (status, reply) = web
        .post(&format!("/api/enroll/{token}/finish"), &json!({"id": "x"}))
        .await;
    assert_reply(status, &reply, 403, "invalid");
    // With the proof, the second key is added; both are listed.
    let (_, options) = web
        .post(&format!("/api/enroll/{token}/begin"), &json!({}))
        .await;
    let proof = first.assert(&web.origin, options);
    let (status, options) = web
        .post(&format!("/api/enroll/{token}/authenticate"), &proof)
        .await;
    assert_eq!(
        (status, options["step"].as_str()),
        (200, Some("register")),
        "{options}"
    );
    let registration = second.register(&web.origin, options);
    let (_, reply) = web
        .post(&format!("/api/enroll/{token}/finish"), &registration)
        .await;
    assert_eq!(reply["result"], "enrolled", "{reply}");
    let keys = match pgstepup_web::admin::request(
        &proxy.admin_socket,
        &pgstepup_web::admin::Request::KeysList {
            user: "erin".into(),
        },
    )
    .await
    .unwrap()
    {
        pgstepup_web::admin::Reply::Keys { keys } => keys,
        other => panic!("{other:?}"),
    };
    assert_eq!(keys.len(), 2);

    // Revoking the first key: it can no longer approve anything; the second still can.
    let revoked = pgstepup_web::admin::request(
        &proxy.admin_socket,
        &pgstepup_web::admin::Request::KeysRevoke {
            user: "erin".into(),
            id: keys[0].id.clone(),
        },
    )
    .await
    .unwrap();
    assert!(
        matches!(revoked, pgstepup_web::admin::Reply::Revoked),
        "{revoked:?}"
    );
    let (_, options) = web
        .post("/api/pending/begin", &json!({"user": "erin"}))
        .await;
    assert_eq!(
        options["publicKey"]["allowCredentials"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let events = audit_events(&audit);
    assert!(events
        .iter()
        .any(|e| e["event"] == "key_revoked" && e["credential_id"] == keys[0].id.as_str()));
}

#[tokio::test]
async fn a_prepared_statement_needs_step_up_again_once_the_elevation_ended() {
    app_role().await;
    let orders = table_of_three("stepup_prepared").await;
    let policy = write_policy_as_is(
        r#"
[[rule]]
name = "short-elevation"
tables = ["public.stepup_*"]
kinds = ["write"]
action = "step_up"
lifetime = "2s"
timeout = "30s"
"#,
    );
    let proxy = TestProxy::with(Auth::Scram, true, |c| use_policy_file(c, &policy));
    let web = WebClient::of(&proxy);
    let mut key = enrolled(&proxy, &web, APP_USER).await;
    let (client, mut notices) = connect_noticed(&proxy, "app").await;
    let client = std::sync::Arc::new(client);

    // The Parse of a named statement is held, like any statement.
    let sql = format!("DELETE FROM public.{orders} WHERE v = $1");
    let preparing = tokio::spawn({
        let client = client.clone();
        async move { client.prepare(&sql).await }
    });
    let link = notices.next_link().await;
    let (_, status, reply) = web.approve(&link, &mut key).await;
    assert_reply(status, &reply, 200, "approved");
    let statement = preparing.await.unwrap().unwrap();
    assert_eq!(client.execute(&statement, &[&1i32]).await.unwrap(), 1);

    // Once the elevation ends, executing the same statement (a Bind, no new Parse) is held.
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let executing = tokio::spawn({
        let client = client.clone();
        let statement = statement.clone();
        async move { client.execute(&statement, &[&2i32]).await }
    });
    let link = notices.next_link().await;
    assert_eq!(count(&orders).await, 2, "held at Bind");
    let (status, reply) = web.deny(&link).await;
    assert_reply(status, &reply, 200, "denied");
    let error = executing.await.unwrap().unwrap_err();
    assert_eq!(error.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE));
    assert_eq!(count(&orders).await, 2);
    // The session and the prepared statement are still usable.
    assert_eq!(
        client
            .query_one("SELECT 7::int", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        7
    );
}

#[tokio::test]
async fn the_pending_page_lists_requests_to_approve_and_keys_survive_a_restart() {
    app_role().await;
    let orders = table_of_three("stepup_pending").await;
    let credentials = proto_tests::certs()
        .dir
        .join(format!("pending-credentials-{}.json", std::process::id()));
    let _ = std::fs::remove_file(&credentials);
    let keep_credentials = |c: &mut pgstepup_config::Config| {
        c.step_up.credentials = credentials.display().to_string();
    };
    let first = stepup_proxy("1s", keep_credentials);
    let web = WebClient::of(&first);
    let mut key = enrolled(&first, &web, APP_USER).await;

    // A client that never shows the NOTICE: the hold times out.
    let (client, _notices) = connect_noticed(&first, "PostgreSQL JDBC Driver").await;
    let delete = format!("DELETE FROM public.{orders} WHERE v = 1");
    client.execute(delete.as_str(), &[]).await.unwrap_err();

    // Signed in with the passkey, the pending page lists it with a fresh link.
    let (status, options) = web
        .post("/api/pending/begin", &json!({"user": APP_USER}))
        .await;
    assert_eq!(status, 200, "{options}");
    let assertion = key.assert(&web.origin, options);
    let (status, listing) = web
        .post(
            "/api/pending/finish",
            &json!({"user": APP_USER, "credential": assertion}),
        )
        .await;
    assert_eq!(status, 200, "{listing}");
    let requests = listing["requests"].as_array().unwrap();
    let request = requests
        .iter()
        .find(|r| r["statement"] == delete.as_str())
        .expect("the timed-out request is listed");
    assert_eq!(request["status"], "pending");
    let link = request["approve_url"].as_str().unwrap().to_owned();
    let (_, status, reply) = web.approve(&link, &mut key).await;
    assert_reply(status, &reply, 200, "approved");
    assert_eq!(client.execute(delete.as_str(), &[]).await.unwrap(), 1);
    drop(client);
    drop(first);

    // A new pgstepup process with the same credential file: the key still approves.
    let second = stepup_proxy("30s", keep_credentials);
    let web = WebClient::of(&second);
    let (client, mut notices) = connect_noticed(&second, "psql").await;
    let delete = format!("DELETE FROM public.{orders} WHERE v = 2");
    let held = tokio::spawn(async move { client.execute(delete.as_str(), &[]).await });
    let link = notices.next_link().await;
    let (_, status, reply) = web.approve(&link, &mut key).await;
    assert_reply(status, &reply, 200, "approved");
    assert_eq!(held.await.unwrap().unwrap(), 1);
}

#[tokio::test]
async fn one_approval_releases_the_users_other_held_connections_under_a_user_wide_rule() {
    app_role().await;
    let orders = table_of_three("stepup_two_conns").await;
    let proxy = stepup_proxy("30s", |_| {});
    let web = WebClient::of(&proxy);
    let mut key = enrolled(&proxy, &web, APP_USER).await;
    // A GUI tool's two connections, each with a statement held under the same rule.
    let (first, mut first_notices) = connect_noticed(&proxy, "DataGrip").await;
    let (second, mut second_notices) = connect_noticed(&proxy, "DataGrip").await;
    let delete_1 = format!("DELETE FROM public.{orders} WHERE v = 1");
    let delete_2 = format!("DELETE FROM public.{orders} WHERE v = 2");
    let held_1 = tokio::spawn(async move { first.execute(delete_1.as_str(), &[]).await });
    let held_2 = tokio::spawn(async move { second.execute(delete_2.as_str(), &[]).await });
    let link = first_notices.next_link().await;
    second_notices.next_link().await;
    let (_, status, reply) = web.approve(&link, &mut key).await;
    assert_reply(status, &reply, 200, "approved");
    assert_eq!(held_1.await.unwrap().unwrap(), 1);
    let second_result = tokio::time::timeout(Duration::from_secs(5), held_2)
        .await
        .expect("the user's elevation releases the other connection too")
        .unwrap();
    assert_eq!(second_result.unwrap(), 1);
    assert_eq!(count(&orders).await, 1);
}
