//! The autoscaling signal, proven live on real parts: a real RabbitMQ with
//! `rabbitmq_prometheus`, a real bridge, and a real Prometheus scraping them
//! with the ServiceMonitor's and PodMonitor's paths and params. The adapter
//! rule's `metricsQuery` is rendered as prometheus-adapter renders it for the
//! HPA's selector and namespace, run through Prometheus's HTTP API, and fed
//! to the HPA's formula. Also: every metric the Grafana dashboard queries is
//! one that something here exports.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{Value, json};
use testkit::admin::MetricSource;
use testkit::bridge::RunningBridge;
use testkit::cluster::Cluster;
use testkit::private_broker::PrivateBroker;
use testkit::prometheus::Prometheus;
use testkit::rig::{job, publish_to};
use testkit::standin::StandIn;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// The objects `kubectl kustomize manifests` builds, as JSON.
fn built() -> Result<Vec<Value>> {
    built_from("manifests")
}

/// The objects `kubectl kustomize <dir>` builds (`dir` relative to the
/// repository), as JSON.
fn built_from(dir: &str) -> Result<Vec<Value>> {
    let output = Command::new("kubectl")
        .args(["kustomize", &format!("{ROOT}/{dir}")])
        .output()?;
    anyhow::ensure!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut objects = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(std::str::from_utf8(&output.stdout)?) {
        let value: Value = serde::Deserialize::deserialize(doc)?;
        objects.push(value);
    }
    Ok(objects)
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> Result<&'a Value> {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .with_context(|| format!("no {kind}/{name}"))
}

fn adapter_rule() -> Result<Value> {
    let text = std::fs::read_to_string(format!(
        "{ROOT}/manifests/helm/prometheus-adapter.values.yaml"
    ))?;
    let values: Value = serde_yaml_ng::from_str(&text)?;
    Ok(values["rules"]["external"][0].clone())
}

/// Publishes `count` jobs through `bridge`, each of which must be accepted.
async fn publish_accepted(bridge: &RunningBridge, prefix: &str, count: u32) -> Result<()> {
    let url = bridge.publish_url("/v1/publish");
    for n in 0..count {
        let response = publish_to(&url, job(&format!("{prefix}-{n}"), Value::Null)).await?;
        anyhow::ensure!(
            response.status() == 202,
            "{prefix}-{n}: {}",
            response.status()
        );
    }
    Ok(())
}

/// What prometheus-adapter sends Prometheus for an External metric request
/// (pkg/naming/metrics_query.go, `BuildExternal`): the HPA's selector as
/// `label="value"` matchers (sorted by label, as a labels.Selector is), then,
/// unless the rule says `namespaced: false`, the HPA's namespace on the label
/// the rule maps the namespace resource to; GroupBy is empty.
fn render_external_query(
    rule: &Value,
    selector: &BTreeMap<String, String>,
    namespace: &str,
) -> Result<String> {
    let series = rule["seriesQuery"].as_str().context("seriesQuery")?;
    let series = series.split('{').next().unwrap_or_default().trim();
    let mut matchers: Vec<String> = selector.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    let namespaced = rule["resources"]["namespaced"].as_bool().unwrap_or(true);
    if namespaced {
        let overrides = rule["resources"]["overrides"]
            .as_object()
            .context("a namespaced rule needs overrides")?;
        let label = overrides
            .iter()
            .find(|(_, v)| v["resource"] == "namespace")
            .map(|(label, _)| label.clone())
            .context("no label maps to the namespace resource")?;
        matchers.push(format!("{label}={namespace:?}"));
    }
    Ok(rule["metricsQuery"]
        .as_str()
        .context("metricsQuery")?
        .replace("<<.Series>>", series)
        .replace("<<.LabelMatchers>>", &matchers.join(","))
        .replace("<<.GroupBy>>", ""))
}

