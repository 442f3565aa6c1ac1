//! The gate every statement passes before it is forwarded: classify (cached by shape), decide
//! with the policy in force, and either forward the client's bytes, refuse, or report that the
//! statement needs step-up (the session then checks for an elevation or holds it).
//!
//! Refusing keeps client and server in step: instead of the statement, the server gets a
//! call to a function that cannot exist (`pg_catalog.pgstepup_refused_<nonce>_<n>()`), so it
//! fails exactly where the statement would have run (a transaction block becomes failed, an
//! extended-protocol batch skips to Sync), and pgstepup swaps that server error for its own
//! explanation on the way back. Responses stay in order, whatever was pipelined before. In a
//! text of several statements, those before the refused one are sent ahead of the call, as
//! the server would have run them; a refused Bind or fast-path call fails under a statement
//! name of pgstepup's own, so the client's unnamed statement survives.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use pgstepup_audit::{AuditLog, Record};
use pgstepup_classify::{Classification, Facet, Kind, Recall, SearchPath, ShapeMemo, SqlPrepared};
use pgstepup_metrics::Metrics;
use pgstepup_policy::{Action, Decision, Scope, Subject};
use pgstepup_protocol::backend::{sqlstate, PgError};
use pgstepup_protocol::{error_message, tag, Frame, FrameRef};
use pgstepup_stepup::unix_now;

use crate::policy_store::{ActivePolicy, PolicyStore};
use crate::prepared::{Prepared, PreparedDecision, PreparedStatements};
use crate::statement::Statement;

/// Client encodings whose multi-byte characters can contain ASCII quote or backslash bytes:
/// pgstepup cannot read such text the way the server (which converts it first) does.
const UNSAFE_CLIENT_ENCODINGS: &[&str] = &[
    "BIG5",
    "GB18030",
    "GBK",
    "JOHAB",
    "SJIS",
    "SHIFT_JIS_2004",
    "UHC",
];

/// How much of a statement goes into a log line, and into an audit record.
const LOGGED_SQL_CHARS: usize = 500;
const AUDITED_SQL_CHARS: usize = 16 * 1024;

/// What to do with the client's frame.
pub(crate) enum Verdict {
    Forward,
    /// Send this instead.
    Substitute(Frame),
    /// Forward only under an elevation; otherwise challenge, hold or refuse.
    StepUp(StepUpNeed),
}

/// A statement that needs step-up, with what it takes to challenge, release or refuse it.
#[derive(Debug, Clone)]
pub(crate) struct StepUpNeed {
    pub rule: StepUpRule,
    pub sql: String,
    pub digest: String,
    /// Remembered with a named statement when it is released.
    classification: Arc<Classification>,
    refusable: Refusable,
}

/// The parts of a step-up decision that outlive the policy borrow.
#[derive(Debug, Clone)]
pub(crate) struct StepUpRule {
    pub name: String,
    pub reason: String,
    pub lifetime: Duration,
    pub user_scope: bool,
    pub hold_timeout: Duration,
}

impl StepUpRule {
    fn from_decision(decision: &Decision) -> Self {
        StepUpRule {
            name: decision.rule.to_owned(),
            reason: decision.reason(),
            lifetime: decision.lifetime,
            user_scope: decision.scope == Scope::User,
            hold_timeout: decision.hold_timeout,
        }
    }
}

/// How a held frame is swapped for a failing one when it is refused.
#[derive(Debug, Clone)]
enum Refusable {
    /// A simple Query; `exact`: its text as decoded is the client's bytes (valid UTF-8) and
    /// parsed whole, so the statements before the refused one can be sent as they are (a
    /// text PostgreSQL cannot parse runs none of its statements).
    Query {
        exact: bool,
    },
    Parse {
        name: Vec<u8>,
    },
    /// A Bind (of a remembered named statement) becomes a failing Parse of a statement name
    /// of pgstepup's own, so the client's unnamed statement survives.
    Bind,
    /// A fast-path call becomes such a Parse and a Sync (it ends its own cycle; a Query in
    /// its place would drop the unnamed statement).
    FunctionCall,
}

impl Refusable {
    /// `exact`: the decoded text is the client's own bytes.
    fn of(statement: &Statement<'_>, exact: bool) -> Self {
        match statement {
            Statement::Parse { name, .. } => Refusable::Parse {
                name: name.to_vec(),
            },
            Statement::Query { .. } => Refusable::Query { exact },
            Statement::FunctionCall { .. } => Refusable::FunctionCall,
        }
    }
}

struct PendingRefusal {
    number: u64,
    /// The ReadyForQuery cycle the substitute belongs to; stale once that cycle is over.
    cycle: u64,
    error: PgError,
}

/// Who and where, for the audit trail. `metrics` first: every statement counts itself there.
#[repr(C)]
pub(crate) struct SessionContext {
    pub metrics: Arc<Metrics>,
    pub connection_id: u64,
    pub client_addr: String,
    pub application_name: String,
    pub audit: Arc<AuditLog>,
}

/// Bytes of recently allowed shapes a session keeps before starting afresh.
const RECENT_BYTES_MAX: usize = 16 * 1024;

