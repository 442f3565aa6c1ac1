//! The server side of SCRAM-SHA-256: authenticating a client against a stored verifier.

use std::fmt;

use subtle::ConstantTimeEq;

use crate::client::ClientKey;
use crate::crypto::{self, KEY_LEN};
use crate::error::ScramError;
use crate::message::{self, is_printable_nonce};
use crate::verifier::ScramVerifier;
use crate::{SCRAM_SHA_256, SCRAM_SHA_256_PLUS, TLS_SERVER_END_POINT};

/// Iteration count advertised for unknown users, PostgreSQL's default.
const MOCK_ITERATIONS: u32 = 4096;

/// Salt length advertised for unknown users, PostgreSQL's default.
const MOCK_SALT_LEN: usize = 16;

/// Mechanisms offered on a TLS connection with channel-binding data.
const MECHANISMS_PLUS: &[&str] = &[SCRAM_SHA_256_PLUS, SCRAM_SHA_256];

/// Mechanisms offered without channel binding.
const MECHANISMS: &[&str] = &[SCRAM_SHA_256];

/// The gs2 channel-binding flag the client sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CbindFlag {
    /// `n`: the client does not support channel binding.
    No,
    /// `y`: the client supports it but thinks the server does not.
    Yes,
    /// `p=tls-server-end-point`: channel binding in use.
    Used,
}

/// Where the exchange is.
enum State {
    /// Waiting for client-first-message.
    Initial,
    /// server-first-message sent, waiting for client-final-message.
    SentServerFirst {
        /// The gs2 header exactly as the client sent it (`n,,`, `y,,` or `p=...,,`).
        gs2_header: String,
        /// Whether the client chose channel binding.
        flag: CbindFlag,
        /// client-first-message-bare.
        client_first_bare: String,
        /// server-first-message.
        server_first: String,
        /// The combined nonce (client part followed by ours).
        nonce: String,
    },
    /// Finished successfully.
    Done,
    /// A step failed; the exchange is over.
    Failed,
}

/// A sans-IO SCRAM-SHA-256 server exchange for one client connection.
///
/// Feed it the client's SASLInitialResponse ([`ScramServer::client_first`]) and SASLResponse
/// ([`ScramServer::client_final`]) payloads; send back what they return. Any error ends the
/// exchange: later calls fail with [`ScramError::OutOfOrder`].
///
/// Unknown users (no verifier) get a complete, deterministic mock exchange that fails only at
/// the last step with the same [`ScramError::AuthenticationFailed`] as a wrong password.
pub struct ScramServer {
    /// PBKDF2 iteration count advertised to the client.
    iterations: u32,
    /// Salt advertised to the client.
    salt: Vec<u8>,
    /// `H(ClientKey)` to check the proof against.
    stored_key: [u8; KEY_LEN],
    /// Key for the server signature.
    server_key: [u8; KEY_LEN],
    /// True for a mock exchange: it always fails at the end.
    doomed: bool,
    /// tls-server-end-point data when the client connection is TLS.
    channel_binding: Option<Vec<u8>>,
    /// Progress of the exchange.
    state: State,
}

impl ScramServer {
    /// Start an exchange.
    ///
    /// * `verifier`: the user's SCRAM verifier, or `None` when the user is unknown or has no
    ///   SCRAM verifier (a mock exchange is run then).
    /// * `channel_binding`: the `tls-server-end-point` hash of the proxy's certificate when the
    ///   client connection uses TLS (then `SCRAM-SHA-256-PLUS` is offered), else `None`.
    /// * `mock_seed`: input for the mock exchange's salt, e.g. a per-deployment secret followed
    ///   by the startup user name. The fake salt is `HMAC-SHA-256(mock_seed, ...)` truncated
    ///   to 16 bytes, so it is stable per user and unpredictable without the secret, like
    ///   PostgreSQL's `scram_mock_salt`. Ignored when `verifier` is `Some`.
    pub fn new(
        verifier: Option<ScramVerifier>,
        channel_binding: Option<Vec<u8>>,
        mock_seed: &[u8],
    ) -> Self {
        let (iterations, salt, stored_key, server_key, doomed) = match verifier {
            Some(v) => (v.iterations, v.salt, v.stored_key, v.server_key, false),
            None => {
                let salt = crypto::hmac(mock_seed, &[b"pgstepup SCRAM mock salt"]);
                (
                    MOCK_ITERATIONS,
                    salt[..MOCK_SALT_LEN].to_vec(),
                    crypto::hmac(mock_seed, &[b"pgstepup SCRAM mock StoredKey"]),
                    crypto::hmac(mock_seed, &[b"pgstepup SCRAM mock ServerKey"]),
                    true,
                )
            }
        };
        ScramServer {
            iterations,
            salt,
            stored_key,
            server_key,
            doomed,
            channel_binding,
            state: State::Initial,
        }
    }

