//! The client listener: binds (TCP, and the Unix socket when configured), accepts, and runs
//! each connection (handshake, authentication, session) in its own task with a span naming
//! the connection.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rand::Rng;
use tokio::net::TcpListener;
use tracing::Instrument;

use pgstepup_config::{AuthMethod, Config};
use pgstepup_protocol::startup::CancelRequest;
use pgstepup_protocol::{Connection, SocketFile};
use pgstepup_upstream::{UpstreamError, UpstreamSettings, VerifierSource};

use pgstepup_audit::{AuditLog, Record};
use pgstepup_classify::SearchPath;
use pgstepup_metrics::{IntGauge, Metrics, Rejection};
use pgstepup_protocol::backend::{sqlstate, PgError};
use pgstepup_stepup::StepUp;

use crate::cancel::{CancelRegistry, CancelTarget};
use crate::client_auth::{authenticate, LoggedIn, Refusal};
use crate::client_socket::{ClientAddr, ClientSocket};
use crate::gate::{Gate, SessionContext};
use crate::handshake::{open, Opening};
use crate::lifecycle::Lifecycle;
use crate::policy_store::PolicyStore;
use crate::proxy::{Session, SessionParts};
use crate::server_query::exchange;
use crate::tls::{self, ClientTls};
use crate::upstream_pool::{IdleUpstream, UpstreamPool};
use crate::workers::Workers;

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: String,
        source: std::io::Error,
    },
    #[error("client TLS: {0}")]
    Tls(String),
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error(transparent)]
    Policy(#[from] pgstepup_policy::PolicyError),
    #[error("audit trail: {0}")]
    Audit(#[from] pgstepup_audit::AuditError),
    #[error("cannot start the session threads: {0}")]
    Workers(std::io::Error),
}

/// State shared by every connection.
/// Re-reads what can change without a restart. Open connections are not disturbed.
pub struct Reloader(Arc<Shared>);

impl Reloader {
    /// The instance's metrics (the web certificate's reload counts there too).
    pub fn metrics(&self) -> &Metrics {
        &self.0.metrics
    }

    pub fn reload(&self, trigger: &str) {
        // Errors are logged and audited by the store; the old policy stays in force.
        let _ = self.0.policy.reload(trigger);
        let config = &self.0.config;
        if let (Some(cert), Some(key)) = (&config.tls.cert, &config.tls.key) {
            match tls::load(cert, key) {
                Ok(loaded) => {
                    *self.0.tls.write().expect("tls lock") = Some(loaded);
                    self.0.metrics.certificate_reload(true);
                    tracing::info!(trigger, cert = %cert.display(), "client TLS certificate reloaded");
                }
                Err(error) => {
                    self.0.metrics.certificate_reload(false);
                    tracing::error!(trigger, %error, "client TLS certificate not reloaded; the previous one stays in use")
                }
            }
        }
    }
}

/// What the proxy shares with the rest of the instance.
pub struct ProxyParts {
    pub stepup: StepUp,
    pub audit: Arc<AuditLog>,
    pub metrics: Arc<Metrics>,
}

impl Shared {
    /// The client-facing TLS set-up in force.
    pub(crate) fn tls(&self) -> Option<ClientTls> {
        self.tls.read().expect("tls lock").clone()
    }
}

pub(crate) struct Shared {
    pub config: Config,
    pub upstream: UpstreamSettings,
    /// Replaced on reload (SIGHUP): new handshakes use the new certificate.
    tls: std::sync::RwLock<Option<ClientTls>>,
    /// `None` in passthrough mode.
    pub verifiers: Option<VerifierSource>,
    pub cancels: Arc<CancelRegistry>,
    /// Secret behind unknown users' mock SCRAM salts.
    pub mock_secret: [u8; 32],
    pub policy: Arc<PolicyStore>,
    pub audit: Arc<AuditLog>,
    pub stepup: StepUp,
    pub metrics: Arc<Metrics>,
    pub lifecycle: Lifecycle,
    /// Name prefix of the never-existing function refused statements are swapped for.
    pub refusal_marker: Arc<str>,
    /// Upstream connections kept for reuse; `None` when off or in passthrough.
    pub upstream_pool: Option<Arc<UpstreamPool>>,
    next_id: AtomicU64,
}

/// A bound, ready-to-run proxy.
pub struct Proxy {
    shared: Arc<Shared>,
    listener: TcpListener,
    /// `proxy.unix_socket_dir`'s socket, when configured.
    unix: Option<SocketFile>,
    workers: Workers,
}

impl Proxy {
    /// Prepares TLS and the verifier source and binds the client listener.
    /// Binds the client listener. Step-up state, the audit trail and the metrics are shared
    /// with the web side, so they come from the caller.
    pub async fn bind(config: Config, parts: ProxyParts) -> Result<Self, ProxyError> {
        let ProxyParts {
            stepup,
            audit,
            metrics,
        } = parts;
        let upstream = UpstreamSettings::from_config(&config)?;
        let tls = match (&config.tls.cert, &config.tls.key) {
            (Some(cert), Some(key)) => Some(tls::load(cert, key).map_err(ProxyError::Tls)?),
            _ => None,
        };
        let verifiers = match config.auth_method() {
            AuthMethod::Passthrough => None,
            AuthMethod::Scram => Some(match &config.auth.file {
                Some(path) => VerifierSource::from_file(path)?,
                None => VerifierSource::auth_query(upstream.clone(), config.auth.query.clone()),
            }),
        };
        let address = config.proxy.listen.clone();
        let listener = TcpListener::bind(&address)
            .await
            .map_err(|source| ProxyError::Bind { address, source })?;
        let unix = match &config.proxy.unix_socket_dir {
            None => None,
            Some(dir) => {
                // Named after the TCP port as libpq names it, so `psql -h DIR -p PORT` finds
                // it; open to every local user like PostgreSQL's own (the directory's
                // permissions decide who reaches it).
                let port = listener.local_addr().map(|a| a.port()).unwrap_or_default();
                let path = dir.join(format!(".s.PGSQL.{port}"));
                Some(
                    SocketFile::bind(&path, 0o777).map_err(|source| ProxyError::Bind {
                        address: path.display().to_string(),
                        source,
                    })?,
                )
            }
        };
        let mut mock_secret = [0u8; 32];
        rand::rng().fill(&mut mock_secret);
        let policy = Arc::new(PolicyStore::load(
            pgstepup_policy::PolicySource::for_config(
                config.path.as_deref(),
                config.policy.as_ref(),
            ),
            config.proxy.statement_cache_entries,
            config.proxy.observe,
            audit.clone(),
            metrics.clone(),
        )?);
        let nonce: u64 = rand::rng().random();
        let refusal_marker: Arc<str> = format!("pgstepup_refused_{nonce:016x}_").into();
        let upstream_pool = UpstreamPool::from_config(&config, metrics.clone()).map(Arc::new);
        let shared = Arc::new(Shared {
            upstream_pool,
            config,
            upstream,
            tls: std::sync::RwLock::new(tls),
            verifiers,
            cancels: Arc::default(),
            mock_secret,
            policy,
            audit,
            stepup,
            metrics,
            lifecycle: Lifecycle::default(),
            refusal_marker,
            next_id: AtomicU64::new(1),
        });
        let session_shared = shared.clone();
        let threads = shared.config.worker_threads();
        let spill_after = shared.config.proxy.spill_after_sessions;
        let yield_before_sleep = shared.config.proxy.yield_before_sleep;
        let workers = Workers::start(
            threads,
            spill_after,
            yield_before_sleep,
            move |socket, peer, id| {
                let span = tracing::info_span!(
                    "conn",
                    id,
                    %peer,
                    user = tracing::field::Empty,
                    application_name = tracing::field::Empty
                );
                handle_client(session_shared.clone(), socket, peer, id).instrument(span)
            },
        )
        .map_err(ProxyError::Workers)?;
        Ok(Proxy {
            shared,
            listener,
            unix,
            workers,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Where the upstream is.
    pub fn upstream_url(&self) -> &pgstepup_config::UpstreamUrl {
        &self.shared.upstream.url
    }

    /// The Unix socket's path, when one is configured.
    fn unix_socket(&self) -> Option<&std::path::Path> {
        self.unix.as_ref().map(SocketFile::path)
    }

    /// The policy in force, to reload it (SIGHUP).
    pub fn policy(&self) -> Arc<PolicyStore> {
        self.shared.policy.clone()
    }

    /// What SIGHUP runs: the policy and the client-facing certificate, read again.
    pub fn reloader(&self) -> Reloader {
        Reloader(self.shared.clone())
    }

    /// Accepts clients until `shutdown` resolves; watches the policy file meanwhile.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let watcher = tokio::spawn(self.shared.policy.clone().watch(POLICY_POLL));
        let _stop_watching = AbortOnDrop(watcher);
        let (wake_ups, mut cancels) = self.shared.stepup.listen();
        let _stop_listening = AbortOnDrop(tokio::spawn(wake_ups));
        let shared = self.shared.clone();
        let _stop_cancels = AbortOnDrop(tokio::spawn(async move {
            // Cancel requests that reached another instance for one of our sessions.
            while let Some((pid, secret)) = cancels.next().await {
                cancel_locally(
                    &shared,
                    &CancelRequest {
                        pid,
                        secret: secret.into(),
                    },
                );
            }
        }));
        tracing::info!(
            listen = %self.shared.config.proxy.listen,
            unix_socket = ?self.unix_socket(),
            upstream = %self.shared.upstream.url,
            tls = self.shared.tls().is_some(),
            auth = ?self.shared.config.auth_method(),
            "pgstepup accepting connections"
        );
        loop {
            let accepted = tokio::select! {
                _ = &mut shutdown => break,
                accepted = self.listener.accept() => accepted
                    .map(|(tcp, peer)| (ClientSocket::Tcp(tcp), ClientAddr::Tcp(peer))),
                accepted = accept_unix(self.unix.as_ref()) => accepted.map(|unix| {
                    let peer = ClientAddr::of_unix(&unix);
                    (ClientSocket::Unix(unix), peer)
                }),
            };
            let (socket, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::error!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
            self.workers.assign(socket, peer, id);
        }
        // Stop accepting (the listeners close here, the socket file goes), then let sessions
        // finish.
        drop(self.listener);
        drop(self.unix);
        let grace = Duration::from_secs(self.shared.config.proxy.shutdown_grace_secs);
        let sessions = self.shared.lifecycle.sessions();
        tracing::info!(
            sessions,
            grace_secs = grace.as_secs(),
            "draining: no new connections; waiting for running statements and open transactions"
        );
        let forced = self.shared.lifecycle.drain(grace).await;
        let reason = format!(
            "{sessions} session(s) open at shutdown; {forced} still busy after the {} s grace period were closed with 57P01",
            grace.as_secs()
        );
        tracing::info!(%reason, "drained");
        self.workers.stop().await;
        if let Err(error) = self.shared.audit.record(&Record {
            event: "shutdown",
            reason: Some(reason),
            ..Default::default()
        }) {
            tracing::error!(%error, "cannot write the audit trail");
        }
    }
}

/// This instance's name in audit records: host name and client port.
/// How often the policy file's modification time is checked.
const POLICY_POLL: Duration = Duration::from_secs(1);

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The next client on the Unix socket; never completes without one.
async fn accept_unix(unix: Option<&SocketFile>) -> std::io::Result<tokio::net::UnixStream> {
    match unix {
        Some(unix) => unix.accept().await,
        None => std::future::pending().await,
    }
}

/// A phase of a client's connection (the handshake, the wrap-up) as a future of its own on the
/// heap, polled through `dyn`. Inlined into one future, the handshake's and Redis calls' states
/// sized the connection task at ~11 KB and its stack frames at 10-12 KB each, probed page by
/// page; apart, the connection task stays small while it waits for the relay loop's task.
type BoxedPhase<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

async fn handle_client(shared: Arc<Shared>, socket: ClientSocket, peer: ClientAddr, id: u64) {
    if let ClientSocket::Tcp(tcp) = &socket {
        let _ = tcp.set_nodelay(true);
    }
    let metrics = shared.metrics.clone();
    metrics.client_connections_total.inc();
    metrics.client_connections.inc();
    let _open = GaugeGuard(&metrics.client_connections);
    let Some((session, login, _upstream)) = boxed(|| start(&shared, socket, peer, id)).await else {
        return;
    };
    let key = session.cancel_pid();
    // The relay loop is a task of its own, polled straight from tokio's task cell: every
    // wake-up of it then touches its state alone, not this connection task's and a boxed
    // phase's on the way in. It is not instrumented: its events name the connection's span
    // as their parent, and holds enter it (see `Gate::span`).
    let idle = match tokio::spawn(session.run()).await {
        Ok((ending, idle)) => {
            tracing::debug!(?ending, "session ended");
            idle
        }
        Err(error) => {
            tracing::error!(%error, "session task failed");
            None
        }
    };
    boxed(|| finish(&shared, key, login, idle)).await;
}

/// Builds a phase's future on the heap. Never inlined, and handed what the future is made of
/// rather than the future: a future is built (at the size of all its states) in the frame of
/// whoever calls the async fn, and that frame must not become the connection task's.
#[inline(never)]
fn boxed<'a, T, F>(make: impl FnOnce() -> F) -> BoxedPhase<'a, T>
where
    F: Future<Output = T> + Send + 'a,
{
    Box::pin(make())
}

/// Handshake and authentication within `limits.startup_timeout_secs`, then the session's
/// cancel key shared with the other instances. The upstream connection is counted from here
/// until the guard returned with the session drops.
async fn start(
    shared: &Arc<Shared>,
    socket: ClientSocket,
    peer: ClientAddr,
    id: u64,
) -> Option<(Session, Bytes, GaugeGuard<'_>)> {
    let startup_timeout = Duration::from_secs(shared.config.limits.startup_timeout_secs);
    let started = tokio::time::timeout(startup_timeout, establish(shared, socket, peer, id)).await;
    let (session, login) = match started {
        Err(_) => {
            tracing::info!("startup timed out");
            shared.metrics.rejected(Rejection::StartupTimeout);
            return None;
        }
        Ok(started) => started?,
    };
    shared.metrics.upstream_connections.inc();
    let upstream = GaugeGuard(&shared.metrics.upstream_connections);
    if let (Some(pid), true) = (session.cancel_pid(), shared.stepup.is_shared()) {
        if let Err(error) = shared.stepup.register_cancel_key(pid).await {
            tracing::warn!(%error, "cancel key not shared; cancels through other instances will not reach this session");
        }
    }
    Some((session, login, upstream))
}

/// After the session: its cancel key withdrawn, and an upstream connection left at rest kept
/// for the next client of the same login.
async fn finish(shared: &Arc<Shared>, key: Option<i32>, login: Bytes, idle: Option<IdleUpstream>) {
    if let (Some(pid), true) = (key, shared.stepup.is_shared()) {
        let _ = shared.stepup.forget_cancel_key(pid).await;
    }
    if let (Some(idle), Some(pool)) = (idle, &shared.upstream_pool) {
        pool.put_back(login, idle).await;
        pool.sweep_this_thread();
    }
}

/// Handshake and authentication; `None` when the connection ended (refused, or a cancel).
/// With the session comes its StartupMessage, which names the login its upstream connection
/// may be reused for.
async fn establish(
    shared: &Arc<Shared>,
    socket: ClientSocket,
    peer: ClientAddr,
    id: u64,
) -> Option<(Session, Bytes)> {
    let (mut client, startup) = match open(shared, socket, peer).await {
        Ok(Opening::Session { conn, startup }) => (*conn, startup),
        Ok(Opening::Cancelled) => return None,
        Err((conn, refusal)) => {
            if let Some(conn) = conn {
                refuse(shared, conn, &refusal).await;
            }
            return None;
        }
    };
    let user = startup.user().unwrap_or_default().to_owned();
    let application_name = startup
        .param("application_name")
        .unwrap_or_default()
        .to_owned();
    tracing::Span::current().record("user", user.as_str());
    tracing::Span::current().record("application_name", application_name.as_str());
    if shared.metrics.client_connections.get() as usize
        > shared.config.limits.max_client_connections
    {
        let error = PgError::fatal(
            sqlstate::TOO_MANY_CONNECTIONS,
            "sorry, too many clients already",
        )
        .with_hint("pgstepup limits.max_client_connections is reached; try again later.");
        refuse(shared, client, &Refusal::Error(error)).await;
        return None;
    }
    let mut logged_in = match authenticate(shared, &mut client, &startup).await {
        Ok(l) => l,
        Err(refusal) => {
            refuse(shared, client, &refusal).await;
            return None;
        }
    };
    if let Err(error) = learn_search_path(&mut logged_in).await {
        refuse(shared, client, &Refusal::Error(error)).await;
        return None;
    }
    let minor = logged_in
        .reply
        .negotiated_minor
        .unwrap_or(startup.minor)
        .min(startup.minor);
    let cancel_key = logged_in.reply.backend_key.clone().map(|(pid, secret)| {
        let secret_len = if minor >= 2 { 32 } else { 4 };
        shared
            .cancels
            .register(CancelRequest { pid, secret }, secret_len)
    });
    let upstream_roles = upstream_roles(shared, &user).await;
    let context = SessionContext {
        connection_id: id,
        client_addr: peer.to_string(),
        application_name,
        audit: shared.audit.clone(),
        metrics: shared.metrics.clone(),
    };
    let mut gate = Gate::new(
        shared.policy.clone(),
        user,
        upstream_roles,
        shared.refusal_marker.clone(),
        context,
    );
    if let Some(path) = &logged_in.reply.search_path {
        gate.widen_search_path(&SearchPath::from_value(path));
    }
    tracing::info!(
        database = startup.database().unwrap_or_default(),
        tls = client.stream().is_tls(),
        "session started"
    );
    let parts = SessionParts {
        reply: logged_in.reply,
        cancel_key,
        gate,
        stepup: shared.stepup.clone(),
        max_backlog_bytes: shared.config.limits.max_message_bytes,
        lifecycle: shared.lifecycle.join(),
        idle_timeout: (shared.config.limits.client_idle_timeout_secs > 0)
            .then(|| Duration::from_secs(shared.config.limits.client_idle_timeout_secs)),
        upstream_opened: logged_in.opened,
        reuse_upstream: shared.upstream_pool.is_some(),
        shared: shared.clone(),
    };
    match Session::start(client, logged_in.upstream, parts).await {
        Ok(session) => Some((session, startup.raw().clone())),
        Err((client, error)) => {
            refuse(shared, client, &Refusal::Error(error)).await;
            None
        }
    }
}

/// The upstream roles the user is a member of, when the policy maps them (looked up by the
/// auth login; without one, role mapping is by user name only).
async fn upstream_roles(shared: &Shared, user: &str) -> Vec<String> {
    if !shared.policy.current().policy.uses_upstream_roles() {
        return Vec::new();
    }
    let Some(source) = &shared.verifiers else {
        return Vec::new();
    };
    source.member_of(user).await.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "upstream role lookup failed; mapping by user name only");
        Vec::new()
    })
}

/// Decrements a gauge when dropped.
struct GaugeGuard<'a>(&'a IntGauge);

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The metric reason for a refused connection, from the error it was refused with.
fn rejection(refusal: &Refusal) -> Option<Rejection> {
    let code = match refusal {
        Refusal::Gone => return None,
        Refusal::Upstream(frame) => pgstepup_protocol::error_field(frame.body(), b'C')?,
        Refusal::Error(error) => error.code.to_owned(),
    };
    Some(match code.as_str() {
        sqlstate::INVALID_PASSWORD => Rejection::AuthFailed,
        sqlstate::INVALID_AUTHORIZATION => match refusal {
            Refusal::Error(e) if e.message.contains("TLS") => Rejection::TlsRequired,
            _ => Rejection::AuthFailed,
        },
        sqlstate::TOO_MANY_CONNECTIONS => Rejection::TooMany,
        sqlstate::ADMIN_SHUTDOWN => Rejection::ShuttingDown,
        sqlstate::FEATURE_NOT_SUPPORTED => Rejection::Unsupported,
        sqlstate::CONNECTION_FAILURE | sqlstate::CANNOT_CONNECT_NOW => {
            Rejection::UpstreamUnavailable
        }
        code if code.starts_with("28") => Rejection::AuthFailed,
        _ => Rejection::Protocol,
    })
}

