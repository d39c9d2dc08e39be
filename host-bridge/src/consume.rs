//! The consume role: deliveries from the queue, pushed one by one to the
//! worker component over HTTP, acknowledged by the worker's whole answer.
//!
//! | worker answer | action |
//! |---|---|
//! | 2xx, body complete | ack |
//! | 408, 429, 503; connection refused | "later": hold the job, pause consuming, push again after `Retry-After` or a backoff; spends no delivery |
//! | other 4xx | the job itself is bad: dead-letter it now |
//! | other 5xx, 3xx, timeout, a reset or an answer cut short | "failing": hold the job, pause consuming, push again with backoff for up to `--push-retry-window`; then requeue, spending one delivery |
//!
//! Requeues are bounded by the quorum queue's delivery limit: the last
//! delivery that fails is dead-lettered. A delivery that is not a valid job
//! is dead-lettered unpushed. The bridge dead-letters by publishing the job
//! to `<queue>.dlx` itself (confirmed, then acked), so that why and after
//! how many attempts travel with it as headers ([`DeadLetter`]); if that
//! publish fails, it rejects the delivery and the broker dead-letters it
//! without them. This module owns the consumer channel, the worker's health
//! and the graceful stop; the connection belongs to `broker`.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, BasicRejectOptions, ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, Confirmation, Consumer};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::field::Empty;
use tracing::{Instrument, Span, debug, info, info_span, warn};

use crate::broker::{Backoff, REPLY_SUCCESS, Session, SessionWatch, Topology, current_session};
use crate::config::Config;
use crate::metrics::{JobOutcome, Metrics, RetryReason};
use crate::telemetry;

/// The first wait between pushes of a held job.
const PUSH_BACKOFF_BASE: Duration = Duration::from_millis(100);

/// Resubscribing after the consumer stopped: from this delay, doubling
/// (jittered) up to [`RESUBSCRIBE_BACKOFF_MAX`].
const RESUBSCRIBE_BACKOFF_BASE: Duration = Duration::from_millis(100);

/// The longest wait between resubscribe attempts on one session.
const RESUBSCRIBE_BACKOFF_MAX: Duration = Duration::from_secs(10);

/// How long a stopping consumer waits for each delivery already on its way
/// (sent before the cancel), to requeue it rather than leave it unacked.
const SHUTDOWN_SWEEP: Duration = Duration::from_millis(50);

/// How long one ack, reject or requeue may take. It is one frame written to
/// the broker's socket: one that takes longer is on a connection that is
/// gone, whether or not lapin has said so. Seen in the cluster test when
/// two of three nodes stopped: the ack never completed, and the job held
/// its prefetch slot (and `jobs_in_flight`) for good. The broker requeues
/// an unsettled delivery when its channel closes.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long opening the consumer channel, declaring, setting the prefetch
/// and subscribing may take together: a handful of round trips on a link
/// that answered a moment ago.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(10);

/// How much of an error answer from the worker is logged.
const ANSWER_LOGGED: usize = 256;

/// What the worker said about one job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushResult {
    /// The worker answered with this status, and the whole answer arrived.
    Answered {
        /// The status.
        status: u16,
        /// Its `Retry-After`, in seconds, when it sent one.
        retry_after: Option<u64>,
    },
    /// No complete answer within the job timeout.
    Timeout,
    /// The worker could not be reached: nothing listens, or no route.
    Unreachable(String),
    /// The exchange broke off: a reset, or an answer cut short.
    Broken(String),
}

/// What to do after a push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Done: ack.
    Ack,
    /// The job itself is bad: dead-letter it now.
    Poison,
    /// The worker can't take work now: hold the job and push it again
    /// after this wait (the worker's `Retry-After`) or a backoff.
    Later(Option<Duration>),
    /// The worker is failing: retry in place with backoff within the retry
    /// window, then requeue.
    Retry,
}

impl PushResult {
    /// What to do next.
    pub fn next(&self) -> Next {
        match self {
            PushResult::Answered { status, .. } if (200..300).contains(status) => Next::Ack,
            // "Not now" rather than "never": the worker is busy or starting.
            PushResult::Answered {
                status: 408 | 429 | 503,
                retry_after,
            } => Next::Later(retry_after.map(Duration::from_secs)),
            // A 4xx is the job's fault and will not get better.
            PushResult::Answered { status, .. } if (400..500).contains(status) => Next::Poison,
            PushResult::Unreachable(_) => Next::Later(None),
            // A 5xx, a 3xx, a timeout or a broken answer is the worker's
            // trouble, not the job's: a bad rollout or a restarting
            // dependency that a few seconds cure. The delivery limit bounds
            // a job that keeps failing.
            _ => Next::Retry,
        }
    }

