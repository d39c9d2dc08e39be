//! Metric definitions: one registry, one `host_bridge_` prefix, labels from
//! closed sets.
//!
//! This module defines and encodes metrics. Modules that do the work record
//! into them; serving `/metrics` belongs to `admin`.

use std::time::Instant;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The prefix of every metric this process exports.
pub const PREFIX: &str = "host_bridge";

/// How one publish ended. The label values of `published_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishOutcome {
    /// The broker confirmed the message: it is durably queued.
    Confirmed,
    /// The broker nacked it, e.g. the queue is full (`reject-publish`).
    Rejected,
    /// The broker returned it as unroutable (mandatory flag): no such queue.
    Unroutable,
    /// The bridge did not send it (disconnected, blocked, stalled, full,
    /// deadline too close): certainly not queued.
    Refused,
    /// Sent, but no verdict in time or the connection died first: the
    /// caller was told `504 outcome_unknown`.
    Unknown,
}

impl PublishOutcome {
    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            PublishOutcome::Confirmed => "confirmed",
            PublishOutcome::Rejected => "rejected",
            PublishOutcome::Unroutable => "unroutable",
            PublishOutcome::Refused => "refused",
            PublishOutcome::Unknown => "unknown",
        }
    }
}

/// What the consumer did with a delivery. The label values of
/// `jobs_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobOutcome {
    /// The worker succeeded and the delivery was acked.
    Acked,
    /// The worker failed transiently; the delivery went back to the queue.
    Requeued,
    /// The job went to the dead-letter queue: the worker refused it as bad
    /// input (4xx), or a failed delivery used up the queue's delivery limit.
    DeadLettered,
}

impl JobOutcome {
    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            JobOutcome::Acked => "acked",
            JobOutcome::Requeued => "requeued",
            JobOutcome::DeadLettered => "dead_lettered",
        }
    }
}

/// Why a push was retried in place. The label values of
/// `push_retries_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryReason {
    /// The worker could not take work ("later": unreachable, 408, 429, 503).
    Unavailable,
    /// The worker failed (5xx, 3xx, a timeout, a reset, a cut-off answer).
    Failed,
}

impl RetryReason {
    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            RetryReason::Unavailable => "unavailable",
            RetryReason::Failed => "failed",
        }
    }
}

/// How the ingress role dealt with one client request. The label values of
/// `ingress_requests_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngressOutcome {
    /// The component answered; its answer was relayed as it was.
    Forwarded,
    /// Refused before forwarding: too many requests in progress.
    Overloaded,
    /// Refused before forwarding: the body was too large, too slow or
    /// unreadable.
    Refused,
    /// The component could not be reached: nothing was delivered.
    ProducerUnavailable,
    /// Delivered, but no whole answer came back: the client was told
    /// `504 outcome_unknown`.
    OutcomeUnknown,
}

impl IngressOutcome {
    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            IngressOutcome::Forwarded => "forwarded",
            IngressOutcome::Overloaded => "overloaded",
            IngressOutcome::Refused => "refused",
            IngressOutcome::ProducerUnavailable => "producer_unavailable",
            IngressOutcome::OutcomeUnknown => "outcome_unknown",
        }
    }
}

/// Defines each family and registers it in one step, so that a family can
/// be neither defined without registering nor registered twice. The names
/// and labels are this module's own constants: a failure is a bug, caught
/// by the first test that builds [`Metrics`].
struct Define<'a>(&'a Registry);

