//! The consume role: deliveries from the queue, pushed one by one to the
//! worker component over HTTP, acknowledged by the worker's whole answer.
//!
//! | worker answer | action |
//! |---|---|
//! | 2xx, body complete | ack |
//! | 408, 429, 503; connection refused | "later": hold the job, pause consuming, push again after `Retry-After` or a backoff; spends no delivery |
//! | other 4xx | reject, no requeue: to `<queue>.dead` |
//! | other 5xx, timeout, an answer cut short | retry in place with backoff (`--push-retries`), then nack with requeue |
//!
//! Requeues are bounded by the quorum queue's delivery limit, after which the
//! broker dead-letters the job. A delivery that is not a valid job is
//! dead-lettered unpushed, its reason counted. This module owns the consumer
//! channel, the worker's health and the graceful stop; the connection
//! belongs to `broker`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    BasicRejectOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Consumer};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::broker::{Backoff, REPLY_SUCCESS, Session, SessionWatch, Topology, current_session};
use crate::config::Config;
use crate::metrics::{JobOutcome, Metrics};

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
    /// The push failed: retry in place, then requeue.
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
            // A 5xx, a timeout or a broken answer is the worker's trouble,
            // not the job's; the delivery limit bounds a job that keeps failing.
            _ => Next::Retry,
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

/// How a delivery was settled with the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settle {
    Ack,
    Reject,
    Requeue,
}

impl Settle {
    /// The job's outcome: a requeue of a delivery that has used up the
    /// queue's delivery limit is the broker's cue to dead-letter it.
    fn outcome(self, previous_deliveries: u64, delivery_limit: u64) -> JobOutcome {
        match self {
            Settle::Ack => JobOutcome::Acked,
            Settle::Reject => JobOutcome::DeadLettered,
            Settle::Requeue if previous_deliveries >= delivery_limit => JobOutcome::DeadLettered,
            Settle::Requeue => JobOutcome::Requeued,
        }
    }
}

/// Runs each delivery as a job, from its check to its settlement: pushes it
/// to the worker (retrying in place), then acks, rejects or requeues it with
/// the broker. It holds what that takes: the worker's URL and client, the
/// queue's name, delivery limit and prefetch.
pub struct JobRunner {
    queue: String,
    delivery_limit: u64,
    url: String,
    timeout: Duration,
    retries: u32,
    max_backoff: Duration,
    prefetch: u16,
    client: reqwest::Client,
    health: WorkerHealth,
    metrics: Metrics,
}

