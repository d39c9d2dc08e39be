//! The whole local path on real parts: HTTP → Wasm producer → bridge →
//! RabbitMQ → bridge → Wasm worker. Every accepted id must be processed.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::Result;
use testkit::admin::MetricSource;
use testkit::amqp::{Inspector, unique_queue};
use testkit::bridge::RunningBridge;
use testkit::wasm;

const JOBS: usize = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_accepted_job_is_processed_by_the_wasm_worker() -> Result<()> {
    let queue = unique_queue("e2e");
    let mut worker = wasm::serve("worker", &[("WORK_DURATION_MS", "20")]).await?;
    let worker_url = worker.url("/work");
    let bridge = RunningBridge::start_ready(&[
        "--queue",
        &queue,
        "--worker-url",
        &worker_url,
        "--concurrency",
        "4",
    ])
    .await?;
    let producer = wasm::serve(
        "producer",
        &[
            ("BRIDGE_PUBLISH_URL", &bridge.publish_url("/v1/publish")),
            ("BRIDGE_OBSERVE_URL", &bridge.publish_url("/v1/observe")),
        ],
    )
    .await?;

    let client = reqwest::Client::new();
    let started = Instant::now();
    let mut accepted = HashSet::new();
    let mut refused = 0;
    for _ in 0..JOBS {
        let response = client.get(producer.url("/generate")).send().await?;
        if response.status() == 202 {
            let body: serde_json::Value = response.json().await?;
            accepted.insert(body["id"].as_str().unwrap_or_default().to_owned());
        } else {
            refused += 1;
        }
    }

    // Wait on the worker's answers, one event per job.
    let mut processed: HashMap<String, usize> = HashMap::new();
    while !accepted.iter().all(|id| processed.contains_key(id)) {
        let answer = tokio::time::timeout(Duration::from_secs(30), worker.answers.recv())
            .await
            .map_err(|_| {
                anyhow::anyhow!("no worker answer in 30 s; processed {}", processed.len())
            })?
            .ok_or_else(|| anyhow::anyhow!("worker stopped"))?;
        assert_eq!(answer.status, 200, "{:?}", answer.body);
        let result: job::WorkResult = serde_json::from_slice(&answer.body)?;
        *processed.entry(result.id).or_default() += 1;
    }
    // ...and on the bridge having acked each of them.
    bridge
        .wait_metric(
            "host_bridge_jobs_total",
            &[("queue", &queue), ("outcome", "acked")],
            JOBS as f64,
            Duration::from_secs(10),
        )
        .await;
    let elapsed = started.elapsed();

    let lost = accepted
        .iter()
        .filter(|id| !processed.contains_key(*id))
        .count();
    let duplicates: usize = processed.values().map(|n| n - 1).sum();
    let unexpected = processed
        .keys()
        .filter(|id| !accepted.contains(*id))
        .count();
    println!(
        "end-to-end: sent {JOBS}, accepted {}, refused {refused}, processed {}, duplicates {duplicates}, lost {lost}, in {elapsed:?}",
        accepted.len(),
        processed.len(),
    );
    assert_eq!(accepted.len(), JOBS, "the producer refused {refused}");
    assert_eq!(lost, 0);
    assert_eq!(unexpected, 0);
    assert_eq!(duplicates, 0, "no faults were injected, so no redelivery");
    let inspector = Inspector::connect().await?;
    assert_eq!(inspector.ready(&queue).await?, 0);
    producer.shutdown().await;
    bridge.stop().await;
    inspector.delete_topology(&queue).await?;
    Ok(())
}
