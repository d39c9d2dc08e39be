//! Holding the line under stress: the fault suite's second half. Broker
//! alarms, a paused broker, a blackholed link, a stalled bridge, a worker
//! gone with a backlog, a worker that cuts its answer short, hostile message
//! ids, slow clients and overload, each injected for real against real
//! processes.
//!
//! Each test prints accepted, processed, lost, duplicated, false 503s (a
//! refusal whose job was queued anyway) and, where a bridge process is under
//! load, its peak RSS; and asserts what the promise says: nothing accepted
//! is lost, no refusal is false, memory stays bounded, every answer is
//! prompt JSON, and everything recovers by itself.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use lapin::BasicProperties;
use lapin::options::BasicPublishOptions;
use serde_json::json;
use testkit::admin::MetricSource;
use testkit::amqp::{Inspector, amqp_url, unique_queue};
use testkit::bridge::RunningBridge;
use testkit::private_broker::PrivateBroker;
use testkit::process::BridgeProcess;
use testkit::rig::{Rig, job};
use testkit::tally::Tally;
use testkit::wasm;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

/// The bridge's memory bound under any attack or fault: 48 MiB, a quarter
/// below the sidecar's 64 Mi limit in `manifests/`, so that nothing comes
/// near an OOM kill (which would lose every job in flight and the ingress).
const MEMORY_GOAL: u64 = 48 * 1024 * 1024;

/// What each caller was told, by job id.
#[derive(Default)]
struct Answers {
    by_id: BTreeMap<String, (u16, String)>,
    slowest: Duration,
}

impl Answers {
    fn ids(&self, status: u16) -> BTreeSet<String> {
        self.by_id
            .iter()
            .filter(|(_, (s, _))| *s == status)
            .map(|(id, _)| id.clone())
            .collect()
    }

    fn codes(&self) -> BTreeMap<String, usize> {
        let mut codes = BTreeMap::new();
        for (status, code) in self.by_id.values() {
            *codes.entry(format!("{status} {code}")).or_default() += 1;
        }
        codes
    }
}

/// What a test counted against what was queued, and its checks here:
/// nothing lost, no false refusal, and no job queued twice.
trait StressTally {
    fn report(&self, test: &str, extra: &str);
    fn assert_exact(&self);
}

impl StressTally for Tally {
    fn report(&self, test: &str, extra: &str) {
        println!("{test}: {}{extra}", self.summary());
    }

    fn assert_exact(&self) {
        self.assert_honest();
        assert_eq!(self.duplicated, 0, "a job queued twice");
    }
}

/// The tally of `answers` against `queued` (every job id found in the
/// queue, with repeats).
fn tally(answers: &Answers, queued: &[String]) -> Tally {
    let answers = answers
        .by_id
        .iter()
        .map(|(id, (status, _))| (id.as_str(), *status));
    Tally::of(answers, &Tally::sightings(queued))
}

/// Publishes `count` jobs (ids `{prefix}-{n}`) through `url` from
/// `concurrency` clients, each request bounded by `limit`, recording every
/// answer. A non-JSON answer or a hung request fails the test.
async fn load(
    url: &str,
    prefix: &str,
    count: usize,
    concurrency: usize,
    payload_bytes: usize,
    limit: Duration,
) -> Answers {
    let answers = Arc::new(Mutex::new(Answers::default()));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let payload = json!("x".repeat(payload_bytes));
    let mut clients = Vec::new();
    for _ in 0..concurrency {
        let (url, answers, next, payload, prefix) = (
            url.to_owned(),
            answers.clone(),
            next.clone(),
            payload.clone(),
            prefix.to_owned(),
        );
        clients.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            loop {
                let n = next.fetch_add(1, Ordering::SeqCst);
                if n >= count {
                    return;
                }
                let id = format!("{prefix}-{n}");
                let started = Instant::now();
                let response = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .timeout(limit)
                    .body(job(&id, payload.clone()))
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("{id}: no answer within {limit:?}: {e:?}"));
                let status = response.status().as_u16();
                if status != 202 {
                    assert!(
                        response.headers().contains_key("retry-after"),
                        "{id}: {status} without Retry-After"
                    );
                }
                let body: serde_json::Value = response
                    .json()
                    .await
                    .unwrap_or_else(|e| panic!("{id}: {status} with a non-JSON body: {e}"));
                let code = body["error"].as_str().unwrap_or("").to_owned();
                let mut answers = answers.lock().await;
                answers.slowest = answers.slowest.max(started.elapsed());
                answers.by_id.insert(id, (status, code));
            }
        }));
    }
    for client in clients {
        client.await.expect("a load client panicked");
    }
    Arc::try_unwrap(answers)
        .map(Mutex::into_inner)
        .unwrap_or_else(|_| panic!("load clients still hold the answers"))
}

/// Every job id in `queue`, taking the messages off it.
async fn queued_ids(inspector: &Inspector, queue: &str) -> Result<Vec<String>> {
    inspector.drain_ids(queue).await
}

/// A publish-role bridge process against `amqp`.
async fn publisher(amqp: &str, queue: &str, extra: &[&str]) -> Result<BridgeProcess> {
    let mut args = vec!["--roles", "publish", "--queue", queue];
    args.extend_from_slice(extra);
    let bridge = BridgeProcess::spawn(amqp, &args).await?;
    bridge.wait_ready().await;
    Ok(bridge)
}

/// Waits until /readyz says not ready, returning its reason.
async fn wait_unready(bridge: &BridgeProcess, limit: Duration) -> String {
    testkit::eventually("/readyz to turn false", limit, || async {
        match bridge.admin("/readyz").await {
            Ok((503, body)) => Some(body),
            _ => None,
        }
    })
    .await
}

