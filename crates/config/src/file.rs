//! The configuration model, its TOML form, command-line overrides and validation.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::upstream_url::UpstreamUrl;

/// Why a configuration was refused. Every variant names where the value came from.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("{origin}: `{key}`: {reason}")]
    Invalid {
        /// The file, or "command line".
        origin: String,
        key: &'static str,
        reason: String,
    },
}

/// The whole configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub proxy: ProxyConfig,
    pub upstream: UpstreamConfig,
    pub tls: ClientTlsConfig,
    pub auth: AuthConfig,
    pub limits: LimitsConfig,
    pub web: WebConfig,
    pub redis: RedisConfig,
    pub step_up: StepUpConfig,
    pub audit: AuditConfig,
    pub log: LogConfig,
    /// The policy: `file = "..."`, or the policy itself inline (validated by pgstepup-policy).
    pub policy: Option<toml::Table>,
    /// The file the configuration was read from.
    #[serde(skip)]
    pub path: Option<PathBuf>,
    /// Where the values came from, for error messages.
    #[serde(skip)]
    pub origin: String,
}

/// The client-facing listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// `HOST:PORT` clients connect to.
    pub listen: String,
    /// How many statement shapes the classification cache keeps (full, it lets the oldest go
    /// for each new one).
    pub statement_cache_entries: usize,
    /// Report decisions without enforcing them (overrides the policy's `mode`).
    pub observe: bool,
    /// On SIGTERM: seconds running statements and open transactions get to finish before
    /// their sessions are closed (57P01).
    pub shutdown_grace_secs: u64,
    /// Session threads, each running its own runtime (a session stays on one); 0 = half the
    /// cores, at least two where there are two (Odyssey's `workers "auto"` is half, rounded
    /// up): a proxy usually shares its machine with PostgreSQL or the application, and each
    /// further busy thread adds wake-ups, CPU per transaction and latency tail there
    /// (benches/RESULTS.md, "Session threads: half the cores"). How many of them work depends
    /// on `spill_after_sessions`: the second of two gets sessions only past that many, when
    /// one thread would cap throughput (benches/RESULTS.md, 2026-12-06).
    pub worker_threads: usize,
    /// A session thread takes every new connection until it serves this many; only then does
    /// the next get any (once all are that full, the one with the fewest takes it). A few
    /// sessions on one thread keep its latency tail and CPU per transaction low on a machine
    /// shared with PostgreSQL; from about eight busy ones on two cores, one thread becomes
    /// the chain every transaction waits in while a core idles, and two serve more
    /// (benches/RESULTS.md, 2026-12-06, "two session threads from five sessions"). 0 = deal
    /// every connection to the thread with the fewest sessions.
    pub spill_after_sessions: usize,
    /// Before a session thread sleeps waiting for its sockets, it offers the CPU once
    /// (`sched_yield`): the backends and clients it has just written to then answer while it
    /// is still runnable, so their answers wake no sleeping thread and the next wake-up finds
    /// more of them ready. A cheap system call when nothing else wants the CPU. Turn it off on
    /// hosts whose cores the proxy shares with CPU-bound work, which would get a time slice
    /// ahead of the sessions at every yield (benches/RESULTS.md, "yield before sleeping").
    pub yield_before_sleep: bool,
    /// Also listen on a Unix socket in this directory, named `.s.PGSQL.PORT` after the TCP
    /// port as libpq expects (`psql -h DIR -p PORT`), for clients on the same machine.
    pub unix_socket_dir: Option<PathBuf>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            listen: "127.0.0.1:6432".into(),
            statement_cache_entries: 10_000,
            observe: false,
            shutdown_grace_secs: 30,
            worker_threads: 0,
            spill_after_sessions: 4,
            yield_before_sleep: true,
            unix_socket_dir: None,
        }
    }
}

