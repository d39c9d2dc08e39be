//! Outgrowing one broker: a real three-node RabbitMQ cluster (private
//! `rabbitmq-server` nodes joined with `rabbitmqctl join_cluster`), a quorum
//! queue replicated on all three, and host-bridge processes given every
//! node's URL, publishing and consuming under load while nodes die:
//!
//! - (a) the node leading the queue is SIGKILLed;
//! - (b) every node is restarted, one at a time, as a rolling update does;
//! - (c) two of the three are stopped, leaving a minority.
//!
//! Each test prints accepted, processed, lost, duplicated, the longest
//! stretch with no 202 and the time from the fault to the first 202 for a
//! request sent after it; and asserts nothing accepted is lost and no
//! refusal was false. The three share the machine's two cores, so they run
//! one at a time.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use testkit::admin::MetricSource;
use testkit::amqp::{Inspector, unique_queue};
use testkit::cluster::Cluster;
use testkit::load::{Answer, paced};
use testkit::process::BridgeProcess;
use testkit::standin::StandIn;
use testkit::tally::Tally;
use tokio::task::JoinHandle;

/// One cluster at a time: three Erlang VMs each already load two cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Each load client publishes one job this often (four clients).
const PACE: Duration = Duration::from_millis(20);

/// Bridge flags: a short confirm wait, a dead link noticed within seconds
/// (two 2 s heartbeats), quick retries, and the queue on all three nodes.
const BRIDGE_FLAGS: [&str; 10] = [
    "--publish-timeout",
    "2s",
    "--heartbeat",
    "2s",
    "--connect-timeout",
    "2s",
    "--reconnect-max-backoff",
    "1s",
    "--quorum-initial-group-size",
    "3",
];

/// Two publishing bridges and two consuming ones on one cluster, a stand-in
/// worker, and paced load through both publishers.
struct Rig {
    cluster: Cluster,
    queue: testkit::amqp::TestQueue,
    worker: StandIn,
    publishers: Vec<BridgeProcess>,
    consumers: Vec<BridgeProcess>,
    stop_load: Arc<AtomicBool>,
    load: Vec<JoinHandle<Vec<Answer>>>,
}

impl Rig {
    async fn start(test: &str) -> Result<Self> {
        let cluster = Cluster::start(test, 3, false).await?;
        let queue = unique_queue(test);
        let worker = StandIn::start().await?;
        let amqp = cluster.amqp_urls();
        let url = worker.url();
        let mut publishers = Vec::new();
        for _ in 0..2 {
            let mut args = vec!["--roles", "publish", "--queue", &queue];
            args.extend(BRIDGE_FLAGS);
            publishers.push(BridgeProcess::spawn(&amqp, &args).await?);
        }
        let mut consumers = Vec::new();
        for _ in 0..2 {
            let mut args = vec![
                "--roles",
                "consume",
                "--queue",
                &queue,
                "--worker-url",
                &url,
                "--concurrency",
                "4",
            ];
            args.extend(BRIDGE_FLAGS);
            consumers.push(BridgeProcess::spawn(&amqp, &args).await?);
        }
        for bridge in publishers.iter().chain(&consumers) {
            bridge.wait_ready().await;
        }
        let replicas = cluster
            .wait_online(&queue, 3, Duration::from_secs(30))
            .await?;
        assert_eq!(replicas.members.len(), 3, "{replicas:?}");
        let stop_load = Arc::new(AtomicBool::new(false));
        let load = publishers
            .iter()
            .flat_map(|p| [p.publish_url("/v1/publish"), p.publish_url("/v1/publish")])
            .enumerate()
            .map(|(n, url)| paced(url, format!("{test}-{n}"), PACE, stop_load.clone()))
            .collect();
        let rig = Self {
            cluster,
            queue,
            worker,
            publishers,
            consumers,
            stop_load,
            load,
        };
        rig.wait_confirmed(100.0).await;
        Ok(rig)
    }

    /// Confirmed publishes over both publishers.
    async fn confirmed(&self) -> f64 {
        let mut sum = 0.0;
        for p in &self.publishers {
            sum += p
                .metric("host_bridge_published_total", &[("outcome", "confirmed")])
                .await;
        }
        sum
    }

    /// Publishes not confirmed (refused unsent, nacked, returned or outcome
    /// unknown) over both publishers.
    async fn unconfirmed(&self) -> f64 {
        let mut sum = 0.0;
        for p in &self.publishers {
            for outcome in ["refused", "rejected", "unroutable", "unknown"] {
                sum += p
                    .metric("host_bridge_published_total", &[("outcome", outcome)])
                    .await;
            }
        }
        sum
    }

    /// Waits until both publishers together have `more` confirmed
    /// publishes beyond what they have now.
    async fn wait_confirmed(&self, more: f64) {
        let target = self.confirmed().await + more;
        testkit::eventually(
            &format!("{more} more confirmed publishes"),
            Duration::from_secs(90),
            || async { (self.confirmed().await >= target).then_some(()) },
        )
        .await;
    }

