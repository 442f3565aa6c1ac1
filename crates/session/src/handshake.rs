//! The first packets of a connection: encryption negotiation (SSLRequest answered S with
//! rustls or N, PG17 direct TLS with ALPN `postgresql`, GSSENCRequest answered N), then a
//! CancelRequest (handled here) or the StartupMessage (checked, then handed on). On the Unix
//! socket, as PostgreSQL does, encryption requests are answered N.

use tokio::net::TcpStream;

use pgstepup_classify::Kind;
use pgstepup_protocol::backend::{sqlstate, PgError};
use pgstepup_protocol::startup::{StartupMessage, StartupPacket, TLS_HANDSHAKE_BYTE};
use pgstepup_protocol::{Connection, Stream};

use crate::client_auth::Refusal;
use crate::client_socket::{ClientAddr, ClientSocket};
use crate::listener::Shared;
use crate::tls::ALPN_POSTGRESQL;

/// What the first packets asked for.
pub(crate) enum Opening {
    /// A client that wants a session.
    Session {
        /// Boxed: a connection is far larger than the other variant.
        conn: Box<Connection>,
        startup: StartupMessage,
    },
    /// A cancel request, already dealt with.
    Cancelled,
}

/// Runs the startup phase up to a StartupMessage or a CancelRequest. On refusal, the error is
/// returned with the connection so the caller can tell the client.
pub(crate) async fn open(
    shared: &Shared,
    socket: ClientSocket,
    peer: ClientAddr,
) -> Result<Opening, (Option<Connection>, Refusal)> {
    let max_frame = shared.config.limits.max_message_bytes;
    let mut conn = match socket {
        ClientSocket::Unix(unix) => Connection::new(Stream::Unix(unix), max_frame),
        ClientSocket::Tcp(tcp) => {
            let mut first = [0u8; 1];
            match tcp.peek(&mut first).await {
                Ok(1) => {}
                _ => return Err((None, Refusal::Gone)),
            }
            if first[0] == TLS_HANDSHAKE_BYTE {
                direct_tls(shared, tcp).await.map_err(|r| (None, r))?
            } else {
                Connection::new(Stream::Plain(tcp), max_frame)
            }
        }
    };
    let on_unix_socket = matches!(conn.stream(), Stream::Unix(_));
    loop {
        let packet = match conn.read_startup_packet().await {
            Ok(p) => p,
            Err(e) => return Err((Some(conn), e.into())),
        };
        let packet = match StartupPacket::parse(packet) {
            Ok(p) => p,
            Err(e) => {
                let code = match e {
                    pgstepup_protocol::startup::StartupError::UnsupportedProtocol(..) => {
                        sqlstate::FEATURE_NOT_SUPPORTED
                    }
                    _ => sqlstate::PROTOCOL_VIOLATION,
                };
                return Err((
                    Some(conn),
                    Refusal::Error(PgError::fatal(code, e.to_string())),
                ));
            }
        };
        match packet {
            StartupPacket::SslRequest if !conn.stream().is_tls() => {
                let Some(tls) = shared.tls().filter(|_| !on_unix_socket) else {
                    if let Err(e) = conn.send(b"N").await {
                        return Err((None, e.into()));
                    }
                    continue;
                };
                if let Err(e) = conn.send(b"S").await {
                    return Err((None, e.into()));
                }
                let stream = conn.into_stream().map_err(|e| (None, e.into()))?;
                let Stream::Plain(tcp) = stream else {
                    unreachable!("checked not TLS above")
                };
                let tls_stream = tls.acceptor.accept(tcp).await.map_err(|e| {
                    tracing::info!(%peer, error = %e, "TLS handshake failed");
                    (None, Refusal::Gone)
                })?;
                conn = Connection::new(Stream::TlsServer(Box::new(tls_stream)), max_frame);
            }
            StartupPacket::GssEncRequest if !conn.stream().is_tls() => {
                if let Err(e) = conn.send(b"N").await {
                    return Err((None, e.into()));
                }
            }
            StartupPacket::SslRequest | StartupPacket::GssEncRequest => {
                let e = PgError::fatal(
                    sqlstate::PROTOCOL_VIOLATION,
                    "encryption requested on an already encrypted connection",
                );
                return Err((Some(conn), Refusal::Error(e)));
            }
            StartupPacket::Cancel(request) => {
                crate::listener::forward_cancel(shared, request, peer);
                return Ok(Opening::Cancelled);
            }
            StartupPacket::Startup(startup) => {
                return match check_startup(shared, &conn, &startup, on_unix_socket) {
                    Ok(()) => Ok(Opening::Session {
                        conn: Box::new(conn),
                        startup,
                    }),
                    Err(e) => Err((Some(conn), Refusal::Error(e))),
                };
            }
        }
    }
}

