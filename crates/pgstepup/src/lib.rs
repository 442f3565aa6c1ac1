//! One pgstepup instance, assembled: the client listener (pgstepup-session), the web side
//! (pgstepup-web), the admin socket, and the step-up state and audit trail they share. The
//! binary and the integration tests both start pgstepup through [`Service`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::net::TcpListener;

use pgstepup_audit::AuditLog;
use pgstepup_config::{Config, UpstreamUrl};
use pgstepup_metrics::Metrics;
use pgstepup_session::{PolicyStore, Proxy, ProxyError, ProxyParts, Reloader as ProxyReloader};
use pgstepup_stepup::{Credentials, StepUp, Store, StoreError};
use pgstepup_web::admin::{AdminError, AdminListener};
use pgstepup_web::{Health, TlsSlot, Web, WebError, WebParts};

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    #[error(transparent)]
    Web(#[from] WebError),
    #[error("redis.url: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error("audit trail: {0}")]
    Audit(#[from] pgstepup_audit::AuditError),
    #[error("cannot listen on {address} (web.listen / web.metrics_listen): {source}")]
    WebBind {
        address: String,
        source: std::io::Error,
    },
}

/// A bound, ready-to-run instance.
pub struct Service {
    proxy: Proxy,
    web: Arc<Web>,
    web_listener: TcpListener,
    web_tls: Option<TlsSlot>,
    web_tls_files: Option<(std::path::PathBuf, std::path::PathBuf)>,
    admin: AdminListener,
    public_url: String,
    metrics_listener: Option<TcpListener>,
    health: Arc<Health>,
    stepup: StepUp,
    upstream: UpstreamUrl,
}

impl Service {
    /// Binds every listener and opens the stores; nothing is accepted until [`Service::run`].
    pub async fn bind(config: Config) -> Result<Self, ServiceError> {
        let web_listener = TcpListener::bind(&config.web.listen)
            .await
            .map_err(|source| ServiceError::WebBind {
                address: config.web.listen.clone(),
                source,
            })?;
        let web_port = web_listener
            .local_addr()
            .map_err(|source| ServiceError::WebBind {
                address: config.web.listen.clone(),
                source,
            })?
            .port();
        let public_url = config.public_url(web_port);
        let web_tls_files = config.web.tls_cert.clone().zip(config.web.tls_key.clone());
        let web_tls = match &web_tls_files {
            Some((cert, key)) => Some(Arc::new(std::sync::RwLock::new(
                pgstepup_web::tls_acceptor(cert, key)?,
            ))),
            None => None,
        };
        let metrics_listener =
            match &config.web.metrics_listen {
                Some(address) => Some(TcpListener::bind(address).await.map_err(|source| {
                    ServiceError::WebBind {
                        address: address.clone(),
                        source,
                    }
                })?),
                None => None,
            };
        let instance = instance_name(&config.proxy.listen);
        let audit = Arc::new(AuditLog::open(&config.audit.file, instance.clone())?);
        let metrics = Arc::new(Metrics::new(env!("CARGO_PKG_VERSION")));
        let health = Arc::new(Health::default());
        let store = match &config.redis.url {
            Some(url) => Store::redis(url, &config.redis.prefix, metrics.clone())?,
            None => Store::memory(),
        };
        let stepup = StepUp::new(
            store,
            &instance,
            &public_url,
            Duration::from_secs(config.step_up.link_ttl_secs),
        );
        let credentials = Credentials::open(&config.step_up.credentials);
        let web = Web::new(WebParts {
            stepup: stepup.clone(),
            credentials: credentials.clone(),
            audit: audit.clone(),
            metrics: metrics.clone(),
            health: health.clone(),
            enrollment_ttl: Duration::from_secs(config.step_up.enrollment_ttl_secs),
        })?;
        let admin = AdminListener::bind(&config.admin_socket())?;
        tracing::info!(
            web = %config.web.listen,
            %public_url,
            state = stepup.store().backend(),
            credentials = %credentials.describe(),
            admin_socket = %config.admin_socket().display(),
            "step-up ready"
        );
        let proxy = Proxy::bind(
            config,
            ProxyParts {
                stepup: stepup.clone(),
                audit,
                metrics,
            },
        )
        .await?;
        let upstream = proxy.upstream_url().clone();
        Ok(Service {
            proxy,
            web,
            web_listener,
            web_tls,
            web_tls_files,
            admin,
            public_url,
            metrics_listener,
            health,
            stepup,
            upstream,
        })
    }

    pub fn proxy_addr(&self) -> std::io::Result<SocketAddr> {
        self.proxy.local_addr()
    }

    pub fn web_addr(&self) -> std::io::Result<SocketAddr> {
        self.web_listener.local_addr()
    }

    /// Where links point (also the WebAuthn origin).
    pub fn public_url(&self) -> &str {
        &self.public_url
    }

    pub fn policy(&self) -> Arc<PolicyStore> {
        self.proxy.policy()
    }

    /// What SIGHUP runs: policy and certificates, read again.
    pub fn reloader(&self) -> Reloader {
        Reloader {
            proxy: self.proxy.reloader(),
            web: self.web_tls.clone().zip(self.web_tls_files.clone()),
        }
    }

    /// Runs until `shutdown` completes, then drains: not ready, no new connections, running
    /// statements and open transactions get `proxy.shutdown_grace_secs` to finish.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let (stop_web, web_stopped) = tokio::sync::watch::channel(false);
        let stopped = |mut receiver: tokio::sync::watch::Receiver<bool>| async move {
            let _ = receiver.wait_for(|stop| *stop).await;
        };
        let web = tokio::spawn(Web::serve(
            self.web.router(),
            self.web_listener,
            self.web_tls,
            stopped(web_stopped.clone()),
        ));
        let metrics_web = self.metrics_listener.map(|listener| {
            tokio::spawn(Web::serve(
                self.web.metrics_router(),
                listener,
                None,
                stopped(web_stopped.clone()),
            ))
        });
        let admin = tokio::spawn(self.admin.serve(self.web));
        let checks = tokio::spawn(check_readiness(
            self.health.clone(),
            self.stepup,
            self.upstream,
        ));
        let health = self.health;
        self.proxy
            .run(async move {
                shutdown.await;
                health.start_draining();
            })
            .await;
        let _ = stop_web.send(true);
        checks.abort();
        admin.abort();
        let _ = admin.await;
        let _ = web.await;
        if let Some(metrics_web) = metrics_web {
            let _ = metrics_web.await;
        }
    }
}

