//! `postgres://[LOGIN[:PASSWORD]@]HOST[:PORT][/DB][?sslmode=MODE]`: where the upstream is and,
//! optionally, the login pgstepup uses to look up SCRAM verifiers. As in libpq, a host that
//! starts with `/` is the directory of PostgreSQL's Unix socket (percent-encoded in the
//! authority, or given as `?host=`), and `?host=`/`?port=` override the authority's.

use std::fmt;
use std::path::PathBuf;

use crate::UpstreamTlsMode;

/// Stands in for libpq's empty host while parsing; `?host=` always replaces it.
const EMPTY_HOST: &str = "empty-host.invalid";

/// A parsed upstream address.
#[derive(Clone, PartialEq, Eq)]
pub struct UpstreamUrl {
    pub host: String,
    pub port: u16,
    /// The auth login (pgbouncer's `auth_user`), when given.
    pub login: Option<String>,
    pub password: Option<String>,
    /// Database the auth login connects to.
    pub database: String,
    /// `?sslmode=`, as libpq spells it; overrides `upstream.tls` when present.
    pub sslmode: Option<UpstreamTlsMode>,
}

/// Why an upstream URL was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UpstreamUrlError {
    #[error("not a URL: {0}")]
    Syntax(String),
    #[error("scheme must be postgres:// or postgresql://, not {0}://")]
    Scheme(String),
    #[error("a host is required")]
    MissingHost,
    #[error(
        "unsupported URL parameter {0:?}: only sslmode, host and port are accepted; use the [upstream] keys"
    )]
    Query(String),
    #[error("port must be a number from 1 to 65535, not {0:?}")]
    Port(String),
    #[error("sslmode must be disable, prefer, require, verify-ca or verify-full, not {0:?}")]
    SslMode(String),
}

impl UpstreamUrl {
    /// Parses the URL; the port defaults to 5432 and the database to `postgres`.
    pub fn parse(text: &str) -> Result<Self, UpstreamUrlError> {
        let url = match url::Url::parse(text) {
            // `postgres://LOGIN@/DB?host=/dir`: libpq allows a login with an empty host; the url
            // crate does not, so a placeholder stands in and `?host=` must replace it.
            Err(url::ParseError::EmptyHost) => {
                let (scheme, rest) = text.split_once("://").unwrap_or((text, ""));
                let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
                let (authority, tail) = rest.split_at(authority_end);
                let placeholder = format!("{scheme}://{authority}{EMPTY_HOST}{tail}");
                let url = url::Url::parse(&placeholder)
                    .map_err(|e| UpstreamUrlError::Syntax(e.to_string()))?;
                if !url.query_pairs().any(|(key, _)| key == "host") {
                    return Err(UpstreamUrlError::MissingHost);
                }
                url
            }
            parsed => parsed.map_err(|e| UpstreamUrlError::Syntax(e.to_string()))?,
        };
        if !matches!(url.scheme(), "postgres" | "postgresql") {
            return Err(UpstreamUrlError::Scheme(url.scheme().to_owned()));
        }
        let mut sslmode = None;
        let mut host_param = None;
        let mut port_param = None;
        for (key, value) in url.query_pairs() {
            match key.as_ref() {
                "sslmode" => {
                    sslmode = Some(match value.as_ref() {
                        "disable" => UpstreamTlsMode::Disable,
                        "prefer" => UpstreamTlsMode::Prefer,
                        "require" => UpstreamTlsMode::Require,
                        "verify-ca" => UpstreamTlsMode::VerifyCa,
                        "verify-full" => UpstreamTlsMode::VerifyFull,
                        other => return Err(UpstreamUrlError::SslMode(other.to_owned())),
                    })
                }
                "host" => host_param = Some(value.into_owned()),
                "port" => {
                    let port = value
                        .parse::<u16>()
                        .ok()
                        .filter(|p| *p != 0)
                        .ok_or_else(|| UpstreamUrlError::Port(value.to_string()))?;
                    port_param = Some(port);
                }
                _ => return Err(UpstreamUrlError::Query(key.into_owned())),
            }
        }
        let host = host_param
            .or_else(|| url.host_str().map(percent_decode))
            .filter(|h| !h.is_empty())
            .ok_or(UpstreamUrlError::MissingHost)?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let login = Some(url.username())
            .filter(|u| !u.is_empty())
            .map(percent_decode);
        let password = url.password().map(percent_decode);
        let database = url.path().trim_start_matches('/');
        let database = if database.is_empty() {
            "postgres".to_owned()
        } else {
            percent_decode(database)
        };
        Ok(UpstreamUrl {
            host,
            port: port_param.or(url.port()).unwrap_or(5432),
            login,
            password,
            database,
            sslmode,
        })
    }

