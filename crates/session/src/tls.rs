//! Client-facing TLS: the rustls server configuration (ALPN `postgresql` for PG17 direct TLS)
//! and the certificate hash SCRAM-SHA-256-PLUS binds to.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

/// The ALPN protocol id PostgreSQL 17 requires for direct TLS.
pub(crate) const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// What a TLS-capable listener needs.
#[derive(Clone)]
pub(crate) struct ClientTls {
    pub acceptor: TlsAcceptor,
    /// tls-server-end-point channel-binding data of our certificate, when computable.
    pub end_point_hash: Option<Vec<u8>>,
}

/// Loads the PEM certificate chain and key.
pub(crate) fn load(cert: &Path, key: &Path) -> Result<ClientTls, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("{}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no certificate found", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let end_point_hash = pgstepup_auth::tls_server_end_point(chain[0].as_ref());
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("certificate and key do not fit together: {e}"))?;
    config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    Ok(ClientTls {
        acceptor: TlsAcceptor::from(Arc::new(config)),
        end_point_hash,
    })
}