/// The HPA controller's replica count for one External AverageValue metric,
/// clamped to min and max: scalectl's model of `GetExternalPerPodMetricReplicas`
/// (the one owner of that formula), without the behavior rules.
fn hpa_replicas(metric: f64, target: f64, current: u32, min: u32, max: u32) -> u32 {
    use scalectl::quantity::Milli;
    let current = i32::try_from(current).unwrap_or(i32::MAX);
    // As the controller reads quantities: whole milli-units, rounded up
    // (`MilliValue`); the tolerance rule of the floor (1.30).
    let milli = |x: f64| Milli((x * 1000.0).ceil() as i64);
    let rule = scalectl::hpa::Tolerances::Absolute(scalectl::hpa::TOLERANCE);
    let desired = scalectl::hpa::metric_replicas(milli(metric), milli(target), current, rule);
    u32::try_from(desired).unwrap_or(0).clamp(min, max)
}

/// The example the HPA's comment promises: "- K jobs queued, C worker(s):
/// ceil(K/T) = R workers".
fn promised_example() -> Result<(u32, u32, u32)> {
    let text = std::fs::read_to_string(format!("{ROOT}/manifests/hpa.yaml"))?;
    let line = text
        .lines()
        .find(|l| l.contains("jobs queued") && l.contains("ceil("))
        .context("an example in hpa.yaml")?;
    let number = |s: &str| {
        s.trim()
            .trim_start_matches(['#', '-', ' '])
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
    };
    let jobs = number(line).context("K")?;
    let current = number(line.split(',').nth(1).context("C")?).context("C")?;
    let replicas = number(line.rsplit('=').next().context("R")?).context("R")?;
    Ok((jobs, current, replicas))
}

