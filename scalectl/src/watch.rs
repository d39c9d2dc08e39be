//! `scalectl watch`: a live view of the autoscaler at work, from the
//! Kubernetes API (the user's kubeconfig): the HPA's replicas, metric and
//! conditions, the worker Deployment's rollout state, the queue depth, and
//! recent scaling events. It keeps a timeline for a CSV and an SVG chart.

use std::fmt::Write as _;

use anyhow::Context;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Event;
use kube::Api;
use kube::api::ListParams;

use crate::chart::Series;

/// What one look at the cluster saw.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Seconds since the watch started.
    pub t: f64,
    /// The HPA's current replicas.
    pub current: i32,
    /// The HPA's desired replicas.
    pub desired: i32,
    /// The External metric's current value (its average per pod), as the HPA reports it.
    pub metric: Option<f64>,
    /// The target average value.
    pub target: Option<f64>,
    /// The HPA's conditions: (type, status, reason).
    pub conditions: Vec<(String, String, String)>,
    /// The Deployment's ready, updated and available replicas.
    pub ready: i32,
    /// Updated replicas.
    pub updated: i32,
    /// Available replicas.
    pub available: i32,
    /// Queue depth: from Prometheus when given, else the HPA's average x current replicas.
    pub queue_depth: Option<f64>,
}

/// Watches one HPA and its Deployment.
pub struct Watcher {
    hpas: Api<HorizontalPodAutoscaler>,
    deployments: Api<Deployment>,
    events: Api<Event>,
    hpa: String,
    deployment: String,
    prometheus: Option<(String, String)>,
    http: reqwest::Client,
}

fn quantity(q: &k8s_openapi::apimachinery::pkg::api::resource::Quantity) -> Option<f64> {
    crate::quantity::parse_f64(&q.0)
}

impl Watcher {
    /// A watcher in `namespace`; `prometheus` is (base URL, PromQL for the
    /// queue depth).
    pub fn new(
        client: kube::Client,
        namespace: &str,
        hpa: &str,
        deployment: &str,
        prometheus: Option<(String, String)>,
    ) -> Self {
        Self {
            hpas: Api::namespaced(client.clone(), namespace),
            deployments: Api::namespaced(client.clone(), namespace),
            events: Api::namespaced(client, namespace),
            hpa: hpa.to_owned(),
            deployment: deployment.to_owned(),
            prometheus,
            http: reqwest::Client::new(),
        }
    }

    /// One sample at `t` seconds.
    pub async fn sample(&self, t: f64) -> anyhow::Result<Sample> {
        let hpa = self
            .hpas
            .get(&self.hpa)
            .await
            .with_context(|| format!("reading HPA {}", self.hpa))?;
        let deployment = self
            .deployments
            .get(&self.deployment)
            .await
            .with_context(|| format!("reading Deployment {}", self.deployment))?;
        let status = hpa.status.clone().unwrap_or_default();
        let external = status
            .current_metrics
            .iter()
            .flatten()
            .find_map(|m| m.external.as_ref())
            .and_then(|e| {
                e.current
                    .average_value
                    .as_ref()
                    .or(e.current.value.as_ref())
            })
            .and_then(quantity);
        let target = hpa
            .spec
            .as_ref()
            .and_then(|s| s.metrics.as_ref())
            .and_then(|ms| ms.iter().find_map(|m| m.external.as_ref()))
            .and_then(|e| e.target.average_value.as_ref())
            .and_then(quantity);
        let d = deployment.status.unwrap_or_default();
        let current = status.current_replicas.unwrap_or(0);
        let queue_depth = match &self.prometheus {
            Some((url, query)) => self.query(url, query).await.ok(),
            None => external.map(|avg| avg * f64::from(current.max(1))),
        };
        Ok(Sample {
            t,
            current,
            desired: status.desired_replicas,
            metric: external,
            target,
            conditions: status
                .conditions
                .unwrap_or_default()
                .into_iter()
                .map(|c| (c.type_, c.status, c.reason.unwrap_or_default()))
                .collect(),
            ready: d.ready_replicas.unwrap_or(0),
            updated: d.updated_replicas.unwrap_or(0),
            available: d.available_replicas.unwrap_or(0),
            queue_depth,
        })
    }

