//! The policy in force and its classifier, swapped atomically on reload (SIGHUP or a change of
//! the policy file). Sessions keep an `Arc` of the active policy and only look at a generation
//! counter per statement, so the hot path takes no lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use pgstepup_audit::{AuditLog, Record};
use pgstepup_classify::Classifier;
use pgstepup_metrics::Metrics;
use pgstepup_policy::{Mode, Policy, PolicyError, PolicySource};

/// A loaded policy with the classifier built for it (its read-only functions).
pub struct ActivePolicy {
    pub policy: Policy,
    pub classifier: Classifier,
    /// Decisions are made and reported but not enforced.
    pub observe: bool,
}

/// The shared, reloadable policy.
pub struct PolicyStore {
    source: PolicySource,
    cache_entries: usize,
    force_observe: bool,
    active: RwLock<Arc<ActivePolicy>>,
    generation: AtomicU64,
    audit: Arc<AuditLog>,
    metrics: Arc<Metrics>,
}

impl PolicyStore {
    /// Loads the policy once; an error here stops the start.
    pub fn load(
        source: PolicySource,
        cache_entries: usize,
        force_observe: bool,
        audit: Arc<AuditLog>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, PolicyError> {
        let active = Arc::new(build(source.load()?, cache_entries, force_observe));
        Ok(PolicyStore {
            source,
            cache_entries,
            force_observe,
            active: RwLock::new(active),
            generation: AtomicU64::new(0),
            audit,
            metrics,
        })
    }

    /// The policy in force.
    pub fn current(&self) -> Arc<ActivePolicy> {
        self.active.read().expect("policy lock").clone()
    }

    /// Changes whenever a new policy takes effect.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Re-reads the policy; a valid one applies to the next statement, an invalid one is
    /// logged and the old one stays.
    pub fn reload(&self, trigger: &str) -> Result<(), PolicyError> {
        match self.source.load() {
            Ok(policy) => {
                let rules = policy.rules.iter().filter(|r| r.line.is_some()).count();
                let mode = policy.mode;
                *self.active.write().expect("policy lock") =
                    Arc::new(build(policy, self.cache_entries, self.force_observe));
                self.generation.fetch_add(1, Ordering::AcqRel);
                self.metrics.policy_reload(true);
                tracing::info!(trigger, rules, ?mode, source = ?self.source, "policy reloaded");
                self.audit_reload(
                    "policy_reload",
                    format!("{trigger}: {rules} rule(s), mode {mode:?}"),
                );
                Ok(())
            }
            Err(error) => {
                tracing::error!(trigger, %error, "policy reload rejected; the previous policy stays in force");
                self.metrics.policy_reload(false);
                self.audit_reload("policy_reload_rejected", format!("{trigger}: {error}"));
                Err(error)
            }
        }
    }

    fn audit_reload(&self, event: &'static str, reason: String) {
        let record = Record {
            event,
            reason: Some(reason),
            ..Default::default()
        };
        if let Err(error) = self.audit.record(&record) {
            tracing::error!(%error, "cannot write the audit trail");
        }
    }

    /// Polls the policy file's modification time and reloads when it changes.
    pub async fn watch(self: Arc<Self>, every: Duration) {
        let Some(path) = self.source.path().map(|p| p.to_owned()) else {
            return;
        };
        let modified = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        let mut last: Option<SystemTime> = modified(&path);
        loop {
            tokio::time::sleep(every).await;
            let now = modified(&path);
            if now != last {
                last = now;
                let _ = self.reload("file change");
            }
        }
    }
}

fn build(policy: Policy, cache_entries: usize, force_observe: bool) -> ActivePolicy {
    let classifier = Classifier::new(cache_entries, policy.read_only_functions.clone());
    let observe = force_observe || policy.mode == Mode::Observe;
    ActivePolicy {
        policy,
        classifier,
        observe,
    }
}