/// Per-session gate state. Laid out as declared (`repr(C)`), what every statement and
/// ReadyForQuery touches first (the session's hot state: see [`crate::proxy::Session`]).
#[repr(C)]
pub(crate) struct Gate {
    store: Arc<PolicyStore>,
    active: Arc<ActivePolicy>,
    generation: u64,
    /// Messages forwarded that each produce one ReadyForQuery (Query, Sync, FunctionCall).
    sent_cycles: u64,
    /// ReadyForQuery messages received.
    received_cycles: u64,
    /// Frames forwarded since the last one that ends a cycle: an extended-protocol batch
    /// still waiting for its Sync.
    unsynced: bool,
    /// The last ReadyForQuery said the transaction has failed: until it ends, the server
    /// answers every statement but COMMIT and ROLLBACK with 25P02.
    transaction_failed: bool,
    unsafe_encoding: Option<String>,
    pending: VecDeque<PendingRefusal>,
    /// Statements allowed under the policy in force, so a repeat costs one lookup in the
    /// session's own memo (by exact text when it has no literals, by shape after one scan when
    /// only the literals changed): no lock, no shared counter, no policy evaluation. Each with
    /// the kind that decided it, for the statement counters.
    recent_allowed: ShapeMemo<Kind>,
    context: SessionContext,
    /// Named prepared statements, looked up at every Bind.
    prepared: PreparedStatements,
    subject: Subject,
    upstream_roles: Vec<String>,
    marker: Arc<str>,
    next_number: u64,
    /// Elevations this session knows of, by rule, until they end.
    elevations: HashMap<String, Instant>,
    /// A statement approved for one run also covers its own batch (the Binds up to Sync).
    /// (rule, cycle, digest of the statement's text): its own repeats in that batch only.
    approved_batch: Option<(String, u64, String)>,
    /// The server sent a FATAL error: the session ends with it.
    server_said_fatal: bool,
    /// The cycle (numbered as `sent_cycles`) of an extended-protocol batch known to have
    /// failed: the server skips the rest of it, up to its Sync.
    failed_batch: Option<u64>,
    /// SQL-level prepared statements: what each name was prepared as, so its EXECUTE is
    /// decided as that text; `None` when what the server holds under the name is not known.
    sql_prepared: SqlPreparedStatements,
    /// The connection's span (id, peer, user): named as the parent of the session's events,
    /// and entered only around holds, because the relay loop's task is not instrumented
    /// (entering a span on every poll costs more than the gate's check of a statement).
    span: tracing::Span,
}

impl Gate {
    pub(crate) fn new(
        store: Arc<PolicyStore>,
        user: String,
        upstream_roles: Vec<String>,
        marker: Arc<str>,
        context: SessionContext,
    ) -> Self {
        let active = store.current();
        let generation = store.generation();
        let roles = active.policy.roles_of(&user, &upstream_roles);
        Gate {
            recent_allowed: ShapeMemo::new(RECENT_BYTES_MAX),
            prepared: PreparedStatements::new(),
            sql_prepared: SqlPreparedStatements::default(),
            server_said_fatal: false,
            failed_batch: None,
            context,
            store,
            active,
            generation,
            subject: Subject::new(user, roles),
            upstream_roles,
            unsafe_encoding: None,
            marker,
            pending: VecDeque::new(),
            next_number: 0,
            sent_cycles: 0,
            received_cycles: 0,
            unsynced: false,
            transaction_failed: false,
            elevations: HashMap::new(),
            approved_batch: None,
            span: tracing::Span::current(),
        }
    }

    /// The connection's span, for the session's events and its cold paths.
    pub(crate) fn span(&self) -> &tracing::Span {
        &self.span
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.context.metrics
    }

    /// Whether every forwarded request has been answered (its ReadyForQuery came back).
    pub(crate) fn nothing_in_flight(&self) -> bool {
        self.sent_cycles == self.received_cycles
    }

    /// Whether the server is between requests: everything answered and no batch begun.
    pub(crate) fn at_rest(&self) -> bool {
        self.nothing_in_flight() && !self.unsynced
    }

    pub(crate) fn user(&self) -> &str {
        &self.subject.user
    }

    pub(crate) fn context(&self) -> &SessionContext {
        &self.context
    }

    /// Whether this client gets the link in an immediate refusal instead of a hold.
    pub(crate) fn refuses_at_once(&self) -> bool {
        self.active
            .policy
            .refuses_at_once(&self.context.application_name)
    }

    /// An elevation the session already knows of that covers `sql` under `rule`:
    /// `Some(Some(end))` for a lasting one (unix seconds), `Some(None)` for a one-statement
    /// approval of the same text earlier in this batch (its Binds, a driver's re-Parse of
    /// it), never for another statement of the batch: the approver saw that text alone.
    fn known_elevation(&self, rule: &str, sql: &str) -> Option<Option<u64>> {
        if let Some(until) = self.elevations.get(rule) {
            let left = until.checked_duration_since(Instant::now())?;
            return Some(Some(unix_now() + left.as_secs()));
        }
        self.approved_batch
            .as_ref()
            .is_some_and(|(r, cycle, digest)| {
                r == rule && *cycle == self.sent_cycles && *digest == Record::digest(sql)
            })
            .then_some(None)
    }

