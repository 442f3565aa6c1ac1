//! The JSON API behind the pages: approval (`/api/approve/TOKEN/...`), enrollment
//! (`/api/enroll/TOKEN/...`) and the pending list (`/api/pending/...`).
//!
//! Every ceremony is begin → finish. `begin` stores the webauthn-rs state under a key derived
//! from the token; `finish` takes it back with one atomic read-and-delete, so a replayed
//! assertion finds nothing. Only the keys registered to the statement's user are offered and
//! accepted; webauthn-rs checks origin, RP id, user verification and the signature counter
//! against the stored one, which is saved after every use. Every failure is audited.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};
use webauthn_rs::prelude::{
    CredentialID, Passkey, PasskeyAuthentication, PasskeyRegistration, PublicKeyCredential,
    RegisterPublicKeyCredential,
};

use pgstepup_audit::Record;
use pgstepup_metrics::ChallengeOutcome;
use pgstepup_stepup::{token_hash, unix_now, Challenge, Outcome, StoredKey};

use crate::Web;

/// How long a started ceremony may take.
const CEREMONY_TTL: Duration = Duration::from_secs(300);
/// Requests carry a credential at most: a few KiB.
const BODY_LIMIT: usize = 64 * 1024;

type Shared = State<Arc<Web>>;

pub(crate) fn routes(web: Arc<Web>) -> Router {
    Router::new()
        .route("/api/approve/{token}", get(approval))
        .route("/api/approve/{token}/begin", post(approve_begin))
        .route("/api/approve/{token}/finish", post(approve_finish))
        .route("/api/approve/{token}/deny", post(deny))
        .route("/api/enroll/{token}", get(enrollment))
        .route("/api/enroll/{token}/begin", post(enroll_begin))
        .route(
            "/api/enroll/{token}/authenticate",
            post(enroll_authenticate),
        )
        .route("/api/enroll/{token}/finish", post(enroll_finish))
        .route("/api/pending/begin", post(pending_begin))
        .route("/api/pending/finish", post(pending_finish))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn(json_posts_only))
        .layer(axum::middleware::map_response(crate::pages::secure_headers))
        .with_state(web)
}

/// Every POST carries JSON, which the pages' own script sends: a browser sends it to another
/// site only after a CORS preflight this server never grants, so another site's form cannot
/// deny a held statement or start a ceremony with a link it has learnt.
async fn json_posts_only(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let is_json = request
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
    if request.method() == axum::http::Method::POST && !is_json {
        return Failure {
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            word: "invalid",
            message: "requests must be JSON (Content-Type: application/json)".into(),
        }
        .into_response();
    }
    next.run(request).await
}

/// An API failure: an HTTP status and `{"result": word, "message": text}`.
pub(crate) struct Failure {
    status: StatusCode,
    word: &'static str,
    message: String,
}

impl Failure {
    fn invalid(message: impl Into<String>) -> Self {
        Failure {
            status: StatusCode::BAD_REQUEST,
            word: "invalid",
            message: message.into(),
        }
    }

    fn expired(message: impl Into<String>) -> Self {
        Failure {
            status: StatusCode::GONE,
            word: "expired",
            message: message.into(),
        }
    }

    fn unavailable(error: impl std::fmt::Display) -> Self {
        tracing::warn!(%error, "web request failed on the state or credential store");
        Failure {
            status: StatusCode::SERVICE_UNAVAILABLE,
            word: "error",
            message: format!("pgstepup cannot reach its state right now: {error}"),
        }
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({"result": self.word, "message": self.message})),
        )
            .into_response()
    }
}

type Reply = Result<Json<Value>, Failure>;

fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, Failure> {
    serde_json::from_slice(body).map_err(|e| Failure::invalid(format!("malformed request: {e}")))
}

fn credential_text(id: &CredentialID) -> String {
    URL_SAFE_NO_PAD.encode::<&[u8]>(id.as_ref())
}

/// A token is 43 base64url characters; anything else is not worth a lookup.
fn well_formed(token: &str) -> Result<(), Failure> {
    let ok = token.len() == 43
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Failure::invalid("this link is not valid"))
    }
}

impl Web {
    async fn challenge(&self, token: &str) -> Result<Challenge, Failure> {
        well_formed(token)?;
        self.stepup
            .challenge_for_token(token)
            .await
            .map_err(Failure::unavailable)?
            .ok_or_else(|| Failure::invalid("this link is not valid (unknown or forgotten)"))
    }

