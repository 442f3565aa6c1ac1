//! pgstepup's own cancel keys. Each client gets a fresh random BackendKeyData; a CancelRequest
//! carrying it is translated to the upstream's key, which clients never see, or, while the
//! session holds a statement for approval, cancels the hold (nothing runs upstream then).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use rand::Rng;
use subtle::ConstantTimeEq;

use pgstepup_protocol::startup::CancelRequest;

/// Live sessions' keys: ours (pid → secret) and the upstream's behind it.
#[derive(Default)]
pub(crate) struct CancelRegistry {
    sessions: Mutex<HashMap<i32, Entry>>,
}

struct Entry {
    secret: Vec<u8>,
    upstream: CancelRequest,
    hold: Arc<HoldSignal>,
}

/// Lets a cancel request reach a session while it holds a statement.
#[derive(Default)]
pub(crate) struct HoldSignal {
    holding: AtomicBool,
    requested: AtomicBool,
    cancel: Notify,
}

impl HoldSignal {
    /// Starts or ends a hold; a cancel left over from an earlier hold is forgotten.
    pub(crate) fn set_holding(&self, holding: bool) {
        self.requested.store(false, Ordering::SeqCst);
        self.holding.store(holding, Ordering::SeqCst);
    }

    /// Completes when a cancel request arrives for the held statement.
    pub(crate) async fn cancelled(&self) {
        loop {
            self.cancel.notified().await;
            if self.requested.swap(false, Ordering::SeqCst) {
                return;
            }
        }
    }
}

/// What a valid cancel request acts on.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum CancelTarget {
    /// The session is running a statement upstream: forward the upstream's key.
    Upstream(CancelRequest),
    /// The session is holding a statement: the hold was cancelled.
    Held,
}

/// Removes the session's key when the session ends.
pub(crate) struct Registration {
    registry: Arc<CancelRegistry>,
    pid: i32,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry
            .sessions
            .lock()
            .expect("cancel registry lock")
            .remove(&self.pid);
    }
}

impl CancelRegistry {
    /// Issues a key for a session whose upstream key is `upstream`. `secret_len` is 4 for
    /// protocol 3.0 and 32 for 3.2.
    pub(crate) fn register(
        self: &Arc<Self>,
        upstream: CancelRequest,
        secret_len: usize,
    ) -> (Registration, i32, Vec<u8>, Arc<HoldSignal>) {
        let mut rng = rand::rng();
        let mut secret = vec![0u8; secret_len];
        rng.fill(&mut secret[..]);
        let mut sessions = self.sessions.lock().expect("cancel registry lock");
        let pid = loop {
            let pid = rng.random_range(1..i32::MAX);
            if !sessions.contains_key(&pid) {
                break pid;
            }
        };
        let hold = Arc::new(HoldSignal::default());
        sessions.insert(
            pid,
            Entry {
                secret: secret.clone(),
                upstream,
                hold: hold.clone(),
            },
        );
        let registration = Registration {
            registry: self.clone(),
            pid,
        };
        (registration, pid, secret, hold)
    }

    /// What a client's cancel request acts on, if the key is one we issued. A session that
    /// holds a statement is told at once.
    pub(crate) fn resolve(&self, request: &CancelRequest) -> Option<CancelTarget> {
        let sessions = self.sessions.lock().expect("cancel registry lock");
        let entry = sessions.get(&request.pid)?;
        let matches = entry.secret.len() == request.secret.len()
            && bool::from(entry.secret.ct_eq(&request.secret));
        if !matches {
            return None;
        }
        if entry.hold.holding.load(Ordering::SeqCst) {
            entry.hold.requested.store(true, Ordering::SeqCst);
            entry.hold.cancel.notify_one();
            return Some(CancelTarget::Held);
        }
        Some(CancelTarget::Upstream(entry.upstream.clone()))
    }

    /// Whether `pid` is one of this instance's live keys.
    pub(crate) fn is_local(&self, pid: i32) -> bool {
        self.sessions
            .lock()
            .expect("cancel registry lock")
            .contains_key(&pid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn resolves_only_exact_keys_while_registered() {
        let registry = Arc::new(CancelRegistry::default());
        let upstream = CancelRequest {
            pid: 77,
            secret: Bytes::from_static(&[1, 2, 3, 4]),
        };
        let (registration, pid, secret, hold) = registry.register(upstream.clone(), 32);
        assert_eq!(secret.len(), 32);
        let ok = CancelRequest {
            pid,
            secret: Bytes::from(secret.clone()),
        };
        assert_eq!(
            registry.resolve(&ok),
            Some(CancelTarget::Upstream(upstream.clone()))
        );
        // While a statement is held, the cancel goes to the session, not upstream.
        hold.set_holding(true);
        assert_eq!(registry.resolve(&ok), Some(CancelTarget::Held));
        hold.set_holding(false);
        let mut wrong = secret.clone();
        wrong[0] ^= 1;
        assert_eq!(
            registry.resolve(&CancelRequest {
                pid,
                secret: Bytes::from(wrong)
            }),
            None
        );
        assert_eq!(
            registry.resolve(&CancelRequest {
                pid,
                secret: Bytes::from(secret[..4].to_vec())
            }),
            None
        );
        // The upstream's own key is useless against the proxy.
        assert_eq!(
            registry.resolve(&CancelRequest {
                pid: 77,
                secret: Bytes::from_static(&[1, 2, 3, 4])
            }),
            None
        );
        drop(registration);
        assert_eq!(registry.resolve(&ok), None);
    }
}