    /// Decides a statement before its frame is forwarded.
    pub(crate) fn check(&mut self, statement: Statement<'_>) -> Verdict {
        if self.store.generation() != self.generation {
            self.refresh();
        }
        // A DISCARD or DEALLOCATE forgets nothing here: whether the server ran it is not known
        // yet, and a name it did deallocate fails at the server with its own error (26000),
        // which clients that re-prepare on it expect; one parsed again afterwards is decided
        // as either text.
        // Whether a repeat of this statement's shape may be decided by the session alone (a
        // named Parse also records the statement, so it always takes the full path).
        let mut repeatable = false;
        let (classification, sql) = match statement {
            Statement::Query { sql } | Statement::Parse { sql, .. } => {
                let memo_decides = self.unsafe_encoding.is_none()
                    && matches!(
                        statement,
                        Statement::Query { .. } | Statement::Parse { name: b"", .. }
                    );
                // A verbatim repeat (what parameterised clients send) is found by its bytes,
                // before decoding: only valid UTF-8 is ever remembered.
                if let Some(kind) = memo_decides
                    .then(|| self.recent_allowed.get_verbatim(sql))
                    .flatten()
                {
                    self.context
                        .metrics
                        .statement(Action::Allow as usize, kind as usize);
                    return Verdict::Forward;
                }
                let text = decode(sql);
                // What the shared cache recalls while the memo looks the text up, so a text
                // another session classified is not scanned here.
                let mut recalled = None;
                // Not with an encoding that can hide quotes, nor for text that does not scan.
                // On a miss the memo keeps the shape for the shared cache.
                let remembered = match self.unsafe_encoding {
                    None => {
                        let classifier = &self.active.classifier;
                        self.recent_allowed
                            .get_by_shape(&text, |sql, template| {
                                let outcome = classifier.recall(sql, template);
                                let hit = matches!(outcome, Recall::Hit(_));
                                recalled = Some(outcome);
                                hit
                            })
                            .ok()
                            .flatten()
                    }
                    Some(_) => None,
                };
                repeatable = memo_decides && matches!(text, Cow::Borrowed(_));
                if let (true, Some(kind)) = (repeatable, remembered) {
                    self.context
                        .metrics
                        .statement(Action::Allow as usize, kind as usize);
                    return Verdict::Forward;
                }
                (self.classify(&text, recalled), text)
            }
            Statement::FunctionCall { oid } => (
                Arc::new(function_call(oid)),
                Cow::Owned(format!("<fast-path call of function OID {oid}>")),
            ),
        };
        // A Parse under a name the server already holds fails there (42P05) and the old
        // statement stays; pgstepup cannot tell which one a later Bind runs, so it decides
        // such a Bind as both (the stricter wins), and forgets neither.
        let mut earlier = None;
        if let Statement::Parse { name, .. } = statement {
            if !name.is_empty() {
                earlier = self.prepared.take(name);
            }
        }
        // An EXECUTE of a statement this session saw prepared is decided as that statement
        // (never remembered: the name may come to mean something unknown).
        let simple = matches!(statement, Statement::Query { .. });
        // `None` for nearly every statement: nothing to copy.
        let prepared_change = classification.sql_prepared.clone();
        let classification = match &prepared_change {
            SqlPrepared::None => classification,
            SqlPrepared::ExecuteAlone(name) => {
                repeatable = false;
                match self.sql_prepared.known(name).filter(|_| simple) {
                    Some(prepared) => prepared,
                    None => classification,
                }
            }
            _ => {
                repeatable = false;
                classification
            }
        };
        if let Some(change) = &classification.search_path {
            self.widen_search_path(change);
        }
        let decision = self.active.policy.evaluate(&classification, &self.subject);
        self.sql_prepared.follow(
            &prepared_change,
            &classification,
            simple && decision.action == Action::Allow,
        );
        let kind = decision.kind().unwrap_or(Kind::Read);
        self.context
            .metrics
            .statement(decision.action as usize, kind as usize);
        if let (Statement::Parse { name, .. }, Some(earlier)) = (statement, earlier) {
            self.prepared.insert(
                name,
                Prepared {
                    classification: Arc::new(either_of(&earlier.classification, &classification)),
                    sql: format!(
                        "{} -- or, prepared again under its name: {sql}",
                        earlier.sql
                    ),
                    // Decided again at its next Bind.
                    generation: u64::MAX,
                    decided: PreparedDecision::Allow,
                },
            );
        } else if let (Statement::Parse { name, .. }, true) = (
            statement,
            decision.action == Action::Allow || self.active.observe,
        ) {
            if !name.is_empty() {
                self.prepared.insert(
                    name,
                    Prepared {
                        classification: classification.clone(),
                        sql: sql.clone().into_owned(),
                        generation: self.generation,
                        decided: PreparedDecision::Allow,
                    },
                );
            }
        }
        match decision.action {
            Action::StepUp
                if !self.active.observe
                    && (self.server_refuses_anyway(&sql) || !simple && self.batch_fails()) =>
            {
                // Holding it would ask for an approval of what cannot run: in a failed
                // transaction the server's own 25P02 answers the failing call in its place, as
                // it would the statement; in a failed batch the server skips it unanswered.
                tracing::debug!(parent: &self.span, rule = %decision.rule, "not held: the server would not run it");
                let error = PgError::error(
                    sqlstate::IN_FAILED_SQL_TRANSACTION,
                    "current transaction is aborted, commands ignored until end of transaction block",
                );
                let refusable = Refusable::of(&statement, false);
                Verdict::Substitute(self.substitute(&refusable, "", error))
            }
            Action::StepUp if !self.active.observe => {
                let rule = StepUpRule::from_decision(&decision);
                let refusable = Refusable::of(
                    &statement,
                    matches!(sql, Cow::Borrowed(_)) && classification.fully_parsed,
                );
                let need = StepUpNeed {
                    digest: Record::digest(&sql),
                    sql: sql.into_owned(),
                    rule,
                    classification,
                    refusable,
                };
                if let Some(until) = self.known_elevation(&need.rule.name, &need.sql) {
                    self.released(&need, until);
                    return Verdict::Forward;
                }
                Verdict::StepUp(need)
            }
            Action::Allow => {
                tracing::debug!(parent: &self.span, rule = %decision.rule, sql = %sql, "allow");
                if repeatable {
                    self.recent_allowed.remember(&sql, kind);
                }
                Verdict::Forward
            }
            action if self.active.observe => {
                let reason = decision.reason();
                tracing::info!(
                    parent: &self.span,
                    %action, rule = %decision.rule, %reason, sql = %clip(&sql, LOGGED_SQL_CHARS),
                    "observe mode: statement forwarded although the policy says {action}"
                );
                self.audit("statement_observed", &sql, decision.rule, action, reason);
                Verdict::Forward
            }
            action => {
                let reason = decision.reason();
                tracing::info!(parent: &self.span, %action, rule = %decision.rule, %reason, sql = %clip(&sql, LOGGED_SQL_CHARS), "statement refused");
                let error = refusal_error(&decision);
                let rule = decision.rule.to_owned();
                self.audit("statement_refused", &sql, &rule, action, reason);
                let refusable = Refusable::of(
                    &statement,
                    matches!(sql, Cow::Borrowed(_)) && classification.fully_parsed,
                );
                Verdict::Substitute(self.substitute(&refusable, &sql, error))
            }
        }
    }

