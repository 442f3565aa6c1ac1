//! Logging into the upstream as the client's own user: send the client's StartupMessage
//! unchanged, answer the server's authentication request, collect what it says before
//! ReadyForQuery.

use bytes::Bytes;

use pgstepup_auth::{tls_server_end_point, ClientChannelBinding, ClientKey, ScramClient};
use pgstepup_protocol::{error_message, tag, Connection, Frame};

use crate::UpstreamError;

/// What pgstepup answers the upstream's authentication request with.
pub enum Credential<'a> {
    /// A plaintext password (only pgstepup's own auth login has one).
    Password(&'a str),
    /// The ClientKey recovered from the client's SCRAM proof, with the verifier's ServerKey to
    /// check the server's signature: SCRAM towards the upstream without knowing the password.
    ScramKeys {
        client_key: &'a ClientKey,
        server_key: &'a [u8; 32],
    },
}

/// What the upstream said between AuthenticationOk and the first ReadyForQuery.
#[derive(Debug)]
pub struct LoginReply {
    /// ParameterStatus, NoticeResponse and NegotiateProtocolVersion frames, in order, to
    /// relay to the client.
    pub relay: Vec<Frame>,
    /// The upstream's cancel key (pid, secret).
    pub backend_key: Option<(i32, Bytes)>,
    /// Transaction status of the first ReadyForQuery.
    pub ready_status: u8,
    /// The protocol minor version the server settled on when it sent NegotiateProtocolVersion
    /// (which carries the full version number, major in the high 16 bits).
    pub negotiated_minor: Option<u16>,
    /// The session's search_path after login (the role's and database's defaults, startup
    /// options), once asked for (`SHOW search_path`); the same after `DISCARD ALL`.
    pub search_path: Option<String>,
}

/// Sends `startup` and authenticates with `credential`, then reads up to ReadyForQuery.
pub async fn login(
    conn: &mut Connection,
    startup: &[u8],
    credential: Credential<'_>,
) -> Result<LoginReply, UpstreamError> {
    conn.send(startup).await?;
    let mut relay = Vec::new();
    authenticate(conn, &credential, &mut relay).await?;
    read_until_ready(conn, relay).await
}

async fn authenticate(
    conn: &mut Connection,
    credential: &Credential<'_>,
    relay: &mut Vec<Frame>,
) -> Result<(), UpstreamError> {
    let mut scram: Option<ScramClient> = None;
    loop {
        let frame = conn.read_frame().await?;
        match frame.tag() {
            tag::AUTHENTICATION => {}
            tag::NEGOTIATE_PROTOCOL_VERSION | tag::NOTICE_RESPONSE => {
                relay.push(frame);
                continue;
            }
            tag::ERROR_RESPONSE => return Err(refused(frame)),
            other => {
                return Err(UpstreamError::Protocol(format!(
                    "unexpected message {:?} during authentication",
                    other as char
                )))
            }
        }
        let body = frame.body();
        let code = body
            .get(..4)
            .map(|b| i32::from_be_bytes(b.try_into().expect("4 bytes")))
            .ok_or_else(|| UpstreamError::Protocol("short authentication message".into()))?;
        let data = &body[4..];
        match code {
            0 => return Ok(()),
            3 => match credential {
                Credential::Password(password) => {
                    let mut body = password.as_bytes().to_vec();
                    body.push(0);
                    conn.send(Frame::new(tag::PASSWORD, &body).as_bytes())
                        .await?;
                }
                Credential::ScramKeys { .. } => {
                    return Err(UpstreamError::UnsupportedAuth("cleartext password"))
                }
            },
            10 => {
                let mut client = start_scram(conn, credential, data)?;
                let first = client.client_first();
                let mechanism = client.mechanism();
                let mut body = Vec::with_capacity(mechanism.len() + 5 + first.len());
                body.extend_from_slice(mechanism.as_bytes());
                body.push(0);
                body.extend_from_slice(&(first.len() as i32).to_be_bytes());
                body.extend_from_slice(&first);
                conn.send(Frame::new(tag::PASSWORD, &body).as_bytes())
                    .await?;
                scram = Some(client);
            }
            11 => {
                let client = scram
                    .as_mut()
                    .ok_or_else(|| UpstreamError::Protocol("SASLContinue before SASL".into()))?;
                let last = client.server_first(data)?;
                conn.send(Frame::new(tag::PASSWORD, &last).as_bytes())
                    .await?;
            }
            12 => {
                let client = scram
                    .as_mut()
                    .ok_or_else(|| UpstreamError::Protocol("SASLFinal before SASL".into()))?;
                client.server_final(data)?;
            }
            5 => return Err(UpstreamError::UnsupportedAuth("md5 (use scram-sha-256)")),
            2 => return Err(UpstreamError::UnsupportedAuth("Kerberos V5")),
            6 => return Err(UpstreamError::UnsupportedAuth("SCM credentials")),
            7 | 8 => return Err(UpstreamError::UnsupportedAuth("GSSAPI")),
            9 => return Err(UpstreamError::UnsupportedAuth("SSPI")),
            _ => return Err(UpstreamError::UnsupportedAuth("unknown")),
        }
    }
}

