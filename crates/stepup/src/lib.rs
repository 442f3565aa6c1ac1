//! Step-up state shared by both sides of pgstepup: the proxy side holds statements and checks
//! elevations, the web side approves challenges. They meet only through this crate.
//!
//! [`store`] is the ephemeral key-value store with TTLs and pub/sub wake-ups (Redis, shared by
//! every instance, or memory for the embedded default); [`challenge`] defines challenges,
//! their one-time tokens, outcomes and elevations on top of it; [`credentials`] is the durable
//! home of registered WebAuthn keys (a PostgreSQL table or a local file).

pub mod challenge;
pub mod credentials;
pub mod store;

pub use challenge::{
    random_token, token_hash, unix_now, CancelInbox, Challenge, ElevationNeed, Outcome, StepUp,
    Waiter,
};
pub use credentials::{CredentialError, Credentials, StoredKey};
pub use store::{Store, StoreError, StoreResult};
