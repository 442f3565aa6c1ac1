//! The ephemeral state store: string keys with TTLs, capped lists and pub/sub wake-ups, in
//! Redis (shared by every pgstepup instance) or in memory (one instance, the embedded
//! default). Every value has a TTL; nothing here needs to survive a restart.
//!
//! Redis errors are reported, never retried into a hang: requests time out after a second
//! and a failed connect is remembered for a moment, so statements that need step-up are
//! refused at once while Redis is down, and recovery needs nothing but Redis coming back.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::AsyncCommands;
use tokio::sync::broadcast;

use pgstepup_metrics::Metrics;

/// The store could not be reached or answered nonsense.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the step-up state store ({backend}) is unavailable: {reason}")]
pub struct StoreError {
    pub backend: &'static str,
    pub reason: String,
}

impl From<redis::RedisError> for StoreError {
    fn from(e: redis::RedisError) -> Self {
        StoreError {
            backend: "Redis",
            reason: e.to_string(),
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Redis or memory; cheap to clone.
#[derive(Clone)]
pub enum Store {
    Memory(Arc<MemoryStore>),
    Redis(RedisStore),
}

/// How long a Redis request may take before the store counts as unavailable.
const REDIS_TIMEOUT: Duration = Duration::from_millis(1000);

impl Store {
    pub fn memory() -> Self {
        Store::Memory(Arc::new(MemoryStore::default()))
    }

    /// A Redis store; connects lazily, so a Redis that is down at start is not fatal.
    pub fn redis(url: &str, prefix: &str, metrics: Arc<Metrics>) -> StoreResult<Self> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let manager = ConnectionManager::new_lazy_with_config(client.clone(), config)?;
        Ok(Store::Redis(RedisStore {
            client,
            manager,
            prefix: prefix.into(),
            metrics,
        }))
    }

    /// A short name for logs and errors.
    pub fn backend(&self) -> &'static str {
        match self {
            Store::Memory(_) => "memory",
            Store::Redis(_) => "Redis",
        }
    }

    pub async fn set(&self, key: &str, value: &str, ttl: Duration) -> StoreResult<()> {
        match self {
            Store::Memory(m) => {
                m.set(key, value, ttl);
                Ok(())
            }
            Store::Redis(r) => {
                r.timed(
                    "set",
                    r.conn().pset_ex::<_, _, ()>(r.key(key), value, millis(ttl)),
                )
                .await
            }
        }
    }

    /// Sets the key only if it does not exist; true if this call set it.
    pub async fn set_new(&self, key: &str, value: &str, ttl: Duration) -> StoreResult<bool> {
        match self {
            Store::Memory(m) => Ok(m.set_new(key, value, ttl)),
            Store::Redis(r) => {
                let mut conn = r.conn();
                let set: Option<String> = r
                    .timed(
                        "set_new",
                        redis::cmd("SET")
                            .arg(r.key(key))
                            .arg(value)
                            .arg("NX")
                            .arg("PX")
                            .arg(millis(ttl))
                            .query_async(&mut conn),
                    )
                    .await?;
                Ok(set.is_some())
            }
        }
    }

    pub async fn get(&self, key: &str) -> StoreResult<Option<String>> {
        match self {
            Store::Memory(m) => Ok(m.get(key)),
            Store::Redis(r) => r.timed("get", r.conn().get(r.key(key))).await,
        }
    }

    /// Reads and deletes in one step: of two concurrent takers, one gets the value.
    pub async fn take(&self, key: &str) -> StoreResult<Option<String>> {
        match self {
            Store::Memory(m) => Ok(m.take(key)),
            Store::Redis(r) => r.timed("take", r.conn().get_del(r.key(key))).await,
        }
    }

    pub async fn delete(&self, key: &str) -> StoreResult<()> {
        match self {
            Store::Memory(m) => {
                m.take(key);
                Ok(())
            }
            Store::Redis(r) => r.timed("delete", r.conn().del::<_, ()>(r.key(key))).await,
        }
    }

    /// Prepends to a list kept to `max` entries, refreshing its TTL.
    pub async fn push_capped(
        &self,
        key: &str,
        value: &str,
        max: usize,
        ttl: Duration,
    ) -> StoreResult<()> {
        match self {
            Store::Memory(m) => {
                m.push_capped(key, value, max, ttl);
                Ok(())
            }
            Store::Redis(r) => {
                let key = r.key(key);
                let mut conn = r.conn();
                r.timed(
                    "push",
                    redis::pipe()
                        .atomic()
                        .lpush(&key, value)
                        .ltrim(&key, 0, max as isize - 1)
                        .pexpire(&key, millis(ttl) as i64)
                        .query_async::<()>(&mut conn),
                )
                .await
            }
        }
    }

    pub async fn list(&self, key: &str) -> StoreResult<Vec<String>> {
        match self {
            Store::Memory(m) => Ok(m.list(key)),
            Store::Redis(r) => r.timed("list", r.conn().lrange(r.key(key), 0, -1)).await,
        }
    }

    /// How many live keys start with `prefix` (for gauges; Redis: SCAN, never KEYS).
    pub async fn count_prefix(&self, prefix: &str) -> StoreResult<usize> {
        match self {
            Store::Memory(m) => Ok(m.count_prefix(prefix)),
            Store::Redis(r) => {
                let mut conn = r.conn();
                let pattern = format!("{}{prefix}*", r.key(""));
                r.timed("count", async {
                    let mut iter: redis::AsyncIter<String> = conn.scan_match(&pattern).await?;
                    let mut count = 0;
                    while let Some(key) = iter.next_item().await {
                        key?;
                        count += 1;
                    }
                    Ok(count)
                })
                .await
            }
        }
    }

    /// Whether the store answers (readiness).
    pub async fn ping(&self) -> StoreResult<()> {
        match self {
            Store::Memory(_) => Ok(()),
            Store::Redis(r) => {
                let mut conn = r.conn();
                r.timed("ping", redis::cmd("PING").query_async::<String>(&mut conn))
                    .await
                    .map(|_| ())
            }
        }
    }

    /// A wake-up hint to subscribers of `channel`; may be lost, so never the only signal.
    pub async fn publish(&self, channel: &str, message: &str) -> StoreResult<()> {
        match self {
            Store::Memory(m) => {
                let _ = m.messages.send((channel.to_owned(), message.to_owned()));
                Ok(())
            }
            Store::Redis(r) => {
                r.timed(
                    "publish",
                    r.conn().publish::<_, _, ()>(r.key(channel), message),
                )
                .await
            }
        }
    }

    /// Delivers messages published on `channels` to `deliver`, for as long as the process runs,
    /// resubscribing after every lost connection. After each (re)subscription `deliver` gets
    /// `("", "")`: messages may have been lost, so everyone waiting should look again.
    pub async fn subscribe(&self, channels: Vec<String>, deliver: impl Fn(&str, &str)) {
        match self {
            Store::Memory(m) => {
                let mut receiver = m.messages.subscribe();
                deliver("", "");
                loop {
                    match receiver.recv().await {
                        Ok((channel, message)) if channels.contains(&channel) => {
                            deliver(&channel, &message)
                        }
                        Ok(_) => {}
                        Err(broadcast::error::RecvError::Lagged(_)) => deliver("", ""),
                        Err(broadcast::error::RecvError::Closed) => return,
                    }
                }
            }
            Store::Redis(r) => {
                // Retries back off to 5 s; an outage is logged once, not at every retry.
                let mut pause = Duration::from_millis(250);
                let mut failing = false;
                loop {
                    let subscribed = std::sync::atomic::AtomicBool::new(false);
                    let result = r
                        .subscribe_once(&channels, &|channel: &str, message: &str| {
                            if channel.is_empty() && failing {
                                tracing::info!("Redis subscription restored");
                            }
                            subscribed.store(true, std::sync::atomic::Ordering::Relaxed);
                            deliver(channel, message)
                        })
                        .await;
                    if subscribed.load(std::sync::atomic::Ordering::Relaxed) {
                        failing = false;
                        pause = Duration::from_millis(250);
                    }
                    if let Err(error) = result {
                        if !failing {
                            tracing::warn!(%error, "Redis subscription lost; retrying in the background (held statements still re-check on a timer)");
                        }
                        failing = true;
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

fn millis(ttl: Duration) -> u64 {
    ttl.as_millis().clamp(1, u64::MAX as u128) as u64
}

/// Redis, through an auto-reconnecting multiplexed connection.
#[derive(Clone)]
pub struct RedisStore {
    client: redis::Client,
    manager: ConnectionManager,
    prefix: String,
    metrics: Arc<Metrics>,
}

impl RedisStore {
    /// Runs one Redis operation, timing it and counting its failure.
    async fn timed<T>(
        &self,
        operation: &'static str,
        run: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> StoreResult<T> {
        let started = Instant::now();
        let result = run.await;
        self.metrics
            .store_seconds
            .observe(started.elapsed().as_secs_f64());
        result.map_err(|error| {
            self.metrics.store_error(operation);
            StoreError::from(error)
        })
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn conn(&self) -> ConnectionManager {
        self.manager.clone()
    }

    async fn subscribe_once(
        &self,
        channels: &[String],
        deliver: &impl Fn(&str, &str),
    ) -> StoreResult<()> {
        let mut pubsub = tokio::time::timeout(REDIS_TIMEOUT, self.client.get_async_pubsub())
            .await
            .map_err(|_| StoreError {
                backend: "Redis",
                reason: "connect timed out".into(),
            })??;
        for channel in channels {
            pubsub.subscribe(self.key(channel)).await?;
        }
        deliver("", "");
        let mut messages = pubsub.into_on_message();
        while let Some(message) = messages.next().await {
            let channel = message.get_channel_name();
            let channel = channel.strip_prefix(&self.prefix).unwrap_or(channel);
            let payload: String = message.get_payload().unwrap_or_default();
            deliver(channel, &payload);
        }
        Err(StoreError {
            backend: "Redis",
            reason: "subscription closed".into(),
        })
    }
}

/// The embedded default: one process, nothing shared.
pub struct MemoryStore {
    values: Mutex<HashMap<String, (String, Instant)>>,
    lists: Mutex<HashMap<String, (VecDeque<String>, Instant)>>,
    messages: broadcast::Sender<(String, String)>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore {
            values: Mutex::default(),
            lists: Mutex::default(),
            messages: broadcast::channel(1024).0,
        }
    }
}

impl MemoryStore {
    fn set(&self, key: &str, value: &str, ttl: Duration) {
        let mut values = self.values.lock().expect("memory store lock");
        let now = Instant::now();
        // Expired entries are dropped as new ones arrive, so memory stays bounded by live keys.
        if values.len() > 1024 && values.len().is_power_of_two() {
            values.retain(|_, (_, deadline)| *deadline > now);
        }
        values.insert(key.to_owned(), (value.to_owned(), now + ttl));
    }

    fn set_new(&self, key: &str, value: &str, ttl: Duration) -> bool {
        let mut values = self.values.lock().expect("memory store lock");
        let now = Instant::now();
        if values.get(key).is_some_and(|(_, deadline)| *deadline > now) {
            return false;
        }
        values.insert(key.to_owned(), (value.to_owned(), now + ttl));
        true
    }

    fn get(&self, key: &str) -> Option<String> {
        let values = self.values.lock().expect("memory store lock");
        values
            .get(key)
            .filter(|(_, deadline)| *deadline > Instant::now())
            .map(|(value, _)| value.clone())
    }

    fn take(&self, key: &str) -> Option<String> {
        let mut values = self.values.lock().expect("memory store lock");
        values
            .remove(key)
            .filter(|(_, deadline)| *deadline > Instant::now())
            .map(|(value, _)| value)
    }

    fn push_capped(&self, key: &str, value: &str, max: usize, ttl: Duration) {
        let mut lists = self.lists.lock().expect("memory store lock");
        let now = Instant::now();
        let entry = lists
            .entry(key.to_owned())
            .or_insert_with(|| (VecDeque::new(), now));
        if entry.1 <= now {
            entry.0.clear();
        }
        entry.0.push_front(value.to_owned());
        entry.0.truncate(max);
        entry.1 = now + ttl;
    }

    fn count_prefix(&self, prefix: &str) -> usize {
        let now = Instant::now();
        self.values
            .lock()
            .expect("memory store lock")
            .iter()
            .filter(|(key, (_, deadline))| key.starts_with(prefix) && *deadline > now)
            .count()
    }

    fn list(&self, key: &str) -> Vec<String> {
        let lists = self.lists.lock().expect("memory store lock");
        lists
            .get(key)
            .filter(|(_, deadline)| *deadline > Instant::now())
            .map(|(list, _)| list.iter().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_values_expire_and_take_is_once() {
        let store = Store::memory();
        store
            .set("a", "1", Duration::from_millis(50))
            .await
            .unwrap();
        assert!(store
            .set_new("a", "2", Duration::from_secs(1))
            .await
            .is_ok_and(|set| !set));
        assert_eq!(store.take("a").await.unwrap().as_deref(), Some("1"));
        assert_eq!(store.take("a").await.unwrap(), None);
        store
            .set("b", "1", Duration::from_millis(20))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert_eq!(store.get("b").await.unwrap(), None);
        assert!(store
            .set_new("b", "2", Duration::from_secs(1))
            .await
            .unwrap());
    }

    #[tokio::test]
    async fn memory_lists_are_capped_newest_first() {
        let store = Store::memory();
        for n in 0..5 {
            store
                .push_capped("l", &n.to_string(), 3, Duration::from_secs(5))
                .await
                .unwrap();
        }
        assert_eq!(store.list("l").await.unwrap(), ["4", "3", "2"]);
    }
}
