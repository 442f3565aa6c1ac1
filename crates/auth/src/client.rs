//! The client side of SCRAM-SHA-256: logging into the upstream PostgreSQL, with a password or
//! with a `ClientKey` recovered by [`crate::ScramServer`].

use std::fmt;

use subtle::ConstantTimeEq;

use crate::crypto::{self, KEY_LEN};
use crate::error::ScramError;
use crate::message::{self, is_printable_nonce};
use crate::{SCRAM_SHA_256, SCRAM_SHA_256_PLUS, TLS_SERVER_END_POINT};

/// The largest iteration count [`ScramClient`] accepts from a server, so a hostile or
/// misconfigured server cannot make it spend minutes in PBKDF2.
pub const MAX_ITERATIONS: u32 = 1_000_000;

/// Longest `e=` server error text kept in [`ScramError::ServerError`].
const MAX_SERVER_ERROR_LEN: usize = 200;

/// A SCRAM `ClientKey` (`HMAC(SaltedPassword, "Client Key")`): enough to log in as the user
/// against a server holding the matching verifier. `Debug` never prints the bytes; `==`
/// compares in constant time.
#[derive(Clone)]
pub struct ClientKey(pub [u8; 32]);

impl PartialEq for ClientKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl Eq for ClientKey {}

impl fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientKey(<redacted>)")
    }
}

/// How the client handles channel binding (the gs2 header it sends).
#[derive(Clone, PartialEq, Eq)]
pub enum ClientChannelBinding {
    /// gs2 flag `n`: no TLS, or the client cannot do channel binding.
    Unsupported,
    /// gs2 flag `y`: the client could bind but the server did not offer `-PLUS`.
    SupportedNotUsed,
    /// gs2 flag `p=tls-server-end-point` with this binding data (the hash of the server's
    /// certificate, see [`crate::tls_server_end_point`]); uses `SCRAM-SHA-256-PLUS`.
    TlsServerEndPoint(Vec<u8>),
}

impl fmt::Debug for ClientChannelBinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientChannelBinding::Unsupported => f.write_str("Unsupported"),
            ClientChannelBinding::SupportedNotUsed => f.write_str("SupportedNotUsed"),
            ClientChannelBinding::TlsServerEndPoint(data) => {
                write!(f, "TlsServerEndPoint({} bytes)", data.len())
            }
        }
    }
}

impl ClientChannelBinding {
    /// The gs2 header for this choice.
    fn gs2_header(&self) -> String {
        match self {
            ClientChannelBinding::Unsupported => "n,,".to_owned(),
            ClientChannelBinding::SupportedNotUsed => "y,,".to_owned(),
            ClientChannelBinding::TlsServerEndPoint(_) => format!("p={TLS_SERVER_END_POINT},,"),
        }
    }

    /// The bytes base64-encoded into the `c=` attribute of client-final-message.
    fn cbind_input(&self) -> Vec<u8> {
        let mut input = self.gs2_header().into_bytes();
        if let ClientChannelBinding::TlsServerEndPoint(data) = self {
            input.extend_from_slice(data);
        }
        input
    }
}

/// What the client proves knowledge of.
enum Credentials {
    /// A plaintext password; keys are derived from the server's salt and iteration count.
    Password(String),
    /// Keys recovered earlier; no PBKDF2 is run and the server's salt is not used.
    Keys {
        /// The user's ClientKey.
        client_key: [u8; KEY_LEN],
        /// The user's ServerKey, to check the server's signature.
        server_key: [u8; KEY_LEN],
    },
}

/// Where the exchange is.
enum State {
    /// client-first-message not produced yet.
    Initial,
    /// client-first-message sent, waiting for server-first-message.
    SentClientFirst {
        /// Our nonce.
        nonce: String,
        /// client-first-message-bare.
        client_first_bare: String,
    },
    /// client-final-message sent, waiting for server-final-message.
    SentClientFinal {
        /// The server signature we expect.
        server_signature: [u8; KEY_LEN],
    },
    /// The server proved itself; the exchange succeeded.
    Done,
    /// A step failed; the exchange is over.
    Failed,
}

