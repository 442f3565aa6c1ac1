//! pgstepup's client side: everything from an accepted socket to the end of a session.
//!
//! [`listener`] accepts connections (TCP, and the Unix socket of [`client_socket`]) and spawns
//! one task per client; [`handshake`] answers the
//! encryption requests (TLS via rustls, PG17 direct TLS, GSSENC refused) and the
//! StartupMessage; [`client_auth`] proves who the client is (SCRAM against the user's verifier,
//! or the upstream's own authentication relayed) and logs into the upstream as that user;
//! [`cancel`] maps pgstepup's own cancel keys to the upstream's; [`proxy`] is the session loop
//! that frames both directions and coalesces writes; every statement ([`statement`]) passes
//! the [`gate`] (classification and the policy in [`policy_store`]) before it is forwarded;
//! statements that need step-up are run under an elevation or held ([`hold`]) until approved;
//! named prepared statements ([`prepared`]) are decided again at each Bind. Sessions run on
//! the session threads of [`workers`], each a single-threaded runtime; a session that
//! ends cleanly leaves its upstream connection to the next client of the same login
//! ([`upstream_pool`], `scram` auth only).

mod cancel;
mod client_auth;
mod client_socket;
mod gate;
mod handshake;
mod hold;
mod idle;
mod lifecycle;
mod listener;
mod policy_store;
mod prepared;
mod proxy;
mod server_query;
mod statement;
mod tls;
mod upstream_pool;
mod workers;

pub use listener::{Proxy, ProxyError, ProxyParts, Reloader};
pub use policy_store::{ActivePolicy, PolicyStore};
pub use statement::Statement;
