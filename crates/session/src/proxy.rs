//! The session loop: one task per client, relaying frames both ways between the client and its
//! own upstream connection. Every statement-carrying frame (and every Bind of a remembered
//! statement) passes the gate before it is forwarded, as is, swapped for a refusal, or after
//! step-up ([`crate::hold`]); everything else passes through as the original bytes. Output is
//! coalesced and flushed once per batch of input, not per message.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::Instrument;

use pgstepup_metrics::SessionClosed;
use pgstepup_protocol::backend::{self, sqlstate, PgError};
use pgstepup_protocol::startup::CancelRequest;
use pgstepup_protocol::{tag, Connection, ConnectionError, Frame, FrameRef, FLUSH_THRESHOLD};
use pgstepup_stepup::StepUp;
use pgstepup_upstream::LoginReply;

use crate::cancel::{HoldSignal, Registration};
use crate::gate::{Gate, StepUpNeed, Verdict};
use crate::idle::IdleTimer;
use crate::lifecycle::{Phase, CLOSING_WORK};
use crate::listener::Shared;
use crate::statement::{MalformedStatement, Statement};
use crate::upstream_pool::IdleUpstream;

/// A live, authenticated session. Laid out as declared (`repr(C)`), what the relay reads or
/// writes on every exchange first: one session's hot state then spans about 11 cache lines
/// instead of 16, and a thread's sessions take that much less of its core's first-level cache
/// (benches/RESULTS.md).
#[repr(C)]
pub(crate) struct Session {
    /// The transaction status of the last ReadyForQuery.
    transaction_status: u8,
    /// Where the instance is in its life, as last seen; updated only when it changes, so
    /// the per-message check reads a plain field.
    pub(crate) phase: Phase,
    /// Set when the input being handled held a statement (its wait is not overhead).
    pub(crate) held_in_batch: bool,
    reuse_upstream: bool,
    /// Client inputs handled, for sampling the overhead histogram.
    inputs: u32,
    pub(crate) backlog_bytes: usize,
    /// Client frames read while a statement was held, to be handled after it.
    pub(crate) backlog: VecDeque<Frame>,
    pub(crate) phase_changes: watch::Receiver<Phase>,
    pub(crate) client: Connection,
    pub(crate) server: Connection,
    pub(crate) gate: Gate,
    pub(crate) stepup: StepUp,
    pub(crate) max_backlog_bytes: usize,
    pub(crate) hold_signal: Arc<HoldSignal>,
    cancel_pid: Option<i32>,
    _cancel_key: Option<Registration>,
    _live: Arc<()>,
    idle_timeout: Option<Duration>,
    /// What the upstream login said, and when it happened: kept with the connection if the
    /// next client gets it.
    login: LoginReply,
    upstream_opened: Instant,
    /// The FATAL error that ends the session (unreadable client input, shutdown), sent once
    /// the answers to the requests in flight have been relayed.
    final_error: Option<PgError>,
    /// The instance's shared state: where to send the upstream a cancel.
    shared: Arc<Shared>,
}

/// What a new session needs besides its two connections.
pub(crate) struct SessionParts {
    pub reply: LoginReply,
    pub cancel_key: Option<(Registration, i32, Vec<u8>, Arc<HoldSignal>)>,
    pub gate: Gate,
    pub stepup: StepUp,
    pub max_backlog_bytes: usize,
    pub lifecycle: (watch::Receiver<Phase>, Arc<()>),
    pub idle_timeout: Option<Duration>,
    /// When the upstream connection logged in (earlier than now when it was reused).
    pub upstream_opened: Instant,
    /// Whether a clean ending leaves the upstream connection open for the next client.
    pub reuse_upstream: bool,
    pub shared: Arc<Shared>,
}

