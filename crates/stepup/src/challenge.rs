//! Challenges and elevations: what the proxy side and the web side agree on through the store.
//!
//! A held statement becomes a [`Challenge`] (written once, read by the approval page) reached
//! through one-time tokens (only their SHA-256 is stored). Its [`Outcome`] is written exactly
//! once (`SET NX`), then a wake-up is published to the instance holding it; that instance
//! re-reads the outcome on every wake-up and on a timer, so a lost message only costs time.
//! An approval grants an elevation: per user or per connection for the rule's lifetime, or,
//! for rules whose lifetime is zero, one run of that exact statement.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use crate::store::{Store, StoreResult};

/// A statement held for approval, as the approval page shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Challenge {
    pub id: String,
    pub user: String,
    pub instance: String,
    pub connection_id: u64,
    pub client_addr: String,
    pub application_name: String,
    pub statement: String,
    pub statement_digest: String,
    pub rule: String,
    pub reason: String,
    /// Seconds the rule's elevation lasts; zero means this statement only.
    pub lifetime_secs: u64,
    /// Whether the elevation covers the user everywhere or only this connection.
    pub user_scope: bool,
    pub created_at: u64,
    /// When the link stops working.
    pub expires_at: u64,
    /// When the session stops holding the statement (its rule's timeout, or the link's end if
    /// sooner): an approval after it elevates the user, but the statement itself has not run.
    /// Zero (a challenge stored by an older instance): not known.
    #[serde(default)]
    pub held_until: u64,
}

/// How a challenge ended. Written once; the first writer wins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    Approved {
        credential_id: String,
        /// Unix seconds; absent for one-statement elevations.
        elevated_until: Option<u64>,
    },
    Denied,
    /// The client cancelled the statement or went away.
    Cancelled,
}

impl Outcome {
    pub fn word(&self) -> &'static str {
        match self {
            Outcome::Approved { .. } => "approved",
            Outcome::Denied => "denied",
            Outcome::Cancelled => "cancelled",
        }
    }
}

/// Which elevation a statement needs.
#[derive(Debug, Clone)]
pub struct ElevationNeed<'a> {
    pub user: &'a str,
    pub rule: &'a str,
    pub user_scope: bool,
    pub instance: &'a str,
    pub connection_id: u64,
    pub statement_digest: &'a str,
}

impl ElevationNeed<'_> {
    // User names may contain `:`: the user's length comes first, so ("a:b", "c") and
    // ("a", "b:c") can never share a key.
    fn key(&self) -> String {
        let (user, rule) = (self.user, self.rule);
        if self.user_scope {
            format!("elev:user:{}:{user}:{rule}", user.len())
        } else {
            format!(
                "elev:conn:{}:{}:{}:{user}:{rule}",
                self.instance,
                self.connection_id,
                user.len()
            )
        }
    }

    /// A one-statement approval made after its hold ended waits for the re-run of that
    /// statement in the rule's scope: on that connection, unless the rule is user-wide.
    fn once_key(&self) -> String {
        let (user, digest) = (self.user, self.statement_digest);
        if self.user_scope {
            format!("elev:once:user:{}:{user}:{digest}", user.len())
        } else {
            format!(
                "elev:once:conn:{}:{}:{}:{user}:{digest}",
                self.instance,
                self.connection_id,
                user.len()
            )
        }
    }
}

/// How long records outlive their link: the approval page can still say "expired".
const RECORD_GRACE: Duration = Duration::from_secs(3600);
/// A one-statement approval made after the hold timed out waits this long for the re-run.
const ONCE_TTL: Duration = Duration::from_secs(900);
/// How many recent challenges the pending page lists per user.
const RECENT_PER_USER: usize = 20;

/// Step-up state shared by the proxy and web sides of one instance.
#[derive(Clone)]
pub struct StepUp {
    store: Store,
    instance: Arc<str>,
    public_url: Arc<str>,
    link_ttl: Duration,
    waiters: Arc<Mutex<HashMap<String, Arc<Notify>>>>,
    /// Wakes every waiter at once: after a resubscription messages may have been lost.
    everyone: Arc<Notify>,
    cancels: Arc<Mutex<Option<tokio::sync::mpsc::UnboundedSender<String>>>>,
}