/// A sans-IO SCRAM-SHA-256 client exchange, for logging into PostgreSQL.
///
/// Send [`ScramClient::mechanism`] with [`ScramClient::client_first`] in SASLInitialResponse,
/// pass the AuthenticationSASLContinue payload to [`ScramClient::server_first`] and send its
/// result in SASLResponse, then check the AuthenticationSASLFinal payload with
/// [`ScramClient::server_final`]. Any error ends the exchange.
pub struct ScramClient {
    /// Password or keys.
    credentials: Credentials,
    /// Channel-binding choice.
    channel_binding: ClientChannelBinding,
    /// Progress of the exchange.
    state: State,
}

impl ScramClient {
    /// A client that proves knowledge of `password` (SASLprep'd as libpq does).
    pub fn with_password(password: &str, channel_binding: ClientChannelBinding) -> Self {
        ScramClient {
            credentials: Credentials::Password(password.to_owned()),
            channel_binding,
            state: State::Initial,
        }
    }

    /// A client that logs in with a `ClientKey` (e.g. recovered by
    /// [`crate::ScramServer::client_final`]) and checks the server against `server_key`.
    /// The server's verifier must hold the same keys; its salt and iteration count are
    /// ignored.
    pub fn with_keys(
        client_key: ClientKey,
        server_key: [u8; 32],
        channel_binding: ClientChannelBinding,
    ) -> Self {
        ScramClient {
            credentials: Credentials::Keys {
                client_key: client_key.0,
                server_key,
            },
            channel_binding,
            state: State::Initial,
        }
    }