/// What woke the session.
enum Input {
    /// A whole client frame is buffered.
    Client(Result<(), ConnectionError>),
    /// A whole server frame is buffered.
    Server(Result<(), ConnectionError>),
    /// The instance started draining or closing (the watch that saw it comes back).
    Phase(Phase, watch::Receiver<Phase>),
    IdleTimeout,
}

/// One client input in this many feeds the overhead histogram (the first of each session
/// always does).
const OVERHEAD_SAMPLE_EVERY: u32 = 8;

/// How long a session that ends on a client's protocol error waits for the answers to the
/// requests it forwarded before it.
const IN_FLIGHT_REPLIES_WAIT: Duration = Duration::from_secs(30);

/// How a session ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Ending {
    ClientTerminated,
    ClientGone,
    ClientProtocolError,
    ServerGone,
    /// The server reported a setting under which pgstepup cannot read SQL safely.
    UnsafeSetting,
    /// The instance is shutting down (57P01 sent).
    Shutdown,
    /// Idle past `limits.client_idle_timeout_secs` (57P05 sent).
    IdleTimeout,
}

impl Session {
    /// Sends the client the rest of its startup reply (parameters, pgstepup's own cancel key,
    /// ReadyForQuery) and returns the session ready to run.
    pub(crate) async fn start(
        mut client: Connection,
        server: Connection,
        parts: SessionParts,
    ) -> Result<Self, (Connection, PgError)> {
        let SessionParts {
            reply,
            cancel_key,
            mut gate,
            stepup,
            max_backlog_bytes,
            lifecycle: (phase_changes, live),
            idle_timeout,
            upstream_opened,
            reuse_upstream,
            shared,
        } = parts;
        let phase = *phase_changes.borrow();
        for frame in &reply.relay {
            if frame.tag() == tag::PARAMETER_STATUS {
                if let Err(error) = gate.on_parameter_status(frame.view()) {
                    return Err((client, error));
                }
            }
        }
        for frame in &reply.relay {
            client.queue_frame(frame);
        }
        let mut hold_signal = Arc::default();
        let mut cancel_pid = None;
        let registration = cancel_key.map(|(registration, pid, secret, signal)| {
            client.queue(&backend::backend_key_data(pid, &secret));
            hold_signal = signal;
            cancel_pid = Some(pid);
            registration
        });
        client.queue(&backend::ready_for_query(reply.ready_status));
        if let Err(e) = client.flush().await {
            tracing::debug!(error = %e, "client left during startup");
        }
        Ok(Session {
            client,
            server,
            gate,
            stepup,
            backlog: VecDeque::new(),
            backlog_bytes: 0,
            max_backlog_bytes,
            hold_signal,
            cancel_pid,
            _cancel_key: registration,
            phase,
            phase_changes,
            _live: live,
            transaction_status: reply.ready_status,
            idle_timeout,
            held_in_batch: false,
            inputs: 0,
            login: reply,
            upstream_opened,
            reuse_upstream,
            final_error: None,
            shared,
        })
    }

    /// The pid of the cancel key the client holds.
    pub(crate) fn cancel_pid(&self) -> Option<i32> {
        self.cancel_pid
    }

