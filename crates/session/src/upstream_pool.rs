//! Upstream connections kept for the next client, as pgbouncer's session pooling keeps them.
//!
//! A client that ends its session with Terminate, outside a transaction and with nothing in
//! flight, leaves its upstream connection here once `DISCARD ALL` has put it back in the state
//! of a fresh login (settings, prepared statements, temporary tables, LISTENs, advisory locks).
//! The next client whose StartupMessage is byte for byte the same (same user, database,
//! parameters and protocol version), once pgstepup has verified its password itself, gets it
//! instead of a new login: no backend start-up in PostgreSQL. Only in `scram` auth mode: in
//! passthrough every client must prove itself to PostgreSQL, so its connection is its own.
//!
//! Each session thread keeps its own connections (they are registered with the runtime that
//! opened them), up to `upstream.pool_size` across the instance: one count shared by the
//! threads, so a thread serving most sessions may keep most of the pool. A connection is not
//! reused once it has been idle past `upstream.pool_idle_timeout_secs` or open past
//! `upstream.pool_lifetime_secs`, nor when the server sent anything while it was parked (a
//! FATAL, or a close), nor when, parked longer than `upstream.pool_check_delay_secs`, it does
//! not answer an empty query in time.

use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use pgstepup_config::Config;
use pgstepup_metrics::Metrics;
use pgstepup_protocol::Connection;
use pgstepup_upstream::LoginReply;

use crate::server_query::exchange;

/// What resets a connection for its next client: everything a session can leave behind.
const RESET: &str = "DISCARD ALL";

/// How long the reset may take before the connection is closed instead.
const RESET_TIMEOUT: Duration = Duration::from_secs(5);

/// An upstream connection whose client left it idle and in step: outside a transaction,
/// every request answered, nothing half sent.
pub(crate) struct IdleUpstream {
    pub server: Connection,
    /// What its login said (relayed again to the next client: parameters, notices).
    pub login: LoginReply,
    pub opened: Instant,
}

struct Parked {
    /// The raw StartupMessage of the login.
    key: Bytes,
    upstream: IdleUpstream,
    since: Instant,
}

thread_local! {
    /// This session thread's idle connections, oldest first.
    static PARKED: RefCell<Vec<Parked>> = const { RefCell::new(Vec::new()) };
}

/// The instance's reuse settings; the connections themselves are per session thread.
pub(crate) struct UpstreamPool {
    /// At most this many parked across the instance (`upstream.pool_size`).
    size: usize,
    /// How many are parked now, on all session threads.
    parked: AtomicUsize,
    idle_timeout: Duration,
    lifetime: Duration,
    check_delay: Duration,
    check_timeout: Duration,
    metrics: Arc<Metrics>,
}

impl UpstreamPool {
    /// `None` when reuse is off (`upstream.pool_size = 0`) or cannot apply (passthrough).
    pub(crate) fn from_config(config: &Config, metrics: Arc<Metrics>) -> Option<Self> {
        let size = config.upstream.pool_size;
        if size == 0 || config.auth_method() != pgstepup_config::AuthMethod::Scram {
            return None;
        }
        Some(UpstreamPool {
            size,
            parked: AtomicUsize::new(0),
            idle_timeout: Duration::from_secs(config.upstream.pool_idle_timeout_secs),
            lifetime: Duration::from_secs(config.upstream.pool_lifetime_secs),
            check_delay: Duration::from_secs(config.upstream.pool_check_delay_secs),
            check_timeout: Duration::from_secs(config.upstream.connect_timeout_secs),
            metrics,
        })
    }

    /// An idle connection logged in with exactly `startup`, if this thread has a usable one
    /// (the most recently parked: its caches are the warmest). Unusable ones met on the way
    /// are closed.
    pub(crate) async fn take(&self, startup: &[u8]) -> Option<IdleUpstream> {
        loop {
            let now = Instant::now();
            let found = PARKED.with_borrow_mut(|parked| {
                let at = parked.iter().rposition(|p| p.key == startup)?;
                Some(parked.remove(at))
            })?;
            self.count_unparked();
            let Parked {
                mut upstream,
                since,
                ..
            } = found;
            let idle = now.duration_since(since);
            let usable = idle < self.idle_timeout
                && now.duration_since(upstream.opened) < self.lifetime
                && upstream.server.is_quiet()
                && (idle < self.check_delay || self.answers(&mut upstream).await);
            if usable {
                self.metrics.upstream_reused_total.inc();
                return Some(upstream);
            }
            upstream.server.terminate().await;
        }
    }