    /// A Bind of a named statement: parsed under an older policy, it is decided again under
    /// the policy now in force; needing step-up, it needs an elevation at each execution (one
    /// may have ended since the Parse). Refused, it is swapped for a failing Parse (the server
    /// then skips the rest of the batch, as for any error).
    pub(crate) fn check_bind(&mut self, frame: FrameRef<'_>) -> Verdict {
        if self.store.generation() != self.generation {
            self.refresh();
        }
        let Some((_, at)) = frame.cstr_at(0) else {
            return Verdict::Forward;
        };
        let Some((name, _)) = frame.cstr_at(at) else {
            return Verdict::Forward;
        };
        let generation = self.generation;
        // The unnamed statement was decided at its own Parse (it is never kept); the common
        // case, the statement last found allowed, again: no lookup.
        if name.is_empty() || self.prepared.is_allowed_repeat(name, generation) {
            return Verdict::Forward;
        }
        if self.prepared.get(name).is_none() {
            // A name pgstepup has no record of: prepared by an SQL-level PREPARE (one
            // namespace), or where pgstepup did not see it. What it runs is not known.
            let shown = String::from_utf8_lossy(name);
            self.prepared.insert(
                name,
                Prepared {
                    classification: Arc::new(single_facet(
                        Kind::Unknown,
                        format!("a Bind of statement \"{shown}\", prepared where pgstepup did not see it"),
                    )),
                    sql: format!("<statement \"{shown}\", prepared where pgstepup did not see it>"),
                    generation: u64::MAX,
                    decided: PreparedDecision::Allow,
                },
            );
        }
        let Some(prepared) = self.prepared.get(name) else {
            return Verdict::Forward;
        };
        // Decided under the current policy and allowed: one lookup.
        if prepared.generation == generation && matches!(prepared.decided, PreparedDecision::Allow)
        {
            self.prepared.note_allowed(name, generation);
            return Verdict::Forward;
        }
        if prepared.generation != generation {
            let decision = self
                .active
                .policy
                .evaluate(&prepared.classification, &self.subject);
            let decided = match decision.action {
                _ if self.active.observe => PreparedDecision::Allow,
                Action::Allow => PreparedDecision::Allow,
                Action::StepUp => PreparedDecision::StepUp(StepUpRule::from_decision(&decision)),
                Action::Deny => {
                    let reason = decision.reason();
                    tracing::info!(parent: &self.span, rule = %decision.rule, %reason, "a prepared statement is refused under the reloaded policy");
                    let (rule, sql) = (decision.rule.to_owned(), prepared.sql.clone());
                    let error = refusal_error(&decision);
                    self.audit("statement_refused", &sql, &rule, Action::Deny, reason);
                    PreparedDecision::Refused(error)
                }
            };
            if let Some(prepared) = self.prepared.get_mut(name) {
                prepared.generation = generation;
                prepared.decided = decided;
            }
        }
        let Some(prepared) = self.prepared.get(name) else {
            return Verdict::Forward;
        };
        match prepared.decided.clone() {
            PreparedDecision::Allow => Verdict::Forward,
            PreparedDecision::StepUp(rule)
                if self.known_elevation(&rule.name, &prepared.sql).is_some() =>
            {
                Verdict::Forward
            }
            // The server skips it (an earlier statement of its batch failed): no hold, no
            // approval asked for what cannot run.
            PreparedDecision::StepUp(_) if self.batch_fails() => {
                let error = PgError::error(
                    sqlstate::INSUFFICIENT_PRIVILEGE,
                    "pgstepup: an earlier statement of this batch failed; this one was not run",
                );
                Verdict::Substitute(self.substitute(&Refusable::Bind, "", error))
            }
            PreparedDecision::StepUp(rule) => Verdict::StepUp(StepUpNeed {
                digest: Record::digest(&prepared.sql),
                sql: prepared.sql.clone(),
                rule,
                classification: prepared.classification.clone(),
                refusable: Refusable::Bind,
            }),
            PreparedDecision::Refused(error) => {
                Verdict::Substitute(self.substitute(&Refusable::Bind, "", error))
            }
        }
    }

    /// A statement that needed step-up is being forwarded under an elevation ending at
    /// `until` (unix seconds; None: approved for this run, and the Binds of its batch).
    pub(crate) fn released(&mut self, need: &StepUpNeed, until: Option<u64>) {
        match until {
            Some(until) => {
                let left = Duration::from_secs(until.saturating_sub(unix_now()));
                self.elevations
                    .insert(need.rule.name.clone(), Instant::now() + left);
            }
            None => {
                self.approved_batch = Some((
                    need.rule.name.clone(),
                    self.sent_cycles,
                    need.digest.clone(),
                ))
            }
        }
        if let Refusable::Parse { name } = &need.refusable {
            // (A name held already keeps what it was decided as: see `check`.)
            if !name.is_empty() && self.prepared.get(name).is_none() {
                self.prepared.insert(
                    name,
                    Prepared {
                        classification: need.classification.clone(),
                        sql: need.sql.clone(),
                        generation: self.generation,
                        decided: PreparedDecision::StepUp(need.rule.clone()),
                    },
                );
            }
        }
        self.record(Record {
            event: "statement_elevated",
            statement_digest: Some(need.digest.clone()),
            statement: Some(clip(&need.sql, AUDITED_SQL_CHARS).to_owned()),
            rule: Some(need.rule.name.clone()),
            decision: Some(Action::StepUp.name()),
            elevation_expires: until,
            ..Default::default()
        });
    }

    /// The frame that replaces a statement needing step-up that will not run.
    pub(crate) fn refuse_step_up(&mut self, need: &StepUpNeed, error: PgError) -> Frame {
        let sql = need.sql.clone();
        self.substitute(&need.refusable, &sql, error)
    }

    /// A Close of a named statement forgets it.
    pub(crate) fn on_close(&mut self, frame: FrameRef<'_>) {
        if frame.body().first() == Some(&b'S') {
            if let Some((name, _)) = frame.cstr_at(1) {
                self.prepared.remove(name);
            }
        }
    }

    fn audit(&self, event: &'static str, sql: &str, rule: &str, action: Action, reason: String) {
        self.record(Record {
            event,
            statement_digest: Some(Record::digest(sql)),
            statement: Some(clip(sql, AUDITED_SQL_CHARS).to_owned()),
            rule: Some(rule.to_owned()),
            decision: Some(action.name()),
            reason: Some(reason),
            ..Default::default()
        });
    }

    /// Writes an audit record, filling in who and where.
    pub(crate) fn record(&self, record: Record) {
        let record = Record {
            user: Some(self.subject.user.clone()),
            client_addr: Some(self.context.client_addr.clone()),
            application_name: Some(self.context.application_name.clone()),
            connection_id: Some(self.context.connection_id),
            ..record
        };
        if let Err(error) = self.context.audit.record(&record) {
            tracing::error!(parent: &self.span, %error, "cannot write the audit trail");
        }
    }

