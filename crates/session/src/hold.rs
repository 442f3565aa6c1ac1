//! Step-up inside a session: a statement the gate says needs step-up runs at once under an
//! elevation the user already has; otherwise it is challenged and held until the engineer
//! approves it in a browser, denies it, cancels it, or the rule's timeout passes.
//!
//! While a statement is held, nothing from it or after it reaches the server: the held frame
//! and every client frame read meanwhile wait in the backlog (frames before it in the batch
//! are already forwarded, and cannot commit before its Sync). Server output keeps flowing to
//! the client. A statement that will not run is swapped for the gate's failing substitute,
//! so the server's transaction fails exactly where the client's does.

use std::time::Duration;

use tokio::time::Instant;

use pgstepup_audit::Record;
use pgstepup_metrics::ChallengeOutcome;
use pgstepup_protocol::backend::{sqlstate, PgError};
use pgstepup_protocol::{tag, Frame};
use pgstepup_stepup::{unix_now, Challenge, ElevationNeed, Outcome, StoreError};

use crate::gate::StepUpNeed;
use crate::lifecycle::Phase;
use crate::proxy::{Ending, Session};

/// How often a held session re-reads the outcome when no wake-up arrives.
const RECHECK: Duration = Duration::from_secs(1);

/// How a hold ended.
enum HoldEnd {
    Approved {
        until: Option<u64>,
    },
    Denied,
    TimedOut,
    Cancelled,
    /// An earlier statement of its batch failed: the server skips it whatever is decided.
    Skipped,
}

