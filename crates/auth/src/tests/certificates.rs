//! `tls_server_end_point` on real certificates (generated once with the `openssl` CLI and
//! embedded here, so the tests are hermetic).

use sha2::{Digest, Sha256, Sha384, Sha512};

use crate::crypto;
use crate::tls_server_end_point;

/// EC P-256 self-signed certificate, signature ecdsa-with-SHA256.
const EC_P256_SHA256: &str = "MIIBbDCCAROgAwIBAgIUJAzriX7dB5CJHXiX8SgmAbQ4IlgwCgYIKoZIzj0EAwIwDDEKMAgGA1UEAwwBdDAeFw0yNjExMjkwNTQyMzFaFw0zNjExMjYwNTQyMzFaMAwxCjAIBgNVBAMMAXQwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAAT1mPI6KA0kRzl4Ma5nIhclWOyt/XMDopf+3bi4VmFRPDLTsWMW0VyMTypVDQihiwGSuEusLM0ENoQJurMtLAyWo1MwUTAdBgNVHQ4EFgQUp86Tzea/67TkP0cme54ZOrDhWKYwHwYDVR0jBBgwFoAUp86Tzea/67TkP0cme54ZOrDhWKYwDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNHADBEAiBGWEtaDICbsO4/JZiLv/JoFxXwGxyXXD3dr/2Gkj3DogIgVyoJPEW835s8hWPAPRiSqttJsW9OWg7x7k1EsEzGMOU=";

/// `sha256sum` of [`EC_P256_SHA256`]'s DER, computed by coreutils.
const EC_P256_SHA256_HASH: &str =
    "d1c232480926c00a8477924e0762e422dfba237970b700d406d051a5ced6a252";

/// EC P-256 self-signed certificate, signature ecdsa-with-SHA384.
const EC_P256_SHA384: &str = "MIIBbTCCAROgAwIBAgIUTwpmfcH8bLhhMAdqIPB5+2Ti5MAwCgYIKoZIzj0EAwMwDDEKMAgGA1UEAwwBdDAeFw0yNjExMjkwNTQyMzFaFw0zNjExMjYwNTQyMzFaMAwxCjAIBgNVBAMMAXQwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAAQMEKK7AUaJTCrd2YP/Rsipbch0hZT2k9WDIRynrFQVEujzNe1IUtYfFV4cGEFD6NZqd1t7SUQ1XUe2/1BzL6Pgo1MwUTAdBgNVHQ4EFgQUyUTHj+xR9gYOsArI0Ol/iFTt/rMwHwYDVR0jBBgwFoAUyUTHj+xR9gYOsArI0Ol/iFTt/rMwDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAwNIADBFAiEA0OLvTQ/XwFZOY8BhS3bnfajUR0v5r5JVpidP2iF+VzYCIECZ8Hrkl30wa2FXbpdPnFpfoB3lk+o4d05z9bhFX/W6";

/// `sha384sum` of [`EC_P256_SHA384`]'s DER.
const EC_P256_SHA384_HASH: &str = "8a4cc6632ba5540c5d1162399f69710c06b1d5ad302cd1579db646ab4f6c096a63fa5477b7cd44e0a6ba7c6a43b23b87";

/// RSA-1024 self-signed certificate, signature sha512WithRSAEncryption.
const RSA_SHA512: &str = "MIIB9DCCAV2gAwIBAgIUBrYBLyTshoMKOSHA0tlJXDTH6YswDQYJKoZIhvcNAQENBQAwDDEKMAgGA1UEAwwBdDAeFw0yNjExMjkwNTQyMzhaFw0zNjExMjYwNTQyMzhaMAwxCjAIBgNVBAMMAXQwgZ8wDQYJKoZIhvcNAQEBBQADgY0AMIGJAoGBANYiUTw/dfFkDoPZIUNZmcbsUg+1KccSBw1uE3ADoVnxRXH8g0TUBmVnlYa71U0Q1et+kB4l+z44meTr2yBl7e4XZ+OUvfz1Nk9FJQolrA/D5v/XxoRA9geTTXJ8IOfllolDyK1LJ2ro+YjodPZWMwqqW9nvWF/Bwu5eFja2lHTZAgMBAAGjUzBRMB0GA1UdDgQWBBRx0zCmYBDYcykjEkTtCfmG+JHdjzAfBgNVHSMEGDAWgBRx0zCmYBDYcykjEkTtCfmG+JHdjzAPBgNVHRMBAf8EBTADAQH/MA0GCSqGSIb3DQEBDQUAA4GBAHE4q8O29l0yaIygbmUzxer59CwT/IID6tH5feqOW2iR/5xusA8vj0d8s2rFVFeBiCXgEgIlWk8OBk95oW3q04txeqyPkxdhNDx/WytrfxmKqGC31ZrsXqGscGpsIR1nSOFUDFad8vkzEYxS0q+SDplyNojd9lago1AzaQseqT8y";