    /// Relays until either side ends the session, or the instance shuts it down. A client
    /// that says goodbye while the server is idle and in step leaves the upstream connection
    /// open, to be reused.
    pub(crate) async fn run(mut self) -> (Ending, Option<IdleUpstream>) {
        // One registration with the lifecycle for the whole loop: a `changed()` made afresh
        // in every select registers and unregisters a waiter (two locks) per exchange. Once
        // polled, the future keeps this task's waker, so it is polled again only when the
        // watch says the phase changed (an atomic load), not on every wake (a lock each).
        let mut phase_change = std::pin::pin!(next_phase(self.phase_changes.clone()));
        let mut phase_armed = false;
        // Once a shutdown begins, the phase is looked at again every 100 ms whatever else
        // wakes the session: closing a busy session must not wait on a single wake-up.
        let mut phase_tick: Option<tokio::time::Interval> = None;
        let mut idle = self.idle_timeout.map(IdleTimer::new);
        let ending = loop {
            // Only a session outside a transaction is idle (PostgreSQL's own
            // idle_in_transaction_session_timeout covers the rest).
            let watch_idle = self.transaction_status == b'I';
            // Polled in this order on every wake-up, server output first (it frees server
            // memory and keeps notifications timely); by hand rather than with `select!`, so
            // a wake-up builds no branch futures and no output enum per branch.
            let input = std::future::poll_fn(|cx| {
                if let Poll::Ready(r) = self.server.poll_frame(cx) {
                    return Poll::Ready(Input::Server(r));
                }
                if let Poll::Ready(r) = self.client.poll_frame(cx) {
                    return Poll::Ready(Input::Client(r));
                }
                if self.phase != Phase::Running {
                    let tick = phase_tick
                        .get_or_insert_with(|| tokio::time::interval(Duration::from_millis(100)));
                    while tick.poll_tick(cx).is_ready() {}
                }
                if !phase_armed || self.phase_changes.has_changed().unwrap_or(false) {
                    phase_armed = true;
                    if let Poll::Ready((phase, changes)) = phase_change.as_mut().poll(cx) {
                        return Poll::Ready(Input::Phase(phase, changes));
                    }
                }
                if let (true, Some(idle)) = (watch_idle, idle.as_mut()) {
                    // The timer lives in `idle`: a wait made afresh per poll loses nothing.
                    if std::pin::pin!(idle.expired()).poll(cx).is_ready() {
                        return Poll::Ready(Input::IdleTimeout);
                    }
                }
                Poll::Pending
            })
            .await;
            let step = match input {
                Input::Server(r) => self.on_server_input(r).await,
                Input::Client(r) => self.on_client_input(r).await,
                Input::Phase(phase, changes) => {
                    self.phase = phase;
                    // This receiver has seen what the future saw, so `has_changed` is news.
                    self.phase_changes = changes.clone();
                    phase_change.set(next_phase(changes));
                    phase_armed = false;
                    Ok(())
                }
                Input::IdleTimeout => {
                    self.gate
                        .metrics()
                        .session_closed(SessionClosed::IdleTimeout);
                    self.refuse_fatal(PgError::fatal(
                        sqlstate::IDLE_SESSION_TIMEOUT,
                        "terminating connection due to idle-session timeout (pgstepup limits.client_idle_timeout_secs)",
                    ));
                    Err(Ending::IdleTimeout)
                }
            };
            if let Err(ending) = step.and_then(|()| self.check_phase()) {
                break ending;
            }
            if let Some(idle) = &mut idle {
                idle.touch();
            }
        };
        if ending == Ending::ClientTerminated && self.upstream_at_rest() {
            self.client.shutdown().await;
            let idle = IdleUpstream {
                server: self.server,
                login: self.login,
                opened: self.upstream_opened,
            };
            return (ending, Some(idle));
        }
        self.close(&ending).await;
        (ending, None)
    }

    /// Whether the upstream is exactly as a fresh login would leave it but for session state
    /// (which `DISCARD ALL` resets): outside a transaction, every request answered, no batch
    /// begun, nothing left to send or to read, and the instance running.
    fn upstream_at_rest(&self) -> bool {
        self.reuse_upstream
            && self.transaction_status == b'I'
            && self.gate.at_rest()
            && self.backlog.is_empty()
            && self.phase == Phase::Running
            && self.server.is_quiet()
    }

