//! Forwarding a client's cancel to the upstream with the upstream's own key.

use pgstepup_protocol::startup::CancelRequest;

use crate::{connect, UpstreamError, UpstreamSettings};

/// Opens a fresh connection (TLS as configured) and sends a CancelRequest; waits until the
/// server closes it, as libpq does, so the request is known to have been read.
pub async fn cancel(
    settings: &UpstreamSettings,
    request: &CancelRequest,
) -> Result<(), UpstreamError> {
    let mut conn = connect(settings).await?;
    conn.send(&request.encode()).await?;
    // The server answers nothing and closes; any outcome of this read means it is done.
    let _ = tokio::time::timeout(settings.connect_timeout, conn.read_frame()).await;
    Ok(())
}
