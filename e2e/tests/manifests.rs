//! The built Kubernetes manifests, parsed into k8s-openapi types through
//! kube, with every cross-reference checked: what a cluster would only
//! reveal at run time (a selector that matches nothing, a port name that
//! doesn't exist, a metric name the adapter doesn't serve) fails here.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{CommandFactory, Parser};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Container, PodTemplateSpec, Secret, Service};
use k8s_openapi::api::node::v1::RuntimeClass;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::core::DynamicObject;
use serde::de::DeserializeOwned;
use serde_json::Value;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// The app as each shim runs it: the default (containerd-shim-spin) and
/// the wasmtime variant (runwasi's containerd-shim-wasmtime).
const SHIM_BUILDS: [&str; 2] = ["manifests", "manifests/overlays/wasmtime"];

/// The Wasm containers: (workload, container), each named after its component.
const WASM_CONTAINERS: [(&str, &str); 2] = [("producer", "producer"), ("worker", "worker")];

/// A component's `environment` in its image's spin.toml.
fn spin_environment(component: &str) -> Result<BTreeMap<String, String>> {
    let app: toml::Value = toml::from_str(&std::fs::read_to_string(format!(
        "{ROOT}/components/{component}/spin.toml"
    ))?)?;
    Ok(app["component"][component]["environment"]
        .as_table()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
        .collect())
}

/// `kubectl kustomize <dir>`, parsed.
fn build(dir: &str) -> Result<Vec<DynamicObject>> {
    let output = Command::new("kubectl")
        .args(["kustomize", &format!("{ROOT}/{dir}")])
        .output()
        .context("kubectl is needed for `kubectl kustomize`")?;
    if !output.status.success() {
        bail!(
            "kubectl kustomize {dir}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let text = String::from_utf8(output.stdout)?;
    let mut objects = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let value: Value = serde::Deserialize::deserialize(doc)?;
        if !value.is_null() {
            objects.push(serde_json::from_value(value)?);
        }
    }
    Ok(objects)
}

fn kind(object: &DynamicObject) -> &str {
    object.types.as_ref().map_or("", |t| t.kind.as_str())
}

fn name(object: &DynamicObject) -> &str {
    object.metadata.name.as_deref().unwrap_or_default()
}

/// Every object of `kind`, as the typed `K`.
fn all<K: DeserializeOwned>(objects: &[DynamicObject], of_kind: &str) -> Result<Vec<K>> {
    objects
        .iter()
        .filter(|o| kind(o) == of_kind)
        .map(|o| {
            serde_json::to_value(o)
                .and_then(serde_json::from_value)
                .map_err(Into::into)
        })
        .collect()
}

fn one<K: DeserializeOwned>(objects: &[DynamicObject], of_kind: &str, named: &str) -> Result<K> {
    let object = objects
        .iter()
        .find(|o| kind(o) == of_kind && name(o) == named)
        .with_context(|| format!("no {of_kind}/{named}"))?;
    Ok(serde_json::from_value(serde_json::to_value(object)?)?)
}

/// Pod templates by workload name.
fn templates(objects: &[DynamicObject]) -> Result<BTreeMap<String, PodTemplateSpec>> {
    let mut out = BTreeMap::new();
    for d in all::<Deployment>(objects, "Deployment")? {
        out.insert(
            d.metadata.name.unwrap_or_default(),
            d.spec.context("spec")?.template,
        );
    }
    for s in all::<StatefulSet>(objects, "StatefulSet")? {
        out.insert(
            s.metadata.name.unwrap_or_default(),
            s.spec.context("spec")?.template,
        );
    }
    Ok(out)
}

fn labels(template: &PodTemplateSpec) -> BTreeMap<String, String> {
    template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default()
}

fn containers(template: &PodTemplateSpec) -> &[Container] {
    template
        .spec
        .as_ref()
        .map_or(&[], |s| s.containers.as_slice())
}

fn container<'a>(template: &'a PodTemplateSpec, named: &str) -> Result<&'a Container> {
    containers(template)
        .iter()
        .find(|c| c.name == named)
        .with_context(|| format!("no container {named}"))
}

fn env<'a>(container: &'a Container, key: &str) -> Option<&'a str> {
    container
        .env
        .as_ref()?
        .iter()
        .find(|e| e.name == key)?
        .value
        .as_deref()
}

fn port_named(container: &Container, port: &str) -> Option<i32> {
    container
        .ports
        .as_ref()?
        .iter()
        .find(|p| p.name.as_deref() == Some(port))
        .map(|p| p.container_port)
}

