//! `scalectl watch`: a live view of the autoscaler at work, from the
//! Kubernetes API (the user's kubeconfig): the HPA's replicas, metric and
//! conditions, the worker Deployment's rollout state, the queue depth, and
//! recent scaling events; or, on the local stack, which has no API server,
//! from Prometheus alone. It keeps a timeline for a CSV and an SVG chart.
//!
//! With Prometheus it also reads the jobs confirmed so far and the queue
//! wait's quantiles (`host_bridge_job_queue_wait_seconds`). The jobs that
//! arrived between samples are the load [`crate::plan`] replays, so the
//! chart sets the plan's queue, replicas and waits beside the live ones for
//! the same arrivals: where they part, the cluster is not doing what the
//! simulation assumed (metrics lag, slow pod starts, a worker slower than
//! its service time).

use std::fmt::Write as _;

use anyhow::Context;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Event;
use kube::Api;
use kube::api::ListParams;

use crate::chart::Series;
use crate::plan::Plan;

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
    /// Jobs confirmed since the counters started (Prometheus only).
    pub arrived: Option<f64>,
    /// The queue wait's p50, p95 and p99 over the last [`WAIT_WINDOW`],
    /// seconds, each `None` while no job started in it (Prometheus only).
    pub waits: [Option<f64>; 3],
}

/// The quantiles [`Sample::waits`] holds.
pub const WAIT_QUANTILES: [f64; 3] = [0.5, 0.95, 0.99];

/// The window the live wait quantiles are taken over (PromQL's `rate`
/// range), and the plan's over the same window, so the two compare.
pub const WAIT_WINDOW: &str = "1m";

/// [`WAIT_WINDOW`] in seconds.
pub const WAIT_WINDOW_SECONDS: f64 = 60.0;

/// The PromQL for one quantile of the queue wait.
pub fn wait_query(quantile: f64) -> String {
    format!(
        "histogram_quantile({quantile}, sum by (le) (rate({}_bucket[{WAIT_WINDOW}])))",
        crate::tune::WAIT_METRIC
    )
}

/// Where the live figures come from.
pub struct Sources {
    /// The HPA and the Deployment, from the Kubernetes API; `None` on the
    /// local stack, where replicas come from Prometheus.
    pub kube: Option<(kube::Client, String, String, String)>,
    /// Prometheus: its base URL and the PromQL of each figure.
    pub prometheus: Option<Queries>,
}

/// The PromQL `watch` asks Prometheus.
#[derive(Debug, Clone)]
pub struct Queries {
    /// Prometheus's base URL.
    pub url: String,
    /// The queue depth.
    pub queue: String,
    /// Jobs confirmed so far (a counter's sum).
    pub arrived: String,
    /// Workers taking jobs, when there is no Kubernetes API to ask.
    pub replicas: String,
}

/// Watches one HPA and its Deployment, or the local stack.
pub struct Watcher {
    kube: Option<Kube>,
    prometheus: Option<Queries>,
    http: reqwest::Client,
}

struct Kube {
    hpas: Api<HorizontalPodAutoscaler>,
    deployments: Api<Deployment>,
    events: Api<Event>,
    hpa: String,
    deployment: String,
}

fn quantity(q: &k8s_openapi::apimachinery::pkg::api::resource::Quantity) -> Option<f64> {
    crate::quantity::parse_f64(&q.0)
}

impl Watcher {
    /// A watcher of `sources`; the Kubernetes one is (client, namespace,
    /// HPA, Deployment).
    pub fn new(sources: Sources) -> Self {
        let kube = sources
            .kube
            .map(|(client, namespace, hpa, deployment)| Kube {
                hpas: Api::namespaced(client.clone(), &namespace),
                deployments: Api::namespaced(client.clone(), &namespace),
                events: Api::namespaced(client, &namespace),
                hpa,
                deployment,
            });
        Self {
            kube,
            prometheus: sources.prometheus,
            http: reqwest::Client::builder()
                // One slow answer must not stall the redraw for long.
                .timeout(std::time::Duration::from_secs(5))
                .build()
                .unwrap_or_default(),
        }
    }

