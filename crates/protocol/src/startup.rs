//! The untagged packets a client may open with: SSLRequest, GSSENCRequest, CancelRequest and
//! StartupMessage. The StartupMessage is kept as its original bytes so it can be forwarded
//! upstream unchanged (parameter order, duplicates and encoding preserved).

use bytes::Bytes;

/// Request code of an SSLRequest.
pub const SSL_REQUEST_CODE: u32 = 80_877_103;
/// Request code of a GSSENCRequest.
pub const GSSENC_REQUEST_CODE: u32 = 80_877_104;
/// Request code of a CancelRequest.
pub const CANCEL_REQUEST_CODE: u32 = 80_877_102;
/// First byte of a TLS ClientHello: a client using PostgreSQL 17's direct TLS negotiation.
pub const TLS_HANDSHAKE_BYTE: u8 = 0x16;

/// A parsed startup-phase packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    SslRequest,
    GssEncRequest,
    Cancel(CancelRequest),
    Startup(StartupMessage),
}

/// A CancelRequest: the key the client was given in BackendKeyData.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelRequest {
    pub pid: i32,
    /// 4 bytes in protocol 3.0, up to 256 in 3.2.
    pub secret: Bytes,
}

impl CancelRequest {
    /// Encodes a CancelRequest packet (used towards the upstream).
    pub fn encode(&self) -> Vec<u8> {
        let len = 12 + self.secret.len();
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(&(len as u32).to_be_bytes());
        out.extend_from_slice(&CANCEL_REQUEST_CODE.to_be_bytes());
        out.extend_from_slice(&self.pid.to_be_bytes());
        out.extend_from_slice(&self.secret);
        out
    }
}

/// A StartupMessage: protocol version and parameters, plus the bytes to forward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupMessage {
    raw: Bytes,
    pub major: u16,
    pub minor: u16,
    params: Vec<(String, String)>,
}

/// Why a startup packet was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StartupError {
    #[error("unsupported frontend protocol {0}.{1}: server supports 3.0 to 3.2")]
    UnsupportedProtocol(u16, u16),
    #[error("invalid startup packet layout: {0}")]
    Malformed(&'static str),
}

impl StartupPacket {
    /// Parses a whole packet as returned by `Connection::read_startup_packet`.
    pub fn parse(packet: Bytes) -> Result<Self, StartupError> {
        let code = packet
            .get(4..8)
            .map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")))
            .ok_or(StartupError::Malformed("packet too short"))?;
        match code {
            SSL_REQUEST_CODE if packet.len() == 8 => Ok(StartupPacket::SslRequest),
            GSSENC_REQUEST_CODE if packet.len() == 8 => Ok(StartupPacket::GssEncRequest),
            SSL_REQUEST_CODE | GSSENC_REQUEST_CODE => Err(StartupError::Malformed(
                "encryption request of wrong length",
            )),
            CANCEL_REQUEST_CODE => {
                if !(16..=12 + 256).contains(&packet.len()) {
                    return Err(StartupError::Malformed("cancel request of wrong length"));
                }
                let pid = i32::from_be_bytes(packet[8..12].try_into().expect("4 bytes"));
                Ok(StartupPacket::Cancel(CancelRequest {
                    pid,
                    secret: packet.slice(12..),
                }))
            }
            version => {
                let (major, minor) = ((version >> 16) as u16, (version & 0xffff) as u16);
                if major != 3 {
                    return Err(StartupError::UnsupportedProtocol(major, minor));
                }
                let params = parse_params(&packet[8..])?;
                Ok(StartupPacket::Startup(StartupMessage {
                    raw: packet,
                    major,
                    minor,
                    params,
                }))
            }
        }
    }
}

fn parse_params(mut body: &[u8]) -> Result<Vec<(String, String)>, StartupError> {
    let mut params = Vec::new();
    loop {
        let nul = body
            .iter()
            .position(|&b| b == 0)
            .ok_or(StartupError::Malformed("missing terminator"))?;
        if nul == 0 {
            if body.len() != 1 {
                return Err(StartupError::Malformed("data after the final terminator"));
            }
            return Ok(params);
        }
        let name = String::from_utf8_lossy(&body[..nul]).into_owned();
        body = &body[nul + 1..];
        let nul = body
            .iter()
            .position(|&b| b == 0)
            .ok_or(StartupError::Malformed("parameter without a value"))?;
        let value = String::from_utf8_lossy(&body[..nul]).into_owned();
        body = &body[nul + 1..];
        params.push((name, value));
    }
}