fn subset(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Whether a label selector (`matchLabels` and `matchExpressions`) selects `labels`.
fn selects(selector: &Value, labels: &BTreeMap<String, String>) -> bool {
    let match_labels: BTreeMap<String, String> =
        serde_json::from_value(selector["matchLabels"].clone()).unwrap_or_default();
    let expressions = selector["matchExpressions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if match_labels.is_empty() && expressions.is_empty() {
        return false;
    }
    let labels_ok = match_labels.iter().all(|(k, v)| labels.get(k) == Some(v));
    let expressions_ok = expressions.iter().all(|e| {
        let value = labels.get(e["key"].as_str().unwrap_or_default());
        let values: Vec<&str> = e["values"]
            .as_array()
            .map(|v| v.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        match e["operator"].as_str() {
            Some("In") => value.is_some_and(|v| values.contains(&v.as_str())),
            Some("NotIn") => value.is_none_or(|v| !values.contains(&v.as_str())),
            Some("Exists") => value.is_some(),
            Some("DoesNotExist") => value.is_none(),
            _ => false,
        }
    });
    labels_ok && expressions_ok
}

fn seconds(text: &str) -> Result<Duration> {
    humantime::parse_duration(text).with_context(|| format!("not a duration: {text}"))
}

/// The bridge's own parse of a container's env: `host-bridge --flag=value`
/// for each variable, where a value from a Secret gets a stand-in. Fails on
/// a variable the bridge does not read, and on settings it would refuse.
fn bridge_config(workload: &str, bridge: &Container) -> Result<host_bridge::Config> {
    let command = host_bridge::Config::command();
    let mut args = vec!["host-bridge".to_owned()];
    for var in bridge.env.iter().flatten() {
        let Some(flag) = command
            .get_arguments()
            .find(|a| a.get_env().is_some_and(|n| n == var.name.as_str()))
            .and_then(|a| a.get_long())
        else {
            bail!("{workload}: the bridge reads no {}", var.name);
        };
        let value = var.value.clone().unwrap_or_else(|| {
            if var.name == "AMQP_URL" {
                "amqp://x@y/%2f".into()
            } else {
                "from-a-secret".into()
            }
        });
        args.push(format!("--{flag}={value}"));
    }
    let config = host_bridge::Config::try_parse_from(args)
        .with_context(|| format!("{workload}: the bridge refuses its env"))?;
    config.validate()?;
    Ok(config)
}

#[test]
fn hpa_targets_an_existing_deployment_and_runtime_classes_exist() -> Result<()> {
    let objects = build("manifests")?;
    let hpa: HorizontalPodAutoscaler = one(&objects, "HorizontalPodAutoscaler", "worker")?;
    let target = hpa.spec.as_ref().context("spec")?.scale_target_ref.clone();
    assert_eq!(
        (target.api_version.as_deref(), target.kind.as_str()),
        (Some("apps/v1"), "Deployment")
    );
    let worker: Deployment = one(&objects, "Deployment", &target.name)?;
    assert_eq!(
        worker.spec.as_ref().and_then(|s| s.replicas),
        None,
        "the HPA owns the replica count"
    );

    let classes: BTreeSet<String> = all::<RuntimeClass>(&build("runtime-class")?, "RuntimeClass")?
        .into_iter()
        .map(|c| c.metadata.name.unwrap_or_default())
        .collect();
    assert!(classes.contains("wasmtime-spin-v2"), "{classes:?}");
    let wasmtime = build("manifests/overlays/wasmtime")?;
    for (name, template) in templates(&objects)?
        .into_iter()
        .chain(templates(&wasmtime)?)
    {
        if let Some(class) = template
            .spec
            .as_ref()
            .and_then(|s| s.runtime_class_name.clone())
        {
            assert!(
                classes.contains(&class),
                "{name} uses runtimeClassName {class}, not in runtime-class/"
            );
        }
    }
    Ok(())
}

#[test]
fn services_select_pods_and_target_ports_that_exist() -> Result<()> {
    let objects = build("manifests")?;
    let templates = templates(&objects)?;
    for service in all::<Service>(&objects, "Service")? {
        let service_name = service.metadata.name.clone().unwrap_or_default();
        let spec = service.spec.context("spec")?;
        let selector = spec.selector.unwrap_or_default();
        let selected: Vec<_> = templates
            .values()
            .filter(|t| subset(&selector, &labels(t)))
            .collect();
        assert!(
            !selected.is_empty(),
            "Service {service_name} selects no pods"
        );
        for port in spec.ports.unwrap_or_default() {
            if let Some(IntOrString::String(target)) = &port.target_port {
                for template in &selected {
                    assert!(
                        containers(template)
                            .iter()
                            .any(|c| port_named(c, target).is_some()),
                        "Service {service_name}: no container port named {target}"
                    );
                }
            }
        }
    }
    Ok(())
}

#[test]
fn secrets_referenced_exist_with_their_keys() -> Result<()> {
    let objects = build("manifests")?;
    let secrets: BTreeMap<String, Secret> = all::<Secret>(&objects, "Secret")?
        .into_iter()
        .map(|s| (s.metadata.name.clone().unwrap_or_default(), s))
        .collect();
    for (workload, template) in templates(&objects)? {
        for c in containers(&template) {
            for var in c.env.iter().flatten() {
                let Some(key_ref) = var
                    .value_from
                    .as_ref()
                    .and_then(|v| v.secret_key_ref.as_ref())
                else {
                    continue;
                };
                let secret = secrets
                    .get(&key_ref.name)
                    .with_context(|| format!("{workload}: no Secret {}", key_ref.name))?;
                let has = secret
                    .string_data
                    .as_ref()
                    .is_some_and(|d| d.contains_key(&key_ref.key))
                    || secret
                        .data
                        .as_ref()
                        .is_some_and(|d| d.contains_key(&key_ref.key));
                assert!(
                    has,
                    "{workload}/{}: Secret {} has no key {}",
                    c.name, key_ref.name, key_ref.key
                );
            }
        }
    }
    Ok(())
}

#[test]
fn bridge_containers_agree_with_the_bridge_and_the_components() -> Result<()> {
    for dir in SHIM_BUILDS {
        bridge_containers_agree_in(dir).with_context(|| dir.to_owned())?;
    }
    Ok(())
}

fn bridge_containers_agree_in(dir: &str) -> Result<()> {
    let objects = build(dir)?;
    let templates = templates(&objects)?;
    let defaults = host_bridge::Config::try_parse_from(["host-bridge"])?;
    for workload in ["producer", "worker"] {
        let bridge = container(&templates[workload], "bridge")?;
        let config = bridge_config(workload, bridge)?;
        assert_eq!(
            port_named(bridge, "admin"),
            Some(i32::from(config.admin_addr.port())),
            "{workload}"
        );
        assert_eq!(
            config.queue, defaults.queue,
            "{workload} uses the default queue name"
        );
    }

    // The producer's component calls the bridge where its image's spin.toml says.
    let producer_app: toml::Value = toml::from_str(&std::fs::read_to_string(format!(
        "{ROOT}/components/producer/spin.toml"
    ))?)?;
    let publish_url = producer_app["component"]["producer"]["environment"]["BRIDGE_PUBLISH_URL"]
        .as_str()
        .unwrap_or_default();
    let producer_bridge = container(&templates["producer"], "bridge")?;
    let publish_addr = env(producer_bridge, "PUBLISH_ADDR").unwrap_or_default();
    assert!(
        publish_url.starts_with(&format!("http://{publish_addr}/")),
        "{publish_url} vs {publish_addr}"
    );

    // The consumer pushes to the worker component's port and route.
    let worker_bridge = container(&templates["worker"], "bridge")?;
    let worker_url = reqwest::Url::parse(env(worker_bridge, "WORKER_URL").unwrap_or_default())?;
    let worker_port = port_named(container(&templates["worker"], "worker")?, "http");
    assert_eq!(
        worker_url.port_or_known_default().map(i32::from),
        worker_port
    );
    let worker_app: toml::Value = toml::from_str(&std::fs::read_to_string(format!(
        "{ROOT}/components/worker/spin.toml"
    ))?)?;
    let route = worker_app["trigger"]["http"][0]["route"]
        .as_str()
        .unwrap_or_default();
    assert_eq!(worker_url.path(), route);
    Ok(())
}

/// Clients reach the producer pod only through the bridge's ingress: the
/// Service targets it, the NetworkPolicy admits only it, and it forwards to
/// the port the component listens on. The component's own port (the shim's
/// listener, with no read timeouts) is reachable from nowhere but the pod.
#[test]
fn clients_reach_the_producer_only_through_the_bridges_ingress() -> Result<()> {
    for dir in SHIM_BUILDS {
        clients_reach_the_producer_only_through_the_ingress_in(dir)
            .with_context(|| dir.to_owned())?;
    }
    Ok(())
}

fn clients_reach_the_producer_only_through_the_ingress_in(dir: &str) -> Result<()> {
    let objects = build(dir)?;
    let templates = templates(&objects)?;
    let producer = &templates["producer"];
    let bridge = container(producer, "bridge")?;
    let config = bridge_config("producer", bridge)?;
    assert!(
        config.has(host_bridge::Role::Ingress),
        "the ingress role is on"
    );
    let ingress_port = i32::from(config.ingress_addr.port());
    assert_eq!(port_named(bridge, "http"), Some(ingress_port));

    let service: Service = one(&objects, "Service", "producer")?;
    let targets: Vec<_> = service
        .spec
        .and_then(|s| s.ports)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|p| p.target_port)
        .collect();
    assert_eq!(targets, [IntOrString::String("http".into())]);

    let component = container(producer, "producer")?;
    let component_port = port_named(component, "wasm").context("the component's port")?;
    let upstream = reqwest::Url::parse(&config.producer_url)?;
    assert_eq!(
        upstream.port_or_known_default().map(i32::from),
        Some(component_port)
    );
    assert!(
        upstream.host_str() == Some("127.0.0.1"),
        "the ingress forwards on loopback"
    );
    let pod = labels(producer);
    assert!(
        peers_allowed(&objects, &pod, ingress_port)?.contains(&Value::Null),
        "clients may reach the ingress"
    );
    assert_eq!(
        peers_allowed(&objects, &pod, component_port)?,
        Vec::<Value>::new(),
        "nothing may reach the component's own port"
    );
    Ok(())
}

#[test]
fn grace_period_covers_job_time_plus_drain() -> Result<()> {
    for dir in SHIM_BUILDS {
        grace_period_covers_job_time_plus_drain_in(dir).with_context(|| dir.to_owned())?;
        producer_outlives_its_ingress_drain_in(dir).with_context(|| dir.to_owned())?;
    }
    Ok(())
}

fn pre_stop_sleep(container: &Container) -> Option<Duration> {
    container
        .lifecycle
        .as_ref()
        .and_then(|l| l.pre_stop.as_ref())
        .and_then(|h| h.sleep.as_ref())
        .map(|s| Duration::from_secs(s.seconds as u64))
}

/// Neither shim drains its listener on SIGTERM, so the producer component
/// must outlive the ingress's drain, which finishes each request it took
/// within BODY_READ_TIMEOUT + PRODUCER_TIMEOUT while the publish API still
/// takes their publishes (host-bridge's `Running::drain`); then the publish
/// API finishes its confirms, within PUBLISH_TIMEOUT, before SIGKILL.
fn producer_outlives_its_ingress_drain_in(dir: &str) -> Result<()> {
    let objects = build(dir)?;
    let templates = templates(&objects)?;
    let producer = &templates["producer"];
    let spec = producer.spec.as_ref().context("spec")?;
    let grace = Duration::from_secs(spec.termination_grace_period_seconds.context("grace")? as u64);
    let config = bridge_config("producer", container(producer, "bridge")?)?;
    let pre_stop = pre_stop_sleep(container(producer, "producer")?)
        .context("the producer's Wasm container has a preStop sleep")?;
    let front = config.body_read_timeout + config.producer_timeout;
    println!(
        "{dir}: BODY_READ_TIMEOUT {:?} + PRODUCER_TIMEOUT {:?} <= preStop {pre_stop:?}; + PUBLISH_TIMEOUT {:?} < grace {grace:?}",
        config.body_read_timeout, config.producer_timeout, config.publish_timeout
    );
    assert!(
        front <= pre_stop,
        "the component must outlive the ingress's drain"
    );
    assert!(
        pre_stop + config.publish_timeout + Duration::from_secs(2) <= grace,
        "the publish API's drain must end before SIGKILL"
    );
    Ok(())
}

fn grace_period_covers_job_time_plus_drain_in(dir: &str) -> Result<()> {
    let objects = build(dir)?;
    let templates = templates(&objects)?;
    let worker = &templates["worker"];
    let spec = worker.spec.as_ref().context("spec")?;
    let grace = Duration::from_secs(spec.termination_grace_period_seconds.context("grace")? as u64);
    let bridge = container(worker, "bridge")?;
    let drain = seconds(env(bridge, "SHUTDOWN_GRACE").context("SHUTDOWN_GRACE")?)?;
    let job_timeout = seconds(env(bridge, "JOB_TIMEOUT").context("JOB_TIMEOUT")?)?;
    let pre_stop = pre_stop_sleep(container(worker, "worker")?)
        .context("the Wasm container has a preStop sleep")?;
    let app: toml::Value = toml::from_str(&std::fs::read_to_string(format!(
        "{ROOT}/components/worker/spin.toml"
    ))?)?;
    let job = Duration::from_millis(
        app["component"]["worker"]["environment"]["WORK_DURATION_MS"]
            .as_str()
            .unwrap_or("0")
            .parse()?,
    );
    println!(
        "job {job:?} < JOB_TIMEOUT {job_timeout:?} <= SHUTDOWN_GRACE {drain:?} <= preStop {pre_stop:?} < grace {grace:?}"
    );
    assert!(
        job < job_timeout,
        "a normal job must finish within JOB_TIMEOUT"
    );
    assert!(
        job_timeout <= drain,
        "a push in flight must end before the drain deadline"
    );
    assert!(
        drain <= pre_stop,
        "the Wasm worker must outlive the bridge's drain"
    );
    assert!(
        pre_stop < grace && drain + Duration::from_secs(2) <= grace,
        "the drain must end before SIGKILL"
    );
    Ok(())
}

#[test]
fn monitors_name_ports_that_exist_and_the_adapter_serves_the_hpas_metric() -> Result<()> {
    let objects = build("manifests")?;
    let templates = templates(&objects)?;
    let services = all::<Service>(&objects, "Service")?;
    let monitor = |k: &str, n: &str| -> Result<Value> {
        let object = objects
            .iter()
            .find(|o| kind(o) == k && name(o) == n)
            .with_context(|| format!("no {k}/{n}"))?;
        Ok(serde_json::to_value(object)?)
    };

    // The release label kube-prometheus-stack selects monitors by.
    let pod_monitor = monitor("PodMonitor", "host-bridge")?;
    let service_monitor = monitor("ServiceMonitor", "rabbitmq")?;
    for m in [&pod_monitor, &service_monitor] {
        assert_eq!(m["metadata"]["labels"]["release"], "kube-prometheus-stack");
    }
    let selected: Vec<_> = templates
        .values()
        .filter(|t| selects(&pod_monitor["spec"]["selector"], &labels(t)))
        .collect();
    assert_eq!(
        selected.len(),
        2,
        "the PodMonitor selects the producer and worker pods"
    );
    for endpoint in pod_monitor["spec"]["podMetricsEndpoints"]
        .as_array()
        .context("endpoints")?
    {
        let port = endpoint["port"].as_str().unwrap_or_default();
        for t in &selected {
            assert!(
                containers(t).iter().any(|c| port_named(c, port).is_some()),
                "no pod port {port}"
            );
        }
    }
    let rabbit = services
        .iter()
        .find(|s| {
            selects(
                &service_monitor["spec"]["selector"],
                s.metadata.labels.as_ref().unwrap_or(&BTreeMap::new()),
            )
        })
        .context("the ServiceMonitor selects no Service")?;
    let port_names: BTreeSet<_> = rabbit
        .spec
        .as_ref()
        .and_then(|s| s.ports.clone())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|p| p.name)
        .collect();
    let endpoints = service_monitor["spec"]["endpoints"]
        .as_array()
        .context("endpoints")?;
    for endpoint in endpoints {
        assert!(
            port_names.contains(endpoint["port"].as_str().unwrap_or_default()),
            "{endpoint}"
        );
    }
    assert!(
        endpoints.iter().any(|e| e["path"] == "/metrics/detailed"
            && e["params"]["family"][0] == "queue_coarse_metrics")
    );

    // The adapter's rule: the series comes from that family, and its
    // exposed name is the HPA's metric.
    let values: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(format!(
        "{ROOT}/manifests/helm/prometheus-adapter.values.yaml"
    ))?)?;
    let rule = &values["rules"]["external"][0];
    assert!(
        rule["seriesQuery"]
            .as_str()
            .unwrap_or_default()
            .starts_with("rabbitmq_detailed_queue_messages{")
    );
    let hpa: HorizontalPodAutoscaler = one(&objects, "HorizontalPodAutoscaler", "worker")?;
    let metric = hpa
        .spec
        .and_then(|s| s.metrics)
        .unwrap_or_default()
        .into_iter()
        .find_map(|m| m.external)
        .context("an External metric")?;
    assert_eq!(
        rule["name"]["as"].as_str(),
        Some(metric.metric.name.as_str())
    );
    assert_eq!(metric.target.type_, "AverageValue");
    // The relist interval is at or above the scrape interval.
    let stack: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(format!(
        "{ROOT}/manifests/helm/kube-prometheus-stack.values.yaml"
    ))?)?;
    let scrape = seconds(
        stack["prometheus"]["prometheusSpec"]["scrapeInterval"]
            .as_str()
            .unwrap_or_default(),
    )?;
    let relist = seconds(values["metricsRelistInterval"].as_str().unwrap_or_default())?;
    assert!(relist >= scrape, "relist {relist:?} < scrape {scrape:?}");
    Ok(())
}

