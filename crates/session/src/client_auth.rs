//! Proving who the client is, then logging into the upstream as that same user.
//!
//! `scram`: pgstepup runs SCRAM-SHA-256(-PLUS) itself against the user's verifier (unknown
//! users get a mock exchange that fails exactly like a wrong password), then answers the
//! upstream's SCRAM with the ClientKey recovered from the client's proof.
//! `passthrough`: the upstream's own authentication exchange is relayed; pgstepup only removes
//! SCRAM-SHA-256-PLUS from the offer, because the client's channel binding would cover
//! pgstepup's certificate, not the server's.

use std::time::Instant;

use bytes::Bytes;

use pgstepup_auth::{ClientKey, ScramServer, ScramVerifier};
use pgstepup_protocol::backend::{self, sqlstate, PgError};
use pgstepup_protocol::startup::StartupMessage;
use pgstepup_protocol::{tag, Connection, ConnectionError, Frame};
use pgstepup_upstream::{connect, login, read_until_ready, Credential, LoginReply, UpstreamError};

use crate::listener::Shared;

/// Why a login ended before the session started.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// pgstepup's own error, sent to the client.
    Error(PgError),
    /// The upstream's ErrorResponse, relayed as is.
    Upstream(Frame),
    /// The client went away; nothing to send.
    Gone,
}

impl Refusal {
    /// The bytes to send the client before closing, if any.
    pub(crate) fn frame(&self) -> Option<Bytes> {
        match self {
            Refusal::Error(e) => Some(e.to_error_response()),
            Refusal::Upstream(f) => Some(f.bytes().clone()),
            Refusal::Gone => None,
        }
    }
}

impl From<ConnectionError> for Refusal {
    fn from(e: ConnectionError) -> Self {
        match e {
            ConnectionError::Closed | ConnectionError::Truncated | ConnectionError::Io(_) => {
                Refusal::Gone
            }
            other => Refusal::Error(PgError::fatal(
                sqlstate::PROTOCOL_VIOLATION,
                other.to_string(),
            )),
        }
    }
}

impl From<std::io::Error> for Refusal {
    fn from(_: std::io::Error) -> Self {
        Refusal::Gone
    }
}

fn upstream_refusal(e: UpstreamError, user: &str) -> Refusal {
    match e {
        UpstreamError::Refused { frame, .. } => Refusal::Upstream(frame),
        UpstreamError::Scram(_) => {
            // The upstream holds a different verifier than the one the client was checked
            // against (password changed in between): to the client this is a failed login.
            tracing::warn!(user, "upstream rejected the SCRAM keys pgstepup derived");
            Refusal::Error(password_failed(user))
        }
        other => {
            tracing::error!(error = %other, "upstream login failed");
            Refusal::Error(PgError::fatal(
                sqlstate::CONNECTION_FAILURE,
                format!("pgstepup could not log in to the upstream server: {other}"),
            ))
        }
    }
}

fn password_failed(user: &str) -> PgError {
    PgError::fatal(
        sqlstate::INVALID_PASSWORD,
        format!("password authentication failed for user \"{user}\""),
    )
}

/// The outcome of a successful login.
pub(crate) struct LoggedIn {
    pub upstream: Connection,
    pub reply: LoginReply,
    /// When the upstream connection logged in (a reused one: when its first client did).
    pub opened: Instant,
}

