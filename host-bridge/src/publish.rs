//! The loopback publish API that the producer component calls.
//!
//! `POST /v1/publish` takes one job and answers only once its fate is known,
//! or says plainly that it is not:
//!
//! | answer | meaning |
//! |---|---|
//! | `202` | the broker confirmed the (persistent, mandatory) message |
//! | `503` + `Retry-After` | **not queued**: the bridge never handed it to the broker (disconnected, blocked by an alarm, confirms overdue, too many in flight, deadline too close), or the broker nacked or returned it |
//! | `504 outcome_unknown` + `Retry-After` | handed to the broker, no verdict in time (or the connection died before it came): it **may** be queued. Retry with the same id. |
//!
//! Memory stays bounded under any broker fault: a publish holds one of
//! `--max-publishes-in-flight` permits from before its body is read until
//! the broker's verdict arrives or the connection dies, even after its
//! caller got `504`. A late verdict is counted, never silently applied.
//!
//! The producer's request and response counters are kept here too, with no
//! extra call for most answers: a publish that carries `observe-request:
//! <METHOD> <route>` is counted as that producer request, answered with the
//! bridge's own verdict (`202`, `503`, `504`), which the producer passes
//! through unchanged. `POST /v1/observe` takes the producer's report of the
//! answers the bridge never gave: bad input, a bridge that did not answer.
//! The connection and the confirm channel belong to `broker`.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use job::{Job, MAX_JOB_BYTES};
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Confirmation, ErrorKind};
use serde::Deserialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::field::Empty;
use tracing::{Instrument, Span, debug, info, info_span, warn};

use crate::broker::{Session, SessionWatch};
use crate::config::Config;
use crate::metrics::{Metrics, PublishOutcome};
use crate::server::{ApiError, discard_body, read_json_body};
use crate::telemetry;

pub use job::{DEADLINE_HEADER, OBSERVE_COUNTED_HEADER, OBSERVE_HEADER};

/// Time kept back from a deadline for writing the answer.
const ANSWER_MARGIN: Duration = Duration::from_millis(250);

/// The largest observation report (`{route, method, status}` is tens of
/// bytes).
const MAX_OBSERVATION_BYTES: usize = 1024;

/// Why a publish did not end in a confirm.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// No usable connection right now (disconnected or reconnecting).
    #[error("the broker is not connected")]
    Unavailable,
    /// The broker blocked the connection (memory or disk alarm).
    #[error("the broker is blocking publishers: {0}")]
    Blocked(String),
    /// Earlier publishes are past their confirm timeout and still waiting:
    /// the broker or the link is stalled, so new ones are not sent.
    #[error("the broker has not confirmed earlier publishes in time")]
    Stalled,
    /// `--max-publishes-in-flight` publishes are waiting for the broker.
    #[error("{0} publishes are already waiting for the broker")]
    Overloaded(u32),
    /// Publishes in flight already hold this many bytes of jobs.
    #[error("{0} bytes of jobs are already waiting for the broker")]
    BytesInFlight(usize),
    /// The caller's deadline leaves no time to wait for a confirm.
    #[error("the caller's deadline leaves less than the {0:?} a confirm may take")]
    DeadlineExceeded(Duration),
    /// The broker nacked the message, e.g. because the queue is full.
    #[error("the broker refused the message (is the queue full?)")]
    Rejected,
    /// The broker returned the message: no queue is bound to its routing key.
    #[error("the broker could not route the message to queue {0:?}")]
    Unroutable(String),
    /// The channel was closed before the message was sent.
    #[error("the message could not be sent: {0}")]
    NotSent(#[source] lapin::Error),
    /// The message was handed to the broker but no verdict came in time.
    #[error("no confirm from the broker within {0:?}; the job may still be queued")]
    Timeout(Duration),
    /// The message was handed to the broker, then the connection failed
    /// before its verdict arrived.
    #[error("the connection failed before the broker's verdict; the job may be queued: {0}")]
    Lost(#[source] lapin::Error),
}

impl PublishError {
    /// Whether the job may be queued despite this error: the `504` cases.
    pub fn outcome_unknown(&self) -> bool {
        matches!(self, PublishError::Timeout(_) | PublishError::Lost(_))
    }

    /// The metric outcome of this error.
    pub fn outcome(&self) -> PublishOutcome {
        match self {
            PublishError::Rejected => PublishOutcome::Rejected,
            PublishError::Unroutable(_) => PublishOutcome::Unroutable,
            e if e.outcome_unknown() => PublishOutcome::Unknown,
            _ => PublishOutcome::Refused,
        }
    }

    /// The HTTP status: 504 when the outcome is unknown, else 503.
    pub fn status(&self) -> StatusCode {
        if self.outcome_unknown() {
            StatusCode::GATEWAY_TIMEOUT
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        }
    }

    /// The stable error code in the answer's body.
    pub fn code(&self) -> &'static str {
        match self {
            PublishError::Unavailable => "broker_unavailable",
            PublishError::Blocked(_) => "broker_blocked",
            PublishError::Stalled => "broker_stalled",
            PublishError::Overloaded(_) | PublishError::BytesInFlight(_) => "overloaded",
            PublishError::DeadlineExceeded(_) => "deadline_exceeded",
            PublishError::Rejected => "rejected",
            PublishError::Unroutable(_) => "unroutable",
            PublishError::NotSent(_) => "publish_failed",
            PublishError::Timeout(_) | PublishError::Lost(_) => "outcome_unknown",
        }
    }
}

