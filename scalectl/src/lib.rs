//! scalectl: see queue-length autoscaling instead of reading about it.
//!
//! - `plan` (`hpa`, `plan`, `chart`): predicts how an HPA scales a load,
//!   before deploying it.
//! - `tune`: searches for the HPA settings that meet a goal for a load at
//!   the fewest pod-seconds.
//! - `load`: fires `/generate` at a target and summarizes the answers.
//! - `watch`: a live view of the HPA, the Deployment and the queue, kept as a
//!   timeline (CSV, SVG).

pub mod chart;
pub mod hpa;
pub mod load;
pub mod plan;
pub mod tune;
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
