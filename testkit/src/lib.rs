//! testkit: the one owner of test and bench support. A wasmtime host for
//! the real .wasm components, in-process bridges, per-test queues on the
//! real RabbitMQ at `AMQP_URL`, and a scriptable stand-in worker for faults
//! that are the worker's.
//!
//! Nothing here imitates RabbitMQ, the bridge or the components: each helper
//! runs or drives the real thing on loopback.

pub mod admin;
pub mod amqp;
pub mod bridge;
pub mod cluster;
pub mod load;
pub mod otlp;
pub mod private_broker;
pub mod process;
pub mod prometheus;
pub mod rig;
pub mod runtime;
pub mod standin;
pub mod tally;
pub mod wasm;

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

/// `bytes` in standard base64, as a log line might carry a secret.
pub fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Polls `probe` until it returns `Some`, at most `limit`. For conditions
/// that have no event to wait on (a metric reaching a value, a port
/// answering); never a substitute for one that has.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until something accepts TCP connections on 127.0.0.1:`port`.
pub async fn wait_for_port(what: &str, port: u16, limit: Duration) {
    eventually(what, limit, || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()
            .map(|_| ())
    })
    .await;
}

/// The samples of the series `name` in a Prometheus text exposition: each
/// one's labels and value. The one parser of scraped text in the workspace.
pub fn samples<'a>(
    text: &'a str,
    name: &'a str,
) -> impl Iterator<Item = (BTreeMap<String, String>, f64)> + 'a {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(move |line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, label_text) = match series.split_once('{') {
                Some((metric, rest)) => (metric, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            Some((labels_of(label_text)?, value.parse::<f64>().ok()?))
        })
}

/// `a="1",b="x\"y"` as a map. The exposition escapes `\`, `"` and `\n`
/// inside values.
fn labels_of(text: &str) -> Option<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                (_, c) => value.push(c),
            }
        };
        labels.insert(key.trim_start_matches(',').to_owned(), value);
        rest = after[end + 1..].trim_start_matches(',');
    }
    Some(labels)
}

/// Reads one figure from a Prometheus text exposition: the sum of the
/// series `name` whose labels include every `labels` pair. Missing is 0.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    samples(text, name)
        .filter(|(have, _)| {
            labels
                .iter()
                .all(|(k, v)| have.get(*k).is_some_and(|h| h == v))
        })
        .map(|(_, value)| value)
        .sum()
}

/// The same figure, typed, from an in-process registry's families
/// (`host_bridge::Metrics::gather`): the sum of the counter or gauge
/// series `name` whose labels include every `labels` pair; for a
/// histogram, its `name_count` and `name_sum`. Missing is 0.
pub fn family_value(
    families: &[::prometheus::proto::MetricFamily],
    name: &str,
    labels: &[(&str, &str)],
) -> f64 {
    use ::prometheus::proto::{Metric, MetricType};
    let has_labels = |metric: &Metric| {
        labels.iter().all(|(k, v)| {
            metric
                .get_label()
                .iter()
                .any(|pair| pair.name() == *k && pair.value() == *v)
        })
    };
    let mut total = 0.0;
    for family in families {
        let family_name = family.name();
        let histogram_part = name
            .strip_prefix(family_name)
            .filter(|_| family.get_field_type() == MetricType::HISTOGRAM);
        if family_name != name && !matches!(histogram_part, Some("_count" | "_sum")) {
            continue;
        }
        for metric in family.get_metric().iter().filter(|m| has_labels(m)) {
            total += match (family.get_field_type(), histogram_part) {
                (MetricType::COUNTER, _) => metric.get_counter().get_value(),
                (MetricType::GAUGE, _) => metric.get_gauge().get_value(),
                (MetricType::HISTOGRAM, Some("_count")) => {
                    metric.get_histogram().get_sample_count() as f64
                }
                (MetricType::HISTOGRAM, Some("_sum")) => metric.get_histogram().get_sample_sum(),
                _ => 0.0,
            };
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_value_matches_name_and_labels() {
        let text = "# HELP x\nhost_bridge_jobs_total{outcome=\"acked\",queue=\"q\"} 3\n\
                    host_bridge_jobs_total{outcome=\"requeued\",queue=\"q\"} 2\nup 1\n";
        assert_eq!(
            metric_value(text, "host_bridge_jobs_total", &[("outcome", "acked")]),
            3.0
        );
        assert_eq!(
            metric_value(text, "host_bridge_jobs_total", &[("queue", "q")]),
            5.0
        );
        assert_eq!(metric_value(text, "up", &[]), 1.0);
        assert_eq!(metric_value(text, "missing", &[]), 0.0);
        // A label value that merely contains the wanted one does not match.
        let text = "m{queue=\"jobs.dead\"} 4\nm{queue=\"x\\\"y\",le=\"+Inf\"} 1\n";
        assert_eq!(metric_value(text, "m", &[("queue", "jobs")]), 0.0);
        assert_eq!(metric_value(text, "m", &[("queue", "x\"y")]), 1.0);
        let (labels, _) = samples(text, "m").nth(1).expect("two samples");
        assert_eq!(labels["le"], "+Inf");
    }

    #[test]
    fn typed_and_text_reads_agree_on_a_real_registry() {
        use host_bridge::metrics::{JobOutcome, Metrics, PublishOutcome};
        let metrics = Metrics::new();
        let started = std::time::Instant::now();
        metrics.publish_done("q", PublishOutcome::Confirmed, None, started);
        metrics.publish_done("q", PublishOutcome::Confirmed, None, started);
        metrics.publish_done("other", PublishOutcome::Confirmed, None, started);
        metrics.job_done("q", JobOutcome::Acked);
        metrics.broker_up.set(1);
        drop(metrics.job_started());
        let (families, text) = (metrics.gather(), metrics.encode());
        for (name, labels) in [
            ("host_bridge_published_total", vec![]),
            ("host_bridge_published_total", vec![("queue", "q")]),
            ("host_bridge_published_total", vec![("outcome", "refused")]),
            ("host_bridge_jobs_total", vec![("outcome", "acked")]),
            ("host_bridge_broker_up", vec![]),
            ("host_bridge_publish_duration_seconds_count", vec![]),
            ("host_bridge_job_duration_seconds_count", vec![]),
            ("host_bridge_job_duration_seconds_sum", vec![]),
            ("host_bridge_missing", vec![]),
        ] {
            assert_eq!(
                family_value(&families, name, &labels),
                metric_value(&text, name, &labels),
                "{name} {labels:?}"
            );
        }
        assert_eq!(
            family_value(&families, "host_bridge_published_total", &[("queue", "q")]),
            2.0
        );
        assert_eq!(
            family_value(&families, "host_bridge_publish_duration_seconds_count", &[]),
            3.0
        );
    }
}