impl Define<'_> {
    fn register<C: prometheus::core::Collector + Clone + 'static>(&self, family: C) -> C {
        self.0
            .register(Box::new(family.clone()))
            .expect("each metric is valid and registered once");
        family
    }

    fn counter(&self, name: &str, help: &str) -> IntCounter {
        self.register(IntCounter::new(name, help).expect("valid metric"))
    }

    fn counters(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.register(IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"))
    }

    fn gauge(&self, name: &str, help: &str) -> IntGauge {
        self.register(IntGauge::new(name, help).expect("valid metric"))
    }

    fn gauges(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        self.register(IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"))
    }

    fn histogram(&self, name: &str, help: &str, buckets: &[f64]) -> Histogram {
        let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
        self.register(Histogram::with_opts(opts).expect("valid metric"))
    }

    fn histograms(&self, name: &str, help: &str, buckets: &[f64], labels: &[&str]) -> HistogramVec {
        let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
        self.register(HistogramVec::new(opts, labels).expect("valid metric"))
    }
}

/// Every metric host-bridge exports.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Publishes, by queue and outcome.
    pub published: IntCounterVec,
    /// Consumed jobs, by queue and outcome.
    pub jobs: IntCounterVec,
    /// Publishes never sent to the broker, by why (the error code the
    /// caller got): a breakdown of `published_total{outcome="refused"}`.
    pub publish_refusals: IntCounterVec,
    /// Verdicts that arrived after the caller got `504 outcome_unknown`:
    /// `confirmed` (queued after all), `refused`, `lost` (no verdict ever).
    pub publish_late_verdicts: IntCounterVec,
    /// Deliveries dead-lettered unpushed because they are not a valid job,
    /// by reason (`invalid_job`, `id_mismatch`).
    pub malformed_jobs: IntCounterVec,
    /// Pushes retried in place, by why (`unavailable`: the worker could not
    /// take work; `failed`: the push failed).
    pub push_retries: IntCounterVec,
    /// 1 while the worker takes work; 0 while it is unreachable or says
    /// "later", and consumption is paused.
    pub worker_up: IntGauge,
    /// Time from receiving a publish request to the broker's verdict (or
    /// to `504`), for publishes sent to the broker; refusals are not timed.
    pub publish_duration: Histogram,
    /// Time from delivery to acknowledgement.
    pub job_duration: Histogram,
    /// How long each job waited in the queue: from its publish (the
    /// `x-published-at-ms` header the publish API sets) to its first push
    /// to a worker. First deliveries only; a job without the header, or
    /// published by a clock ahead of this one, is clamped or skipped (see
    /// `consume`).
    pub job_queue_wait: Histogram,
    /// How long the worker took over the push it answered with success.
    pub job_run: Histogram,
    /// From publish to ack: what the job's submitter waited in all.
    pub job_end_to_end: Histogram,
    /// Jobs being worked on by this bridge now.
    pub jobs_in_flight: IntGauge,
    /// Ready messages in the queue, from a passive declare: queue-wide, so
    /// every bridge reports the same figure (combine with `max`, never
    /// `sum`). What this bridge holds unacked is `jobs_in_flight`.
    pub queue_ready: IntGaugeVec,
    /// Acks, nacks or rejects that failed (the broker requeues those itself).
    pub ack_failures: IntCounterVec,
    /// 1 while an AMQP connection is open.
    pub broker_up: IntGauge,
    /// 1 for the configured broker (`host:port`) the connection is on now,
    /// 0 for the others.
    pub broker_connected: IntGaugeVec,
    /// Connections opened after the first.
    pub reconnects: IntCounter,
    /// Requests the producer component received, by route and method.
    pub producer_requests: IntCounterVec,
    /// Answers the producer component gave, by route and status.
    pub producer_responses: IntCounterVec,
    /// Client requests the ingress role took, by outcome.
    pub ingress_requests: IntCounterVec,
    /// Connections closed at the connection cap for a newer one, by
    /// listener (`publish`, `ingress`, `admin`): each had no request in
    /// service (never a whole head, or idle between requests).
    pub connections_shed: IntCounterVec,
    /// Pushes to the worker, by worker answer class (`2xx`, `4xx`, `5xx`,
    /// `timeout`, `error`) and how long they took.
    pub worker_push_duration: HistogramVec,
}

// Jobs take about 5 s, but the bridge's own overhead per job is around a
// millisecond: the low buckets make that visible (docs/BENCHMARKS.md).
const JOB_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 7.5, 10.0, 30.0,
    60.0,
];
// Waits in the queue run from nothing (an idle fleet) to many minutes (a
// backlog the autoscaler is still catching up with).
const WAIT_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
];
const PUBLISH_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