/// Scrape configs equivalent to the ServiceMonitor's /metrics/detailed
/// endpoint and the PodMonitor, with the `namespace` target label that the
/// Prometheus Operator adds from the monitored object's namespace.
fn scrape_configs(objects: &[Value], rabbits: &[String], bridge: &str) -> Result<String> {
    let namespace = find(objects, "ServiceMonitor", "rabbitmq")?["metadata"]["namespace"].clone();
    let endpoints = find(objects, "ServiceMonitor", "rabbitmq")?["spec"]["endpoints"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    // One target per RabbitMQ node: the Service's endpoints, as the
    // Prometheus Operator scrapes them.
    let targets = serde_json::to_string(rabbits)?;
    let mut out = String::new();
    for (i, endpoint) in endpoints.iter().enumerate() {
        out += &format!(
            "  - job_name: rabbitmq-{i}\n    metrics_path: {}\n    params: {}\n    static_configs: [{{targets: {targets}, labels: {{namespace: {namespace}}}}}]\n",
            endpoint["path"],
            if endpoint["params"].is_null() {
                json!({})
            } else {
                endpoint["params"].clone()
            },
        );
    }
    let pod_monitor =
        &find(objects, "PodMonitor", "host-bridge")?["spec"]["podMetricsEndpoints"][0];
    out += &format!(
        "  - job_name: host-bridge\n    metrics_path: {}\n    static_configs: [{{targets: [\"{bridge}\"], labels: {{namespace: {namespace}}}}}]\n",
        pod_monitor["path"]
    );
    Ok(out)
}

#[test]
fn the_adapter_query_renders_as_documented() -> Result<()> {
    let rendered = render_external_query(
        &adapter_rule()?,
        &BTreeMap::from([("queue".into(), "jobs".into())]),
        "wasm-jobs",
    )?;
    assert_eq!(
        rendered,
        r#"sum(max by (vhost, queue) (rabbitmq_detailed_queue_messages{queue="jobs",namespace="wasm-jobs"})) by ()"#
    );
    assert_eq!(hpa_replicas(300.0, 5.0, 1, 1, 20), 20);
    assert_eq!(
        hpa_replicas(5.4, 5.0, 1, 1, 20),
        1,
        "within the 0.1 tolerance"
    );
    assert_eq!(
        hpa_replicas(0.0, 5.0, 4, 1, 20),
        1,
        "clamped to minReplicas"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_adapter_query_returns_the_queue_length_and_the_hpa_scales_as_promised() -> Result<()> {
    let objects = built()?;
    let hpa = find(&objects, "HorizontalPodAutoscaler", "worker")?;
    let namespace = hpa["metadata"]["namespace"].as_str().context("namespace")?;
    let external = &hpa["spec"]["metrics"][0]["external"];
    let selector: BTreeMap<String, String> =
        serde_json::from_value(external["metric"]["selector"]["matchLabels"].clone())?;
    let target: f64 = external["target"]["averageValue"]
        .as_str()
        .context("averageValue")?
        .parse()?;
    let (min, max) = (
        hpa["spec"]["minReplicas"].as_u64().unwrap_or(1) as u32,
        hpa["spec"]["maxReplicas"].as_u64().context("max")? as u32,
    );
    let queue = selector
        .get("queue")
        .context("the HPA selects a queue")?
        .clone();
    let (jobs, current, promised) = promised_example()?;

    // A private broker, so that the HPA's own queue name ("jobs") is ours alone.
    let broker = PrivateBroker::start_with_prometheus("adapter").await?;
    let amqp = broker.amqp_url();
    let bridge =
        RunningBridge::start_ready(&["--amqp-url", &amqp, "--roles", "publish", "--queue", &queue])
            .await?;
    let rabbit = broker.prometheus_addr().context("prometheus port")?;
    let prometheus = Prometheus::start(
        "adapter",
        &scrape_configs(&objects, &[rabbit], &bridge.admin_addr.to_string())?,
    )
    .await?;

    publish_accepted(&bridge, "adapter", jobs).await?;

    let query = render_external_query(&adapter_rule()?, &selector, namespace)?;
    println!("adapter query: {query}");
    let value = testkit::eventually(
        "the query to see every job",
        Duration::from_secs(30),
        || async {
            let result = prometheus.query(&query).await.ok()?;
            let value = result.first()?.1;
            (value >= f64::from(jobs)).then_some(value)
        },
    )
    .await;
    assert_eq!(
        value,
        f64::from(jobs),
        "the queue holds exactly what was published"
    );
    let replicas = hpa_replicas(value, target, current, min, max);
    println!(
        "queue length {value}, target {target} per worker, {current} worker(s) now: the HPA wants {replicas}"
    );
    assert_eq!(
        replicas, promised,
        "hpa.yaml promises {promised} workers for {jobs} jobs"
    );

    // The bridges' metrics arrive through the PodMonitor's path too.
    let confirmed_query = format!(
        r#"sum(host_bridge_published_total{{namespace="{namespace}",outcome="confirmed"}})"#
    );
    let confirmed = testkit::eventually(
        "a scrape of the bridge",
        Duration::from_secs(20),
        || async {
            prometheus
                .query(&confirmed_query)
                .await
                .ok()?
                .first()
                .map(|r| r.1)
        },
    )
    .await;
    assert_eq!(confirmed, f64::from(jobs));
    bridge.stop().await;
    Ok(())
}

/// Metric names the dashboard's expressions use: identifiers directly
/// before a `{`.
fn dashboard_metrics() -> Result<BTreeSet<String>> {
    let text = std::fs::read_to_string(format!("{ROOT}/manifests/base/dashboards/wasm-jobs.json"))?;
    let dashboard: Value = serde_json::from_str(&text)?;
    let mut names = BTreeSet::new();
    for panel in dashboard["panels"].as_array().context("panels")? {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap_or_default();
            for (i, _) in expr.match_indices('{') {
                let name: String = expr[..i]
                    .chars()
                    .rev()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                if !name.is_empty() {
                    names.insert(name);
                }
            }
        }
    }
    Ok(names)
}

/// kube-state-metrics series the replica panel uses. No Kubernetes runs here
/// to export them; these are kube-state-metrics' documented names.
const KUBE_STATE_METRICS: &[&str] = &[
    "kube_deployment_status_replicas_ready",
    "kube_horizontalpodautoscaler_status_current_replicas",
    "kube_horizontalpodautoscaler_status_desired_replicas",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_metric_is_exported_by_the_bridge_or_rabbitmq() -> Result<()> {
    let objects = built()?;
    let broker = PrivateBroker::start_with_prometheus("dashboard").await?;
    let amqp = broker.amqp_url();
    let mut worker = StandIn::start().await?;
    let url = worker.url();
    let bridge =
        RunningBridge::start_ready(&["--amqp-url", &amqp, "--queue", "jobs", "--worker-url", &url])
            .await?;
    // Traffic on every path, so that every family has samples: a publish,
    // a consumed job, a producer observation.
    let client = reqwest::Client::new();
    let job = json!({ "id": "d-1", "created_at": "2026-01-01T00:00:00Z" });
    assert_eq!(
        client
            .post(bridge.publish_url("/v1/publish"))
            .json(&job)
            .send()
            .await?
            .status(),
        202
    );
    let observation = json!({ "route": "/generate", "method": "GET", "status": 202 });
    assert_eq!(
        client
            .post(bridge.publish_url("/v1/observe"))
            .json(&observation)
            .send()
            .await?
            .status(),
        204
    );
    worker.next_push(Duration::from_secs(20)).await;
    bridge
        .wait_metric(
            "host_bridge_jobs_total",
            &[("outcome", "acked")],
            1.0,
            Duration::from_secs(10),
        )
        .await;

    let rabbit = broker.prometheus_addr().context("prometheus port")?;
    let prometheus = Prometheus::start(
        "dashboard",
        &scrape_configs(&objects, &[rabbit], &bridge.admin_addr.to_string())?,
    )
    .await?;
    let mut exported = BTreeSet::new();
    for job in ["rabbitmq-0", "rabbitmq-1", "host-bridge"] {
        let names = testkit::eventually(
            &format!("a scrape of {job}"),
            Duration::from_secs(20),
            || async {
                let names = prometheus.metric_names(job).await.ok()?;
                (!names.is_empty()).then_some(names)
            },
        )
        .await;
        exported.extend(names);
    }
    // The queue-level family shows up once the queue has stats.
    testkit::eventually(
        "rabbitmq_detailed_queue_messages",
        Duration::from_secs(20),
        || async {
            let names = prometheus.metric_names("rabbitmq-0").await.ok()?;
            names
                .contains(&"rabbitmq_detailed_queue_messages".to_owned())
                .then_some(())
        },
    )
    .await;
    exported.extend(prometheus.metric_names("rabbitmq-0").await?);

    let wanted = dashboard_metrics()?;
    assert!(wanted.len() >= 10, "{wanted:?}");
    let missing: Vec<_> = wanted
        .iter()
        .filter(|m| !exported.contains(*m) && !KUBE_STATE_METRICS.contains(&m.as_str()))
        .collect();
    println!(
        "dashboard queries {} metrics; {} from kube-state-metrics",
        wanted.len(),
        KUBE_STATE_METRICS.len()
    );
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics nothing exports: {missing:?}"
    );
    bridge.stop().await;
    Ok(())
}

/// The nodes whose `/metrics/detailed` (with the ServiceMonitor's params)
/// has a `rabbitmq_detailed_queue_messages` series for `queue`.
async fn nodes_reporting(objects: &[Value], cluster: &Cluster, queue: &str) -> Result<Vec<String>> {
    let endpoint = &find(objects, "ServiceMonitor", "rabbitmq")?["spec"]["endpoints"]
        .as_array()
        .context("endpoints")?
        .iter()
        .find(|e| e["path"] == "/metrics/detailed")
        .context("a /metrics/detailed endpoint")?
        .clone();
    let params: Vec<(String, String)> = endpoint["params"]
        .as_object()
        .map(|p| {
            p.iter()
                .flat_map(|(k, vs)| {
                    vs.as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|v| v.as_str())
                        .map(|v| (k.clone(), v.to_owned()))
                        .collect::<Vec<_>>()
                })
                .collect()
        })
        .unwrap_or_default();
    let series = format!(r#"rabbitmq_detailed_queue_messages{{vhost="/",queue="{queue}"}}"#);
    let client = reqwest::Client::new();
    let mut reporting = Vec::new();
    for node in cluster.nodes.iter().filter(|n| n.is_running()) {
        let addr = node.prometheus_addr().context("prometheus port")?;
        let text = client
            .get(format!("http://{addr}/metrics/detailed"))
            .query(&params)
            .timeout(Duration::from_secs(5))
            .send()
            .await?
            .text()
            .await?;
        if text.lines().any(|l| l.starts_with(&series)) {
            reporting.push(node.node_name());
        }
    }
    Ok(reporting)
}

/// The HA overlay's signal on a real three-node cluster: the queue is
/// replicated on all three, only its leader reports its length, so the
/// adapter's query (which takes the max per queue before summing, in case
/// two nodes ever report it) returns the queue length once, not three
/// times; and after the leader is killed the new one reports it and the
/// query still returns it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_three_node_cluster_the_adapter_query_counts_the_queue_once() -> Result<()> {
    let objects = built_from("manifests/overlays/ha")?;
    let hpa = find(&objects, "HorizontalPodAutoscaler", "worker")?;
    let namespace = hpa["metadata"]["namespace"].as_str().context("namespace")?;
    let selector: BTreeMap<String, String> = serde_json::from_value(
        hpa["spec"]["metrics"][0]["external"]["metric"]["selector"]["matchLabels"].clone(),
    )?;
    let queue = selector
        .get("queue")
        .context("the HPA selects a queue")?
        .clone();
    let mut cluster = Cluster::start("adapter-ha", 3, true).await?;
    let bridge = RunningBridge::start_ready(&[
        "--amqp-url",
        &cluster.amqp_urls(),
        "--roles",
        "publish",
        "--queue",
        &queue,
        "--quorum-initial-group-size",
        "3",
    ])
    .await?;
    let replicas = cluster
        .wait_online(&queue, 3, Duration::from_secs(30))
        .await?;
    let rabbits: Vec<String> = cluster
        .nodes
        .iter()
        .filter_map(|n| n.prometheus_addr())
        .collect();
    let prometheus = Prometheus::start(
        "adapter-ha",
        &scrape_configs(&objects, &rabbits, &bridge.admin_addr.to_string())?,
    )
    .await?;
    let jobs = 12;
    publish_accepted(&bridge, "ha", jobs).await?;
    let query = render_external_query(&adapter_rule()?, &selector, namespace)?;
    let raw =
        format!(r#"rabbitmq_detailed_queue_messages{{queue="{queue}",namespace="{namespace}"}}"#);
    let see_all = async |what: &str| {
        testkit::eventually(what, Duration::from_secs(30), || async {
            let value = prometheus.query(&query).await.ok()?.first()?.1;
            (value >= f64::from(jobs)).then_some(value)
        })
        .await
    };
    let value = see_all("the query to see every job").await;
    let reporting = nodes_reporting(&objects, &cluster, &queue).await?;
    let series = prometheus.query(&raw).await?.len();
    println!(
        "3-node cluster: {query} = {value}; queue members {:?}, leader {}; \
         nodes reporting its length {reporting:?}; series in Prometheus {series}",
        replicas.members, replicas.leader
    );
    assert_eq!(value, f64::from(jobs), "counted once, not once per node");
    assert_eq!(
        reporting,
        vec![replicas.leader.clone()],
        "only the leader reports"
    );

    // The leader dies: Prometheus marks its series stale, the new leader
    // reports the length, and the query gives the same answer.
    let leader = cluster.index_of(&replicas.leader)?;
    cluster.nodes[leader].kill().await?;
    let after = cluster
        .wait_online(&queue, 2, Duration::from_secs(30))
        .await?;
    let new_leader = &cluster.nodes[cluster.index_of(&after.leader)?];
    let new_instance = new_leader.prometheus_addr().context("prometheus port")?;
    let reporting = testkit::eventually(
        "the new leader to report the queue",
        Duration::from_secs(60),
        || async {
            let reporting = nodes_reporting(&objects, &cluster, &queue).await.ok()?;
            (!reporting.is_empty()).then_some(reporting)
        },
    )
    .await;
    let value = testkit::eventually(
        "Prometheus to hold the new leader's series only",
        Duration::from_secs(60),
        || async {
            let series = prometheus.query(&raw).await.ok()?;
            let only_new = series.len() == 1 && series[0].0["instance"] == new_instance.as_str();
            let value = prometheus.query(&query).await.ok()?.first()?.1;
            only_new.then_some(value)
        },
    )
    .await;
    println!(
        "after killing the leader: new leader {}; nodes reporting {reporting:?}; query = {value}",
        after.leader
    );
    assert_eq!(reporting, vec![after.leader.clone()]);
    assert_eq!(value, f64::from(jobs));
    bridge.stop().await;
    Ok(())
}