/// What became of a message handed to lapin. One lives per publish, briefly:
/// its size does not matter.
#[allow(clippy::large_enum_variant)]
enum Verdict {
    /// lapin refused it before sending (closed channel or connection).
    NotSent(lapin::Error),
    /// The broker's answer, or the connection's failure.
    Sent(Result<Confirmation, lapin::Error>),
}

impl Verdict {
    fn into_result(self, queue: &str) -> Result<(), PublishError> {
        match self {
            Verdict::NotSent(e) => Err(PublishError::NotSent(e)),
            Verdict::Sent(Ok(Confirmation::Ack(None))) => Ok(()),
            Verdict::Sent(Ok(Confirmation::Ack(Some(_)))) => {
                Err(PublishError::Unroutable(queue.to_owned()))
            }
            Verdict::Sent(Ok(Confirmation::Nack(_))) => Err(PublishError::Rejected),
            // The channel is put in confirm mode before it is handed out.
            Verdict::Sent(Ok(Confirmation::NotRequested)) => Err(PublishError::Unavailable),
            Verdict::Sent(Err(e)) => Err(PublishError::Lost(e)),
        }
    }
}

/// The publish API's state.
pub struct PublishApi {
    sessions: SessionWatch,
    queue: String,
    timeout: Duration,
    body_timeout: Duration,
    retry_after: u32,
    metrics: Metrics,
    max_in_flight: u32,
    permits: Arc<Semaphore>,
    /// KiB of job bodies held by publishes in flight; see
    /// [`MAX_BYTES_IN_FLIGHT`].
    kib: Arc<Semaphore>,
}

/// The most job bytes that publishes in flight may hold at once. lapin
/// keeps its own copy of each message until the socket takes it, so a
/// paused broker costs twice this. 128 publishes of 60 KB held while the
/// broker was paused took the bridge from 37 to 58 MiB, and glibc kept it;
/// with this bound small jobs still fill every permit, and large ones queue
/// no more than this behind a broker that does not answer.
pub const MAX_BYTES_IN_FLIGHT: usize = 2 * 1024 * 1024;

/// A publish's hold on the bridge's in-flight budget, from before its body
/// is read until the broker's verdict (or the connection's end).
pub struct InFlight {
    _count: OwnedSemaphorePermit,
    _kib: Option<OwnedSemaphorePermit>,
}

