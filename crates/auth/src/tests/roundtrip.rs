//! Client/server round trips: success, key reuse, failures, channel binding, ordering.

use super::{exchange, password_client, verifier};
use crate::crypto;
use crate::{ClientChannelBinding, ClientKey, ScramClient, ScramError, ScramServer};

const CBIND: &[u8] = b"0123456789abcdef0123456789abcdef";

/// Run the client up to client-final against `server`; return client-final.
fn up_to_client_final(client: &mut ScramClient, server: &mut ScramServer) -> Vec<u8> {
    let first = client.client_first();
    let server_first = server.client_first(client.mechanism(), &first).unwrap();
    client.server_first(&server_first).unwrap()
}

#[test]
fn password_round_trip_succeeds() {
    let mut client = password_client("pencil");
    let mut server = ScramServer::new(Some(verifier("pencil")), None, b"seed");
    let key = exchange(&mut client, &mut server).unwrap();
    let expected = crypto::password_keys("pencil", b"pgstepup-test-salt", 64).client_key;
    assert_eq!(key.0, expected);
}

#[test]
fn saslprep_password_round_trip() {
    // The verifier is made from the normalized form; the client sends a variant.
    let mut client = password_client("pen\u{a0}cil\u{ad}");
    let mut server = ScramServer::new(Some(verifier("pen cil")), None, b"seed");
    exchange(&mut client, &mut server).unwrap();
}

#[test]
fn recovered_client_key_logs_into_a_second_server() {
    let v = verifier("pencil");
    let mut server = ScramServer::new(Some(v.clone()), None, b"seed");
    let key = exchange(&mut password_client("pencil"), &mut server).unwrap();

    let mut upstream = ScramServer::new(Some(v.clone()), None, b"seed");
    let mut client = ScramClient::with_keys(key, v.server_key, ClientChannelBinding::Unsupported);
    let again = exchange(&mut client, &mut upstream).unwrap();
    assert_eq!(crypto::sha256(&again.0), v.stored_key);
}

#[test]
fn with_keys_and_wrong_server_key_rejects_server() {
    let v = verifier("pencil");
    let key = ClientKey(crypto::password_keys("pencil", b"pgstepup-test-salt", 64).client_key);
    let mut client = ScramClient::with_keys(key, [9u8; 32], ClientChannelBinding::Unsupported);
    let mut server = ScramServer::new(Some(v), None, b"seed");
    assert_eq!(
        exchange(&mut client, &mut server),
        Err(ScramError::ServerSignatureMismatch)
    );
}

#[test]
fn with_wrong_client_key_fails() {
    let v = verifier("pencil");
    let mut client = ScramClient::with_keys(
        ClientKey([1u8; 32]),
        v.server_key,
        ClientChannelBinding::Unsupported,
    );
    let mut server = ScramServer::new(Some(v), None, b"seed");
    assert_eq!(
        exchange(&mut client, &mut server),
        Err(ScramError::AuthenticationFailed)
    );
}

#[test]
fn wrong_password_fails() {
    let mut server = ScramServer::new(Some(verifier("pencil")), None, b"seed");
    assert_eq!(
        exchange(&mut password_client("pen"), &mut server),
        Err(ScramError::AuthenticationFailed)
    );
    assert!(!server.is_done());
}

#[test]
fn mock_exchange_fails_like_a_wrong_password() {
    let mut real = ScramServer::new(Some(verifier("pencil")), None, b"seed");
    let wrong = exchange(&mut password_client("guess"), &mut real).unwrap_err();
    let mut mock = ScramServer::new(None, None, b"secret\0alice");
    let unknown = exchange(&mut password_client("guess"), &mut mock).unwrap_err();
    assert_eq!(wrong, unknown);
    assert_eq!(unknown, ScramError::AuthenticationFailed);
    assert_eq!(wrong.to_string(), unknown.to_string());
}