    /// The session lists more schemas on its search_path (pgstepup keeps the union: it does
    /// not see which SET ran, nor when a SET LOCAL ended): what was allowed may now read a
    /// table a rule restricts through an unqualified name, so it is decided again.
    pub(crate) fn widen_search_path(&mut self, change: &SearchPath) {
        if change.add_to(&mut self.subject.search_path) {
            self.forget_recent();
            self.prepared.decide_again();
        }
    }

    fn forget_recent(&mut self) {
        self.recent_allowed.clear();
    }

    fn refresh(&mut self) {
        self.forget_recent();
        self.active = self.store.current();
        self.generation = self.store.generation();
        self.subject.roles = self
            .active
            .policy
            .roles_of(&self.subject.user, &self.upstream_roles);
    }

    /// Classifies `sql`, the text the memo last looked up (whose shape it may already hold),
    /// with what the shared cache's recall found for it meanwhile, if it was asked (a hit, or
    /// the text key a miss computed); text the lexer refuses is classified without the cache.
    fn classify(&mut self, sql: &str, recalled: Option<Recall>) -> Arc<Classification> {
        if let Some(encoding) = &self.unsafe_encoding {
            return Arc::new(single_facet(
                Kind::Unknown,
                format!("client_encoding {encoding} can hide quotes inside multi-byte characters"),
            ));
        }
        let classifier = &self.active.classifier;
        let metrics = &self.context.metrics;
        let key = match recalled {
            Some(Recall::Hit(recalled)) => {
                metrics.cache_hits_by_text.inc();
                return recalled;
            }
            Some(Recall::Miss(key)) => key,
            None => None,
        };
        let (classification, hit) = match self.recent_allowed.template_of(sql) {
            Ok(template) => classifier.classify_template(sql, template, key),
            Err(_) => (classifier.classify_uncached(sql), false),
        };
        if hit {
            metrics.cache_hits_by_shape.inc();
        } else {
            metrics.cache_misses.inc();
        }
        classification
    }

    /// Counts forwarded frames that each produce one ReadyForQuery; call after every frame
    /// sent to the server (substitutes count as the frame they replace).
    pub(crate) fn note_forwarded(&mut self, frame_tag: u8) {
        match frame_tag {
            tag::QUERY | tag::SYNC | tag::FUNCTION_CALL => {
                self.sent_cycles += 1;
                self.unsynced = false;
            }
            tag::PARSE | tag::BIND | tag::DESCRIBE | tag::EXECUTE | tag::CLOSE | tag::FLUSH => {
                self.unsynced = true;
            }
            // COPY data belongs to the cycle its statement began.
            _ => {}
        }
    }

    /// The frame sent in place of a refused statement (`sql`: its text, for a Query).
    fn substitute(&mut self, refusable: &Refusable, sql: &str, error: PgError) -> Frame {
        let number = self.next_number;
        self.next_number += 1;
        // A Query or FunctionCall ends the next cycle itself; a Parse belongs to the cycle its
        // Sync will end. Either way, that is the cycle numbered `sent_cycles`.
        let cycle = self.sent_cycles;
        self.pending.push_back(PendingRefusal {
            number,
            cycle,
            error,
        });
        let failing_call = format!("SELECT pg_catalog.{}{number}()", self.marker);
        let own_name = format!("{}{number}", self.marker);
        if matches!(refusable, Refusable::Parse { .. } | Refusable::Bind) {
            // It fails its batch: the server skips the rest, up to the Sync.
            self.failed_batch = Some(self.sent_cycles);
        }
        match refusable {
            Refusable::Parse { name } => failing_parse(name, &failing_call),
            Refusable::Bind => failing_parse(own_name.as_bytes(), &failing_call),
            Refusable::FunctionCall => {
                failing_parse(own_name.as_bytes(), &failing_call).followed_by(tag::SYNC, &[])
            }
            Refusable::Query { exact } => {
                // The statements before the refused one run, as they would if it failed on
                // the server: a BEGIN or COMMIT among them takes effect, so the transaction
                // state after the error is the server's own.
                let before = if *exact { self.allowed_prefix(sql) } else { "" };
                let mut body = Vec::with_capacity(before.len() + failing_call.len() + 2);
                body.extend_from_slice(before.as_bytes());
                if !before.is_empty() && !before.ends_with(';') {
                    body.push(b';');
                }
                body.extend_from_slice(failing_call.as_bytes());
                body.push(0);
                Frame::new(tag::QUERY, &body)
            }
        }
    }

    /// Whether the server will refuse `sql` whatever pgstepup decides: its transaction has
    /// failed, nothing sent is still unanswered (which could end it), and the text does not
    /// begin with a statement that ends a transaction.
    fn server_refuses_anyway(&self, sql: &str) -> bool {
        const ENDING: &[&str] = &["commit", "end", "rollback", "abort", "prepare"];
        self.transaction_failed
            && self.at_rest()
            && pgstepup_classify::lexer::leading_words(sql, 1)
                .first()
                .is_some_and(|word| !ENDING.contains(&word.as_str()))
    }

