//! Opening a socket to the upstream: TCP, then TLS through an SSLRequest as the mode asks; or
//! PostgreSQL's Unix socket, which (as in libpq) never negotiates TLS.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::TlsConnector;

use pgstepup_config::{Config, UpstreamTlsMode, UpstreamUrl};
use pgstepup_protocol::startup::SSL_REQUEST_CODE;
use pgstepup_protocol::{Connection, Stream};

use crate::{tls, UpstreamError};

/// The longest message the server may send: PostgreSQL builds each in one allocation of at
/// most 1 GiB (MaxAllocSize), so a row with a value near that size must pass (a lower limit
/// ended the session of a client that read one).
const UPSTREAM_MAX_FRAME: usize = 1 << 30;

/// Everything needed to reach the upstream, prepared once at start.
#[derive(Clone)]
pub struct UpstreamSettings {
    pub url: UpstreamUrl,
    pub tls_mode: UpstreamTlsMode,
    tls: Option<Arc<rustls::ClientConfig>>,
    pub connect_timeout: Duration,
}

impl UpstreamSettings {
    /// Prepares the settings (reads CA files, builds the TLS config).
    pub fn from_config(config: &Config) -> Result<Self, UpstreamError> {
        let url = config
            .upstream_url()
            .map_err(|e| UpstreamError::TlsConfig(e.to_string()))?;
        let tls_mode = config.upstream_tls_mode();
        let tls = tls::client_config(tls_mode, config.upstream.tls_root_cert.as_deref())?;
        Ok(UpstreamSettings {
            url,
            tls_mode,
            tls,
            connect_timeout: Duration::from_secs(config.upstream.connect_timeout_secs),
        })
    }
}

/// Connects to the upstream: over TCP, negotiating TLS per `upstream.tls`, or by its Unix
/// socket.
pub async fn connect(settings: &UpstreamSettings) -> Result<Connection, UpstreamError> {
    let address = settings.url.address();
    tokio::time::timeout(settings.connect_timeout, open(settings, &address))
        .await
        .map_err(|_| UpstreamError::Timeout(address.clone()))?
}

async fn open(settings: &UpstreamSettings, address: &str) -> Result<Connection, UpstreamError> {
    if let Some(socket) = settings.url.unix_socket() {
        // Configuration refuses a TLS mode that requires encryption here.
        let unix = UnixStream::connect(&socket)
            .await
            .map_err(|source| UpstreamError::Connect {
                address: address.to_owned(),
                source,
            })?;
        return Ok(Connection::new(Stream::Unix(unix), UPSTREAM_MAX_FRAME));
    }
    let mut tcp = TcpStream::connect(address)
        .await
        .map_err(|source| UpstreamError::Connect {
            address: address.to_owned(),
            source,
        })?;
    tcp.set_nodelay(true)?;
    let Some(tls) = &settings.tls else {
        return Ok(Connection::new(Stream::Plain(tcp), UPSTREAM_MAX_FRAME));
    };
    let mut request = [0u8; 8];
    request[..4].copy_from_slice(&8u32.to_be_bytes());
    request[4..].copy_from_slice(&SSL_REQUEST_CODE.to_be_bytes());
    tcp.write_all(&request).await?;
    let answer = tcp.read_u8().await?;
    match answer {
        b'S' => {
            let name = ServerName::try_from(settings.url.host.clone())
                .map_err(|e| UpstreamError::TlsConfig(format!("upstream host name: {e}")))?;
            let stream = TlsConnector::from(tls.clone())
                .connect(name, tcp)
                .await
                .map_err(|source| UpstreamError::Tls {
                    address: address.to_owned(),
                    source,
                })?;
            Ok(Connection::new(
                Stream::TlsClient(Box::new(stream)),
                UPSTREAM_MAX_FRAME,
            ))
        }
        b'N' if settings.tls_mode == UpstreamTlsMode::Prefer => {
            Ok(Connection::new(Stream::Plain(tcp), UPSTREAM_MAX_FRAME))
        }
        b'N' => Err(UpstreamError::TlsRefused(address.to_owned())),
        other => Err(UpstreamError::Protocol(format!(
            "unexpected answer {other:#04x} to SSLRequest"
        ))),
    }
}

/// Whether the upstream accepts a connection (TCP or Unix socket), for readiness; opens and
/// drops it without a startup message.
pub async fn reachable(url: &UpstreamUrl) -> std::io::Result<()> {
    match url.unix_socket() {
        Some(socket) => UnixStream::connect(socket).await.map(drop),
        None => TcpStream::connect(url.address()).await.map(drop),
    }
}