/// How pgstepup reaches PostgreSQL.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// `postgres://[LOGIN[:PASSWORD]@]HOST[:PORT][/DB][?sslmode=MODE]`; a HOST (or `?host=`)
    /// that starts with `/` is the directory of PostgreSQL's Unix socket.
    pub url: String,
    /// TLS towards the upstream, with libpq's sslmode names (`?sslmode=` in the URL wins).
    pub tls: UpstreamTlsMode,
    /// PEM file of CA certificates for `verify-ca`/`verify-full`; the system roots otherwise.
    pub tls_root_cert: Option<PathBuf>,
    /// Seconds to wait for the upstream's TCP connect and login.
    pub connect_timeout_secs: u64,
    /// Upstream connections kept open for reuse once their client leaves (`scram` auth only:
    /// in passthrough every client must log in to PostgreSQL itself), across the instance;
    /// 0 turns reuse off. As pgbouncer's session pooling: a connection is reused only by a
    /// client with the same user, database and startup parameters, after `DISCARD ALL`.
    pub pool_size: usize,
    /// Seconds an unused pooled connection stays open (pgbouncer's server_idle_timeout).
    pub pool_idle_timeout_secs: u64,
    /// Seconds after its login past which a connection is closed rather than reused
    /// (pgbouncer's server_lifetime).
    pub pool_lifetime_secs: u64,
    /// A pooled connection unused this many seconds is checked with an empty query before it
    /// is handed out (pgbouncer's server_check_delay): a backend or network that died silently
    /// costs one timeout (`connect_timeout_secs`) and a fresh login, not a hung client. 0 =
    /// check every time.
    pub pool_check_delay_secs: u64,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            url: "postgres://127.0.0.1:5432".into(),
            tls: UpstreamTlsMode::Prefer,
            tls_root_cert: None,
            connect_timeout_secs: 10,
            pool_size: 20,
            pool_idle_timeout_secs: 600,
            pool_lifetime_secs: 3600,
            pool_check_delay_secs: 30,
        }
    }
}

/// libpq's sslmode, for the upstream leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamTlsMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// Client-facing TLS.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientTlsConfig {
    /// PEM certificate chain.
    pub cert: Option<PathBuf>,
    /// PEM private key.
    pub key: Option<PathBuf>,
    /// Refuse clients that do not negotiate TLS.
    pub require: bool,
}

/// How clients prove who they are.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// `scram` (pgstepup verifies the password itself; the default when a verifier source is
    /// configured) or `passthrough` (the upstream's own authentication is relayed; the default
    /// otherwise).
    pub method: Option<AuthMethod>,
    /// Query the auth login runs to fetch a user's verifier; `$1` is the user name.
    pub query: Option<String>,
    /// File of `"user" "SCRAM-SHA-256$..."` lines (pgbouncer's auth_file format).
    pub file: Option<PathBuf>,
}

/// See [`AuthConfig::method`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthMethod {
    Scram,
    Passthrough,
}

/// Per-connection limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest message accepted from a client, in bytes.
    pub max_message_bytes: usize,
    /// Seconds a client has to finish TLS and authentication.
    pub startup_timeout_secs: u64,
    /// Client connections served at once; more are refused (53300).
    pub max_client_connections: usize,
    /// Seconds a client may stay idle outside a transaction before it is closed (57P05);
    /// 0 = never.
    pub client_idle_timeout_secs: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_message_bytes: 256 * 1024 * 1024,
            startup_timeout_secs: 60,
            max_client_connections: 1000,
            client_idle_timeout_secs: 0,
        }
    }
}

/// The web listener (approval pages, metrics, health).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebConfig {
    pub listen: String,
    /// The address engineers open links at (`https://stepup.example.com`); it is also the
    /// WebAuthn origin, and its host the relying-party id. Default `http://localhost:PORT`.
    pub public_url: Option<String>,
    /// PEM certificate chain and key: serve HTTPS.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Serve `/metrics`, `/healthz` and `/readyz` on a listener of their own as well.
    pub metrics_listen: Option<String>,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            listen: "127.0.0.1:8443".into(),
            public_url: None,
            tls_cert: None,
            tls_key: None,
            metrics_listen: None,
        }
    }
}