    /// The leading statements of a refused multi-statement text that may run: the longest
    /// run of them allowed together (a decision only grows stricter with more statements,
    /// and a run judged together sees the search_path its own SETs make). Empty for a single
    /// statement or a text that does not scan.
    fn allowed_prefix<'s>(&self, sql: &'s str) -> &'s str {
        if self.unsafe_encoding.is_some() {
            // The server may read the text otherwise: nothing of it runs.
            return "";
        }
        let Some(ends) = pgstepup_classify::lexer::statement_ends(sql) else {
            return "";
        };
        // Statements 0..allowed may run, the one at `refused` may not.
        let (mut allowed, mut refused) = (0, ends.len().saturating_sub(1));
        while allowed < refused {
            let middle = (allowed + refused).div_ceil(2);
            if self.allowed_as_is(&sql[..ends[middle - 1]]) {
                allowed = middle;
            } else {
                refused = middle - 1;
            }
        }
        match allowed {
            0 => "",
            n => &sql[..ends[n - 1]],
        }
    }

    /// Whether `sql` would be forwarded as it is now: allowed, or needing a step-up the
    /// session is elevated for.
    fn allowed_as_is(&self, sql: &str) -> bool {
        let classification = self.active.classifier.classify_uncached(sql);
        let decision = self.active.policy.evaluate(&classification, &self.subject);
        match decision.action {
            Action::Allow => true,
            Action::StepUp => self.known_elevation(decision.rule, sql).is_some(),
            Action::Deny => false,
        }
    }

    /// The client's version of a server ErrorResponse: pgstepup's own explanation when the
    /// error is a substitute's.
    pub(crate) fn rewrite_error(&mut self, frame: FrameRef<'_>) -> Option<Bytes> {
        if self.pending.is_empty() {
            return None;
        }
        let message = error_message(frame.body())?;
        let at = message.find(&*self.marker)? + self.marker.len();
        let digits: String = message[at..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        let number: u64 = digits.parse().ok()?;
        let index = self.pending.iter().position(|p| p.number == number)?;
        let refusal = self.pending.remove(index)?;
        Some(refusal.error.to_error_response())
    }

    /// A server error relayed as it is: a FATAL one ends the session, and is its reason.
    pub(crate) fn note_server_error(&mut self, frame: FrameRef<'_>) {
        if self.unsynced && self.nothing_in_flight() {
            // The batch the client is still sending failed: the server skips to its Sync.
            self.failed_batch = Some(self.sent_cycles);
        }
        let severity = pgstepup_protocol::error_field(frame.body(), b'V');
        if matches!(severity.as_deref(), Some("FATAL" | "PANIC")) {
            self.server_said_fatal = true;
        }
    }

    /// Whether an extended-protocol batch is being sent (frames forwarded since the last
    /// Sync).
    pub(crate) fn in_batch(&self) -> bool {
        self.unsynced
    }

    /// Whether the extended-protocol batch being sent has failed, so the server will skip
    /// whatever else comes before its Sync.
    pub(crate) fn batch_fails(&self) -> bool {
        self.unsynced && self.failed_batch == Some(self.sent_cycles)
    }

    /// Whether the server ended the session with its own FATAL error.
    pub(crate) fn server_said_fatal(&self) -> bool {
        self.server_said_fatal
    }

    /// A ReadyForQuery ended a cycle: substitutes of finished cycles will never answer.
    pub(crate) fn on_ready_for_query(&mut self, transaction_status: u8) {
        self.transaction_failed = transaction_status == b'E';
        self.received_cycles += 1;
        let finished = self.received_cycles;
        self.pending.retain(|p| p.cycle >= finished);
    }

    /// Tracks settings that change how text must be read. An error means the session must end.
    pub(crate) fn on_parameter_status(&mut self, frame: FrameRef<'_>) -> Result<(), PgError> {
        let (name, at) = frame.cstr_at(0).unwrap_or_default();
        let (value, _) = frame.cstr_at(at).unwrap_or_default();
        match name {
            b"client_encoding" => {
                self.forget_recent();
                let value = String::from_utf8_lossy(value).to_ascii_uppercase();
                self.unsafe_encoding = UNSAFE_CLIENT_ENCODINGS
                    .contains(&value.as_str())
                    .then_some(value);
                Ok(())
            }
            // Clients such as pgJDBC name themselves with SET after login; the server's report
            // is what the application policy, the logs and the audit trail go by.
            b"application_name" => {
                if value != self.context.application_name.as_bytes() {
                    self.context.application_name = String::from_utf8_lossy(value).into_owned();
                    self.span
                        .record("application_name", self.context.application_name.as_str());
                }
                Ok(())
            }
            b"standard_conforming_strings" if value != b"on" => Err(PgError::fatal(
                sqlstate::FEATURE_NOT_SUPPORTED,
                "pgstepup requires standard_conforming_strings = on and the server reported it off",
            )
            .with_hint("Remove the setting from the role or database (ALTER ROLE/DATABASE ... RESET standard_conforming_strings).")),
            _ => Ok(()),
        }
    }
}

/// The SQL-level prepared statements of a session, as far as pgstepup can follow them. The
/// server refuses a second PREPARE of a name (until DEALLOCATE), so a name prepared again,
/// or prepared where pgstepup cannot tell what (among other statements, in a Parse, or by a
/// statement that was not allowed as it was), is forgotten for good: its EXECUTE needs what
/// any EXECUTE needs. Once a statement that runs code (DO, CALL, a function not known to be
/// read-only) or one not fully parsed was forwarded, anything may have been prepared unseen,
/// and no EXECUTE is taken for what it runs again.
#[derive(Default)]
struct SqlPreparedStatements {
    known: HashMap<String, Option<Arc<Classification>>>,
    unseen: bool,
}

impl SqlPreparedStatements {
    /// What `name` was prepared as, when that is known.
    fn known(&self, name: &str) -> Option<Arc<Classification>> {
        if self.unseen {
            return None;
        }
        self.known.get(name).cloned().flatten()
    }

    /// Notes what a statement does to prepared statements: `change` as the text says,
    /// `decided` what it was decided as (a known EXECUTE: what it runs), `forwarded_as_is`
    /// a simple Query allowed as it is.
    fn follow(
        &mut self,
        change: &SqlPrepared,
        decided: &Arc<Classification>,
        forwarded_as_is: bool,
    ) {
        // A PREPARE runs nothing of its text.
        let quiet = matches!(change, SqlPrepared::PrepareAlone(_))
            || decided.fully_parsed
                && decided
                    .kinds
                    .iter()
                    .all(|kind| matches!(kind, Kind::Read | Kind::Utility | Kind::Transaction));
        if !quiet {
            self.unseen = true;
        }
        match change {
            SqlPrepared::PrepareAlone(name) => {
                let prepared = match self.known.contains_key(name) || !forwarded_as_is {
                    true => None,
                    false => Some(Arc::clone(decided)),
                };
                self.known.insert(name.clone(), prepared);
            }
            SqlPrepared::Prepares(names) => {
                for name in names {
                    self.known.insert(name.clone(), None);
                }
            }
            SqlPrepared::None | SqlPrepared::ExecuteAlone(_) => {}
        }
    }
}