/// A broker alarm under load: the broker blocks publishers; the bridge must
/// refuse at once (never queue a refused job later), stay within its memory
/// bound, say not ready, and recover when the alarm clears.
async fn alarm_under_load(test: &str, raise: &[&str], clear: &[&str]) -> Result<()> {
    let broker = PrivateBroker::start(test).await?;
    let queue = unique_queue(test);
    let amqp = broker.amqp_url();
    let bridge = publisher(
        &amqp,
        &queue,
        &["--publish-timeout", "2s", "--max-publishes-in-flight", "64"],
    )
    .await?;
    let url = bridge.publish_url("/v1/publish");
    let before = load(&url, "before", 20, 4, 0, Duration::from_secs(10)).await;
    assert_eq!(before.ids(202).len(), 20);

    broker.ctl(raise).await?;
    // 1,500 jobs of 60 KB from 200 clients: 90 MB, if it were all held.
    let during = load(&url, "alarm", 1_500, 200, 60_000, Duration::from_secs(10)).await;
    let reason = wait_unready(&bridge, Duration::from_secs(20)).await;
    let peak = bridge.peak_rss()?;
    broker.ctl(clear).await?;
    bridge.wait_ready().await;
    let after = load(&url, "after", 20, 4, 0, Duration::from_secs(10)).await;

    let mut answers = during;
    answers.by_id.extend(before.by_id);
    answers.by_id.extend(after.by_id);
    let inspector = Inspector::connect_to(&amqp).await?;
    // Publishes answered 504 may still be confirmed once the alarm clears:
    // wait until the bridge has counted a verdict for each.
    let unknown = answers.ids(504).len() as f64;
    bridge
        .wait_metric(
            "host_bridge_publish_late_verdicts_total",
            &[],
            unknown,
            Duration::from_secs(30),
        )
        .await;
    let queued = queued_ids(&inspector, &queue).await?;
    let tally = tally(&answers, &queued);
    tally.report(
        test,
        &format!(
            "; answers {:?}; slowest {:?}; not ready: {reason}; bridge peak RSS {:.1} MiB",
            answers.codes(),
            answers.slowest,
            peak as f64 / 1048576.0
        ),
    );
    tally.assert_exact();
    assert!(reason.contains("broker_blocked"), "{reason}");
    assert!(
        answers.ids(503).len() >= 1_000,
        "the alarm refused too little: {:?}",
        answers.codes()
    );
    assert!(peak <= MEMORY_GOAL, "peak RSS {peak} bytes");
    inspector.delete_topology(&queue).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_alarm_refuses_at_once_within_bounded_memory_and_recovers() -> Result<()> {
    alarm_under_load(
        "stress-mem",
        &["set_vm_memory_high_watermark", "0.0000001"],
        &["set_vm_memory_high_watermark", "0.4"],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_alarm_refuses_at_once_within_bounded_memory_and_recovers() -> Result<()> {
    alarm_under_load(
        "stress-disk",
        &["set_disk_free_limit", "100000GB"],
        &["set_disk_free_limit", "1MB"],
    )
    .await
}

/// Paces publishes (ids `{prefix}-{n}`) until `until` is set, recording
/// every answer: load that spans a fault and its recovery.
fn paced_load(
    url: String,
    prefix: &'static str,
    until: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Answers> {
    let load = testkit::load::paced(url, prefix.to_owned(), Duration::from_millis(20), until);
    tokio::spawn(async move {
        let mut answers = Answers::default();
        for a in load.await.expect("the load client panicked") {
            answers.slowest = answers.slowest.max(a.answered - a.sent);
            answers.by_id.insert(a.id, (a.status, a.code));
        }
        answers
    })
}

/// Bridge flags for link faults: a short confirm wait, and a dead link
/// noticed (two 2 s heartbeats) and retried within seconds.
const QUICK_TO_NOTICE: [&str; 8] = [
    "--publish-timeout",
    "1s",
    "--heartbeat",
    "2s",
    "--connect-timeout",
    "2s",
    "--reconnect-max-backoff",
    "1s",
];

/// A fault that freezes the AMQP link (`freeze`) and later ends (`thaw`),
/// under paced load. Returns the answers and the not-ready reason.
async fn frozen_link(
    test: &str,
    bridge: &BridgeProcess,
    freeze: impl AsyncFnOnce() -> Result<()>,
    thaw: impl AsyncFnOnce() -> Result<()>,
) -> Result<(Answers, String, Duration)> {
    let until = Arc::new(AtomicBool::new(false));
    let load = paced_load(bridge.publish_url("/v1/publish"), "link", until.clone());
    bridge
        .wait_metric(
            "host_bridge_published_total",
            &[("outcome", "confirmed")],
            20.0,
            Duration::from_secs(20),
        )
        .await;
    freeze().await?;
    let frozen = Instant::now();
    // The heartbeat (2 s here) declares the link dead after two silent
    // periods: the bridge then reconnects on its own.
    let reason = wait_unready(bridge, Duration::from_secs(20)).await;
    testkit::eventually(
        "the dead link to be noticed",
        Duration::from_secs(20),
        || async { (bridge.metric("host_bridge_broker_up", &[]).await == 0.0).then_some(()) },
    )
    .await;
    let noticed = frozen.elapsed();
    // The queue depth is not reported while it can't be read: a stale
    // figure would steer the autoscaler with a number nobody measured.
    let depth_reported = || async {
        let (_, text) = bridge.admin("/metrics").await.ok()?;
        Some(text.contains("host_bridge_queue_ready_messages{"))
    };
    testkit::eventually(
        "the queue depth to go absent",
        Duration::from_secs(20),
        || async { (depth_reported().await == Some(false)).then_some(()) },
    )
    .await;
    thaw().await?;
    bridge.wait_ready().await;
    testkit::eventually(
        "the queue depth to come back",
        Duration::from_secs(20),
        || async { (depth_reported().await == Some(true)).then_some(()) },
    )
    .await;
    let confirmed = bridge
        .metric("host_bridge_published_total", &[("outcome", "confirmed")])
        .await;
    bridge
        .wait_metric(
            "host_bridge_published_total",
            &[("outcome", "confirmed")],
            confirmed + 20.0,
            Duration::from_secs(30),
        )
        .await;
    until.store(true, Ordering::SeqCst);
    let answers = load.await?;
    println!("{test}: dead link noticed after {noticed:?}");
    Ok((answers, reason, noticed))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_broker_no_false_503_not_ready_and_reconnects() -> Result<()> {
    let broker = PrivateBroker::start("stress-pause").await?;
    let queue = unique_queue("stress-pause");
    let amqp = broker.amqp_url();
    let bridge = publisher(&amqp, &queue, &QUICK_TO_NOTICE).await?;
    let (answers, reason, _) = frozen_link(
        "paused broker",
        &bridge,
        async || broker.pause(),
        async || broker.resume(),
    )
    .await?;
    let inspector = Inspector::connect_to(&amqp).await?;
    let queued = queued_ids(&inspector, &queue).await?;
    let tally = tally(&answers, &queued);
    tally.report(
        "paused broker (SIGSTOP)",
        &format!(
            "; answers {:?}; slowest {:?}; not ready: {reason}",
            answers.codes(),
            answers.slowest
        ),
    );
    tally.assert_exact();
    assert!(
        answers.ids(503).len() + answers.ids(504).len() >= 1,
        "{:?}",
        answers.codes()
    );
    // No request waited longer than the confirm timeout and a margin.
    assert!(
        answers.slowest < Duration::from_secs(3),
        "{:?}",
        answers.slowest
    );
    inspector.delete_topology(&queue).await?;
    Ok(())
}

/// A loopback TCP proxy that can blackhole its link: bytes stop flowing both
/// ways, and the sockets stay open, as when a network path silently dies.
struct Blackhole {
    addr: std::net::SocketAddr,
    dropping: Arc<AtomicBool>,
}

impl Blackhole {
    async fn start(upstream: std::net::SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let dropping = Arc::new(AtomicBool::new(false));
        let flag = dropping.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pump(cr, sw, flag.clone()));
                tokio::spawn(pump(sr, cw, flag.clone()));
            }
        });
        Ok(Self { addr, dropping })
    }

    fn set(&self, dropping: bool) {
        self.dropping.store(dropping, Ordering::SeqCst);
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    dropping: Arc<AtomicBool>,
) {
    let mut buf = vec![0; 16 * 1024];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 {
            break;
        }
        // A link that went dark swallows what crosses it, for good.
        if dropping.load(Ordering::SeqCst) {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackholed_link_is_noticed_by_heartbeat_no_false_503_and_recovers() -> Result<()> {
    let broker = PrivateBroker::start("stress-hole").await?;
    let queue = unique_queue("stress-hole");
    let direct = broker.amqp_url();
    let port: u16 = direct
        .rsplit(':')
        .next()
        .and_then(|p| p.split('/').next())
        .and_then(|p| p.parse().ok())
        .context("the broker's port")?;
    let hole = Blackhole::start(([127, 0, 0, 1], port).into()).await?;
    let amqp = format!("amqp://guest:guest@{}/%2f", hole.addr);
    let bridge = publisher(&amqp, &queue, &QUICK_TO_NOTICE).await?;
    let (answers, reason, noticed) = frozen_link(
        "blackholed link",
        &bridge,
        async || {
            hole.set(true);
            Ok(())
        },
        async || {
            hole.set(false);
            Ok(())
        },
    )
    .await?;
    let inspector = Inspector::connect_to(&direct).await?;
    let queued = queued_ids(&inspector, &queue).await?;
    let tally = tally(&answers, &queued);
    tally.report(
        "blackholed link",
        &format!(
            "; answers {:?}; slowest {:?}; not ready: {reason}; noticed after {noticed:?}",
            answers.codes(),
            answers.slowest
        ),
    );
    tally.assert_exact();
    assert!(
        answers.slowest < Duration::from_secs(3),
        "{:?}",
        answers.slowest
    );
    inspector.delete_topology(&queue).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_bridge_producer_answers_503_promptly_and_the_job_is_never_queued() -> Result<()> {
    let queue = unique_queue("stress-stall");
    let bridge = publisher(&amqp_url(), &queue, &["--publish-timeout", "1s"]).await?;
    let producer = wasm::serve(
        "producer",
        &[
            ("BRIDGE_PUBLISH_URL", &bridge.publish_url("/v1/publish")),
            ("BRIDGE_OBSERVE_URL", "off"),
            ("BRIDGE_TIMEOUT_MS", "2000"),
        ],
    )
    .await?;
    bridge.sigstop()?;
    let started = Instant::now();
    let response = reqwest::Client::new()
        .get(producer.url("/generate"))
        .header("idempotency-key", "stalled-1")
        .timeout(Duration::from_secs(20))
        .send()
        .await?;
    let took = started.elapsed();
    let status = response.status().as_u16();
    let body: job::ErrorBody = response.json().await?;
    bridge.sigcont()?;
    bridge.wait_ready().await;
    // Once thawed, the bridge finds the stale request (already in its socket
    // buffer, ahead of any new one) past its deadline and refuses it, or
    // drops it with its closed connection. A fresh job then goes through.
    let fresh = reqwest::Client::new()
        .get(producer.url("/generate"))
        .header("idempotency-key", "fresh-1")
        .send()
        .await?;
    assert_eq!(fresh.status(), 202);
    let inspector = Inspector::connect().await?;
    let queued = queued_ids(&inspector, &queue).await?;
    let refused_late = bridge
        .metric(
            "host_bridge_publish_refusals_total",
            &[("reason", "deadline_exceeded")],
        )
        .await;
    println!(
        "stalled bridge: answered {status} {} after {took:?}; queued after the thaw: {queued:?}; \
         false 503s {}; stale request refused by deadline {refused_late}",
        body.error,
        queued.iter().filter(|id| *id == "stalled-1").count()
    );
    assert_eq!((status, body.error.as_str()), (503, "bridge_unavailable"));
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert_eq!(queued, ["fresh-1"]);
    producer.shutdown().await;
    inspector.delete_topology(&queue).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_killed_with_a_backlog_nothing_is_dead_lettered_all_done_after_it_returns()
-> Result<()> {
    let queue = unique_queue("stress-worker");
    let worker = wasm::serve("worker", &[("WORK_DURATION_MS", "100")]).await?;
    let addr = worker.addr;
    let url = worker.url("/work");
    let bridge = RunningBridge::start_ready(&[
        "--queue",
        &queue,
        "--worker-url",
        &url,
        "--delivery-limit",
        "2",
        "--push-max-backoff",
        "500ms",
    ])
    .await?;
    let publish = bridge.publish_url("/v1/publish");
    let post = |id: &str| testkit::rig::publish_to(&publish, job(id, json!(null)));
    assert_eq!(post("warm").await?.status(), 202);
    let acked = [("queue", queue.as_str()), ("outcome", "acked")];
    bridge
        .wait_metric(
            "host_bridge_jobs_total",
            &acked,
            1.0,
            Duration::from_secs(20),
        )
        .await;

    // The worker dies (its open connections too); a backlog builds up.
    worker.kill();
    let backlog = 5;
    for n in 0..backlog {
        assert_eq!(post(&format!("backlog-{n}")).await?.status(), 202);
    }
    let (status, body) =
        testkit::eventually("/readyz to turn false", Duration::from_secs(20), || async {
            let (status, body) = bridge.admin("/readyz").await.ok()?;
            (status == 503).then_some((status, body))
        })
        .await;
    // Held and retried in place, more times than the delivery limit allows
    // deliveries: none of it may cost the job a delivery.
    bridge
        .wait_metric(
            "host_bridge_push_retries_total",
            &[("reason", "unavailable")],
            4.0,
            Duration::from_secs(20),
        )
        .await;
    assert_eq!(bridge.metric("host_bridge_worker_up", &[]).await, 0.0);
    let inspector = Inspector::connect().await?;
    let waiting = inspector.ready(&queue).await?;

    let worker = wasm::serve_at("worker", &[("WORK_DURATION_MS", "100")], addr).await?;
    bridge
        .wait_metric(
            "host_bridge_jobs_total",
            &acked,
            1.0 + backlog as f64,
            Duration::from_secs(30),
        )
        .await;
    bridge.wait_ready().await;
    let dead = inspector.ready(&format!("{queue}.dead")).await?;
    let requeued = bridge
        .metric(
            "host_bridge_jobs_total",
            &[("queue", queue.as_str()), ("outcome", "requeued")],
        )
        .await;
    let dead_lettered = bridge
        .metric(
            "host_bridge_jobs_total",
            &[("queue", queue.as_str()), ("outcome", "dead_lettered")],
        )
        .await;
    println!(
        "worker killed with a backlog: accepted {}, processed {}, lost 0, dead-lettered {dead}, \
         requeued {requeued}; while it was gone: /readyz {status} {body}, {waiting} ready in the queue",
        backlog + 1,
        bridge.metric("host_bridge_jobs_total", &acked).await,
    );
    assert_eq!((dead, requeued, dead_lettered), (0, 0.0, 0.0));
    assert!(body.contains("worker"), "{body}");
    assert_eq!(bridge.metric("host_bridge_worker_up", &[]).await, 1.0);
    assert_eq!(inspector.ready(&queue).await?, 0);
    drop(worker);
    bridge.stop().await;
    inspector.delete_topology(&queue).await?;
    Ok(())
}

/// A worker whose first answer is a status line and a body cut short; it
/// answers properly after that. Counts the connections it took.
async fn cut_short_worker() -> Result<(String, Arc<std::sync::atomic::AtomicUsize>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/work", listener.local_addr()?);
    let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = connections.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let n = count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                // Read the request head and its body (Content-Length).
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let Ok(read) = stream.read(&mut buf).await else {
                        return;
                    };
                    if read == 0 {
                        return;
                    }
                    request.extend_from_slice(&buf[..read]);
                    let text = String::from_utf8_lossy(&request).to_lowercase();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length: usize = text
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        if request.len() >= end + 4 + length {
                            break;
                        }
                    }
                }
                let answer: &[u8] = if n == 0 {
                    b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabcdef"
                } else {
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
                };
                let _ = stream.write_all(answer).await;
                // Then the connection closes: the first answer is 94 bytes short.
            });
        }
    });
    Ok((url, connections))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_answer_cut_short_is_not_acked() -> Result<()> {
    let queue = unique_queue("stress-partial");
    let (url, connections) = cut_short_worker().await?;
    let bridge = RunningBridge::start_ready(&["--queue", &queue, "--worker-url", &url]).await?;
    let response = testkit::rig::publish_to(
        &bridge.publish_url("/v1/publish"),
        job("partial", json!(null)),
    )
    .await?;
    assert_eq!(response.status(), 202);
    let acked = [("queue", queue.as_str()), ("outcome", "acked")];
    bridge
        .wait_metric(
            "host_bridge_jobs_total",
            &acked,
            1.0,
            Duration::from_secs(20),
        )
        .await;
    let broken = bridge
        .metric(
            "host_bridge_worker_push_duration_seconds_count",
            &[("result", "broken")],
        )
        .await;
    let pushes = connections.load(Ordering::SeqCst);
    println!(
        "partial answer: accepted 1, processed 1, lost 0; pushes {pushes}, cut short {broken}"
    );
    // The cut-off answer was not taken for a success: the job was pushed again.
    assert_eq!((pushes, broken), (2, 1.0));
    assert_eq!(
        bridge
            .metric("host_bridge_push_retries_total", &[("reason", "failed")])
            .await,
        1.0
    );
    let inspector = Inspector::connect().await?;
    assert_eq!(inspector.ready(&queue).await?, 0);
    bridge.stop().await;
    inspector.delete_topology(&queue).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_message_ids_are_dead_lettered_with_a_reason_and_never_pushed() -> Result<()> {
    let mut rig = Rig::start("stress-hostile", &[]).await?;
    let hostile = "raw\nctrl\x1b[31mRED";
    let cases: [(&str, Option<&str>, String); 4] = [
        // The body's id carries the control characters too.
        (
            "invalid_job",
            Some(hostile),
            json!({"id": hostile, "created_at": "x"}).to_string(),
        ),
        // A clean body under a hostile message-id.
        ("id_mismatch", Some(hostile), job("clean-body", json!(null))),
        ("invalid_job", None, "not json".to_owned()),
        ("ok", Some("fine-1"), job("fine-1", json!(null))),
    ];
    for (_, message_id, body) in &cases {
        let mut properties = BasicProperties::default();
        if let Some(id) = message_id {
            properties = properties.with_message_id((*id).into());
        }
        rig.inspector
            .channel
            .basic_publish(
                "".into(),
                rig.queue.as_str().into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                properties,
            )
            .await?
            .await?;
    }
    rig.wait_jobs("acked", 1.0, Duration::from_secs(20)).await;
    rig.bridge
        .wait_metric(
            "host_bridge_malformed_jobs_total",
            &[],
            3.0,
            Duration::from_secs(20),
        )
        .await;
    let pushed = rig.worker.next_push(Duration::from_secs(5)).await;
    assert_eq!(pushed.id, "fine-1");
    assert!(
        rig.worker.pushes.try_recv().is_err(),
        "a malformed job reached the worker"
    );
    let dead_queue = format!("{}.dead", rig.queue);
    let dead = testkit::eventually("3 dead-lettered", Duration::from_secs(10), || async {
        let n = rig.inspector.ready(&dead_queue).await.ok()?;
        (n >= 3).then_some(n)
    })
    .await;
    let invalid = rig
        .bridge
        .metric(
            "host_bridge_malformed_jobs_total",
            &[("reason", "invalid_job")],
        )
        .await;
    let mismatch = rig
        .bridge
        .metric(
            "host_bridge_malformed_jobs_total",
            &[("reason", "id_mismatch")],
        )
        .await;
    println!(
        "hostile ids: published 4, processed 1, dead-lettered {dead} (invalid_job {invalid}, id_mismatch {mismatch}), lost 0"
    );
    assert_eq!((dead, invalid, mismatch), (3, 2.0, 1.0));
    rig.finish().await
}

/// Sends `head` then trickles one byte per `every`, until the server closes
/// the connection or `limit` passes. Returns what the server sent back and
/// how long the connection lived.
async fn trickle(
    addr: std::net::SocketAddr,
    head: Vec<u8>,
    every: Duration,
    limit: Duration,
) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return (Vec::new(), started.elapsed());
    };
    let _ = stream.write_all(&head).await;
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while started.elapsed() < limit {
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            },
            () = tokio::time::sleep(every) => {
                if stream.write_all(b"x").await.is_err() {
                    break;
                }
            }
        }
    }
    (answer, started.elapsed())
}