/// Logging.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
}

/// Human-readable lines, or one JSON object per line (for log shippers).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

/// Shared state; absent means in-memory, single instance.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    pub url: Option<String>,
    /// Prefix of every key and channel, so several deployments can share one Redis.
    pub prefix: String,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: None,
            prefix: "pgstepup:".into(),
        }
    }
}

/// Step-up links, enrollment and registered keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StepUpConfig {
    /// Seconds an approval link works (an approval after the statement's hold timed out still
    /// elevates the user, so a re-run passes).
    pub link_ttl_secs: u64,
    /// Seconds an enrollment link works.
    pub enrollment_ttl_secs: u64,
    /// Where registered keys live: `postgres://...` (a table, shared by every instance) or a
    /// file path.
    pub credentials: String,
    /// The Unix socket admin commands (`pgstepup enroll`, `pgstepup keys`) use; only the
    /// service's own user may connect. Default `/tmp/.s.pgstepup.PORT` (the proxy's port).
    pub admin_socket: Option<PathBuf>,
}

impl Default for StepUpConfig {
    fn default() -> Self {
        StepUpConfig {
            link_ttl_secs: 600,
            enrollment_ttl_secs: 24 * 3600,
            credentials: "pgstepup-credentials.json".into(),
            admin_socket: None,
        }
    }
}

/// The audit trail.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// JSON-lines file to append to, or `-` for standard output.
    pub file: PathBuf,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig { file: "-".into() }
    }
}

/// Values given on the command line; each replaces the file's.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub upstream: Option<String>,
    pub web_listen: Option<String>,
    pub public_url: Option<String>,
    pub redis: Option<String>,
    pub admin_socket: Option<PathBuf>,
    pub metrics_listen: Option<String>,
    pub log_format: Option<LogFormat>,
    pub credentials: Option<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// `--observe`.
    pub observe: bool,
}

impl Config {
    /// Loads the file when given (built-in defaults otherwise), applies the overrides and
    /// validates the result.
    pub fn load(path: Option<&Path>, overrides: Overrides) -> Result<Self, ConfigError> {
        let mut config = match path {
            Some(path) => Self::from_file(path)?,
            None => Config {
                origin: "built-in defaults".into(),
                ..Config::default()
            },
        };
        config.apply(overrides);
        config.validate()?;
        Ok(config)
    }

    /// Loads the file and the overrides for an admin command (`enroll`, `keys`), which needs
    /// only the admin socket's path: what only the server needs (an upstream URL that a
    /// Kubernetes Deployment passes as a flag from a Secret, a verifier source) is not checked.
    pub fn load_for_admin(path: Option<&Path>, overrides: Overrides) -> Result<Self, ConfigError> {
        let mut config = match path {
            Some(path) => Self::from_file(path)?,
            None => Config::default(),
        };
        config.apply(overrides);
        Ok(config)
    }

    fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        let mut config: Config = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.into(),
            source: Box::new(source),
        })?;
        config.origin = path.display().to_string();
        config.path = Some(path.to_owned());
        Ok(config)
    }

    fn apply(&mut self, o: Overrides) {
        let cli = o.listen.is_some()
            || o.upstream.is_some()
            || o.web_listen.is_some()
            || o.public_url.is_some()
            || o.redis.is_some()
            || o.admin_socket.is_some()
            || o.metrics_listen.is_some()
            || o.log_format.is_some()
            || o.credentials.is_some()
            || o.tls_cert.is_some()
            || o.tls_key.is_some()
            || o.observe;
        if cli {
            self.origin = format!("{} with command-line overrides", self.origin);
        }
        if let Some(v) = o.listen {
            self.proxy.listen = v;
        }
        if let Some(v) = o.upstream {
            self.upstream.url = v;
        }
        if let Some(v) = o.web_listen {
            self.web.listen = v;
        }
        if let Some(v) = o.public_url {
            self.web.public_url = Some(v);
        }
        if let Some(v) = o.redis {
            self.redis.url = Some(v);
        }
        if let Some(v) = o.admin_socket {
            self.step_up.admin_socket = Some(v);
        }
        if let Some(v) = o.metrics_listen {
            self.web.metrics_listen = Some(v);
        }
        if let Some(v) = o.log_format {
            self.log.format = v;
        }
        if let Some(v) = o.credentials {
            self.step_up.credentials = v;
        }
        if let Some(v) = o.tls_cert {
            self.tls.cert = Some(v);
        }
        if let Some(v) = o.tls_key {
            self.tls.key = Some(v);
        }
        if o.observe {
            self.proxy.observe = true;
        }
    }

    fn invalid(&self, key: &'static str, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            origin: self.origin.clone(),
            key,
            reason: reason.into(),
        }
    }

    /// Checks everything that can be checked without touching the network.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_host_port(&self.proxy.listen).map_err(|r| self.invalid("proxy.listen", r))?;
        check_host_port(&self.web.listen).map_err(|r| self.invalid("web.listen", r))?;
        if let Some(listen) = &self.web.metrics_listen {
            check_host_port(listen).map_err(|r| self.invalid("web.metrics_listen", r))?;
        }
        if self.limits.max_client_connections == 0 {
            return Err(self.invalid("limits.max_client_connections", "must be at least 1"));
        }
        let upstream = self.upstream_url()?;
        if upstream.unix_socket().is_some()
            && !matches!(
                self.upstream_tls_mode(),
                UpstreamTlsMode::Disable | UpstreamTlsMode::Prefer
            )
        {
            // libpq ignores sslmode on a Unix socket; asking for TLS there is a mistake to name.
            return Err(self.invalid(
                "upstream.tls",
                "a Unix socket carries no TLS: use disable or prefer with a socket directory \
                 as the upstream host, or a TCP host to require TLS",
            ));
        }
        if self
            .proxy
            .unix_socket_dir
            .as_ref()
            .is_some_and(|dir| dir.as_os_str().is_empty())
        {
            return Err(self.invalid(
                "proxy.unix_socket_dir",
                "is empty: name a directory, or leave the key out to listen on TCP only",
            ));
        }
        match (&self.tls.cert, &self.tls.key) {
            (Some(_), None) => {
                return Err(self.invalid("tls.key", "tls.cert is set but tls.key is not"))
            }
            (None, Some(_)) => {
                return Err(self.invalid("tls.cert", "tls.key is set but tls.cert is not"))
            }
            (None, None) if self.tls.require => {
                return Err(self.invalid("tls.require", "requires tls.cert and tls.key"))
            }
            _ => {}
        }
        if let Some(url) = &self.redis.url {
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return Err(self.invalid("redis.url", "must start with redis:// or rediss://"));
            }
        }
        if let Some(url) = &self.web.public_url {
            let parsed =
                url::Url::parse(url).map_err(|e| self.invalid("web.public_url", e.to_string()))?;
            if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
                return Err(self.invalid("web.public_url", "must be http(s)://HOST[:PORT]"));
            }
        }
        if self.web.tls_cert.is_some() != self.web.tls_key.is_some() {
            return Err(self.invalid("web.tls_cert", "web.tls_cert and web.tls_key go together"));
        }
        if self.step_up.link_ttl_secs == 0 || self.step_up.enrollment_ttl_secs == 0 {
            return Err(self.invalid(
                "step_up.link_ttl_secs",
                "link lifetimes must be at least 1 second",
            ));
        }
        if self.limits.max_message_bytes < 1024 {
            return Err(self.invalid("limits.max_message_bytes", "must be at least 1024"));
        }
        if self.limits.startup_timeout_secs == 0 {
            return Err(self.invalid("limits.startup_timeout_secs", "must be at least 1"));
        }
        if self.upstream.connect_timeout_secs == 0 {
            return Err(self.invalid("upstream.connect_timeout_secs", "must be at least 1"));
        }
        for (name, secs) in [
            (
                "upstream.pool_idle_timeout_secs",
                self.upstream.pool_idle_timeout_secs,
            ),
            (
                "upstream.pool_lifetime_secs",
                self.upstream.pool_lifetime_secs,
            ),
        ] {
            if secs == 0 {
                return Err(self.invalid(
                    name,
                    "must be at least 1 (set upstream.pool_size = 0 to turn reuse off)",
                ));
            }
        }
        if self.auth.method == Some(AuthMethod::Scram)
            && upstream.login.is_none()
            && self.auth.file.is_none()
        {
            return Err(self.invalid(
                "auth.method",
                "scram needs a verifier source: a login in upstream.url (auth query) or auth.file",
            ));
        }
        if self.auth.query.is_some() && upstream.login.is_none() {
            return Err(self.invalid(
                "auth.query",
                "needs a login in upstream.url (postgres://LOGIN:PASSWORD@HOST:PORT/DB) to run it",
            ));
        }
        if let Some(q) = &self.auth.query {
            if !q.contains("$1") {
                return Err(self.invalid("auth.query", "must use $1 for the user name"));
            }
        }
        Ok(())
    }

    /// The parsed upstream URL.
    /// The public address of the web side: configured, or `http://localhost:PORT` of the
    /// web listener (`bound_port` when it was bound to port 0).
    pub fn public_url(&self, bound_port: u16) -> String {
        match &self.web.public_url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => {
                let scheme = if self.web.tls_cert.is_some() {
                    "https"
                } else {
                    "http"
                };
                format!("{scheme}://localhost:{bound_port}")
            }
        }
    }

    /// How many session threads serve connections (see [`ProxyConfig::worker_threads`]).
    pub fn worker_threads(&self) -> usize {
        match self.proxy.worker_threads {
            0 => {
                std::thread::available_parallelism().map_or(1, |n| default_session_threads(n.get()))
            }
            n => n,
        }
    }

    /// Where admin commands reach the running server.
    pub fn admin_socket(&self) -> PathBuf {
        self.step_up.admin_socket.clone().unwrap_or_else(|| {
            let port = self
                .proxy
                .listen
                .rsplit_once(':')
                .map_or("6432", |(_, p)| p);
            PathBuf::from(format!("/tmp/.s.pgstepup.{port}"))
        })
    }

    pub fn upstream_url(&self) -> Result<UpstreamUrl, ConfigError> {
        UpstreamUrl::parse(&self.upstream.url)
            .map_err(|e| self.invalid("upstream.url", e.to_string()))
    }

    /// The effective upstream TLS mode: the URL's `sslmode` when given, else `upstream.tls`.
    pub fn upstream_tls_mode(&self) -> UpstreamTlsMode {
        self.upstream_url()
            .ok()
            .and_then(|u| u.sslmode)
            .unwrap_or(self.upstream.tls)
    }

    /// The effective authentication method (see [`AuthConfig::method`]).
    pub fn auth_method(&self) -> AuthMethod {
        self.auth.method.unwrap_or_else(|| {
            let has_source = self.auth.file.is_some()
                || self
                    .upstream_url()
                    .map(|u| u.login.is_some())
                    .unwrap_or(false);
            if has_source {
                AuthMethod::Scram
            } else {
                AuthMethod::Passthrough
            }
        })
    }
}

