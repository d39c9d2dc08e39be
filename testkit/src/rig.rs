//! The usual arrangement of a bridge test: its own queue, a stand-in worker,
//! and a bridge in both roles pushing to it.

use std::time::Duration;

use anyhow::Result;
use serde_json::{Value, json};

use crate::admin::MetricSource;
use crate::amqp::{Inspector, TestQueue, unique_queue};
use crate::bridge::RunningBridge;
use crate::standin::StandIn;

/// A job's JSON, as the producer makes it.
pub fn job(id: &str, payload: Value) -> String {
    json!({ "id": id, "created_at": "2026-01-01T00:00:00Z", "payload": payload }).to_string()
}

/// POSTs a job's JSON to a publish API URL.
pub async fn publish_to(url: &str, body: String) -> Result<reqwest::Response> {
    Ok(reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await?)
}

/// A queue, a stand-in worker and a bridge consuming into it.
pub struct Rig {
    /// The test's queue, deleted with its dead-letter topology on drop.
    pub queue: TestQueue,
    /// The stand-in worker the bridge pushes to.
    pub worker: StandIn,
    /// The bridge (publish and consume roles).
    pub bridge: RunningBridge,
    /// A direct AMQP connection for checking the queues.
    pub inspector: Inspector,
}

impl Rig {
    /// Starts the rig for `test`, with extra bridge flags.
    pub async fn start(test: &str, extra: &[&str]) -> Result<Self> {
        let queue = unique_queue(test);
        let worker = StandIn::start().await?;
        let url = worker.url();
        let mut args = vec!["--queue", queue.as_str(), "--worker-url", url.as_str()];
        args.extend_from_slice(extra);
        let bridge = RunningBridge::start_ready(&args).await?;
        let inspector = Inspector::connect().await?;
        Ok(Self {
            queue,
            worker,
            bridge,
            inspector,
        })
    }

    /// Publishes a job through the bridge's publish API.
    pub async fn publish(&self, id: &str, payload: Value) -> Result<reqwest::Response> {
        publish_to(&self.bridge.publish_url("/v1/publish"), job(id, payload)).await
    }

    /// The `(queue, <this queue>)` label pair.
    pub fn queue_label(&self) -> (&str, &str) {
        ("queue", self.queue.as_str())
    }

    /// `host_bridge_jobs_total` for this queue and `outcome`.
    pub async fn jobs(&self, outcome: &str) -> f64 {
        let labels = [self.queue_label(), ("outcome", outcome)];
        self.bridge.metric("host_bridge_jobs_total", &labels).await
    }

    /// Waits until `host_bridge_jobs_total{outcome}` reaches `count`.
    pub async fn wait_jobs(&self, outcome: &str, count: f64, limit: Duration) {
        let labels = [self.queue_label(), ("outcome", outcome)];
        self.bridge
            .wait_metric("host_bridge_jobs_total", &labels, count, limit)
            .await;
    }

    /// Stops the bridge and deletes the test's queues.
    pub async fn finish(self) -> Result<()> {
        self.bridge.stop().await;
        self.inspector.delete_topology(&self.queue).await
    }
}
