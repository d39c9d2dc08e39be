//! The loopback publish API that the producer component calls.
//!
//! `POST /v1/publish` takes one job and answers only once the broker has
//! decided: `202` when it confirmed the (persistent, mandatory) message,
//! `503` with `Retry-After` when it refused it or could not be reached in
//! time. A job is never reported accepted before the broker holds it.
//! `POST /v1/observe` takes the producer's report of each answer it gave, for
//! the producer's request and response counters.
//!
//! The connection and the confirm channel belong to `broker`.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use job::{Job, MAX_BODY_BYTES};
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Confirmation};
use serde::Deserialize;
use tracing::{debug, warn};

use crate::api::{ApiError, read_json_body};
use crate::broker::SessionWatch;
use crate::config::Config;
use crate::metrics::{Metrics, PublishOutcome};

/// Why a publish did not end in a confirm.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// No usable connection right now (disconnected or reconnecting).
    #[error("the broker is not connected")]
    Unavailable,
    /// The broker nacked the message, e.g. because the queue is full.
    #[error("the broker refused the message (is the queue full?)")]
    Rejected,
    /// The broker returned the message: no queue is bound to its routing key.
    #[error("the broker could not route the message to queue {0:?}")]
    Unroutable(String),
    /// No confirm arrived in time.
    #[error("no confirm from the broker within {0:?}")]
    Timeout(Duration),
    /// The channel failed while publishing.
    #[error("publishing failed: {0}")]
    Channel(#[source] lapin::Error),
}

impl PublishError {
    /// The metric outcome of this error.
    pub fn outcome(&self) -> PublishOutcome {
        match self {
            PublishError::Rejected => PublishOutcome::Rejected,
            PublishError::Unroutable(_) => PublishOutcome::Unroutable,
            PublishError::Unavailable | PublishError::Timeout(_) | PublishError::Channel(_) => {
                PublishOutcome::Failed
            }
        }
    }

    /// The stable error code in the 503 body.
    pub fn code(&self) -> &'static str {
        match self {
            PublishError::Unavailable => "broker_unavailable",
            PublishError::Rejected => "rejected",
            PublishError::Unroutable(_) => "unroutable",
            PublishError::Timeout(_) => "confirm_timeout",
            PublishError::Channel(_) => "publish_failed",
        }
    }
}

/// The publish API's state.
pub struct PublishApi {
    sessions: SessionWatch,
    queue: String,
    timeout: Duration,
    retry_after: u32,
    metrics: Metrics,
}

impl PublishApi {
    /// The API for this config, publishing on whatever session is current.
    pub fn new(config: &Config, sessions: SessionWatch, metrics: Metrics) -> Self {
        Self {
            sessions,
            queue: config.queue.clone(),
            timeout: config.publish_timeout,
            retry_after: config.retry_after_secs,
            metrics,
        }
    }

    /// The API's routes.
    pub fn router(self: Arc<Self>) -> Router {
        let post_only = || async { ApiError::method_not_allowed("POST") };
        Router::new()
            .route("/v1/publish", post(publish).fallback(post_only))
            .route("/v1/observe", post(observe).fallback(post_only))
            .fallback(|| async { ApiError::not_found() })
            .with_state(self)
    }

    /// Publishes one job's JSON and waits for the broker's verdict.
    pub async fn publish(&self, id: &str, body: &[u8]) -> Result<(), PublishError> {
        // Take the session without waiting: while disconnected, the caller
        // gets a prompt 503 rather than a request that hangs.
        let session = self.sessions.borrow().clone();
        let Some(channel) = session
            .as_ref()
            .filter(|s| s.usable())
            .and_then(|s| s.publisher.clone())
        else {
            return Err(PublishError::Unavailable);
        };
        let properties = BasicProperties::default()
            .with_message_id(id.into())
            .with_content_type("application/json".into())
            // 2 = persistent: quorum queues persist anyway; this states intent.
            .with_delivery_mode(2)
            .with_timestamp(unix_seconds());
        let confirm = async {
            channel
                .basic_publish(
                    "".into(),
                    self.queue.as_str().into(),
                    // Mandatory: a message that reaches no queue comes back
                    // instead of vanishing, and is reported as a failure.
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    body,
                    properties,
                )
                .await?
                .await
        };
        match tokio::time::timeout(self.timeout, confirm).await {
            Err(_) => Err(PublishError::Timeout(self.timeout)),
            Ok(Err(e)) => Err(PublishError::Channel(e)),
            Ok(Ok(Confirmation::Ack(None))) => Ok(()),
            Ok(Ok(Confirmation::Ack(Some(_)))) => Err(PublishError::Unroutable(self.queue.clone())),
            Ok(Ok(Confirmation::Nack(_))) => Err(PublishError::Rejected),
            // The channel is put in confirm mode before it is handed out.
            Ok(Ok(Confirmation::NotRequested)) => Err(PublishError::Unavailable),
        }
    }
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

async fn publish(
    State(api): State<Arc<PublishApi>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let bytes = read_json_body(headers.get(header::CONTENT_TYPE), body, MAX_BODY_BYTES).await?;
    let job = Job::from_body(&bytes)?;
    let result = api.publish(&job.id, &bytes).await;
    let outcome = result
        .as_ref()
        .map_or_else(PublishError::outcome, |()| PublishOutcome::Confirmed);
    api.metrics.publish_done(&api.queue, outcome, started);
    match result {
        Ok(()) => {
            debug!(id = %job.id, "published");
            let body = serde_json::json!({ "id": job.id, "outcome": outcome.label() });
            Ok((StatusCode::ACCEPTED, axum::Json(body)).into_response())
        }
        Err(e) => {
            warn!(id = %job.id, error = %e, "publish not confirmed");
            Err(ApiError::unavailable(
                e.code(),
                e.to_string(),
                api.retry_after,
            ))
        }
    }
}

/// The producer's report of one answer it gave.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Observation {
    route: String,
    method: String,
    status: u16,
}

/// Label values accepted from the producer; anything else becomes `other`,
/// so that no caller can grow the label set.
const ROUTES: &[&str] = &["/generate"];
const METHODS: &[&str] = &["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"];

fn closed_label<'a>(value: &'a str, allowed: &[&'static str]) -> &'a str {
    if allowed.contains(&value) {
        value
    } else {
        "other"
    }
}

async fn observe(
    State(api): State<Arc<PublishApi>>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let bytes = read_json_body(headers.get(header::CONTENT_TYPE), body, 1024).await?;
    let observation: Observation = job::parse_json(&bytes)?;
    if !(100..=599).contains(&observation.status) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_status",
            "status must be 100 to 599",
        ));
    }
    let route = closed_label(&observation.route, ROUTES);
    let method = closed_label(&observation.method, METHODS);
    api.metrics
        .producer_requests
        .with_label_values(&[route, method])
        .inc();
    api.metrics
        .producer_responses
        .with_label_values(&[route, &observation.status.to_string()])
        .inc();
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_a_closed_set() {
        assert_eq!(closed_label("/generate", ROUTES), "/generate");
        assert_eq!(closed_label("/etc/passwd", ROUTES), "other");
        assert_eq!(closed_label("BREW", METHODS), "other");
    }

    #[test]
    fn every_failure_is_a_503_code_and_never_confirmed() {
        let errors = [
            PublishError::Unavailable,
            PublishError::Rejected,
            PublishError::Unroutable("q".into()),
            PublishError::Timeout(Duration::from_secs(1)),
        ];
        for e in errors {
            assert_ne!(e.outcome(), PublishOutcome::Confirmed);
            assert!(!e.code().is_empty());
        }
    }
}