impl Metrics {
    /// Creates the metrics in a fresh registry. Each bridge owns its own, so
    /// that tests running several in one process don't share counts.
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some(PREFIX.to_owned()), None)
            .expect("a static prefix is a valid registry prefix");
        let d = Define(&registry);
        Self {
            published: d.counters("published_total", "Publishes, by outcome.", &["queue", "outcome"]),
            jobs: d.counters("jobs_total", "Consumed jobs, by outcome.", &["queue", "outcome"]),
            publish_refusals: d.counters(
                "publish_refusals_total",
                "Publishes never sent to the broker, by why: a breakdown of published_total{outcome=\"refused\"}.",
                &["reason"],
            ),
            publish_late_verdicts: d.counters(
                "publish_late_verdicts_total",
                "Broker verdicts that arrived after the caller was told outcome_unknown.",
                &["verdict"],
            ),
            malformed_jobs: d.counters(
                "malformed_jobs_total",
                "Deliveries dead-lettered without a push because they are not a valid job.",
                &["reason"],
            ),
            push_retries: d.counters(
                "push_retries_total",
                "Pushes to the worker retried in place, by why.",
                &["reason"],
            ),
            worker_up: d.gauge(
                "worker_up",
                "1 while the worker takes work; 0 while consumption is paused for it.",
            ),
            publish_duration: d.histogram(
                "publish_duration_seconds",
                "Time from a publish request to the broker's verdict, for publishes sent to it (refusals are not timed).",
                PUBLISH_BUCKETS,
            ),
            job_duration: d.histogram(
                "job_duration_seconds",
                "Time from delivery to acknowledgement.",
                JOB_BUCKETS,
            ),
            job_queue_wait: d.histogram(
                "job_queue_wait_seconds",
                "Time from a job's publish to its first push to a worker (first deliveries).",
                WAIT_BUCKETS,
            ),
            job_run: d.histogram(
                "job_run_seconds",
                "Time the worker took over the push it answered with success.",
                JOB_BUCKETS,
            ),
            job_end_to_end: d.histogram(
                "job_end_to_end_seconds",
                "Time from a job's publish to its ack.",
                WAIT_BUCKETS,
            ),
            jobs_in_flight: d.gauge("jobs_in_flight", "Jobs in progress in this bridge."),
            queue_ready: d.gauges(
                "queue_ready_messages",
                "Ready messages in the queue (queue-wide, from a passive declare): combine with max; absent while unreadable.",
                &["queue"],
            ),
            ack_failures: d.counters(
                "ack_failures_total",
                "Acks, requeues or dead-letterings with no answer from the channel in time (outcome unknown).",
                &["queue"],
            ),
            broker_up: d.gauge(
                "broker_up",
                "1 while every AMQP connection this bridge needs is open.",
            ),
            broker_connected: d.gauges(
                "broker_connected",
                "This bridge's AMQP connections on each configured broker (host:port) now.",
                &["endpoint"],
            ),
            reconnects: d.counter("reconnects_total", "AMQP connections opened after the first."),
            producer_requests: d.counters(
                "producer_requests_total",
                "Requests the producer component received, by route and method.",
                &["route", "method"],
            ),
            producer_responses: d.counters(
                "producer_responses_total",
                "Answers the producer component gave, by route and status.",
                &["route", "status"],
            ),
            ingress_requests: d.counters(
                "ingress_requests_total",
                "Client requests the ingress role took in front of the producer, by outcome.",
                &["outcome"],
            ),
            connections_shed: d.counters(
                "connections_shed_total",
                "Connections closed at the connection cap to make room for a newer one, by listener.",
                &["listener"],
            ),
            worker_push_duration: d.histograms(
                "worker_push_duration_seconds",
                "Pushes of a job to the worker, by the worker's answer.",
                JOB_BUCKETS,
                &["result"],
            ),
            registry,
        }
    }

    /// Records a publish's outcome; `refusal` is why one was not sent
    /// (the error code), for [`PublishOutcome::Refused`] only.
    pub fn publish_done(
        &self,
        queue: &str,
        outcome: PublishOutcome,
        refusal: Option<&str>,
        started: Instant,
    ) {
        self.published
            .with_label_values(&[queue, outcome.label()])
            .inc();
        match (outcome, refusal) {
            // Never sent: answered at once, and not a broker latency.
            (PublishOutcome::Refused, Some(reason)) => {
                self.publish_refusals.with_label_values(&[reason]).inc();
            }
            (PublishOutcome::Refused, None) => {}
            _ => self
                .publish_duration
                .observe(started.elapsed().as_secs_f64()),
        }
    }

    /// Records how the ingress role dealt with a request.
    pub fn ingress_done(&self, outcome: IngressOutcome) {
        self.ingress_requests
            .with_label_values(&[outcome.label()])
            .inc();
    }

    /// Records a consumed job's outcome.
    pub fn job_done(&self, queue: &str, outcome: JobOutcome) {
        self.jobs.with_label_values(&[queue, outcome.label()]).inc();
    }

    /// Starts timing one job; the guard counts it in flight until dropped.
    pub fn job_started(&self) -> JobTimer {
        self.jobs_in_flight.inc();
        JobTimer {
            in_flight: self.jobs_in_flight.clone(),
            duration: self.job_duration.clone(),
            started: Instant::now(),
        }
    }

    /// Every metric, typed, as `/metrics` encodes them: for readers in the
    /// same process, which need not parse the text.
    pub fn gather(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.registry.gather()
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut buf = Vec::new();
        // Encoding to a Vec fails only on invalid metric names, which the
        // constructors above already reject.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Times one job from delivery to its ack, nack or reject, and counts it in
/// flight meanwhile. Observing on `Drop` measures early returns too.
pub struct JobTimer {
    in_flight: IntGauge,
    duration: Histogram,
    started: Instant,
}

impl Drop for JobTimer {
    fn drop(&mut self) {
        self.in_flight.dec();
        self.duration.observe(self.started.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_prefix_and_follow_conventions() {
        let metrics = Metrics::new();
        metrics.publish_done("q", PublishOutcome::Confirmed, None, Instant::now());
        metrics.job_done("q", JobOutcome::DeadLettered);
        let text = metrics.encode();
        assert!(
            text.contains(r#"host_bridge_published_total{outcome="confirmed",queue="q"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"host_bridge_jobs_total{outcome="dead_lettered",queue="q"} 1"#),
            "{text}"
        );
        assert!(text.contains("host_bridge_publish_duration_seconds_bucket"));
        for family in metrics.registry.gather() {
            let name = family.name();
            assert!(name.starts_with("host_bridge_"), "{name}");
            if family.get_field_type() == prometheus::proto::MetricType::COUNTER {
                assert!(name.ends_with("_total"), "{name}");
            }
        }
    }

    #[test]
    fn job_timer_counts_in_flight_until_dropped() {
        let metrics = Metrics::new();
        let timer = metrics.job_started();
        assert_eq!(metrics.jobs_in_flight.get(), 1);
        drop(timer);
        assert_eq!(metrics.jobs_in_flight.get(), 0);
        assert_eq!(metrics.job_duration.get_sample_count(), 1);
    }
}
