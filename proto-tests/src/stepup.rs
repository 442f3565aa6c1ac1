//! Helpers for step-up tests: a proxy whose policy holds writes, enrollment and approval
//! through the real web API with a software authenticator, and clients that collect the
//! NOTICEs pgstepup sends.

use std::path::Path;

use futures_util::StreamExt;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;
use webauthn_authenticator_rs::softpasskey::SoftPasskey;
use webauthn_authenticator_rs::WebauthnAuthenticator;
use webauthn_rs_proto::{CreationChallengeResponse, RequestChallengeResponse};

use pgstepup_web::admin::{self, Reply, Request};

use crate::{
    admin_client, admin_in, tls_connector, use_policy_file, write_policy_as_is, Auth, TestProxy,
    APP_DB, APP_PASSWORD, APP_USER,
};

/// A policy for step-up tests: writes to `stepup_*` tables need step-up for 10 minutes per
/// user; `free_*` tables are writable; statements are held for `timeout`.
pub fn stepup_policy(timeout: &str) -> String {
    format!(
        r#"
[[rule]]
name = "stepup-tables"
tables = ["public.stepup_*"]
kinds = ["write"]
action = "step_up"
lifetime = "10m"
scope = "user"
timeout = "{timeout}"

[[rule]]
name = "free-tables"
tables = ["public.free_*"]
kinds = ["write", "ddl"]
action = "allow"

[[rule]]
name = "tests-ddl"
kinds = ["ddl"]
action = "allow"
"#
    )
}

/// A proxy (TLS, SCRAM) holding writes under [`stepup_policy`], plus any tweak.
pub fn stepup_proxy(timeout: &str, tweak: impl FnOnce(&mut pgstepup_config::Config)) -> TestProxy {
    let policy = write_policy_as_is(&stepup_policy(timeout));
    TestProxy::with(Auth::Scram, true, |c| {
        use_policy_file(c, &policy);
        tweak(c);
    })
}

/// A table `{name}_{pid}` owned by the app user, with rows 1..=3.
pub async fn table_of_three(name: &str) -> String {
    let table = format!("{name}_{}", std::process::id());
    admin_in(
        APP_DB,
        &format!(
            "DROP TABLE IF EXISTS public.{table}; CREATE TABLE public.{table} (v int); \
             INSERT INTO public.{table} VALUES (1), (2), (3); \
             ALTER TABLE public.{table} OWNER TO {APP_USER};"
        ),
    )
    .await;
    table
}

/// Rows in a table, counted outside the proxy.
pub async fn count(table: &str) -> i64 {
    admin_client(APP_DB)
        .await
        .query_one(&format!("SELECT count(*) FROM public.{table}"), &[])
        .await
        .unwrap()
        .get(0)
}

/// The web side of a test proxy, driven like the pages' script would.
pub struct WebClient {
    pub http: reqwest::Client,
    /// Where requests go (the instance's own address).
    pub base: String,
    /// The WebAuthn origin (the public URL, which a load balancer would serve).
    pub origin: url::Url,
}

impl WebClient {
    pub fn of(proxy: &TestProxy) -> Self {
        Self::at(proxy, &proxy.public_url)
    }

    /// Requests to `proxy`'s own listener, with `origin` as the public URL.
    pub fn at(proxy: &TestProxy, origin: &str) -> Self {
        WebClient {
            http: reqwest::Client::new(),
            base: format!("http://{}", proxy.web_addr),
            origin: url::Url::parse(origin).unwrap(),
        }
    }

