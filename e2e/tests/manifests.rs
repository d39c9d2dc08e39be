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
use k8s_openapi::api::core::v1::{Container, PodTemplateSpec, Secret, Service};
use k8s_openapi::api::node::v1::RuntimeClass;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::core::DynamicObject;
use serde::de::DeserializeOwned;
use serde_json::Value;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

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
    for (name, template) in templates(&objects)? {
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
    let objects = build("manifests")?;
    let templates = templates(&objects)?;
    let defaults = host_bridge::Config::try_parse_from(["host-bridge"])?;
    // Every env var the manifests give the bridge is one it reads.
    let known: BTreeSet<String> = host_bridge::Config::command()
        .get_arguments()
        .filter_map(|a| a.get_env().map(|e| e.to_string_lossy().into_owned()))
        .collect();
    for workload in ["producer", "worker"] {
        let bridge = container(&templates[workload], "bridge")?;
        for var in bridge.env.iter().flatten() {
            assert!(
                known.contains(&var.name),
                "{workload}: the bridge reads no {}",
                var.name
            );
        }
        let config =
            host_bridge::Config::try_parse_from(std::iter::once("host-bridge".to_owned()).chain(
                bridge.env.iter().flatten().filter_map(|e| {
                    let flag = host_bridge::Config::command()
                        .get_arguments()
                        .find(|a| a.get_env().is_some_and(|n| n == e.name.as_str()))?
                        .get_long()?
                        .to_owned();
                    Some(format!(
                        "--{flag}={}",
                        e.value.clone().unwrap_or_else(|| "amqp://x@y/%2f".into())
                    ))
                }),
            ))?;
        config.validate()?;
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

#[test]
fn grace_period_covers_job_time_plus_drain() -> Result<()> {
    let objects = build("manifests")?;
    let templates = templates(&objects)?;
    let worker = &templates["worker"];
    let spec = worker.spec.as_ref().context("spec")?;
    let grace = Duration::from_secs(spec.termination_grace_period_seconds.context("grace")? as u64);
    let bridge = container(worker, "bridge")?;
    let drain = seconds(env(bridge, "SHUTDOWN_GRACE").context("SHUTDOWN_GRACE")?)?;
    let job_timeout = seconds(env(bridge, "JOB_TIMEOUT").context("JOB_TIMEOUT")?)?;
    let pre_stop = container(worker, "worker")?
        .lifecycle
        .as_ref()
        .and_then(|l| l.pre_stop.as_ref())
        .and_then(|h| h.sleep.as_ref())
        .map(|s| Duration::from_secs(s.seconds as u64))
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