/// PG17 direct TLS: the client starts with a ClientHello and must negotiate ALPN `postgresql`.
async fn direct_tls(shared: &Shared, tcp: TcpStream) -> Result<Connection, Refusal> {
    let Some(tls) = shared.tls() else {
        // No certificate: there is nothing to answer a ClientHello with.
        return Err(Refusal::Gone);
    };
    let stream = tls.acceptor.accept(tcp).await.map_err(|_| Refusal::Gone)?;
    let alpn_ok = stream.get_ref().1.alpn_protocol() == Some(ALPN_POSTGRESQL);
    let mut conn = Connection::new(
        Stream::TlsServer(Box::new(stream)),
        shared.config.limits.max_message_bytes,
    );
    if !alpn_ok {
        let e = PgError::fatal(
            sqlstate::PROTOCOL_VIOLATION,
            "received direct SSL connection request without ALPN protocol negotiation extension",
        );
        let _ = conn.send(&e.to_error_response()).await;
        return Err(Refusal::Gone);
    }
    Ok(conn)
}

fn check_startup(
    shared: &Shared,
    conn: &Connection,
    startup: &StartupMessage,
    on_unix_socket: bool,
) -> Result<(), PgError> {
    // As pgbouncer does, the local socket is exempt: it never leaves the machine.
    if shared.config.tls.require && !conn.stream().is_tls() && !on_unix_socket {
        return Err(PgError::fatal(
            sqlstate::INVALID_AUTHORIZATION,
            "pgstepup accepts only TLS connections",
        )
        .with_hint("Connect with sslmode=require or stronger."));
    }
    if startup.is_replication() {
        return Err(PgError::fatal(
            sqlstate::FEATURE_NOT_SUPPORTED,
            "pgstepup does not proxy replication connections",
        )
        .with_hint("Connect replication clients to the database server directly."));
    }
    if let Some(setting) = unpinning_startup_setting(startup) {
        return Err(PgError::fatal(
            sqlstate::FEATURE_NOT_SUPPORTED,
            format!("pgstepup requires {setting} to keep its safe value; remove it from the connection options"),
        ));
    }
    if let Some((setting, kinds)) = startup_setting_needing_step_up(startup) {
        return Err(PgError::fatal(
            sqlstate::INSUFFICIENT_PRIVILEGE,
            format!("pgstepup does not accept {setting} in the connection options: setting it is {kinds}, which needs step-up"),
        )
        .with_hint("Connect without it, then SET it in the session: pgstepup asks for a step-up there."));
    }
    if startup.user().is_none() {
        return Err(PgError::fatal(
            sqlstate::INVALID_AUTHORIZATION,
            "no PostgreSQL user name specified in startup packet",
        ));
    }
    Ok(())
}

/// The settings a startup packet makes: its parameters (not the connection's own: user,
/// database, options, replication) and each `-c name=value` / `--name=value` in `options`,
/// read as the server reads them (`-` in an option's name is `_`).
fn startup_settings(startup: &StartupMessage) -> Vec<(String, String)> {
    let mut settings: Vec<(String, String)> = startup
        .params()
        .iter()
        .filter(|(name, _)| {
            !matches!(
                name.as_str(),
                "user" | "database" | "options" | "replication"
            )
        })
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    let words = option_words(startup.param("options").unwrap_or_default());
    let mut words = words.iter().map(String::as_str);
    while let Some(word) = words.next() {
        // As the server's getopt reads them: flags may share a word (`-Ec name=value`,
        // `-Pcname=value`); one that takes an argument takes the rest of its word, else the
        // next word.
        let Some(flags) = word.strip_prefix('-') else {
            continue;
        };
        for (at, flag) in flags.char_indices() {
            if !SERVER_OPTIONS_WITH_ARGUMENT.contains(flag) {
                continue;
            }
            let rest = &flags[at + flag.len_utf8()..];
            let argument = match rest.is_empty() {
                true => words.next().unwrap_or_default(),
                false => rest,
            };
            if matches!(flag, 'c' | '-') {
                if let Some((name, value)) = argument.split_once('=') {
                    settings.push((name.replace('-', "_"), value.to_owned()));
                }
            }
            break;
        }
    }
    settings
}