    /// One sample at `t` seconds.
    pub async fn sample(&self, t: f64) -> anyhow::Result<Sample> {
        let mut sample = match &self.kube {
            Some(kube) => kube.sample(t).await?,
            None => Sample {
                t,
                current: 0,
                desired: 0,
                metric: None,
                target: None,
                conditions: Vec::new(),
                ready: 0,
                updated: 0,
                available: 0,
                queue_depth: None,
                arrived: None,
                waits: [None; 3],
            },
        };
        if let Some(queries) = &self.prometheus {
            let url = &queries.url;
            sample.queue_depth = self.query(url, &queries.queue).await.ok();
            sample.arrived = self.query(url, &queries.arrived).await.ok();
            for (slot, q) in sample.waits.iter_mut().zip(WAIT_QUANTILES) {
                *slot = self
                    .query(url, &wait_query(q))
                    .await
                    .ok()
                    .filter(|v| v.is_finite());
            }
            if self.kube.is_none() {
                let replicas = self.query(url, &queries.replicas).await?;
                let replicas = replicas.round() as i32;
                (sample.current, sample.desired) = (replicas, replicas);
                (sample.ready, sample.updated, sample.available) = (replicas, replicas, replicas);
            }
        }
        Ok(sample)
    }

    /// The live wait histogram's finite bucket bounds, ascending, as
    /// Prometheus has them; `None` when it has none.
    pub async fn wait_buckets(&self) -> Option<Vec<f64>> {
        let queries = self.prometheus.as_ref()?;
        let query = format!("count by (le) ({}_bucket)", crate::tune::WAIT_METRIC);
        let mut bounds: Vec<f64> = self
            .results(&queries.url, &query)
            .await
            .ok()?
            .iter()
            .filter_map(|r| r["metric"]["le"].as_str()?.parse().ok())
            .filter(|le: &f64| le.is_finite())
            .collect();
        bounds.sort_by(f64::total_cmp);
        (!bounds.is_empty()).then_some(bounds)
    }

    /// The most recent events about the HPA or the Deployment, newest
    /// first; none on the local stack.
    pub async fn recent_events(&self, limit: usize) -> anyhow::Result<Vec<String>> {
        match &self.kube {
            Some(kube) => kube.recent_events(limit).await,
            None => Ok(Vec::new()),
        }
    }

    /// The first result's value of an instant query.
    async fn query(&self, url: &str, query: &str) -> anyhow::Result<f64> {
        self.results(url, query)
            .await?
            .first()
            .and_then(|r| r["value"][1].as_str())
            .and_then(|v| v.parse().ok())
            .context("no value")
    }

    /// Every result of an instant query, as Prometheus's API gives them.
    async fn results(&self, url: &str, query: &str) -> anyhow::Result<Vec<serde_json::Value>> {
        let mut body: serde_json::Value = self
            .http
            .get(format!("{}/api/v1/query", url.trim_end_matches('/')))
            .query(&[("query", query)])
            .send()
            .await?
            .json()
            .await?;
        match body["data"]["result"].take() {
            serde_json::Value::Array(results) => Ok(results),
            _ => anyhow::bail!("no result list in Prometheus's answer"),
        }
    }
}