    /// The worker's answer in a word or a status, for the dead-letter
    /// headers: `500`, `timeout`, `unreachable`, `broken`.
    pub fn summary(&self) -> String {
        match self {
            PushResult::Answered { status, .. } => status.to_string(),
            other => other.label().to_owned(),
        }
    }

    /// The `result` label of `worker_push_duration_seconds`.
    pub fn label(&self) -> &'static str {
        match self {
            PushResult::Answered { status, .. } => match status / 100 {
                2 => "2xx",
                4 => "4xx",
                5 => "5xx",
                _ => "other",
            },
            PushResult::Timeout => "timeout",
            PushResult::Unreachable(_) => "unreachable",
            PushResult::Broken(_) => "broken",
        }
    }
}

/// Whether the worker takes work. Consumption pauses while it doesn't, so
/// that no delivery is spent on an absent worker; `/readyz` says so.
#[derive(Clone)]
pub struct WorkerHealth {
    up: Arc<watch::Sender<bool>>,
    metrics: Metrics,
}

impl WorkerHealth {
    fn new(metrics: Metrics) -> Self {
        metrics.worker_up.set(1);
        Self {
            up: Arc::new(watch::Sender::new(true)),
            metrics,
        }
    }

    /// Whether the worker took its last push.
    pub fn is_up(&self) -> bool {
        *self.up.borrow()
    }

    fn set(&self, up: bool) {
        if self
            .up
            .send_if_modified(|now| std::mem::replace(now, up) != up)
        {
            self.metrics.worker_up.set(up.into());
            if up {
                info!("the worker takes work again; consuming");
            } else {
                warn!("the worker can't take work; consumption paused, held jobs retried");
            }
        }
    }

    async fn wait_up(&self) {
        let _ = self.up.subscribe().wait_for(|up| *up).await;
    }

    /// Resumes consuming after a failing job was given back to the queue:
    /// with nothing held, only a new delivery can tell whether the worker
    /// has recovered, and a paused consumer would never get one.
    fn probe(&self) {
        if self
            .up
            .send_if_modified(|now| !std::mem::replace(now, true))
        {
            self.metrics.worker_up.set(1);
            info!("retry window spent on a failing worker; consuming again to probe it");
        }
    }
}

/// When the job was published, from [`job::PUBLISHED_AT_HEADER`]; `None`
/// for a message without it (published by something else than the bridge).
pub fn published_at(delivery: &Delivery) -> Option<std::time::SystemTime> {
    let headers = delivery.properties.headers().as_ref()?;
    let ms = match headers.inner().get(job::PUBLISHED_AT_HEADER)? {
        AMQPValue::LongLongInt(ms) => u64::try_from(*ms).ok()?,
        AMQPValue::LongUInt(ms) => u64::from(*ms),
        _ => return None,
    };
    std::time::SystemTime::UNIX_EPOCH.checked_add(Duration::from_millis(ms))
}

/// Seconds from `since` to now, or zero when `since` is ahead of this
/// clock: pods' clocks differ by a little, and a wait is never negative.
fn seconds_since(since: std::time::SystemTime) -> f64 {
    std::time::SystemTime::now()
        .duration_since(since)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Why a delivery is not a job the worker can be given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// The body is not a valid job (JSON, size, id charset).
    InvalidJob,
    /// The AMQP `message-id` names another job than the body.
    IdMismatch,
}

impl Malformed {
    /// The `reason` label of `malformed_jobs_total`.
    pub fn label(self) -> &'static str {
        match self {
            Malformed::InvalidJob => "invalid_job",
            Malformed::IdMismatch => "id_mismatch",
        }
    }
}

/// Checks a delivery from the queue, which anyone with access may have
/// published to, before it goes anywhere near the worker or the logs.
/// Returns the job's (validated) id.
pub fn check_delivery(delivery: &Delivery) -> Result<String, Malformed> {
    job::check_size(delivery.data.len(), job::MAX_JOB_BYTES).map_err(|_| Malformed::InvalidJob)?;
    let job = job::Job::from_body(&delivery.data).map_err(|_| Malformed::InvalidJob)?;
    match delivery.properties.message_id() {
        Some(message_id) if message_id.as_str() != job.id => Err(Malformed::IdMismatch),
        _ => Ok(job.id),
    }
}