/// Authenticates the client and logs into the upstream. On success the client has been sent
/// everything up to (not including) the startup reply the session builds.
pub(crate) async fn authenticate(
    shared: &Shared,
    client: &mut Connection,
    startup: &StartupMessage,
) -> Result<LoggedIn, Refusal> {
    let user = startup.user().unwrap_or_default();
    match &shared.verifiers {
        Some(source) => {
            let verifier = source.lookup(user).await.map_err(|e| {
                tracing::error!(error = %e, "verifier lookup failed");
                Refusal::Error(PgError::fatal(
                    sqlstate::CANNOT_CONNECT_NOW,
                    "pgstepup cannot verify credentials right now: the upstream server is unavailable",
                ))
            })?;
            let (minor, unsupported) = own_negotiation(startup);
            if minor < startup.minor || !unsupported.is_empty() {
                client.queue(&backend::negotiate_protocol_version(minor, &unsupported));
            }
            let server_key = verifier.as_ref().map(|v| v.server_key);
            let client_key = scram_exchange(shared, client, user, verifier).await?;
            if let Some(pool) = &shared.upstream_pool {
                if let Some(idle) = pool.take(startup.raw()).await {
                    client.queue(&backend::authentication_ok());
                    return Ok(LoggedIn {
                        upstream: idle.server,
                        reply: idle.login,
                        opened: idle.opened,
                    });
                }
            }
            let server_key = server_key.expect("a successful exchange had a verifier");
            let mut upstream = connect(&shared.upstream)
                .await
                .map_err(|e| upstream_refusal(e, user))?;
            let credential = Credential::ScramKeys {
                client_key: &client_key,
                server_key: &server_key,
            };
            let mut reply = login(&mut upstream, startup.raw(), credential)
                .await
                .map_err(|e| upstream_refusal(e, user))?;
            // The client was told pgstepup's own negotiation; the upstream's is not relayed.
            reply
                .relay
                .retain(|f| f.tag() != tag::NEGOTIATE_PROTOCOL_VERSION);
            reply.negotiated_minor = Some(minor);
            client.queue(&backend::authentication_ok());
            Ok(LoggedIn {
                upstream,
                reply,
                opened: Instant::now(),
            })
        }
        None => passthrough(shared, client, startup).await,
    }
}

/// The newest protocol pgstepup speaks is 3.2 (all it changes is the cancel key length, which
/// pgstepup issues itself), and it knows no `_pq_.` options.
fn own_negotiation(startup: &StartupMessage) -> (u16, Vec<&str>) {
    let unsupported = startup
        .params()
        .iter()
        .map(|(name, _)| name.as_str())
        .filter(|name| name.starts_with("_pq_."))
        .collect();
    (startup.minor.min(2), unsupported)
}

/// Runs SCRAM with the client; returns the ClientKey its proof revealed.
async fn scram_exchange(
    shared: &Shared,
    client: &mut Connection,
    user: &str,
    verifier: Option<ScramVerifier>,
) -> Result<ClientKey, Refusal> {
    let binding = if client.stream().is_tls() {
        shared.tls().and_then(|t| t.end_point_hash)
    } else {
        None
    };
    // Per-user mock salt, stable for the process, as PostgreSQL's scram_mock_salt.
    let mut mock_seed = shared.mock_secret.to_vec();
    mock_seed.extend_from_slice(user.as_bytes());
    let mut server = ScramServer::new(verifier, binding, &mock_seed);
    client
        .send(&backend::authentication_sasl(server.mechanisms()))
        .await?;

    let initial = read_password_message(client).await?;
    let (mechanism, data) = parse_sasl_initial(initial.body()).ok_or_else(|| {
        Refusal::Error(PgError::fatal(
            sqlstate::PROTOCOL_VIOLATION,
            "malformed SASLInitialResponse message",
        ))
    })?;
    let server_first = server
        .client_first(mechanism, data)
        .map_err(|e| scram_refusal(e, user))?;
    client
        .send(&backend::authentication_sasl_continue(server_first))
        .await?;

    let last = read_password_message(client).await?;
    let (server_final, client_key) = server
        .client_final(last.body())
        .map_err(|e| scram_refusal(e, user))?;
    client.queue(&backend::authentication_sasl_final(server_final));
    Ok(client_key)
}

fn scram_refusal(e: pgstepup_auth::ScramError, user: &str) -> Refusal {
    use pgstepup_auth::ScramError;
    match e {
        ScramError::AuthenticationFailed => {
            tracing::info!(user, "password authentication failed");
            Refusal::Error(password_failed(user))
        }
        other => Refusal::Error(PgError::fatal(
            sqlstate::PROTOCOL_VIOLATION,
            other.to_string(),
        )),
    }
}

async fn read_password_message(client: &mut Connection) -> Result<Frame, Refusal> {
    let frame = client.read_frame().await?;
    if frame.tag() != tag::PASSWORD {
        return Err(Refusal::Error(PgError::fatal(
            sqlstate::PROTOCOL_VIOLATION,
            format!("expected SASL response, got message type {}", frame.tag()),
        )));
    }
    Ok(frame)
}

