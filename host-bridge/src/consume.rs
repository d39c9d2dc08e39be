//! The consume role: deliveries from the queue, pushed one by one to the
//! worker component over HTTP, acknowledged by the worker's answer.
//!
//! | worker answer                  | action                               |
//! |--------------------------------|--------------------------------------|
//! | 2xx                            | ack                                  |
//! | 4xx                            | reject, no requeue: to `<queue>.dead` |
//! | 5xx, timeout, connection error | nack with requeue                    |
//!
//! Repeated requeues are bounded by the quorum queue's delivery limit, after
//! which the broker dead-letters the job. This module owns the consumer
//! channel and its graceful stop; the connection belongs to `broker`.

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
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::broker::{Backoff, Session, SessionWatch, Topology, current_session};
use crate::config::Config;
use crate::metrics::{JobOutcome, Metrics};

/// What the worker said about one job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushResult {
    /// The worker answered with this status.
    Status(u16),
    /// No answer within the job timeout.
    Timeout,
    /// The request failed: refused connection, reset, bad URL.
    Error(String),
}

impl PushResult {
    /// What to do with the delivery.
    pub fn action(&self) -> JobOutcome {
        match self {
            PushResult::Status(s) if (200..300).contains(s) => JobOutcome::Acked,
            // A 4xx is the job's fault and will not get better: dead-letter it now.
            PushResult::Status(s) if (400..500).contains(s) => JobOutcome::DeadLettered,
            // Requeue rather than reject: a 5xx or a timeout is the worker's
            // trouble, not the job's. The queue's delivery limit moves the job
            // to the dead-letter queue if it keeps failing.
            _ => JobOutcome::Requeued,
        }
    }

    /// The `result` label of `worker_push_duration_seconds`.
    pub fn label(&self) -> &'static str {
        match self {
            PushResult::Status(s) => match s / 100 {
                2 => "2xx",
                4 => "4xx",
                5 => "5xx",
                _ => "other",
            },
            PushResult::Timeout => "timeout",
            PushResult::Error(_) => "error",
        }
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

/// Pushes deliveries to the worker.
pub struct Worker {
    queue: String,
    delivery_limit: u64,
    url: String,
    timeout: Duration,
    prefetch: u16,
    client: reqwest::Client,
    metrics: Metrics,
}

impl Worker {
    /// Sends one job to the worker and reports its answer.
    pub async fn push(&self, id: &str, body: Vec<u8>) -> PushResult {
        let request = self
            .client
            .post(&self.url)
            .header("content-type", "application/json")
            .header("x-job-id", id)
            .timeout(self.timeout)
            .body(body);
        match request.send().await {
            Ok(response) => PushResult::Status(response.status().as_u16()),
            Err(e) if e.is_timeout() => PushResult::Timeout,
            Err(e) => PushResult::Error(e.to_string()),
        }
    }

    /// Handles one delivery from push to acknowledgement.
    async fn handle(&self, delivery: Delivery) {
        let id = delivery
            .properties
            .message_id()
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default();
        let previous = previous_deliveries(&delivery);
        let span = info_span!("job", %id, delivery = previous + 1);
        async {
            let _timer = self.metrics.job_started(&self.queue);
            let started = Instant::now();
            let result = self.push(&id, delivery.data).await;
            self.metrics
                .worker_push_duration
                .with_label_values(&[result.label()])
                .observe(started.elapsed().as_secs_f64());
            let action = result.action();
            let acked = match action {
                JobOutcome::Acked => delivery.acker.ack(BasicAckOptions::default()).await,
                JobOutcome::DeadLettered => {
                    delivery
                        .acker
                        .reject(BasicRejectOptions { requeue: false })
                        .await
                }
                JobOutcome::Requeued => {
                    delivery
                        .acker
                        .nack(BasicNackOptions {
                            requeue: true,
                            ..BasicNackOptions::default()
                        })
                        .await
                }
            };
            // A requeue of a delivery that has used up the queue's delivery
            // limit is the broker's cue to dead-letter it: count it as such.
            let outcome = if action == JobOutcome::Requeued && previous >= self.delivery_limit {
                JobOutcome::DeadLettered
            } else {
                action
            };
            match acked {
                Ok(_) => {
                    self.metrics.job_done(&self.queue, outcome);
                    info!(
                        outcome = outcome.label(),
                        worker = ?result,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "job done"
                    );
                }
                // The channel is gone; the broker requeues the delivery itself.
                Err(e) => {
                    self.metrics
                        .ack_failures
                        .with_label_values(&[&self.queue])
                        .inc();
                    warn!(error = %e, outcome = outcome.label(), "could not settle the delivery; the broker will requeue it");
                }
            }
        }
        .instrument(span)
        .await
    }
}

/// The consume role.
pub struct ConsumeRole {
    worker: Arc<Worker>,
    topology: Topology,
    sessions: SessionWatch,
    consuming: Arc<AtomicBool>,
    grace: Duration,
}

impl ConsumeRole {
    /// The role for this config, consuming on whatever session is current.
    pub fn new(config: &Config, sessions: SessionWatch, metrics: Metrics) -> Self {
        let client = reqwest::Client::builder()
            // A redirect from the worker means a wrong URL; don't follow it.
            .redirect(reqwest::redirect::Policy::none())
            // Loopback: keep connections to the worker alive and skip Nagle.
            .tcp_nodelay(true)
            .build()
            .unwrap_or_default();
        Self {
            worker: Arc::new(Worker {
                queue: config.queue.clone(),
                delivery_limit: config.delivery_limit.into(),
                url: config.worker_url.clone(),
                timeout: config.job_timeout,
                prefetch: config.concurrency,
                client,
                metrics,
            }),
            topology: Topology::from_config(config),
            sessions,
            consuming: Arc::new(AtomicBool::new(false)),
            grace: config.shutdown_grace,
        }
    }

    /// A flag that is true while a consumer is subscribed, for /readyz.
    pub fn consuming(&self) -> Arc<AtomicBool> {
        self.consuming.clone()
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
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
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
            let _ = channel.close(200, "drained".into()).await;
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
        info!(queue = %self.worker.queue, prefetch = self.worker.prefetch, "consuming");
        loop {
            tokio::select! {
                // Prefer stopping: after cancellation no new job starts.
                biased;
                () = stop.cancelled() => break,
                delivery = consumer.next() => match delivery {
                    Some(Ok(delivery)) => {
                        let worker = self.worker.clone();
                        tracker.spawn(async move { worker.handle(delivery).await });
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
            tokio::time::timeout(Duration::from_millis(50), consumer.next()).await
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
            .basic_qos(self.worker.prefetch, BasicQosOptions::default())
            .await
            .map_err(ConsumeError::Subscribe)?;
        let consumer = channel
            .basic_consume(
                self.worker.queue.as_str().into(),
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

    #[test]
    fn worker_answers_map_to_actions() {
        use JobOutcome::*;
        let cases = [
            (PushResult::Status(200), Acked, "2xx"),
            (PushResult::Status(204), Acked, "2xx"),
            (PushResult::Status(400), DeadLettered, "4xx"),
            (PushResult::Status(422), DeadLettered, "4xx"),
            (PushResult::Status(500), Requeued, "5xx"),
            (PushResult::Status(503), Requeued, "5xx"),
            (PushResult::Status(302), Requeued, "other"),
            (PushResult::Timeout, Requeued, "timeout"),
            (PushResult::Error("refused".into()), Requeued, "error"),
        ];
        for (result, action, label) in cases {
            assert_eq!(result.action(), action, "{result:?}");
            assert_eq!(result.label(), label, "{result:?}");
        }
    }
}