/// Why consuming on a session stopped.
#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    /// Opening the channel, setting the prefetch or subscribing failed.
    #[error("failed to start consuming: {0}")]
    Subscribe(#[source] lapin::Error),
    /// Subscribing took longer than this.
    #[error("no answer to the subscribe sequence within {0:?}")]
    SubscribeTimeout(Duration),
    /// The delivery stream failed (usually the connection was lost).
    #[error("the delivery stream failed: {0}")]
    Stream(#[source] lapin::Error),
    /// The broker cancelled the consumer (e.g. the queue was deleted).
    #[error("the broker ended the consumer")]
    Ended,
}

/// How many times a delivery was returned before, from the quorum queue's
/// `x-delivery-count` header (absent on the first delivery).
pub fn previous_deliveries(delivery: &Delivery) -> u64 {
    let Some(headers) = delivery.properties.headers() else {
        return 0;
    };
    match headers.inner().get("x-delivery-count") {
        Some(AMQPValue::LongLongInt(n)) => u64::try_from(*n).unwrap_or(0),
        Some(AMQPValue::LongInt(n)) => u64::try_from(*n).unwrap_or(0),
        Some(AMQPValue::LongUInt(n)) => u64::from(*n),
        Some(AMQPValue::ShortInt(n)) => u64::try_from(*n).unwrap_or(0),
        Some(AMQPValue::ShortUInt(n)) => u64::from(*n),
        _ => 0,
    }
}

/// Why the bridge dead-lettered a job: the `x-dead-reason` header on the
/// copy in `<queue>.dead`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadReason {
    /// The worker answered a 4xx other than 408 and 429: the job is bad.
    Refused,
    /// The worker failed every delivery the queue allows.
    DeliveryLimit,
    /// Not a job the worker can be given.
    Malformed(Malformed),
}

impl DeadReason {
    /// The header's value.
    pub fn label(self) -> &'static str {
        match self {
            DeadReason::Refused => "worker_refused",
            DeadReason::DeliveryLimit => "delivery_limit",
            DeadReason::Malformed(m) => m.label(),
        }
    }
}

/// What travels with a dead-lettered job, as message headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// `x-dead-reason`.
    pub reason: DeadReason,
    /// `x-dead-worker-answer`: the last push's answer (`500`, `timeout`,
    /// ...), absent when the job was never pushed.
    pub worker_answer: Option<String>,
    /// `x-dead-deliveries`: how many times the broker delivered the job.
    pub deliveries: u64,
    /// `x-dead-pushes`: how many pushes the last delivery made.
    pub pushes: u32,
}

impl DeadLetter {
    /// The header names, in one place: what an operator replaying
    /// `<queue>.dead` reads.
    pub const REASON: &'static str = "x-dead-reason";
    /// See [`DeadLetter::worker_answer`].
    pub const WORKER_ANSWER: &'static str = "x-dead-worker-answer";
    /// See [`DeadLetter::deliveries`].
    pub const DELIVERIES: &'static str = "x-dead-deliveries";
    /// See [`DeadLetter::pushes`].
    pub const PUSHES: &'static str = "x-dead-pushes";

    /// The delivery's own headers, less the broker's delivery count (the
    /// dead-letter queue keeps its own), with these added.
    fn headers(&self, original: Option<&FieldTable>) -> FieldTable {
        let mut headers = FieldTable::default();
        for (name, value) in original.map(FieldTable::inner).into_iter().flatten() {
            if name.as_str() != "x-delivery-count" {
                headers.insert(name.clone(), value.clone());
            }
        }
        let text = |v: &str| AMQPValue::LongString(v.into());
        headers.insert(Self::REASON.into(), text(self.reason.label()));
        if let Some(answer) = &self.worker_answer {
            headers.insert(Self::WORKER_ANSWER.into(), text(answer));
        }
        let count = |n: u64| AMQPValue::LongLongInt(i64::try_from(n).unwrap_or(i64::MAX));
        headers.insert(Self::DELIVERIES.into(), count(self.deliveries));
        headers.insert(Self::PUSHES.into(), count(self.pushes.into()));
        headers
    }
}

/// How a delivery is settled with the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Settle {
    Ack,
    Requeue,
    DeadLetter(DeadLetter),
}

impl Settle {
    /// The job's outcome, as `jobs_total` counts it.
    fn outcome(&self) -> JobOutcome {
        match self {
            Settle::Ack => JobOutcome::Acked,
            Settle::Requeue => JobOutcome::Requeued,
            Settle::DeadLetter(_) => JobOutcome::DeadLettered,
        }
    }
}

/// How the pushes of one delivery ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pushed {
    /// The worker did the job.
    Done,
    /// The worker refused the job as bad.
    Refused,
    /// The worker kept failing for the whole retry window.
    Failed,
    /// The bridge is stopping: the job goes back to the queue.
    Stopped,
}