impl StartupMessage {
    /// The packet exactly as the client sent it.
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    /// A parameter's value (the last one wins, as in PostgreSQL).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// All parameters in the order sent.
    pub fn params(&self) -> &[(String, String)] {
        &self.params
    }

    /// The role the client asks to log in as.
    pub fn user(&self) -> Option<&str> {
        self.param("user").filter(|u| !u.is_empty())
    }

    /// The database, defaulting to the user name as PostgreSQL does.
    pub fn database(&self) -> Option<&str> {
        self.param("database")
            .filter(|d| !d.is_empty())
            .or_else(|| self.user())
    }

    /// Whether this is a physical or logical replication connection.
    pub fn is_replication(&self) -> bool {
        matches!(self.param("replication"), Some(v) if !matches!(v.to_ascii_lowercase().as_str(), "false" | "off" | "no" | "0"))
    }

    /// Builds a StartupMessage (used by pgstepup's own upstream logins and in tests).
    pub fn build(minor: u16, params: &[(&str, &str)]) -> Self {
        let mut out = vec![0, 0, 0, 0];
        out.extend_from_slice(&((3u32 << 16) | u32::from(minor)).to_be_bytes());
        for (k, v) in params {
            out.extend_from_slice(k.as_bytes());
            out.push(0);
            out.extend_from_slice(v.as_bytes());
            out.push(0);
        }
        out.push(0);
        let len = out.len() as u32;
        out[..4].copy_from_slice(&len.to_be_bytes());
        match StartupPacket::parse(Bytes::from(out)) {
            Ok(StartupPacket::Startup(m)) => m,
            _ => unreachable!("a built startup message always parses"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(code: u32, rest: &[u8]) -> Bytes {
        let mut out = ((8 + rest.len()) as u32).to_be_bytes().to_vec();
        out.extend_from_slice(&code.to_be_bytes());
        out.extend_from_slice(rest);
        Bytes::from(out)
    }

    #[test]
    fn parses_encryption_requests() {
        assert_eq!(
            StartupPacket::parse(packet(SSL_REQUEST_CODE, b"")),
            Ok(StartupPacket::SslRequest)
        );
        assert_eq!(
            StartupPacket::parse(packet(GSSENC_REQUEST_CODE, b"")),
            Ok(StartupPacket::GssEncRequest)
        );
        assert!(StartupPacket::parse(packet(SSL_REQUEST_CODE, b"x")).is_err());
    }

    #[test]
    fn parses_cancel_with_long_key() {
        let mut rest = 42i32.to_be_bytes().to_vec();
        rest.extend_from_slice(&[7u8; 32]);
        match StartupPacket::parse(packet(CANCEL_REQUEST_CODE, &rest)).unwrap() {
            StartupPacket::Cancel(c) => {
                assert_eq!(c.pid, 42);
                assert_eq!(&c.secret[..], &[7u8; 32]);
                assert_eq!(&c.encode()[..], &packet(CANCEL_REQUEST_CODE, &rest)[..]);
            }
            other => panic!("{other:?}"),
        }
        assert!(StartupPacket::parse(packet(CANCEL_REQUEST_CODE, b"ab")).is_err());
    }

    #[test]
    fn keeps_startup_bytes_and_order() {
        let m = StartupMessage::build(
            2,
            &[("user", "alice"), ("options", "-c x=1"), ("user", "bob")],
        );
        assert_eq!((m.major, m.minor), (3, 2));
        assert_eq!(m.user(), Some("bob"));
        assert_eq!(m.database(), Some("bob"));
        assert_eq!(m.params().len(), 3);
        assert!(!m.is_replication());
        let again = StartupPacket::parse(m.raw().clone()).unwrap();
        assert_eq!(again, StartupPacket::Startup(m));
    }

    #[test]
    fn detects_replication_and_bad_layouts() {
        assert!(
            StartupMessage::build(0, &[("user", "a"), ("replication", "database")])
                .is_replication()
        );
        assert!(
            !StartupMessage::build(0, &[("user", "a"), ("replication", "false")]).is_replication()
        );
        assert_eq!(
            StartupPacket::parse(packet(2 << 16, b"user\0a\0\0")),
            Err(StartupError::UnsupportedProtocol(2, 0))
        );
        assert!(StartupPacket::parse(packet(3 << 16, b"user\0a\0")).is_err());
        assert!(StartupPacket::parse(packet(3 << 16, b"user\0")).is_err());
        assert!(StartupPacket::parse(packet(3 << 16, b"user\0a\0\0junk")).is_err());
    }
}
