//! The error type of a SCRAM exchange, shared by [`crate::ScramServer`] and
//! [`crate::ScramClient`].

use std::borrow::Cow;

/// Why a SCRAM exchange step failed.
///
/// Messages never include secret material (passwords, keys, proofs) nor raw peer input,
/// except [`ScramError::ServerError`], which carries the upstream server's own `e=` text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    /// The message does not follow the SCRAM grammar (bad UTF-8, missing or misplaced
    /// attributes, bad base64, wrong lengths, unsupported features such as authzid or
    /// mandatory extensions, ...).
    #[error("malformed SCRAM message: {0}")]
    Malformed(Cow<'static, str>),
    /// The client picked a SASL mechanism that was not offered.
    #[error("client selected an invalid SASL authentication mechanism")]
    UnsupportedMechanism,
    /// Channel-binding negotiation or verification failed (including the downgrade check).
    #[error("SCRAM channel binding error: {0}")]
    ChannelBinding(&'static str),
    /// The nonce in a later message does not match the one negotiated earlier.
    #[error("SCRAM nonce mismatch")]
    NonceMismatch,
    /// The client's proof is wrong, or the user is unknown (indistinguishable on purpose).
    #[error("password authentication failed")]
    AuthenticationFailed,
    /// The server's signature in server-final-message is wrong: the server does not know the
    /// user's `ServerKey`.
    #[error("SCRAM server signature verification failed")]
    ServerSignatureMismatch,
    /// The server ended the exchange with an `e=` error attribute.
    #[error("error received from server in SCRAM exchange: {0}")]
    ServerError(String),
    /// A step was called in the wrong state (out of order, repeated, or after a failure).
    #[error("SCRAM exchange step called out of order: {0}")]
    OutOfOrder(&'static str),
}

impl ScramError {
    /// Shorthand for a [`ScramError::Malformed`] with a static description.
    pub(crate) const fn malformed(what: &'static str) -> Self {
        ScramError::Malformed(Cow::Borrowed(what))
    }
}
