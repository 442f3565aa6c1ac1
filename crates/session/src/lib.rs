//! pgstepup's client side: everything from an accepted socket to the end of a session.
//!
//! [`listener`] accepts connections and spawns one task per client; [`handshake`] answers the
//! encryption requests (TLS via rustls, PG17 direct TLS, GSSENC refused) and the
//! StartupMessage; [`client_auth`] proves who the client is (SCRAM against the user's verifier,
//! or the upstream's own authentication relayed) and logs into the upstream as that user;
//! [`cancel`] maps pgstepup's own cancel keys to the upstream's; [`proxy`] is the session loop
//! that frames both directions, sees every statement through [`statement`] before it is
//! forwarded, and coalesces writes.

mod cancel;
mod client_auth;
mod handshake;
mod listener;
mod proxy;
mod statement;
mod tls;

pub use listener::{Proxy, ProxyError};
pub use statement::Statement;
