//! Real host-bridge processes, for faults that need a process to die:
//! SIGKILL mid-job, SIGTERM with a job in flight.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
pub use rustix::process::Signal;
use rustix::process::{Pid, kill_process, kill_process_group};
use tokio::process::{Child, Command};

use crate::admin::{Admin, MetricSource};

/// The host-bridge binary `cargo build -p host-bridge` leaves (`make test`
/// builds it), or `BRIDGE_BIN`.
pub fn bridge_binary() -> PathBuf {
    std::env::var_os("BRIDGE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/host-bridge")
        })
}

/// The release build of host-bridge (`cargo build --release -p
/// host-bridge`, which `make test` and `make up` run), or
/// `BRIDGE_RELEASE_BIN`: what memory is measured on, since the goals are
/// for the shipped binary (a debug build is about 7 MiB larger at idle).
pub fn release_bridge_binary() -> PathBuf {
    std::env::var_os("BRIDGE_RELEASE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/host-bridge")
        })
}

/// A port that was free a moment ago.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(free_ports::<1>()?[0])
}

/// `N` distinct ports that were free a moment ago. All are held until all
/// are found: asked one at a time, the OS may hand out the same one twice.
///
/// They come from below the kernel's ephemeral range when there is room
/// there. A port from `bind(0)` is an ephemeral one: between the test
/// releasing it and the server binding it, any outgoing connection on the
/// machine may take it as its own local port (seen in the cluster tests,
/// whose load opens many), and the server then fails to bind.
pub fn free_ports<const N: usize>() -> anyhow::Result<[u16; N]> {
    let low = ephemeral_low().unwrap_or(0);
    let listeners = if low > 12_000 {
        let mut rng = rand::rng();
        let mut held = Vec::with_capacity(N);
        let mut tries = 0;
        while held.len() < N {
            tries += 1;
            anyhow::ensure!(tries < 10_000, "no free port below {low}");
            let port = rand::Rng::random_range(&mut rng, 10_000..low);
            if let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", port)) {
                held.push(listener);
            }
        }
        held
    } else {
        (0..N)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
            .collect::<std::io::Result<Vec<_>>>()?
    };
    let mut ports = [0; N];
    for (port, listener) in ports.iter_mut().zip(&listeners) {
        *port = listener.local_addr()?.port();
    }
    Ok(ports)
}

/// The first port of the kernel's ephemeral range (`ip_local_port_range`).
fn ephemeral_low() -> Option<u16> {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The peak resident memory (`VmHWM`) of process `pid` so far, in bytes.
pub fn peak_rss_of(pid: u32) -> anyhow::Result<u64> {
    status_kib(pid, "VmHWM:").map(|kib| kib * 1024)
}

/// The resident memory (`VmRSS`) of process `pid` now, in bytes.
pub fn rss_of(pid: u32) -> anyhow::Result<u64> {
    status_kib(pid, "VmRSS:").map(|kib| kib * 1024)
}

fn status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// A host-bridge child process.
pub struct BridgeProcess {
    child: Child,
    /// Its admin server.
    pub admin_addr: SocketAddr,
    /// Its publish API (when that role is on).
    pub publish_addr: SocketAddr,
    admin: Admin,
}

impl BridgeProcess {
    /// Spawns host-bridge with `args` on free ports, against `amqp_url`.
    pub async fn spawn(amqp_url: &str, args: &[&str]) -> anyhow::Result<Self> {
        Self::spawn_binary(&bridge_binary(), amqp_url, args).await
    }

    /// Spawns a given host-bridge binary (e.g. a release build, for benchmarks).
    pub async fn spawn_binary(
        binary: &std::path::Path,
        amqp_url: &str,
        args: &[&str],
    ) -> anyhow::Result<Self> {
        if !binary.exists() {
            bail!(
                "{} is missing: run `cargo build -p host-bridge`",
                binary.display()
            );
        }
        let [admin_port, publish_port] = free_ports()?;
        let admin_addr = SocketAddr::from(([127, 0, 0, 1], admin_port));
        let publish_addr = SocketAddr::from(([127, 0, 0, 1], publish_port));
        let child = Command::new(binary)
            .args(args)
            .env("AMQP_URL", amqp_url)
            .env("ADMIN_ADDR", admin_addr.to_string())
            .env("PUBLISH_ADDR", publish_addr.to_string())
            .env("QUEUE_POLL_INTERVAL", "200ms")
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("failed to start {}", binary.display()))?;
        Ok(Self {
            child,
            admin_addr,
            publish_addr,
            admin: Admin::new(admin_addr),
        })
    }

    /// The publish API's URL for `path`.
    pub fn publish_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.publish_addr)
    }

    /// GETs an admin path.
    pub async fn admin(&self, path: &str) -> anyhow::Result<(u16, String)> {
        self.admin.get(path).await
    }

    /// Waits until /readyz answers 200.
    pub async fn wait_ready(&self) {
        self.admin.wait_ready().await;
    }

    /// Sends SIGTERM: what Kubernetes sends on scale-down.
    pub fn sigterm(&self) -> anyhow::Result<()> {
        signal(&self.child, Signal::TERM)
    }

    /// Sends SIGKILL: a crash, or a grace period that ran out.
    pub fn sigkill(&self) -> anyhow::Result<()> {
        signal(&self.child, Signal::KILL)
    }

    /// Freezes it (SIGSTOP): a stalled sidecar.
    pub fn sigstop(&self) -> anyhow::Result<()> {
        signal(&self.child, Signal::STOP)
    }

    /// Thaws it (SIGCONT).
    pub fn sigcont(&self) -> anyhow::Result<()> {
        signal(&self.child, Signal::CONT)
    }

    /// Its peak resident memory so far (`VmHWM`), in bytes.
    pub fn peak_rss(&self) -> anyhow::Result<u64> {
        peak_rss_of(self.child.id().context("the process has exited")?)
    }

    /// Its resident memory now (`VmRSS`), in bytes.
    pub fn rss(&self) -> anyhow::Result<u64> {
        rss_of(self.child.id().context("the process has exited")?)
    }

    /// Its process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Waits for the process to exit, at most `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> anyhow::Result<ExitStatus> {
        tokio::time::timeout(limit, self.child.wait())
            .await
            .context("the bridge did not exit in time")?
            .context("waiting for the bridge")
    }
}

impl MetricSource for BridgeProcess {
    /// Read from its /metrics (0 when it can't be read).
    async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let text = self
            .admin
            .get("/metrics")
            .await
            .map(|(_, t)| t)
            .unwrap_or_default();
        crate::metric_value(&text, name, labels)
    }
}

/// Sends `signal` to a child process that is still running.
pub fn signal(child: &Child, signal: Signal) -> anyhow::Result<()> {
    let pid = child.id().context("the process has already exited")?;
    kill_process(pid_of(pid)?, signal).with_context(|| format!("kill({pid}, {signal:?}) failed"))
}

/// Sends `signal` to the process group led by `pid` (a child started in
/// its own group or session).
pub fn signal_group(pid: u32, signal: Signal) -> anyhow::Result<()> {
    kill_process_group(pid_of(pid)?, signal)
        .with_context(|| format!("kill(-{pid}, {signal:?}) failed"))
}

fn pid_of(pid: u32) -> anyhow::Result<Pid> {
    i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .with_context(|| format!("{pid} is not a process id"))
}