    /// The socket file when the host is a Unix-socket directory: `DIR/.s.PGSQL.PORT`, as libpq
    /// names it.
    pub fn unix_socket(&self) -> Option<PathBuf> {
        self.host
            .starts_with('/')
            .then(|| PathBuf::from(&self.host).join(format!(".s.PGSQL.{}", self.port)))
    }

    /// `host:port` for connecting over TCP, or the socket file's path.
    pub fn address(&self) -> String {
        if let Some(socket) = self.unix_socket() {
            socket.display().to_string()
        } else if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = |b: u8| (b as char).to_digit(16);
            if let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((hi * 16 + lo) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Never prints the password.
impl fmt::Debug for UpstreamUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamUrl")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("login", &self.login)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("database", &self.database)
            .finish()
    }
}

impl fmt::Display for UpstreamUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "postgres://")?;
        if let Some(login) = &self.login {
            write!(f, "{login}")?;
            if self.password.is_some() {
                write!(f, ":***")?;
            }
            write!(f, "@")?;
        }
        if self.unix_socket().is_some() {
            // libpq's own spelling, which a DBA can paste back.
            write!(
                f,
                "/{}?host={}&port={}",
                self.database, self.host, self.port
            )
        } else {
            write!(f, "{}/{}", self.address(), self.database)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_and_minimal_forms() {
        let u = UpstreamUrl::parse("postgres://auth%40x:p%3Ass@db.example:6543/app").unwrap();
        assert_eq!(u.host, "db.example");
        assert_eq!(u.port, 6543);
        assert_eq!(u.login.as_deref(), Some("auth@x"));
        assert_eq!(u.password.as_deref(), Some("p:ss"));
        assert_eq!(u.database, "app");
        assert_eq!(u.to_string(), "postgres://auth@x:***@db.example:6543/app");
        assert!(!format!("{u:?}").contains("p:ss"));

        let u = UpstreamUrl::parse("postgresql://127.0.0.1").unwrap();
        assert_eq!(
            (u.port, u.login, u.database.as_str()),
            (5432, None, "postgres")
        );
        assert_eq!(
            UpstreamUrl::parse("postgres://[::1]:5433")
                .unwrap()
                .address(),
            "[::1]:5433"
        );
        let u = UpstreamUrl::parse("postgres://h/db?sslmode=verify-full").unwrap();
        assert_eq!(u.sslmode, Some(UpstreamTlsMode::VerifyFull));
    }

    #[test]
    fn a_host_that_is_a_directory_names_a_unix_socket() {
        let u = UpstreamUrl::parse("postgres://%2Fvar%2Frun%2Fpostgresql:5433/app").unwrap();
        assert_eq!(u.host, "/var/run/postgresql");
        assert_eq!(
            u.unix_socket(),
            Some(PathBuf::from("/var/run/postgresql/.s.PGSQL.5433"))
        );
        assert_eq!(u.address(), "/var/run/postgresql/.s.PGSQL.5433");
        assert_eq!(u.database, "app");
        assert_eq!(
            u.to_string(),
            "postgres:///app?host=/var/run/postgresql&port=5433"
        );

        // libpq's query form; ?host= and ?port= win over the authority.
        let u = UpstreamUrl::parse("postgres://auth:pw@/app?host=/tmp/pg&port=6000").unwrap();
        assert_eq!(
            (u.login.as_deref(), u.address().as_str()),
            (Some("auth"), "/tmp/pg/.s.PGSQL.6000")
        );
        assert_eq!(
            u.to_string(),
            "postgres://auth:***@/app?host=/tmp/pg&port=6000"
        );
        assert_eq!(UpstreamUrl::parse(&u.to_string()).unwrap().host, "/tmp/pg");
        let u = UpstreamUrl::parse("postgres://ignored:1/?host=db.example").unwrap();
        assert_eq!(
            (u.unix_socket(), u.address().as_str()),
            (None, "db.example:1")
        );

        assert_eq!(
            UpstreamUrl::parse("postgres:///app?host=/tmp&port=0"),
            Err(UpstreamUrlError::Port("0".into()))
        );
        assert_eq!(
            UpstreamUrl::parse("postgres:///app"),
            Err(UpstreamUrlError::MissingHost)
        );
    }

    #[test]
    fn refuses_bad_urls() {
        assert!(matches!(
            UpstreamUrl::parse("mysql://h"),
            Err(UpstreamUrlError::Scheme(_))
        ));
        assert!(UpstreamUrl::parse("127.0.0.1:5432").is_err());
        assert_eq!(
            UpstreamUrl::parse("postgres://h/?sslmode=sometimes"),
            Err(UpstreamUrlError::SslMode("sometimes".into()))
        );
        assert_eq!(
            UpstreamUrl::parse("postgres://h/?application_name=x"),
            Err(UpstreamUrlError::Query("application_name".into()))
        );
    }
}
