//! pgstepup's web side: the enrollment, approval and pending pages, the JSON API their script
//! drives (WebAuthn ceremonies with webauthn-rs), and the local admin channel.
//!
//! [`pages`] serves the static pages with strict headers; [`api`] runs the ceremonies and
//! records outcomes through [`pgstepup_stepup`]; [`admin`] answers `pgstepup enroll` and
//! `pgstepup keys` over a Unix socket only the service's user can use. Ceremony state lives
//! in the state store and is consumed with one atomic read-and-delete, so an assertion can
//! be used once; tokens are stored only as hashes.

pub mod admin;
mod api;
pub mod health;
mod pages;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use webauthn_rs::prelude::{Url, Webauthn, WebauthnBuilder};

use pgstepup_audit::{AuditLog, Record};
use pgstepup_metrics::Metrics;
use pgstepup_stepup::{Credentials, StepUp};

pub use health::Health;

#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error("web.public_url {url:?}: {reason}")]
    PublicUrl { url: String, reason: String },
    #[error("web TLS: {0}")]
    Tls(String),
}

/// Everything the web side needs; shared by every request.
pub struct Web {
    stepup: StepUp,
    credentials: Credentials,
    webauthn: Webauthn,
    audit: Arc<AuditLog>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    enrollment_ttl: Duration,
}

/// What the web side shares with the rest of the instance.
pub struct WebParts {
    pub stepup: StepUp,
    pub credentials: Credentials,
    pub audit: Arc<AuditLog>,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    pub enrollment_ttl: Duration,
}

impl Web {
    /// The relying party is the public URL: its origin is the WebAuthn origin, its host the
    /// RP id.
    pub fn new(parts: WebParts) -> Result<Arc<Self>, WebError> {
        let WebParts {
            stepup,
            credentials,
            audit,
            metrics,
            health,
            enrollment_ttl,
        } = parts;
        let url = stepup.public_url().to_owned();
        let invalid = |reason: String| WebError::PublicUrl {
            url: url.clone(),
            reason,
        };
        let origin = Url::parse(&url).map_err(|e| invalid(e.to_string()))?;
        let rp_id = origin
            .host_str()
            .ok_or_else(|| invalid("has no host".into()))?
            .to_owned();
        let webauthn = WebauthnBuilder::new(&rp_id, &origin)
            .and_then(|b| b.rp_name("pgstepup").build())
            .map_err(|e| invalid(e.to_string()))?;
        Ok(Arc::new(Web {
            stepup,
            credentials,
            webauthn,
            audit,
            metrics,
            health,
            enrollment_ttl,
        }))
    }

    pub fn router(self: &Arc<Self>) -> Router {
        pages::routes()
            .merge(api::routes(self.clone()))
            .merge(health::routes(self.clone()))
            .fallback(api::unknown)
            .layer(axum::middleware::map_response(pages::secure_headers))
    }

    /// Only `/metrics`, `/healthz` and `/readyz`, for a separate metrics listener.
    pub fn metrics_router(self: &Arc<Self>) -> Router {
        health::routes(self.clone())
    }

    /// Serves `router` over HTTP (or HTTPS with `tls`, whose certificate can be replaced
    /// while serving) until `shutdown` completes. The listener is open to anyone who can
    /// reach the approval page, so slow or idle clients cannot pile up: at most
    /// [`MAX_WEB_CONNECTIONS`] at once (further ones wait in the kernel's backlog, leaving the
    /// process's descriptors to the SQL side), headers within [`HEADER_TIMEOUT`], and a
    /// connection is wound down after [`CONNECTION_LIFETIME`] (requests in flight get
    /// [`CONNECTION_GRACE`] more).
    pub async fn serve(
        router: Router,
        listener: TcpListener,
        tls: Option<TlsSlot>,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let permits = Arc::new(tokio::sync::Semaphore::new(MAX_WEB_CONNECTIONS));
        tokio::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                _ = &mut shutdown => return,
                accepted = async {
                    let permit = permits.clone().acquire_owned().await;
                    (permit, listener.accept().await)
                } => accepted,
            };
            let (tcp, permit) = match accepted {
                (Ok(permit), Ok((tcp, _))) => (tcp, permit),
                (_, Err(error)) => {
                    tracing::warn!(%error, "web accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                (Err(_), _) => return,
            };
            let acceptor = tls
                .as_ref()
                .map(|slot| slot.read().expect("web TLS lock").clone());
            let router = router.clone();
            tokio::spawn(async move {
                let _permit = permit;
                match acceptor {
                    None => serve_connection(tcp, router).await,
                    Some(acceptor) => {
                        let handshake = acceptor.accept(tcp);
                        if let Ok(Ok(tls)) = tokio::time::timeout(HEADER_TIMEOUT, handshake).await {
                            serve_connection(tls, router).await;
                        }
                    }
                }
            });
        }
    }

    fn audit(&self, record: Record) {
        if let Err(error) = self.audit.record(&record) {
            tracing::error!(%error, "cannot write the audit trail");
        }
    }
}

/// Web connections served at once; the next waits until one closes.
pub const MAX_WEB_CONNECTIONS: usize = 512;
/// Time a client has for its TLS handshake, and for each request's headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// After this a connection takes no new requests (browsers open another).
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// What requests still in flight at the end of a connection's lifetime get before it closes.
pub const CONNECTION_GRACE: Duration = Duration::from_secs(10);

/// Serves one HTTP/1 or HTTP/2 connection within the limits [`Web::serve`] describes.
async fn serve_connection<Io>(io: Io, router: Router)
where
    Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper_util::service::TowerToHyperService::new(router);
    let mut builder =
        hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    let connection = builder.serve_connection(hyper_util::rt::TokioIo::new(io), service);
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => return,
        _ = tokio::time::sleep(CONNECTION_LIFETIME) => connection.as_mut().graceful_shutdown(),
    }
    let _ = tokio::time::timeout(CONNECTION_GRACE, connection).await;
}

/// The web listener's TLS acceptor; SIGHUP swaps in a new one.
pub type TlsSlot = Arc<std::sync::RwLock<TlsAcceptor>>;

/// A rustls acceptor for the web listener from PEM files.
pub fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<TlsAcceptor, WebError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .map_err(|e| WebError::Tls(format!("{}: {e}", cert.display())))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| WebError::Tls(format!("{}: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| WebError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| WebError::Tls(format!("certificate and key do not fit together: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