    /// The SASL mechanisms to offer in AuthenticationSASL, preferred first:
    /// `["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]` with channel binding, else
    /// `["SCRAM-SHA-256"]`.
    pub fn mechanisms(&self) -> &'static [&'static str] {
        if self.channel_binding.is_some() {
            MECHANISMS_PLUS
        } else {
            MECHANISMS
        }
    }

    /// Process the client's mechanism choice and client-first-message; return
    /// server-first-message.
    pub fn client_first(&mut self, mechanism: &str, message: &[u8]) -> Result<Vec<u8>, ScramError> {
        self.client_first_with_nonce(mechanism, message, crypto::random_nonce())
    }

    /// [`ScramServer::client_first`] with the server's part of the nonce given.
    pub(crate) fn client_first_with_nonce(
        &mut self,
        mechanism: &str,
        message: &[u8],
        server_nonce: String,
    ) -> Result<Vec<u8>, ScramError> {
        if !matches!(self.state, State::Initial) {
            self.state = State::Failed;
            return Err(ScramError::OutOfOrder(
                "client-first-message after the exchange started",
            ));
        }
        match self.parse_client_first(mechanism, message, server_nonce) {
            Ok((state, reply)) => {
                self.state = state;
                Ok(reply)
            }
            Err(e) => {
                self.state = State::Failed;
                Err(e)
            }
        }
    }

    /// The fallible part of [`ScramServer::client_first`].
    fn parse_client_first(
        &self,
        mechanism: &str,
        message: &[u8],
        server_nonce: String,
    ) -> Result<(State, Vec<u8>), ScramError> {
        let plus = if mechanism == SCRAM_SHA_256_PLUS && self.channel_binding.is_some() {
            true
        } else if mechanism == SCRAM_SHA_256 {
            false
        } else {
            return Err(ScramError::UnsupportedMechanism);
        };
        let s = message::text(message)?;
        let mut parts = s.splitn(3, ',');
        let cbind = parts.next().unwrap_or_default();
        let authzid = parts
            .next()
            .ok_or(ScramError::malformed("missing gs2 header"))?;
        let bare = parts
            .next()
            .ok_or(ScramError::malformed("missing gs2 header"))?;

        let flag = match cbind {
            "n" => CbindFlag::No,
            "y" => CbindFlag::Yes,
            _ if cbind.starts_with("p=") => CbindFlag::Used,
            _ => return Err(ScramError::malformed("unexpected channel-binding flag")),
        };
        match flag {
            CbindFlag::No | CbindFlag::Yes if plus => {
                return Err(ScramError::ChannelBinding(
                    "the client selected SCRAM-SHA-256-PLUS, but the SCRAM message does not \
                     include channel binding data",
                ));
            }
            CbindFlag::Yes if self.channel_binding.is_some() => {
                return Err(ScramError::ChannelBinding(
                    "SCRAM channel binding negotiation error: the client supports channel \
                     binding but thinks the server does not, while this server does",
                ));
            }
            CbindFlag::Used if !plus => {
                return Err(ScramError::ChannelBinding(
                    "the client selected SCRAM-SHA-256 without channel binding, but the SCRAM \
                     message includes channel binding data",
                ));
            }
            CbindFlag::Used if cbind != format!("p={TLS_SERVER_END_POINT}") => {
                return Err(ScramError::ChannelBinding(
                    "unsupported SCRAM channel-binding type",
                ));
            }
            _ => {}
        }
        if authzid.starts_with("a=") {
            return Err(ScramError::malformed(
                "client uses authorization identity, but it is not supported",
            ));
        }
        if !authzid.is_empty() {
            return Err(ScramError::malformed("unexpected attribute in gs2 header"));
        }
        let gs2_header = &s[..cbind.len() + 2];

        if bare.starts_with("m=") {
            return Err(ScramError::malformed(
                "client requires an unsupported SCRAM extension",
            ));
        }
        let attrs = message::attributes(bare)?;
        // The user name is ignored: PostgreSQL authenticates the startup packet's user.
        message::expect(attrs.first(), b'n', "expected username attribute")?;
        let client_nonce = message::expect(attrs.get(1), b'r', "expected nonce attribute")?;
        if !is_printable_nonce(client_nonce) {
            return Err(ScramError::malformed(
                "client nonce contains invalid characters",
            ));
        }
        // Optional extensions after the nonce are ignored, as PostgreSQL does.

        let nonce = format!("{client_nonce}{server_nonce}");
        let server_first = format!(
            "r={nonce},s={},i={}",
            crypto::b64_encode(&self.salt),
            self.iterations
        );
        let reply = server_first.clone().into_bytes();
        Ok((
            State::SentServerFirst {
                gs2_header: gs2_header.to_owned(),
                flag,
                client_first_bare: bare.to_owned(),
                server_first,
                nonce,
            },
            reply,
        ))
    }

    /// Process client-final-message. On success return server-final-message (`v=...`) and the
    /// `ClientKey` recovered from the client's proof.
    ///
    /// A wrong proof and a mock exchange (unknown user) both fail with
    /// [`ScramError::AuthenticationFailed`].
    pub fn client_final(&mut self, message: &[u8]) -> Result<(Vec<u8>, ClientKey), ScramError> {
        let state = std::mem::replace(&mut self.state, State::Failed);
        let State::SentServerFirst {
            gs2_header,
            flag,
            client_first_bare,
            server_first,
            nonce,
        } = state
        else {
            return Err(ScramError::OutOfOrder(
                "client-final-message before client-first-message or after the end",
            ));
        };
        let s = message::text(message)?;
        let attrs = message::attributes(s)?;
        let cbind_text =
            message::expect(attrs.first(), b'c', "expected channel-binding attribute")?;
        let client_nonce = message::expect(attrs.get(1), b'r', "expected nonce attribute")?;
        // Extensions may sit between the nonce and the proof; the proof must come last.
        let proof_text = match attrs.as_slice() {
            [_, _, .., last] => message::expect(Some(last), b'p', "expected proof attribute")?,
            _ => return Err(ScramError::malformed("expected proof attribute")),
        };

        let cbind = crypto::b64_decode(cbind_text).ok_or(ScramError::malformed(
            "invalid channel-binding data encoding",
        ))?;
        let mut expected = gs2_header.into_bytes();
        if flag == CbindFlag::Used {
            expected.extend_from_slice(self.channel_binding.as_deref().unwrap_or_default());
        }
        if !bool::from(cbind.ct_eq(&expected)) {
            return Err(ScramError::ChannelBinding(
                "SCRAM channel binding check failed",
            ));
        }
        if client_nonce != nonce {
            return Err(ScramError::NonceMismatch);
        }
        let proof = crypto::b64_decode_key(proof_text).ok_or(ScramError::malformed(
            "invalid ClientProof (must be 32 bytes in base64)",
        ))?;

        // Everything before ",p=...".
        let without_proof = &s[..s.len() - proof_text.len() - 3];
        let auth_message = [
            client_first_bare.as_bytes(),
            b",",
            server_first.as_bytes(),
            b",",
            without_proof.as_bytes(),
        ];
        let client_signature = crypto::hmac(&self.stored_key, &auth_message);
        let mut client_key = proof;
        crypto::xor_in_place(&mut client_key, &client_signature);
        let matches = crypto::sha256(&client_key).ct_eq(&self.stored_key);
        if !bool::from(matches) || self.doomed {
            return Err(ScramError::AuthenticationFailed);
        }
        let server_signature = crypto::hmac(&self.server_key, &auth_message);
        self.state = State::Done;
        let reply = format!("v={}", crypto::b64_encode(&server_signature));
        Ok((reply.into_bytes(), ClientKey(client_key)))
    }

    /// Whether the exchange finished successfully.
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }
}