/// Runs each delivery as a job, from its check to its settlement: pushes it
/// to the worker (retrying in place), then acks, rejects or requeues it with
/// the broker. It holds what that takes: the worker's URL and client, the
/// queue's name, delivery limit and prefetch.
pub struct JobRunner {
    queue: String,
    dead_letter_exchange: String,
    delivery_limit: u64,
    url: String,
    timeout: Duration,
    retry_window: Duration,
    max_backoff: Duration,
    prefetch: u16,
    client: reqwest::Client,
    health: WorkerHealth,
    metrics: Metrics,
}

impl JobRunner {
    /// Sends one job to the worker with the trace context `trace`, and
    /// reads its whole answer.
    pub async fn push(&self, body: &[u8], trace: &opentelemetry::Context) -> PushResult {
        let mut headers = reqwest::header::HeaderMap::new();
        telemetry::to_http(trace, &mut headers);
        let request = self
            .client
            .post(&self.url)
            .headers(headers)
            .header("content-type", "application/json")
            // Covers connecting, the answer's head and its whole body.
            .timeout(self.timeout)
            .body(body.to_vec());
        let mut response = match request.send().await {
            Ok(response) => response,
            Err(e) if e.is_timeout() => return PushResult::Timeout,
            Err(e) if e.is_connect() => return PushResult::Unreachable(e.to_string()),
            Err(e) => return PushResult::Broken(e.to_string()),
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok());
        // Ack only on the whole answer: a status line followed by a body cut
        // short is a worker that died mid-answer. The body is discarded as it
        // arrives, so its size costs no memory.
        // The start of an error answer is kept for the log: under runwasi's
        // wasmtime shim the worker's own stderr never reaches the container
        // log, so its bridge says what it answered.
        let mut said = Vec::new();
        let keep = !(200..300).contains(&status);
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) if keep => {
                    let room = ANSWER_LOGGED.saturating_sub(said.len());
                    said.extend_from_slice(&chunk[..chunk.len().min(room)]);
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) if e.is_timeout() => return PushResult::Timeout,
                Err(e) => return PushResult::Broken(e.to_string()),
            }
        }
        let result = PushResult::Answered {
            status,
            retry_after,
        };
        // "Later" is the worker's back-pressure, not an error: debug only.
        let said = || crate::server::answer_summary(&said);
        match result.next() {
            Next::Ack => {}
            Next::Later(_) => {
                debug!(status, worker_said = %said(), "the worker can't take work now")
            }
            Next::Poison | Next::Retry => {
                warn!(status, worker_said = %said(), "the worker answered with an error");
            }
        }
        result
    }

    /// Handles one delivery from its check to its settlement, on `channel`
    /// (the one it came on: acks must go there).
    async fn handle(&self, channel: Channel, delivery: Delivery, stop: CancellationToken) {
        let previous = previous_deliveries(&delivery);
        let id = match check_delivery(&delivery) {
            Ok(id) => id,
            Err(reason) => return self.dead_letter_malformed(&channel, delivery, reason).await,
        };
        // The id passed `job::validate_id`: safe to log as it is. The span
        // is the logs' too: every line about this job names it and its
        // trace id. The OpenTelemetry-only fields are added when exporting.
        let span = if telemetry::exporting() {
            info_span!(
                "job",
                job.id = %id,
                delivery = previous + 1,
                trace_id = Empty,
                otel.kind = "consumer",
                messaging.system = "rabbitmq",
                messaging.destination.name = %self.queue,
                otel.status_code = Empty,
            )
        } else {
            info_span!("job", job.id = %id, delivery = previous + 1, trace_id = Empty)
        };
        let parent = telemetry::from_amqp(delivery.properties.headers().as_ref());
        let trace = telemetry::follow(&span, &parent);
        if let Some(trace_id) = telemetry::trace_id(&trace) {
            span.record("trace_id", trace_id);
        }
        let published = published_at(&delivery);
        async {
            let _timer = self.metrics.job_started();
            let started = Instant::now();
            // The wait every job pays once: retries of a redelivered job
            // are not queue wait.
            if let Some(published) = published
                && previous == 0
            {
                self.metrics
                    .job_queue_wait
                    .observe(seconds_since(published));
            }
            let (pushed, result, pushes) =
                self.push_until_settled(&delivery.data, &stop, &trace).await;
            let dead = |reason| {
                Settle::DeadLetter(DeadLetter {
                    reason,
                    worker_answer: Some(result.summary()),
                    deliveries: previous + 1,
                    pushes,
                })
            };
            let settle = match pushed {
                Pushed::Done => Settle::Ack,
                Pushed::Refused => dead(DeadReason::Refused),
                // The queue's last allowed delivery: a requeue would make
                // the broker dead-letter it without saying why.
                Pushed::Failed if previous >= self.delivery_limit => {
                    dead(DeadReason::DeliveryLimit)
                }
                Pushed::Failed | Pushed::Stopped => Settle::Requeue,
            };
            let outcome = settle.outcome();
            let acked = settle == Settle::Ack;
            if !acked {
                Span::current().record("otel.status_code", "ERROR");
            }
            if self.settle(&channel, &delivery, settle).await {
                if let (true, Some(published)) = (acked, published) {
                    self.metrics
                        .job_end_to_end
                        .observe(seconds_since(published));
                }
                info!(
                    outcome = outcome.label(),
                    worker = ?result,
                    pushes,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "job done"
                );
            }
        }
        .instrument(span)
        .await
    }

    /// Acks, dead-letters or requeues `delivery` and counts its outcome;
    /// `false` if the channel gave no answer (the failure is counted
    /// instead, and the broker redelivers the job if the settle was lost).
    async fn settle(&self, channel: &Channel, delivery: &Delivery, settle: Settle) -> bool {
        let outcome = settle.outcome();
        let settled = match &settle {
            Settle::Ack => bounded(delivery.acker.ack(BasicAckOptions::default())).await,
            Settle::Requeue => {
                let requeue = BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                };
                bounded(delivery.acker.nack(requeue)).await
            }
            Settle::DeadLetter(dead) => match self.publish_dead(channel, delivery, dead).await {
                Ok(()) => bounded(delivery.acker.ack(BasicAckOptions::default())).await,
                Err(e) => {
                    // Still not lost: the broker dead-letters a rejected
                    // delivery itself, only without the headers.
                    warn!(error = %e, reason = dead.reason.label(), "could not publish to the dead-letter exchange; rejecting instead");
                    let reject = BasicRejectOptions { requeue: false };
                    bounded(delivery.acker.reject(reject)).await
                }
            },
        };
        match settled {
            Ok(()) => {
                self.metrics.job_done(&self.queue, outcome);
                true
            }
            Err(e) => {
                self.metrics
                    .ack_failures
                    .with_label_values(&[&self.queue])
                    .inc();
                // A timed-out settle may still land later: say what is known.
                warn!(error = %e, outcome = outcome.label(), "settle outcome unknown; the broker redelivers the job if it was lost");
                false
            }
        }
    }

    /// Publishes a copy of `delivery` to the dead-letter exchange with
    /// `dead`'s headers, and waits for the broker's confirm.
    async fn publish_dead(
        &self,
        channel: &Channel,
        delivery: &Delivery,
        dead: &DeadLetter,
    ) -> Result<(), String> {
        let properties = delivery
            .properties
            .clone()
            .with_headers(dead.headers(delivery.properties.headers().as_ref()));
        let publish = async {
            channel
                .basic_publish(
                    self.dead_letter_exchange.as_str().into(),
                    ShortString::from(self.queue.as_str()),
                    BasicPublishOptions::default(),
                    &delivery.data,
                    properties,
                )
                .await?
                .await
        };
        match tokio::time::timeout(SETTLE_TIMEOUT, publish).await {
            Ok(Ok(Confirmation::Ack(_))) => Ok(()),
            Ok(Ok(other)) => Err(format!("the broker did not confirm it: {other:?}")),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no confirm within {SETTLE_TIMEOUT:?}")),
        }
    }

    /// Pushes until the worker gives an answer that settles the delivery,
    /// retrying in place: without limit while the worker can't take work
    /// (no delivery is spent on an absent worker), for up to the retry
    /// window while it fails. Consumption is paused meanwhile, so that one
    /// bad minute of the worker's costs no other job a delivery. Returns
    /// how it ended, the last answer and the number of pushes.
    async fn push_until_settled(
        &self,
        body: &[u8],
        stop: &CancellationToken,
        trace: &opentelemetry::Context,
    ) -> (Pushed, PushResult, u32) {
        let mut backoff = Backoff::new(PUSH_BACKOFF_BASE, self.max_backoff);
        let mut failing_since: Option<Instant> = None;
        let mut pushes = 0;
        loop {
            let started = Instant::now();
            let span = if telemetry::exporting() {
                info_span!(
                    "push",
                    otel.kind = "client",
                    http.request.method = "POST",
                    http.response.status_code = Empty,
                    otel.status_code = Empty,
                )
            } else {
                Span::none()
            };
            let onward = telemetry::follow(&span, trace);
            let result = self.push(body, &onward).instrument(span.clone()).await;
            match &result {
                PushResult::Answered { status, .. } => {
                    span.record("http.response.status_code", status);
                }
                _ => {
                    span.record("otel.status_code", "ERROR");
                }
            }
            drop(span);
            pushes += 1;
            self.metrics
                .worker_push_duration
                .with_label_values(&[result.label()])
                .observe(started.elapsed().as_secs_f64());
            let (wait, reason) = match result.next() {
                Next::Ack => {
                    self.health.set(true);
                    self.metrics
                        .job_run
                        .observe(started.elapsed().as_secs_f64());
                    return (Pushed::Done, result, pushes);
                }
                Next::Poison => {
                    self.health.set(true);
                    return (Pushed::Refused, result, pushes);
                }
                Next::Later(hint) => {
                    self.health.set(false);
                    let wait =
                        hint.map_or_else(|| backoff.next_delay(), |d| d.min(self.max_backoff));
                    (wait, RetryReason::Unavailable)
                }
                Next::Retry => {
                    self.health.set(false);
                    let since = *failing_since.get_or_insert(started);
                    let wait = backoff.next_delay();
                    // Give up once the next push would start past the window.
                    if since.elapsed() + wait > self.retry_window {
                        self.health.probe();
                        return (Pushed::Failed, result, pushes);
                    }
                    (wait, RetryReason::Failed)
                }
            };
            self.metrics
                .push_retries
                .with_label_values(&[reason.label()])
                .inc();
            debug!(worker = ?result, ?wait, "push not settled; retrying");
            tokio::select! {
                () = stop.cancelled() => return (Pushed::Stopped, result, pushes),
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Dead-letters a delivery that is not a valid job, without pushing it.
    async fn dead_letter_malformed(
        &self,
        channel: &Channel,
        delivery: Delivery,
        reason: Malformed,
    ) {
        self.metrics
            .malformed_jobs
            .with_label_values(&[reason.label()])
            .inc();
        // Debug formatting escapes whatever the publisher put in the id.
        let message_id = delivery
            .properties
            .message_id()
            .as_ref()
            .map(|m| m.as_str().to_owned());
        warn!(
            message_id = ?message_id,
            reason = reason.label(),
            bytes = delivery.data.len(),
            "not a valid job; dead-lettered without a push"
        );
        let dead = DeadLetter {
            reason: DeadReason::Malformed(reason),
            worker_answer: None,
            deliveries: previous_deliveries(&delivery) + 1,
            pushes: 0,
        };
        self.settle(channel, &delivery, Settle::DeadLetter(dead))
            .await;
    }
}

/// One ack, reject or requeue, bounded by [`SETTLE_TIMEOUT`].
async fn bounded<T>(settling: impl Future<Output = Result<T, lapin::Error>>) -> Result<(), String> {
    match tokio::time::timeout(SETTLE_TIMEOUT, settling).await {
        Ok(settled) => settled.map(drop).map_err(|e| e.to_string()),
        Err(_) => Err(format!("no word from the channel in {SETTLE_TIMEOUT:?}")),
    }
}

/// The HTTP client for pushes to the worker. Built before the bridge starts,
/// so that a failure is a start-up error rather than a silent default.
pub fn worker_client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        // A redirect from the worker means a wrong URL; don't follow it.
        .redirect(reqwest::redirect::Policy::none())
        // Loopback: keep connections to the worker alive and skip Nagle,
        // and never go through a proxy from the environment.
        .no_proxy()
        .tcp_nodelay(true)
        .build()
}

/// What `/readyz` reads of the consume role.
#[derive(Clone)]
pub struct ConsumeStatus {
    consuming: Arc<AtomicBool>,
    worker: WorkerHealth,
}

impl ConsumeStatus {
    /// `Ok` while subscribed and the worker takes work, else why not.
    pub fn check(&self) -> Result<(), &'static str> {
        if !self.consuming.load(Ordering::SeqCst) {
            return Err("the consumer is not subscribed");
        }
        if !self.worker.is_up() {
            return Err("the worker can't take work; consumption is paused");
        }
        Ok(())
    }
}