/// Resolves once a publish through `url` (a publish API) gets a 202, within
/// `limit`: an honest client served among hostile ones.
async fn honest_publish(url: String, limit: Duration) {
    testkit::eventually("an honest publish among hostile clients", limit, || async {
        let r = testkit::rig::publish_to(&url, job("honest", json!(null)))
            .await
            .ok()?;
        (r.status() == 202).then_some(())
    })
    .await
}

/// 12 KiB of headers to `url` get the JSON `431 headers_too_large`: over
/// the bridge's limit (8 KiB), within its read buffer (16 KiB), past which
/// hyper answers a bare one.
async fn assert_json_431(url: &str) -> Result<()> {
    let big_headers = reqwest::Client::new()
        .get(url)
        .header("x-big", "a".repeat(12 * 1024))
        .send()
        .await?;
    assert_eq!(big_headers.status(), 431);
    assert_eq!(
        big_headers.json::<job::ErrorBody>().await?.error,
        "headers_too_large"
    );
    Ok(())
}

/// What an HTTP/1.1 server must answer with JSON though no route sees it:
/// the requests hyper itself refuses, each as raw bytes.
fn malformed_requests() -> Vec<(&'static str, Vec<u8>)> {
    let mut many = b"GET /healthz HTTP/1.1\r\nhost: x\r\n".to_vec();
    for n in 0..101 {
        many.extend_from_slice(format!("x-{n}: a\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    let mut tls = vec![
        0x16, 0x03, 0x01, 0x00, 0xf4, 0x01, 0x00, 0x00, 0xf0, 0x03, 0x03,
    ];
    tls.extend_from_slice(&[0; 40]);
    vec![
        ("101 header fields", many),
        (
            "two Content-Lengths",
            b"POST /v1/publish HTTP/1.1\r\nhost: x\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab".to_vec(),
        ),
        (
            "a control byte in a header",
            b"GET / HTTP/1.1\r\nhost: x\r\nx-c: a\x01b\r\n\r\n".to_vec(),
        ),
        ("a TLS ClientHello", tls),
        ("HTTP/9.9", b"GET / HTTP/9.9\r\nhost: x\r\n\r\n".to_vec()),
        ("an HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec()),
        ("OPTIONS *", b"OPTIONS * HTTP/1.1\r\nhost: x\r\n\r\n".to_vec()),
        ("GET *", b"GET * HTTP/1.1\r\nhost: x\r\n\r\n".to_vec()),
        ("CONNECT", b"CONNECT x:443 HTTP/1.1\r\nhost: x:443\r\n\r\n".to_vec()),
    ]
}

/// Sends each of [`malformed_requests`] to `addr` on its own connection:
/// every answer must be a 4xx or 5xx with a JSON error body, and a `*`
/// target a `400 bad_request_target`. Returns how many were probed.
async fn assert_every_answer_json(label: &str, addr: std::net::SocketAddr) -> Result<usize> {
    let requests = malformed_requests();
    for (what, bytes) in &requests {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(bytes).await?;
        stream.shutdown().await.ok();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
            .await
            .map_err(|_| anyhow::anyhow!("{label}, {what}: no end of answer in 5 s"))??;
        let answer = String::from_utf8_lossy(&answer);
        let (head, body) = answer
            .split_once("\r\n\r\n")
            .ok_or_else(|| anyhow::anyhow!("{label}, {what}: no answer: {answer:?}"))?;
        let status: u16 = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
        assert!((400..600).contains(&status), "{label}, {what}: {head}");
        let error: job::ErrorBody = serde_json::from_str(body)
            .map_err(|e| anyhow::anyhow!("{label}, {what}: not JSON ({e}): {answer:?}"))?;
        if what.contains('*') {
            assert_eq!(
                (status, error.error.as_str()),
                (400, "bad_request_target"),
                "{label}, {what}"
            );
        }
        println!("{label}, {what}: {status} {}", error.error);
    }
    Ok(requests.len())
}

/// The tests that open hundreds or thousands of connections at once run one
/// at a time: run together, one's flood starved another's server (a 2,000
/// burst once got a connection error while the header flood ran beside it).
static FLOODS: Mutex<()> = Mutex::const_new(());

/// Short read timeouts and a small connection cap, so that slow clients
/// are cut off, and wait their turn, within a test's time.
const SLOW_CLIENT_LIMITS: &[&str] = &[
    "--header-read-timeout",
    "1s",
    "--body-read-timeout",
    "1s",
    "--max-connections",
    "64",
];

/// 200 slowloris connections on each of `targets` (headers sent at 1 byte
/// per 200 ms, never finished), and a `POST {path}` body on the first that
/// declares 60,000 bytes and stalls after 1,000, while `honest` must be
/// served. Every slow connection must be cut off well within 15 s, and the
/// stalled body answered `408 body_timeout` JSON.
async fn assert_slow_clients_cut_off(
    label: &str,
    targets: &[std::net::SocketAddr],
    path: &str,
    honest: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let limit = Duration::from_secs(15);
    let mut slow = Vec::new();
    for addr in targets {
        for _ in 0..200 {
            slow.push(tokio::spawn(trickle(
                *addr,
                format!("POST {path} HTTP/1.1\r\nx-slow: ").into_bytes(),
                Duration::from_millis(200),
                limit,
            )));
        }
    }
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 60000\r\n\r\n"
    )
    .into_bytes();
    head.extend(std::iter::repeat_n(b' ', 1000));
    let stalled_body = tokio::spawn(trickle(targets[0], head, Duration::from_secs(60), limit));
    honest.await;
    let mut longest = Duration::ZERO;
    for task in slow {
        longest = longest.max(task.await?.1);
    }
    let (answer, lived) = stalled_body.await?;
    let answer = String::from_utf8_lossy(&answer);
    println!(
        "{label}: {} connections at 1 byte / 200 ms, longest lived {longest:?}; \
         stalled body answered after {lived:?}: {}",
        200 * targets.len(),
        answer.lines().next().unwrap_or("(nothing)")
    );
    assert!(
        longest < limit,
        "a slow client held a connection for {longest:?}"
    );
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(r#""error":"body_timeout""#), "{answer}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_and_every_error_is_json() -> Result<()> {
    let _alone = FLOODS.lock().await;
    let queue = unique_queue("stress-slow");
    let mut args = vec!["--roles", "publish", "--queue", &queue];
    args.extend_from_slice(SLOW_CLIENT_LIMITS);
    let bridge = RunningBridge::start_ready(&args).await?;
    let publish = bridge.publish_addr.context("publish role")?;
    let admin = bridge.admin_addr;
    let honest = honest_publish(bridge.publish_url("/v1/publish"), Duration::from_secs(10));
    assert_slow_clients_cut_off("slowloris", &[publish, admin], "/v1/publish", honest).await?;

    // Errors that the HTTP stack, not a route, produces are JSON too.
    let client = reqwest::Client::new();
    let wrong_method = client
        .post(format!("http://{admin}/metrics"))
        .send()
        .await?;
    assert_eq!(wrong_method.status(), 405);
    assert_eq!(
        wrong_method.json::<job::ErrorBody>().await?.error,
        "method_not_allowed"
    );
    assert_json_431(&format!("http://{admin}/readyz")).await?;
    for (label, addr) in [("publish API", publish), ("admin", admin)] {
        assert_every_answer_json(label, addr).await?;
    }
    bridge.stop().await;
    Inspector::connect().await?.delete_topology(&queue).await?;
    Ok(())
}

/// The producer as `make up` and the manifests run it: `wasmtime serve` on
/// a loopback port behind a bridge process in the publish and ingress
/// roles. Clients use [`FrontDoor::url`], the ingress.
struct FrontDoor {
    bridge: BridgeProcess,
    producer: testkit::runtime::WasmtimeServe,
    ingress: std::net::SocketAddr,
}

impl FrontDoor {
    async fn start(queue: &str, extra: &[&str]) -> Result<Self> {
        let [ingress_port, producer_port] = testkit::process::free_ports()?;
        let ingress = std::net::SocketAddr::from(([127, 0, 0, 1], ingress_port));
        let ingress_arg = ingress.to_string();
        let producer_url = format!("http://127.0.0.1:{producer_port}");
        let mut args = vec![
            "--roles",
            "publish,ingress",
            "--queue",
            queue,
            "--ingress-addr",
            &ingress_arg,
            "--producer-url",
            &producer_url,
        ];
        args.extend_from_slice(extra);
        let bridge = BridgeProcess::spawn(&amqp_url(), &args).await?;
        let producer = testkit::runtime::WasmtimeServe::producer_on(
            producer_port,
            bridge.publish_addr,
            &[("BRIDGE_TIMEOUT_MS", "7000")],
        )
        .await?;
        bridge.wait_ready().await;
        Ok(Self {
            bridge,
            producer,
            ingress,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.ingress)
    }
}

/// `GET /generate` with `id` as its idempotency key: the status, the JSON
/// error code (empty for a 202), whether `Retry-After` came, and how long
/// the answer took.
async fn generate(url: &str, id: &str) -> Result<(u16, String, bool, Duration)> {
    let started = Instant::now();
    let response = reqwest::Client::new()
        .get(url)
        .header("idempotency-key", id)
        .timeout(Duration::from_secs(30))
        .send()
        .await?;
    let status = response.status().as_u16();
    let retry_after = response.headers().contains_key("retry-after");
    let body: serde_json::Value = response.json().await.context("a JSON answer")?;
    let code = body["error"].as_str().unwrap_or_default().to_owned();
    Ok((status, code, retry_after, started.elapsed()))
}

/// The runtime's own listener has no read timeouts (`wasmtime serve` builds
/// hyper without a timer); in front of it, the bridge's ingress cuts slow
/// clients off, answers in JSON, and applies the producer's own body limit,
/// so that a body the producer would take is never refused on the way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_front_door_cuts_off_slow_clients_and_keeps_the_producers_body_limit() -> Result<()> {
    let _alone = FLOODS.lock().await;
    let queue = unique_queue("stress-front-slow");
    let front = FrontDoor::start(&queue, SLOW_CLIENT_LIMITS).await?;
    let honest = testkit::eventually(
        "an honest /generate among slow clients",
        Duration::from_secs(10),
        || async {
            let (status, ..) = generate(&front.url("/generate"), "front-honest")
                .await
                .ok()?;
            (status == 202).then_some(())
        },
    );
    assert_slow_clients_cut_off(
        "front door slowloris",
        &[front.ingress],
        "/generate",
        honest,
    )
    .await?;

    // The producer's limit, kept on the way: a body of exactly 64 KiB is a
    // job; one byte more is the producer's own 413, from the ingress.
    let client = reqwest::Client::new();
    let body_of = |len: usize| {
        let filler = len - r#"{"id":"front-64k","payload":""}"#.len();
        format!(r#"{{"id":"front-64k","payload":"{}"}}"#, "a".repeat(filler))
    };
    let post = |body: String| {
        client
            .post(front.url("/generate"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let exact = post(body_of(job::MAX_BODY_BYTES)).await?;
    assert_eq!(exact.status(), 202, "{:?}", exact.text().await);
    let over = post(body_of(job::MAX_BODY_BYTES + 1)).await?;
    assert_eq!(over.status(), 413);
    assert_eq!(
        over.json::<job::ErrorBody>().await?.error,
        "payload_too_large"
    );
    assert_json_431(&front.url("/generate")).await?;
    // hyper's own refusals are JSON, and a `*` target counts as nothing:
    // no "outcome unknown" for a request that was never forwarded.
    let counted = || async {
        let mut sum = 0.0;
        for outcome in ["outcome_unknown", "producer_unavailable"] {
            sum += front
                .bridge
                .metric(
                    "host_bridge_ingress_requests_total",
                    &[("outcome", outcome)],
                )
                .await;
        }
        sum
    };
    let before = counted().await;
    assert_every_answer_json("ingress", front.ingress).await?;
    assert_eq!(counted().await, before);

    let inspector = Inspector::connect().await?;
    let queued = queued_ids(&inspector, &queue).await?;
    let mut answers = Answers::default();
    for id in ["front-honest", "front-64k"] {
        answers.by_id.insert(id.into(), (202, String::new()));
    }
    let tally = tally(&answers, &queued);
    tally.report(
        "front door, slow clients",
        &format!(
            "; bridge peak RSS {:.1} MiB",
            front.bridge.peak_rss()? as f64 / 1048576.0
        ),
    );
    tally.assert_exact();
    assert_eq!(tally.processed, 2, "{queued:?}");
    inspector.delete_topology(&queue).await?;
    Ok(())
}

/// A frozen producer (SIGSTOP of its runtime) and a dead one (SIGKILL),
/// behind the front door: the frozen one gets `504 outcome_unknown` once
/// the producer timeout passes, the dead one `503 producer_unavailable` at
/// once, both JSON with `Retry-After`; `/readyz` says which while either
/// lasts; a refused job is never queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_or_dead_producer_behind_the_front_door_gets_504_or_503_never_a_hang() -> Result<()>
{
    let queue = unique_queue("stress-front-dead");
    let front = FrontDoor::start(&queue, &["--producer-timeout", "2s"]).await?;
    let url = front.url("/generate");
    let mut answers = Answers::default();
    let (status, ..) = generate(&url, "front-before").await?;
    assert_eq!(status, 202);
    answers
        .by_id
        .insert("front-before".into(), (202, String::new()));

    front.producer.signal(testkit::process::Signal::STOP)?;
    let frozen = generate(&url, "front-frozen").await?;
    let unready = wait_unready(&front.bridge, Duration::from_secs(10)).await;
    front.producer.signal(testkit::process::Signal::CONT)?;
    front.bridge.wait_ready().await;
    println!("frozen producer: {frozen:?}; /readyz said {unready}");
    assert_eq!(
        (frozen.0, frozen.1.as_str(), frozen.2),
        (504, "outcome_unknown", true)
    );
    assert!(unready.contains("producer"), "{unready}");
    answers.by_id.insert("front-frozen".into(), (504, frozen.1));

    // A request that races the crash itself may go out on a kept-alive
    // connection and be reset: the ingress can't tell whether the producer
    // took it, so that one is a (truthful) 504. Once the probe has found
    // the producer gone, every request is refused at once.
    front.producer.signal(testkit::process::Signal::KILL)?;
    let unready = testkit::eventually(
        "/readyz to say the producer is unreachable",
        Duration::from_secs(10),
        || async {
            let (status, body) = front.bridge.admin("/readyz").await.ok()?;
            (status == 503 && body.contains("unreachable")).then_some(body)
        },
    )
    .await;
    let dead = generate(&url, "front-dead").await?;
    println!("dead producer: {dead:?}; /readyz said {unready}");
    assert_eq!(
        (dead.0, dead.1.as_str(), dead.2),
        (503, "producer_unavailable", true)
    );
    assert!(unready.contains("unreachable"), "{unready}");
    answers.by_id.insert("front-dead".into(), (503, dead.1));

    let inspector = Inspector::connect().await?;
    let queued = queued_ids(&inspector, &queue).await?;
    let tally = tally(&answers, &queued);
    tally.report(
        "front door, frozen then dead producer",
        &format!(
            "; ingress counted {} outcome_unknown, {} producer_unavailable",
            front
                .bridge
                .metric(
                    "host_bridge_ingress_requests_total",
                    &[("outcome", "outcome_unknown")]
                )
                .await,
            front
                .bridge
                .metric(
                    "host_bridge_ingress_requests_total",
                    &[("outcome", "producer_unavailable")]
                )
                .await,
        ),
    );
    tally.assert_exact();
    inspector.delete_topology(&queue).await?;
    Ok(())
}

/// A loopback relay between the ingress and the producer that holds back
/// the request carrying `marker`: it says when that request has arrived
/// (`arrived`) and passes it on only once `release` fires. Every other
/// byte goes straight through.
async fn holding_relay(
    upstream: std::net::SocketAddr,
    marker: &'static str,
) -> Result<(
    u16,
    tokio::sync::oneshot::Receiver<()>,
    tokio::sync::oneshot::Sender<()>,
)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let (arrived_tx, arrived) = tokio::sync::oneshot::channel();
    let (release, release_rx) = tokio::sync::oneshot::channel::<()>();
    let hold = Arc::new(Mutex::new((Some(arrived_tx), Some(release_rx))));
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let hold = hold.clone();
            tokio::spawn(async move {
                let Ok(outbound) = TcpStream::connect(upstream).await else {
                    return;
                };
                let (mut up_read, mut up_write) = outbound.into_split();
                let (mut in_read, mut in_write) = inbound.split();
                let requests = async {
                    let mut buffer = vec![0u8; 16 * 1024];
                    loop {
                        let n = in_read.read(&mut buffer).await?;
                        if n == 0 {
                            return std::io::Result::Ok(());
                        }
                        if String::from_utf8_lossy(&buffer[..n]).contains(marker) {
                            let (arrived, release) = {
                                let mut hold = hold.lock().await;
                                (hold.0.take(), hold.1.take())
                            };
                            if let (Some(arrived), Some(release)) = (arrived, release) {
                                let _ = arrived.send(());
                                let _ = release.await;
                            }
                        }
                        up_write.write_all(&buffer[..n]).await?;
                    }
                };
                let answers = tokio::io::copy(&mut up_read, &mut in_write);
                let _ = tokio::join!(requests, answers);
            });
        }
    });
    Ok((port, arrived, release))
}

/// SIGTERM while the ingress holds a request it has forwarded and the
/// component has not yet published: the ingress stops taking requests and
/// readiness fails at once, but the publish API stays up until the ingress
/// has drained, so that request gets its 202 and its job is queued. (With
/// both stopped at once, the component's publish was refused: a 503.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_forwarded_request_publish_before_the_publish_api_stops() -> Result<()> {
    let queue = unique_queue("stress-front-drain");
    let [ingress_port, producer_port] = testkit::process::free_ports()?;
    let producer_addr = std::net::SocketAddr::from(([127, 0, 0, 1], producer_port));
    // The ingress forwards through the relay, which holds back one request.
    let (relay_port, arrived, release) = holding_relay(producer_addr, "drain-in-flight").await?;
    let ingress = format!("127.0.0.1:{ingress_port}");
    let relay = format!("http://127.0.0.1:{relay_port}");
    let mut bridge = BridgeProcess::spawn(
        &amqp_url(),
        &[
            "--roles",
            "publish,ingress",
            "--queue",
            &queue,
            "--ingress-addr",
            &ingress,
            "--producer-url",
            &relay,
        ],
    )
    .await?;
    let _producer =
        testkit::runtime::WasmtimeServe::producer_on(producer_port, bridge.publish_addr, &[])
            .await?;
    bridge.wait_ready().await;
    let url = format!("http://{ingress}/generate");
    assert_eq!(generate(&url, "drain-before").await?.0, 202);

    let in_flight = {
        let url = url.clone();
        tokio::spawn(async move { generate(&url, "drain-in-flight").await })
    };
    arrived.await?;
    bridge.sigterm()?;
    let unready = wait_unready(&bridge, Duration::from_secs(10)).await;
    let _ = release.send(());
    let answer = in_flight.await??;
    let exit = bridge.wait_exit(Duration::from_secs(30)).await?;
    println!("in flight at SIGTERM: {answer:?}; /readyz said {unready}; bridge {exit}");
    assert_eq!((answer.0, answer.1.as_str()), (202, ""), "{answer:?}");
    assert!(unready.contains("shutting down"), "{unready}");
    assert!(exit.success(), "{exit}");
    let inspector = Inspector::connect().await?;
    assert_eq!(
        queued_ids(&inspector, &queue).await?,
        ["drain-before", "drain-in-flight"]
    );
    inspector.delete_topology(&queue).await?;
    Ok(())
}

/// The 202s the producer says it gave, from its answer reports, once it
/// has reported at least `answers` answers on `/generate` (each report
/// comes after its answer is complete).
async fn reported_202s(bridge: &BridgeProcess, answers: f64) -> f64 {
    let on_generate = |status: Option<&'static str>| async move {
        let mut labels = vec![("route", "/generate")];
        labels.extend(status.map(|s| ("status", s)));
        bridge
            .metric("host_bridge_producer_responses_total", &labels)
            .await
    };
    testkit::eventually(
        "the producer's reports of its answers",
        Duration::from_secs(60),
        || async { (on_generate(None).await >= answers).then_some(()) },
    )
    .await;
    on_generate(Some("202")).await
}

/// `count` clients send one `GET /generate` each (ids `{prefix}-{n}` as
/// `Idempotency-Key`), all at once. Every answer must be JSON 202, 503 or
/// 504 (never a runtime's own page), with `Retry-After` unless it is a
/// 202, within 60 s.
async fn burst(url: &str, prefix: &str, count: usize) -> Result<Answers> {
    let mut clients = Vec::new();
    let gate = Arc::new(tokio::sync::Barrier::new(count));
    for n in 0..count {
        let (url, gate) = (url.to_owned(), gate.clone());
        let id = format!("{prefix}-{n}");
        clients.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            gate.wait().await;
            let started = Instant::now();
            let response = http
                .get(&url)
                .header("idempotency-key", &id)
                .timeout(Duration::from_secs(60))
                .send()
                .await
                .unwrap_or_else(|e| panic!("{id}: no answer: {e}"));
            let status = response.status().as_u16();
            let retry_after = response.headers().contains_key("retry-after");
            let body: serde_json::Value = response
                .json()
                .await
                .unwrap_or_else(|e| panic!("{id}: {status} not JSON: {e}"));
            assert!(matches!(status, 202 | 503 | 504), "{id}: {status} {body}");
            assert!(
                status == 202 || retry_after,
                "{id}: {status} without Retry-After"
            );
            let code = body["error"].as_str().unwrap_or("").to_owned();
            (id, (status, code), started.elapsed())
        }));
    }
    let mut answers = Answers::default();
    for client in clients {
        let (id, answer, took) = client.await?;
        answers.slowest = answers.slowest.max(took);
        answers.by_id.insert(id, answer);
    }
    Ok(answers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_at_concurrency_2000_answers_json_with_retry_after_and_no_false_503() -> Result<()>
{
    let _alone = FLOODS.lock().await;
    let queue = unique_queue("stress-overload");
    let bridge = publisher(&amqp_url(), &queue, &["--max-publishes-in-flight", "32"]).await?;
    let producer = wasm::serve(
        "producer",
        &[
            ("BRIDGE_PUBLISH_URL", &bridge.publish_url("/v1/publish")),
            ("BRIDGE_OBSERVE_URL", "off"),
        ],
    )
    .await?;
    let answers = burst(&producer.url("/generate"), "over", 2_000).await?;
    let peak = bridge.peak_rss()?;
    let inspector = Inspector::connect().await?;
    let queued = queued_ids(&inspector, &queue).await?;
    let tally = tally(&answers, &queued);
    tally.report(
        "overload (2,000 at once)",
        &format!(
            "; answers {:?}; bridge peak RSS {:.1} MiB",
            answers.codes(),
            peak as f64 / 1048576.0
        ),
    );
    tally.assert_exact();
    // The cap was reached, and refused promptly rather than queued up.
    assert!(
        answers.codes().contains_key("503 overloaded"),
        "{:?}",
        answers.codes()
    );
    producer.shutdown().await;
    inspector.delete_topology(&queue).await?;
    Ok(())
}

/// Overload through the real local runtime: the producer under `wasmtime
/// serve` with `scripts/up.sh`'s flags, reporting its answers to the
/// bridge as `make up` does, 2,000 requests at once (twice wasmtime serve's
/// default of 1,000 concurrent connections and requests). Every answer is
/// JSON 202, 503 or 504, none is the runtime's own page, and what the
/// producer says it answered is what the clients received.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_under_wasmtime_serve_every_caller_gets_the_answer_the_producer_gave() -> Result<()>
{
    let _alone = FLOODS.lock().await;
    let queue = unique_queue("stress-serve");
    let bridge = publisher(&amqp_url(), &queue, &["--max-publishes-in-flight", "32"]).await?;
    let producer = testkit::runtime::WasmtimeServe::start(
        "producer",
        &[
            ("BRIDGE_PUBLISH_URL", &bridge.publish_url("/v1/publish")),
            ("BRIDGE_OBSERVE_URL", &bridge.publish_url("/v1/observe")),
            ("BRIDGE_TIMEOUT_MS", "7000"),
        ],
    )
    .await?;
    let answers = burst(&producer.url("/generate"), "serve", 2_000).await?;
    let inspector = Inspector::connect().await?;
    let queued = queued_ids(&inspector, &queue).await?;
    let tally = tally(&answers, &queued);
    // The producer's own count of its answers, from its reports: each
    // arrives after its answer is complete, so wait for all 2,000.
    let said_202 = reported_202s(&bridge, 2_000.0).await;
    let got_202 = answers.ids(202).len() as f64;
    tally.report(
        "overload under wasmtime serve (2,000 at once)",
        &format!(
            "; answers {:?}; the producer reported {said_202} × 202, clients got {got_202}; \
             slowest {:?}; wasmtime serve peak RSS {:.1} MiB, bridge {:.1} MiB",
            answers.codes(),
            answers.slowest,
            producer.peak_rss()? as f64 / 1048576.0,
            bridge.peak_rss()? as f64 / 1048576.0,
        ),
    );
    tally.assert_exact();
    assert_eq!(
        said_202, got_202,
        "a 202 the producer gave that a caller never got"
    );
    inspector.delete_topology(&queue).await?;
    Ok(())
}

/// Overload through the front door, the path `make up` and the manifests
/// run: 2,000 requests at once to the bridge's ingress, in front of `wasmtime
/// serve`. The ingress holds at most its cap and refuses the rest at once
/// (`503 overloaded`); every answer is JSON 202, 503 or 504; what the
/// producer says it answered 202 is what clients received; and the bridge
/// stays inside its sidecar memory limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_through_the_front_door_refuses_at_once_and_every_202_arrives() -> Result<()> {
    let _alone = FLOODS.lock().await;
    let queue = unique_queue("stress-front-over");
    let front = FrontDoor::start(&queue, &["--max-publishes-in-flight", "32"]).await?;
    let answers = burst(&front.url("/generate"), "front-over", 2_000).await?;
    let inspector = Inspector::connect().await?;
    let queued = queued_ids(&inspector, &queue).await?;
    let tally = tally(&answers, &queued);
    let bridge = &front.bridge;
    // Every request the ingress forwarded reached the producer, which
    // reports its answer after writing it: wait for those reports.
    let forwarded = bridge
        .metric(
            "host_bridge_ingress_requests_total",
            &[("outcome", "forwarded")],
        )
        .await
        + bridge
            .metric(
                "host_bridge_ingress_requests_total",
                &[("outcome", "outcome_unknown")],
            )
            .await;
    let said_202 = reported_202s(bridge, forwarded).await;
    let got_202 = answers.ids(202).len() as f64;
    let peak = bridge.peak_rss()?;
    tally.report(
        "overload through the front door (2,000 at once)",
        &format!(
            "; answers {:?}; forwarded {forwarded}; the producer reported {said_202} × 202, \
             clients got {got_202}; slowest {:?}; bridge peak RSS {:.1} MiB, wasmtime serve {:.1} MiB",
            answers.codes(),
            answers.slowest,
            peak as f64 / 1048576.0,
            front.producer.peak_rss()? as f64 / 1048576.0,
        ),
    );
    tally.assert_exact();
    assert_eq!(
        said_202, got_202,
        "a 202 the producer gave that a caller never got"
    );
    let refused_at_the_door = bridge
        .metric(
            "host_bridge_ingress_requests_total",
            &[("outcome", "overloaded")],
        )
        .await;
    assert!(
        refused_at_the_door > 0.0,
        "the ingress's cap was reached: {:?}",
        answers.codes()
    );
    assert!(peak <= MEMORY_GOAL, "bridge peak RSS {peak}");
    inspector.delete_topology(&queue).await?;
    Ok(())
}