    /// Draining: a session with nothing in flight outside a transaction closes now; closing:
    /// every session closes now.
    pub(crate) fn check_phase(&mut self) -> Result<(), Ending> {
        if self.phase == Phase::Running {
            return Ok(());
        }
        let quiet = self.transaction_status == b'I'
            && self.gate.nothing_in_flight()
            && self.backlog.is_empty();
        match self.phase {
            Phase::Running => Ok(()),
            Phase::Draining if !quiet => Ok(()),
            Phase::Draining | Phase::Closing => {
                self.final_error = Some(PgError::fatal(
                    sqlstate::ADMIN_SHUTDOWN,
                    "terminating connection due to administrator command: pgstepup is shutting down",
                ).with_hint("Reconnect: another pgstepup instance (or this one, restarted) will serve you."));
                Err(Ending::Shutdown)
            }
        }
    }

    async fn on_server_input(&mut self, ready: Result<(), ConnectionError>) -> Result<(), Ending> {
        ready.map_err(|_| Ending::ServerGone)?;
        while self.relay_buffered_server_frames()? {
            self.client.flush().await.map_err(|_| Ending::ClientGone)?;
        }
        // Drained: unless the server is mid-message (more bytes certainly follow), the
        // exchange is over for now, so the client gets everything.
        if self.client.has_queued() && !self.server.has_partial_input() {
            self.client.flush().await.map_err(|_| Ending::ClientGone)?;
        }
        Ok(())
    }

    /// Relays the whole server frames buffered, straight from the read buffer; stops early,
    /// returning true, when enough output is queued that it should go out first.
    pub(crate) fn relay_buffered_server_frames(&mut self) -> Result<bool, Ending> {
        loop {
            // Frames that go to the client as they are go in runs, each in one copy, or in
            // none when a run is all that was read: it ends the exchange, so it goes out now
            // from where it lies (as a flush after queueing it would).
            let Session {
                server,
                client,
                gate,
                transaction_status,
                ..
            } = self;
            let run = server.peek_run(|frame| relayed_as_is(gate, transaction_status, frame));
            if !run.is_empty() {
                let len = run.len();
                client
                    .forward_from(server, len)
                    .map_err(|_| Ending::ClientGone)?;
                if client.should_flush() {
                    return Ok(true);
                }
                continue;
            }
            let Some(frame) = self.server.peek_frame().map_err(|_| Ending::ServerGone)? else {
                return Ok(false);
            };
            let len = frame.as_bytes().len();
            relay_server_frame(&mut self.gate, &mut self.client, frame)?;
            self.server.consume(len);
            if self.client.should_flush() {
                return Ok(true);
            }
        }
    }