/// The consume role.
pub struct ConsumeRole {
    runner: Arc<JobRunner>,
    topology: Topology,
    sessions: SessionWatch,
    consuming: Arc<AtomicBool>,
    grace: Duration,
}

impl ConsumeRole {
    /// The role for this config, pushing with `client` (see
    /// [`worker_client`]) and consuming on whatever session is current.
    pub fn new(
        config: &Config,
        client: reqwest::Client,
        sessions: SessionWatch,
        metrics: Metrics,
    ) -> Self {
        Self {
            runner: Arc::new(JobRunner {
                queue: config.queue.clone(),
                dead_letter_exchange: config.dead_letter_exchange(),
                delivery_limit: config.delivery_limit.into(),
                url: config.worker_url.clone(),
                timeout: config.job_timeout,
                retry_window: config.push_retry_window,
                max_backoff: config.push_max_backoff,
                prefetch: config.concurrency,
                client,
                health: WorkerHealth::new(metrics.clone()),
                metrics,
            }),
            topology: Topology::from_config(config),
            sessions,
            consuming: Arc::new(AtomicBool::new(false)),
            grace: config.shutdown_grace,
        }
    }

    /// What `/readyz` reads: subscribed, and the worker taking work.
    pub fn status(&self) -> ConsumeStatus {
        ConsumeStatus {
            consuming: self.consuming.clone(),
            worker: self.runner.health.clone(),
        }
    }

