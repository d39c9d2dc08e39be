//! `scalectl load` against the real local stack (Wasm producer, bridge,
//! RabbitMQ): what it counts as accepted is what the bridge published.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::Result;
use scalectl::load::{LoadOptions, run};
use testkit::admin::MetricSource;
use testkit::amqp::{Inspector, unique_queue};
use testkit::bridge::RunningBridge;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_counts_match_the_bridges_published_counter() -> Result<()> {
    let queue = unique_queue("scalectl-load");
    let bridge = RunningBridge::start_ready(&["--roles", "publish", "--queue", &queue]).await?;
    let producer = testkit::wasm::serve(
        "producer",
        &[
            ("BRIDGE_PUBLISH_URL", &bridge.publish_url("/v1/publish")),
            ("BRIDGE_OBSERVE_URL", &bridge.publish_url("/v1/observe")),
        ],
    )
    .await?;
    let mut options = LoadOptions {
        url: producer.url("/generate"),
        rate: None,
        concurrency: 4,
        count: Some(30),
        duration: None,
        timeout: Duration::from_secs(10),
    };
    let closed = run(&options, None, std::future::pending()).await?;
    options.rate = Some(50.0);
    options.count = Some(10);
    let paced = run(&options, None, std::future::pending()).await?;
    println!(
        "closed loop: {}\npaced: {}",
        closed.render(),
        paced.render()
    );

    let accepted = closed.accepted + paced.accepted;
    assert_eq!((closed.accepted, paced.accepted), (30, 10));
    assert_eq!(
        closed.rejected + closed.errors + paced.rejected + paced.errors,
        0
    );
    let ids: BTreeSet<_> = closed.ids.iter().chain(&paced.ids).collect();
    assert_eq!(ids.len() as u64, accepted, "one unique id per accepted job");
    let published = bridge
        .metric("host_bridge_published_total", &[("outcome", "confirmed")])
        .await;
    assert_eq!(published, accepted as f64);
    let inspector = Inspector::connect().await?;
    assert_eq!(u64::from(inspector.ready(&queue).await?), accepted);
    producer.shutdown().await;
    bridge.stop().await;
    inspector.delete_topology(&queue).await?;
    Ok(())
}

#[tokio::test]
async fn a_load_must_be_bounded() {
    let options = LoadOptions {
        url: "http://127.0.0.1:9/generate".into(),
        rate: None,
        concurrency: 1,
        count: None,
        duration: None,
        timeout: Duration::from_secs(1),
    };
    let err = run(&options, None, std::future::pending())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("--count or --duration"), "{err}");
}