    async fn on_client_input(&mut self, ready: Result<(), ConnectionError>) -> Result<(), Ending> {
        // Sampled: two clock reads and a histogram update on every message would cost more
        // than the rest of the relay's own accounting.
        let started = self
            .inputs
            .is_multiple_of(OVERHEAD_SAMPLE_EVERY)
            .then(Instant::now);
        self.inputs = self.inputs.wrapping_add(1);
        self.held_in_batch = false;
        ready.map_err(|e| self.client_error(e))?;
        // Forwarded frames stay in the read buffer, as one run, until a frame that is not
        // forwarded as it is (or the end of the input) sends them ahead of it.
        let mut run = 0;
        loop {
            // Frames read while a statement was held come before what is still buffered.
            if let Some(frame) = self.backlog.pop_front() {
                self.backlog_bytes -= frame.as_bytes().len();
                match route_client_frame(&mut self.gate, frame.view(), |_| frame.clone()) {
                    None => self.server.queue_frame(&frame),
                    Some(divert) => self.divert(divert).await?,
                }
                if self.server.should_flush() {
                    self.server.flush().await.map_err(|_| Ending::ServerGone)?;
                }
                continue;
            }
            let frame = match self.client.peek_frame_at(run) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => {
                    self.pass_client_run(run)?;
                    return Err(self.client_error(e));
                }
            };
            let len = frame.as_bytes().len();
            // Only a held statement outlives the read buffer, so only it is copied.
            match route_client_frame(&mut self.gate, frame, Frame::copied) {
                None => run += len,
                Some(divert) => {
                    self.pass_client_run(std::mem::take(&mut run))?;
                    self.client.consume(len);
                    self.divert(divert).await?;
                }
            }
            if run >= FLUSH_THRESHOLD || self.server.should_flush() {
                self.pass_client_run(std::mem::take(&mut run))?;
                self.server.flush().await.map_err(|_| Ending::ServerGone)?;
            }
        }
        self.pass_client_run(run)?;
        if self.server.has_queued() && !self.client.has_partial_input() {
            self.server.flush().await.map_err(|_| Ending::ServerGone)?;
        }
        if let (Some(started), false) = (started, self.held_in_batch) {
            self.gate
                .metrics()
                .statement_overhead
                .observe(started.elapsed().as_secs_f64());
        }
        Ok(())
    }

    /// Passes the forwarded frames at the front of the client's input (`run` bytes of them)
    /// to the server: at once, from where they lie, when they are all that was read, else
    /// queued ahead of what follows ([`Connection::forward_from`]).
    fn pass_client_run(&mut self, run: usize) -> Result<(), Ending> {
        if run > 0 {
            self.server
                .forward_from(&mut self.client, run)
                .map_err(|_| Ending::ServerGone)?;
        }
        Ok(())
    }

    /// Acts on a client frame that is not forwarded as it is (whatever went before it is
    /// already queued).
    async fn divert(&mut self, divert: Divert) -> Result<(), Ending> {
        match divert {
            Divert::Substitute(substitute) => self.server.queue_frame(&substitute),
            Divert::Hold(frame, need) => {
                let span = self.gate.span().clone();
                self.step_up(&frame, need).instrument(span).await?;
                self.gate.note_forwarded(frame.tag());
            }
            Divert::Terminate => return Err(Ending::ClientTerminated),
            Divert::Malformed(malformed) => {
                self.gate
                    .metrics()
                    .session_closed(SessionClosed::ProtocolError);
                // Never forward what cannot be read: the server would see something else
                // than pgstepup did.
                self.refuse_fatal(PgError::fatal(
                    sqlstate::PROTOCOL_VIOLATION,
                    malformed.to_string(),
                ));
                return Err(Ending::ClientProtocolError);
            }
        }
        Ok(())
    }

    pub(crate) fn client_error(&mut self, e: ConnectionError) -> Ending {
        match e {
            ConnectionError::Closed | ConnectionError::Truncated | ConnectionError::Io(_) => {
                Ending::ClientGone
            }
            ConnectionError::TooLarge { .. } => {
                self.gate
                    .metrics()
                    .session_closed(SessionClosed::MessageTooLarge);
                self.final_error = Some(PgError::fatal(
                    sqlstate::PROGRAM_LIMIT_EXCEEDED,
                    e.to_string(),
                ));
                Ending::ClientProtocolError
            }
            other => {
                self.gate
                    .metrics()
                    .session_closed(SessionClosed::ProtocolError);
                self.final_error = Some(PgError::fatal(
                    sqlstate::PROTOCOL_VIOLATION,
                    other.to_string(),
                ));
                Ending::ClientProtocolError
            }
        }
    }

    pub(crate) fn refuse_fatal(&mut self, error: PgError) {
        queue_fatal(&mut self.client, error, self.gate.span());
    }

    /// Cancels what the upstream is running, if anything was forwarded and not yet answered.
    async fn cancel_upstream(&self) {
        if self.gate.nothing_in_flight() {
            return;
        }
        let Some((pid, secret)) = self.login.backend_key.clone() else {
            return;
        };
        let request = CancelRequest { pid, secret };
        let cancel = pgstepup_upstream::cancel(&self.shared.upstream, &request);
        if let Err(error) = cancel.await {
            tracing::warn!(%error, "cancelling the upstream's running request at shutdown failed");
        }
    }

    /// Relays the server's answers until every forwarded request has its ReadyForQuery (the
    /// server or the client going away ends it too; the caller bounds the wait). `why` (a
    /// C string) ends a COPY FROM STDIN still running, whose ReadyForQuery would wait for more
    /// data; outside COPY the server ignores the CopyFail.
    async fn relay_replies_in_flight(&mut self, why: &[u8]) {
        self.server.queue_frame(&Frame::new(tag::COPY_FAIL, why));
        if self.server.flush().await.is_err() {
            return;
        }
        while !self.gate.nothing_in_flight() {
            let ready = std::future::poll_fn(|cx| self.server.poll_frame(cx)).await;
            if self.on_server_input(ready).await.is_err() {
                return;
            }
        }
    }

    async fn close(&mut self, ending: &Ending) {
        match ending {
            Ending::ServerGone => {
                // Whatever the server said last is already queued: when that was its own
                // FATAL (the backend was terminated, the server shuts down), it is the reason.
                if !self.gate.server_said_fatal() {
                    self.client.queue(
                        &PgError::fatal(
                            sqlstate::CONNECTION_FAILURE,
                            "the upstream server closed the connection",
                        )
                        .to_error_response(),
                    );
                }
                self.client.shutdown().await;
            }
            Ending::ClientProtocolError | Ending::Shutdown => {
                // PostgreSQL answers every request before one it cannot read (an INSERT sent
                // ahead of garbage commits, and says so): the requests already forwarded get
                // their answers too, then the error. At shutdown what still runs is cancelled
                // first: it must not commit after the client was told its session ended.
                if *ending == Ending::Shutdown {
                    let answered = async {
                        self.cancel_upstream().await;
                        self.relay_replies_in_flight(b"pgstepup is shutting down\0")
                            .await;
                    };
                    let _ = tokio::time::timeout(CLOSING_WORK, answered).await;
                } else {
                    let answered = self
                        .relay_replies_in_flight(b"the client sent input pgstepup cannot read\0");
                    let _ = tokio::time::timeout(IN_FLIGHT_REPLIES_WAIT, answered).await;
                }
                if let Some(error) = self.final_error.take() {
                    self.refuse_fatal(error);
                }
                self.server.terminate().await;
                self.client.shutdown().await;
            }
            Ending::ClientTerminated | Ending::ClientGone if !self.gate.nothing_in_flight() => {
                // A client may say goodbye (or half-close its socket) right after its last
                // request: PostgreSQL answers that request first, and so does pgstepup.
                let answered = self.relay_replies_in_flight(b"the client went away\0");
                let _ = tokio::time::timeout(IN_FLIGHT_REPLIES_WAIT, answered).await;
                let _ = self.client.flush().await;
                self.server.terminate().await;
                self.client.shutdown().await;
            }
            Ending::ClientTerminated
            | Ending::ClientGone
            | Ending::UnsafeSetting
            | Ending::IdleTimeout => {
                // Only whole frames were ever forwarded, so the server holds no half message;
                // Terminate ends the session and rolls back an open transaction.
                self.server.terminate().await;
                self.client.shutdown().await;
            }
        }
    }
}

