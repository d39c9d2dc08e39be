//! The admin server: `/metrics`, `/healthz` and `/readyz`.
//!
//! Liveness stays trivial: the process answers. Readiness means usable: an
//! open AMQP connection (and confirm channel, for the publish role) and, for
//! the consume role, a subscribed consumer. It turns false again while the
//! connection is lost. The metrics themselves are defined in `metrics`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::api::ApiError;
use crate::broker::SessionWatch;
use crate::metrics::Metrics;

/// What /readyz checks.
#[derive(Clone)]
pub struct Readiness {
    sessions: SessionWatch,
    consuming: Option<Arc<AtomicBool>>,
    stopping: CancellationToken,
}

impl Readiness {
    /// Readiness on the current session, the consumer flag when given, and
    /// not stopping.
    pub fn new(
        sessions: SessionWatch,
        consuming: Option<Arc<AtomicBool>>,
        stopping: CancellationToken,
    ) -> Self {
        Self {
            sessions,
            consuming,
            stopping,
        }
    }

    /// `Ok` when ready, else why not.
    pub fn check(&self) -> Result<(), &'static str> {
        // A stopping bridge takes no new work; say so before the checks below.
        if self.stopping.is_cancelled() {
            return Err("shutting down");
        }
        if !self.sessions.borrow().as_ref().is_some_and(|s| s.usable()) {
            return Err("the broker is not connected");
        }
        if let Some(consuming) = &self.consuming
            && !consuming.load(Ordering::SeqCst)
        {
            return Err("the consumer is not subscribed");
        }
        Ok(())
    }
}

#[derive(Clone)]
struct AdminState {
    metrics: Metrics,
    readiness: Readiness,
}

/// The admin routes.
pub fn router(metrics: Metrics, readiness: Readiness) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route(
            "/healthz",
            get(|| async { axum::Json(serde_json::json!({ "ok": true })) }),
        )
        .route("/readyz", get(readyz))
        .fallback(|| async { ApiError::not_found() })
        .with_state(AdminState { metrics, readiness })
}

async fn metrics_text(State(state): State<AdminState>) -> Response {
    (
        [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
        state.metrics.encode(),
    )
        .into_response()
}

async fn readyz(State(state): State<AdminState>) -> Response {
    match state.readiness.check() {
        Ok(()) => axum::Json(serde_json::json!({ "ready": true })).into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({ "ready": false, "reason": reason })),
        )
            .into_response(),
    }
}
