//! Real host-bridges, in-process on port 0, stopped through their shutdown
//! parameter.

use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;
use host_bridge::{Bridge, Config};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::admin::{Admin, MetricSource};
use crate::amqp::amqp_url;

/// A running bridge.
pub struct RunningBridge {
    /// The publish API, when that role is on.
    pub publish_addr: Option<SocketAddr>,
    /// The admin server.
    pub admin_addr: SocketAddr,
    /// The bridge's own metrics, readable after it has stopped too.
    pub metrics: host_bridge::Metrics,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    admin: Admin,
}

impl RunningBridge {
    /// Starts a bridge with `args` (flags as on the command line) on top of
    /// test defaults: `AMQP_URL`, ports 0, short poll interval.
    pub async fn start(args: &[&str]) -> anyhow::Result<Self> {
        let amqp = amqp_url();
        let defaults = [
            ("--amqp-url", amqp.as_str()),
            ("--publish-addr", "127.0.0.1:0"),
            ("--admin-addr", "127.0.0.1:0"),
            ("--queue-poll-interval", "200ms"),
        ];
        let mut argv = vec!["host-bridge"];
        argv.extend_from_slice(args);
        for (flag, value) in defaults {
            if !args.contains(&flag) {
                argv.extend([flag, value]);
            }
        }
        let config = Config::try_parse_from(argv).context("bridge arguments")?;
        let bridge = Bridge::bind(config).await?;
        let publish_addr = bridge.publish_addr();
        let admin_addr = bridge.admin_addr();
        let metrics = bridge.metrics().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(bridge.run(async move {
            let _ = stopped.await;
        }));
        Ok(Self {
            publish_addr,
            admin_addr,
            metrics,
            stop: Some(stop),
            task: Some(task),
            admin: Admin::new(admin_addr),
        })
    }

    /// Starts a bridge and waits until /readyz says it is ready.
    pub async fn start_ready(args: &[&str]) -> anyhow::Result<Self> {
        let bridge = Self::start(args).await?;
        bridge.wait_ready().await;
        Ok(bridge)
    }

    /// The publish API's URL for `path`.
    pub fn publish_url(&self, path: &str) -> String {
        let addr = self.publish_addr.expect("the publish role is on");
        format!("http://{addr}{path}")
    }

    /// GETs an admin path, returning its status and body.
    pub async fn admin(&self, path: &str) -> anyhow::Result<(u16, String)> {
        self.admin.get(path).await
    }

    /// The /metrics text, as served.
    pub async fn scrape(&self) -> anyhow::Result<String> {
        let (status, text) = self.admin("/metrics").await?;
        anyhow::ensure!(status == 200, "/metrics answered {status}");
        Ok(text)
    }

    /// Waits until /readyz answers 200.
    pub async fn wait_ready(&self) {
        self.admin.wait_ready().await;
    }

    /// Starts a graceful stop (what SIGTERM does) without waiting.
    pub fn begin_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Stops gracefully and waits for `run` to return.
    pub async fn stop(mut self) {
        self.begin_stop();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Waits for `run` to return after [`RunningBridge::begin_stop`].
    pub async fn join(mut self) {
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl MetricSource for RunningBridge {
    /// Read, typed, from the bridge's own registry, so it works after a
    /// stop too.
    async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        crate::family_value(&self.metrics.gather(), name, labels)
    }
}

impl Drop for RunningBridge {
    fn drop(&mut self) {
        // A test that fails mid-way still stops its bridge.
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}
