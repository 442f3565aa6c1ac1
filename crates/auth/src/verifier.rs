//! PostgreSQL SCRAM-SHA-256 verifiers: the `rolpassword` text stored in `pg_authid`.

use std::fmt;
use std::str::FromStr;

use crate::crypto;
use crate::message::parse_iterations;

/// A SCRAM-SHA-256 verifier as PostgreSQL stores it:
/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` (base64 fields).
///
/// It lets a server check a client's proof without knowing the password. `Debug` never
/// prints the keys.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramVerifier {
    /// PBKDF2 iteration count (positive).
    pub iterations: u32,
    /// The salt (non-empty).
    pub salt: Vec<u8>,
    /// `H(ClientKey)`.
    pub stored_key: [u8; 32],
    /// `HMAC(SaltedPassword, "Server Key")`.
    pub server_key: [u8; 32],
}

/// Why a text is not a usable SCRAM-SHA-256 verifier. Never contains the text itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifierError {
    /// The text looks like an MD5 hash (`md5` + 32 hex digits), which SCRAM cannot use.
    #[error("the password is stored as an MD5 hash, not a SCRAM-SHA-256 verifier")]
    Md5,
    /// The text does not start with `SCRAM-SHA-256$` (e.g. a plaintext password).
    #[error("the password is not stored as a SCRAM-SHA-256 verifier")]
    NotScram,
    /// The text starts like a SCRAM-SHA-256 verifier but a field is wrong.
    #[error("malformed SCRAM-SHA-256 verifier: {0}")]
    Malformed(&'static str),
}

impl ScramVerifier {
    /// Build the verifier PostgreSQL would store for `password` with this salt and iteration
    /// count (`SaltedPassword` = PBKDF2-HMAC-SHA-256 over the SASLprep'd password, or over the
    /// raw bytes when SASLprep fails, as PostgreSQL does).
    pub fn from_password(password: &str, salt: &[u8], iterations: u32) -> Self {
        let keys = crypto::password_keys(password, salt, iterations);
        ScramVerifier {
            iterations,
            salt: salt.to_vec(),
            stored_key: crypto::sha256(&keys.client_key),
            server_key: keys.server_key,
        }
    }
}

/// The prefix of every SCRAM-SHA-256 verifier.
const PREFIX: &str = "SCRAM-SHA-256$";

impl FromStr for ScramVerifier {
    type Err = VerifierError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let Some(rest) = s.strip_prefix(PREFIX) else {
            let is_md5 = s.len() == 35
                && s.starts_with("md5")
                && s.as_bytes()[3..].iter().all(u8::is_ascii_hexdigit);
            return Err(if is_md5 {
                VerifierError::Md5
            } else {
                VerifierError::NotScram
            });
        };
        let (params, keys) = rest
            .split_once('$')
            .ok_or(VerifierError::Malformed("missing '$' before the keys"))?;
        let (iterations, salt) = params.split_once(':').ok_or(VerifierError::Malformed(
            "missing ':' between iterations and salt",
        ))?;
        let (stored_key, server_key) = keys
            .split_once(':')
            .ok_or(VerifierError::Malformed("missing ':' between the keys"))?;
        let iterations = parse_iterations(iterations)
            .ok_or(VerifierError::Malformed("invalid iteration count"))?;
        let salt = crypto::b64_decode(salt)
            .filter(|salt| !salt.is_empty())
            .ok_or(VerifierError::Malformed("invalid salt"))?;
        let stored_key = crypto::b64_decode_key(stored_key)
            .ok_or(VerifierError::Malformed("invalid StoredKey"))?;
        let server_key = crypto::b64_decode_key(server_key)
            .ok_or(VerifierError::Malformed("invalid ServerKey"))?;
        Ok(ScramVerifier {
            iterations,
            salt,
            stored_key,
            server_key,
        })
    }
}

impl fmt::Display for ScramVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{PREFIX}{}:{}${}:{}",
            self.iterations,
            crypto::b64_encode(&self.salt),
            crypto::b64_encode(&self.stored_key),
            crypto::b64_encode(&self.server_key)
        )
    }
}

impl fmt::Debug for ScramVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramVerifier")
            .field("iterations", &self.iterations)
            .field("salt_len", &self.salt.len())
            .field("stored_key", &"<redacted>")
            .field("server_key", &"<redacted>")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Produced by PostgreSQL 16 for `create role ... password 'pencil'`.
    const PG_PENCIL: &str = "SCRAM-SHA-256$4096:7yTZIozcwAFNWyzpv/oZ4g==$\
        jenOvAgw/g/255uN8/f3zc2YLmjlWMZ4CKOAXmhl0YU=:/NMLB7GVfhDlGleV2v6pGk6BMaPHxOE677N/UVgTBTo=";

    #[test]
    fn from_password_matches_postgresql() {
        let parsed: ScramVerifier = PG_PENCIL.parse().unwrap();
        assert_eq!(parsed.iterations, 4096);
        assert_eq!(parsed.salt.len(), 16);
        let derived = ScramVerifier::from_password("pencil", &parsed.salt, parsed.iterations);
        assert_eq!(derived.to_string(), PG_PENCIL);
        assert_eq!(derived, parsed);
        let wrong = ScramVerifier::from_password("pencil2", &parsed.salt, parsed.iterations);
        assert_ne!(wrong.to_string(), PG_PENCIL);
    }

    #[test]
    fn from_password_matches_postgresql_saslprep() {
        // Produced by PostgreSQL 16 (UTF8 database) for the passwords shown.
        let cases = [
            // Soft hyphen maps to nothing: "ab".
            (
                "a\u{ad}b",
                "SCRAM-SHA-256$4096:p94PbdIw9LzZjUIcjumc3w==$\
                 t1Lpf/iSwbuL+l5bi11APmmmtklQUENxv9+ZaF0ezws=:\
                 0nTsMfeh1p+7HQZ113q0xMi37Fuf3WGo95XgaUEdZUM=",
            ),
            // Only mapped-to-nothing characters: the empty result is refused, raw bytes used.
            (
                "\u{ad}",
                "SCRAM-SHA-256$4096:TVaZiZ+oFC1g3q44AbMvsA==$\
                 pPUMWJYcOqILbICaVTO0PRZVPffNNtiquYYcFEbQxIs=:\
                 8XFWa0tT9e7l6gAHPjsjgeLQHNNE4ThLA6mrKJRj7aY=",
            ),
            // Unassigned code point U+0378: SASLprep fails, raw bytes used (no NBSP mapping).
            (
                "a\u{a0}b\u{378}",
                "SCRAM-SHA-256$4096:Kr80ZYF6/+jK18VNupc9BQ==$\
                 wrik5ugy1DNlO+aagvBRD7KU0iJKJQPmv+tL9CYRC5U=:\
                 oes9ab2nMLQP7FUi2P3I/wq0TS+AHYaV8N4BFzs45L8=",
            ),
        ];
        for (password, stored) in cases {
            let parsed: ScramVerifier = stored.parse().unwrap();
            let derived = ScramVerifier::from_password(password, &parsed.salt, parsed.iterations);
            assert_eq!(derived.to_string(), stored, "{password:?}");
        }
    }

    #[test]
    fn display_round_trips() {
        let v = ScramVerifier::from_password("secret", b"0123456789abcdef", 10);
        let again: ScramVerifier = v.to_string().parse().unwrap();
        assert_eq!(again, v);
    }

    #[test]
    fn rejects_non_scram_without_echoing() {
        let md5 = "md5a3556571e93b0d20722ba62be61e8c2d";
        assert_eq!(md5.parse::<ScramVerifier>(), Err(VerifierError::Md5));
        let plain = "hunter2-plaintext";
        let err = plain.parse::<ScramVerifier>().unwrap_err();
        assert_eq!(err, VerifierError::NotScram);
        assert!(!err.to_string().contains("hunter2"));
        assert!(!format!("{err:?}").contains("hunter2"));
        assert_eq!("".parse::<ScramVerifier>(), Err(VerifierError::NotScram));
    }

    #[test]
    fn rejects_malformed_fields_without_echoing() {
        let good: ScramVerifier = PG_PENCIL.parse().unwrap();
        let salt = crypto::b64_encode(&good.salt);
        let sk = crypto::b64_encode(&good.stored_key);
        let svk = crypto::b64_encode(&good.server_key);
        let short = crypto::b64_encode(&[1u8; 31]);
        let cases = [
            format!("SCRAM-SHA-256$4096:{salt}"),
            format!("SCRAM-SHA-256$4096{salt}${sk}:{svk}"),
            format!("SCRAM-SHA-256$4096:{salt}${sk}{svk}"),
            format!("SCRAM-SHA-256$0:{salt}${sk}:{svk}"),
            format!("SCRAM-SHA-256$-1:{salt}${sk}:{svk}"),
            format!("SCRAM-SHA-256$abc:{salt}${sk}:{svk}"),
            format!("SCRAM-SHA-256$4096:${sk}:{svk}"),
            format!("SCRAM-SHA-256$4096:!!!${sk}:{svk}"),
            format!("SCRAM-SHA-256$4096:{salt}${short}:{svk}"),
            format!("SCRAM-SHA-256$4096:{salt}${sk}:{short}"),
            format!("SCRAM-SHA-256$4096:{salt}${sk}:{svk}:"),
            format!("SCRAM-SHA-256$4096:{salt}${sk}:{svk}$"),
        ];
        for case in cases {
            let err = case.parse::<ScramVerifier>().unwrap_err();
            assert!(matches!(err, VerifierError::Malformed(_)), "{err:?}");
            let shown = format!("{err} {err:?}");
            assert!(!shown.contains(&sk) && !shown.contains(&svk) && !shown.contains(&salt));
        }
    }

    #[test]
    fn debug_hides_keys() {
        let v: ScramVerifier = PG_PENCIL.parse().unwrap();
        let shown = format!("{v:?}");
        assert!(shown.contains("4096"));
        assert!(!shown.contains(&crypto::b64_encode(&v.stored_key)));
        assert!(!shown.contains(&crypto::b64_encode(&v.server_key)));
        assert!(!shown.contains(&format!("{:?}", v.stored_key)));
        assert!(!shown.contains(&format!("{:?}", v.server_key)));
    }
}