#[test]
fn mock_server_first_looks_real_and_is_deterministic() {
    let parse = |server_first: &[u8]| {
        let text = String::from_utf8(server_first.to_vec()).unwrap();
        let parts: Vec<String> = text.split(',').map(str::to_owned).collect();
        assert_eq!(parts.len(), 3);
        assert!(parts[0].starts_with("r=abc"));
        (parts[1].clone(), parts[2].clone())
    };
    let run = |seed: &[u8]| {
        let mut mock = ScramServer::new(None, None, seed);
        parse(&mock.client_first("SCRAM-SHA-256", b"n,,n=,r=abc").unwrap())
    };
    let (salt_a, iter_a) = run(b"secret\0alice");
    let (salt_a2, _) = run(b"secret\0alice");
    let (salt_b, _) = run(b"secret\0bob");
    assert_eq!(iter_a, "i=4096");
    assert_eq!(salt_a, salt_a2);
    assert_ne!(salt_a, salt_b);
    let salt = crypto::b64_decode(salt_a.strip_prefix("s=").unwrap()).unwrap();
    assert_eq!(salt.len(), 16);
}

#[test]
fn mechanisms_depend_on_tls() {
    let tls = ScramServer::new(None, Some(CBIND.to_vec()), b"");
    assert_eq!(tls.mechanisms(), ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]);
    let plain = ScramServer::new(None, None, b"");
    assert_eq!(plain.mechanisms(), ["SCRAM-SHA-256"]);
}

#[test]
fn plus_round_trip_with_matching_binding_succeeds() {
    let mut client = ScramClient::with_password(
        "pencil",
        ClientChannelBinding::TlsServerEndPoint(CBIND.to_vec()),
    );
    assert_eq!(client.mechanism(), "SCRAM-SHA-256-PLUS");
    let mut server = ScramServer::new(Some(verifier("pencil")), Some(CBIND.to_vec()), b"");
    exchange(&mut client, &mut server).unwrap();
}

#[test]
fn plus_round_trip_with_mismatching_binding_fails() {
    let mut client = ScramClient::with_password(
        "pencil",
        ClientChannelBinding::TlsServerEndPoint(b"a different certificate hash".to_vec()),
    );
    let mut server = ScramServer::new(Some(verifier("pencil")), Some(CBIND.to_vec()), b"");
    assert!(matches!(
        exchange(&mut client, &mut server),
        Err(ScramError::ChannelBinding(_))
    ));
}

#[test]
fn plain_mechanism_over_tls_succeeds() {
    // A client without channel-binding support ('n') may still use plain SCRAM over TLS.
    let mut server = ScramServer::new(Some(verifier("pencil")), Some(CBIND.to_vec()), b"");
    exchange(&mut password_client("pencil"), &mut server).unwrap();
}

#[test]
fn y_flag_against_plus_offering_server_is_a_downgrade() {
    let mut client = ScramClient::with_password("pencil", ClientChannelBinding::SupportedNotUsed);
    let mut server = ScramServer::new(Some(verifier("pencil")), Some(CBIND.to_vec()), b"");
    let err = exchange(&mut client, &mut server).unwrap_err();
    assert!(matches!(err, ScramError::ChannelBinding(_)), "{err:?}");
    assert!(err.to_string().contains("negotiation error"));
}

#[test]
fn y_flag_against_non_tls_server_succeeds() {
    let mut client = ScramClient::with_password("pencil", ClientChannelBinding::SupportedNotUsed);
    let mut server = ScramServer::new(Some(verifier("pencil")), None, b"");
    exchange(&mut client, &mut server).unwrap();
}

#[test]
fn p_flag_against_non_tls_server_fails() {
    let mut server = ScramServer::new(Some(verifier("pencil")), None, b"");
    assert_eq!(
        server.client_first("SCRAM-SHA-256-PLUS", b"p=tls-server-end-point,,n=,r=abc"),
        Err(ScramError::UnsupportedMechanism)
    );
    let mut server = ScramServer::new(Some(verifier("pencil")), None, b"");
    assert!(matches!(
        server.client_first("SCRAM-SHA-256", b"p=tls-server-end-point,,n=,r=abc"),
        Err(ScramError::ChannelBinding(_))
    ));
}