    /// Polls GET /readyz (up to 5 s) until it answers `status`; returns the last body.
    pub async fn await_readiness(&self, status: u16) -> Value {
        let mut last = (0, Value::Null);
        for _ in 0..100 {
            last = self.get("/readyz").await;
            if last.0 == status {
                return last.1;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("/readyz answered {} ({}), not {status}", last.0, last.1);
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// The Prometheus text exposition at `/metrics`.
    pub async fn metrics_text(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.post_raw(path, serde_json::to_vec(body).unwrap()).await
    }

    pub async fn post_raw(&self, path: &str, body: Vec<u8>) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Registers a new key on `authenticator` through an enrollment link.
    pub async fn enroll(&self, link: &str, authenticator: &mut Authenticator) -> Value {
        let token = last_segment(link);
        let (status, mut options) = self
            .post(&format!("/api/enroll/{token}/begin"), &Value::Null)
            .await;
        assert_eq!(status, 200, "{options}");
        if options["step"] == "authenticate" {
            let assertion = authenticator.assert(&self.origin, options);
            let (status, next) = self
                .post(&format!("/api/enroll/{token}/authenticate"), &assertion)
                .await;
            assert_eq!(status, 200, "{next}");
            options = next;
        }
        let registration = authenticator.register(&self.origin, options);
        let (_, reply) = self
            .post(&format!("/api/enroll/{token}/finish"), &registration)
            .await;
        reply
    }

    /// Runs the approval ceremony for a link; returns the assertion sent and the reply.
    pub async fn approve(
        &self,
        link: &str,
        authenticator: &mut Authenticator,
    ) -> (Value, u16, Value) {
        let token = last_segment(link);
        let (status, options) = self
            .post(&format!("/api/approve/{token}/begin"), &Value::Null)
            .await;
        assert_eq!(status, 200, "{options}");
        let assertion = authenticator.assert(&self.origin, options);
        let (status, reply) = self
            .post(&format!("/api/approve/{token}/finish"), &assertion)
            .await;
        (assertion, status, reply)
    }

    /// Denies the statement behind a link (no ceremony needed); returns the reply.
    pub async fn deny(&self, link: &str) -> (u16, Value) {
        self.post(
            &format!("/api/approve/{}/deny", last_segment(link)),
            &serde_json::json!({}),
        )
        .await
    }
}

/// A software passkey (user verification on).
pub struct Authenticator(SoftPasskey);

impl Default for Authenticator {
    fn default() -> Self {
        // `true`: the soft key reports user verification, as a PIN or biometric would.
        Authenticator(SoftPasskey::new(true))
    }
}

impl Authenticator {
    pub fn register(&mut self, origin: &url::Url, mut options: Value) -> Value {
        options.as_object_mut().unwrap().remove("step");
        let options: CreationChallengeResponse = serde_json::from_value(options).unwrap();
        let credential = self
            .0
            .do_registration(origin.clone(), options)
            .expect("the soft passkey registers");
        serde_json::to_value(credential).unwrap()
    }

    pub fn assert(&mut self, origin: &url::Url, mut options: Value) -> Value {
        options.as_object_mut().unwrap().remove("step");
        let options: RequestChallengeResponse = serde_json::from_value(options).unwrap();
        let credential = self
            .0
            .do_authentication(origin.clone(), options)
            .expect("the soft passkey signs");
        serde_json::to_value(credential).unwrap()
    }
}

/// An enrollment link from the running server, as `pgstepup enroll USER` prints it.
pub async fn enrollment_link(socket: &Path, user: &str) -> String {
    match admin::request(socket, &Request::Enroll { user: user.into() })
        .await
        .unwrap()
    {
        Reply::Enrollment { url, .. } => url,
        other => panic!("{other:?}"),
    }
}

/// Enrolls a fresh soft passkey for `user`.
pub async fn enrolled(proxy: &TestProxy, web: &WebClient, user: &str) -> Authenticator {
    let mut authenticator = Authenticator::default();
    let link = enrollment_link(&proxy.admin_socket, user).await;
    let reply = web.enroll(&link, &mut authenticator).await;
    assert_eq!(reply["result"], "enrolled", "{reply}");
    authenticator
}

/// Asserts an API reply's HTTP status and outcome word.
#[track_caller]
pub fn assert_reply(status: u16, reply: &Value, expected_status: u16, word: &str) {
    assert_eq!(
        (status, reply["result"].as_str()),
        (expected_status, Some(word)),
        "{reply}"
    );
}

pub fn last_segment(link: &str) -> &str {
    link.rsplit('/').next().unwrap()
}

/// The approval link in a NOTICE or error text: the line that is a URL.
pub fn link_in(text: &str) -> Option<String> {
    text.lines()
        .map(str::trim)
        .find(|l| l.starts_with("http") && l.contains("/approve/"))
        .map(str::to_owned)
}

/// NOTICE texts a connection received, and the task that owns its socket.
pub struct Notices(
    pub mpsc::UnboundedReceiver<String>,
    tokio::task::JoinHandle<()>,
);

/// The app user's connection through `proxy` over TLS, and the NOTICEs it receives.
pub async fn connect_noticed(
    proxy: &TestProxy,
    application_name: &str,
) -> (tokio_postgres::Client, Notices) {
    let conn_str = format!(
        "{} application_name='{application_name}'",
        proxy.conn_str(APP_USER, APP_PASSWORD, APP_DB, "require")
    );
    let (client, connection) = tokio_postgres::connect(&conn_str, tls_connector())
        .await
        .expect("app user connects");
    (client, Notices::collect(connection))
}

/// The same in plain text, so the connection's cancel key can be sent to any instance.
pub async fn connect_noticed_plain(proxy: &TestProxy) -> (tokio_postgres::Client, Notices) {
    let (client, connection) = tokio_postgres::connect(
        &proxy.conn_str(APP_USER, APP_PASSWORD, APP_DB, "disable"),
        tokio_postgres::NoTls,
    )
    .await
    .expect("app user connects");
    (client, Notices::collect(connection))
}

impl Notices {
    fn collect<S, T>(mut connection: tokio_postgres::Connection<S, T>) -> Self
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, notices) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(Ok(message)) = messages.next().await {
                if let AsyncMessage::Notice(notice) = message {
                    let _ = sender.send(notice.message().to_owned());
                }
            }
        });
        Notices(notices, task)
    }
    /// Drops the socket, as a client that dies or loses its network does.
    pub fn disconnect(&self) {
        self.1.abort();
    }

    /// The next approval link pgstepup announces.
    pub async fn next_link(&mut self) -> String {
        loop {
            if let Some(link) = link_in(&self.next_message().await) {
                return link;
            }
        }
    }

    /// The next NOTICE's message.
    pub async fn next_message(&mut self) -> String {
        tokio::time::timeout(std::time::Duration::from_secs(20), self.0.recv())
            .await
            .expect("a NOTICE within 20 s")
            .expect("connection open")
    }
}