#[test]
fn keda_overlay_replaces_the_hpa_with_a_scaled_object_on_the_same_queue() -> Result<()> {
    let objects = build("manifests/overlays/keda")?;
    assert!(
        objects.iter().all(|o| kind(o) != "HorizontalPodAutoscaler"),
        "KEDA owns the HPA"
    );
    let scaled = serde_json::to_value(
        objects
            .iter()
            .find(|o| kind(o) == "ScaledObject")
            .context("a ScaledObject")?,
    )?;
    let target = scaled["spec"]["scaleTargetRef"]["name"]
        .as_str()
        .unwrap_or_default();
    let _: Deployment = one(&objects, "Deployment", target)?;
    assert_eq!(scaled["spec"]["minReplicaCount"], 0);
    let trigger = &scaled["spec"]["triggers"][0];
    assert_eq!(trigger["metadata"]["queueName"], "jobs");
    let auth = trigger["authenticationRef"]["name"]
        .as_str()
        .unwrap_or_default();
    let auth = serde_json::to_value(
        objects
            .iter()
            .find(|o| kind(o) == "TriggerAuthentication" && name(o) == auth)
            .context("its TriggerAuthentication")?,
    )?;
    let secret_ref = &auth["spec"]["secretTargetRef"][0];
    let secret: Secret = one(
        &objects,
        "Secret",
        secret_ref["name"].as_str().unwrap_or_default(),
    )?;
    assert!(
        secret
            .string_data
            .unwrap_or_default()
            .contains_key(secret_ref["key"].as_str().unwrap_or_default())
    );
    Ok(())
}