    /// The challenge, if it can still be decided. An attempt to decide one that cannot be
    /// (a link used again, replayed, expired or cancelled) is a failed attempt: audited.
    async fn open_challenge(&self, token: &str) -> Result<Challenge, Failure> {
        let challenge = self.challenge(token).await?;
        let outcome = self
            .stepup
            .outcome(&challenge.id)
            .await
            .map_err(Failure::unavailable)?;
        let failure = match outcome {
            Some(Outcome::Cancelled) => {
                Failure::expired("the statement was cancelled or its session ended")
            }
            Some(outcome) => Failure::invalid(format!(
                "this request was already {}; the link works once",
                outcome.word()
            )),
            None if unix_now() >= challenge.expires_at => Failure::expired("this link has expired"),
            None => return Ok(challenge),
        };
        self.audit(Record {
            reason: Some(failure.message.clone()),
            ..challenge_record("webauthn_failed", &challenge)
        });
        Err(failure)
    }

    async fn status(&self, challenge: &Challenge) -> Result<&'static str, Failure> {
        let outcome = self
            .stepup
            .outcome(&challenge.id)
            .await
            .map_err(Failure::unavailable)?;
        Ok(match outcome {
            Some(outcome) => outcome.word(),
            None if unix_now() >= challenge.expires_at => "expired",
            None => "pending",
        })
    }

    async fn keys(&self, user: &str) -> Result<Vec<StoredKey>, Failure> {
        self.credentials
            .keys_of(user)
            .await
            .map_err(Failure::unavailable)
    }

    /// Starts an assertion with the user's keys; the state goes to `state_key`.
    async fn begin_assertion(&self, user: &str, state_key: &str) -> Reply {
        let keys = self.keys(user).await?;
        if keys.is_empty() {
            return Err(Failure::invalid(format!(
                "{user} has no registered security key or passkey; ask an admin for `pgstepup enroll {user}`"
            )));
        }
        let passkeys: Vec<Passkey> = keys.into_iter().map(|k| k.passkey).collect();
        let (options, state) = self
            .webauthn
            .start_passkey_authentication(&passkeys)
            .map_err(|e| Failure::invalid(e.to_string()))?;
        self.put_state(state_key, &state).await?;
        Ok(Json(
            serde_json::to_value(options).expect("options serialise"),
        ))
    }

    /// Finishes an assertion: consumes the state, verifies, stores the new counter. Failures
    /// are audited with `context` filled in.
    async fn finish_assertion(
        &self,
        user: &str,
        state_key: &str,
        body: &[u8],
        context: &Record,
    ) -> Result<String, Failure> {
        let fail = |code: &'static str, reason: String, credential_id: Option<String>| {
            self.metrics.webauthn_failure(code);
            self.audit(Record {
                event: "webauthn_failed",
                user: Some(user.to_owned()),
                reason: Some(reason.clone()),
                credential_id,
                ..context.clone()
            });
            Failure {
                status: StatusCode::FORBIDDEN,
                word: "invalid",
                message: reason,
            }
        };
        let credential: PublicKeyCredential = match serde_json::from_slice(body) {
            Ok(c) => c,
            Err(e) => return Err(fail("malformed", format!("malformed assertion: {e}"), None)),
        };
        let presented = credential_text(&credential.raw_id);
        let Some(state) = self.take_state::<PasskeyAuthentication>(state_key).await? else {
            return Err(fail(
                "no_ceremony",
                "no ceremony in progress for this request (already used or timed out); start again"
                    .into(),
                Some(presented),
            ));
        };
        let result = self
            .webauthn
            .finish_passkey_authentication(&credential, &state)
            .map_err(|e| {
                fail(
                    "verification",
                    format!("WebAuthn verification failed: {e}"),
                    Some(presented.clone()),
                )
            })?;
        let id = credential_text(result.cred_id());
        let mut keys = self.keys(user).await?;
        let Some(key) = keys.iter_mut().find(|k| k.id == id) else {
            return Err(fail(
                "unknown_key",
                "the key is not registered to this user (revoked meanwhile?)".into(),
                Some(id),
            ));
        };
        key.passkey.update_credential(&result);
        key.last_used_at = Some(unix_now());
        self.credentials
            .save(key)
            .await
            .map_err(Failure::unavailable)?;
        Ok(id)
    }

    async fn put_state<T: serde::Serialize>(&self, key: &str, state: &T) -> Result<(), Failure> {
        let json = serde_json::to_string(state).expect("ceremony state serialises");
        self.stepup
            .store()
            .set(key, &json, CEREMONY_TTL)
            .await
            .map_err(Failure::unavailable)
    }

    async fn take_state<T: for<'de> Deserialize<'de>>(
        &self,
        key: &str,
    ) -> Result<Option<T>, Failure> {
        let json = self
            .stepup
            .store()
            .take(key)
            .await
            .map_err(Failure::unavailable)?;
        Ok(json.and_then(|j| serde_json::from_str(&j).ok()))
    }
}

