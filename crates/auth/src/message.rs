//! Parsing helpers for SCRAM messages: comma-separated `name=value` attributes.

use crate::error::ScramError;

/// Interpret a message body as UTF-8 without NUL bytes (PostgreSQL treats SCRAM messages as
/// C strings, so an embedded NUL is a protocol violation).
pub(crate) fn text(message: &[u8]) -> Result<&str, ScramError> {
    if message.is_empty() {
        return Err(ScramError::malformed("the message is empty"));
    }
    if message.contains(&0) {
        return Err(ScramError::malformed("the message contains a NUL byte"));
    }
    std::str::from_utf8(message).map_err(|_| ScramError::malformed("the message is not UTF-8"))
}

/// One `name=value` attribute.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Attr<'a> {
    /// The single-letter attribute name.
    pub(crate) name: u8,
    /// Everything after the `=`, up to the next comma (possibly empty).
    pub(crate) value: &'a str,
}

/// Split `s` into attributes. Every comma-separated part must be `<letter>=<value>`.
pub(crate) fn attributes(s: &str) -> Result<Vec<Attr<'_>>, ScramError> {
    s.split(',')
        .map(|part| match part.as_bytes() {
            [name, b'=', ..] if name.is_ascii_alphabetic() => Ok(Attr {
                name: *name,
                value: &part[2..],
            }),
            _ => Err(ScramError::malformed(
                "expected an attribute of the form x=value",
            )),
        })
        .collect()
}

/// Return the value of `attr` if it is named `name`, else a malformed-message error.
pub(crate) fn expect<'a>(
    attr: Option<&Attr<'a>>,
    name: u8,
    what: &'static str,
) -> Result<&'a str, ScramError> {
    match attr {
        Some(a) if a.name == name => Ok(a.value),
        _ => Err(ScramError::malformed(what)),
    }
}

/// Whether `nonce` is a valid non-empty SCRAM nonce: printable ASCII except `,`.
pub(crate) fn is_printable_nonce(nonce: &str) -> bool {
    !nonce.is_empty()
        && nonce
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

/// Parse a positive decimal iteration count without sign, spaces or overflow.
pub(crate) fn parse_iterations(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > 10 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u32>().ok().filter(|&i| i > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_split() {
        let attrs = attributes("n=,r=abc,x=y=z").unwrap();
        assert_eq!(attrs.len(), 3);
        assert_eq!((attrs[0].name, attrs[0].value), (b'n', ""));
        assert_eq!((attrs[1].name, attrs[1].value), (b'r', "abc"));
        assert_eq!((attrs[2].name, attrs[2].value), (b'x', "y=z"));
        assert!(attributes("n=,r=abc,").is_err());
        assert!(attributes("r").is_err());
        assert!(attributes("1=a").is_err());
        assert!(attributes("").is_err());
    }

    #[test]
    fn text_rejects_bad_input() {
        assert!(text(b"").is_err());
        assert!(text(b"a\0b").is_err());
        assert!(text(&[0xff, 0xfe]).is_err());
        assert_eq!(text(b"ok").unwrap(), "ok");
    }

    #[test]
    fn iteration_parsing() {
        assert_eq!(parse_iterations("4096"), Some(4096));
        assert_eq!(parse_iterations("0"), None);
        assert_eq!(parse_iterations("-1"), None);
        assert_eq!(parse_iterations("+1"), None);
        assert_eq!(parse_iterations(" 1"), None);
        assert_eq!(parse_iterations("4294967296"), None);
        assert_eq!(parse_iterations("99999999999999999999"), None);
        assert_eq!(parse_iterations(""), None);
    }

    #[test]
    fn nonce_charset() {
        assert!(is_printable_nonce(
            "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
        ));
        assert!(!is_printable_nonce(""));
        assert!(!is_printable_nonce("a b"));
        assert!(!is_printable_nonce("a,b"));
        assert!(!is_printable_nonce("é"));
    }
}