async fn refuse(shared: &Shared, mut conn: Connection, refusal: &Refusal) {
    if let Some(reason) = rejection(refusal) {
        shared.metrics.rejected(reason);
        if matches!(reason, Rejection::UpstreamUnavailable) {
            shared.metrics.upstream_connect_errors.inc();
        }
    }
    if let Some(frame) = refusal.frame() {
        tracing::info!(?refusal, "connection refused");
        conn.queue(&frame);
    }
    conn.shutdown().await;
}

/// Translates a client's cancel request to the upstream's key and sends it, in a task of its
/// own so it completes even if the client closes its cancel connection at once.
pub(crate) fn forward_cancel(shared: &Shared, request: CancelRequest, peer: ClientAddr) {
    if shared.cancels.is_local(request.pid) || !shared.stepup.is_shared() {
        if !cancel_locally(shared, &request) {
            tracing::info!(%peer, "cancel request with an unknown key ignored");
        }
        return;
    }
    // Maybe another instance's session: the state store knows which.
    let stepup = shared.stepup.clone();
    tokio::spawn(async move {
        match stepup.route_cancel(request.pid, &request.secret).await {
            Ok(true) => tracing::debug!(%peer, "cancel request passed to the owning instance"),
            Ok(false) => tracing::info!(%peer, "cancel request with an unknown key ignored"),
            Err(error) => tracing::warn!(%error, "cannot route a cancel request"),
        }
    });
}