fn challenge_record(event: &'static str, challenge: &Challenge) -> Record {
    Record {
        event,
        user: Some(challenge.user.clone()),
        client_addr: Some(challenge.client_addr.clone()),
        application_name: Some(challenge.application_name.clone()),
        connection_id: Some(challenge.connection_id),
        statement_digest: Some(challenge.statement_digest.clone()),
        statement: Some(challenge.statement.clone()),
        rule: Some(challenge.rule.clone()),
        decision: Some("step_up"),
        challenge_id: Some(challenge.id.clone()),
        ..Default::default()
    }
}

async fn approval(State(web): Shared, Path(token): Path<String>) -> Reply {
    let challenge = web.challenge(&token).await?;
    let status = web.status(&challenge).await?;
    let now = unix_now();
    Ok(Json(json!({
        "user": challenge.user,
        "statement": challenge.statement,
        "rule": challenge.rule,
        "reason": challenge.reason,
        "client_addr": challenge.client_addr,
        "application_name": challenge.application_name,
        "created_at": challenge.created_at,
        "expires_at": challenge.expires_at,
        "seconds_left": challenge.expires_at.saturating_sub(now),
        "status": status,
    })))
}

async fn approve_begin(State(web): Shared, Path(token): Path<String>) -> Reply {
    let challenge = web.open_challenge(&token).await?;
    web.begin_assertion(&challenge.user, &approve_state_key(&token))
        .await
}

fn approve_state_key(token: &str) -> String {
    format!("ceremony:approve:{}", token_hash(token))
}

async fn approve_finish(State(web): Shared, Path(token): Path<String>, body: Bytes) -> Reply {
    let challenge = web.open_challenge(&token).await?;
    let context = challenge_record("webauthn_failed", &challenge);
    let credential_id = web
        .finish_assertion(&challenge.user, &approve_state_key(&token), &body, &context)
        .await?;
    let elevated_until =
        (challenge.lifetime_secs > 0).then(|| unix_now() + challenge.lifetime_secs);
    let outcome = Outcome::Approved {
        credential_id: credential_id.clone(),
        elevated_until,
    };
    if !web
        .stepup
        .decide(&challenge, &outcome)
        .await
        .map_err(Failure::unavailable)?
    {
        return Err(Failure::invalid(
            "this request was decided meanwhile; the link works once",
        ));
    }
    let granted = web
        .stepup
        .grant(&challenge)
        .await
        .map_err(Failure::unavailable)?;
    web.stepup.wake(&challenge).await;
    web.metrics.challenge(ChallengeOutcome::Approved);
    web.metrics
        .approval_seconds
        .observe(unix_now().saturating_sub(challenge.created_at) as f64);
    web.audit(Record {
        credential_id: Some(credential_id),
        elevation_expires: granted,
        ..challenge_record("challenge_approved", &challenge)
    });
    tracing::info!(user = %challenge.user, rule = %challenge.rule, "step-up approved");
    // After its hold ended the statement is no longer waiting: the approval lets it pass
    // when it is run again, and the engineer must know it did not run.
    let runs = if challenge.held_until == 0 || unix_now() < challenge.held_until {
        "the statement runs now"
    } else {
        "the statement was not run (its hold had ended); run it again and it will pass"
    };
    let message = match granted {
        Some(until) => {
            format!(
                "approved: {runs}; further statements under rule {} run without asking for {} s",
                challenge.rule, challenge.lifetime_secs
            ) + &format!(" (until unix time {until})")
        }
        None => format!("approved: {runs} (this rule approves one statement at a time)"),
    };
    Ok(Json(json!({
        "result": "approved",
        "message": message,
        "elevated_until": granted,
    })))
}