#[test]
fn network_policies_let_only_the_bridges_reach_amqp() -> Result<()> {
    let objects = build("manifests")?;
    let templates = templates(&objects)?;
    let selected = |selector: &Value| -> BTreeSet<String> {
        templates
            .iter()
            .filter(|(_, t)| selects(selector, &labels(t)))
            .map(|(n, _)| n.clone())
            .collect()
    };
    for policy in objects.iter().filter(|o| kind(o) == "NetworkPolicy") {
        let policy = serde_json::to_value(policy)?;
        let selector = &policy["spec"]["podSelector"];
        if selector.as_object().is_some_and(|o| o.is_empty()) {
            continue; // default deny: every pod
        }
        assert!(
            !selected(selector).is_empty(),
            "{} selects no pod",
            policy["metadata"]["name"]
        );
    }
    let rabbit = serde_json::to_value(
        objects
            .iter()
            .find(|o| kind(o) == "NetworkPolicy" && name(o) == "rabbitmq")
            .context("policy")?,
    )?;
    let amqp_rule = rabbit["spec"]["ingress"]
        .as_array()
        .and_then(|rules| rules.iter().find(|r| r["ports"][0]["port"] == 5672))
        .context("an AMQP rule")?;
    let clients = selected(&amqp_rule["from"][0]["podSelector"]);
    assert_eq!(
        clients,
        BTreeSet::from(["producer".to_owned(), "worker".to_owned()])
    );
    Ok(())
}

/// What the RabbitMQ Cluster Operator makes of the overlay's RabbitmqCluster.
/// The build holds only the custom resource; the pods, Services and Secret
/// the checks below must match are the operator's, named and labelled as
/// its v2.22.3 source does (internal/metadata/label.go, internal/resource/).
struct OperatorCluster {
    name: String,
    namespace: String,
    replicas: u32,
    spec: Value,
    /// The resource's own labels, which the operator copies onto its Services
    /// (not onto the pods), app.kubernetes.io/* excepted.
    labels: BTreeMap<String, String>,
}