impl PublishApi {
    /// The API for this config, publishing on whatever session is current.
    pub fn new(config: &Config, sessions: SessionWatch, metrics: Metrics) -> Self {
        Self {
            sessions,
            queue: config.queue.clone(),
            timeout: config.publish_timeout,
            body_timeout: config.body_read_timeout,
            retry_after: config.retry_after_secs,
            metrics,
            max_in_flight: config.max_publishes_in_flight,
            permits: Arc::new(Semaphore::new(config.max_publishes_in_flight as usize)),
            kib: Arc::new(Semaphore::new(MAX_BYTES_IN_FLIGHT / 1024)),
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

    /// Why a publish would be refused now without being sent, if it would.
    /// `/readyz` says the same.
    pub fn refusal(&self) -> Option<PublishError> {
        let session = self.sessions.borrow();
        let Some(session) = session.as_ref().filter(|s| s.usable()) else {
            return Some(PublishError::Unavailable);
        };
        if session.blocked() {
            return Some(PublishError::Blocked("memory or disk alarm".into()));
        }
        if session.stalled() {
            return Some(PublishError::Stalled);
        }
        None
    }

    /// Takes one of the in-flight permits, or says the bridge is full.
    pub fn permit(&self) -> Result<InFlight, PublishError> {
        let count = self
            .permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| PublishError::Overloaded(self.max_in_flight))?;
        Ok(InFlight {
            _count: count,
            _kib: None,
        })
    }

    /// Adds a body of `len` bytes to `held`'s hold, or says the bytes in
    /// flight are at their bound.
    pub fn hold_body(&self, held: InFlight, len: usize) -> Result<InFlight, PublishError> {
        let kib = u32::try_from(len.div_ceil(1024).max(1)).unwrap_or(u32::MAX);
        let bytes = self
            .kib
            .clone()
            .try_acquire_many_owned(kib)
            .map_err(|_| PublishError::BytesInFlight(MAX_BYTES_IN_FLIGHT))?;
        Ok(InFlight {
            _kib: Some(bytes),
            ..held
        })
    }

    /// Publishes one job's JSON and waits for the broker's verdict, at most
    /// the confirm timeout. `permit` is held until the verdict arrives, even
    /// past the timeout.
    pub async fn publish(
        &self,
        id: &str,
        body: Vec<u8>,
        permit: InFlight,
        trace: &opentelemetry::Context,
    ) -> Result<(), PublishError> {
        if let Some(refusal) = self.refusal() {
            return Err(refusal);
        }
        let Some(session) = self.sessions.borrow().clone() else {
            return Err(PublishError::Unavailable);
        };
        let Some(channel) = session.publisher.clone() else {
            return Err(PublishError::Unavailable);
        };
        let properties = BasicProperties::default()
            .with_message_id(id.into())
            .with_content_type("application/json".into())
            // 2 = persistent: quorum queues persist anyway; this states intent.
            .with_delivery_mode(2)
            .with_timestamp(unix_seconds())
            .with_headers(headers_now(trace));
        let queue = self.queue.clone();
        // The send and the wait run in their own task, so that a caller's
        // timeout does not drop a message lapin may already have written: the
        // task keeps the permit (and the body's memory) until the verdict.
        let mut verdict = tokio::spawn(async move {
            let _permit = permit;
            let sent = channel
                .basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    // Mandatory: a message that reaches no queue comes back
                    // instead of vanishing, and is reported as a failure.
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &body,
                    properties,
                )
                .await;
            match sent {
                Err(e) if never_sent(&e) => Verdict::NotSent(e),
                Err(e) => Verdict::Sent(Err(e)),
                Ok(confirm) => Verdict::Sent(confirm.await),
            }
        });
        match tokio::time::timeout(self.timeout, &mut verdict).await {
            Ok(Ok(verdict)) => {
                let result = verdict.into_result(&self.queue);
                match &result {
                    Ok(()) => session.record_verdict(true),
                    Err(PublishError::Rejected) => session.record_verdict(false),
                    Err(_) => {}
                }
                result
            }
            Ok(Err(panicked)) => Err(PublishError::Lost(lapin::Error::from(
                std::io::Error::other(panicked.to_string()),
            ))),
            Err(_) => {
                session.begin_overdue();
                tokio::spawn(settle_late(
                    id.to_owned(),
                    verdict,
                    session,
                    self.sessions.clone(),
                    self.metrics.clone(),
                ));
                Err(PublishError::Timeout(self.timeout))
            }
        }
    }
}

