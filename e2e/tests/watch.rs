//! `scalectl watch --local --plan` on real parts: a bridge, the real
//! Prometheus scraping it, and jobs queued behind a slow worker. The live
//! figures come through Prometheus as they would on the local stack, and
//! the plan replays the arrivals they show.

use std::time::{Duration, Instant};

use anyhow::Result;
use scalectl::plan::{Scenario, plan};
use scalectl::watch::{Queries, Sources, Watcher, arrivals, divergence, planned_waits};
use serde_json::json;
use testkit::prometheus::Prometheus;
use testkit::rig::Rig;

const JOBS: usize = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_reads_the_live_run_from_prometheus_and_replays_its_arrivals() -> Result<()> {
    let rig = Rig::start("watch", &["--concurrency", "1"]).await?;
    let prometheus = Prometheus::start(
        "watch",
        &format!(
            "  - job_name: bridge\n    static_configs:\n      - targets: [\"{}\"]\n",
            rig.bridge.admin_addr
        ),
    )
    .await?;
    let queue = rig.queue.as_str();
    let watcher = Watcher::new(Sources {
        kube: None,
        prometheus: Some(Queries {
            url: format!("http://{}", prometheus.addr),
            queue: format!(
                "max(host_bridge_queue_ready_messages{{queue=\"{queue}\"}}) + sum(host_bridge_jobs_in_flight)"
            ),
            arrived: format!(
                "sum(host_bridge_published_total{{queue=\"{queue}\",outcome=\"confirmed\"}}) or vector(0)"
            ),
            replicas: "count(host_bridge_worker_up)".into(),
        }),
    });
    let started = Instant::now();
    let mut samples = Vec::new();
    // A baseline before the load (the counter does not exist yet: the
    // query's `or vector(0)` reads it as 0), so the jobs are arrivals, not
    // a queue found at the start.
    let baseline = testkit::eventually("a first sample", Duration::from_secs(30), || async {
        watcher
            .sample(started.elapsed().as_secs_f64())
            .await
            .ok()
            .filter(|s| s.arrived.is_some())
    })
    .await;
    samples.push(baseline);
    // Six jobs of 1 s behind one worker: they wait about 0 to 5 s.
    for n in 0..JOBS {
        let response = rig
            .publish(&format!("watch-{n}"), json!({ "delays_ms": [1000] }))
            .await?;
        assert_eq!(response.status(), 202);
    }
    // Sample until Prometheus has seen every job confirmed and done.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let sample = watcher.sample(started.elapsed().as_secs_f64()).await?;
        let done = sample.arrived == Some(JOBS as f64) && sample.queue_depth == Some(0.0);
        samples.push(sample);
        if done && samples.iter().any(|s| s.waits[1].is_some()) {
            break;
        }
        assert!(Instant::now() < deadline, "samples so far: {samples:#?}");
    }

    // Replicas came from Prometheus: the one bridge's worker.
    assert!(samples.iter().all(|s| s.current == 1), "{samples:#?}");
    // The arrivals replayed are the jobs confirmed, no more, no fewer.
    let replayed = arrivals(&samples);
    assert_eq!(
        replayed.iter().map(|a| a.1 as usize).sum::<usize>(),
        JOBS,
        "{replayed:?}"
    );
    // The live histogram's buckets, as Prometheus has them.
    let buckets = watcher.wait_buckets().await.expect("the wait buckets");
    assert!(buckets.windows(2).all(|w| w[0] < w[1]), "{buckets:?}");
    assert!(
        buckets.contains(&1.0) && buckets.contains(&5.0),
        "{buckets:?}"
    );

    let (_, spec) = scalectl::read_spec(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/local-fleet-hpa.yaml"),
        &scalectl::cluster::Cluster::default(),
    )?;
    let scenario = Scenario {
        burst: 0,
        arrivals: replayed,
        service_time: 1.0,
        stats_interval: 0.2,
        scrape_interval: 1.0,
        horizon: samples.last().map_or(0.0, |s| s.t) + 600.0,
        ..Scenario::default()
    };
    let result = plan(&spec, &scenario);
    assert_eq!(result.waits.len(), JOBS);
    assert_eq!(result.peak_replicas, 1);
    let end = samples.last().map_or(0.0, |s| s.t);
    let planned = planned_waits(&result, end, Some(&buckets));
    let live = samples.last().map(|s| s.waits).unwrap_or_default();
    println!(
        "watch: {} samples over {end:.1} s; wait p50/p95 live {:?} plan {:?}; {}",
        samples.len(),
        &live[..2],
        &planned[..2],
        divergence(&samples, &result, Some(&buckets))
    );
    assert!(planned[1].is_some() && live[1].is_some());
    rig.finish().await
}