fn parse_sasl_initial(body: &[u8]) -> Option<(&str, &[u8])> {
    let nul = body.iter().position(|&b| b == 0)?;
    let mechanism = std::str::from_utf8(&body[..nul]).ok()?;
    let len = i32::from_be_bytes(body.get(nul + 1..nul + 5)?.try_into().ok()?);
    let data = &body[nul + 5..];
    (usize::try_from(len).ok()? == data.len()).then_some((mechanism, data))
}

/// Relays the upstream's own authentication exchange.
async fn passthrough(
    shared: &Shared,
    client: &mut Connection,
    startup: &StartupMessage,
) -> Result<LoggedIn, Refusal> {
    let user = startup.user().unwrap_or_default();
    let mut upstream = connect(&shared.upstream)
        .await
        .map_err(|e| upstream_refusal(e, user))?;
    upstream.send(startup.raw()).await?;
    let mut relay = Vec::new();
    loop {
        let frame = upstream
            .read_frame()
            .await
            .map_err(|e| upstream_refusal(e.into(), user))?;
        match frame.tag() {
            tag::AUTHENTICATION => {}
            tag::ERROR_RESPONSE => return Err(Refusal::Upstream(frame)),
            tag::NEGOTIATE_PROTOCOL_VERSION => {
                // Kept in `relay` too so the negotiated version is known; sent now because
                // clients expect it before the authentication request.
                client.queue_frame(&frame);
                relay.push(frame);
                continue;
            }
            _ => {
                client.queue_frame(&frame);
                continue;
            }
        }
        let code = frame
            .body()
            .get(..4)
            .map(|b| i32::from_be_bytes(b.try_into().expect("4 bytes")));
        match code {
            Some(0) => {
                client.queue_frame(&frame);
                let reply = read_until_ready(&mut upstream, relay)
                    .await
                    .map_err(|e| upstream_refusal(e, user))?;
                let reply = LoginReply {
                    relay: reply
                        .relay
                        .into_iter()
                        .filter(|f| f.tag() != tag::NEGOTIATE_PROTOCOL_VERSION)
                        .collect(),
                    ..reply
                };
                return Ok(LoggedIn {
                    upstream,
                    reply,
                    opened: Instant::now(),
                });
            }
            Some(10) => {
                let mechanisms: Vec<&[u8]> = frame.body()[4..]
                    .split(|&b| b == 0)
                    .filter(|m| !m.is_empty() && *m != b"SCRAM-SHA-256-PLUS")
                    .collect();
                let names: Vec<&str> = mechanisms
                    .iter()
                    .filter_map(|m| std::str::from_utf8(m).ok())
                    .collect();
                client.send(&backend::authentication_sasl(&names)).await?;
                relay_client_answer(client, &mut upstream).await?;
            }
            Some(3 | 5 | 11) => {
                client.send(frame.as_bytes()).await?;
                relay_client_answer(client, &mut upstream).await?;
            }
            Some(12) => client.queue_frame(&frame),
            _ => {
                return Err(Refusal::Error(PgError::fatal(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    "the upstream server asks for an authentication method pgstepup cannot relay",
                )))
            }
        }
    }
}

async fn relay_client_answer(
    client: &mut Connection,
    upstream: &mut Connection,
) -> Result<(), Refusal> {
    let answer = read_password_message(client).await?;
    upstream.send(answer.as_bytes()).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sasl_initial_response() {
        let mut body = b"SCRAM-SHA-256\0".to_vec();
        body.extend_from_slice(&5i32.to_be_bytes());
        body.extend_from_slice(b"n,,n=");
        assert_eq!(
            parse_sasl_initial(&body),
            Some(("SCRAM-SHA-256", &b"n,,n="[..]))
        );
        body.push(b'x');
        assert_eq!(parse_sasl_initial(&body), None);
        assert_eq!(parse_sasl_initial(b"SCRAM"), None);
        assert_eq!(parse_sasl_initial(b"SCRAM\0\xff\xff\xff\xff"), None);
    }
}
