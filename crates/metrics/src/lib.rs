//! pgstepup's Prometheus metrics. One [`Metrics`] per instance owns its registry; every
//! labelled series the hot path touches is resolved when the instance starts, so counting a
//! statement is a load and a store to the counting thread's own row ([`striped`]): no lock,
//! no allocation, no label lookup, no cache line shared with another core.
//!
//! Names follow Prometheus conventions (`pgstepup_` prefix, `_total` counters, `_seconds`
//! durations). Labels are small closed sets: never user names, SQL or tokens.

mod striped;

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

pub use prometheus::IntGauge;

use striped::StripedCounters;

/// How a statement was decided (label `decision`).
pub const DECISIONS: [&str; 3] = ["allow", "step_up", "deny"];

/// Statement kinds (label `kind`), in `pgstepup_classify::Kind::ALL` order.
pub const KINDS: [&str; 9] = [
    "read",
    "write",
    "ddl",
    "dcl",
    "session_privilege",
    "admin",
    "transaction",
    "utility",
    "unknown",
];

/// One `pgstepup_statements_total` series per decision and kind.
const STATEMENT_SERIES: usize = DECISIONS.len() * KINDS.len();

/// How a step-up challenge ended (label `outcome`).
#[derive(Debug, Clone, Copy)]
pub enum ChallengeOutcome {
    Approved,
    Denied,
    /// The hold timed out.
    Expired,
    Cancelled,
    /// Step-up could not run (state store unavailable).
    Failed,
}

const OUTCOMES: [&str; 5] = ["approved", "denied", "expired", "cancelled", "failed"];

/// Why a client connection was refused (label `reason`).
#[derive(Debug, Clone, Copy)]
pub enum Rejection {
    AuthFailed,
    TlsRequired,
    TooMany,
    StartupTimeout,
    Protocol,
    Unsupported,
    UpstreamUnavailable,
    ShuttingDown,
}

const REJECTIONS: [&str; 8] = [
    "auth_failed",
    "tls_required",
    "too_many",
    "startup_timeout",
    "protocol",
    "unsupported",
    "upstream_unavailable",
    "shutting_down",
];

/// Why pgstepup closed an established client session (label `reason`).
#[derive(Debug, Clone, Copy)]
pub enum SessionClosed {
    /// `limits.client_idle_timeout_secs` (57P05).
    IdleTimeout,
    /// A message over `limits.max_message_bytes` (54000).
    MessageTooLarge,
    /// Input that is not the protocol (08P01).
    ProtocolError,
}

const SESSIONS_CLOSED: [&str; 3] = ["idle_timeout", "message_too_large", "protocol_error"];

/// Why a WebAuthn attempt failed (label `reason`).
pub const WEBAUTHN_FAILURES: [&str; 5] = [
    "malformed",
    "no_ceremony",
    "verification",
    "unknown_key",
    "enrollment",
];

/// State store operations (label `operation`).
pub const STORE_OPERATIONS: [&str; 10] = [
    "set", "set_new", "get", "take", "delete", "push", "list", "count", "ping", "publish",
];

/// Every metric of one instance.
pub struct Metrics {
    registry: Registry,
    pub client_connections: IntGauge,
    pub client_connections_total: IntCounter,
    rejected: Vec<IntCounter>,
    sessions_closed: Vec<IntCounter>,
    pub upstream_connections: IntGauge,
    pub upstream_idle_connections: IntGauge,
    pub upstream_reused_total: IntCounter,
    pub upstream_connect_errors: IntCounter,
    /// By decision, then kind.
    statements: StripedCounters<STATEMENT_SERIES>,
    /// From a statement's last byte read to its first byte written upstream.
    pub statement_overhead: Histogram,
    /// Shared-cache hits recalled by the text (only literals changed: no scan).
    pub cache_hits_by_text: IntCounter,
    /// Shared-cache hits found by the shape, after a scan.
    pub cache_hits_by_shape: IntCounter,
    pub cache_misses: IntCounter,
    challenges: Vec<IntCounter>,
    pub held_statements: IntGauge,
    /// From a challenge's issue to its approval.
    pub approval_seconds: Histogram,
    pub active_elevations: IntGauge,
    webauthn_failures: IntCounterVec,
    store_errors: IntCounterVec,
    pub store_seconds: Histogram,
    policy_reloads: IntCounterVec,
    certificate_reloads: IntCounterVec,
    pub ready: IntGauge,
}

