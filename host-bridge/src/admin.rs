//! The admin server: `/metrics`, `/healthz` and `/readyz`.
//!
//! Liveness stays trivial: the process answers. Readiness means usable now:
//! an open AMQP connection; for the publish role, a broker that is neither
//! blocking publishers (alarm) nor overdue with confirms; for the consume
//! role, a subscribed consumer and a worker that takes work; for the ingress
//! role, a producer component that accepts connections. The metrics
//! themselves are defined in `metrics`.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::broker::SessionWatch;
use crate::consume::ConsumeStatus;
use crate::ingress::Ingress;
use crate::metrics::Metrics;
use crate::publish::PublishApi;
use crate::server::ApiError;

/// What /readyz checks.
#[derive(Clone)]
pub struct Readiness {
    /// One per AMQP connection the bridge keeps: all must be usable.
    sessions: Vec<SessionWatch>,
    publishing: Option<Arc<PublishApi>>,
    consuming: Option<ConsumeStatus>,
    fronting: Option<Arc<Ingress>>,
    stopping: CancellationToken,
    dead: crate::DeadTasks,
}

impl Readiness {
    /// Readiness on the current session, each enabled role's own check, and
    /// not stopping.
    pub fn new(
        sessions: Vec<SessionWatch>,
        publishing: Option<Arc<PublishApi>>,
        consuming: Option<ConsumeStatus>,
        stopping: CancellationToken,
    ) -> Self {
        Self {
            sessions,
            publishing,
            consuming,
            fronting: None,
            stopping,
            dead: crate::DeadTasks::default(),
        }
    }

    /// Also requires the ingress role's producer to accept connections.
    pub fn with_ingress(self, fronting: Option<Arc<Ingress>>) -> Self {
        Self { fronting, ..self }
    }

    /// Also requires that none of these tasks has ended early.
    pub fn with_dead_tasks(self, dead: crate::DeadTasks) -> Self {
        Self { dead, ..self }
    }

    /// The task that ended early, if one did.
    pub fn ended(&self) -> Option<&'static str> {
        self.dead.first()
    }

    /// The broker (`host:port`) the first connection (the publish one,
    /// when there are two) is on now, if any.
    pub fn broker(&self) -> Option<String> {
        let first = self.sessions.first()?;
        first.borrow().as_ref().map(|s| s.endpoint.clone())
    }

    /// `Ok` when ready, else why not.
    pub async fn check(&self) -> Result<(), &'static str> {
        // A stopping bridge takes no new work; say so before the checks below.
        if self.stopping.is_cancelled() {
            return Err("shutting down");
        }
        if self.dead.first().is_some() {
            return Err("a task of the bridge ended early; see the logs");
        }
        let usable = |w: &SessionWatch| w.borrow().as_ref().is_some_and(|s| s.usable());
        if !self.sessions.iter().all(usable) {
            return Err("the broker is not connected");
        }
        if let Some(refusal) = self.publishing.as_ref().and_then(|p| p.refusal()) {
            return Err(refusal.code());
        }
        if let Some(consuming) = &self.consuming {
            consuming.check()?;
        }
        if let Some(fronting) = &self.fronting {
            fronting.probe().await?;
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
    let get_only = || async { ApiError::method_not_allowed("GET") };
    Router::new()
        .route("/metrics", get(metrics_text).fallback(get_only))
        .route(
            "/healthz",
            get(|| async { axum::Json(serde_json::json!({ "ok": true })) }).fallback(get_only),
        )
        .route("/readyz", get(readyz).fallback(get_only))
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

/// `{"ready", "broker"}`, plus `"reason"` when not ready (and `"ended"`,
/// the task, when one ended early). `broker` names
/// the node the connection is on (null while disconnected), so that an
/// operator sees how the bridges spread over a cluster.
async fn readyz(State(state): State<AdminState>) -> Response {
    let broker = state.readiness.broker();
    match state.readiness.check().await {
        Ok(()) => {
            axum::Json(serde_json::json!({ "ready": true, "broker": broker })).into_response()
        }
        Err(reason) => {
            let mut body =
                serde_json::json!({ "ready": false, "reason": reason, "broker": broker });
            if let Some(task) = state.readiness.ended() {
                body["ended"] = task.into();
            }
            (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
        }
    }
}
