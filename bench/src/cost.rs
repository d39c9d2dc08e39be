//! Cost: the bridge's resident memory, its start-up time to ready, and the
//! Wasm worker's per-request instantiation time and memory.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use testkit::process::BridgeProcess;
use tokio::sync::oneshot;
use wasmtime::{ResourceLimiter, Store};

use crate::Options;
use crate::stats::{median_spread, quantile};

/// The bridge's resident set size.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rss {
    /// Ready, before any load, KiB.
    pub idle_kib: u64,
    /// The most seen under the publish load, KiB.
    pub peak_kib: u64,
}

/// A process's VmRSS, KiB.
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS")
}

/// Samples a process's RSS every 10 ms until stopped; keeps the peak.
pub struct Sampler {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<u64>,
}

/// Starts sampling `pid`.
pub fn sample_rss(pid: u32) -> Sampler {
    let (stop, mut stopped) = oneshot::channel();
    let task = tokio::spawn(async move {
        let mut peak = 0;
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        loop {
            tokio::select! {
                _ = &mut stopped => return peak,
                _ = tick.tick() => peak = peak.max(rss_kib(pid).unwrap_or(0)),
            }
        }
    });
    Sampler { stop, task }
}

impl Sampler {
    /// Stops and returns the peak, KiB.
    pub async fn stop(self) -> u64 {
        let _ = self.stop.send(());
        self.task.await.unwrap_or(0)
    }
}

/// The cost figures.
pub struct Cost {
    /// Bridge RSS.
    pub rss: Rss,
    /// Bridge start to /readyz 200, per start.
    pub startup: Vec<Duration>,
    /// Pre-instantiated component to ready instance, per request.
    pub instantiate: Vec<Duration>,
    /// Linear memory the worker instance reserves, bytes.
    pub wasm_memory: usize,
    /// Cranelift compile time per component (name, one figure per run):
    /// what a container start pays when its shim cannot use a precompiled
    /// artifact (a plain tar image), and what a Wasm-layer image saves.
    pub compile: Vec<(&'static str, Vec<Duration>)>,
}

impl Cost {
    /// The cost section of the report.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let ms = |d: &[Duration]| d.iter().map(|d| d.as_secs_f64() * 1e3).collect::<Vec<_>>();
        let (startup, lo, hi) = median_spread(&ms(&self.startup));
        let mut inst = self.instantiate.clone();
        inst.sort();
        let _ = writeln!(out, "| figure | value |\n|---|---:|");
        let _ = writeln!(
            out,
            "| host-bridge RSS, idle (ready, connected) | {:.1} MiB |",
            self.rss.idle_kib as f64 / 1024.0
        );
        let _ = writeln!(
            out,
            "| host-bridge RSS, peak under the publish load | {:.1} MiB |",
            self.rss.peak_kib as f64 / 1024.0
        );
        let _ = writeln!(
            out,
            "| host-bridge start to ready (`/readyz` 200) | {startup:.1} ms ({lo:.1}–{hi:.1}) |"
        );
        let _ = writeln!(
            out,
            "| Wasm worker instantiation per request, p50 / p99 | {:.0} µs / {:.0} µs |",
            quantile(&inst, 0.5).as_secs_f64() * 1e6,
            quantile(&inst, 0.99).as_secs_f64() * 1e6
        );
        let _ = writeln!(
            out,
            "| Wasm worker linear memory per instance | {:.0} KiB |",
            self.wasm_memory as f64 / 1024.0
        );
        for (name, times) in &self.compile {
            let (median, lo, hi) = median_spread(&ms(times));
            let _ = writeln!(
                out,
                "| compiling the {name} component (Cranelift, wasmtime 48, all cores) | {median:.0} ms ({lo:.0}–{hi:.0}) |"
            );
        }
        out
    }
}

