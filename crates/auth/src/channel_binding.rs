//! `tls-server-end-point` channel-binding data (RFC 5929 §4.1) from a DER certificate.

use sha2::{Digest, Sha224, Sha256, Sha384, Sha512};

/// The hash function RFC 5929 picks for a certificate's signature algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HashAlg {
    /// SHA-224.
    Sha224,
    /// SHA-256 (also used for MD5 and SHA-1 signatures).
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
}

/// DER-encoded OID contents (without tag and length) of the signature algorithms recognised,
/// with the hash RFC 5929 uses for each.
const ALGORITHMS: &[(&[u8], HashAlg)] = &[
    // 1.2.840.113549.1.1.4 md5WithRSAEncryption
    (
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x04],
        HashAlg::Sha256,
    ),
    // 1.2.840.113549.1.1.5 sha1WithRSAEncryption
    (
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x05],
        HashAlg::Sha256,
    ),
    // 1.2.840.113549.1.1.11 sha256WithRSAEncryption
    (
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b],
        HashAlg::Sha256,
    ),
    // 1.2.840.113549.1.1.12 sha384WithRSAEncryption
    (
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c],
        HashAlg::Sha384,
    ),
    // 1.2.840.113549.1.1.13 sha512WithRSAEncryption
    (
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d],
        HashAlg::Sha512,
    ),
    // 1.2.840.113549.1.1.14 sha224WithRSAEncryption
    (
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0e],
        HashAlg::Sha224,
    ),
    // 1.2.840.10045.4.1 ecdsa-with-SHA1
    (&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01], HashAlg::Sha256),
    // 1.2.840.10045.4.3.1 ecdsa-with-SHA224
    (
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x01],
        HashAlg::Sha224,
    ),
    // 1.2.840.10045.4.3.2 ecdsa-with-SHA256
    (
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02],
        HashAlg::Sha256,
    ),
    // 1.2.840.10045.4.3.3 ecdsa-with-SHA384
    (
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03],
        HashAlg::Sha384,
    ),
    // 1.2.840.10045.4.3.4 ecdsa-with-SHA512
    (
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04],
        HashAlg::Sha512,
    ),
];

/// DER tag of SEQUENCE.
const TAG_SEQUENCE: u8 = 0x30;
/// DER tag of OBJECT IDENTIFIER.
const TAG_OID: u8 = 0x06;
/// DER tag of BIT STRING.
const TAG_BIT_STRING: u8 = 0x03;

/// The `tls-server-end-point` channel-binding data for a DER certificate: its hash with the
/// function RFC 5929 §4.1 prescribes (the signature algorithm's hash; SHA-256 when that is MD5
/// or SHA-1).
///
/// Returns `None` for signature algorithms without a single recognised hash (Ed25519, RSA-PSS,
/// ...) and for anything that is not a well-formed certificate; then `SCRAM-SHA-256-PLUS`
/// should simply not be offered. Never panics.
pub fn tls_server_end_point(cert_der: &[u8]) -> Option<Vec<u8>> {
    let alg = signature_hash(cert_der)?;
    Some(match alg {
        HashAlg::Sha224 => Sha224::digest(cert_der).to_vec(),
        HashAlg::Sha256 => Sha256::digest(cert_der).to_vec(),
        HashAlg::Sha384 => Sha384::digest(cert_der).to_vec(),
        HashAlg::Sha512 => Sha512::digest(cert_der).to_vec(),
    })
}

/// Walk `Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue }` and
/// map the signatureAlgorithm's OID to a hash.
fn signature_hash(der: &[u8]) -> Option<HashAlg> {
    let (certificate, rest) = read_tlv(der, TAG_SEQUENCE)?;
    if !rest.is_empty() {
        return None;
    }
    let (_tbs, rest) = read_tlv(certificate, TAG_SEQUENCE)?;
    let (algorithm_identifier, rest) = read_tlv(rest, TAG_SEQUENCE)?;
    let (_signature, rest) = read_tlv(rest, TAG_BIT_STRING)?;
    if !rest.is_empty() {
        return None;
    }
    // AlgorithmIdentifier ::= SEQUENCE { algorithm OBJECT IDENTIFIER, parameters ANY OPTIONAL }
    let (oid, _parameters) = read_tlv(algorithm_identifier, TAG_OID)?;
    ALGORITHMS
        .iter()
        .find(|(known, _)| *known == oid)
        .map(|&(_, alg)| alg)
}

/// Read one DER element with the given (single-byte) tag from the front of `input`; return its
/// contents and what follows it.
fn read_tlv(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&first, rest) = input.split_first()?;
    if first != tag {
        return None;
    }
    let (&len_byte, rest) = rest.split_first()?;
    let (len, rest) = if len_byte < 0x80 {
        (usize::from(len_byte), rest)
    } else {
        // Long form: the low bits count the length bytes. 0x80 (indefinite) is not DER, and
        // more than 4 length bytes cannot describe a real certificate.
        let count = usize::from(len_byte & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let (len_bytes, rest) = rest.split_at(count);
        let len = len_bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, rest)
    };
    if rest.len() < len {
        return None;
    }
    Some(rest.split_at(len))
}