/// Hostile headers at scale: 300 connections each send one header of
/// 300 KiB (over the bridge's 8 KiB limit, under hyper's default read
/// buffer of about 400 KiB) and never finish. Without a cap on the read
/// buffer each one holds its 300 KiB until the header timeout: 90 MiB, over
/// the sidecar's 64 Mi. The bridge must stay inside that limit, cut every
/// one off with a 431 or a close, and serve an honest publish meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_huge_headers_is_cut_off_within_bounded_memory() -> Result<()> {
    let _alone = FLOODS.lock().await;
    let queue = unique_queue("stress-headers");
    let bridge = publisher(&amqp_url(), &queue, &["--header-read-timeout", "5s"]).await?;
    let addr = bridge.publish_addr;
    let header = vec![b'a'; 300 * 1024];
    let mut floods = Vec::new();
    for _ in 0..300 {
        let mut head = b"POST /v1/publish HTTP/1.1\r\nhost: x\r\nx-big: ".to_vec();
        head.extend_from_slice(&header);
        floods.push(tokio::spawn(async move {
            let Ok(mut stream) = TcpStream::connect(addr).await else {
                return (false, String::new());
            };
            let sent = stream.write_all(&head).await.is_ok();
            let mut answer = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut answer))
                .await;
            let first = String::from_utf8_lossy(&answer)
                .lines()
                .next()
                .unwrap_or("(closed)")
                .to_owned();
            (sent, first)
        }));
    }
    honest_publish(bridge.publish_url("/v1/publish"), Duration::from_secs(20)).await;
    let mut answers: BTreeMap<String, usize> = BTreeMap::new();
    for flood in floods {
        let (_, first) = flood.await?;
        *answers.entry(first).or_default() += 1;
    }
    let peak = bridge.peak_rss()?;
    println!(
        "header flood: 300 × 300 KiB; answers {answers:?}; bridge peak RSS {:.1} MiB",
        peak as f64 / 1048576.0
    );
    assert!(
        answers
            .keys()
            .all(|a| a.starts_with("HTTP/1.1 431") || a == "(closed)"),
        "{answers:?}"
    );
    assert!(peak <= MEMORY_GOAL, "bridge peak RSS {peak} bytes");
    Ok(())
}

