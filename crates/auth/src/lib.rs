//! SCRAM-SHA-256 (RFC 5802 / RFC 7677) as PostgreSQL speaks it, sans-IO.
//!
//! pgstepup is a proxy that never holds user passwords. This crate gives it the two halves of
//! SCRAM it needs, as pure state machines that take and return message bodies (the SASL
//! payloads of PostgreSQL's `AuthenticationSASL*` / `SASLInitialResponse` / `SASLResponse`
//! messages) and never touch a socket:
//!
//! 1. [`ScramServer`] authenticates a client *against a PostgreSQL SCRAM verifier*
//!    ([`ScramVerifier`], the `rolpassword` text from `pg_authid`). Besides accepting or
//!    rejecting the client, a successful exchange recovers the client's `ClientKey` from its
//!    proof ([`ClientKey`]).
//! 2. [`ScramClient`] logs into the upstream PostgreSQL. It either uses that recovered
//!    `ClientKey` plus the verifier's `ServerKey` to log in as the same user without knowing the
//!    password (the pgbouncer trick; [`ScramClient::with_keys`]), or uses a plaintext password
//!    for the proxy's own dedicated auth login ([`ScramClient::with_password`]).
//!
//! Channel binding (`SCRAM-SHA-256-PLUS` with `tls-server-end-point`) is supported in both
//! directions; [`tls_server_end_point`] computes the binding data from a DER certificate.
//!
//! Error values never carry passwords, keys, verifiers or other secret input.

#![warn(missing_docs)]

pub mod channel_binding;
pub mod client;
mod crypto;
pub mod error;
mod message;
pub mod server;
pub mod verifier;

#[cfg(test)]
mod tests;

pub use channel_binding::tls_server_end_point;
pub use client::{ClientChannelBinding, ClientKey, ScramClient, MAX_ITERATIONS};
pub use error::ScramError;
pub use server::ScramServer;
pub use verifier::{ScramVerifier, VerifierError};

/// The SASL mechanism name of SCRAM-SHA-256 without channel binding.
pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";

/// The SASL mechanism name of SCRAM-SHA-256 with channel binding.
pub const SCRAM_SHA_256_PLUS: &str = "SCRAM-SHA-256-PLUS";

/// The only channel-binding type PostgreSQL (and this crate) supports.
pub const TLS_SERVER_END_POINT: &str = "tls-server-end-point";
