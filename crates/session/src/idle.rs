//! [`IdleTimer`]: the client idle timeout (`limits.client_idle_timeout_secs`) for one
//! session. Activity costs one clock read; the one timer is re-armed only when it fires
//! early, instead of a timer registered and dropped on every exchange.

use std::pin::Pin;
use std::time::Duration;

use tokio::time::{sleep_until, Instant, Sleep};

pub(crate) struct IdleTimer {
    limit: Duration,
    last_activity: Instant,
    timer: Pin<Box<Sleep>>,
}

impl IdleTimer {
    pub(crate) fn new(limit: Duration) -> Self {
        let now = Instant::now();
        IdleTimer {
            limit,
            last_activity: now,
            timer: Box::pin(sleep_until(now + limit)),
        }
    }

    /// Something happened on the session: the idle period starts again.
    pub(crate) fn touch(&mut self) {
        self.last_activity = Instant::now();
    }

    /// Completes once nothing has happened for the whole limit. Cancel-safe: the timer
    /// stays armed when the wait is dropped.
    pub(crate) async fn expired(&mut self) {
        loop {
            self.timer.as_mut().await;
            let deadline = self.last_activity + self.limit;
            if Instant::now() >= deadline {
                return;
            }
            // There was activity since the timer was set: wait for the rest.
            self.timer.as_mut().reset(deadline);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn activity_postpones_the_timeout_and_silence_ends_it() {
        let mut idle = IdleTimer::new(Duration::from_secs(10));
        let started = Instant::now();
        tokio::time::sleep(Duration::from_secs(6)).await;
        idle.touch();
        idle.expired().await;
        assert_eq!(started.elapsed(), Duration::from_secs(16));
        // A wait cut short keeps the timer; the next one ends on time.
        idle.touch();
        let cut_short = tokio::time::timeout(Duration::from_secs(4), idle.expired()).await;
        assert!(cut_short.is_err());
        idle.expired().await;
        assert_eq!(started.elapsed(), Duration::from_secs(26));
    }
}