#[test]
fn gs2_header_rules() {
    let tls = || ScramServer::new(Some(verifier("pencil")), Some(CBIND.to_vec()), b"");
    // -PLUS requires p=.
    for msg in [&b"n,,n=,r=abc"[..], b"y,,n=,r=abc"] {
        assert!(matches!(
            tls().client_first("SCRAM-SHA-256-PLUS", msg),
            Err(ScramError::ChannelBinding(_))
        ));
    }
    // Unknown channel-binding type.
    assert!(matches!(
        tls().client_first("SCRAM-SHA-256-PLUS", b"p=tls-unique,,n=,r=abc"),
        Err(ScramError::ChannelBinding(_))
    ));
    // Authorization identity.
    let err = tls()
        .client_first("SCRAM-SHA-256", b"n,a=admin,n=,r=abc")
        .unwrap_err();
    assert!(err.to_string().contains("authorization identity"), "{err}");
    // Mandatory extension.
    assert!(matches!(
        tls().client_first("SCRAM-SHA-256", b"n,,m=ext,n=,r=abc"),
        Err(ScramError::Malformed(_))
    ));
    // Bad flag, missing parts, bad nonce.
    for msg in [
        &b"x,,n=,r=abc"[..],
        b"n,n=,r=abc",
        b"n,,r=abc",
        b"n,,n=",
        b"n,,n=,r=",
        b"n,,n=,r=a b",
        b"n,,n=,x=abc",
    ] {
        assert!(matches!(
            tls().client_first("SCRAM-SHA-256", msg),
            Err(ScramError::Malformed(_))
        ));
    }
    // Unknown mechanism.
    assert_eq!(
        tls().client_first("SCRAM-SHA-1", b"n,,n=,r=abc"),
        Err(ScramError::UnsupportedMechanism)
    );
    // Any user name is accepted and ignored; trailing extensions are ignored.
    for msg in [
        &b"n,,n=,r=abc"[..],
        b"n,,n=someone=2Celse,r=abc",
        b"n,,n=,r=abc,x=ext",
    ] {
        tls().client_first("SCRAM-SHA-256", msg).unwrap();
    }
}

#[test]
fn client_final_with_tampered_fields_fails() {
    let make = || {
        let mut client = password_client("pencil");
        let mut server = ScramServer::new(Some(verifier("pencil")), None, b"");
        let fin = String::from_utf8(up_to_client_final(&mut client, &mut server)).unwrap();
        (server, fin)
    };
    // Channel binding flag changed from n to y.
    let (mut server, fin) = make();
    let tampered = fin.replacen("c=biws", "c=eSws", 1);
    assert!(matches!(
        server.client_final(tampered.as_bytes()),
        Err(ScramError::ChannelBinding(_))
    ));
    // Nonce changed.
    let (mut server, fin) = make();
    let tampered = fin.replacen(",r=", ",r=X", 1);
    assert_eq!(
        server.client_final(tampered.as_bytes()),
        Err(ScramError::NonceMismatch)
    );
    // Overlong proof (33 bytes) and short proof (31 bytes).
    for len in [31usize, 33, 64] {
        let (mut server, fin) = make();
        let (head, _) = fin.rsplit_once(",p=").unwrap();
        let tampered = format!("{head},p={}", crypto::b64_encode(&vec![0u8; len]));
        assert!(matches!(
            server.client_final(tampered.as_bytes()),
            Err(ScramError::Malformed(_))
        ));
    }
    // Proof not last.
    let (mut server, fin) = make();
    let tampered = format!("{fin},x=1");
    assert!(matches!(
        server.client_final(tampered.as_bytes()),
        Err(ScramError::Malformed(_))
    ));
    // A flipped proof bit.
    let (mut server, fin) = make();
    let (head, proof) = fin.rsplit_once(",p=").unwrap();
    let mut proof = crypto::b64_decode(proof).unwrap();
    proof[0] ^= 1;
    let tampered = format!("{head},p={}", crypto::b64_encode(&proof));
    assert_eq!(
        server.client_final(tampered.as_bytes()),
        Err(ScramError::AuthenticationFailed)
    );
    // An extension between nonce and proof changes the AuthMessage, so the proof fails.
    let (mut server, fin) = make();
    let (head, proof) = fin.rsplit_once(",p=").unwrap();
    let tampered = format!("{head},x=ext,p={proof}");
    assert_eq!(
        server.client_final(tampered.as_bytes()),
        Err(ScramError::AuthenticationFailed)
    );
}