/// What a statement that is one of two texts does: everything either does.
fn either_of(one: &Classification, other: &Classification) -> Classification {
    let mut both = one.clone();
    for facet in &other.facets {
        if !both.facets.contains(facet) {
            both.facets.push(facet.clone());
        }
    }
    both.kinds = both.facets.iter().map(|f| f.kind).collect();
    both.functions.extend(other.functions.iter().cloned());
    both.reasons.extend(other.reasons.iter().cloned());
    both.pinned_violation = one
        .pinned_violation
        .clone()
        .or_else(|| other.pinned_violation.clone());
    both.fully_parsed = one.fully_parsed && other.fully_parsed;
    if let Some(path) = &other.search_path {
        path.add_to(&mut both.search_path);
    }
    both
}

/// A Parse of `name` whose statement fails at once (the server then skips to Sync).
fn failing_parse(name: &[u8], failing_call: &str) -> Frame {
    let mut body = Vec::with_capacity(name.len() + failing_call.len() + 4);
    body.extend_from_slice(name);
    body.push(0);
    body.extend_from_slice(failing_call.as_bytes());
    body.extend_from_slice(&[0, 0, 0]);
    Frame::new(tag::PARSE, &body)
}

/// The text of a statement: borrowed when it is UTF-8 (the common case); otherwise bytes
/// above ASCII become U+FFFD, which keeps every quote, keyword and separator in place for
/// the single-byte encodings (multi-byte unsafe ones are refused above).
fn decode(sql: &[u8]) -> Cow<'_, str> {
    if sql.is_ascii() {
        // SAFETY: ASCII is valid UTF-8. The word-at-a-time ASCII test costs a third of the
        // general validator on a typical statement, which is nearly always ASCII.
        return Cow::Borrowed(unsafe { std::str::from_utf8_unchecked(sql) });
    }
    // Valid UTF-8 is the rule: check it with the fast validator, decode lossily only if not.
    match std::str::from_utf8(sql) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(sql),
    }
}

fn function_call(oid: u32) -> Classification {
    Classification {
        // set_config among them: once it runs, where names resolve is not known.
        search_path: Some(SearchPath::Unknown),
        ..single_facet(
            Kind::Write,
            format!("fast-path call of function OID {oid}: any function, no SQL to inspect"),
        )
    }
}

/// A classification pgstepup makes without parsing: one kind, one reason.
fn single_facet(kind: Kind, reason: String) -> Classification {
    Classification {
        kinds: [kind].into_iter().collect(),
        facets: vec![Facet { kind, table: None }],
        reasons: vec![reason],
        ..Default::default()
    }
}

/// Why a statement the policy denies was not run.
fn refusal_error(decision: &Decision) -> PgError {
    PgError::error(
        sqlstate::INSUFFICIENT_PRIVILEGE,
        format!(
            "pgstepup: statement denied by policy rule \"{}\"",
            decision.rule
        ),
    )
    .with_detail(decision.reason())
    .with_hint("Ask a DBA to run it, or to change the policy.")
}