impl JobRunner {
    /// Sends one job to the worker and reads its whole answer.
    pub async fn push(&self, body: &[u8]) -> PushResult {
        let request = self
            .client
            .post(&self.url)
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
        loop {
            match response.chunk().await {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) if e.is_timeout() => return PushResult::Timeout,
                Err(e) => return PushResult::Broken(e.to_string()),
            }
        }
        PushResult::Answered {
            status,
            retry_after,
        }
    }

    /// Handles one delivery from its check to its settlement.
    async fn handle(&self, delivery: Delivery, stop: CancellationToken) {
        let previous = previous_deliveries(&delivery);
        let id = match check_delivery(&delivery) {
            Ok(id) => id,
            Err(reason) => return self.dead_letter_malformed(delivery, reason).await,
        };
        // The id passed `job::validate_id`: safe to log as it is.
        let span = info_span!("job", %id, delivery = previous + 1);
        async {
            let _timer = self.metrics.job_started();
            let started = Instant::now();
            let (settle, result) = self.push_until_settled(&delivery.data, &stop).await;
            let outcome = settle.outcome(previous, self.delivery_limit);
            if self.settle(&delivery, settle, outcome).await {
                info!(
                    outcome = outcome.label(),
                    worker = ?result,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "job done"
                );
            }
        }
        .instrument(span)
        .await
    }

    /// Acks, rejects or requeues `delivery` and counts `outcome`; `false`
    /// if the channel is gone (the broker then requeues it itself, and the
    /// failure is counted instead).
    async fn settle(&self, delivery: &Delivery, settle: Settle, outcome: JobOutcome) -> bool {
        let settling = async {
            match settle {
                Settle::Ack => delivery.acker.ack(BasicAckOptions::default()).await,
                Settle::Reject => {
                    delivery
                        .acker
                        .reject(BasicRejectOptions { requeue: false })
                        .await
                }
                Settle::Requeue => {
                    delivery
                        .acker
                        .nack(BasicNackOptions {
                            requeue: true,
                            ..BasicNackOptions::default()
                        })
                        .await
                }
            }
        };
        let settled = match tokio::time::timeout(SETTLE_TIMEOUT, settling).await {
            Ok(settled) => settled.map_err(|e| e.to_string()),
            Err(_) => Err(format!("no word from the channel in {SETTLE_TIMEOUT:?}")),
        };
        match settled {
            Ok(_) => {
                self.metrics.job_done(&self.queue, outcome);
                true
            }
            Err(e) => {
                self.metrics
                    .ack_failures
                    .with_label_values(&[&self.queue])
                    .inc();
                warn!(error = %e, outcome = outcome.label(), "could not settle the delivery; the broker will requeue it");
                false
            }
        }
    }

    /// Pushes until the worker gives an answer that settles the delivery,
    /// retrying in place: without limit while the worker can't take work
    /// (no delivery is spent on an absent worker), `retries` times after a
    /// failed push. Gives up (requeue) when `stop` is cancelled while waiting.
    async fn push_until_settled(
        &self,
        body: &[u8],
        stop: &CancellationToken,
    ) -> (Settle, PushResult) {
        let mut backoff = Backoff::new(PUSH_BACKOFF_BASE, self.max_backoff);
        let mut failures = 0;
        loop {
            let started = Instant::now();
            let result = self.push(body).await;
            self.metrics
                .worker_push_duration
                .with_label_values(&[result.label()])
                .observe(started.elapsed().as_secs_f64());
            let wait = match result.next() {
                Next::Ack => {
                    self.health.set(true);
                    return (Settle::Ack, result);
                }
                Next::Poison => {
                    self.health.set(true);
                    return (Settle::Reject, result);
                }
                Next::Later(hint) => {
                    self.health.set(false);
                    self.metrics
                        .push_retries
                        .with_label_values(&["unavailable"])
                        .inc();
                    hint.map_or_else(|| backoff.next_delay(), |d| d.min(self.max_backoff))
                }
                Next::Retry => {
                    if matches!(result, PushResult::Answered { .. }) {
                        self.health.set(true);
                    }
                    failures += 1;
                    if failures > self.retries {
                        return (Settle::Requeue, result);
                    }
                    self.metrics
                        .push_retries
                        .with_label_values(&["failed"])
                        .inc();
                    backoff.next_delay()
                }
            };
            debug!(worker = ?result, ?wait, "push not settled; retrying");
            tokio::select! {
                () = stop.cancelled() => return (Settle::Requeue, result),
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Dead-letters a delivery that is not a valid job, without pushing it.
    async fn dead_letter_malformed(&self, delivery: Delivery, reason: Malformed) {
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
        self.settle(&delivery, Settle::Reject, JobOutcome::DeadLettered)
            .await;
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
                delivery_limit: config.delivery_limit.into(),
                url: config.worker_url.clone(),
                timeout: config.job_timeout,
                retries: config.push_retries,
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
        if let Some(channel) = last_channel {
            let _ = channel.close(REPLY_SUCCESS, "drained".into()).await;
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
                        tracker.spawn(async move { runner.handle(delivery, stop).await });
                    }
                    Some(Err(e)) => return Err(ConsumeError::Stream(e)),
                    None => return Err(ConsumeError::Ended),
                },
            }
        }
        self.consuming.store(false, Ordering::SeqCst);
        if let Err(e) = channel
            .basic_cancel(consumer.tag(), BasicCancelOptions::default())
            .await
        {
            warn!(error = %e, "could not cancel the consumer");
        }
        // Deliveries that arrived before the cancel but were not started go
        // straight back to the queue: a stopping bridge starts no new work.
        while let Ok(Some(Ok(delivery))) =
            tokio::time::timeout(SHUTDOWN_SWEEP, consumer.next()).await
        {
            debug!("requeueing a delivery that arrived during shutdown");
            let _ = delivery
                .acker
                .nack(BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                })
                .await;
        }
        Ok(channel)
    }

    async fn subscribe(&self, session: &Session) -> Result<(Channel, Consumer), ConsumeError> {
        let channel = session
            .connection
            .create_channel()
            .await
            .map_err(ConsumeError::Subscribe)?;
        // Idempotent, and it brings back a queue deleted under a running
        // consumer, which would otherwise leave this bridge idle for good.
        self.topology
            .declare(&channel)
            .await
            .map_err(ConsumeError::Subscribe)?;
        // Prefetch = concurrency: the broker never hands this bridge more
        // jobs than it works on, so the rest stay ready for other pods (and
        // visible to the autoscaler as queue length).
        channel
            .basic_qos(self.runner.prefetch, BasicQosOptions::default())
            .await
            .map_err(ConsumeError::Subscribe)?;
        let consumer = channel
            .basic_consume(
                self.runner.queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(ConsumeError::Subscribe)?;
        Ok((channel, consumer))
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
