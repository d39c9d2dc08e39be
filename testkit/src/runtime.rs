//! The components under the real `wasmtime serve` (wasmtime-cli), run the
//! way `scripts/up.sh` runs them when spin is not on PATH: the local
//! runtime, not the test's own wasmtime host ([`crate::wasm`]).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

use crate::process::free_port;

/// The flags `scripts/up.sh` gives `wasmtime serve`, besides `--addr` and
/// `--env` (a test in `spin_manifest.rs` keeps the two in step); up.sh says
/// why each is there.
pub const SERVE_FLAGS: &[&str] = &[
    "-Scli",
    "-O",
    "pooling-allocator=n",
    "--max-concurrent-requests",
    "256",
    "--max-concurrent-connections",
    "1024",
    "--max-instance-reuse-count",
    "128",
];

/// wasmtime-cli: `WASMTIME` (which `make test` sets to the one `make
/// wasmtime` installed), else the one on PATH.
pub fn wasmtime_binary() -> PathBuf {
    std::env::var_os("WASMTIME").map_or_else(|| "wasmtime".into(), PathBuf::from)
}

/// A `wasmtime serve` process serving one component.
pub struct WasmtimeServe {
    child: Child,
    port: u16,
}

impl WasmtimeServe {
    /// Serves the built component `name` (`producer` or `worker`) with
    /// `env`, on a free port, and waits until it listens.
    pub async fn start(name: &str, env: &[(&str, &str)]) -> anyhow::Result<Self> {
        Self::start_with(&wasmtime_binary(), name, env).await
    }

    /// The same, with a given wasmtime-cli binary.
    pub async fn start_with(
        binary: &std::path::Path,
        name: &str,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        Self::start_on(binary, free_port()?, name, env).await
    }

    /// The producer on `port`, publishing through (and reporting its
    /// answers to) the bridge whose publish API is at `publish`, as the
    /// producer pod wires it; `extra` adds settings.
    pub async fn producer_on(
        port: u16,
        publish: std::net::SocketAddr,
        extra: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let publish_url = format!("http://{publish}/v1/publish");
        let observe_url = format!("http://{publish}/v1/observe");
        let mut env = vec![
            ("BRIDGE_PUBLISH_URL", publish_url.as_str()),
            ("BRIDGE_OBSERVE_URL", observe_url.as_str()),
        ];
        env.extend_from_slice(extra);
        Self::start_on(&wasmtime_binary(), port, "producer", &env).await
    }

    /// The same, on a given port: for a bridge's ingress that must know
    /// where to forward before the component starts.
    pub async fn start_on(
        binary: &std::path::Path,
        port: u16,
        name: &str,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let mut command = Command::new(binary);
        command
            .arg("serve")
            .args(SERVE_FLAGS)
            .args(["--addr", &format!("127.0.0.1:{port}")]);
        for (k, v) in env {
            command.arg("--env").arg(format!("{k}={v}"));
        }
        let mut child = command
            .arg(crate::wasm::wasm_path(name))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| {
                format!(
                    "failed to run {} (make wasmtime installs it)",
                    binary.display()
                )
            })?;
        let listening = async {
            crate::wait_for_port("wasmtime serve to listen", port, Duration::from_secs(60)).await
        };
        tokio::select! {
            () = listening => Ok(Self { child, port }),
            exited = child.wait() => bail!("wasmtime serve exited at start: {exited:?}"),
        }
    }

    /// The `wasmtime serve` process's id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The URL of `path` on it.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Sends it `signal` (SIGSTOP: a frozen runtime; SIGKILL: a crash).
    pub fn signal(&self, signal: crate::process::Signal) -> anyhow::Result<()> {
        crate::process::signal(&self.child, signal)
    }

    /// Its peak resident memory so far (`VmHWM`), in bytes.
    pub fn peak_rss(&self) -> anyhow::Result<u64> {
        let pid = self.child.id().context("wasmtime serve has exited")?;
        crate::process::peak_rss_of(pid)
    }
}
