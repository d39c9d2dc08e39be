//! A private RabbitMQ node that a test starts, stops, kills and restarts: the
//! real `rabbitmq-server`, on its own ports and data directory, so that a
//! broker fault hits only that test.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

use crate::process::{Signal, free_ports, signal_group};

/// The `rabbitmq-server` start script: `RABBITMQ_SERVER`, Debian's path, or
/// the one on PATH.
fn server_script() -> PathBuf {
    if let Some(path) = std::env::var_os("RABBITMQ_SERVER") {
        return path.into();
    }
    let debian = PathBuf::from("/usr/lib/rabbitmq/bin/rabbitmq-server");
    if debian.exists() {
        debian
    } else {
        "rabbitmq-server".into()
    }
}

/// A running (or stopped) private node. Its data survives restarts, as a
/// real broker's disk does.
pub struct PrivateBroker {
    dir: PathBuf,
    /// HOME for the node and its `rabbitmqctl`: where the Erlang cookie is.
    /// The node's own directory, or a cluster's shared one.
    home: PathBuf,
    name: String,
    port: u16,
    dist_port: u16,
    prometheus_port: Option<u16>,
    child: Option<Child>,
}

impl PrivateBroker {
    /// Starts a node on free ports and waits until AMQP answers.
    pub async fn start(test: &str) -> anyhow::Result<Self> {
        Self::start_node(test, false, None).await
    }

    /// Starts a node with the `rabbitmq_prometheus` plugin on a free port,
    /// refreshing queue stats every second (the default is 5 s), and waits
    /// until AMQP and the metrics endpoint answer.
    pub async fn start_with_prometheus(test: &str) -> anyhow::Result<Self> {
        Self::start_node(test, true, None).await
    }

    /// Starts a node whose HOME (and so Erlang cookie) is `home`, as the
    /// members of one cluster must share a cookie. See [`crate::cluster`].
    pub(crate) async fn start_node(
        test: &str,
        prometheus: bool,
        home: Option<PathBuf>,
    ) -> anyhow::Result<Self> {
        let [port, dist_port, metrics_port] = free_ports()?;
        let prometheus_port = prometheus.then_some(metrics_port);
        let name = format!("e2e-{test}-{port}");
        let dir = std::env::temp_dir().join(&name);
        std::fs::create_dir_all(&dir)?;
        let mut conf = String::from("log.console = false\n");
        let plugins = match prometheus_port {
            Some(p) => {
                conf.push_str(&format!(
                    "prometheus.tcp.port = {p}\nprometheus.tcp.ip = 127.0.0.1\n"
                ));
                conf.push_str("collect_statistics_interval = 1000\n");
                "[rabbitmq_prometheus].\n"
            }
            None => "[].\n",
        };
        std::fs::write(dir.join("enabled_plugins"), plugins)?;
        std::fs::write(dir.join("rabbitmq.conf"), conf)?;
        let mut broker = Self {
            home: home.unwrap_or_else(|| dir.clone()),
            dir,
            name,
            port,
            dist_port,
            prometheus_port,
            child: None,
        };
        broker.spawn().await?;
        Ok(broker)
    }

    /// Where `rabbitmq_prometheus` listens, when enabled.
    pub fn prometheus_addr(&self) -> Option<String> {
        self.prometheus_port.map(|p| format!("127.0.0.1:{p}"))
    }

    /// Its Erlang node name, as `rabbitmqctl` and cluster status show it.
    pub fn node_name(&self) -> String {
        format!("{}@localhost", self.name)
    }

    /// Whether it has been started and not stopped or killed since.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Its AMQP URL.
    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let d = |sub: &str| self.dir.join(sub);
        let child = Command::new(server_script())
            .current_dir(&self.dir)
            // The node keeps its Erlang cookie in HOME.
            .env("HOME", &self.home)
            .env("RABBITMQ_NODENAME", self.node_name())
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", d("mnesia"))
            .env("RABBITMQ_LOG_BASE", d("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d("enabled_plugins"))
            .env("RABBITMQ_CONFIG_FILE", d("rabbitmq"))
            .env("RABBITMQ_PID_FILE", d("pid"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group: the start script runs the Erlang VM as
            // a child, and a signal to the script alone would orphan the VM.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .context("failed to start rabbitmq-server (is RabbitMQ installed?)")?;
        self.child = Some(child);
        let port = self.port;
        crate::wait_for_port(
            "the private broker to accept AMQP",
            port,
            Duration::from_secs(60),
        )
        .await;
        if let Some(p) = self.prometheus_port {
            crate::wait_for_port("rabbitmq_prometheus to answer", p, Duration::from_secs(30)).await;
        }
        Ok(())
    }

    /// Stops the node cleanly (SIGTERM) and waits for it to exit.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        self.signal_and_wait(Signal::TERM).await
    }

    /// Kills the node (SIGKILL): a crash.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        self.signal_and_wait(Signal::KILL).await
    }

    /// Freezes the node (SIGSTOP): a broker that hangs, with its sockets
    /// open and its kernel still accepting TCP.
    pub fn pause(&self) -> anyhow::Result<()> {
        self.signal_running(Signal::STOP)
    }

    /// Thaws a paused node (SIGCONT).
    pub fn resume(&self) -> anyhow::Result<()> {
        self.signal_running(Signal::CONT)
    }

    fn signal_running(&self, signal: Signal) -> anyhow::Result<()> {
        let pid = self
            .child
            .as_ref()
            .and_then(Child::id)
            .context("the broker is not running")?;
        signal_group(pid, signal)
    }

    /// Runs `rabbitmqctl` against this node, e.g. to raise an alarm.
    pub async fn ctl(&self, args: &[&str]) -> anyhow::Result<String> {
        let ctl = server_script().with_file_name("rabbitmqctl");
        let output = Command::new(if ctl.exists() {
            ctl
        } else {
            "rabbitmqctl".into()
        })
        .env("HOME", &self.home)
        .arg("-n")
        .arg(self.node_name())
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
        // A node that hangs must fail the test, not hang it.
        let output = tokio::time::timeout(Duration::from_secs(60), output)
            .await
            .with_context(|| format!("rabbitmqctl {args:?}: no answer within 60 s"))?
            .context("failed to run rabbitmqctl")?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        if !output.status.success() {
            bail!(
                "rabbitmqctl {args:?} failed: {}{}",
                stdout,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(stdout)
    }

    /// Starts the stopped node again, on the same ports and data.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            self.stop().await?;
        }
        self.spawn().await
    }

    async fn signal_and_wait(&mut self, signal: Signal) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            bail!("the broker is not running");
        };
        if let Some(pid) = child.id() {
            signal_group(pid, signal)?;
        }
        tokio::time::timeout(Duration::from_secs(60), child.wait())
            .await
            .context("the broker did not exit within 60 s")??;
        Ok(())
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        if let Some(pid) = self.child.as_ref().and_then(Child::id) {
            // Already gone is fine: this is cleanup.
            let _ = signal_group(pid, Signal::KILL);
        }
        // A failed test keeps the node's logs to read.
        if std::thread::panicking() {
            eprintln!(
                "broker {} left its data and logs in {}",
                self.name,
                self.dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