async fn deny(State(web): Shared, Path(token): Path<String>) -> Reply {
    let challenge = web.open_challenge(&token).await?;
    if !web
        .stepup
        .decide(&challenge, &Outcome::Denied)
        .await
        .map_err(Failure::unavailable)?
    {
        return Err(Failure::invalid("this request was decided meanwhile"));
    }
    web.stepup.wake(&challenge).await;
    web.metrics.challenge(ChallengeOutcome::Denied);
    web.audit(challenge_record("challenge_denied", &challenge));
    Ok(Json(json!({
        "result": "denied",
        "message": "denied: the statement will not run",
    })))
}

/// Any path nothing serves, traversal attempts included.
pub(crate) async fn unknown() -> Failure {
    Failure {
        status: StatusCode::NOT_FOUND,
        word: "invalid",
        message: "no such request".into(),
    }
}

// Enrollment -----------------------------------------------------------------------------------

/// What an enrollment token stands for.
#[derive(serde::Serialize, Deserialize)]
pub(crate) struct Enrollment {
    pub user: String,
    pub expires_at: u64,
}

pub(crate) fn enrollment_key(token: &str) -> String {
    format!("enroll:{}", token_hash(token))
}

impl Web {
    async fn enrollment(&self, token: &str) -> Result<Enrollment, Failure> {
        well_formed(token)?;
        let json = self
            .stepup
            .store()
            .get(&enrollment_key(token))
            .await
            .map_err(Failure::unavailable)?
            .ok_or_else(|| {
                Failure::invalid("this enrollment link is not valid (unknown or used)")
            })?;
        let enrollment: Enrollment =
            serde_json::from_str(&json).map_err(|_| Failure::invalid("corrupt enrollment"))?;
        if unix_now() >= enrollment.expires_at {
            return Err(Failure::expired("this enrollment link has expired"));
        }
        Ok(enrollment)
    }

    async fn registration_options(&self, user: &str, token: &str) -> Reply {
        let keys = self.keys(user).await?;
        let handle = keys
            .first()
            .map_or_else(webauthn_rs::prelude::Uuid::new_v4, |k| k.user_handle);
        let exclude: Vec<CredentialID> = keys.iter().map(|k| k.passkey.cred_id().clone()).collect();
        let (options, state) = self
            .webauthn
            .start_passkey_registration(handle, user, user, Some(exclude))
            .map_err(|e| Failure::invalid(e.to_string()))?;
        self.put_state(
            &format!("ceremony:enroll:{}", token_hash(token)),
            &(handle, state),
        )
        .await?;
        let mut value = serde_json::to_value(options).expect("options serialise");
        value["step"] = json!("register");
        Ok(Json(value))
    }
}

async fn enrollment(State(web): Shared, Path(token): Path<String>) -> Reply {
    let enrollment = web.enrollment(&token).await?;
    let has_keys = !web.keys(&enrollment.user).await?.is_empty();
    Ok(Json(json!({
        "user": enrollment.user,
        "expires_at": enrollment.expires_at,
        "has_keys": has_keys,
    })))
}

async fn enroll_begin(State(web): Shared, Path(token): Path<String>) -> Reply {
    let enrollment = web.enrollment(&token).await?;
    if web.keys(&enrollment.user).await?.is_empty() {
        return web.registration_options(&enrollment.user, &token).await;
    }
    // A user who has a key proves it before adding another.
    let Json(mut value) = web
        .begin_assertion(
            &enrollment.user,
            &format!("ceremony:enroll-auth:{}", token_hash(&token)),
        )
        .await?;
    value["step"] = json!("authenticate");
    Ok(Json(value))
}

async fn enroll_authenticate(State(web): Shared, Path(token): Path<String>, body: Bytes) -> Reply {
    let enrollment = web.enrollment(&token).await?;
    let context = Record {
        event: "webauthn_failed",
        reason: Some("enrollment of another key".into()),
        ..Default::default()
    };
    web.finish_assertion(
        &enrollment.user,
        &format!("ceremony:enroll-auth:{}", token_hash(&token)),
        &body,
        &context,
    )
    .await?;
    web.stepup
        .store()
        .set(
            &format!("enroll-verified:{}", token_hash(&token)),
            "1",
            CEREMONY_TTL,
        )
        .await
        .map_err(Failure::unavailable)?;
    web.registration_options(&enrollment.user, &token).await
}