fn check_host_port(value: &str) -> Result<(), String> {
    let (host, port) = value
        .rsplit_once(':')
        .ok_or_else(|| format!("{value:?} is not HOST:PORT"))?;
    if host.is_empty() {
        return Err(format!("{value:?} has no host"));
    }
    port.parse::<u16>()
        .map_err(|_| format!("{value:?} has no valid port"))?;
    Ok(())
}

/// The default number of session threads on a machine with `cores` cores: half of them, but
/// two where there are two, so a load past `spill_after_sessions` is not held to one core's
/// fair share.
fn default_session_threads(cores: usize) -> usize {
    (cores / 2).max(cores.min(2))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> tempfile_path::TempPath {
        tempfile_path::TempPath::with(text)
    }

    /// A tiny temp-file helper so the tests need no extra crate.
    mod tempfile_path {
        use std::path::{Path, PathBuf};
        use std::sync::atomic::{AtomicU32, Ordering};

        pub struct TempPath(PathBuf);
        static NEXT: AtomicU32 = AtomicU32::new(0);

        impl TempPath {
            pub fn with(text: &str) -> Self {
                let n = NEXT.fetch_add(1, Ordering::Relaxed);
                let path = std::env::temp_dir()
                    .join(format!("pgstepup-config-{}-{n}.toml", std::process::id()));
                std::fs::write(&path, text).unwrap();
                TempPath(path)
            }
            pub fn path(&self) -> &Path {
                &self.0
            }
        }
        impl Drop for TempPath {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    /// `pgstepup enroll` with the file a Kubernetes ConfigMap holds (the upstream URL, and so
    /// the verifier source, comes as a flag to `serve` only) still finds the admin socket.
    #[test]
    fn admin_commands_need_only_the_admin_socket() {
        let file = write(
            "[auth]\nmethod = \"scram\"\n[step_up]\nadmin_socket = \"/run/pgstepup/admin.sock\"\n",
        );
        assert!(Config::load(Some(file.path()), Overrides::default()).is_err());
        let config = Config::load_for_admin(Some(file.path()), Overrides::default()).unwrap();
        assert_eq!(
            config.admin_socket(),
            PathBuf::from("/run/pgstepup/admin.sock")
        );
    }

    #[test]
    fn worker_threads_are_half_the_cores_but_two_filled_one_by_one_unless_set() {
        let mut c = Config::default();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(c.worker_threads(), default_session_threads(cores));
        for (cores, threads) in [(1, 1), (2, 2), (3, 2), (4, 2), (6, 3), (16, 8)] {
            assert_eq!(default_session_threads(cores), threads, "{cores} cores");
        }
        assert_eq!(c.proxy.spill_after_sessions, 4);
        c.proxy.worker_threads = 3;
        assert_eq!(c.worker_threads(), 3);
        let f = write("[proxy]\nspill_after_sessions = 0\n");
        let c = Config::load(Some(f.path()), Overrides::default()).unwrap();
        assert_eq!(c.proxy.spill_after_sessions, 0);
    }

    #[test]
    fn session_threads_yield_before_sleeping_unless_turned_off() {
        assert!(Config::default().proxy.yield_before_sleep);
        let f = write("[proxy]\nyield_before_sleep = false\n");
        let c = Config::load(Some(f.path()), Overrides::default()).unwrap();
        assert!(!c.proxy.yield_before_sleep);
    }

    #[test]
    fn defaults_start_without_a_file() {
        let c = Config::load(None, Overrides::default()).unwrap();
        assert_eq!(c.proxy.listen, "127.0.0.1:6432");
        assert_eq!(c.web.listen, "127.0.0.1:8443");
        assert_eq!(c.upstream_url().unwrap().address(), "127.0.0.1:5432");
        assert_eq!(c.auth_method(), AuthMethod::Passthrough);
        assert!(c.redis.url.is_none());
    }

    #[test]
    fn flags_override_the_file() {
        let f = write(
            "[proxy]\nlisten = \"0.0.0.0:7000\"\n[upstream]\nurl = \"postgres://auth:pw@db:5433/postgres\"\ntls = \"verify-full\"\n",
        );
        let c = Config::load(
            Some(f.path()),
            Overrides {
                listen: Some("127.0.0.1:7001".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(c.proxy.listen, "127.0.0.1:7001");
        assert_eq!(c.upstream_tls_mode(), UpstreamTlsMode::VerifyFull);
        assert_eq!(c.auth_method(), AuthMethod::Scram);

        // libpq's ?sslmode= in the URL wins over the file's upstream.tls.
        let c = Config::load(
            Some(f.path()),
            Overrides {
                upstream: Some("postgres://127.0.0.1:5432?sslmode=disable".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(c.upstream_tls_mode(), UpstreamTlsMode::Disable);
    }

    #[test]
    fn errors_name_file_key_and_problem() {
        let f = write("[upstream]\ntls = \"sometimes\"\n");
        let err = Config::load(Some(f.path()), Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains(&f.path().display().to_string()), "{err}");
        assert!(err.contains("tls") && err.contains("sometimes"), "{err}");

        let f = write("[proxy]\nlisten = \"nowhere\"\n");
        let err = Config::load(Some(f.path()), Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("proxy.listen") && err.contains("HOST:PORT"),
            "{err}"
        );

        let f = write("[proxy]\nlisen = \"a:1\"\n");
        let err = Config::load(Some(f.path()), Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("lisen"), "{err}");

        let err = Config::load(
            None,
            Overrides {
                tls_cert: Some("c.pem".into()),
                ..Default::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("command-line") && err.contains("tls.key"),
            "{err}"
        );

        let err = Config::load(Some(Path::new("/nonexistent/x.toml")), Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("/nonexistent/x.toml: cannot read"), "{err}");
    }

    #[test]
    fn a_unix_socket_upstream_takes_no_required_tls() {
        let socket = |url: &str| Overrides {
            upstream: Some(url.into()),
            ..Default::default()
        };
        let c = Config::load(None, socket("postgres:///app?host=/var/run/postgresql")).unwrap();
        assert_eq!(
            c.upstream_url().unwrap().address(),
            "/var/run/postgresql/.s.PGSQL.5432"
        );
        let err = Config::load(
            None,
            socket("postgres:///app?host=/var/run/postgresql&sslmode=require"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("upstream.tls") && err.contains("Unix socket"),
            "{err}"
        );
    }

    #[test]
    fn an_empty_unix_socket_dir_is_refused() {
        // pgbouncer reads `unix_socket_dir =` as "off"; here it would mean the working
        // directory, so it is refused rather than guessed.
        let f = write("[proxy]\nunix_socket_dir = \"\"\n");
        let err = Config::load(Some(f.path()), Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("proxy.unix_socket_dir"), "{err}");
    }

    #[test]
    fn upstream_reuse_is_on_unless_sized_zero_and_its_timeouts_cannot_be() {
        let c = Config::default();
        assert_eq!(
            (
                c.upstream.pool_size,
                c.upstream.pool_idle_timeout_secs,
                c.upstream.pool_lifetime_secs,
                c.upstream.pool_check_delay_secs
            ),
            (20, 600, 3600, 30),
            "pgbouncer's default_pool_size, server_idle_timeout, server_lifetime and \
             server_check_delay"
        );
        for setting in ["pool_idle_timeout_secs", "pool_lifetime_secs"] {
            let f = write(&format!("[upstream]\n{setting} = 0\n"));
            let err = Config::load(Some(f.path()), Overrides::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains(&format!("upstream.{setting}")), "{err}");
            assert!(err.contains("pool_size = 0"), "{err}");
        }
        let f = write("[upstream]\npool_size = 0\n");
        assert!(Config::load(Some(f.path()), Overrides::default()).is_ok());
    }
}

#[cfg(test)]
mod example_file {
    use super::*;

    #[test]
    fn the_documented_example_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/pgstepup.example.toml");
        let config = Config::load(Some(&path), Overrides::default()).unwrap();
        assert_eq!(config.auth_method(), AuthMethod::Scram);
        assert_eq!(
            config.upstream_url().unwrap().login.as_deref(),
            Some("pgstepup_auth")
        );
    }
}