/// Whether lapin refused a publish before writing any of it.
fn never_sent(e: &lapin::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::InvalidChannelState(..)
            | ErrorKind::InvalidConnectionState(_)
            | ErrorKind::InvalidChannel(_)
    )
}

/// Waits for the verdict of a publish whose caller already got `504`, counts
/// it, and lifts the stall it caused on `sent_on`.
///
/// A connection that is gone may never resolve its pending confirms (seen
/// when a cluster node shuts down), so the wait also ends when `sent_on` is
/// no longer the current session: the verdict is then `lost`, and the task
/// that held the permit and the body is dropped, so neither leaks.
async fn settle_late(
    id: String,
    mut verdict: tokio::task::JoinHandle<Verdict>,
    sent_on: Arc<Session>,
    mut sessions: SessionWatch,
    metrics: Metrics,
) {
    let replaced = sessions.wait_for(|s| !s.as_ref().is_some_and(|s| Arc::ptr_eq(s, &sent_on)));
    let label = tokio::select! {
        // A verdict that is in counts, even if the session went meanwhile.
        biased;
        settled = &mut verdict => match settled {
            Ok(Verdict::Sent(Ok(Confirmation::Ack(None)))) => {
                sent_on.record_verdict(true);
                "confirmed"
            }
            Ok(Verdict::Sent(Ok(Confirmation::Nack(_)))) => {
                sent_on.record_verdict(false);
                "refused"
            }
            Ok(Verdict::Sent(Ok(_))) => "refused",
            Ok(Verdict::NotSent(_)) => "refused",
            Ok(Verdict::Sent(Err(_))) | Err(_) => "lost",
        },
        _ = replaced => {
            verdict.abort();
            "lost"
        }
    };
    sent_on.end_overdue();
    metrics
        .publish_late_verdicts
        .with_label_values(&[label])
        .inc();
    info!(id = ?id, verdict = label, "late verdict for a publish answered outcome_unknown");
}

/// The headers of a message published now: [`job::PUBLISHED_AT_HEADER`]
/// and the trace context to continue from (`traceparent`, `tracestate`).
fn headers_now(trace: &opentelemetry::Context) -> lapin::types::FieldTable {
    let ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or_default();
    let mut headers = lapin::types::FieldTable::default();
    headers.insert(
        job::PUBLISHED_AT_HEADER.into(),
        lapin::types::AMQPValue::LongLongInt(ms),
    );
    telemetry::to_amqp(trace, &mut headers);
    headers
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// The time left until `deadline` (zero once it has passed).
fn left_until(deadline: SystemTime) -> Duration {
    deadline
        .duration_since(SystemTime::now())
        .unwrap_or_default()
}

/// The caller's `publish-deadline`, if it sent one.
fn deadline(headers: &HeaderMap) -> Result<Option<SystemTime>, ApiError> {
    let Some(value) = headers.get(DEADLINE_HEADER) else {
        return Ok(None);
    };
    let deadline_ms: u64 = value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_deadline",
                format!("{DEADLINE_HEADER} must be Unix time in milliseconds"),
            )
        })?;
    Ok(Some(
        SystemTime::UNIX_EPOCH + Duration::from_millis(deadline_ms),
    ))
}