impl StepUp {
    pub fn new(store: Store, instance: &str, public_url: &str, link_ttl: Duration) -> Self {
        StepUp {
            store,
            instance: instance.into(),
            public_url: public_url.trim_end_matches('/').into(),
            link_ttl,
            waiters: Arc::default(),
            everyone: Arc::default(),
            cancels: Arc::default(),
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Whether other instances may share this state (Redis).
    pub fn is_shared(&self) -> bool {
        matches!(self.store, Store::Redis(_))
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    pub fn public_url(&self) -> &str {
        &self.public_url
    }

    /// Listens for wake-ups addressed to this instance (outcomes and cancel requests); run it
    /// for the life of the process. Cancel keys arrive on the returned channel.
    pub fn listen(&self) -> (impl std::future::Future<Output = ()>, CancelInbox) {
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
        *self.cancels.lock().expect("cancel sender lock") = Some(sender);
        let this = self.clone();
        let wake_channel = format!("wake:{}", self.instance);
        let cancel_channel = format!("cancel:{}", self.instance);
        let run = async move {
            let channels = vec![wake_channel.clone(), cancel_channel.clone()];
            this.store
                .clone()
                .subscribe(channels, |channel, message| {
                    if channel.is_empty() {
                        this.everyone.notify_waiters();
                    } else if channel == wake_channel {
                        let waiter = this
                            .waiters
                            .lock()
                            .expect("waiters lock")
                            .get(message)
                            .cloned();
                        if let Some(waiter) = waiter {
                            waiter.notify_one();
                        }
                    } else if channel == cancel_channel {
                        if let Some(sender) = &*this.cancels.lock().expect("cancel sender lock") {
                            let _ = sender.send(message.to_owned());
                        }
                    }
                })
                .await
        };
        (run, CancelInbox(receiver))
    }

    /// Stores a new challenge and returns its one-time link.
    pub async fn issue(&self, challenge: &Challenge) -> StoreResult<String> {
        let record = serde_json::to_string(challenge).expect("challenge serialises");
        let ttl = self.link_ttl + RECORD_GRACE;
        self.store
            .set(&format!("chal:{}", challenge.id), &record, ttl)
            .await?;
        self.store
            .push_capped(
                &format!("recent:{}", challenge.user),
                &challenge.id,
                RECENT_PER_USER,
                ttl,
            )
            .await?;
        self.mint_link(&challenge.id).await
    }

    /// A fresh one-time link to an existing challenge (the pending page hands these out).
    pub async fn mint_link(&self, challenge_id: &str) -> StoreResult<String> {
        let token = random_token();
        self.store
            .set(
                &format!("tok:{}", token_hash(&token)),
                challenge_id,
                self.link_ttl + RECORD_GRACE,
            )
            .await?;
        Ok(format!("{}/approve/{token}", self.public_url))
    }

    /// The challenge a token leads to, if the token was ever issued and is not forgotten.
    pub async fn challenge_for_token(&self, token: &str) -> StoreResult<Option<Challenge>> {
        let Some(id) = self
            .store
            .get(&format!("tok:{}", token_hash(token)))
            .await?
        else {
            return Ok(None);
        };
        self.challenge(&id).await
    }

    pub async fn challenge(&self, id: &str) -> StoreResult<Option<Challenge>> {
        Ok(self
            .store
            .get(&format!("chal:{id}"))
            .await?
            .and_then(|json| serde_json::from_str(&json).ok()))
    }

    /// The user's recent challenges, newest first.
    pub async fn recent(&self, user: &str) -> StoreResult<Vec<Challenge>> {
        let mut challenges = Vec::new();
        for id in self.store.list(&format!("recent:{user}")).await? {
            if let Some(challenge) = self.challenge(&id).await? {
                challenges.push(challenge);
            }
        }
        Ok(challenges)
    }

    pub async fn outcome(&self, id: &str) -> StoreResult<Option<Outcome>> {
        Ok(self
            .store
            .get(&format!("outcome:{id}"))
            .await?
            .and_then(|json| serde_json::from_str(&json).ok()))
    }

    /// Records how a challenge ended. False if it had already ended (the earlier outcome
    /// stands). Call [`StepUp::wake`] once everything the outcome implies is stored.
    pub async fn decide(&self, challenge: &Challenge, outcome: &Outcome) -> StoreResult<bool> {
        let json = serde_json::to_string(outcome).expect("outcome serialises");
        self.store
            .set_new(
                &format!("outcome:{}", challenge.id),
                &json,
                self.link_ttl + RECORD_GRACE,
            )
            .await
    }

    /// Tells the instance holding the challenge to look at its outcome.
    pub async fn wake(&self, challenge: &Challenge) {
        if let Err(error) = self
            .store
            .publish(&format!("wake:{}", challenge.instance), &challenge.id)
            .await
        {
            tracing::warn!(%error, "wake-up not published; the holder will find the outcome on its timer");
        }
    }

    pub fn link_ttl(&self) -> Duration {
        self.link_ttl
    }

    /// Grants the elevation an approved challenge stands for; returns its end (unix seconds),
    /// or None for a one-statement elevation.
    pub async fn grant(&self, challenge: &Challenge) -> StoreResult<Option<u64>> {
        let need = ElevationNeed {
            user: &challenge.user,
            rule: &challenge.rule,
            user_scope: challenge.user_scope,
            instance: &challenge.instance,
            connection_id: challenge.connection_id,
            statement_digest: &challenge.statement_digest,
        };
        if challenge.lifetime_secs == 0 {
            self.store.set(&need.once_key(), "1", ONCE_TTL).await?;
            return Ok(None);
        }
        let until = unix_now() + challenge.lifetime_secs;
        self.store
            .set(
                &need.key(),
                &until.to_string(),
                Duration::from_secs(challenge.lifetime_secs),
            )
            .await?;
        Ok(Some(until))
    }

    /// The end (unix seconds) of a lasting elevation that covers `need`, if there is one.
    pub async fn elevation(&self, need: &ElevationNeed<'_>) -> StoreResult<Option<u64>> {
        let until = self
            .store
            .get(&need.key())
            .await?
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|until| *until > unix_now());
        Ok(until)
    }

    /// Elevations in force now (lasting and one-statement ones), for the gauge.
    pub async fn active_elevations(&self) -> StoreResult<usize> {
        self.store.count_prefix("elev:").await
    }

    /// Uses up a one-statement approval of exactly this statement, if one was made.
    pub async fn take_single_use(&self, need: &ElevationNeed<'_>) -> StoreResult<bool> {
        Ok(self.store.take(&need.once_key()).await?.is_some())
    }

    /// Something to wait on for the outcome of challenge `id` (hints only: re-read the
    /// outcome after every wake-up). Drop the guard when done.
    pub fn waiter(&self, id: &str) -> Waiter {
        let notify = Arc::new(Notify::new());
        self.waiters
            .lock()
            .expect("waiters lock")
            .insert(id.to_owned(), notify.clone());
        Waiter {
            notify,
            everyone: self.everyone.clone(),
            waiters: self.waiters.clone(),
            id: id.to_owned(),
        }
    }

    /// Records which instance owns a client cancel key, so a CancelRequest that reaches
    /// another instance finds it.
    pub async fn register_cancel_key(&self, pid: i32) -> StoreResult<()> {
        self.store
            .set(
                &format!("cancelkey:{pid}"),
                &self.instance,
                Duration::from_secs(7 * 24 * 3600),
            )
            .await
    }

    pub async fn forget_cancel_key(&self, pid: i32) -> StoreResult<()> {
        self.store.delete(&format!("cancelkey:{pid}")).await
    }

    /// Passes a cancel request for a key this instance does not own to the owning instance.
    /// True if an owner was found.
    pub async fn route_cancel(&self, pid: i32, secret: &[u8]) -> StoreResult<bool> {
        let Some(owner) = self.store.get(&format!("cancelkey:{pid}")).await? else {
            return Ok(false);
        };
        if owner == *self.instance {
            return Ok(false);
        }
        let message = format!("{pid}:{}", URL_SAFE_NO_PAD.encode(secret));
        self.store
            .publish(&format!("cancel:{owner}"), &message)
            .await?;
        Ok(true)
    }
}

/// Cancel requests other instances passed to this one.
pub struct CancelInbox(tokio::sync::mpsc::UnboundedReceiver<String>);

impl CancelInbox {
    /// The next `(pid, secret)`.
    pub async fn next(&mut self) -> Option<(i32, Vec<u8>)> {
        loop {
            let message = self.0.recv().await?;
            let Some((pid, secret)) = message.split_once(':') else {
                continue;
            };
            if let (Ok(pid), Ok(secret)) = (pid.parse(), URL_SAFE_NO_PAD.decode(secret)) {
                return Some((pid, secret));
            }
        }
    }
}

/// Wake-ups for one challenge.
pub struct Waiter {
    notify: Arc<Notify>,
    everyone: Arc<Notify>,
    waiters: Arc<Mutex<HashMap<String, Arc<Notify>>>>,
    id: String,
}

impl Waiter {
    /// Returns on a wake-up for this challenge, after any resubscription, or after `at_most`.
    pub async fn wait(&self, at_most: Duration) {
        tokio::select! {
            _ = self.notify.notified() => {}
            _ = self.everyone.notified() => {}
            _ = tokio::time::sleep(at_most) => {}
        }
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        self.waiters.lock().expect("waiters lock").remove(&self.id);
    }
}

/// 256 random bits, URL-safe.
pub fn random_token() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    URL_SAFE_NO_PAD.encode(bytes)
}

/// What the store keeps instead of a token.
pub fn token_hash(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn challenge(lifetime_secs: u64, user_scope: bool) -> Challenge {
        Challenge {
            id: random_token(),
            user: "alice".into(),
            instance: "a".into(),
            connection_id: 7,
            client_addr: "127.0.0.1:5000".into(),
            application_name: "psql".into(),
            statement: "DELETE FROM t".into(),
            statement_digest: "d".into(),
            rule: "default-write".into(),
            reason: "write".into(),
            lifetime_secs,
            user_scope,
            created_at: unix_now(),
            expires_at: unix_now() + 60,
            held_until: unix_now() + 30,
        }
    }

    #[tokio::test]
    async fn a_challenge_is_reached_by_its_token_and_decided_once() {
        let stepup = StepUp::new(
            Store::memory(),
            "a",
            "http://localhost:1/",
            Duration::from_secs(60),
        );
        let c = challenge(60, true);
        let link = stepup.issue(&c).await.unwrap();
        let token = link.strip_prefix("http://localhost:1/approve/").unwrap();
        assert!(token.len() >= 43, "256 random bits");
        assert_eq!(
            stepup.challenge_for_token(token).await.unwrap().unwrap().id,
            c.id
        );
        assert!(stepup
            .challenge_for_token("forged")
            .await
            .unwrap()
            .is_none());
        assert!(stepup.decide(&c, &Outcome::Denied).await.unwrap());
        let approved = Outcome::Approved {
            credential_id: "k".into(),
            elevated_until: None,
        };
        assert!(!stepup.decide(&c, &approved).await.unwrap());
        assert_eq!(stepup.outcome(&c.id).await.unwrap(), Some(Outcome::Denied));
    }

    #[tokio::test]
    async fn elevations_follow_scope_and_single_use_is_used_once() {
        let stepup = StepUp::new(Store::memory(), "a", "http://x", Duration::from_secs(60));
        let user_wide = challenge(60, true);
        stepup.grant(&user_wide).await.unwrap();
        let other_connection = ElevationNeed {
            user: "alice",
            rule: "default-write",
            user_scope: true,
            instance: "b",
            connection_id: 9,
            statement_digest: "other",
        };
        assert!(stepup.elevation(&other_connection).await.unwrap().is_some());
        let bob = ElevationNeed {
            user: "bob",
            ..other_connection.clone()
        };
        assert!(stepup.elevation(&bob).await.unwrap().is_none());

        let per_connection = Challenge {
            rule: "r2".into(),
            ..challenge(60, false)
        };
        stepup.grant(&per_connection).await.unwrap();
        let same = ElevationNeed {
            rule: "r2",
            user_scope: false,
            instance: "a",
            connection_id: 7,
            ..other_connection.clone()
        };
        assert!(stepup.elevation(&same).await.unwrap().is_some());
        let elsewhere = ElevationNeed {
            connection_id: 8,
            ..same.clone()
        };
        assert!(stepup.elevation(&elsewhere).await.unwrap().is_none());

        // A user whose name contains the separator cannot reach another user's elevation.
        let colon = Challenge {
            user: "alice:default".into(),
            rule: "write".into(),
            ..challenge(60, true)
        };
        stepup.grant(&colon).await.unwrap();
        let lookalike = ElevationNeed {
            user: "alice",
            rule: "default:write",
            ..other_connection.clone()
        };
        assert!(stepup.elevation(&lookalike).await.unwrap().is_none());

        let once = challenge(0, true);
        stepup.grant(&once).await.unwrap();
        let rerun = ElevationNeed {
            statement_digest: "d",
            ..other_connection.clone()
        };
        assert!(stepup.take_single_use(&rerun).await.unwrap());
        assert!(!stepup.take_single_use(&rerun).await.unwrap());

        // One made for a connection-scoped rule is that connection's alone.
        let once_here = challenge(0, false);
        stepup.grant(&once_here).await.unwrap();
        let rerun_elsewhere = ElevationNeed {
            statement_digest: "d",
            user_scope: false,
            instance: "a",
            connection_id: 8,
            ..other_connection
        };
        assert!(!stepup.take_single_use(&rerun_elsewhere).await.unwrap());
        let rerun_here = ElevationNeed {
            connection_id: 7,
            ..rerun_elsewhere
        };
        assert!(stepup.take_single_use(&rerun_here).await.unwrap());
    }
}