/// Acts on a cancel request for one of this instance's sessions; false if the key is not ours.
fn cancel_locally(shared: &Shared, request: &CancelRequest) -> bool {
    let upstream = match shared.cancels.resolve(request) {
        None => return false,
        Some(CancelTarget::Held) => {
            tracing::info!("cancel request for a held statement");
            return true;
        }
        Some(CancelTarget::Upstream(upstream)) => upstream,
    };
    let settings = shared.upstream.clone();
    tokio::spawn(async move {
        if let Err(e) = pgstepup_upstream::cancel(&settings, &upstream).await {
            tracing::warn!(error = %e, "forwarding cancel request failed");
        }
    });
    true
}

/// Asks a newly logged-in upstream connection for its search_path (the role's and database's
/// defaults and the startup options have set it by now), unless its login already did: where
/// the session's unqualified table names may be found before it changes the path itself.
async fn learn_search_path(logged_in: &mut LoggedIn) -> Result<(), PgError> {
    if logged_in.reply.search_path.is_some() {
        return Ok(());
    }
    let value = exchange(
        &mut logged_in.upstream,
        &mut logged_in.reply,
        "SHOW search_path",
    )
    .await
    .map_err(|reason| {
        PgError::fatal(
            sqlstate::CANNOT_CONNECT_NOW,
            format!(
                "pgstepup cannot read the session's search_path from the upstream server: {reason}"
            ),
        )
    })?;
    logged_in.reply.search_path =
        Some(String::from_utf8_lossy(&value.unwrap_or_default()).into_owned());
    Ok(())
}
