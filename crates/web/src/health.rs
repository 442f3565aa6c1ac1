//! Liveness, readiness and the metrics endpoint.
//!
//! `/healthz` answers while the process serves HTTP. `/readyz` answers 200 only when the
//! upstream is reachable, the state store answers (when it is Redis), the policy is loaded and
//! the instance is not draining; otherwise 503 with the reasons. The checks run in the
//! background (see [`Health::set_problems`]), so probes cost nothing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::Web;

/// What readiness depends on.
#[derive(Default)]
pub struct Health {
    problems: Mutex<Vec<String>>,
    draining: AtomicBool,
}

impl Health {
    /// Replaces the list of reasons the instance is not ready (empty: ready).
    pub fn set_problems(&self, problems: Vec<String>) {
        *self.problems.lock().expect("health lock") = problems;
    }

    /// From now on the instance reports not ready (SIGTERM received).
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Why the instance is not ready; empty when it is.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = self.problems.lock().expect("health lock").clone();
        if self.is_draining() {
            problems.push("draining: shutting down".into());
        }
        problems
    }
}

pub(crate) fn routes(web: Arc<Web>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(web)
}

async fn readyz(State(web): State<Arc<Web>>) -> Response {
    let problems = web.health.problems();
    let status = if problems.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({"ready": problems.is_empty(), "problems": problems})),
    )
        .into_response()
}

async fn metrics(State(web): State<Arc<Web>>) -> Response {
    let metrics = &web.metrics;
    metrics
        .ready
        .set(i64::from(web.health.problems().is_empty()));
    match web.stepup.active_elevations().await {
        Ok(count) => metrics.active_elevations.set(count as i64),
        Err(error) => tracing::debug!(%error, "cannot count elevations for /metrics"),
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics.render(),
    )
        .into_response()
}
