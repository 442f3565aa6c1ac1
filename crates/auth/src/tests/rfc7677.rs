//! The SCRAM-SHA-256 test vector of RFC 7677 §3, on both sides.

use crate::crypto;
use crate::{ClientChannelBinding, ScramClient, ScramServer, ScramVerifier};

const CLIENT_NONCE: &str = "rOprNGfwEbeRWgbNEkqO";
const SERVER_NONCE_PART: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
const CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
const SERVER_FIRST: &str =
    "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
const CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                            p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
const SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

fn rfc_verifier() -> ScramVerifier {
    let salt = crypto::b64_decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
    ScramVerifier::from_password("pencil", &salt, 4096)
}

#[test]
fn client_with_password_produces_rfc_messages() {
    let mut client = ScramClient::with_password("pencil", ClientChannelBinding::Unsupported);
    assert_eq!(client.mechanism(), "SCRAM-SHA-256");
    let first = client.client_first_for_test("user", CLIENT_NONCE);
    assert_eq!(String::from_utf8(first).unwrap(), CLIENT_FIRST);
    let fin = client.server_first(SERVER_FIRST.as_bytes()).unwrap();
    assert_eq!(String::from_utf8(fin).unwrap(), CLIENT_FINAL);
    client.server_final(SERVER_FINAL.as_bytes()).unwrap();
    assert!(client.is_done());
}

#[test]
fn client_with_keys_produces_rfc_messages() {
    let salt = crypto::b64_decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
    let keys = crypto::password_keys("pencil", &salt, 4096);
    let mut client = ScramClient::with_keys(
        crate::ClientKey(keys.client_key),
        keys.server_key,
        ClientChannelBinding::Unsupported,
    );
    client.client_first_for_test("user", CLIENT_NONCE);
    let fin = client.server_first(SERVER_FIRST.as_bytes()).unwrap();
    assert_eq!(String::from_utf8(fin).unwrap(), CLIENT_FINAL);
    client.server_final(SERVER_FINAL.as_bytes()).unwrap();
}

#[test]
fn client_rejects_wrong_server_signature() {
    let mut client = ScramClient::with_password("pencil", ClientChannelBinding::Unsupported);
    client.client_first_for_test("user", CLIENT_NONCE);
    client.server_first(SERVER_FIRST.as_bytes()).unwrap();
    let forged = format!("v={}", crypto::b64_encode(&[0u8; 32]));
    assert_eq!(
        client.server_final(forged.as_bytes()),
        Err(crate::ScramError::ServerSignatureMismatch)
    );
    assert!(!client.is_done());
}

#[test]
fn client_with_wrong_password_differs_from_rfc() {
    let mut client = ScramClient::with_password("pencil!", ClientChannelBinding::Unsupported);
    client.client_first_for_test("user", CLIENT_NONCE);
    let fin = client.server_first(SERVER_FIRST.as_bytes()).unwrap();
    assert_ne!(String::from_utf8(fin).unwrap(), CLIENT_FINAL);
}

#[test]
fn server_produces_rfc_messages_and_recovers_client_key() {
    let mut server = ScramServer::new(Some(rfc_verifier()), None, b"unused");
    let first = server
        .client_first_with_nonce(
            "SCRAM-SHA-256",
            CLIENT_FIRST.as_bytes(),
            SERVER_NONCE_PART.to_owned(),
        )
        .unwrap();
    assert_eq!(String::from_utf8(first).unwrap(), SERVER_FIRST);
    let (fin, key) = server.client_final(CLIENT_FINAL.as_bytes()).unwrap();
    assert_eq!(String::from_utf8(fin).unwrap(), SERVER_FINAL);
    let salt = crypto::b64_decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
    assert_eq!(
        key.0,
        crypto::password_keys("pencil", &salt, 4096).client_key
    );
}