#[test]
fn server_steps_out_of_order_are_errors() {
    let v = verifier("pencil");
    // client_final first.
    let mut server = ScramServer::new(Some(v.clone()), None, b"");
    assert!(matches!(
        server.client_final(b"c=biws,r=abc,p=AAAA"),
        Err(ScramError::OutOfOrder(_))
    ));
    // client_first twice.
    let mut server = ScramServer::new(Some(v.clone()), None, b"");
    server
        .client_first("SCRAM-SHA-256", b"n,,n=,r=abc")
        .unwrap();
    assert!(matches!(
        server.client_first("SCRAM-SHA-256", b"n,,n=,r=abc"),
        Err(ScramError::OutOfOrder(_))
    ));
    // Replaying client-final after success.
    let mut client = password_client("pencil");
    let mut server = ScramServer::new(Some(v.clone()), None, b"");
    let fin = up_to_client_final(&mut client, &mut server);
    server.client_final(&fin).unwrap();
    assert!(matches!(
        server.client_final(&fin),
        Err(ScramError::OutOfOrder(_))
    ));
    // After a failure everything is over, even a correct message.
    let mut client = password_client("pencil");
    let mut server = ScramServer::new(Some(v.clone()), None, b"");
    let fin = up_to_client_final(&mut client, &mut server);
    assert!(server.client_final(b"garbage").is_err());
    assert!(matches!(
        server.client_final(&fin),
        Err(ScramError::OutOfOrder(_))
    ));
    // Replaying a client-final against a new exchange fails (fresh server nonce).
    let mut client = password_client("pencil");
    let mut server = ScramServer::new(Some(v.clone()), None, b"");
    let fin = up_to_client_final(&mut client, &mut server);
    server.client_final(&fin).unwrap();
    let mut server2 = ScramServer::new(Some(v), None, b"");
    let first = String::from_utf8(fin.clone()).unwrap();
    let client_nonce = first.split(",r=").nth(1).unwrap();
    let client_first = format!("n,,n=,r={}", &client_nonce[..24]);
    server2
        .client_first("SCRAM-SHA-256", client_first.as_bytes())
        .unwrap();
    assert_eq!(server2.client_final(&fin), Err(ScramError::NonceMismatch));
}

#[test]
fn client_steps_out_of_order_are_errors() {
    let mut client = password_client("pencil");
    assert!(matches!(
        client.server_first(b"r=abc,s=AAAA,i=1"),
        Err(ScramError::OutOfOrder(_))
    ));
    assert!(matches!(
        client.server_final(b"v=AAAA"),
        Err(ScramError::OutOfOrder(_))
    ));

    let mut client = password_client("pencil");
    let mut server = ScramServer::new(Some(verifier("pencil")), None, b"");
    let first = client.client_first();
    let server_first = server.client_first("SCRAM-SHA-256", &first).unwrap();
    let fin = client.server_first(&server_first).unwrap();
    assert!(matches!(
        client.server_first(&server_first),
        Err(ScramError::OutOfOrder(_))
    ));
    // The failed repeat ended the exchange.
    let (server_final, _) = server.client_final(&fin).unwrap();
    assert!(matches!(
        client.server_final(&server_final),
        Err(ScramError::OutOfOrder(_))
    ));
}