impl fmt::Debug for ScramServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Initial => "initial",
            State::SentServerFirst { .. } => "sent-server-first",
            State::Done => "done",
            State::Failed => "failed",
        };
        // `doomed` is deliberately not shown: it tells whether the user exists.
        f.debug_struct("ScramServer")
            .field("channel_binding", &self.channel_binding.is_some())
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ClientChannelBinding, ScramClient};

    #[test]
    fn doomed_exchange_fails_even_with_a_correct_proof() {
        // A mock exchange can never be won: force the flag on a server whose keys the client
        // knows, and a correct proof must still be refused.
        let v = ScramVerifier::from_password("pencil", b"salt", 16);
        let mut server = ScramServer::new(Some(v), None, b"");
        server.doomed = true;
        let mut client = ScramClient::with_password("pencil", ClientChannelBinding::Unsupported);
        let server_first = server
            .client_first(SCRAM_SHA_256, &client.client_first())
            .unwrap();
        let fin = client.server_first(&server_first).unwrap();
        assert_eq!(
            server.client_final(&fin).map(|_| ()),
            Err(ScramError::AuthenticationFailed)
        );
        assert!(!server.is_done());
    }

    #[test]
    fn mock_keys_derive_from_the_seed() {
        let a = ScramServer::new(None, None, b"secret\0alice");
        let b = ScramServer::new(None, None, b"secret\0bob");
        assert!(a.doomed && b.doomed);
        assert_eq!(a.iterations, MOCK_ITERATIONS);
        assert_eq!(a.salt.len(), MOCK_SALT_LEN);
        assert_ne!(a.salt, b.salt);
        assert_ne!(a.stored_key, b.stored_key);
        assert_ne!(a.stored_key, a.server_key);
    }
}