/// A connection flood past the cap can't keep honest clients waiting: 150
/// slow clients (a head trickled a byte every 500 ms, never finished) on a
/// publish API capped at 64 connections, with a header timeout of 30 s.
/// Before shedding, the honest clients waited in the kernel's backlog for
/// a slow one's timeout (30 s here); now each new connection closes the
/// oldest one that has not sent a whole head. 40 honest publishes, each on
/// a new connection, must all be 202 within 20 s; the figures are printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_past_the_cap_keeps_no_honest_client_waiting() -> Result<()> {
    let _alone = FLOODS.lock().await;
    let queue = unique_queue("stress-shed");
    let limits = ["--max-connections", "64", "--header-read-timeout", "30s"];
    let bridge = publisher(&amqp_url(), &queue, &limits).await?;
    let addr = bridge.publish_addr;
    let flood: Vec<_> = (0..150)
        .map(|_| {
            tokio::spawn(trickle(
                addr,
                b"POST /v1/publish HTTP/1.1\r\nx-slow: ".to_vec(),
                Duration::from_millis(500),
                Duration::from_secs(40),
            ))
        })
        .collect();
    // The flood is past the cap once the bridge has shed a connection.
    bridge
        .wait_metric(
            "host_bridge_connections_shed_total",
            &[("listener", "publish")],
            1.0,
            Duration::from_secs(10),
        )
        .await;
    let url = bridge.publish_url("/v1/publish");
    let mut took = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), async {
        for n in 0..40 {
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()?;
            let started = Instant::now();
            let response = client
                .post(&url)
                .header("content-type", "application/json")
                .body(job(&format!("shed-{n}"), json!(null)))
                .send()
                .await?;
            assert_eq!(response.status(), 202);
            took.push(started.elapsed());
        }
        anyhow::Ok(())
    })
    .await
    .map_err(|_| anyhow::anyhow!("honest clients still waiting after 20 s: {took:?}"))??;
    let shed = bridge
        .metric(
            "host_bridge_connections_shed_total",
            &[("listener", "publish")],
        )
        .await;
    for task in &flood {
        task.abort();
    }
    took.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "connection flood: 150 slow clients on a cap of 64; 40 honest publishes: \
         p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; {shed} connections shed; bridge peak RSS {:.1} MiB",
        ms(took[took.len() / 2]),
        ms(took[(took.len() * 99).div_ceil(100) - 1]),
        ms(took[took.len() - 1]),
        bridge.peak_rss()? as f64 / 1048576.0
    );
    let inspector = Inspector::connect().await?;
    assert_eq!(queued_ids(&inspector, &queue).await?.len(), 40);
    inspector.delete_topology(&queue).await?;
    Ok(())
}

