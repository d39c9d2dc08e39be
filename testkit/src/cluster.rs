//! A private RabbitMQ cluster: real `rabbitmq-server` nodes on free ports,
//! joined with `rabbitmqctl join_cluster`, that a test kills, stops and
//! restarts one node at a time, as a crash or a Kubernetes rolling update
//! would.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

use crate::private_broker::PrivateBroker;

/// The nodes of one cluster. Node 0 is the one the others joined; any of
/// them may be stopped later.
pub struct Cluster {
    /// The nodes, in the order of [`Cluster::amqp_urls`].
    pub nodes: Vec<PrivateBroker>,
    home: PathBuf,
}

/// A quorum queue's replicas, as the cluster reports them.
#[derive(Debug, Clone)]
pub struct QueueReplicas {
    /// The node leading the queue.
    pub leader: String,
    /// Every member.
    pub members: Vec<String>,
    /// The members that are up.
    pub online: Vec<String>,
}

impl Cluster {
    /// Starts `size` nodes (with `rabbitmq_prometheus` when `prometheus`)
    /// and clusters them; returns once every node reports all of them
    /// running.
    pub async fn start(test: &str, size: usize, prometheus: bool) -> anyhow::Result<Self> {
        let home = std::env::temp_dir().join(format!(
            "e2e-cluster-{test}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_nanos()
        ));
        std::fs::create_dir_all(&home)?;
        // One cookie for every node and rabbitmqctl: Erlang distribution
        // admits only peers that present it. Written before any node boots,
        // so that none makes its own.
        let cookie = home.join(".erlang.cookie");
        std::fs::write(&cookie, format!("E2E{}", std::process::id()))?;
        std::fs::set_permissions(&cookie, std::fs::Permissions::from_mode(0o400))?;
        let names: Vec<String> = (0..size).map(|n| format!("{test}{n}")).collect();
        let starts = names
            .iter()
            .map(|name| PrivateBroker::start_node(name, prometheus, Some(home.clone())));
        let nodes = futures::future::try_join_all(starts).await?;
        let cluster = Self { nodes, home };
        let seed = cluster.nodes[0].node_name();
        for node in &cluster.nodes[1..] {
            node.ctl(&["stop_app"]).await?;
            node.ctl(&["join_cluster", &seed]).await?;
            node.ctl(&["start_app"]).await?;
        }
        cluster.wait_formed(Duration::from_secs(60)).await?;
        Ok(cluster)
    }

    /// Every node's AMQP URL, comma-separated: host-bridge's `AMQP_URL`.
    pub fn amqp_urls(&self) -> String {
        self.nodes
            .iter()
            .map(PrivateBroker::amqp_url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A node that is running, to ask about the cluster.
    pub fn running(&self) -> anyhow::Result<&PrivateBroker> {
        self.nodes
            .iter()
            .find(|n| n.is_running())
            .context("no node of the cluster is running")
    }

    /// The index of the node named `name`.
    pub fn index_of(&self, name: &str) -> anyhow::Result<usize> {
        self.nodes
            .iter()
            .position(|n| n.node_name() == name)
            .with_context(|| format!("{name} is not a node of this cluster"))
    }

    /// Waits until a running node reports every running node of the
    /// cluster as running.
    pub async fn wait_formed(&self, limit: Duration) -> anyhow::Result<()> {
        let want: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.is_running())
            .map(PrivateBroker::node_name)
            .collect();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let status = self
                .running()?
                .ctl(&["cluster_status", "--formatter", "json"])
                .await?;
            let status: Value = serde_json::from_str(&status).context("cluster_status JSON")?;
            let running = strings(&status["running_nodes"]);
            if want.iter().all(|n| running.contains(n)) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("cluster not formed within {limit:?}: running {running:?}, want {want:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// `queue`'s leader and members, from a running node.
    pub async fn replicas(&self, queue: &str) -> anyhow::Result<QueueReplicas> {
        let listed = self
            .running()?
            .ctl(&[
                "list_queues",
                "name",
                "leader",
                "members",
                "online",
                "--formatter",
                "json",
            ])
            .await?;
        let listed: Value = serde_json::from_str(&listed).context("list_queues JSON")?;
        let row = listed
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["name"] == queue))
            .with_context(|| format!("no queue {queue} in {listed}"))?;
        Ok(QueueReplicas {
            leader: row["leader"].as_str().unwrap_or_default().to_owned(),
            members: strings(&row["members"]),
            online: strings(&row["online"]),
        })
    }

    /// Waits until `queue` has `count` members online and a leader, e.g.
    /// after a node rejoined: what `rabbitmq-upgrade
    /// await_online_quorum_plus_one` checks before the next node may stop.
    pub async fn wait_online(
        &self,
        queue: &str,
        count: usize,
        limit: Duration,
    ) -> anyhow::Result<QueueReplicas> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            // A node that is still starting may not answer list_queues yet.
            let last = self.replicas(queue).await;
            if let Ok(replicas) = &last
                && replicas.online.len() >= count
                && !replicas.leader.is_empty()
            {
                return last;
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("{queue}: not {count} members online within {limit:?}: {last:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // The nodes kill themselves on drop; the shared HOME is ours.
        self.nodes.clear();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.home);
        }
    }
}