impl Metrics {
    pub fn new(version: &str) -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let v = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(v.clone()))
                .expect("unique metric");
            v
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
                .expect("valid metric");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric");
            h
        };

        let build_info = IntGaugeVec::new(
            Opts::new("pgstepup_build_info", "Always 1; the version is a label."),
            &["version"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(build_info.clone()))
            .expect("unique metric");
        build_info.with_label_values(&[version]).set(1);
        let rejected_vec = counter_vec(
            "pgstepup_client_connections_rejected_total",
            "Client connections refused, by reason.",
            &["reason"],
        );
        let sessions_closed_vec = counter_vec(
            "pgstepup_client_sessions_closed_total",
            "Established client sessions pgstepup closed with an error, by reason.",
            &["reason"],
        );
        let statements_vec = counter_vec(
            "pgstepup_statements_total",
            "Statements decided, by decision and kind.",
            &["decision", "kind"],
        );
        let cache_hits_vec = counter_vec(
            "pgstepup_classification_cache_hits_total",
            "Statements classified from the shared cache: by their text, recalled from one that differed only in integer and string literals (lookup=text, no scan), or by their shape after a scan (lookup=shape).",
            &["lookup"],
        );
        let challenges_vec = counter_vec(
            "pgstepup_stepup_challenges_total",
            "Step-up challenges by how they ended.",
            &["outcome"],
        );
        let webauthn_failures = counter_vec(
            "pgstepup_webauthn_failures_total",
            "Failed WebAuthn attempts, by reason.",
            &["reason"],
        );
        let store_errors = counter_vec(
            "pgstepup_state_store_errors_total",
            "State store (Redis) operations that failed, by operation.",
            &["operation"],
        );
        let policy_reloads = counter_vec(
            "pgstepup_policy_reloads_total",
            "Policy reloads, by result.",
            &["result"],
        );
        let certificate_reloads = counter_vec(
            "pgstepup_certificate_reloads_total",
            "TLS certificates read again on reload (SIGHUP), by result; on failure the previous one stays in use.",
            &["result"],
        );
        // Every series exists from the start, at 0, so rate() and increase() see the first event.
        for reason in WEBAUTHN_FAILURES {
            webauthn_failures.with_label_values(&[reason]);
        }
        for operation in STORE_OPERATIONS {
            store_errors.with_label_values(&[operation]);
        }
        for result in ["success", "failure"] {
            policy_reloads.with_label_values(&[result]);
            certificate_reloads.with_label_values(&[result]);
        }
        Metrics {
            client_connections: gauge(
                "pgstepup_client_connections",
                "Client connections open now.",
            ),
            client_connections_total: counter(
                "pgstepup_client_connections_total",
                "Client connections accepted.",
            ),
            rejected: REJECTIONS
                .iter()
                .map(|r| rejected_vec.with_label_values(&[r]))
                .collect(),
            sessions_closed: SESSIONS_CLOSED
                .iter()
                .map(|r| sessions_closed_vec.with_label_values(&[r]))
                .collect(),
            upstream_connections: gauge(
                "pgstepup_upstream_connections",
                "Upstream (PostgreSQL) connections open now, serving a client or kept for reuse.",
            ),
            upstream_idle_connections: gauge(
                "pgstepup_upstream_idle_connections",
                "Upstream connections kept open for reuse by the next client (upstream.pool_size).",
            ),
            upstream_reused_total: counter(
                "pgstepup_upstream_reused_total",
                "Client sessions served by an upstream connection a previous client left, instead of a new login.",
            ),
            upstream_connect_errors: counter(
                "pgstepup_upstream_connect_errors_total",
                "Failed attempts to connect or log in to the upstream.",
            ),
            statements: StripedCounters::new(std::array::from_fn(|i| {
                statements_vec.with_label_values(&[DECISIONS[i / KINDS.len()], KINDS[i % KINDS.len()]])
            })),
            statement_overhead: histogram(
                "pgstepup_statement_overhead_seconds",
                "Time pgstepup adds per statement: from its last byte read to its first byte written upstream (holds excluded; sampled, one client message in 8 per session).",
                vec![
                    1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 1e-2, 0.1,
                ],
            ),
            cache_hits_by_text: cache_hits_vec.with_label_values(&["text"]),
            cache_hits_by_shape: cache_hits_vec.with_label_values(&["shape"]),
            cache_misses: counter(
                "pgstepup_classification_cache_misses_total",
                "Statements that had to be parsed.",
            ),
            challenges: OUTCOMES
                .iter()
                .map(|o| challenges_vec.with_label_values(&[o]))
                .collect(),
            held_statements: gauge(
                "pgstepup_held_statements",
                "Statements held for step-up approval now.",
            ),
            approval_seconds: histogram(
                "pgstepup_stepup_approval_seconds",
                "Time from a challenge to its approval.",
                vec![2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0],
            ),
            active_elevations: gauge(
                "pgstepup_active_elevations",
                "Elevations in force now (shared state, counted at scrape).",
            ),
            webauthn_failures,
            store_errors,
            store_seconds: histogram(
                "pgstepup_state_store_operation_seconds",
                "State store (Redis) operation latency.",
                vec![1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 0.1, 1.0],
            ),
            policy_reloads,
            certificate_reloads,
            ready: gauge(
                "pgstepup_ready",
                "1 when ready for traffic (what /readyz answers), 0 otherwise.",
            ),
            registry,
        }
    }

    /// Counts a decided statement; `kind` indexes [`KINDS`].
    pub fn statement(&self, decision: usize, kind: usize) {
        self.statements.inc(decision * KINDS.len() + kind);
    }

    pub fn rejected(&self, reason: Rejection) {
        self.rejected[reason as usize].inc();
    }

    pub fn session_closed(&self, reason: SessionClosed) {
        self.sessions_closed[reason as usize].inc();
    }

    pub fn challenge(&self, outcome: ChallengeOutcome) {
        self.challenges[outcome as usize].inc();
    }

    /// `reason` is one of [`WEBAUTHN_FAILURES`].
    pub fn webauthn_failure(&self, reason: &'static str) {
        debug_assert!(WEBAUTHN_FAILURES.contains(&reason), "{reason}");
        self.webauthn_failures.with_label_values(&[reason]).inc();
    }

    /// `operation` is one of [`STORE_OPERATIONS`].
    pub fn store_error(&self, operation: &'static str) {
        debug_assert!(STORE_OPERATIONS.contains(&operation), "{operation}");
        self.store_errors.with_label_values(&[operation]).inc();
    }

    /// A TLS certificate read again on reload (client-facing or web).
    pub fn certificate_reload(&self, ok: bool) {
        self.certificate_reloads
            .with_label_values(&[if ok { "success" } else { "failure" }])
            .inc();
    }

    pub fn policy_reload(&self, ok: bool) {
        self.policy_reloads
            .with_label_values(&[if ok { "success" } else { "failure" }])
            .inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        self.statements.publish();
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding cannot fail");
        String::from_utf8(out).expect("text exposition is UTF-8")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports_exactly_the_names_deploy_dashboards_and_alerts_use() {
        let listed = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/metrics.txt"),
        )
        .unwrap();
        let mut listed: Vec<&str> = listed.lines().filter(|l| !l.is_empty()).collect();
        listed.sort();
        let text = Metrics::new("0").render();
        let mut exported: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        exported.sort();
        assert_eq!(exported, listed);
    }

    #[test]
    fn every_series_is_named_by_convention_and_renders() {
        let m = Metrics::new("0.0.0-test");
        m.statement(0, 0);
        m.rejected(Rejection::TooMany);
        m.challenge(ChallengeOutcome::Expired);
        m.webauthn_failure("verification");
        m.store_error("get");
        m.policy_reload(true);
        m.statement_overhead.observe(3e-6);
        let text = m.render();
        assert!(text.contains("pgstepup_statements_total{decision=\"allow\",kind=\"read\"} 1"));
        assert!(text.contains("pgstepup_client_connections_rejected_total{reason=\"too_many\"} 1"));
        assert!(text.contains("pgstepup_stepup_challenges_total{outcome=\"expired\"} 1"));
        assert!(text.contains("pgstepup_build_info{version=\"0.0.0-test\"} 1"));
        for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
            let mut parts = line.split_whitespace().skip(2);
            let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
            assert!(name.starts_with("pgstepup_"), "{name}");
            if kind == "counter" {
                assert!(name.ends_with("_total"), "{name}");
            }
        }
    }
}