/// A bridge that publishes and consumes (as `make up` runs it) keeps a
/// connection for each: a memory alarm blocks the publishing one, and the
/// job in progress is still acked while the alarm lasts. On one shared
/// connection the ack waited behind the block, timed out, and landed only
/// after the alarm cleared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alarm_blocks_publishes_but_not_the_consumers_acks() -> Result<()> {
    let broker = PrivateBroker::start("stress-ack-alarm").await?;
    let queue = unique_queue("stress-ack-alarm");
    let amqp = broker.amqp_url();
    let mut worker = testkit::standin::StandIn::start().await?;
    let worker_url = worker.url();
    let bridge = BridgeProcess::spawn(
        &amqp,
        &[
            "--roles",
            "publish,consume",
            "--queue",
            &queue,
            "--worker-url",
            &worker_url,
            "--publish-timeout",
            "1s",
        ],
    )
    .await?;
    bridge.wait_ready().await;
    let publish = bridge.publish_url("/v1/publish");
    let post = |id: &str, payload| testkit::rig::publish_to(&publish, job(id, payload));
    assert_eq!(
        post("in-progress", json!({"delays_ms": [3000]}))
            .await?
            .status(),
        202
    );
    worker.next_received(Duration::from_secs(10)).await;
    broker
        .ctl(&["set_vm_memory_high_watermark", "0.0000001"])
        .await?;
    // A publish during the alarm: the broker blocks that connection.
    let refused = post("during", json!(null)).await?.status();
    let reason = wait_unready(&bridge, Duration::from_secs(20)).await;
    bridge
        .wait_metric(
            "host_bridge_jobs_total",
            &[("outcome", "acked")],
            1.0,
            Duration::from_secs(15),
        )
        .await;
    let ack_failures = bridge.metric("host_bridge_ack_failures_total", &[]).await;
    let connected = bridge.metric("host_bridge_broker_connected", &[]).await;
    println!(
        "alarm: publish answered {refused}, not ready ({reason}); the job in progress acked \
         during the alarm; ack failures {ack_failures:.0}; connections {connected:.0}"
    );
    assert_ne!(refused, 202);
    assert!(reason.contains("broker_blocked"), "{reason}");
    assert_eq!(ack_failures, 0.0);
    assert_eq!(connected, 2.0, "one connection per role");
    broker.ctl(&["set_vm_memory_high_watermark", "0.4"]).await?;
    bridge.wait_ready().await;
    let inspector = Inspector::connect_to(&amqp).await?;
    inspector.delete_topology(&queue).await?;
    Ok(())
}