impl OperatorCluster {
    /// The one RabbitmqCluster in `objects`.
    fn of(objects: &[DynamicObject]) -> Result<Self> {
        let mut clusters = objects.iter().filter(|o| kind(o) == "RabbitmqCluster");
        let cluster = serde_json::to_value(clusters.next().context("a RabbitmqCluster")?)?;
        assert!(clusters.next().is_none(), "one RabbitmqCluster");
        let labels: BTreeMap<String, String> =
            serde_json::from_value(cluster["metadata"]["labels"].clone()).unwrap_or_default();
        Ok(Self {
            name: cluster["metadata"]["name"]
                .as_str()
                .context("name")?
                .to_owned(),
            namespace: cluster["metadata"]["namespace"]
                .as_str()
                .context("namespace")?
                .to_owned(),
            // The CRD's default, when unset, is 1.
            replicas: cluster["spec"]["replicas"]
                .as_u64()
                .unwrap_or(1)
                .try_into()?,
            spec: cluster["spec"].clone(),
            labels: labels
                .into_iter()
                .filter(|(k, _)| !k.starts_with("app.kubernetes.io"))
                .collect(),
        })
    }

    /// metadata.Label: the pods' labels (the StatefulSet `<name>-server`).
    fn pod_labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("app.kubernetes.io/name".to_owned(), self.name.clone()),
            (
                "app.kubernetes.io/component".to_owned(),
                "rabbitmq".to_owned(),
            ),
            (
                "app.kubernetes.io/part-of".to_owned(),
                "rabbitmq".to_owned(),
            ),
        ])
    }

    /// The container ports of the pods (no TLS, no extra plugins).
    fn pod_ports() -> BTreeMap<&'static str, i32> {
        BTreeMap::from([
            ("epmd", 4369),
            ("amqp", 5672),
            ("management", 15672),
            ("prometheus", 15692),
        ])
    }

    /// The headless Service `<name>-nodes` (epmd, cluster-rpc): its labels.
    fn headless_service_labels(&self) -> BTreeMap<String, String> {
        let mut labels = self.pod_labels();
        labels.extend(self.labels.clone());
        labels
    }

    /// The client Service `<name>`: the headless one's labels plus
    /// spec.service.labels, and ports amqp, management, prometheus.
    fn client_service_labels(&self) -> BTreeMap<String, String> {
        let mut labels = self.headless_service_labels();
        let extra: BTreeMap<String, String> =
            serde_json::from_value(self.spec["service"]["labels"].clone()).unwrap_or_default();
        for (k, v) in extra {
            labels.entry(k).or_insert(v);
        }
        labels
    }

    fn client_service_ports() -> BTreeSet<&'static str> {
        BTreeSet::from(["amqp", "management", "prometheus"])
    }

    /// Each node's AMQP address: pod `<name>-server-N` through the headless
    /// Service `<name>-nodes`, vhost `/`.
    fn node_urls(&self) -> BTreeSet<String> {
        (0..self.replicas)
            .map(|i| {
                format!(
                    "amqp://{0}-server-{i}.{0}-nodes.{1}.svc:5672/%2f",
                    self.name, self.namespace
                )
            })
            .collect()
    }

    /// Every object the operator creates for the cluster, as (kind, name).
    fn children(&self) -> BTreeSet<(String, String)> {
        [
            ("Service", ""),
            ("Service", "-nodes"),
            ("StatefulSet", "-server"),
            ("ConfigMap", "-server-conf"),
            ("ConfigMap", "-plugins-conf"),
            ("Secret", "-default-user"),
            ("Secret", "-erlang-cookie"),
            ("ServiceAccount", "-server"),
            ("Role", "-peer-discovery"),
            ("RoleBinding", "-server"),
        ]
        .into_iter()
        .map(|(k, suffix)| (k.to_owned(), format!("{}{suffix}", self.name)))
        .collect()
    }

    /// The generated default user's Secret and the keys the operator writes.
    fn default_user_secret(&self) -> (String, BTreeSet<&'static str>) {
        (
            format!("{}-default-user", self.name),
            BTreeSet::from([
                "username",
                "password",
                "host",
                "port",
                "connection_string",
                "default_user.conf",
                "provider",
                "type",
            ]),
        )
    }
}

/// `key = value` lines of a rabbitmq.conf.
fn rabbitmq_conf(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

#[test]
fn ha_overlay_runs_a_three_node_cluster_in_place_of_the_single_node_broker() -> Result<()> {
    let base = build("manifests")?;
    let objects = build("manifests/overlays/ha")?;
    let cluster = OperatorCluster::of(&objects)?;

    // Nothing of the single-node broker is left, and nothing the operator
    // creates is claimed by the build.
    assert!(
        all::<StatefulSet>(&objects, "StatefulSet")?.is_empty(),
        "no single-node StatefulSet"
    );
    for (k, n) in [
        ("Secret", "rabbitmq-credentials"),
        ("ConfigMap", "rabbitmq-config"),
    ] {
        assert!(
            !objects.iter().any(|o| kind(o) == k && name(o) == n),
            "{k}/{n} is left over"
        );
    }
    let operators = cluster.children();
    for o in &objects {
        let id = (kind(o).to_owned(), name(o).to_owned());
        assert!(
            !operators.contains(&id),
            "{}/{} is the operator's to create",
            id.0,
            id.1
        );
    }

    // A majority survives one lost node, and a partition leaves one majority.
    assert!(
        cluster.replicas >= 3 && cluster.replicas % 2 == 1,
        "replicas {}",
        cluster.replicas
    );
    // Hard anti-affinity per node, on the operator's pod labels.
    let terms = cluster.spec["affinity"]["podAntiAffinity"]
        ["requiredDuringSchedulingIgnoredDuringExecution"]
        .as_array()
        .context("required pod anti-affinity")?;
    assert!(
        terms
            .iter()
            .any(|t| t["topologyKey"] == "kubernetes.io/hostname"
                && selects(&t["labelSelector"], &cluster.pod_labels())),
        "{terms:?}"
    );
    let storage = cluster.spec["persistence"]["storage"]
        .as_str()
        .unwrap_or("0");
    assert!(
        !storage.starts_with('0'),
        "persistent storage, not emptyDir: {storage}"
    );
    let resources = &cluster.spec["resources"];
    assert_eq!(
        resources["requests"]["memory"], resources["limits"]["memory"],
        "memory request = limit (RabbitMQ's alarm follows the limit)"
    );
    assert!(
        cluster.spec["rabbitmq"]["additionalPlugins"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p == "rabbitmq_prometheus"))
    );

    // The base's broker settings that matter carry over.
    let base_config: ConfigMap = one(&base, "ConfigMap", "rabbitmq-config")?;
    let base_conf = rabbitmq_conf(
        base_config
            .data
            .as_ref()
            .and_then(|d| d.get("rabbitmq.conf"))
            .context("rabbitmq.conf")?,
    );
    let conf = rabbitmq_conf(
        cluster.spec["rabbitmq"]["additionalConfig"]
            .as_str()
            .unwrap_or_default(),
    );
    assert_eq!(
        conf.get("collect_statistics_interval"),
        base_conf.get("collect_statistics_interval"),
        "the HPA's signal is as fresh as with the single node"
    );
    assert_eq!(
        conf.get("quorum_queue.continuous_membership_reconciliation.target_group_size"),
        Some(&cluster.replicas.to_string()),
        "quorum queues grow back to one replica per node"
    );

    // kustomize cannot include manifests/ from below it, so the overlay
    // repeats its HPA and image pins: they must agree.
    let hpa = |objects: &[DynamicObject]| -> Result<Value> {
        let hpa: HorizontalPodAutoscaler = one(objects, "HorizontalPodAutoscaler", "worker")?;
        Ok(serde_json::to_value(hpa.spec)?)
    };
    assert_eq!(
        hpa(&objects)?,
        hpa(&base)?,
        "overlays/ha/hpa.yaml = hpa.yaml"
    );
    let images = |objects: &[DynamicObject]| -> Result<BTreeMap<String, Option<String>>> {
        Ok(templates(objects)?
            .iter()
            .flat_map(|(w, t)| {
                containers(t)
                    .iter()
                    .map(move |c| (format!("{w}/{}", c.name), c.image.clone()))
            })
            .collect())
    };
    let base_images = images(&base)?;
    for (container, image) in images(&objects)? {
        assert_eq!(
            Some(&image),
            base_images.get(&container),
            "{container}: the image pins of overlays/ha and manifests/ differ"
        );
    }
    Ok(())
}

