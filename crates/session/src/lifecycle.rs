//! The instance's phase as sessions see it: running; draining after SIGTERM (each session
//! finishes what is in flight and its open transaction, then closes); closing once the grace
//! period is over (every session closes now, with 57P01).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// Where the instance is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Running,
    Draining,
    Closing,
}

/// The phase, and a count of live sessions.
pub(crate) struct Lifecycle {
    phase: watch::Sender<Phase>,
    /// One clone per live session: the strong count says how many are left.
    live: Arc<()>,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle {
            phase: watch::Sender::new(Phase::Running),
            live: Arc::new(()),
        }
    }
}

/// What a session closed at the end of the grace period may spend on the request it still
/// runs: cancelling it upstream and relaying its answer before the 57P01 (the drain waits
/// for that).
pub(crate) const CLOSING_WORK: Duration = Duration::from_secs(5);

impl Lifecycle {
    /// What a session watches, and the token that counts it as live.
    pub(crate) fn join(&self) -> (watch::Receiver<Phase>, Arc<()>) {
        (self.phase.subscribe(), self.live.clone())
    }

    pub(crate) fn sessions(&self) -> usize {
        Arc::strong_count(&self.live) - 1
    }

    /// Drains for at most `grace`, then closes what is left; returns how many sessions had to
    /// be closed by force.
    pub(crate) async fn drain(&self, grace: Duration) -> usize {
        self.phase.send_replace(Phase::Draining);
        let deadline = Instant::now() + grace;
        while self.sessions() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let forced = self.sessions();
        self.phase.send_replace(Phase::Closing);
        // Closing sessions cancel what they still run, relay its answer, write a message and
        // hang up.
        let deadline = Instant::now() + CLOSING_WORK + Duration::from_secs(2);
        while self.sessions() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        forced
    }
}
