//! `postgres://[LOGIN[:PASSWORD]@]HOST[:PORT][/DB][?sslmode=MODE]`: where the upstream is and,
//! optionally, the login pgstepup uses to look up SCRAM verifiers.

use std::fmt;

use crate::UpstreamTlsMode;

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
    #[error("unsupported URL parameter {0:?}: only sslmode is accepted; use the [upstream] keys")]
    Query(String),
    #[error("sslmode must be disable, prefer, require, verify-ca or verify-full, not {0:?}")]
    SslMode(String),
}

impl UpstreamUrl {
    /// Parses the URL; the port defaults to 5432 and the database to `postgres`.
    pub fn parse(text: &str) -> Result<Self, UpstreamUrlError> {
        let url = url::Url::parse(text).map_err(|e| UpstreamUrlError::Syntax(e.to_string()))?;
        if !matches!(url.scheme(), "postgres" | "postgresql") {
            return Err(UpstreamUrlError::Scheme(url.scheme().to_owned()));
        }
        let mut sslmode = None;
        for (key, value) in url.query_pairs() {
            if key != "sslmode" {
                return Err(UpstreamUrlError::Query(key.into_owned()));
            }
            sslmode = Some(match value.as_ref() {
                "disable" => UpstreamTlsMode::Disable,
                "prefer" => UpstreamTlsMode::Prefer,
                "require" => UpstreamTlsMode::Require,
                "verify-ca" => UpstreamTlsMode::VerifyCa,
                "verify-full" => UpstreamTlsMode::VerifyFull,
                other => return Err(UpstreamUrlError::SslMode(other.to_owned())),
            });
        }
        let host = url
            .host_str()
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
            port: url.port().unwrap_or(5432),
            login,
            password,
            database,
            sslmode,
        })
    }

    /// `host:port` for connecting.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
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
        write!(f, "{}/{}", self.address(), self.database)
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