/// The first `chars` characters.
fn clip(sql: &str, chars: usize) -> &str {
    match sql.char_indices().nth(chars) {
        Some((i, _)) => &sql[..i],
        None => sql,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgstepup_policy::PolicySource;

    #[test]
    fn the_fields_every_statement_touches_come_first() {
        // Up to the statement counters, reached through `context.metrics`, its first field.
        let hot_end = std::mem::offset_of!(Gate, context) + std::mem::size_of::<Arc<Metrics>>();
        assert!(hot_end <= 4 * 64, "{hot_end}");
        assert!(std::mem::offset_of!(Gate, span) > hot_end);
    }

    #[test]
    fn statement_text_is_borrowed_when_utf8_and_decoded_lossily_otherwise() {
        for text in ["SELECT 1", "SELECT 'naïve ☃'", ""] {
            assert!(matches!(decode(text.as_bytes()), Cow::Borrowed(t) if t == text));
        }
        // LATIN1 'é' is not UTF-8: it becomes U+FFFD, the quotes stay where they were.
        assert_eq!(decode(b"SELECT 'caf\xe9'"), "SELECT 'caf\u{fffd}'");
    }

    /// A gate deciding for user `app` under `policy` (a policy file's text); with the
    /// directory holding its files, to remove.
    fn gate_with(policy: &str) -> (Gate, std::path::PathBuf) {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "pgstepup-gate-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("policy.toml");
        std::fs::write(&path, policy).unwrap();
        let audit = Arc::new(AuditLog::open(&dir.join("audit.jsonl"), "test".into()).unwrap());
        let metrics = Arc::new(Metrics::new("test"));
        let source = PolicySource::File {
            path,
            embedded: false,
        };
        let store =
            Arc::new(PolicyStore::load(source, 64, false, audit.clone(), metrics.clone()).unwrap());
        let context = SessionContext {
            connection_id: 1,
            client_addr: "127.0.0.1:1".into(),
            application_name: String::new(),
            audit,
            metrics,
        };
        let gate = Gate::new(
            store,
            "app".into(),
            Vec::new(),
            "pgstepup-test".into(),
            context,
        );
        (gate, dir)
    }

    #[test]
    fn after_a_fast_path_call_unqualified_names_may_be_in_any_schema() {
        let (mut gate, dir) =
            gate_with("[[rule]]\nname = \"vault\"\ntables = [\"vault.*\"]\nkinds = [\"read\"]\naction = \"deny\"\n");
        let read = Frame::new(tag::QUERY, b"SELECT * FROM ledger\0");
        let check_read =
            |gate: &mut Gate| gate.check(Statement::from_frame(read.view()).unwrap().unwrap());
        assert!(matches!(check_read(&mut gate), Verdict::Forward));
        // A call of function 2078 (set_config), no arguments, text result.
        let call = Frame::new(tag::FUNCTION_CALL, &[0, 0, 8, 30, 0, 0, 0, 0, 0, 0]);
        let statement = Statement::from_frame(call.view()).unwrap().unwrap();
        assert!(matches!(gate.check(statement), Verdict::StepUp(_)));
        assert!(matches!(check_read(&mut gate), Verdict::Substitute(_)));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// An EXECUTE is decided as the statement the session saw prepared, and only while what
    /// the server holds under that name is known.
    #[test]
    fn an_execute_is_decided_as_what_was_prepared_while_that_is_known() {
        let check = |gate: &mut Gate, sql: &str| {
            let query = Frame::new(tag::QUERY, format!("{sql}\0").as_bytes());
            match gate.check(Statement::from_frame(query.view()).unwrap().unwrap()) {
                Verdict::Forward => "forward",
                Verdict::Substitute(_) => "refuse",
                Verdict::StepUp(_) => "step-up",
            }
        };
        let (mut gate, dir) = gate_with("mode = \"enforce\"\n");
        let prepare_read = "PREPARE r(oid) AS SELECT relname FROM pg_class WHERE oid = $1";
        assert_eq!(check(&mut gate, prepare_read), "forward");
        assert_eq!(check(&mut gate, "EXECUTE r('1259')"), "forward");
        assert_eq!(check(&mut gate, "EXECUTE r('2619')"), "forward");
        // Prepared again (the server refuses that, so its text is not the new one), prepared as
        // a write, or among other statements: forgotten.
        assert_eq!(check(&mut gate, "PREPARE r AS SELECT 2"), "forward");
        assert_eq!(check(&mut gate, "PREPARE w AS DELETE FROM t"), "step-up");
        assert_eq!(
            check(&mut gate, "SELECT 1; PREPARE m AS SELECT 1"),
            "forward"
        );
        assert_eq!(check(&mut gate, "PREPARE s AS SELECT 3"), "forward");
        assert_eq!(check(&mut gate, "EXECUTE s"), "forward");
        for forgotten in [
            "EXECUTE r('1259')",
            "EXECUTE w",
            "EXECUTE m",
            "EXECUTE unknown",
        ] {
            assert_eq!(check(&mut gate, forgotten), "step-up", "{forgotten}");
        }
        std::fs::remove_dir_all(&dir).unwrap();

        // Arguments that call something, an EXECUTE among other statements, and once code
        // ran that could prepare unseen (a DO block), no EXECUTE is taken for a read.
        let (mut gate, dir) = gate_with("mode = \"enforce\"\n");
        assert_eq!(check(&mut gate, "PREPARE s AS SELECT 3"), "forward");
        assert_eq!(check(&mut gate, "EXECUTE s(nextval('q'))"), "step-up");
        assert_eq!(check(&mut gate, "SELECT 1; EXECUTE s"), "step-up");
        std::fs::remove_dir_all(&dir).unwrap();
        let (mut gate, dir) = gate_with("mode = \"enforce\"\n");
        assert_eq!(check(&mut gate, "PREPARE s AS SELECT 3"), "forward");
        assert_eq!(check(&mut gate, "DO $$ BEGIN END $$"), "step-up");
        assert_eq!(check(&mut gate, "EXECUTE s"), "step-up");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A one-statement approval covers that statement's own repeats in its batch (its Binds,
    /// a driver's re-Parse of it), never another statement of the batch under the same rule:
    /// the approver saw only the first.
    #[test]
    fn a_batch_approval_covers_only_the_statement_approved() {
        let (mut gate, dir) = gate_with(
            "[[rule]]\nname = \"writes\"\nkinds = [\"write\"]\naction = \"step_up\"\nlifetime = \"0s\"\n",
        );
        let parse = |sql: &str| {
            let mut body = b"\0".to_vec();
            body.extend_from_slice(sql.as_bytes());
            body.extend_from_slice(&[0, 0, 0]);
            Frame::new(tag::PARSE, &body)
        };
        let approved = parse("INSERT INTO t0b VALUES ($1)");
        let Verdict::StepUp(need) =
            gate.check(Statement::from_frame(approved.view()).unwrap().unwrap())
        else {
            panic!("the insert needs step-up");
        };
        gate.released(&need, None);
        gate.note_forwarded(tag::PARSE);
        let other = parse("DELETE FROM t0");
        assert!(matches!(
            gate.check(Statement::from_frame(other.view()).unwrap().unwrap()),
            Verdict::StepUp(_)
        ));
        assert!(matches!(
            gate.check(Statement::from_frame(approved.view()).unwrap().unwrap()),
            Verdict::Forward
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Records the name of each event's parent span (explicit, else the current one).
    struct Parents(Arc<std::sync::Mutex<Vec<Option<String>>>>);

    impl<S> tracing_subscriber::Layer<S> for Parents
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        fn on_event(
            &self,
            event: &tracing::Event<'_>,
            ctx: tracing_subscriber::layer::Context<'_, S>,
        ) {
            let parent = ctx.event_span(event).map(|span| span.name().to_owned());
            self.0.lock().unwrap().push(parent);
        }
    }

    /// The relay loop's task is not instrumented (entering a span on every poll is costly),
    /// so the gate's events must name the connection's span themselves.
    #[test]
    fn the_gates_events_belong_to_the_connection_outside_its_span() {
        use tracing_subscriber::layer::SubscriberExt;
        let parents = Arc::new(std::sync::Mutex::new(Vec::new()));
        let subscriber = tracing_subscriber::registry().with(Parents(parents.clone()));
        tracing::subscriber::with_default(subscriber, || {
            let conn = tracing::info_span!("conn", id = 1);
            // Other tests run the gate on other threads with no subscriber: one registering a
            // callsite while this subscriber starts can leave it cached as uninteresting until
            // the cache is rebuilt, so a check that logged nothing is tried again (a new gate:
            // a repeated text would be a memo hit, which logs nothing).
            for _ in 0..20 {
                tracing::callsite::rebuild_interest_cache();
                let (mut gate, dir) = conn.in_scope(|| gate_with("mode = \"enforce\"\n"));
                let query = Frame::new(tag::QUERY, b"SELECT 1\0");
                let statement = Statement::from_frame(query.view()).unwrap().unwrap();
                assert!(matches!(gate.check(statement), Verdict::Forward));
                std::fs::remove_dir_all(&dir).unwrap();
                if !parents.lock().unwrap().is_empty() {
                    break;
                }
            }
        });
        let parents = parents.lock().unwrap();
        assert!(!parents.is_empty(), "the check logged its decision");
        assert!(
            parents.iter().all(|p| p.as_deref() == Some("conn")),
            "events outside the connection's span: {parents:?}"
        );
    }
}