    /// The bridges' brokers, as /readyz names them.
    async fn brokers(&self) -> Vec<String> {
        let mut brokers = Vec::new();
        for bridge in self.publishers.iter().chain(&self.consumers) {
            let body = bridge.admin("/readyz").await.map(|(_, b)| b);
            let broker = body
                .ok()
                .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok())
                .and_then(|v| v["broker"].as_str().map(str::to_owned))
                .unwrap_or_else(|| "-".into());
            brokers.push(broker);
        }
        brokers
    }

    /// Stops the load, waits until every accepted job is processed and the
    /// consumers hold nothing, and counts. `fault` is when the fault began.
    async fn finish(mut self, test: &str, fault: Instant) -> Result<(Figures, Vec<Answer>)> {
        self.stop_load.store(true, Ordering::SeqCst);
        let mut answers = Vec::new();
        for client in std::mem::take(&mut self.load) {
            answers.extend(client.await?);
        }
        let accepted: BTreeSet<String> = answers
            .iter()
            .filter(|a| a.status == 202)
            .map(|a| a.id.clone())
            .collect();
        let mut processed = self
            .worker
            .until_processed(&accepted, Duration::from_secs(120))
            .await;
        // Whatever is still queued (a 504 that was queued after all, a
        // redelivery) reaches the worker too before the queue is empty.
        let inspector = Inspector::connect_to(&self.cluster.running()?.amqp_url()).await?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut held = Vec::new();
            for c in &self.consumers {
                held.push(c.metric("host_bridge_jobs_in_flight", &[]).await);
            }
            let ready = inspector.ready(&self.queue).await;
            if matches!(ready, Ok(0)) && held.iter().all(|h| *h == 0.0) {
                break;
            }
            if Instant::now() > deadline {
                // Say where the work is stuck: the queue, or which consumer.
                let mut state = Vec::new();
                for c in &self.consumers {
                    let readyz = c.admin("/readyz").await.map(|(_, b)| b);
                    let jobs = c.metric("host_bridge_jobs_total", &[]).await;
                    let reconnects = c.metric("host_bridge_reconnects_total", &[]).await;
                    state.push(format!(
                        "readyz {readyz:?}, jobs {jobs}, reconnects {reconnects}"
                    ));
                }
                anyhow::bail!(
                    "{test}: the queue did not drain in 60 s: ready {ready:?}, in flight per consumer {held:?}; consumers: {state:?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        while let Ok(push) = self.worker.pushes.try_recv() {
            if (200..300).contains(&push.status) {
                *processed.entry(push.id).or_default() += 1;
            }
        }
        let figures = Figures::of(&answers, &processed, fault);
        figures.report(test, &answers);
        inspector.delete_topology(&self.queue).await?;
        for bridge in self.publishers.iter().chain(&self.consumers) {
            bridge.sigterm()?;
        }
        Ok((figures, answers))
    }
}

/// What a cluster test counted: the tally, and how long publishing was
/// unavailable.
#[derive(Debug)]
struct Figures {
    tally: Tally,
    /// The longest stretch between two 202 answers.
    window: Duration,
    /// From the fault to the first 202 for a request sent after it.
    first_202: Option<Duration>,
}

impl Figures {
    fn of(answers: &[Answer], processed: &BTreeMap<String, usize>, fault: Instant) -> Self {
        let mut accepted_at: Vec<Instant> = answers
            .iter()
            .filter(|a| a.status == 202)
            .map(|a| a.answered)
            .collect();
        accepted_at.sort();
        let window = accepted_at
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or_default();
        Self {
            tally: Tally::of(answers.iter().map(|a| (a.id.as_str(), a.status)), processed),
            window,
            first_202: answers
                .iter()
                .filter(|a| a.status == 202 && a.sent >= fault)
                .map(|a| a.answered - fault)
                .min(),
        }
    }

    fn report(&self, test: &str, answers: &[Answer]) {
        let mut codes: BTreeMap<String, usize> = BTreeMap::new();
        for a in answers {
            *codes.entry(format!("{} {}", a.status, a.code)).or_default() += 1;
        }
        println!(
            "{test}: {}, unavailability window {:?}, first 202 after the fault {:?}; \
             answers {codes:?}",
            self.tally.summary(),
            self.window,
            self.first_202,
        );
    }

