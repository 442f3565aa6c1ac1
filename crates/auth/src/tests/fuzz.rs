//! Never-panic checks: random bytes, truncations and byte flips fed to every entry point.

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

use super::verifier;
use crate::crypto;
use crate::{
    tls_server_end_point, ClientChannelBinding, ClientKey, ScramClient, ScramServer, ScramVerifier,
};

const ROUNDS: usize = 300;

/// Random bytes biased towards SCRAM-looking characters.
fn random_message(rng: &mut StdRng) -> Vec<u8> {
    const ALPHABET: &[u8] = b"nyprcvsiame=,,,==+/AZaz09\0\xff\xc3-";
    let len = rng.random_range(0..80);
    (0..len)
        .map(|_| {
            if rng.random_bool(0.5) {
                ALPHABET[rng.random_range(0..ALPHABET.len())]
            } else {
                rng.random()
            }
        })
        .collect()
}

/// `message` truncated at a random point or with a random byte changed.
fn mutate(rng: &mut StdRng, message: &[u8]) -> Vec<u8> {
    let mut out = message.to_vec();
    if out.is_empty() || rng.random_bool(0.5) {
        out.truncate(rng.random_range(0..=message.len()));
    } else {
        let i = rng.random_range(0..out.len());
        out[i] = rng.random();
    }
    out
}

/// Real and mock servers, with and without channel binding.
fn servers(v: &ScramVerifier) -> Vec<ScramServer> {
    vec![
        ScramServer::new(Some(v.clone()), None, b""),
        ScramServer::new(Some(v.clone()), Some(vec![7; 32]), b""),
        ScramServer::new(None, None, b"seed"),
        ScramServer::new(None, Some(vec![7; 32]), b"seed"),
    ]
}

#[test]
fn server_never_panics() {
    let mut rng = StdRng::seed_from_u64(0x5c4a_0001);
    let v = verifier("pencil");
    // Key-based clients skip PBKDF2, so the mock servers' 4096 iterations cost nothing.
    let client_key = ClientKey(crypto::password_keys("pencil", &v.salt, v.iterations).client_key);
    for _ in 0..ROUNDS {
        for mut server in servers(&v) {
            let mechanism = if rng.random_bool(0.5) {
                "SCRAM-SHA-256"
            } else {
                "SCRAM-SHA-256-PLUS"
            };
            let first = random_message(&mut rng);
            let _ = server.client_first(mechanism, &first);
            let _ = server.client_final(&random_message(&mut rng));
        }
        // Valid first step, then a mutated client-final.
        for mut server in servers(&v) {
            let mut client = ScramClient::with_keys(
                client_key.clone(),
                v.server_key,
                ClientChannelBinding::Unsupported,
            );
            let first = client.client_first();
            let first = if rng.random_bool(0.3) {
                mutate(&mut rng, &first)
            } else {
                first
            };
            let Ok(server_first) = server.client_first("SCRAM-SHA-256", &first) else {
                continue;
            };
            let Ok(fin) = client.server_first(&server_first) else {
                continue;
            };
            let _ = server.client_final(&mutate(&mut rng, &fin));
            let _ = server.client_final(&fin);
        }
    }
}

#[test]
fn client_never_panics() {
    let mut rng = StdRng::seed_from_u64(0x5c4a_0002);
    let v = verifier("pencil");
    for _ in 0..ROUNDS {
        let bindings = [
            ClientChannelBinding::Unsupported,
            ClientChannelBinding::SupportedNotUsed,
            ClientChannelBinding::TlsServerEndPoint(vec![7; 32]),
        ];
        for binding in bindings {
            let mut client = ScramClient::with_password("pencil", binding.clone());
            let _ = client.server_first(&random_message(&mut rng));
            let _ = client.server_final(&random_message(&mut rng));
            client.client_first();
            let _ = client.server_first(&random_message(&mut rng));
            let _ = client.server_final(&random_message(&mut rng));

            // A genuine exchange with a mutated server-first-message. The verifier's
            // iteration count (64) has two digits, so one changed byte keeps PBKDF2 cheap.
            // 'y' must go to a server without channel binding (else it is a downgrade).
            let server_binding =
                (binding != ClientChannelBinding::SupportedNotUsed).then(|| vec![7; 32]);
            let mut client = ScramClient::with_password("pencil", binding.clone());
            let mut server = ScramServer::new(Some(v.clone()), server_binding.clone(), b"");
            let server_first = server
                .client_first(client.mechanism(), &client.client_first())
                .unwrap();
            let _ = client.server_first(&mutate(&mut rng, &server_first));

            // A genuine exchange with a mutated server-final-message.
            let mut client = ScramClient::with_password("pencil", binding);
            let mut server = ScramServer::new(Some(v.clone()), server_binding, b"");
            let server_first = server
                .client_first(client.mechanism(), &client.client_first())
                .unwrap();
            let fin = client.server_first(&server_first).unwrap();
            let (server_final, _) = server.client_final(&fin).unwrap();
            let _ = client.server_final(&mutate(&mut rng, &server_final));
        }
    }
}

#[test]
fn verifier_and_certificate_parsers_never_panic() {
    let mut rng = StdRng::seed_from_u64(0x5c4a_0003);
    let good = verifier("pencil").to_string();
    let cert = super::certificates::ec_p256_sha256_der();
    for _ in 0..ROUNDS * 10 {
        let junk = random_message(&mut rng);
        if let Ok(text) = std::str::from_utf8(&junk) {
            let _ = text.parse::<ScramVerifier>();
        }
        let mutated = mutate(&mut rng, good.as_bytes());
        if let Ok(text) = std::str::from_utf8(&mutated) {
            let _ = text.parse::<ScramVerifier>();
        }
        let _ = tls_server_end_point(&junk);
        let _ = tls_server_end_point(&mutate(&mut rng, &cert));
        let mut noise = vec![0u8; rng.random_range(0..64)];
        rng.fill_bytes(&mut noise);
        noise.insert(0, 0x30);
        let _ = tls_server_end_point(&noise);
    }
    for len in 0..cert.len() {
        assert_eq!(tls_server_end_point(&cert[..len]), None);
    }
}
