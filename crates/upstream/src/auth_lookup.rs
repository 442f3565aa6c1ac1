//! Where SCRAM verifiers come from: pgbouncer-style `auth_query` run by a dedicated upstream
//! login over one kept-open connection, or a verifier file in pgbouncer's `auth_file` format.

use std::collections::HashMap;
use std::path::Path;

use tokio::sync::Mutex;

use pgstepup_auth::ScramVerifier;
use pgstepup_protocol::startup::StartupMessage;
use pgstepup_protocol::{error_message, tag, Connection, Frame};

use crate::{connect, login, Credential, UpstreamError, UpstreamSettings};

/// Reads a login role's verifier; needs superuser or a SECURITY DEFINER wrapper (see README).
pub const DEFAULT_AUTH_QUERY: &str = "SELECT rolpassword FROM pg_catalog.pg_authid \
     WHERE rolname = $1 AND rolcanlogin \
     AND (rolvaliduntil IS NULL OR rolvaliduntil > pg_catalog.now())";

/// A source of SCRAM verifiers.
pub enum VerifierSource {
    Query(Box<AuthQuery>),
    File(HashMap<String, String>),
}

/// The auth login's query and its kept-open connection.
pub struct AuthQuery {
    settings: UpstreamSettings,
    query: String,
    conn: Mutex<Option<Connection>>,
}

impl VerifierSource {
    /// Looks verifiers up with `query` as the login named in the upstream URL.
    pub fn auth_query(settings: UpstreamSettings, query: Option<String>) -> Self {
        VerifierSource::Query(Box::new(AuthQuery {
            settings,
            query: query.unwrap_or_else(|| DEFAULT_AUTH_QUERY.to_owned()),
            conn: Mutex::new(None),
        }))
    }

    /// Loads a file of `"user" "SCRAM-SHA-256$..."` lines (`;` starts a comment line).
    pub fn from_file(path: &Path) -> Result<Self, UpstreamError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| UpstreamError::Lookup(format!("{}: {e}", path.display())))?;
        let mut users = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
                continue;
            }
            let fields = quoted_fields(line).ok_or_else(|| {
                UpstreamError::Lookup(format!(
                    "{}:{}: expected \"user\" \"verifier\"",
                    path.display(),
                    n + 1
                ))
            })?;
            users.insert(fields.0, fields.1);
        }
        Ok(VerifierSource::File(users))
    }

    /// The user's SCRAM verifier; `None` when the user is unknown, cannot log in, or has no
    /// SCRAM verifier (the caller then runs a mock exchange so nothing tells these apart).
    pub async fn lookup(&self, user: &str) -> Result<Option<ScramVerifier>, UpstreamError> {
        let text = match self {
            VerifierSource::File(users) => users.get(user).cloned(),
            VerifierSource::Query(q) => q.run(&q.query, user).await?.into_iter().next(),
        };
        Ok(text.and_then(|t| match t.parse::<ScramVerifier>() {
            Ok(v) => Some(v),
            Err(_) => {
                tracing::warn!(user, "user has no SCRAM-SHA-256 verifier; login refused");
                None
            }
        }))
    }

    /// The upstream roles `user` is a member of (directly or not); empty for a verifier file.
    pub async fn member_of(&self, user: &str) -> Result<Vec<String>, UpstreamError> {
        match self {
            VerifierSource::File(_) => Ok(Vec::new()),
            VerifierSource::Query(q) => q.run(MEMBERSHIP_QUERY, user).await,
        }
    }
}

/// Every role `$1` belongs to, through any chain of grants.
const MEMBERSHIP_QUERY: &str = "SELECT r.rolname FROM pg_catalog.pg_roles r \
     WHERE pg_catalog.pg_has_role($1, r.oid, 'MEMBER') AND r.rolname <> $1";

impl AuthQuery {
    /// Runs `sql` with `$1 = user` on the kept auth connection; first column of every row.
    async fn run(&self, sql: &str, user: &str) -> Result<Vec<String>, UpstreamError> {
        // A hung upstream must not hold every login behind this lock.
        let limit = self.settings.connect_timeout * 2;
        match tokio::time::timeout(limit, self.run_untimed(sql, user)).await {
            Ok(result) => result,
            Err(_) => {
                // The kept connection may be mid-reply: never reuse it.
                *self.conn.lock().await = None;
                Err(UpstreamError::Timeout(self.settings.url.address()))
            }
        }
    }

    async fn run_untimed(&self, sql: &str, user: &str) -> Result<Vec<String>, UpstreamError> {
        let mut conn = self.conn.lock().await;
        // One retry on a fresh connection: the kept one may have been closed upstream.
        match run_query(&mut conn, &self.settings, sql, user).await {
            Ok(v) => Ok(v),
            Err(_) => {
                *conn = None;
                run_query(&mut conn, &self.settings, sql, user).await
            }
        }
    }
}