fn start_scram(
    conn: &Connection,
    credential: &Credential<'_>,
    mechanisms: &[u8],
) -> Result<ScramClient, UpstreamError> {
    let offered: Vec<&[u8]> = mechanisms
        .split(|&b| b == 0)
        .filter(|m| !m.is_empty())
        .collect();
    if !offered.contains(&&b"SCRAM-SHA-256"[..]) {
        return Err(UpstreamError::UnsupportedAuth("SASL without SCRAM-SHA-256"));
    }
    let binding = if !conn.stream().is_tls() {
        ClientChannelBinding::Unsupported
    } else {
        let plus_offered = offered.contains(&&b"SCRAM-SHA-256-PLUS"[..]);
        match conn
            .stream()
            .peer_certificate()
            .and_then(tls_server_end_point)
        {
            Some(hash) if plus_offered => ClientChannelBinding::TlsServerEndPoint(hash),
            _ => ClientChannelBinding::SupportedNotUsed,
        }
    };
    Ok(match credential {
        Credential::Password(password) => ScramClient::with_password(password, binding),
        Credential::ScramKeys {
            client_key,
            server_key,
        } => ScramClient::with_keys((*client_key).clone(), **server_key, binding),
    })
}

/// After AuthenticationOk: collects ParameterStatus, BackendKeyData and notices until the
/// first ReadyForQuery. `relay` holds frames already collected.
pub async fn read_until_ready(
    conn: &mut Connection,
    mut relay: Vec<Frame>,
) -> Result<LoginReply, UpstreamError> {
    let mut backend_key = None;
    loop {
        let frame = conn.read_frame().await?;
        match frame.tag() {
            tag::READY_FOR_QUERY => {
                let ready_status = *frame.body().first().unwrap_or(&b'I');
                let negotiated_minor = relay
                    .iter()
                    .find(|f| f.tag() == tag::NEGOTIATE_PROTOCOL_VERSION)
                    .and_then(|f| f.body().get(..4))
                    .map(|b| (u32::from_be_bytes(b.try_into().expect("4 bytes")) & 0xffff) as u16);
                return Ok(LoginReply {
                    relay,
                    backend_key,
                    ready_status,
                    negotiated_minor,
                    search_path: None,
                });
            }
            tag::BACKEND_KEY_DATA => {
                let body = frame.body();
                if body.len() < 8 {
                    return Err(UpstreamError::Protocol("short BackendKeyData".into()));
                }
                let pid = i32::from_be_bytes(body[..4].try_into().expect("4 bytes"));
                backend_key = Some((pid, frame.bytes().slice(9..)));
            }
            tag::ERROR_RESPONSE => return Err(refused(frame)),
            _ => relay.push(frame),
        }
    }
}

fn refused(frame: Frame) -> UpstreamError {
    UpstreamError::Refused {
        message: error_message(frame.body()).unwrap_or_default(),
        frame,
    }
}