async fn publish(
    State(api): State<Arc<PublishApi>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let observed = observed_request(&headers);
    let caller_deadline = deadline(&headers)?;
    // The job id is recorded once the body is read: a span attribute,
    // never a metric label.
    let span = if telemetry::exporting() {
        info_span!(
            "publish",
            otel.kind = "producer",
            messaging.system = "rabbitmq",
            messaging.destination.name = %api.queue,
            job.id = Empty,
            otel.status_code = Empty,
        )
    } else {
        Span::none()
    };
    let trace = telemetry::follow(&span, &telemetry::from_http(&headers));
    // A bad request (the outer Err) is not counted here: the producer turns
    // it into its own 502 and reports that itself.
    let result = publish_request(&api, &headers, caller_deadline, body, &trace)
        .instrument(span.clone())
        .await?;
    if result.is_err() {
        span.record("otel.status_code", "ERROR");
    }
    let outcome = result
        .as_ref()
        .map_or_else(|(_, e)| e.outcome(), |_| PublishOutcome::Confirmed);
    let refusal = result.as_ref().err().map(|(_, e)| e.code());
    api.metrics
        .publish_done(&api.queue, outcome, refusal, started);
    let mut response = match &result {
        Ok(id) => {
            debug!(id = ?id, "published");
            let body = serde_json::json!({ "id": id, "outcome": outcome.label() });
            (StatusCode::ACCEPTED, axum::Json(body)).into_response()
        }
        Err((id, e)) => {
            // Debug formatting escapes the id: it came from a client.
            warn!(id = ?id, error = %e, "publish not confirmed");
            ApiError::new(e.status(), e.code(), e.to_string())
                .retry_after(api.retry_after)
                .into_response()
        }
    };
    // Count the producer's answer only while the producer still waits for
    // this one; past its deadline it reports its own.
    let waited_for = caller_deadline.is_none_or(|d| SystemTime::now() < d);
    if let (Some((method, route)), true) = (observed, waited_for) {
        count_producer_answer(&api.metrics, route, method, response.status().as_u16());
        response.headers_mut().insert(
            OBSERVE_COUNTED_HEADER,
            axum::http::HeaderValue::from_static("1"),
        );
    }
    Ok(response)
}

