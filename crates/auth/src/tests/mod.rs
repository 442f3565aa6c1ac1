//! Cross-module tests: RFC 7677 vectors, client/server round trips, channel binding,
//! certificate hashing and never-panic checks.

mod certificates;
mod fuzz;
mod rfc7677;
mod roundtrip;

use crate::{ClientChannelBinding, ScramClient, ScramError, ScramServer, ScramVerifier};

/// A verifier for `password` with a fixed salt and a small iteration count (fast tests).
fn verifier(password: &str) -> ScramVerifier {
    ScramVerifier::from_password(password, b"pgstepup-test-salt", 64)
}

/// Drive a full exchange between `client` and `server`; return the recovered ClientKey on
/// success, or the first error from either side.
fn exchange(
    client: &mut ScramClient,
    server: &mut ScramServer,
) -> Result<crate::ClientKey, ScramError> {
    let first = client.client_first();
    let server_first = server.client_first(client.mechanism(), &first)?;
    let client_final = client.server_first(&server_first)?;
    let (server_final, key) = server.client_final(&client_final)?;
    client.server_final(&server_final)?;
    assert!(client.is_done() && server.is_done());
    Ok(key)
}

/// A password client without channel binding.
fn password_client(password: &str) -> ScramClient {
    ScramClient::with_password(password, ClientChannelBinding::Unsupported)
}