/// What becomes of a client frame that is not forwarded as it is.
enum Divert {
    /// Send this refusal instead (the gate counted it as the frame it replaces).
    Substitute(Frame),
    /// Needs step-up first; the frame is kept to forward after it.
    Hold(Frame, StepUpNeed),
    /// Terminate (not forwarded: see [`Session::run`]).
    Terminate,
    Malformed(MalformedStatement),
}

/// Passes one client frame through the gate, reading it where it lies: `None` when it goes to
/// the server as it is (counted as sent; the caller sends it), else what to do instead
/// (`keep` makes an owned copy, only for a frame to hold).
fn route_client_frame(
    gate: &mut Gate,
    frame: FrameRef<'_>,
    keep: impl FnOnce(FrameRef<'_>) -> Frame,
) -> Option<Divert> {
    if frame.tag() == tag::TERMINATE {
        // Not forwarded yet: the session decides whether the upstream connection ends too.
        return Some(Divert::Terminate);
    }
    let verdict = match Statement::from_frame(frame) {
        Ok(Some(statement)) => gate.check(statement),
        Ok(None) if frame.tag() == tag::BIND => gate.check_bind(frame),
        Ok(None) => {
            if frame.tag() == tag::CLOSE {
                gate.on_close(frame);
            }
            Verdict::Forward
        }
        Err(malformed) => return Some(Divert::Malformed(malformed)),
    };
    let divert = match verdict {
        Verdict::Forward => None,
        Verdict::Substitute(substitute) => Some(Divert::Substitute(substitute)),
        Verdict::StepUp(need) => return Some(Divert::Hold(keep(frame), need)),
    };
    gate.note_forwarded(frame.tag());
    divert
}

/// Whether a server frame goes to the client as it is, in a run with its neighbours; a
/// ReadyForQuery's news (transaction status, a finished cycle) is taken as it joins the run.
/// The others go through [`relay_server_frame`]: dropped, rewritten or checked first.
fn relayed_as_is(gate: &mut Gate, transaction_status: &mut u8, frame: FrameRef<'_>) -> bool {
    match frame.tag() {
        tag::READY_FOR_QUERY => {
            *transaction_status = frame.body().first().copied().unwrap_or(b'I');
            gate.on_ready_for_query(*transaction_status);
            true
        }
        tag::BACKEND_KEY_DATA | tag::ERROR_RESPONSE | tag::PARAMETER_STATUS => false,
        _ => true,
    }
}

/// Queues one server frame [`relayed_as_is`] refused for the client: drops upstream cancel
/// keys, swaps errors of refusal substitutes for pgstepup's own, and checks settings that
/// change how SQL reads.
fn relay_server_frame(
    gate: &mut Gate,
    client: &mut Connection,
    frame: FrameRef<'_>,
) -> Result<(), Ending> {
    match frame.tag() {
        // Clients hold pgstepup's key, never the upstream's.
        tag::BACKEND_KEY_DATA => {}
        tag::ERROR_RESPONSE => match gate.rewrite_error(frame) {
            Some(ours) => client.queue(&ours),
            None => {
                gate.note_server_error(frame);
                client.queue(frame.as_bytes())
            }
        },
        tag::PARAMETER_STATUS => {
            client.queue(frame.as_bytes());
            if let Err(error) = gate.on_parameter_status(frame) {
                queue_fatal(client, error, gate.span());
                return Err(Ending::UnsafeSetting);
            }
        }
        _ => client.queue(frame.as_bytes()),
    }
    Ok(())
}

/// Queues the FATAL error that ends a session (the caller then closes it).
fn queue_fatal(client: &mut Connection, error: PgError, span: &tracing::Span) {
    tracing::info!(parent: span, %error, "closing session");
    client.queue(&error.to_error_response());
}

/// The lifecycle's next phase, with the watch to wait for the one after (never, once the
/// lifecycle is gone).
async fn next_phase(mut changes: watch::Receiver<Phase>) -> (Phase, watch::Receiver<Phase>) {
    if changes.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
    let phase = *changes.borrow_and_update();
    (phase, changes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    #[test]
    fn the_relays_hot_fields_come_first() {
        // The session's own fields the relay reads per exchange share its first cache line,
        // then the two connections, then the gate, whose hot fields lead it.
        assert!(offset_of!(Session, phase_changes) + size_of::<watch::Receiver<Phase>>() <= 64);
        assert_eq!(offset_of!(Session, client), 64);
        assert_eq!(
            offset_of!(Session, server),
            offset_of!(Session, client) + size_of::<Connection>()
        );
        assert_eq!(
            offset_of!(Session, gate),
            offset_of!(Session, server) + size_of::<Connection>()
        );
    }
}