/// One publish request from gate to verdict. The outer `Err` is a bad
/// request (nothing was attempted); the inner one the broker's or the
/// bridge's refusal, with the job id when it is known.
async fn publish_request(
    api: &PublishApi,
    headers: &HeaderMap,
    deadline: Option<SystemTime>,
    body: Body,
    trace: &opentelemetry::Context,
) -> Result<Result<String, (Option<String>, PublishError)>, ApiError> {
    // Refuse before holding the body: a stalled or blocked broker must cost
    // no memory. The body is still read (and dropped), so that the client
    // gets the answer rather than a reset connection.
    let permit = match api.refusal().map_or_else(|| api.permit(), Err) {
        Ok(permit) => permit,
        Err(e) => {
            discard_body(body, MAX_JOB_BYTES, api.body_timeout).await;
            return Ok(Err((None, e)));
        }
    };
    let bytes = read_json_body(
        headers.get(header::CONTENT_TYPE),
        body,
        MAX_JOB_BYTES,
        api.body_timeout,
    )
    .await?;
    let job = Job::from_body(&bytes)?;
    // The id passed `job::validate_id`: safe to record as it is.
    Span::current().record("job.id", job.id.as_str());
    let permit = match api.hold_body(permit, bytes.len()) {
        Ok(permit) => permit,
        Err(e) => return Ok(Err((Some(job.id), e))),
    };
    // The time left is judged after the body is read: a slow body must not
    // let a publish start that could outlast the caller's wait.
    let time_left = deadline.map(left_until);
    if time_left.is_some_and(|left| left < api.timeout + ANSWER_MARGIN) {
        return Ok(Err((
            Some(job.id),
            PublishError::DeadlineExceeded(api.timeout),
        )));
    }
    match api.publish(&job.id, bytes, permit, trace).await {
        Ok(()) => Ok(Ok(job.id)),
        Err(e) => Ok(Err((Some(job.id), e))),
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

fn closed_label(value: &str, allowed: &[&'static str]) -> &'static str {
    allowed
        .iter()
        .find(|a| **a == value)
        .copied()
        .unwrap_or("other")
}

/// The producer request a publish stands for (`observe-request`), as
/// closed label values: (method, route).
fn observed_request(headers: &HeaderMap) -> Option<(&'static str, &'static str)> {
    let value = headers.get(OBSERVE_HEADER)?.to_str().ok()?;
    let (method, route) = value.split_once(' ')?;
    Some((closed_label(method, METHODS), closed_label(route, ROUTES)))
}

/// One producer request and the status it was answered with.
fn count_producer_answer(metrics: &Metrics, route: &str, method: &str, status: u16) {
    metrics
        .producer_requests
        .with_label_values(&[route, method])
        .inc();
    metrics
        .producer_responses
        .with_label_values(&[route, &status.to_string()])
        .inc();
}

async fn observe(
    State(api): State<Arc<PublishApi>>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let bytes = read_json_body(
        headers.get(header::CONTENT_TYPE),
        body,
        MAX_OBSERVATION_BYTES,
        api.body_timeout,
    )
    .await?;
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
    count_producer_answer(&api.metrics, route, method, observation.status);
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
    fn the_observed_request_header_is_read_into_closed_labels() {
        let mut headers = HeaderMap::new();
        assert_eq!(observed_request(&headers), None);
        headers.insert(OBSERVE_HEADER, "POST /generate".parse().unwrap());
        assert_eq!(observed_request(&headers), Some(("POST", "/generate")));
        headers.insert(OBSERVE_HEADER, "BREW /x".parse().unwrap());
        assert_eq!(observed_request(&headers), Some(("other", "other")));
        headers.insert(OBSERVE_HEADER, "GET".parse().unwrap());
        assert_eq!(observed_request(&headers), None);
    }

    #[test]
    fn only_a_sent_message_without_a_verdict_is_outcome_unknown() {
        let io = || lapin::Error::from(std::io::Error::other("reset"));
        let unknown = [
            PublishError::Timeout(Duration::from_secs(1)),
            PublishError::Lost(io()),
        ];
        for e in unknown {
            assert_eq!(
                (e.status(), e.code()),
                (StatusCode::GATEWAY_TIMEOUT, "outcome_unknown")
            );
            assert_eq!(e.outcome(), PublishOutcome::Unknown);
        }
        let not_queued = [
            PublishError::Unavailable,
            PublishError::Blocked("alarm".into()),
            PublishError::Stalled,
            PublishError::Overloaded(1),
            PublishError::DeadlineExceeded(Duration::from_secs(1)),
            PublishError::Rejected,
            PublishError::Unroutable("q".into()),
            PublishError::NotSent(io()),
        ];
        for e in not_queued {
            assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE, "{e}");
            assert_ne!(e.code(), "outcome_unknown");
        }
        // An I/O error from basic_publish may come after some frames left.
        assert!(!never_sent(&io()));
    }

    #[test]
    fn deadlines_are_read_from_the_header() {
        let mut headers = HeaderMap::new();
        let time_left = |h: &HeaderMap| deadline(h).map(|d| d.map(left_until));
        assert!(time_left(&headers).unwrap().is_none());
        headers.insert(DEADLINE_HEADER, "1".parse().unwrap());
        assert_eq!(time_left(&headers).unwrap(), Some(Duration::ZERO));
        let later = SystemTime::now() + Duration::from_secs(60);
        let ms = later
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis();
        headers.insert(DEADLINE_HEADER, ms.to_string().parse().unwrap());
        assert!(time_left(&headers).unwrap().unwrap() > Duration::from_secs(50));
        headers.insert(DEADLINE_HEADER, "soon".parse().unwrap());
        assert_eq!(
            time_left(&headers).unwrap_err().status(),
            StatusCode::BAD_REQUEST
        );
    }
}