impl Session {
    /// Forwards a statement that needs step-up if an elevation covers it, otherwise challenges
    /// it; queues for the server either the statement or its failing substitute.
    pub(crate) async fn step_up(&mut self, frame: &Frame, need: StepUpNeed) -> Result<(), Ending> {
        let stepup = self.stepup.clone();
        let elevation = self.elevation_need(&need);
        let elevated = match stepup.elevation(&elevation).await {
            Ok(Some(until)) => Ok(Some(Some(until))),
            Ok(None) => stepup
                .take_single_use(&elevation)
                .await
                .map(|once| once.then_some(None)),
            Err(e) => Err(e),
        };
        match elevated {
            Ok(Some(until)) => {
                self.gate.released(&need, until);
                self.server.queue_frame(frame);
                return Ok(());
            }
            Ok(None) => {}
            Err(error) => {
                self.refuse_unavailable(&need, &error);
                return Ok(());
            }
        }

        let now = unix_now();
        let challenge = Challenge {
            id: pgstepup_stepup::random_token(),
            user: self.gate.user().to_owned(),
            instance: stepup.instance().to_owned(),
            connection_id: self.gate.context().connection_id,
            client_addr: self.gate.context().client_addr.clone(),
            application_name: self.gate.context().application_name.clone(),
            statement: need.sql.clone(),
            statement_digest: need.digest.clone(),
            rule: need.rule.name.clone(),
            reason: need.rule.reason.clone(),
            lifetime_secs: need.rule.lifetime.as_secs(),
            user_scope: need.rule.user_scope,
            created_at: now,
            expires_at: now + stepup.link_ttl().as_secs(),
            // A link that ends first ends the hold too: nobody could approve it any more.
            held_until: now + need.rule.hold_timeout.min(stepup.link_ttl()).as_secs(),
        };
        let link = match stepup.issue(&challenge).await {
            Ok(link) => link,
            Err(error) => {
                self.refuse_unavailable(&need, &error);
                return Ok(());
            }
        };
        let at_once = self.gate.refuses_at_once();
        self.audit(&need, &challenge, "challenge_issued", |r| {
            r.reason = Some(if at_once {
                format!(
                    "{}; refused at once with the link (application_name policy)",
                    need.rule.reason
                )
            } else {
                need.rule.reason.clone()
            });
        });
        tracing::info!(rule = %need.rule.name, challenge = %challenge.id, at_once, "step-up challenge issued");
        if at_once {
            let error = PgError::error(
                sqlstate::INSUFFICIENT_PRIVILEGE,
                format!(
                    "pgstepup: this statement needs step-up approval (rule \"{}\"); approve it, then run it again:\n{link}",
                    need.rule.name
                ),
            )
            .with_detail(need.rule.reason.clone())
            .with_hint(format!(
                "The link works until {}. After approval, re-running the statement will pass.",
                utc_time(challenge.expires_at)
            ));
            let substitute = self.gate.refuse_step_up(&need, error);
            self.server.queue_frame(&substitute);
            return Ok(());
        }

        // What came before the held statement goes now; the client hears about the hold at once.
        if self.gate.in_batch() {
            // The server keeps a batch's answers until its Sync; asked to send them now, it
            // tells whether an earlier statement failed, and then this one will not run.
            self.server.queue_frame(&Frame::new(tag::FLUSH, &[]));
        }
        self.server.flush().await.map_err(|_| Ending::ServerGone)?;
        // Counted as held before the client can know it is: a scrape prompted by the notice
        // sees it.
        self.held_in_batch = true;
        self.hold_signal.set_holding(true);
        self.gate.metrics().held_statements.inc();
        self.client
            .queue(&held_notice(&need, &challenge, &link).to_notice_response());
        let end = match self.client.flush().await {
            Ok(()) => self.hold(&challenge, &need).await,
            Err(_) => Err(Ending::ClientGone),
        };
        self.gate.metrics().held_statements.dec();
        self.hold_signal.set_holding(false);
        let end = match end {
            Ok(end) => end,
            Err(ending) => {
                let why = if ending == Ending::Shutdown {
                    "pgstepup shut down"
                } else {
                    "the client disconnected"
                };
                self.cancel_challenge(&need, &challenge, why).await;
                self.gate.metrics().challenge(ChallengeOutcome::Cancelled);
                return Err(ending);
            }
        };
        let error = match end {
            HoldEnd::Approved { until } => {
                tracing::info!(rule = %need.rule.name, "held statement approved; running it");
                if until.is_none() {
                    // A one-statement approval is used up by the statement it was made for.
                    let _ = self
                        .stepup
                        .take_single_use(&self.elevation_need(&need))
                        .await;
                }
                self.gate.released(&need, until);
                self.server.queue_frame(frame);
                return Ok(());
            }
            HoldEnd::Denied => PgError::error(
                sqlstate::INSUFFICIENT_PRIVILEGE,
                format!(
                    "pgstepup: step-up for this statement was denied (rule \"{}\"); it was not run",
                    need.rule.name
                ),
            )
            .with_detail(need.rule.reason.clone()),
            HoldEnd::Skipped => {
                self.cancel_challenge(
                    &need,
                    &challenge,
                    "an earlier statement of its batch failed, so the server skips it",
                )
                .await;
                self.gate.metrics().challenge(ChallengeOutcome::Cancelled);
                // Never shown: the server discards what follows the error up to the Sync.
                PgError::error(
                    sqlstate::INSUFFICIENT_PRIVILEGE,
                    "pgstepup: an earlier statement of this batch failed; this one was not run",
                )
            }
            HoldEnd::Cancelled => {
                self.cancel_challenge(&need, &challenge, "cancel request")
                    .await;
                self.gate.metrics().challenge(ChallengeOutcome::Cancelled);
                PgError::error(
                    sqlstate::QUERY_CANCELED,
                    "canceling statement due to user request",
                )
                .with_detail("pgstepup held it for step-up approval; it was not run.")
            }
            HoldEnd::TimedOut => {
                self.gate.metrics().challenge(ChallengeOutcome::Expired);
                let waited = challenge.held_until.saturating_sub(challenge.created_at);
                // A link shorter than the rule's timeout ended the hold: it cannot be approved
                // any more, so it is not offered again.
                let link_ended = unix_now() >= challenge.expires_at;
                self.audit(&need, &challenge, "challenge_timed_out", |r| {
                    r.reason = Some(match link_ended {
                        true => format!("no approval within {waited} s, when the link expired"),
                        false => format!(
                            "no approval within {waited} s; the link still works until it expires"
                        ),
                    });
                });
                let (what_now, hint) = match link_ended {
                    true => (
                        "the statement was not run and its link has expired".to_owned(),
                        "Run the statement again for a new link.".to_owned(),
                    ),
                    false => (
                        format!("the statement was not run. Approve it at:\n{link}"),
                        format!(
                            "The link works until {}; after approval, re-running the statement will pass.",
                            utc_time(challenge.expires_at)
                        ),
                    ),
                };
                PgError::error(
                    sqlstate::INSUFFICIENT_PRIVILEGE,
                    format!(
                        "pgstepup: no step-up approval within {waited} s (rule \"{}\"); {what_now}",
                        need.rule.name
                    ),
                )
                .with_detail(need.rule.reason.clone())
                .with_hint(hint)
            }
        };
        let substitute = self.gate.refuse_step_up(&need, error);
        self.server.queue_frame(&substitute);
        Ok(())
    }

