//! The SCRAM-SHA-256 primitives: HMAC, H, Hi (PBKDF2), SASLprep'd passwords, base64 and
//! nonces.

use std::borrow::Cow;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};

/// Length of every SCRAM-SHA-256 key, signature and proof.
pub(crate) const KEY_LEN: usize = 32;

/// Number of random bytes in a nonce before base64 (what PostgreSQL and libpq use).
pub(crate) const RAW_NONCE_LEN: usize = 18;

type HmacSha256 = Hmac<Sha256>;

/// A keyed HMAC-SHA-256 state (HMAC accepts keys of any length, so this cannot fail).
fn keyed(key: &[u8]) -> HmacSha256 {
    match <HmacSha256 as Mac>::new_from_slice(key) {
        Ok(mac) => mac,
        // HMAC hashes over-long keys and pads short ones; InvalidLength is unreachable.
        Err(_) => unreachable!("HMAC-SHA-256 accepts keys of any length"),
    }
}

/// HMAC-SHA-256(key, concatenation of `parts`).
pub(crate) fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; KEY_LEN] {
    let mut mac = keyed(key);
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// SHA-256 of `data`.
pub(crate) fn sha256(data: &[u8]) -> [u8; KEY_LEN] {
    Sha256::digest(data).into()
}

/// `Hi(str, salt, i)` of RFC 5802: PBKDF2-HMAC-SHA-256 with a single 32-byte output block.
pub(crate) fn hi(password: &[u8], salt: &[u8], iterations: u32) -> [u8; KEY_LEN] {
    let prf = keyed(password);
    let mut first = prf.clone();
    first.update(salt);
    first.update(&1u32.to_be_bytes());
    let mut u: [u8; KEY_LEN] = first.finalize().into_bytes().into();
    let mut result = u;
    for _ in 1..iterations {
        let mut mac = prf.clone();
        mac.update(&u);
        u = mac.finalize().into_bytes().into();
        xor_in_place(&mut result, &u);
    }
    result
}

/// `a ^= b`, bytewise.
pub(crate) fn xor_in_place(a: &mut [u8; KEY_LEN], b: &[u8; KEY_LEN]) {
    for (x, y) in a.iter_mut().zip(b) {
        *x ^= y;
    }
}

/// The bytes PostgreSQL feeds to `Hi`: the SASLprep'd password, or the raw password when
/// SASLprep rejects it (PostgreSQL and libpq fall back the same way, so such passwords still
/// work, just without normalization).
pub(crate) fn prepare_password(password: &str) -> Cow<'_, [u8]> {
    match stringprep::saslprep(password) {
        Ok(Cow::Borrowed(s)) => Cow::Borrowed(s.as_bytes()),
        // PostgreSQL refuses an empty result (e.g. only "mapped to nothing" characters).
        Ok(Cow::Owned(s)) if !s.is_empty() => Cow::Owned(s.into_bytes()),
        _ => Cow::Borrowed(password.as_bytes()),
    }
}

/// SaltedPassword, ClientKey and ServerKey derived from a password.
pub(crate) struct PasswordKeys {
    /// `HMAC(SaltedPassword, "Client Key")`.
    pub(crate) client_key: [u8; KEY_LEN],
    /// `HMAC(SaltedPassword, "Server Key")`.
    pub(crate) server_key: [u8; KEY_LEN],
}

/// Derive ClientKey and ServerKey from a password, salt and iteration count.
pub(crate) fn password_keys(password: &str, salt: &[u8], iterations: u32) -> PasswordKeys {
    let salted = hi(&prepare_password(password), salt, iterations);
    PasswordKeys {
        client_key: hmac(&salted, &[b"Client Key"]),
        server_key: hmac(&salted, &[b"Server Key"]),
    }
}

/// Standard padded base64.
pub(crate) fn b64_encode(data: &[u8]) -> String {
    STANDARD.encode(data)
}

/// Strict standard padded base64 decoding.
pub(crate) fn b64_decode(text: &str) -> Option<Vec<u8>> {
    STANDARD.decode(text).ok()
}

/// Decode base64 that must hold exactly [`KEY_LEN`] bytes.
pub(crate) fn b64_decode_key(text: &str) -> Option<[u8; KEY_LEN]> {
    // 32 bytes are 44 base64 characters; refuse anything longer before decoding.
    if text.len() != 44 {
        return None;
    }
    b64_decode(text)?.try_into().ok()
}

/// A fresh nonce: [`RAW_NONCE_LEN`] bytes from the thread-local CSPRNG, base64-encoded.
pub(crate) fn random_nonce() -> String {
    let mut raw = [0u8; RAW_NONCE_LEN];
    rand::rng().fill_bytes(&mut raw);
    b64_encode(&raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hi_matches_rfc7914_pbkdf2_sha256_vector() {
        // RFC 7914 §11: PBKDF2-HMAC-SHA256 (P="passwd", S="salt", c=1), first 32 bytes.
        let expected = "55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc";
        let got = hi(b"passwd", b"salt", 1);
        let hex: String = got.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, expected);
    }

    #[test]
    fn hi_multiple_iterations_vector() {
        // Well-known PBKDF2-HMAC-SHA256 vector: P="password", S="salt", c=4096, dkLen=32.
        let expected = "c5e478d59288c841aa530db6845c4c8d962893a001ce4e11a4963873aa98134a";
        let got = hi(b"password", b"salt", 4096);
        let hex: String = got.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, expected);
    }

    #[test]
    fn saslprep_normalizes_and_falls_back() {
        // U+00A0 (no-break space) maps to a space.
        assert_eq!(&*prepare_password("a\u{a0}b"), b"a b");
        // U+00AD (soft hyphen) maps to nothing.
        assert_eq!(&*prepare_password("a\u{ad}b"), b"ab");
        // Prohibited control character: raw bytes are used.
        assert_eq!(&*prepare_password("a\u{7}b"), b"a\x07b");
        // Only mapped-to-nothing characters: the raw bytes are used.
        assert_eq!(&*prepare_password("\u{ad}"), "\u{ad}".as_bytes());
    }

    #[test]
    fn key_decoding_is_strict() {
        let key = [7u8; KEY_LEN];
        let text = b64_encode(&key);
        assert_eq!(b64_decode_key(&text), Some(key));
        assert_eq!(b64_decode_key(&b64_encode(&[7u8; 31])), None);
        assert_eq!(b64_decode_key(&b64_encode(&[7u8; 33])), None);
        assert_eq!(b64_decode_key("!!!!"), None);
    }

    #[test]
    fn nonces_are_fresh() {
        let a = random_nonce();
        assert_eq!(a.len(), 24);
        assert_ne!(a, random_nonce());
    }
}