#[test]
fn ha_bridges_list_every_node_and_take_credentials_from_the_operator() -> Result<()> {
    let objects = build("manifests/overlays/ha")?;
    let cluster = OperatorCluster::of(&objects)?;
    let templates = templates(&objects)?;
    let (user_secret, user_keys) = cluster.default_user_secret();
    let from_secret = |c: &Container, var: &str| -> Option<(String, String)> {
        let key_ref = c
            .env
            .as_ref()?
            .iter()
            .find(|e| e.name == var)?
            .value_from
            .as_ref()?
            .secret_key_ref
            .as_ref()?;
        Some((key_ref.name.clone(), key_ref.key.clone()))
    };
    for workload in ["producer", "worker"] {
        let bridge = container(&templates[workload], "bridge")?;
        let list = env(bridge, "AMQP_URL").context("AMQP_URL as a plain value")?;
        let urls: Vec<&str> = list.split(',').collect();
        assert_eq!(
            urls.iter()
                .map(|u| (*u).to_owned())
                .collect::<BTreeSet<_>>(),
            cluster.node_urls(),
            "{workload}: AMQP_URL names each node once"
        );
        assert_eq!(urls.len(), cluster.node_urls().len(), "{workload}: {list}");
        for url in &urls {
            let url = reqwest::Url::parse(url)?;
            assert!(
                url.username().is_empty() && url.password().is_none(),
                "{workload}: no credentials in AMQP_URL"
            );
        }
        assert_eq!(
            from_secret(bridge, "AMQP_USERNAME"),
            Some((user_secret.clone(), "username".to_owned())),
            "{workload}"
        );
        assert_eq!(
            from_secret(bridge, "AMQP_PASSWORD"),
            Some((user_secret.clone(), "password".to_owned())),
            "{workload}"
        );
        assert_eq!(
            env(bridge, "QUORUM_INITIAL_GROUP_SIZE"),
            Some(cluster.replicas.to_string().as_str()),
            "{workload}: a queue replica on every node"
        );
        // The bridge itself accepts all of it (a list of URLs, the overrides).
        bridge_config(workload, bridge)?;
    }

    // Every Secret reference resolves: to the build, or to the operator's.
    let secrets: BTreeMap<String, Secret> = all::<Secret>(&objects, "Secret")?
        .into_iter()
        .map(|s| (s.metadata.name.clone().unwrap_or_default(), s))
        .collect();
    for (workload, template) in &templates {
        for c in containers(template) {
            for var in c.env.iter().flatten() {
                let Some((secret, key)) = from_secret(c, &var.name) else {
                    continue;
                };
                let resolves = if secret == user_secret {
                    user_keys.contains(key.as_str())
                } else {
                    secrets.get(&secret).is_some_and(|s| {
                        s.string_data.as_ref().is_some_and(|d| d.contains_key(&key))
                            || s.data.as_ref().is_some_and(|d| d.contains_key(&key))
                    })
                };
                assert!(
                    resolves,
                    "{workload}/{}: no key {key} in Secret {secret}",
                    c.name
                );
            }
        }
    }
    Ok(())
}

/// The peers (NetworkPolicy `from` entries) allowed to reach `port` on a pod
/// labelled `target`; `Value::Null` stands for a rule without `from` (anyone).
fn peers_allowed(
    objects: &[DynamicObject],
    target: &BTreeMap<String, String>,
    port: i32,
) -> Result<Vec<Value>> {
    let mut peers = Vec::new();
    for policy in objects.iter().filter(|o| kind(o) == "NetworkPolicy") {
        let policy = serde_json::to_value(policy)?;
        let selector = &policy["spec"]["podSelector"];
        let every_pod = selector.as_object().is_some_and(|o| o.is_empty());
        if !every_pod && !selects(selector, target) {
            continue;
        }
        for rule in policy["spec"]["ingress"].as_array().into_iter().flatten() {
            let ports = rule["ports"].as_array();
            let opens = ports.is_none_or(|ports| {
                ports.iter().any(|p| {
                    let from = p["port"].as_i64().unwrap_or(-1);
                    let to = p["endPort"].as_i64().unwrap_or(from);
                    (from..=to).contains(&i64::from(port))
                })
            });
            if opens {
                match rule["from"].as_array() {
                    Some(from) => peers.extend(from.iter().cloned()),
                    None => peers.push(Value::Null),
                }
            }
        }
    }
    Ok(peers)
}

