//! scalectl: see queue-length autoscaling instead of reading about it.
//!
//! - `plan` (`hpa`, `plan`, `chart`): predicts how an HPA scales a load,
//!   before deploying it, on the cluster `cluster` describes, after the
//!   API server's `validation`; `quantity` reads Kubernetes quantities.
//! - `tune`: searches for the HPA settings that meet a goal for a load at
//!   the fewest pod-seconds.
//! - `load`: fires `/generate` at a target and summarizes the answers.
//! - `watch`: a live view of the HPA, the Deployment and the queue, kept as a
//!   timeline (CSV, SVG).

pub mod chart;
pub mod cli;
pub mod cluster;
pub mod hpa;
pub mod load;
pub mod plan;
pub mod quantity;
pub mod tune;
pub mod validation;
pub mod watch;

use std::path::Path;

use anyhow::Context;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;

/// Reads the first HorizontalPodAutoscaler in a YAML file (multi-document
/// files are fine), as k8s-openapi's type.
pub fn read_hpa(path: &Path) -> anyhow::Result<HorizontalPodAutoscaler> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let value: serde_yaml_ng::Value = serde::Deserialize::deserialize(doc)?;
        if value.get("kind").and_then(|k| k.as_str()) == Some("HorizontalPodAutoscaler") {
            return Ok(serde_yaml_ng::from_value(value)?);
        }
    }
    anyhow::bail!("no HorizontalPodAutoscaler in {}", path.display())
}

/// Reads the HPA in a YAML file as the controller would act on it on
/// `cluster`: refused with the API server's reasons if it would not be
/// accepted there.
pub fn read_spec(
    path: &Path,
    cluster: &cluster::Cluster,
) -> anyhow::Result<(HorizontalPodAutoscaler, hpa::Spec)> {
    let hpa = read_hpa(path)?;
    validation::validate(&hpa, cluster.gates()).with_context(|| format!("{}", path.display()))?;
    let spec = hpa::Spec::from_hpa(&hpa).with_context(|| format!("{}", path.display()))?;
    Ok((hpa, spec))
}