    /// The SASL mechanism to request: `SCRAM-SHA-256-PLUS` with
    /// [`ClientChannelBinding::TlsServerEndPoint`], else `SCRAM-SHA-256`.
    pub fn mechanism(&self) -> &'static str {
        match self.channel_binding {
            ClientChannelBinding::TlsServerEndPoint(_) => SCRAM_SHA_256_PLUS,
            _ => SCRAM_SHA_256,
        }
    }

    /// Produce client-first-message (`<gs2 header>n=,r=<nonce>`; the user name is left empty
    /// as libpq does, PostgreSQL uses the startup packet's user). Calling it again starts a
    /// new exchange with a fresh nonce.
    pub fn client_first(&mut self) -> Vec<u8> {
        self.client_first_with("", crypto::random_nonce())
    }

    /// [`ScramClient::client_first`] with a chosen user name and nonce (RFC test vectors).
    #[cfg(test)]
    pub(crate) fn client_first_for_test(&mut self, username: &str, nonce: &str) -> Vec<u8> {
        self.client_first_with(username, nonce.to_owned())
    }

    /// Build client-first-message and remember the exchange state.
    fn client_first_with(&mut self, username: &str, nonce: String) -> Vec<u8> {
        let client_first_bare = format!("n={username},r={nonce}");
        let message = format!("{}{client_first_bare}", self.channel_binding.gs2_header());
        self.state = State::SentClientFirst {
            nonce,
            client_first_bare,
        };
        message.into_bytes()
    }

    /// Process server-first-message; return client-final-message.
    pub fn server_first(&mut self, message: &[u8]) -> Result<Vec<u8>, ScramError> {
        let state = std::mem::replace(&mut self.state, State::Failed);
        let State::SentClientFirst {
            nonce: client_nonce,
            client_first_bare,
        } = state
        else {
            return Err(ScramError::OutOfOrder(
                "server-first-message before client-first-message or after it was processed",
            ));
        };
        let s = message::text(message)?;
        if let Some(error) = s.strip_prefix("e=") {
            return Err(server_error(error));
        }
        if s.starts_with("m=") {
            return Err(ScramError::malformed(
                "server requires an unsupported SCRAM extension",
            ));
        }
        let attrs = message::attributes(s)?;
        let nonce = message::expect(attrs.first(), b'r', "expected nonce attribute")?;
        let salt = message::expect(attrs.get(1), b's', "expected salt attribute")?;
        let iterations = message::expect(attrs.get(2), b'i', "expected iteration count")?;
        if attrs.len() != 3 {
            return Err(ScramError::malformed(
                "garbage at end of server-first-message",
            ));
        }
        if !nonce.starts_with(client_nonce.as_str())
            || nonce.len() == client_nonce.len()
            || !is_printable_nonce(nonce)
        {
            return Err(ScramError::NonceMismatch);
        }
        let salt = crypto::b64_decode(salt)
            .filter(|salt| !salt.is_empty())
            .ok_or(ScramError::malformed("invalid salt"))?;
        let iterations = message::parse_iterations(iterations)
            .ok_or(ScramError::malformed("invalid iteration count"))?;
        if iterations > MAX_ITERATIONS {
            return Err(ScramError::Malformed(
                format!("iteration count {iterations} exceeds the limit of {MAX_ITERATIONS}")
                    .into(),
            ));
        }

        let (client_key, server_key) = match &self.credentials {
            Credentials::Password(password) => {
                let keys = crypto::password_keys(password, &salt, iterations);
                (keys.client_key, keys.server_key)
            }
            Credentials::Keys {
                client_key,
                server_key,
            } => (*client_key, *server_key),
        };
        let stored_key = crypto::sha256(&client_key);
        let without_proof = format!(
            "c={},r={nonce}",
            crypto::b64_encode(&self.channel_binding.cbind_input())
        );
        let auth_message = [
            client_first_bare.as_bytes(),
            b",",
            s.as_bytes(),
            b",",
            without_proof.as_bytes(),
        ];
        let mut proof = client_key;
        crypto::xor_in_place(&mut proof, &crypto::hmac(&stored_key, &auth_message));
        let server_signature = crypto::hmac(&server_key, &auth_message);
        self.state = State::SentClientFinal { server_signature };
        Ok(format!("{without_proof},p={}", crypto::b64_encode(&proof)).into_bytes())
    }

    /// Check server-final-message: `Ok(())` only when the server's signature proves it holds
    /// the user's ServerKey.
    pub fn server_final(&mut self, message: &[u8]) -> Result<(), ScramError> {
        let state = std::mem::replace(&mut self.state, State::Failed);
        let State::SentClientFinal { server_signature } = state else {
            return Err(ScramError::OutOfOrder(
                "server-final-message before client-final-message or after the end",
            ));
        };
        let s = message::text(message)?;
        if let Some(error) = s.strip_prefix("e=") {
            return Err(server_error(error));
        }
        let attrs = message::attributes(s)?;
        let verifier = message::expect(attrs.first(), b'v', "expected server signature")?;
        if attrs.len() != 1 {
            return Err(ScramError::malformed(
                "garbage at end of server-final-message",
            ));
        }
        let signature = crypto::b64_decode_key(verifier)
            .ok_or(ScramError::malformed("invalid server signature"))?;
        if !bool::from(signature.ct_eq(&server_signature)) {
            return Err(ScramError::ServerSignatureMismatch);
        }
        self.state = State::Done;
        Ok(())
    }

    /// Whether the exchange finished and the server proved itself.
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }
}

/// A [`ScramError::ServerError`] from the text after `e=`: cut at the next comma, without
/// control characters, kept short.
fn server_error(text: &str) -> ScramError {
    let text = text.split(',').next().unwrap_or_default();
    ScramError::ServerError(
        text.chars()
            .filter(|c| !c.is_control())
            .take(MAX_SERVER_ERROR_LEN)
            .collect(),
    )
}

impl fmt::Debug for ScramClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let credentials = match self.credentials {
            Credentials::Password(_) => "password",
            Credentials::Keys { .. } => "keys",
        };
        let state = match self.state {
            State::Initial => "initial",
            State::SentClientFirst { .. } => "sent-client-first",
            State::SentClientFinal { .. } => "sent-client-final",
            State::Done => "done",
            State::Failed => "failed",
        };
        f.debug_struct("ScramClient")
            .field("credentials", &credentials)
            .field("channel_binding", &self.channel_binding)
            .field("state", &state)
            .finish()
    }
}
