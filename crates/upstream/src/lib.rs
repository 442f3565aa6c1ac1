//! pgstepup's side towards PostgreSQL.
//!
//! [`UpstreamSettings`] is built once from the configuration; [`connect`] opens a socket (TLS
//! as configured, certificates verified); [`login`] sends the client's own StartupMessage and
//! answers the server's authentication as that same user; [`VerifierSource`] fetches SCRAM
//! verifiers the way pgbouncer's `auth_query` does; [`cancel`] forwards a CancelRequest.

mod auth_lookup;
mod cancel;
mod connect;
mod login;
mod tls;

pub use auth_lookup::{VerifierSource, DEFAULT_AUTH_QUERY};
pub use cancel::cancel;
pub use connect::{connect, reachable, UpstreamSettings};
pub use login::{login, read_until_ready, Credential, LoginReply};

use pgstepup_protocol::ConnectionError;

/// Why talking to the upstream failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to upstream {address}: {source}")]
    Connect {
        address: String,
        source: std::io::Error,
    },
    #[error("timed out connecting to upstream {0}")]
    Timeout(String),
    #[error("upstream {0} does not accept TLS, and upstream.tls requires it")]
    TlsRefused(String),
    #[error("TLS handshake with upstream {address} failed: {source}")]
    Tls {
        address: String,
        source: std::io::Error,
    },
    #[error("invalid upstream TLS configuration: {0}")]
    TlsConfig(String),
    #[error("upstream protocol error: {0}")]
    Protocol(String),
    #[error("upstream asks for an authentication method pgstepup cannot answer ({0})")]
    UnsupportedAuth(&'static str),
    #[error("upstream SCRAM exchange failed: {0}")]
    Scram(#[from] pgstepup_auth::ScramError),
    /// The server refused with an ErrorResponse; the frame is relayed to the client as is.
    #[error("upstream refused: {message}")]
    Refused {
        message: String,
        frame: pgstepup_protocol::Frame,
    },
    #[error("verifier lookup failed: {0}")]
    Lookup(String),
    #[error(transparent)]
    Connection(#[from] ConnectionError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}