    fn assert_nothing_lost(&self) {
        self.tally.assert_honest();
        assert!(self.first_202.is_some(), "no 202 after the fault");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_the_queue_leader_killed_under_load_nothing_is_lost() -> Result<()> {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut rig = Rig::start("cluster-a").await?;
    let leader = rig.cluster.replicas(&rig.queue).await?.leader;
    let index = rig.cluster.index_of(&leader)?;
    println!(
        "a: bridges on {:?}; killing the leader {leader}",
        rig.brokers().await
    );
    let fault = Instant::now();
    rig.cluster.nodes[index].kill().await?;
    // The two left are a majority: a new leader takes over, and bridges on
    // the dead node move to a live one.
    rig.wait_confirmed(200.0).await;
    let after = rig.cluster.replicas(&rig.queue).await?;
    assert_ne!(after.leader, leader, "a new leader: {after:?}");
    let brokers = rig.brokers().await;
    let dead = rig.cluster.nodes[index].amqp_url();
    assert!(
        brokers.iter().all(|b| !dead.contains(&format!("@{b}/"))),
        "no bridge on the dead node: {brokers:?}"
    );
    println!("a: new leader {}; bridges on {brokers:?}", after.leader);
    let (figures, _) = rig.finish("a: queue leader SIGKILLed", fault).await?;
    figures.assert_nothing_lost();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b_a_rolling_restart_of_all_three_nodes_loses_nothing() -> Result<()> {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut rig = Rig::start("cluster-b").await?;
    let fault = Instant::now();
    for n in 0..rig.cluster.nodes.len() {
        // What a rolling update does: stop one node (SIGTERM), start it on
        // its own data, and go on only once the queue has all three members
        // online again (the operator's `await_online_quorum_plus_one`).
        rig.cluster.nodes[n].stop().await?;
        rig.wait_confirmed(50.0).await;
        rig.cluster.nodes[n].restart().await?;
        rig.cluster.wait_formed(Duration::from_secs(60)).await?;
        let replicas = rig
            .cluster
            .wait_online(&rig.queue, 3, Duration::from_secs(60))
            .await?;
        println!(
            "b: node {n} restarted after {:?}; leader {}; bridges on {:?}",
            fault.elapsed(),
            replicas.leader,
            rig.brokers().await
        );
    }
    rig.wait_confirmed(50.0).await;
    let (figures, _) = rig.finish("b: rolling restart", fault).await?;
    figures.assert_nothing_lost();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_a_minority_left_refuses_promptly_never_a_false_202_and_recovers() -> Result<()> {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut rig = Rig::start("cluster-c").await?;
    let fault = Instant::now();
    rig.cluster.nodes[1].stop().await?;
    rig.cluster.nodes[2].stop().await?;
    let minority = Instant::now();
    // One node of three: no quorum, so no confirm can come. The bridges
    // must say so (503, or 504 for what was already sent), not hang; each
    // must also have said so on /readyz. Each, not all at one instant: a
    // minority node that nacks every publish (3.10 does, at times) leaves
    // the link ready, since a nack may just mean "queue full", until the
    // bridge moves off it, reconnects to the only node up, and so on; two
    // bridges doing that are rarely both between links at once.
    let noticed = std::cell::RefCell::new(vec![false; rig.publishers.len()]);
    testkit::eventually(
        "each bridge to have said not ready",
        Duration::from_secs(30),
        || async {
            let mut not_ready = Vec::new();
            for bridge in &rig.publishers {
                not_ready.push(!matches!(bridge.admin("/readyz").await, Ok((200, _))));
            }
            let mut noticed = noticed.borrow_mut();
            for (seen, now) in noticed.iter_mut().zip(not_ready) {
                *seen |= now;
            }
            noticed.iter().all(|s| *s).then_some(())
        },
    )
    .await;
    // Refusals for a while: long enough for several heartbeats, reconnect
    // attempts and recycled links to have run into the minority.
    let base = rig.unconfirmed().await;
    testkit::eventually(
        "200 answers other than 202 in the minority",
        Duration::from_secs(60),
        || async { (rig.unconfirmed().await >= base + 200.0).then_some(()) },
    )
    .await;
    let returning = Instant::now();
    rig.cluster.nodes[1].restart().await?;
    rig.wait_confirmed(100.0).await;
    let quorum_back = returning.elapsed();
    rig.cluster.nodes[2].restart().await?;
    rig.cluster
        .wait_online(&rig.queue, 3, Duration::from_secs(60))
        .await?;
    rig.wait_confirmed(50.0).await;
    let (figures, answers) = rig.finish("c: two of three stopped", fault).await?;

    // Sent while only one node was up: never a 202, and answered promptly.
    let in_minority: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.sent >= minority && a.answered <= returning)
        .collect();
    let false_202s = in_minority.iter().filter(|a| a.status == 202).count();
    let slowest = in_minority
        .iter()
        .map(|a| a.answered - a.sent)
        .max()
        .unwrap_or_default();
    println!(
        "c: in the minority {} answers, 202s {false_202s}, slowest {slowest:?}; \
         first 202 {quorum_back:?} after a second node was started",
        in_minority.len()
    );
    figures.assert_nothing_lost();
    assert_eq!(false_202s, 0, "a 202 with no quorum to confirm it");
    assert!(in_minority.len() >= 200, "{}", in_minority.len());
    // No caller waited much past the confirm timeout (2 s here).
    assert!(slowest < Duration::from_secs(5), "{slowest:?}");
    Ok(())
}