fn quoted_fields(line: &str) -> Option<(String, String)> {
    let mut fields = Vec::new();
    let mut rest = line;
    while fields.len() < 2 {
        rest = rest.trim_start().strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            if c == '"' {
                if rest[i + 1..].starts_with('"') {
                    value.push('"');
                    chars.next();
                } else {
                    break i;
                }
            } else {
                value.push(c);
            }
        };
        fields.push(value);
        rest = &rest[end + 1..];
    }
    let verifier = fields.pop()?;
    Some((fields.pop()?, verifier))
}

async fn run_query(
    slot: &mut Option<Connection>,
    settings: &UpstreamSettings,
    query: &str,
    user: &str,
) -> Result<Vec<String>, UpstreamError> {
    if slot.is_none() {
        *slot = Some(open_auth_login(settings).await?);
    }
    let conn = slot.as_mut().expect("just set");
    let mut parse = Vec::with_capacity(query.len() + 4);
    parse.push(0);
    parse.extend_from_slice(query.as_bytes());
    parse.extend_from_slice(&[0, 0, 0]);
    conn.queue_frame(&Frame::new(tag::PARSE, &parse));
    let mut bind = vec![0, 0, 0, 0, 0, 1];
    bind.extend_from_slice(&(user.len() as i32).to_be_bytes());
    bind.extend_from_slice(user.as_bytes());
    bind.extend_from_slice(&[0, 0]);
    conn.queue_frame(&Frame::new(tag::BIND, &bind));
    conn.queue_frame(&Frame::new(tag::EXECUTE, &[0, 0, 0, 0, 0]));
    conn.queue_frame(&Frame::new(tag::SYNC, &[]));
    conn.flush().await?;
    let mut values = Vec::new();
    let mut error = None;
    loop {
        let frame = conn.read_frame().await?;
        match frame.tag() {
            tag::DATA_ROW => values.extend(first_column(frame.body())),
            tag::ERROR_RESPONSE => error = error_message(frame.body()),
            tag::READY_FOR_QUERY => break,
            _ => {}
        }
    }
    match error {
        // A query error is a configuration problem, not a reason to retry forever.
        Some(message) => {
            tracing::error!(%message, "auth query failed");
            Err(UpstreamError::Lookup(message))
        }
        None => Ok(values),
    }
}

fn first_column(body: &[u8]) -> Option<String> {
    let columns = i16::from_be_bytes(body.get(..2)?.try_into().ok()?);
    if columns < 1 {
        return None;
    }
    let len = i32::from_be_bytes(body.get(2..6)?.try_into().ok()?);
    let len = usize::try_from(len).ok()?;
    let value = body.get(6..6 + len)?;
    Some(String::from_utf8_lossy(value).into_owned())
}

async fn open_auth_login(settings: &UpstreamSettings) -> Result<Connection, UpstreamError> {
    let login_name = settings.url.login.as_deref().ok_or_else(|| {
        UpstreamError::Lookup("upstream.url has no login for the auth query".into())
    })?;
    let startup = StartupMessage::build(
        0,
        &[
            ("user", login_name),
            ("database", &settings.url.database),
            ("application_name", "pgstepup-auth"),
        ],
    );
    let mut conn = connect(settings).await?;
    let password = settings.url.password.as_deref().unwrap_or("");
    login(&mut conn, startup.raw(), Credential::Password(password)).await?;
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_auth_file_lines() {
        assert_eq!(
            quoted_fields(r#""alice" "SCRAM-SHA-256$4096:c2FsdA==$a:b""#),
            Some(("alice".into(), "SCRAM-SHA-256$4096:c2FsdA==$a:b".into()))
        );
        assert_eq!(
            quoted_fields(r#""we""ird" "x""#),
            Some(("we\"ird".into(), "x".into()))
        );
        assert_eq!(quoted_fields("alice x"), None);
        assert_eq!(quoted_fields(r#""alice" "x"#), None);
    }

    #[test]
    fn reads_first_column_of_a_data_row() {
        let mut row = 1i16.to_be_bytes().to_vec();
        row.extend_from_slice(&3i32.to_be_bytes());
        row.extend_from_slice(b"abc");
        assert_eq!(first_column(&row), Some("abc".into()));
        let mut null = 1i16.to_be_bytes().to_vec();
        null.extend_from_slice(&(-1i32).to_be_bytes());
        assert_eq!(first_column(&null), None);
        assert_eq!(first_column(&[0, 1, 0]), None);
    }
}