    /// Whether the server answers an empty query, idle, within the connect timeout: a
    /// connection parked a while may have died without a word (a frozen backend, a network
    /// that dropped it), which a peek at the socket cannot tell.
    async fn answers(&self, upstream: &mut IdleUpstream) -> bool {
        match tokio::time::timeout(
            self.check_timeout,
            exchange(&mut upstream.server, &mut upstream.login, ""),
        )
        .await
        {
            Ok(Ok(_)) => true,
            Ok(Err(reason)) => {
                tracing::info!(
                    reason,
                    "a kept upstream connection failed its check; closed"
                );
                false
            }
            Err(_) => {
                tracing::info!("a kept upstream connection did not answer its check; closed");
                false
            }
        }
    }

    /// Resets `upstream` for the next client with `startup` and keeps it; closes it instead
    /// when it is too old or the reset fails. When the instance then keeps more than its pool
    /// size, this thread's oldest goes. Expired connections are closed on the way.
    pub(crate) async fn put_back(&self, startup: Bytes, mut upstream: IdleUpstream) {
        let now = Instant::now();
        self.close_expired(now).await;
        if now.duration_since(upstream.opened) >= self.lifetime {
            return upstream.server.terminate().await;
        }
        match tokio::time::timeout(
            RESET_TIMEOUT,
            exchange(&mut upstream.server, &mut upstream.login, RESET),
        )
        .await
        {
            Ok(Ok(_)) => {}
            Ok(Err(reason)) => {
                tracing::info!(reason, "upstream connection not reused");
                return upstream.server.terminate().await;
            }
            Err(_) => {
                tracing::warn!("{RESET} took over {RESET_TIMEOUT:?}; upstream connection closed");
                return upstream.server.terminate().await;
            }
        }
        let total = self.parked.fetch_add(1, Ordering::Relaxed) + 1;
        let evicted = PARKED.with_borrow_mut(|parked| {
            parked.push(Parked {
                key: startup,
                upstream,
                since: now,
            });
            (total > self.size).then(|| parked.remove(0))
        });
        self.metrics.upstream_connections.inc();
        self.metrics.upstream_idle_connections.inc();
        if let Some(mut oldest) = evicted {
            self.count_unparked();
            oldest.upstream.server.terminate().await;
        }
    }

    /// Closes this thread's connections idle or open too long.
    async fn close_expired(&self, now: Instant) {
        let expired: Vec<Parked> = PARKED.with_borrow_mut(|parked| {
            let (expired, kept) = std::mem::take(parked).into_iter().partition(|p| {
                now.duration_since(p.since) >= self.idle_timeout
                    || now.duration_since(p.upstream.opened) >= self.lifetime
            });
            *parked = kept;
            expired
        });
        for mut p in expired {
            self.count_unparked();
            p.upstream.server.terminate().await;
        }
    }

    /// Closes expired connections on this thread every so often, for as long as it keeps
    /// any (a pool nobody draws from must still let its backends go).
    pub(crate) fn sweep_this_thread(self: &Arc<Self>) {
        thread_local! {
            static SWEEPING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
        }
        if SWEEPING.replace(true) {
            return;
        }
        let pool = self.clone();
        let every = (self.idle_timeout / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                pool.close_expired(Instant::now()).await;
                if PARKED.with_borrow(Vec::is_empty) {
                    SWEEPING.set(false);
                    return;
                }
            }
        });
    }

    fn count_unparked(&self) {
        self.parked.fetch_sub(1, Ordering::Relaxed);
        self.metrics.upstream_connections.dec();
        self.metrics.upstream_idle_connections.dec();
    }
}