/// 500 slow connections per port on each of a bridge's listeners (a head
/// trickled a byte every 200 ms, never finished), for two rounds, with
/// default limits, on the release build. Peak RSS must stay within [`MEMORY_GOAL`], and the RSS
/// after the second round must be no more than after the first (no creep).
/// `roles` chooses the layout; the listeners attacked are the ones it has.
async fn slow_connections_within_48_mib(label: &str, roles: &str) -> Result<()> {
    let _alone = FLOODS.lock().await;
    let queue = unique_queue("stress-memory");
    let worker = testkit::standin::StandIn::start().await?;
    let worker_url = worker.url();
    let [ingress_port, producer_port] = testkit::process::free_ports()?;
    let ingress = std::net::SocketAddr::from(([127, 0, 0, 1], ingress_port));
    let (ingress_arg, producer_url) = (
        ingress.to_string(),
        format!("http://127.0.0.1:{producer_port}"),
    );
    let bridge = BridgeProcess::spawn_binary(
        &testkit::process::release_bridge_binary(),
        &amqp_url(),
        &[
            "--roles",
            roles,
            "--queue",
            &queue,
            "--worker-url",
            &worker_url,
            "--ingress-addr",
            &ingress_arg,
            "--producer-url",
            &producer_url,
        ],
    )
    .await?;
    testkit::eventually(
        "the bridge's admin server",
        Duration::from_secs(10),
        || async { bridge.admin("/healthz").await.ok().map(drop) },
    )
    .await;
    let idle = bridge.rss()?;
    let mut targets = vec![bridge.admin_addr];
    if roles.contains("ingress") {
        targets.push(ingress);
    }
    if roles.contains("publish") {
        targets.push(bridge.publish_addr);
    }
    let mut rounds = Vec::new();
    for _ in 0..2 {
        let mut slow = Vec::new();
        for addr in &targets {
            for _ in 0..500 {
                slow.push(tokio::spawn(trickle(
                    *addr,
                    b"POST /generate HTTP/1.1\r\nx-slow: ".to_vec(),
                    Duration::from_millis(200),
                    Duration::from_secs(15),
                )));
            }
        }
        for task in slow {
            task.await?;
        }
        rounds.push(bridge.rss()?);
    }
    let peak = bridge.peak_rss()?;
    let mib = |b: u64| b as f64 / 1048576.0;
    println!(
        "memory, {label} ({} slow connections on {} ports, twice): idle {:.1} MiB, peak {:.1} MiB \
         (goal {:.0}), after each round {:.1} / {:.1} MiB",
        500 * targets.len(),
        targets.len(),
        mib(idle),
        mib(peak),
        mib(MEMORY_GOAL),
        mib(rounds[0]),
        mib(rounds[1])
    );
    assert!(peak <= MEMORY_GOAL, "peak RSS {:.1} MiB", mib(peak));
    assert!(
        rounds[1] <= rounds[0] + 2 * 1024 * 1024,
        "RSS crept from {:.1} to {:.1} MiB",
        mib(rounds[0]),
        mib(rounds[1])
    );
    Inspector::connect().await?.delete_topology(&queue).await?;
    Ok(())
}