/// Re-reads the policy and the certificates (client-facing and web) without disturbing open
/// connections: new handshakes use the new certificates.
pub struct Reloader {
    proxy: ProxyReloader,
    web: Option<(TlsSlot, (std::path::PathBuf, std::path::PathBuf))>,
}

impl Reloader {
    pub fn reload(&self, trigger: &str) {
        self.proxy.reload(trigger);
        if let Some((slot, (cert, key))) = &self.web {
            match pgstepup_web::tls_acceptor(cert, key) {
                Ok(acceptor) => {
                    *slot.write().expect("web TLS lock") = acceptor;
                    self.proxy.metrics().certificate_reload(true);
                    tracing::info!(trigger, cert = %cert.display(), "web TLS certificate reloaded");
                }
                Err(error) => {
                    self.proxy.metrics().certificate_reload(false);
                    tracing::error!(trigger, %error, "web TLS certificate not reloaded; the previous one stays in use")
                }
            }
        }
    }
}

/// Keeps readiness current: the upstream accepts connections and the state store answers.
async fn check_readiness(health: Arc<Health>, stepup: StepUp, upstream: UpstreamUrl) {
    let timeout = Duration::from_secs(1);
    let address = upstream.address();
    loop {
        let mut problems = Vec::new();
        match tokio::time::timeout(timeout, pgstepup_upstream::reachable(&upstream)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => problems.push(format!("upstream {address} unreachable: {error}")),
            Err(_) => problems.push(format!("upstream {address} unreachable: timed out")),
        }
        if let Err(error) = stepup.store().ping().await {
            problems.push(error.to_string());
        }
        health.set_problems(problems);
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// `host:port:random`: names the instance in the audit trail and addresses it in Redis.
fn instance_name(listen: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "pgstepup".into());
    let port = listen.rsplit_once(':').map_or("", |(_, p)| p);
    let tag: u32 = rand::rng().random();
    format!("{host}:{port}:{tag:08x}")
}

/// The build script's hot-code layout decision, compiled here too so its cases are tested.
#[cfg(test)]
#[path = "../build/link_order.rs"]
mod link_order;

#[cfg(test)]
mod link_order_tests {
    use super::link_order::{layout, Build, Layout};

    fn release_x86_64() -> Build<'static> {
        Build {
            profile: "release",
            target_os: "linux",
            target: "x86_64-unknown-linux-gnu",
            opt_out: None,
            lld_on_path: false,
            order_file: "/src/crates/pgstepup/hot-functions.txt",
        }
    }

    #[test]
    fn release_builds_on_x86_64_linux_order_with_rustcs_own_lld() {
        assert_eq!(
            layout(&release_x86_64()),
            Layout::Ordered(vec![
                "-Wl,--symbol-ordering-file=/src/crates/pgstepup/hot-functions.txt".into(),
                "-Wl,--no-warn-symbol-ordering".into(),
            ])
        );
    }

    #[test]
    fn other_linux_targets_ask_for_an_lld_on_path_or_say_why_not() {
        let aarch64 = Build {
            target: "aarch64-unknown-linux-gnu",
            ..release_x86_64()
        };
        assert!(matches!(layout(&aarch64), Layout::NoLinker(why) if why.contains("ld.lld")));
        let with_lld = Build {
            lld_on_path: true,
            ..aarch64
        };
        let Layout::Ordered(args) = layout(&with_lld) else {
            panic!("an ld.lld on PATH orders the layout");
        };
        assert_eq!(args[0], "-fuse-ld=lld");
        assert!(args[1].starts_with("-Wl,--symbol-ordering-file="));
    }

    #[test]
    fn debug_builds_other_systems_and_the_opt_out_link_as_usual() {
        for build in [
            Build {
                profile: "debug",
                ..release_x86_64()
            },
            Build {
                target_os: "macos",
                ..release_x86_64()
            },
            Build {
                opt_out: Some("0"),
                ..release_x86_64()
            },
        ] {
            assert_eq!(layout(&build), Layout::Unordered);
        }
        let opted_in = Build {
            opt_out: Some("1"),
            ..release_x86_64()
        };
        assert!(matches!(layout(&opted_in), Layout::Ordered(_)));
    }
}