    /// Consumes until `stop` is cancelled, resubscribing after every lost
    /// session; then drains.
    ///
    /// The stop sequence is the one Kubernetes scale-down needs: cancel the
    /// consumer so that no new deliveries arrive, let in-flight jobs finish
    /// and be acked within the grace period, then close the channel. Work
    /// still running at the deadline is abandoned unacked, and the broker
    /// requeues it when the connection closes.
    pub async fn run(self, stop: CancellationToken) {
        let tracker = TaskTracker::new();
        let mut sessions = self.sessions.clone();
        let mut last_channel = None;
        let mut backoff = Backoff::new(RESUBSCRIBE_BACKOFF_BASE, RESUBSCRIBE_BACKOFF_MAX);
        while let Some(session) = current_session(&mut sessions, &stop).await {
            match self
                .consume_on(&session, &tracker, &stop, &mut backoff)
                .await
            {
                Ok(channel) => {
                    last_channel = Some(channel);
                    break;
                }
                Err(e) => {
                    self.consuming.store(false, Ordering::SeqCst);
                    let delay = backoff.next_delay();
                    warn!(error = %e, ?delay, "consumer stopped; resubscribing");
                    // Resubscribe on a new session, or on this one after a
                    // backoff: the connection may be fine while the queue
                    // was deleted (subscribing declares it again).
                    tokio::select! {
                        () = stop.cancelled() => break,
                        _ = sessions.changed() => {}
                        () = tokio::time::sleep(delay) => {}
                    }
                    continue;
                }
            }
        }
        self.consuming.store(false, Ordering::SeqCst);
        tracker.close();
        let in_flight = tracker.len();
        match tokio::time::timeout(self.grace, tracker.wait()).await {
            Ok(()) => info!(in_flight, "consumer drained"),
            Err(_) => warn!(
                grace = ?self.grace,
                "drain deadline passed; unacked jobs return to the queue"
            ),
        }
        if let Some(channel) = last_channel
            && let Err(e) = bounded(channel.close(REPLY_SUCCESS, "drained".into())).await
        {
            debug!(error = %e, "closing the consumer channel");
        }
    }