#[test]
fn client_validates_server_first() {
    let fresh = || {
        let mut client = password_client("pencil");
        let first = String::from_utf8(client.client_first()).unwrap();
        let nonce = first.rsplit_once("r=").unwrap().1.to_owned();
        (client, nonce)
    };
    let salt = crypto::b64_encode(b"salt");
    let (mut client, nonce) = fresh();
    assert_eq!(
        client.server_first(format!("r=X{nonce},s={salt},i=1").as_bytes()),
        Err(ScramError::NonceMismatch)
    );
    let (mut client, nonce) = fresh();
    assert_eq!(
        client.server_first(format!("r={nonce},s={salt},i=1").as_bytes()),
        Err(ScramError::NonceMismatch),
        "the server must add its own nonce part"
    );
    for bad in [
        format!("r={{n}}X,s={salt},i=0"),
        format!("r={{n}}X,s={salt},i=-1"),
        format!("r={{n}}X,s={salt},i=x"),
        format!("r={{n}}X,s={salt},i={}", crate::MAX_ITERATIONS + 1),
        format!("r={{n}}X,s={salt},i=4294967296"),
        "r={n}X,s=!!,i=1".to_owned(),
        "r={n}X,s=,i=1".to_owned(),
        format!("r={{n}}X,s={salt}"),
        format!("r={{n}}X,s={salt},i=1,x=y"),
        format!("s={salt},r={{n}}X,i=1"),
        format!("m=ext,r={{n}}X,s={salt},i=1"),
    ] {
        let (mut client, nonce) = fresh();
        let msg = bad.replace("{n}", &nonce);
        assert!(
            matches!(
                client.server_first(msg.as_bytes()),
                Err(ScramError::Malformed(_))
            ),
            "{bad}"
        );
    }
    let (mut client, _) = fresh();
    assert_eq!(
        client.server_first(b"e=other-error"),
        Err(ScramError::ServerError("other-error".to_owned()))
    );
}

#[test]
fn client_reports_server_error_in_final() {
    let mut client = password_client("pencil");
    let mut server = ScramServer::new(Some(verifier("pencil")), None, b"");
    up_to_client_final(&mut client, &mut server);
    assert_eq!(
        client.server_final(b"e=invalid-proof"),
        Err(ScramError::ServerError("invalid-proof".to_owned()))
    );
}

#[test]
fn client_rejects_malformed_server_final() {
    for bad in [&b"v=AAAA"[..], b"x=1", b"v=", b"", b"\xff"] {
        let mut client = password_client("pencil");
        let mut server = ScramServer::new(Some(verifier("pencil")), None, b"");
        up_to_client_final(&mut client, &mut server);
        assert!(matches!(
            client.server_final(bad),
            Err(ScramError::Malformed(_))
        ));
    }
    // Trailing attributes after a correct signature.
    let mut client = password_client("pencil");
    let mut server = ScramServer::new(Some(verifier("pencil")), None, b"");
    let fin = up_to_client_final(&mut client, &mut server);
    let (server_final, _) = server.client_final(&fin).unwrap();
    let mut extended = server_final.clone();
    extended.extend_from_slice(b",x=1");
    assert!(matches!(
        client.server_final(&extended),
        Err(ScramError::Malformed(_))
    ));
}

#[test]
fn client_first_message_shape() {
    let mut client = password_client("pencil");
    let first = String::from_utf8(client.client_first()).unwrap();
    let nonce = first.strip_prefix("n,,n=,r=").unwrap();
    assert_eq!(nonce.len(), 24);
    assert!(crypto::b64_decode(nonce).is_some());
    let mut plus =
        ScramClient::with_password("x", ClientChannelBinding::TlsServerEndPoint(vec![1]));
    let first = String::from_utf8(plus.client_first()).unwrap();
    assert!(first.starts_with("p=tls-server-end-point,,n=,r="));
    let mut y = ScramClient::with_password("x", ClientChannelBinding::SupportedNotUsed);
    assert!(y.client_first().starts_with(b"y,,n=,r="));
}

#[test]
fn debug_output_hides_secrets() {
    let key = ClientKey([0xab; 32]);
    assert_eq!(format!("{key:?}"), "ClientKey(<redacted>)");
    let client = ScramClient::with_password("hunter2", ClientChannelBinding::Unsupported);
    assert!(!format!("{client:?}").contains("hunter2"));
    let client = ScramClient::with_keys(key, [0xcd; 32], ClientChannelBinding::Unsupported);
    let shown = format!("{client:?}");
    assert!(!shown.contains("171") && !shown.contains("205"), "{shown}");
    let server = ScramServer::new(Some(verifier("pencil")), None, b"");
    let mock = ScramServer::new(None, None, b"");
    assert_eq!(format!("{server:?}"), format!("{mock:?}"));
}