#[test]
fn ha_budget_monitor_and_policies_select_the_operators_pods() -> Result<()> {
    let base = build("manifests")?;
    let objects = build("manifests/overlays/ha")?;
    let cluster = OperatorCluster::of(&objects)?;
    let rabbit_pods = cluster.pod_labels();
    let mut pods: BTreeMap<String, BTreeMap<String, String>> = templates(&objects)?
        .iter()
        .map(|(n, t)| (n.clone(), labels(t)))
        .collect();
    let rabbit = format!("{}-server", cluster.name);
    pods.insert(rabbit.clone(), rabbit_pods.clone());

    // One budget covers the RabbitMQ pods, and only them: one node at a time.
    let budgets: Vec<_> = all::<PodDisruptionBudget>(&objects, "PodDisruptionBudget")?
        .into_iter()
        .filter_map(|b| b.spec)
        .filter(|s| {
            s.selector
                .as_ref()
                .and_then(|s| serde_json::to_value(s).ok())
                .is_some_and(|s| selects(&s, &rabbit_pods))
        })
        .collect();
    assert_eq!(
        budgets.len(),
        1,
        "one PodDisruptionBudget for the RabbitMQ pods"
    );
    assert_eq!(budgets[0].max_unavailable, Some(IntOrString::Int(1)));
    let selector = serde_json::to_value(&budgets[0].selector)?;
    for (name, l) in &pods {
        assert_eq!(
            selects(&selector, l),
            name == &rabbit,
            "the budget and {name}"
        );
    }

    // The ServiceMonitor picks the operator's client Service, not the
    // headless one, with the base's endpoints: same port names, same
    // /metrics/detailed params. The client Service's endpoints are each pod,
    // which matters: a node reports a quorum queue's metrics only while it
    // leads it (rabbitmq/rabbitmq-server#12021).
    let monitor = |objects: &[DynamicObject]| -> Result<Value> {
        Ok(serde_json::to_value(
            objects
                .iter()
                .find(|o| kind(o) == "ServiceMonitor" && name(o) == "rabbitmq")
                .context("ServiceMonitor/rabbitmq")?,
        )?)
    };
    let service_monitor = monitor(&objects)?;
    assert_eq!(
        service_monitor["metadata"]["labels"]["release"],
        "kube-prometheus-stack"
    );
    let selector = &service_monitor["spec"]["selector"];
    assert!(selects(selector, &cluster.client_service_labels()));
    assert!(
        !selects(selector, &cluster.headless_service_labels()),
        "the headless Service has no metrics port"
    );
    assert!(
        !objects
            .iter()
            .filter(|o| kind(o) == "Service")
            .any(|s| selects(
                selector,
                s.metadata.labels.as_ref().unwrap_or(&BTreeMap::new())
            )),
        "the ServiceMonitor selects a Service of the build"
    );
    let endpoints = &service_monitor["spec"]["endpoints"];
    assert_eq!(endpoints, &monitor(&base)?["spec"]["endpoints"]);
    for endpoint in endpoints.as_array().context("endpoints")? {
        let port = endpoint["port"].as_str().unwrap_or_default();
        assert!(
            OperatorCluster::client_service_ports().contains(port),
            "{port}"
        );
        assert!(OperatorCluster::pod_ports().contains_key(port), "{port}");
    }

    // Network policies: every one selects some pod; AMQP from the bridges
    // only, clustering between the RabbitMQ pods only, metrics from
    // Prometheus, the management API from the operator.
    for policy in objects.iter().filter(|o| kind(o) == "NetworkPolicy") {
        let selector = serde_json::to_value(policy)?["spec"]["podSelector"].clone();
        if selector.as_object().is_some_and(|o| o.is_empty()) {
            continue;
        }
        assert!(
            pods.values().any(|l| selects(&selector, l)),
            "NetworkPolicy {} selects no pod",
            name(policy)
        );
    }
    let in_namespace = |peers: &[Value]| -> BTreeSet<String> {
        pods.iter()
            .filter(|(_, l)| {
                peers.iter().any(|p| {
                    let pod_selector = &p["podSelector"];
                    p.is_null()
                        || (p.get("namespaceSelector").is_none()
                            && p.get("ipBlock").is_none()
                            && (pod_selector.as_object().is_some_and(|o| o.is_empty())
                                || selects(pod_selector, l)))
                })
            })
            .map(|(n, _)| n.clone())
            .collect()
    };
    let from_namespace = |peers: &[Value], ns: &str| {
        peers
            .iter()
            .any(|p| p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] == ns)
    };
    let ports = OperatorCluster::pod_ports();
    let amqp = peers_allowed(&objects, &rabbit_pods, ports["amqp"])?;
    assert_eq!(
        in_namespace(&amqp),
        BTreeSet::from(["producer".to_owned(), "worker".to_owned()])
    );
    for port in [ports["epmd"], 25672] {
        let peers = peers_allowed(&objects, &rabbit_pods, port)?;
        assert_eq!(
            in_namespace(&peers),
            BTreeSet::from([rabbit.clone()]),
            "port {port}: between the nodes only"
        );
    }
    let metrics = peers_allowed(&objects, &rabbit_pods, ports["prometheus"])?;
    assert!(
        from_namespace(&metrics, "monitoring"),
        "Prometheus scrapes {metrics:?}"
    );
    let management = peers_allowed(&objects, &rabbit_pods, ports["management"])?;
    assert!(
        from_namespace(&management, "rabbitmq-system"),
        "the operator reaches the management API: {management:?}"
    );
    assert!(in_namespace(&management).is_empty(), "{management:?}");
    Ok(())
}

/// Each Wasm container listens where its port says, on the shim's own
/// variable (the other shim's is absent), and gets the environment its
/// component's spin.toml gives it: from the image's spin.toml under the
/// spin shim, from the container's env under the wasmtime shim.
#[test]
fn wasm_containers_listen_on_their_port_with_their_components_environment() -> Result<()> {
    for (dir, class, listen, other) in [
        (
            SHIM_BUILDS[0],
            "wasmtime-spin-v2",
            "SPIN_HTTP_LISTEN_ADDR",
            "WASMTIME_HTTP_PROXY_SOCKET_ADDR",
        ),
        (
            SHIM_BUILDS[1],
            "wasmtime",
            "WASMTIME_HTTP_PROXY_SOCKET_ADDR",
            "SPIN_HTTP_LISTEN_ADDR",
        ),
    ] {
        let objects = build(dir)?;
        let templates = templates(&objects)?;
        for (workload, name) in WASM_CONTAINERS {
            let template = &templates[workload];
            assert_eq!(
                template
                    .spec
                    .as_ref()
                    .and_then(|s| s.runtime_class_name.as_deref()),
                Some(class),
                "{dir}: {workload}"
            );
            let wasm = container(template, name)?;
            let addr: std::net::SocketAddr = env(wasm, listen)
                .with_context(|| format!("{dir}: {name} sets {listen}"))?
                .parse()?;
            let port = wasm.ports.iter().flatten().map(|p| p.container_port).next();
            assert_eq!(Some(i32::from(addr.port())), port, "{dir}: {name}");
            assert!(addr.port() >= 1024, "{dir}: {name}: no privileged port");
            assert_eq!(
                env(wasm, other),
                None,
                "{dir}: {name}: {other} is the other shim's"
            );
            let own: BTreeMap<String, String> = wasm
                .env
                .iter()
                .flatten()
                .filter(|e| e.name != listen)
                .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
                .collect();
            let expected = if class == "wasmtime" {
                spin_environment(name)?
            } else {
                BTreeMap::new()
            };
            assert_eq!(own, expected, "{dir}: {name}'s environment");
        }
    }
    Ok(())
}