    /// Subscribes on one session and spawns a task per delivery until `stop`
    /// (returning the channel, still open for the in-flight acks) or an error.
    async fn consume_on(
        &self,
        session: &Session,
        tracker: &TaskTracker,
        stop: &CancellationToken,
        backoff: &mut Backoff,
    ) -> Result<Channel, ConsumeError> {
        let (channel, mut consumer) = self.subscribe(session).await?;
        self.consuming.store(true, Ordering::SeqCst);
        backoff.reset();
        info!(queue = %self.runner.queue, prefetch = self.runner.prefetch, "consuming");
        loop {
            // Paused while the worker can't take work: new deliveries wait in
            // the queue, visible to the autoscaler and to other pods, and the
            // held ones (at most the prefetch) are retried in place.
            if !self.runner.health.is_up() {
                tokio::select! {
                    biased;
                    () = stop.cancelled() => break,
                    () = self.runner.health.wait_up() => {}
                }
            }
            tokio::select! {
                // Prefer stopping: after cancellation no new job starts.
                biased;
                () = stop.cancelled() => break,
                delivery = consumer.next() => match delivery {
                    Some(Ok(delivery)) => {
                        let runner = self.runner.clone();
                        let stop = stop.clone();
                        let channel = channel.clone();
                        tracker.spawn(async move { runner.handle(channel, delivery, stop).await });
                    }
                    Some(Err(e)) => return Err(ConsumeError::Stream(e)),
                    None => return Err(ConsumeError::Ended),
                },
            }
        }
        self.consuming.store(false, Ordering::SeqCst);
        if let Err(e) =
            bounded(channel.basic_cancel(consumer.tag(), BasicCancelOptions::default())).await
        {
            warn!(error = %e, "could not cancel the consumer");
        }
        // Deliveries that arrived before the cancel but were not started go
        // straight back to the queue: a stopping bridge starts no new work.
        while let Ok(Some(Ok(delivery))) =
            tokio::time::timeout(SHUTDOWN_SWEEP, consumer.next()).await
        {
            debug!("requeueing a delivery that arrived during shutdown");
            let requeue = BasicNackOptions {
                requeue: true,
                ..BasicNackOptions::default()
            };
            if let Err(e) = bounded(delivery.acker.nack(requeue)).await {
                debug!(error = %e, "requeueing at shutdown; the broker requeues it on close");
            }
        }
        Ok(channel)
    }