/// The server's command-line switches that take an argument (postgres.c's getopt string):
/// `c` and `-` set a setting, the others other things.
const SERVER_OPTIONS_WITH_ARGUMENT: &str = "BCcDdfhkNprStvW-";

/// A setting in the startup packet that would unpin how pgstepup reads SQL.
fn unpinning_startup_setting(startup: &StartupMessage) -> Option<String> {
    startup_settings(startup)
        .into_iter()
        .find_map(|(name, value)| {
            (pgstepup_classify::pinned_setting_is_safe(&name, &value) == Some(false))
                .then_some(name)
        })
}

/// A setting in the startup packet that would need step-up as a SET after login (a role
/// switch, a search_path that puts a schema before pg_catalog, a setting that silences
/// triggers or the server's log): a connection cannot be held before it exists, so it is
/// refused, naming the setting and why.
fn startup_setting_needing_step_up(startup: &StartupMessage) -> Option<(String, String)> {
    startup_settings(startup)
        .into_iter()
        .find_map(|(name, value)| {
            // As set_config reads it: a value list such as a search_path stays a list.
            let quote = |text: &str| text.replace('\'', "''");
            let sql = format!(
                "SELECT pg_catalog.set_config('{}', '{}', false)",
                quote(&name),
                quote(&value)
            );
            let classification = pgstepup_classify::classify(&sql, &[]);
            let harmless = classification.pinned_violation.is_none()
                && classification
                    .kinds
                    .iter()
                    .all(|kind| matches!(kind, Kind::Read | Kind::Utility));
            (!harmless).then(|| {
                let why = classification
                    .kinds
                    .iter()
                    .filter(|k| !matches!(k, Kind::Read | Kind::Utility))
                    .map(|k| k.name())
                    .collect::<Vec<_>>()
                    .join(", ");
                (name, why)
            })
        })
}

/// `options` split into words as the server splits it: at whitespace, a backslash taking the
/// next character as it is (`-c search_path=a,\ b` is one word).
fn option_words(options: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => word.extend(chars.next()),
            c if c.is_ascii_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    fn startup(params: &[(&str, &str)]) -> StartupMessage {
        StartupMessage::build(0, params)
    }

    /// What would need step-up as a SET after login cannot come in the startup packet.
    #[test]
    fn settings_that_need_step_up_are_refused_at_startup() {
        let refused = |params: &[(&str, &str)]| {
            startup_setting_needing_step_up(&startup(params)).map(|(name, _)| name)
        };
        for (params, setting) in [
            (&[("role", "r2")][..], "role"),
            (&[("options", "-c role=r2")], "role"),
            (&[("options", "--role=r2")], "role"),
            (
                &[("options", "-csession_authorization=bob")],
                "session_authorization",
            ),
            (&[("search_path", "evil,pg_catalog")], "search_path"),
            (
                &[("options", r"-c search-path=evil,\ pg_catalog")],
                "search_path",
            ),
            (
                &[("options", "-c session_replication_role=replica")],
                "session_replication_role",
            ),
            (&[("options", "-Ec role=r2")], "role"),
            (&[("options", "-Pcrole=r2")], "role"),
            (
                &[("options", "-E -c search_path=evil,pg_catalog")],
                "search_path",
            ),
        ] {
            assert_eq!(refused(params).as_deref(), Some(setting), "{params:?}");
        }
        // What clients send as a matter of course.
        assert_eq!(
            refused(&[
                ("user", "alice"),
                ("database", "app"),
                ("application_name", "psql"),
                ("client_encoding", "UTF8"),
                ("DateStyle", "ISO, MDY"),
                ("search_path", "app, public"),
                ("options", "-c statement_timeout=5s --work-mem=64MB"),
            ]),
            None
        );
    }

    #[test]
    fn options_split_as_the_server_splits_them() {
        assert_eq!(
            option_words(r"  -c search_path=a,\ b  --work-mem=4MB -cx=y\\z "),
            ["-c", "search_path=a, b", "--work-mem=4MB", r"-cx=y\z"]
        );
    }

    #[test]
    fn escaped_values_in_options_are_read_as_the_server_reads_them() {
        let setting = |options| unpinning_startup_setting(&startup(&[("options", options)]));
        assert_eq!(
            setting(r"-c standard_conforming_strings=of\f").as_deref(),
            Some("standard_conforming_strings")
        );
        assert_eq!(setting("-c standard_conforming_strings=on"), None);
        // `on`, escaped as the server reads it.
        assert_eq!(setting(r"-c standard_conforming_strings=o\n"), None);
    }
}