/// The wasmtime variant is the default app with exactly the differences
/// runtime-class/README.md lists, and nothing else: runtime class, command,
/// listen variable, the component's environment, and the Wasm artifact
/// images. Everything else (the HPA and image pins the overlay repeats
/// included) must be identical.
#[test]
fn the_wasmtime_variant_differs_only_where_the_shim_needs_it() -> Result<()> {
    let by_id = |objects: Vec<DynamicObject>| -> Result<BTreeMap<(String, String), Value>> {
        objects
            .into_iter()
            .map(|o| {
                Ok((
                    (kind(&o).to_owned(), name(&o).to_owned()),
                    serde_json::to_value(&o)?,
                ))
            })
            .collect()
    };
    let mut expected = by_id(build(SHIM_BUILDS[0])?)?;
    let actual = by_id(build(SHIM_BUILDS[1])?)?;
    for (workload, component) in WASM_CONTAINERS {
        let pod = expected
            .get_mut(&("Deployment".to_owned(), workload.to_owned()))
            .context(workload)?
            .pointer_mut("/spec/template/spec")
            .context("pod spec")?;
        pod["runtimeClassName"] = "wasmtime".into();
        let wasm = pod["containers"]
            .as_array_mut()
            .and_then(|cs| cs.iter_mut().find(|c| c["name"] == component))
            .context(component)?;
        wasm["command"] = serde_json::json!([format!("/{component}.wasm")]);
        let image = wasm["image"].as_str().context("image")?;
        let (repository, tag) = image.rsplit_once(':').context("a tagged image")?;
        wasm["image"] = format!("{repository}-wasm:{tag}").into();
        let mut env = vec![serde_json::json!({
            "name": "WASMTIME_HTTP_PROXY_SOCKET_ADDR",
            "value": wasm["env"][0]["value"].clone(),
        })];
        for (name, value) in spin_environment(component)? {
            env.push(serde_json::json!({ "name": name, "value": value }));
        }
        wasm["env"] = env.into();
    }
    assert_eq!(
        expected.keys().collect::<Vec<_>>(),
        actual.keys().collect::<Vec<_>>(),
        "the same objects"
    );
    for (id, object) in &expected {
        let mut got = actual[id].clone();
        // Env order is not meaning: compare env lists as sets by name.
        let sort_env = |v: &mut Value| {
            if let Some(containers) = v
                .pointer_mut("/spec/template/spec/containers")
                .and_then(Value::as_array_mut)
            {
                for c in containers {
                    if let Some(env) = c["env"].as_array_mut() {
                        env.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
                    }
                }
            }
        };
        let mut want = object.clone();
        sort_env(&mut want);
        sort_env(&mut got);
        assert_eq!(
            got, want,
            "{}/{} differs beyond the shim's needs",
            id.0, id.1
        );
    }
    Ok(())
}

/// The pods run with a read-only root, and the spin shim writes /.cache and
/// /.spin at every start: each Wasm container on it has a writable
/// emptyDir at both.
#[test]
fn spin_shim_containers_have_writable_cache_and_state_under_a_read_only_root() -> Result<()> {
    let objects = build(SHIM_BUILDS[0])?;
    let templates = templates(&objects)?;
    for (workload, name) in WASM_CONTAINERS {
        let template = &templates[workload];
        let wasm = container(template, name)?;
        assert_eq!(
            wasm.security_context
                .as_ref()
                .and_then(|s| s.read_only_root_filesystem),
            Some(true),
            "{name}"
        );
        let volumes = template
            .spec
            .as_ref()
            .and_then(|s| s.volumes.clone())
            .unwrap_or_default();
        for path in ["/.cache", "/.spin"] {
            let mount = wasm
                .volume_mounts
                .iter()
                .flatten()
                .find(|m| m.mount_path == path)
                .with_context(|| format!("{name}: nothing mounted at {path}"))?;
            assert_ne!(mount.read_only, Some(true), "{name}: {path} is writable");
            let volume = volumes
                .iter()
                .find(|v| v.name == mount.name)
                .with_context(|| format!("{name}: no volume {}", mount.name))?;
            assert!(volume.empty_dir.is_some(), "{name}: {path} is an emptyDir");
        }
    }
    Ok(())
}

/// The recording rules and alert are valid for the real Prometheus
/// (`promtool check rules`), carry the release label the chart's Prometheus
/// selects rules by, and read only histograms the bridge exports.
#[test]
fn recording_rules_pass_promtool_and_read_the_bridges_histograms() -> Result<()> {
    let objects = build("manifests")?;
    let rule = objects
        .iter()
        .find(|o| kind(o) == "PrometheusRule" && name(o) == "wasm-jobs")
        .context("no PrometheusRule/wasm-jobs")?;
    let rule = serde_json::to_value(rule)?;
    assert_eq!(
        rule["metadata"]["labels"]["release"],
        "kube-prometheus-stack"
    );
    let dir = std::env::temp_dir().join(format!("wasm-jobs-rules-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("rules.yaml");
    std::fs::write(&file, serde_yaml_ng::to_string(&rule["spec"])?)?;
    let output = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .context("promtool (Debian's prometheus package) is needed")?;
    let said = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    std::fs::remove_dir_all(&dir)?;
    println!("promtool: {}", said.trim());
    assert!(output.status.success(), "{said}");
    assert!(said.contains("5 rules found"), "{said}");
    // Every bridge metric the rules read is one the bridge exports.
    let exported: BTreeSet<String> = host_bridge::Metrics::new()
        .gather()
        .iter()
        .map(|f| format!("{}_bucket", f.name()))
        .collect();
    let text = rule["spec"].to_string();
    for used in text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|w| w.starts_with("host_bridge_"))
    {
        assert!(
            exported.contains(used),
            "the rules read {used}, which the bridge does not export"
        );
    }
    Ok(())
}