/// RSA-1024 self-signed certificate, signature sha1WithRSAEncryption.
const RSA_SHA1: &str = "MIIB9DCCAV2gAwIBAgIUEwQqWlzfve649zbiraZODoFffnYwDQYJKoZIhvcNAQEFBQAwDDEKMAgGA1UEAwwBdDAeFw0yNjExMjkwNTQyMzhaFw0zNjExMjYwNTQyMzhaMAwxCjAIBgNVBAMMAXQwgZ8wDQYJKoZIhvcNAQEBBQADgY0AMIGJAoGBAKUNj1GSlT9/nVQd39nlNwHsPRPPgH6CAVDXH/RCriH3zWb0MAQH1Rz8arBnudvZFfa3qY2Hh2bS9qMSfkccPDqhJQ50tBvC1qdGme4vE7y6srV+bz0ku+l5hFI3xsIJ9wKMUthZF3Io9+SG8QpZKWXhR/VytOzoetVYcwyPkLVJAgMBAAGjUzBRMB0GA1UdDgQWBBRb/cFk7Wr5yme8RDI9l+VYnm2SRTAfBgNVHSMEGDAWgBRb/cFk7Wr5yme8RDI9l+VYnm2SRTAPBgNVHRMBAf8EBTADAQH/MA0GCSqGSIb3DQEBBQUAA4GBACp24cmiAVrozYNC2kaiUb5nYp5a/AJr+B4VLzWpgl7yKPSfpJqHL9QKA51cIy/zH7oUwZ41SJgzITnBMR8ZRV6WkiaRH6Oj3RmM6MPFI7NCcJZfO6TGyep7Le8W+imtO2w0LoZ2jmAYY5dE0cq8yPVJMtQQ/p6WjGy1Hhk9dsdS";

/// Ed25519 self-signed certificate: no separate hash, so no tls-server-end-point.
const ED25519: &str = "MIIBLDCB36ADAgECAhQHwhC2AP9ZPCVznmxP/03ymjgjjTAFBgMrZXAwDDEKMAgGA1UEAwwBdDAeFw0yNjExMjkwNTQyMzhaFw0zNjExMjYwNTQyMzhaMAwxCjAIBgNVBAMMAXQwKjAFBgMrZXADIQD9rGbxgm8xx4cL48ozFv7Hm/h3i0wnwa1QyOQHQGT0RKNTMFEwHQYDVR0OBBYEFNeGRx6x6aiIqSs+B471GYioosCcMB8GA1UdIwQYMBaAFNeGRx6x6aiIqSs+B471GYioosCcMA8GA1UdEwEB/wQFMAMBAf8wBQYDK2VwA0EAr1uA2q5xCK+p1a99lSb7pO/89G7KuH0ACgUa9Mqi3/tLfK+hPmHMjnS5XTIsTugHvKeGaOkGpzUMw/pG3M4OBg==";

fn der(b64: &str) -> Vec<u8> {
    crypto::b64_decode(b64).unwrap()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The DER of the ecdsa-with-SHA256 certificate (also used by the fuzz tests).
pub(super) fn ec_p256_sha256_der() -> Vec<u8> {
    der(EC_P256_SHA256)
}

#[test]
fn ecdsa_sha256_certificate_uses_sha256() {
    let cert = ec_p256_sha256_der();
    let got = tls_server_end_point(&cert).unwrap();
    assert_eq!(hex(&got), EC_P256_SHA256_HASH);
    assert_eq!(got, Sha256::digest(&cert).to_vec());
}

#[test]
fn ecdsa_sha384_certificate_uses_sha384() {
    let cert = der(EC_P256_SHA384);
    let got = tls_server_end_point(&cert).unwrap();
    assert_eq!(got.len(), 48);
    assert_eq!(hex(&got), EC_P256_SHA384_HASH);
    assert_eq!(got, Sha384::digest(&cert).to_vec());
}

#[test]
fn rsa_sha512_certificate_uses_sha512() {
    let cert = der(RSA_SHA512);
    assert_eq!(
        tls_server_end_point(&cert).unwrap(),
        Sha512::digest(&cert).to_vec()
    );
}

#[test]
fn rsa_sha1_certificate_uses_sha256() {
    let cert = der(RSA_SHA1);
    assert_eq!(
        tls_server_end_point(&cert).unwrap(),
        Sha256::digest(&cert).to_vec()
    );
}

#[test]
fn ed25519_certificate_has_no_binding() {
    assert_eq!(tls_server_end_point(&der(ED25519)), None);
}

#[test]
fn garbage_has_no_binding() {
    assert_eq!(tls_server_end_point(b""), None);
    assert_eq!(tls_server_end_point(b"not a certificate"), None);
    assert_eq!(tls_server_end_point(&[0x30]), None);
    assert_eq!(tls_server_end_point(&[0x30, 0x80, 0x00, 0x00]), None);
    assert_eq!(
        tls_server_end_point(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]),
        None
    );
    assert_eq!(
        tls_server_end_point(&[0x30, 0x89, 1, 2, 3, 4, 5, 6, 7, 8, 9]),
        None
    );
    // Trailing bytes after the certificate.
    let mut cert = ec_p256_sha256_der();
    cert.push(0);
    assert_eq!(tls_server_end_point(&cert), None);
    // A PEM text instead of DER.
    let pem = format!("-----BEGIN CERTIFICATE-----\n{EC_P256_SHA256}\n-----END CERTIFICATE-----\n");
    assert_eq!(tls_server_end_point(pem.as_bytes()), None);
}

#[test]
fn unknown_signature_oid_has_no_binding() {
    // Change the last OID byte of the outer signatureAlgorithm (ecdsa-with-SHA256 → .4.3.9).
    let mut cert = ec_p256_sha256_der();
    let oid = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
    let pos = cert.windows(oid.len()).rposition(|w| w == oid).unwrap();
    cert[pos + oid.len() - 1] = 0x09;
    assert_eq!(tls_server_end_point(&cert), None);
}