    async fn query(&self, url: &str, query: &str) -> anyhow::Result<f64> {
        let body: serde_json::Value = self
            .http
            .get(format!("{}/api/v1/query", url.trim_end_matches('/')))
            .query(&[("query", query)])
            .send()
            .await?
            .json()
            .await?;
        body["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|v| v.parse().ok())
            .context("no value")
    }

    /// The most recent events about the HPA or the Deployment, newest first.
    pub async fn recent_events(&self, limit: usize) -> anyhow::Result<Vec<String>> {
        let list = self.events.list(&ListParams::default()).await?;
        let mut events: Vec<_> = list
            .items
            .into_iter()
            .filter(|e| matches!(e.involved_object.name.as_deref(), Some(n) if n == self.hpa || n == self.deployment))
            .collect();
        events.sort_by_key(|e| std::cmp::Reverse(e.last_timestamp.clone().map(|t| t.0)));
        Ok(events
            .into_iter()
            .take(limit)
            .map(|e| {
                let when = e
                    .last_timestamp
                    .map(|t| t.0.to_string())
                    .unwrap_or_default();
                format!(
                    "{when} {} {}: {}",
                    e.involved_object.kind.unwrap_or_default(),
                    e.reason.unwrap_or_default(),
                    e.message.unwrap_or_default()
                )
            })
            .collect())
    }
}

/// The live table.
pub fn render(sample: &Sample, events: &[String]) -> String {
    let mut out = String::new();
    let num = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1}"));
    let _ = writeln!(out, "t={:.0}s", sample.t);
    let _ = writeln!(
        out,
        "HPA        current {:>3}  desired {:>3}  metric {} / target {}",
        sample.current,
        sample.desired,
        num(sample.metric),
        num(sample.target)
    );
    let _ = writeln!(
        out,
        "Deployment ready {:>3}  updated {:>3}  available {:>3}",
        sample.ready, sample.updated, sample.available
    );
    let _ = writeln!(out, "queue      depth {}", num(sample.queue_depth));
    for (kind, status, reason) in &sample.conditions {
        let _ = writeln!(out, "condition  {kind}={status} ({reason})");
    }
    let _ = writeln!(out, "recent events:");
    for e in events {
        let _ = writeln!(out, "  {e}");
    }
    out
}

/// The timeline as CSV.
pub fn csv(samples: &[Sample]) -> String {
    let mut out = String::from(
        "t_seconds,current,desired,metric,target,ready,updated,available,queue_depth\n",
    );
    let num = |v: Option<f64>| v.map(|v| v.to_string()).unwrap_or_default();
    for s in samples {
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{},{},{}",
            s.t,
            s.current,
            s.desired,
            num(s.metric),
            num(s.target),
            s.ready,
            s.updated,
            s.available,
            num(s.queue_depth)
        );
    }
    out
}

/// The timeline as an SVG chart: queue depth against replicas.
pub fn svg(samples: &[Sample], title: &str) -> anyhow::Result<String> {
    let line = |label: &str, f: &dyn Fn(&Sample) -> Option<f64>| Series {
        label: label.to_owned(),
        points: samples
            .iter()
            .filter_map(|s| f(s).map(|v| (s.t, v)))
            .collect(),
    };
    crate::chart::svg(
        title,
        &[line("queue depth", &|s| s.queue_depth)],
        &[
            line("desired replicas", &|s| Some(f64::from(s.desired))),
            line("ready replicas", &|s| Some(f64::from(s.ready))),
        ],
        &[],
    )
}