    /// Opens a channel and subscribes on it, each part bounded: a broker
    /// that accepted the connection and then went quiet (a node without
    /// quorum, say) must not hold the consumer here; the resubscribe loop
    /// retries.
    async fn subscribe(&self, session: &Session) -> Result<(Channel, Consumer), ConsumeError> {
        let timed_out = || ConsumeError::SubscribeTimeout(SUBSCRIBE_TIMEOUT);
        let channel = tokio::time::timeout(SUBSCRIBE_TIMEOUT, session.connection.create_channel())
            .await
            .map_err(|_| timed_out())?
            .map_err(ConsumeError::Subscribe)?;
        match tokio::time::timeout(SUBSCRIBE_TIMEOUT, self.subscribe_on(&channel)).await {
            Ok(Ok(consumer)) => Ok((channel, consumer)),
            failed => {
                // A step that got no answer may still complete on the
                // broker, and a consumer left on an abandoned channel would
                // hold its prefetch of jobs unacked for as long as the
                // connection lives (seen in the cluster test: 4 jobs). The
                // close goes after it on the same channel, so the broker
                // cancels that consumer and requeues what it holds.
                if let Err(e) =
                    bounded(channel.close(REPLY_SUCCESS, "subscribe failed".into())).await
                {
                    debug!(error = %e, "closing a channel whose subscribe failed");
                }
                Err(failed.map_or_else(|_| timed_out(), |r| r.err().unwrap_or_else(timed_out)))
            }
        }
    }

    /// Declares, sets the prefetch and confirms, and subscribes on `channel`.
    async fn subscribe_on(&self, channel: &Channel) -> Result<Consumer, ConsumeError> {
        // Idempotent, and it brings back a queue deleted under a running
        // consumer, which would otherwise leave this bridge idle for good.
        self.topology
            .declare(channel)
            .await
            .map_err(ConsumeError::Subscribe)?;
        // Prefetch = concurrency: the broker never hands this bridge more
        // jobs than it works on, so the rest stay ready for other pods (and
        // visible to the autoscaler as queue length).
        channel
            .basic_qos(self.runner.prefetch, BasicQosOptions::default())
            .await
            .map_err(ConsumeError::Subscribe)?;
        // Confirms, for the dead-letter copies published on this channel.
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(ConsumeError::Subscribe)?;
        channel
            .basic_consume(
                self.runner.queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(ConsumeError::Subscribe)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answered(status: u16, retry_after: Option<u64>) -> PushResult {
        PushResult::Answered {
            status,
            retry_after,
        }
    }

    #[test]
    fn worker_answers_map_to_what_happens_next() {
        use Next::*;
        let cases = [
            (answered(200, None), Ack, "2xx"),
            (answered(204, None), Ack, "2xx"),
            (answered(400, None), Poison, "4xx"),
            (answered(422, None), Poison, "4xx"),
            (answered(408, None), Later(None), "4xx"),
            (
                answered(429, Some(3)),
                Later(Some(Duration::from_secs(3))),
                "4xx",
            ),
            (answered(503, None), Later(None), "5xx"),
            (answered(500, None), Retry, "5xx"),
            (answered(302, None), Retry, "other"),
            (PushResult::Timeout, Retry, "timeout"),
            (
                PushResult::Unreachable("refused".into()),
                Later(None),
                "unreachable",
            ),
            (PushResult::Broken("cut short".into()), Retry, "broken"),
        ];
        for (result, next, label) in cases {
            assert_eq!(result.next(), next, "{result:?}");
            assert_eq!(result.label(), label, "{result:?}");
        }
    }
}