impl Kube {
    async fn sample(&self, t: f64) -> anyhow::Result<Sample> {
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
        // Prometheus's figure replaces this one when it is given.
        let queue_depth = external.map(|avg| avg * f64::from(current.max(1)));
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
            arrived: None,
            waits: [None; 3],
        })
    }

    async fn recent_events(&self, limit: usize) -> anyhow::Result<Vec<String>> {
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
        "t_seconds,current,desired,metric,target,ready,updated,available,queue_depth,arrived,wait_p50,wait_p95,wait_p99\n",
    );
    let num = |v: Option<f64>| v.map(|v| v.to_string()).unwrap_or_default();
    for s in samples {
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{},{},{},{},{},{},{}",
            s.t,
            s.current,
            s.desired,
            num(s.metric),
            num(s.target),
            s.ready,
            s.updated,
            s.available,
            num(s.queue_depth),
            num(s.arrived),
            num(s.waits[0]),
            num(s.waits[1]),
            num(s.waits[2])
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

/// The load the samples saw, as the plan takes it: the queue found at the
/// first sample, then each rise of the confirmed count above the highest
/// it has been. A count that drops (a bridge's scrape missed, so its
/// series is stale for a while, or a bridge restarted) counts nothing, and
/// its return to where it was counts nothing either: a missed scrape must
/// not read as a burst. A restarted bridge's jobs are counted again only
/// past the old high.
pub fn arrivals(samples: &[Sample]) -> Vec<(f64, u32)> {
    let mut arrivals = Vec::new();
    if let Some(first) = samples.first() {
        let queued = first.queue_depth.unwrap_or(0.0).round().max(0.0) as u32;
        if queued > 0 {
            arrivals.push((0.0, queued));
        }
    }
    let mut high: Option<f64> = None;
    for sample in samples {
        let Some(total) = sample.arrived.filter(|v| v.is_finite()) else {
            continue;
        };
        if let Some(before) = high {
            let new = (total - before).round();
            if new >= 1.0 {
                arrivals.push((sample.t, new.min(f64::from(u32::MAX)) as u32));
            }
        }
        high = Some(high.map_or(total, |h: f64| h.max(total)));
    }
    arrivals
}

/// The plan's wait quantiles at `t`: over the jobs a pod took in the
/// [`WAIT_WINDOW_SECONDS`] before `t`, as the live ones are over the jobs
/// first pushed in that window. `None` where no job was taken.
///
/// With `buckets` (the live histogram's upper bounds), each quantile is
/// estimated from the plan's waits counted into those buckets, as
/// Prometheus's `histogram_quantile` estimates the live one: the two sides
/// then differ only where the cluster does, not by the buckets' width
/// (between 30 s and 60 s a live p95 is a straight-line guess). Without,
/// the plan's exact quantiles.
pub fn planned_waits(plan: &Plan, t: f64, buckets: Option<&[f64]>) -> [Option<f64>; 3] {
    let mut window: Vec<f64> = plan
        .waits
        .iter()
        .filter(|(taken, _)| *taken > t - WAIT_WINDOW_SECONDS && *taken <= t)
        .map(|w| w.1)
        .collect();
    window.sort_by(f64::total_cmp);
    WAIT_QUANTILES.map(|q| {
        if window.is_empty() {
            return None;
        }
        match buckets {
            Some(bounds) => histogram_quantile(q, bounds, &window),
            None => {
                let rank = ((q * window.len() as f64).ceil() as usize).clamp(1, window.len());
                Some(window[rank - 1])
            }
        }
    })
}

/// The `q` quantile of `values` as Prometheus's `histogram_quantile`
/// estimates it from cumulative buckets with upper bounds `bounds`
/// (ascending, `+Inf` implied): linear within the bucket the rank falls
/// in, from 0 for the first; the highest finite bound when it falls past
/// them all.
pub fn histogram_quantile(q: f64, bounds: &[f64], values: &[f64]) -> Option<f64> {
    if values.is_empty() || !(0.0..=1.0).contains(&q) {
        return None;
    }
    let rank = q * values.len() as f64;
    let mut below = 0usize;
    let mut lower = 0.0;
    for &upper in bounds {
        let count = values.iter().filter(|v| **v <= upper).count();
        if count as f64 >= rank && count > below {
            let within = (rank - below as f64) / (count - below) as f64;
            return Some(lower + (upper - lower) * within);
        }
        below = count;
        lower = upper;
    }
    // Past every finite bound: Prometheus answers the highest one.
    bounds.last().copied()
}

/// Where live and plan part: the peaks of each side, in one line.
pub fn divergence(samples: &[Sample], plan: &Plan, buckets: Option<&[f64]>) -> String {
    let live_queue = samples
        .iter()
        .filter_map(|s| s.queue_depth)
        .fold(0.0, f64::max);
    let plan_queue = plan
        .timeline
        .iter()
        .map(|t| f64::from(t.ready + t.unacked))
        .fold(0.0, f64::max);
    let live_replicas = samples.iter().map(|s| s.current).max().unwrap_or(0);
    let live_p95 = samples
        .iter()
        .filter_map(|s| s.waits[1])
        .fold(0.0, f64::max);
    let plan_p95 = samples
        .iter()
        .filter_map(|s| planned_waits(plan, s.t, buckets)[1])
        .fold(0.0, f64::max);
    format!(
        "live against plan: peak queue {live_queue:.0} vs {plan_queue:.0}, peak replicas \
         {live_replicas} vs {}, worst p95 wait {live_p95:.1} s vs {plan_p95:.1} s",
        plan.peak_replicas
    )
}

/// The timeline against the plan for the same arrivals, as one SVG: queue
/// and replicas above, the queue wait's p50 and p95 below.
pub fn compare_svg(
    samples: &[Sample],
    plan: &Plan,
    buckets: Option<&[f64]>,
    title: &str,
) -> anyhow::Result<String> {
    let live = |label: &str, f: &dyn Fn(&Sample) -> Option<f64>| Series {
        label: label.to_owned(),
        points: samples
            .iter()
            .filter_map(|s| f(s).map(|v| (s.t, v)))
            .collect(),
    };
    let end = samples.last().map_or(0.0, |s| s.t);
    let planned = |label: &str, f: &dyn Fn(&crate::plan::Tick) -> f64| Series {
        label: label.to_owned(),
        points: plan
            .timeline
            .iter()
            .filter(|t| t.t <= end)
            .map(|t| (t.t, f(t)))
            .collect(),
    };
    let planned_wait = |label: &str, i: usize| Series {
        label: label.to_owned(),
        points: samples
            .iter()
            .filter_map(|s| planned_waits(plan, s.t, buckets)[i].map(|w| (s.t, w)))
            .collect(),
    };
    let queue = [
        live("queue, live", &|s| s.queue_depth),
        planned("queue, plan", &|t| f64::from(t.ready + t.unacked)),
    ];
    let replicas = [
        live("replicas, live", &|s| Some(f64::from(s.current))),
        planned("replicas, plan", &|t| f64::from(t.replicas)),
    ];
    let waits = [
        live("p50 wait, live", &|s| s.waits[0]),
        planned_wait("p50 wait, plan", 0),
        live("p95 wait, live", &|s| s.waits[1]),
        planned_wait("p95 wait, plan", 1),
    ];
    let wait_caption = format!("queue wait over the last {WAIT_WINDOW}, live against plan");
    crate::chart::panels_svg(&[
        crate::chart::Panel {
            caption: title,
            left_label: "messages",
            left: &queue,
            replicas: &replicas,
            marks: &[],
        },
        crate::chart::Panel {
            caption: &wait_caption,
            left_label: "seconds",
            left: &waits,
            replicas: &[],
            marks: &[],
        },
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hpa::{Rules, Spec};
    use crate::quantity::Milli;

    fn sample(t: f64, queue: f64, arrived: f64) -> Sample {
        Sample {
            t,
            current: 1,
            desired: 1,
            metric: None,
            target: None,
            conditions: Vec::new(),
            ready: 1,
            updated: 1,
            available: 1,
            queue_depth: Some(queue),
            arrived: Some(arrived),
            waits: [None; 3],
        }
    }

    #[test]
    fn arrivals_are_the_queue_found_then_the_counter_deltas() {
        let samples = [
            sample(0.0, 3.0, 100.0),
            sample(2.0, 5.0, 104.0),
            sample(4.0, 5.0, 104.0),
            // A missed scrape: the sum drops, then comes back. No burst.
            sample(6.0, 5.0, 0.0),
            sample(8.0, 6.0, 104.0),
            sample(10.0, 6.0, f64::NAN),
            sample(12.0, 6.0, 107.0),
        ];
        assert_eq!(arrivals(&samples), vec![(0.0, 3), (2.0, 4), (12.0, 3)]);
    }

    #[test]
    fn the_plans_waits_are_taken_over_the_same_window_as_the_live_ones() {
        // One worker of 5 s jobs, ten jobs at once: waits 0, 5, …, 45 s.
        let spec = Spec {
            min: 1,
            max: 1,
            target: crate::hpa::Target::AverageValue(Milli::from_units(5)),
            up: Rules::default_up(),
            down: Rules::default_down(),
            has_behavior: true,
        };
        let scenario = crate::plan::Scenario {
            burst: 0,
            arrivals: vec![(1.0, 10)],
            ..crate::plan::Scenario::default()
        };
        let result = crate::plan::plan(&spec, &scenario);
        let waits: Vec<f64> = result.waits.iter().map(|w| w.1).collect();
        assert_eq!(
            waits,
            (0..10).map(|i| f64::from(i) * 5.0).collect::<Vec<_>>()
        );
        // At 50 s the window holds the jobs taken from 1 s to 46 s: all ten.
        assert_eq!(
            planned_waits(&result, 50.0, None),
            [Some(20.0), Some(45.0), Some(45.0)]
        );
        // At 70 s, only the eight taken after 10 s (waits 10 to 45 s).
        assert_eq!(planned_waits(&result, 70.0, None)[0], Some(25.0));
        assert_eq!(planned_waits(&result, 200.0, None), [None; 3]);
        // Counted into the live buckets, as Prometheus would estimate them:
        // the median's rank 5 of 10 falls in (15, 30], which holds 20, 25
        // and 30 above the 4 below it: 15 + 15 × 1/3.
        let bounds = [5.0, 10.0, 15.0, 30.0, 60.0];
        assert_eq!(planned_waits(&result, 50.0, Some(&bounds))[0], Some(20.0));
    }

    #[test]
    fn histogram_quantiles_are_estimated_as_prometheus_does() {
        let bounds = [1.0, 2.0, 4.0];
        // Four values, all in (2, 4]: the median is half-way through it.
        assert_eq!(histogram_quantile(0.5, &bounds, &[3.0; 4]), Some(3.0));
        // In the first bucket, from 0.
        assert_eq!(histogram_quantile(0.5, &bounds, &[0.5, 0.5]), Some(0.5));
        // Past every bound: the highest one.
        assert_eq!(histogram_quantile(0.99, &bounds, &[9.0; 3]), Some(4.0));
        assert_eq!(histogram_quantile(0.5, &bounds, &[]), None);
    }
}
