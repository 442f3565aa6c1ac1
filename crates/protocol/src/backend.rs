//! Messages pgstepup originates itself towards a client, built with pgwire's message types.
//! Everything else a client sees is the upstream's original bytes.

use bytes::{Bytes, BytesMut};
use pgwire::messages::response::{ErrorResponse, NoticeResponse, ReadyForQuery, TransactionStatus};
use pgwire::messages::startup::{Authentication, BackendKeyData, SecretKey};
use pgwire::messages::Message;

/// An error or notice pgstepup reports in PostgreSQL's own format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgError {
    pub severity: &'static str,
    /// Five-character SQLSTATE.
    pub code: &'static str,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl PgError {
    /// An ERROR: the statement fails, the session goes on.
    pub fn error(code: &'static str, message: impl Into<String>) -> Self {
        Self::new("ERROR", code, message)
    }

    /// A FATAL: the session ends after this message.
    pub fn fatal(code: &'static str, message: impl Into<String>) -> Self {
        Self::new("FATAL", code, message)
    }

    /// A NOTICE: information the client shows while the session goes on.
    pub fn notice(message: impl Into<String>) -> Self {
        Self::new("NOTICE", "00000", message)
    }

    fn new(severity: &'static str, code: &'static str, message: impl Into<String>) -> Self {
        PgError {
            severity,
            code,
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    /// Adds a HINT line.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Adds a DETAIL line.
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    fn fields(&self) -> Vec<(u8, String)> {
        let mut fields = vec![
            (b'S', self.severity.to_owned()),
            (b'V', self.severity.to_owned()),
            (b'C', self.code.to_owned()),
            (b'M', self.message.clone()),
        ];
        if let Some(detail) = &self.detail {
            fields.push((b'D', detail.clone()));
        }
        if let Some(hint) = &self.hint {
            fields.push((b'H', hint.clone()));
        }
        fields
    }

    /// Encodes as an ErrorResponse frame.
    pub fn to_error_response(&self) -> Bytes {
        encode(&ErrorResponse::new(self.fields()))
    }

    /// Encodes as a NoticeResponse frame (severity should then be NOTICE or WARNING).
    pub fn to_notice_response(&self) -> Bytes {
        encode(&NoticeResponse::new(self.fields()))
    }
}

impl std::fmt::Display for PgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.severity, self.code, self.message)
    }
}

/// Well-known SQLSTATEs pgstepup uses.
pub mod sqlstate {
    pub const PROTOCOL_VIOLATION: &str = "08P01";
    pub const CONNECTION_FAILURE: &str = "08006";
    pub const CANNOT_CONNECT_NOW: &str = "57P03";
    pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
    pub const INVALID_AUTHORIZATION: &str = "28000";
    pub const INVALID_PASSWORD: &str = "28P01";
    pub const PROGRAM_LIMIT_EXCEEDED: &str = "54000";
    pub const ADMIN_SHUTDOWN: &str = "57P01";
    pub const QUERY_CANCELED: &str = "57014";
    pub const IDLE_SESSION_TIMEOUT: &str = "57P05";
    pub const TOO_MANY_CONNECTIONS: &str = "53300";
    pub const INSUFFICIENT_PRIVILEGE: &str = "42501";
    pub const IN_FAILED_SQL_TRANSACTION: &str = "25P02";
}

/// ReadyForQuery with the given transaction status byte (`I`, `T` or `E`).
pub fn ready_for_query(status: u8) -> Bytes {
    let status = match status {
        b'T' => TransactionStatus::Transaction,
        b'E' => TransactionStatus::Error,
        _ => TransactionStatus::Idle,
    };
    encode(&ReadyForQuery::new(status))
}

/// AuthenticationOk.
pub fn authentication_ok() -> Bytes {
    encode(&Authentication::Ok)
}

/// AuthenticationSASL listing the mechanisms offered.
pub fn authentication_sasl(mechanisms: &[&str]) -> Bytes {
    encode(&Authentication::SASL(
        mechanisms.iter().map(|m| (*m).to_owned()).collect(),
    ))
}

/// AuthenticationSASLContinue carrying a server-first-message.
pub fn authentication_sasl_continue(data: Vec<u8>) -> Bytes {
    encode(&Authentication::SASLContinue(Bytes::from(data)))
}

/// AuthenticationSASLFinal carrying a server-final-message.
pub fn authentication_sasl_final(data: Vec<u8>) -> Bytes {
    encode(&Authentication::SASLFinal(Bytes::from(data)))
}

/// BackendKeyData with pgstepup's own key for this client.
pub fn backend_key_data(pid: i32, secret: &[u8]) -> Bytes {
    let secret = if secret.len() == 4 {
        SecretKey::I32(i32::from_be_bytes(secret.try_into().expect("4 bytes")))
    } else {
        SecretKey::Bytes(Bytes::copy_from_slice(secret))
    };
    encode(&BackendKeyData::new(pid, secret))
}

fn encode<M: Message>(message: &M) -> Bytes {
    let mut buf = BytesMut::new();
    message
        .encode(&mut buf)
        .expect("messages pgstepup builds are within pgwire's size limits");
    buf.freeze()
}

/// NegotiateProtocolVersion: the newest 3.x version pgstepup speaks and the `_pq_.` options it
/// does not recognise. Like PostgreSQL, the version goes on the wire as the full number.
pub fn negotiate_protocol_version(newest_minor: u16, unsupported: &[&str]) -> Bytes {
    use pgwire::messages::startup::NegotiateProtocolVersion;
    encode(&NegotiateProtocolVersion::new(
        (3 << 16) | i32::from(newest_minor),
        unsupported.iter().map(|o| (*o).to_owned()).collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_response_layout() {
        let bytes = PgError::fatal("28P01", "password authentication failed for user \"a\"")
            .to_error_response();
        assert_eq!(bytes[0], b'E');
        let len = u32::from_be_bytes(bytes[1..5].try_into().unwrap()) as usize;
        assert_eq!(len + 1, bytes.len());
        let body = &bytes[5..];
        assert!(body.starts_with(b"SFATAL\0VFATAL\0C28P01\0M"));
        assert_eq!(*body.last().unwrap(), 0);
    }

    #[test]
    fn small_messages() {
        assert_eq!(&ready_for_query(b'T')[..], b"Z\0\0\0\x05T");
        assert_eq!(&authentication_ok()[..], b"R\0\0\0\x08\0\0\0\0");
        assert_eq!(
            &backend_key_data(7, &[0, 0, 0, 9])[..],
            b"K\0\0\0\x0c\0\0\0\x07\0\0\0\x09"
        );
        assert_eq!(backend_key_data(7, &[1; 32]).len(), 1 + 4 + 4 + 32);
        let sasl = authentication_sasl(&["SCRAM-SHA-256"]);
        assert_eq!(&sasl[5..], b"\0\0\0\x0aSCRAM-SHA-256\0\0");
    }
}