async fn enroll_finish(State(web): Shared, Path(token): Path<String>, body: Bytes) -> Reply {
    let enrollment = web.enrollment(&token).await?;
    let user = enrollment.user;
    let fail = |reason: String| {
        web.metrics.webauthn_failure("enrollment");
        web.audit(Record {
            event: "webauthn_failed",
            user: Some(user.clone()),
            reason: Some(format!("enrollment: {reason}")),
            ..Default::default()
        });
        Failure {
            status: StatusCode::FORBIDDEN,
            word: "invalid",
            message: reason,
        }
    };
    let has_keys = !web.keys(&user).await?.is_empty();
    if has_keys {
        let verified = web
            .stepup
            .store()
            .take(&format!("enroll-verified:{}", token_hash(&token)))
            .await
            .map_err(Failure::unavailable)?;
        if verified.is_none() {
            return Err(fail(
                "authenticate with an existing key before adding another".into(),
            ));
        }
    }
    let credential: RegisterPublicKeyCredential = parse(&body)?;
    let Some((handle, state)) = web
        .take_state::<(webauthn_rs::prelude::Uuid, PasskeyRegistration)>(&format!(
            "ceremony:enroll:{}",
            token_hash(&token)
        ))
        .await?
    else {
        return Err(fail(
            "no enrollment in progress (already used or timed out)".into(),
        ));
    };
    let passkey = web
        .webauthn
        .finish_passkey_registration(&credential, &state)
        .map_err(|e| fail(format!("WebAuthn registration failed: {e}")))?;
    let id = credential_text(passkey.cred_id());
    let key = StoredKey {
        id: id.clone(),
        user: user.clone(),
        user_handle: handle,
        created_at: unix_now(),
        last_used_at: None,
        passkey,
    };
    web.credentials
        .save(&key)
        .await
        .map_err(Failure::unavailable)?;
    let _ = web.stepup.store().delete(&enrollment_key(&token)).await;
    web.audit(Record {
        event: "enrollment_completed",
        user: Some(user.clone()),
        credential_id: Some(id.clone()),
        ..Default::default()
    });
    tracing::info!(%user, credential = %id, "key enrolled");
    Ok(Json(json!({
        "result": "enrolled",
        "message": format!("enrolled: a new key for {user}"),
        "credential_id": id,
    })))
}

// Pending list ---------------------------------------------------------------------------------

#[derive(Deserialize)]
struct PendingBegin {
    user: String,
}

#[derive(Deserialize)]
struct PendingFinish {
    user: String,
    credential: Value,
}

fn pending_state_key(user: &str) -> String {
    format!("ceremony:pending:{user}")
}

async fn pending_begin(State(web): Shared, body: Bytes) -> Reply {
    let request: PendingBegin = parse(&body)?;
    web.begin_assertion(&request.user, &pending_state_key(&request.user))
        .await
}

async fn pending_finish(State(web): Shared, body: Bytes) -> Reply {
    let request: PendingFinish = parse(&body)?;
    let context = Record {
        event: "webauthn_failed",
        reason: Some("pending list sign-in".into()),
        ..Default::default()
    };
    let credential = serde_json::to_vec(&request.credential).expect("value serialises");
    web.finish_assertion(
        &request.user,
        &pending_state_key(&request.user),
        &credential,
        &context,
    )
    .await?;
    let challenges = web
        .stepup
        .recent(&request.user)
        .await
        .map_err(Failure::unavailable)?;
    let mut requests = Vec::new();
    for challenge in challenges {
        let status = web.status(&challenge).await?;
        let approve_url = if status == "pending" {
            Some(
                web.stepup
                    .mint_link(&challenge.id)
                    .await
                    .map_err(Failure::unavailable)?,
            )
        } else {
            None
        };
        requests.push(json!({
            "statement": challenge.statement,
            "rule": challenge.rule,
            "status": status,
            "created_at": challenge.created_at,
            "expires_at": challenge.expires_at,
            "approve_url": approve_url,
        }));
    }
    Ok(Json(json!({ "requests": requests })))
}