/// Measures start-up and instantiation; RSS comes from the publish runs.
pub async fn measure(options: &Options, rss: Rss) -> Result<Cost> {
    let mut startup = Vec::new();
    for _ in 0..5 {
        let queue = testkit::amqp::TestQueue::on(&options.amqp_url, "bench-startup");
        let started = Instant::now();
        let bridge = BridgeProcess::spawn_binary(
            &options.bridge,
            &options.amqp_url,
            &["--roles", "publish", "--queue", &queue],
        )
        .await?;
        loop {
            if let Ok((200, _)) = bridge.admin("/readyz").await {
                break;
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(30),
                "the bridge never got ready"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        startup.push(started.elapsed());
        bridge.sigterm()?;
        // `queue` deletes its topology (.dead and .dlx too) as it drops.
    }
    let (instantiate, wasm_memory) = instantiation(300).await?;
    let mut compile = Vec::new();
    for name in ["producer", "worker"] {
        compile.push((name, compile_times(name, options.runs.max(3))?));
    }
    Ok(Cost {
        rss,
        startup,
        instantiate,
        wasm_memory,
        compile,
    })
}

/// Instantiates the worker `n` times, each in a fresh store, as a host does
/// per request; returns the times and the linear memory one instance takes.
async fn instantiation(n: usize) -> Result<(Vec<Duration>, usize)> {
    let pre = testkit::wasm::proxy_pre("worker")?;
    let mut times = Vec::with_capacity(n);
    let mut memory = 0;
    for _ in 0..n {
        let mut store = Store::new(testkit::wasm::engine(), testkit::wasm::Guest::new(&[]));
        store.limiter(|s| s as &mut dyn ResourceLimiter);
        let started = Instant::now();
        let _proxy = pre.instantiate_async(&mut store).await?;
        times.push(started.elapsed());
        memory = memory.max(store.data().memory);
    }
    Ok((times, memory))
}

/// Compiles a component from its bytes `runs` times, each with a fresh
/// engine so nothing is cached: the per-start cost of a plain tar image.
fn compile_times(name: &str, runs: usize) -> Result<Vec<Duration>> {
    let wasm = std::fs::read(testkit::wasm::wasm_path(name))?;
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let engine = wasmtime::Engine::new(&wasmtime::Config::new())?;
        let started = Instant::now();
        wasmtime::component::Component::new(&engine, &wasm)?;
        times.push(started.elapsed());
    }
    Ok(times)
}

/// Linux reports process CPU time in USER_HZ ticks, fixed at 100 per second
/// in its ABI (whatever the kernel's own HZ).
const USER_HZ: f64 = 100.0;

/// CPU time (user + system, all threads) a process has used so far, s.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold
    // spaces: state is field 3, utime 14, stime 15.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| -> Result<f64> {
        Ok(fields
            .get(i)
            .context("a short /proc stat line")?
            .parse::<f64>()?)
    };
    Ok((ticks(11)? + ticks(12)?) / USER_HZ)
}

/// The process listening on TCP `port` on this machine (the broker, for the
/// benchmarks): the owner of the listening socket's inode.
pub fn listener_pid(port: u16) -> Option<u32> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address is HEXIP:HEXPORT; state 0A is LISTEN.
            let listening = f.get(3) == Some(&"0A");
            let on_port = f
                .get(1)
                .and_then(|a| a.rsplit_once(':'))
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
                == Some(port);
            if listening && on_port {
                inodes.extend(f.get(9).map(|i| format!("socket:[{i}]")));
            }
        }
    }
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path())
                && inodes.iter().any(|i| target.as_os_str() == i.as_str())
            {
                return Some(pid);
            }
        }
    }
    None
}

/// CPU per operation, by process, over one measured run.
#[derive(Debug, Clone, Default)]
pub struct CpuMeter {
    processes: Vec<(&'static str, u32)>,
}

impl CpuMeter {
    /// Meters these processes (name, pid); those not found are left out.
    pub fn new(processes: impl IntoIterator<Item = (&'static str, Option<u32>)>) -> Self {
        Self {
            processes: processes
                .into_iter()
                .filter_map(|(name, pid)| pid.map(|p| (name, p)))
                .collect(),
        }
    }

    /// Each process's CPU so far, s.
    pub fn read(&self) -> Result<Vec<f64>> {
        self.processes
            .iter()
            .map(|(_, pid)| cpu_seconds(*pid))
            .collect()
    }

    /// Milliseconds of CPU per operation, by process, since `before`.
    pub fn per_op(&self, before: &[f64], ops: usize) -> Result<Vec<(&'static str, f64)>> {
        let after = self.read()?;
        Ok(self
            .processes
            .iter()
            .zip(before.iter().zip(after))
            .map(|((name, _), (b, a))| (*name, (a - b) * 1e3 / ops.max(1) as f64))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_uses_cpu_and_a_listener_is_found() {
        let me = std::process::id();
        let before = cpu_seconds(me).unwrap();
        let mut x = 0u64;
        let started = Instant::now();
        while started.elapsed() < Duration::from_millis(200) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        assert!(cpu_seconds(me).unwrap() - before >= 0.1, "{x}");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert_eq!(listener_pid(port), Some(me));
    }
}