    /// Waits for the challenge's outcome, relaying server output and keeping client input.
    async fn hold(&mut self, challenge: &Challenge, need: &StepUpNeed) -> Result<HoldEnd, Ending> {
        let waiter = self.stepup.waiter(&challenge.id);
        let deadline =
            Instant::now() + Duration::from_secs(challenge.held_until.saturating_sub(unix_now()));
        let signal = self.hold_signal.clone();
        loop {
            match self.stepup.outcome(&challenge.id).await {
                Ok(Some(Outcome::Approved { elevated_until, .. })) => {
                    return Ok(HoldEnd::Approved {
                        until: elevated_until,
                    })
                }
                Ok(Some(Outcome::Denied)) => return Ok(HoldEnd::Denied),
                Ok(Some(Outcome::Cancelled)) => return Ok(HoldEnd::Cancelled),
                Ok(None) => {
                    // Another approval (another connection's, for a user-wide rule) may have
                    // elevated the user meanwhile.
                    if let Ok(Some(until)) = self.stepup.elevation(&self.elevation_need(need)).await
                    {
                        return Ok(HoldEnd::Approved { until: Some(until) });
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot read the challenge's outcome; still waiting")
                }
            }
            if self.gate.batch_fails() {
                return Ok(HoldEnd::Skipped);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(HoldEnd::TimedOut);
            }
            let pause = RECHECK.min(deadline - now);
            tokio::select! {
                biased;
                _ = signal.cancelled() => return Ok(HoldEnd::Cancelled),
                _ = self.phase_changes.changed() => {
                    // Draining waits for the held statement like any running one; closing does not.
                    self.phase = *self.phase_changes.borrow_and_update();
                    if self.phase == Phase::Closing {
                        self.check_phase()?;
                    }
                }
                ready = self.server.wait_frame() => {
                    ready.map_err(|_| Ending::ServerGone)?;
                    while self.relay_buffered_server_frames()? {
                        self.client.flush().await.map_err(|_| Ending::ClientGone)?;
                    }
                    self.client.flush().await.map_err(|_| Ending::ClientGone)?;
                    if self.gate.batch_fails() {
                        return Ok(HoldEnd::Skipped);
                    }
                }
                read = self.client.read_frame() => {
                    let frame = read.map_err(|e| self.client_error(e))?;
                    if frame.tag() == tag::TERMINATE {
                        return Err(Ending::ClientGone);
                    }
                    self.backlog_bytes += frame.as_bytes().len();
                    if self.backlog_bytes > self.max_backlog_bytes {
                        self.refuse_fatal(PgError::fatal(
                            sqlstate::PROGRAM_LIMIT_EXCEEDED,
                            "pgstepup: too much input while a statement is held for approval",
                        ));
                        return Err(Ending::ClientProtocolError);
                    }
                    self.backlog.push_back(frame);
                }
                _ = waiter.wait(pause) => {}
            }
        }
    }

    fn elevation_need<'a>(&'a self, need: &'a StepUpNeed) -> ElevationNeed<'a> {
        ElevationNeed {
            user: self.gate.user(),
            rule: &need.rule.name,
            user_scope: need.rule.user_scope,
            instance: self.stepup.instance(),
            connection_id: self.gate.context().connection_id,
            statement_digest: &need.digest,
        }
    }

    /// The store is down: no elevation can be checked or granted, so the statement is refused
    /// now (reads never get here and keep flowing).
    fn refuse_unavailable(&mut self, need: &StepUpNeed, error: &StoreError) {
        tracing::warn!(%error, rule = %need.rule.name, "step-up unavailable; statement refused");
        self.gate.metrics().challenge(ChallengeOutcome::Failed);
        self.gate.record(Record {
            event: "statement_refused",
            statement_digest: Some(need.digest.clone()),
            statement: Some(need.sql.clone()),
            rule: Some(need.rule.name.clone()),
            decision: Some("step_up"),
            reason: Some(format!("step-up unavailable: {error}")),
            ..Default::default()
        });
        let refusal = PgError::error(
            sqlstate::INSUFFICIENT_PRIVILEGE,
            format!(
                "pgstepup: this statement needs step-up (rule \"{}\"), but step-up is unavailable: {error}",
                need.rule.name
            ),
        )
        .with_detail(need.rule.reason.clone())
        .with_hint("No elevation is assumed while the state store is down; the statement was not run. Reads still work. Try again once it is back.");
        let substitute = self.gate.refuse_step_up(need, refusal);
        self.server.queue_frame(&substitute);
    }

    async fn cancel_challenge(&self, need: &StepUpNeed, challenge: &Challenge, why: &str) {
        if let Err(error) = self.stepup.decide(challenge, &Outcome::Cancelled).await {
            tracing::warn!(%error, "cannot record the cancelled challenge");
        }
        self.audit(need, challenge, "challenge_cancelled", |r| {
            r.reason = Some(why.to_owned())
        });
    }

    fn audit(
        &self,
        need: &StepUpNeed,
        challenge: &Challenge,
        event: &'static str,
        fill: impl FnOnce(&mut Record),
    ) {
        let mut record = Record {
            event,
            statement_digest: Some(need.digest.clone()),
            statement: Some(need.sql.clone()),
            rule: Some(need.rule.name.clone()),
            decision: Some("step_up"),
            challenge_id: Some(challenge.id.clone()),
            ..Default::default()
        };
        fill(&mut record);
        self.gate.record(record);
    }
}

/// The NOTICE a client sees when its statement is held: what, why, and the link on a line
/// of its own.
fn held_notice(need: &StepUpNeed, challenge: &Challenge, link: &str) -> PgError {
    PgError::notice(format!(
        "pgstepup: statement held for step-up approval ({}).\nApprove it within {} s at:\n{link}\n(link valid until {}; Ctrl-C cancels)",
        need.rule.reason,
        challenge.held_until.saturating_sub(challenge.created_at),
        utc_time(challenge.expires_at),
    ))
}

/// `HH:MM:SS UTC` of a unix time.
fn utc_time(unix: u64) -> String {
    let of_day = unix % 86_400;
    format!(
        "{:02}:{:02}:{:02} UTC",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_time_of_day() {
        assert_eq!(super::utc_time(86_400 * 3 + 3600 * 13 + 61), "13:01:01 UTC");
    }
}