/// `make up`'s layout: one bridge in every role, three listeners attacked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_connections_on_every_port_keep_the_bridge_within_48_mib() -> Result<()> {
    slow_connections_within_48_mib("make up layout", "publish,consume,ingress").await
}

/// The producer pod's sidecar in Kubernetes: the ingress and the admin port
/// are what a client or another pod reaches; the loopback publish API is
/// attacked too, as a component gone wrong could.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_connections_on_the_producer_sidecar_keep_it_within_48_mib() -> Result<()> {
    slow_connections_within_48_mib("producer sidecar", "publish,ingress").await
}

/// One bridge in `make up`'s layout through a series of broker faults, as
/// a first month in production might bring them, each under 600 publishes
/// of 60 KB from 200 clients: a memory alarm, the broker paused, a disk
/// alarm and the broker restarted, all twice, on the release build. The
/// issue saw RSS climb 42.7 → 48 → 53.7 → 60.1 → 64.4 MB over such a
/// series. Peak RSS must stay within [`MEMORY_GOAL`] throughout. RSS after
/// each fault is printed, not asserted: glibc keeps some freed pages, and
/// the series steps up a few MiB at moments that differ from run to run
/// (four runs here: after the last fault 36.8, 37.8, 44.4 and, with
/// restarts only, 36.8 MiB) while the peak stayed under the goal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_series_of_broker_faults_keeps_the_bridge_within_48_mib_without_creep() -> Result<()> {
    let _alone = FLOODS.lock().await;
    let mut broker = PrivateBroker::start("stress-creep").await?;
    let queue = unique_queue("stress-creep");
    let amqp = broker.amqp_url();
    let worker = testkit::standin::StandIn::start().await?;
    let worker_url = worker.url();
    let bridge = BridgeProcess::spawn_binary(
        &testkit::process::release_bridge_binary(),
        &amqp,
        &[
            "--roles",
            "publish,consume",
            "--queue",
            &queue,
            "--worker-url",
            &worker_url,
            "--publish-timeout",
            "2s",
            "--heartbeat",
            "2s",
            "--concurrency",
            "8",
        ],
    )
    .await?;
    bridge.wait_ready().await;
    let url = bridge.publish_url("/v1/publish");
    let mib = |b: u64| b as f64 / 1048576.0;
    let mut after = Vec::new();
    let faults = ["memory alarm", "paused", "disk alarm", "restarted"];
    for (n, fault) in faults.into_iter().chain(faults).enumerate() {
        match fault {
            "memory alarm" => drop(
                broker
                    .ctl(&["set_vm_memory_high_watermark", "0.0000001"])
                    .await?,
            ),
            "disk alarm" => drop(broker.ctl(&["set_disk_free_limit", "100000GB"]).await?),
            "paused" => broker.pause()?,
            _ => broker.restart().await?,
        }
        let prefix = format!("creep-{n}");
        let during = load(&url, &prefix, 600, 200, 60_000, Duration::from_secs(15)).await;
        match fault {
            "memory alarm" => drop(broker.ctl(&["set_vm_memory_high_watermark", "0.4"]).await?),
            "disk alarm" => drop(broker.ctl(&["set_disk_free_limit", "1MB"]).await?),
            "paused" => broker.resume()?,
            _ => {}
        }
        bridge.wait_ready().await;
        let rss = bridge.rss()?;
        println!(
            "creep: after {fault}: RSS {:.1} MiB; answers {:?}",
            mib(rss),
            during.codes()
        );
        after.push(rss);
    }
    let peak = bridge.peak_rss()?;
    let each: Vec<String> = after.iter().map(|b| format!("{:.1}", mib(*b))).collect();
    println!(
        "creep: RSS after each fault {} MiB; peak {:.1} MiB (goal {:.0})",
        each.join(" → "),
        mib(peak),
        mib(MEMORY_GOAL)
    );
    assert!(peak <= MEMORY_GOAL, "peak RSS {:.1} MiB", mib(peak));
    Inspector::connect_to(&amqp)
        .await?
        .delete_topology(&queue)
        .await?;
    Ok(())
}
