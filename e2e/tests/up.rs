//! The local runner (`scripts/up.sh`, what `make up` runs) leaves nothing
//! behind: not after one Ctrl-C, not after two in quick succession, not
//! after it is SIGKILLed itself; and it refuses to start on a taken port,
//! naming who holds it. The real script, the real bridge, the real
//! `wasmtime serve` and RabbitMQ, each run on its own free ports and queue.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result};
use testkit::amqp::{Inspector, TestQueue, amqp_url, unique_queue};
use testkit::process::{Signal, bridge_binary, free_ports};
use tokio::process::{Child, Command};

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// A running `scripts/up.sh`, in its own process group (as a terminal
/// would run it), and the ports it was given.
struct Runner {
    child: Child,
    ports: [u16; 5],
    queue: TestQueue,
}

impl Runner {
    /// Spawns it; each job takes the worker `work_ms`.
    fn spawn(work_ms: u64) -> Result<Self> {
        let ports = free_ports::<5>()?;
        let queue = unique_queue("up");
        let addr = |p: u16| format!("127.0.0.1:{p}");
        let child = Command::new("bash")
            .arg(format!("{ROOT}/scripts/up.sh"))
            .env("AMQP_URL", amqp_url())
            .env("HTTP_ADDR", addr(ports[0]))
            .env("WORKER_ADDR", addr(ports[1]))
            .env("PUBLISH_ADDR", addr(ports[2]))
            .env("ADMIN_ADDR", addr(ports[3]))
            .env("PRODUCER_ADDR", addr(ports[4]))
            .env("QUEUE", &queue)
            .env("WORK_DURATION_MS", work_ms.to_string())
            .env("BRIDGE", bridge_binary())
            .env("WASMTIME", testkit::runtime::wasmtime_binary())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .context("failed to run scripts/up.sh")?;
        Ok(Self {
            child,
            ports,
            queue,
        })
    }

    /// Starts it and waits until all five ports listen.
    async fn start(work_ms: u64) -> Result<(Self, Vec<u32>)> {
        let runner = Self::spawn(work_ms)?;
        for port in runner.ports {
            testkit::wait_for_port("up.sh's parts to listen", port, Duration::from_secs(60)).await;
        }
        let pid = runner.child.id().context("up.sh exited")?;
        let parts = children_of(pid);
        assert_eq!(
            parts.len(),
            3,
            "the bridge and two wasmtime serve: {parts:?}"
        );
        Ok((runner, parts))
    }

    /// Publishes one job through `/generate` and waits until the worker is
    /// on it (the bridge counts it in flight).
    async fn job_in_flight(&self) -> Result<()> {
        let admin = testkit::admin::Admin::new(([127, 0, 0, 1], self.ports[3]).into());
        admin.wait_ready().await;
        let url = format!("http://127.0.0.1:{}/generate", self.ports[0]);
        let status = reqwest::get(&url).await?.status();
        anyhow::ensure!(status == 202, "/generate answered {status}");
        testkit::eventually(
            "the job to be in flight",
            Duration::from_secs(20),
            || async {
                let (_, text) = admin.get("/metrics").await.ok()?;
                (testkit::metric_value(&text, "host_bridge_jobs_in_flight", &[]) == 1.0)
                    .then_some(())
            },
        )
        .await;
        Ok(())
    }

    fn signal_group(&self, signal: Signal) -> Result<()> {
        let pid = self.child.id().context("up.sh exited")?;
        testkit::process::signal_group(pid, signal)
    }

    /// Waits until none of `parts` is alive and no port of the stack
    /// accepts a connection.
    async fn assert_nothing_left(&self, parts: &[u32], case: &str) {
        let started = std::time::Instant::now();
        testkit::eventually(
            &format!("{case}: every part gone and every port free"),
            Duration::from_secs(15),
            || async {
                if parts.iter().any(|p| alive(*p)) {
                    return None;
                }
                for port in self.ports {
                    if tokio::net::TcpStream::connect(("127.0.0.1", port))
                        .await
                        .is_ok()
                    {
                        return None;
                    }
                }
                Some(())
            },
        )
        .await;
        println!(
            "{case}: the stack was gone {:?} after the signal",
            started.elapsed()
        );
    }
}

/// The processes whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    let mut children = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces, so split after ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            children.push(child);
        }
    }
    children
}

/// Whether `pid` is a live process (a zombie is not).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next().map(str::to_owned))
        })
        .is_some_and(|state| state != "Z" && state != "X")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_ctrl_cs_in_quick_succession_stop_everything_and_lose_nothing() -> Result<()> {
    // A 30 s job keeps the first, ordered stop busy draining it.
    let (mut runner, parts) = Runner::start(30_000).await?;
    runner.job_in_flight().await?;
    runner.signal_group(Signal::INT)?;
    // The impatient user's second Ctrl-C, while the first stop is under way.
    tokio::time::sleep(Duration::from_millis(300)).await;
    runner.signal_group(Signal::INT)?;
    runner.assert_nothing_left(&parts, "two Ctrl-Cs").await;
    let status = tokio::time::timeout(Duration::from_secs(10), runner.child.wait()).await??;
    println!("two Ctrl-Cs: up.sh exited with {status}");
    assert_eq!(
        status.code(),
        Some(130),
        "the second Ctrl-C cut the drain short"
    );
    // The job cut short went back to the queue: nothing is lost.
    let inspector = Inspector::connect().await?;
    let ready = testkit::eventually(
        "the job back in the queue",
        Duration::from_secs(10),
        || async {
            inspector
                .ready(&runner.queue)
                .await
                .ok()
                .filter(|n| *n == 1)
        },
    )
    .await;
    println!("two Ctrl-Cs: {ready} job back in the queue");
    inspector.delete_topology(&runner.queue).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_ctrl_c_finishes_the_job_in_flight_and_exits_zero() -> Result<()> {
    let (mut runner, parts) = Runner::start(1_000).await?;
    runner.job_in_flight().await?;
    runner.signal_group(Signal::INT)?;
    runner.assert_nothing_left(&parts, "one Ctrl-C").await;
    let status = tokio::time::timeout(Duration::from_secs(30), runner.child.wait()).await??;
    assert!(status.success(), "a requested stop exits 0: {status}");
    let inspector = Inspector::connect().await?;
    assert_eq!(
        inspector.ready(&runner.queue).await?,
        0,
        "the job was done, not requeued"
    );
    inspector.delete_topology(&runner.queue).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runner_sigkilled_leaves_no_part_behind() -> Result<()> {
    let (mut runner, parts) = Runner::start(1_000).await?;
    // The runner alone, not its group: as when it crashes or is killed.
    runner.child.start_kill()?;
    runner.child.wait().await?;
    runner.assert_nothing_left(&parts, "runner SIGKILLed").await;
    Inspector::connect()
        .await?
        .delete_topology(&runner.queue)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_port_is_named_with_its_holder_before_anything_starts() -> Result<()> {
    let [port] = free_ports::<1>()?;
    let holder = std::net::TcpListener::bind(("127.0.0.1", port))?;
    let output = Command::new("bash")
        .arg(format!("{ROOT}/scripts/up.sh"))
        .env("AMQP_URL", amqp_url())
        .env("HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("BRIDGE", bridge_binary())
        .env("WASMTIME", testkit::runtime::wasmtime_binary())
        .stdin(Stdio::null())
        .output()
        .await?;
    drop(holder);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!(
        "taken port: exit {:?}, said {stderr:?}",
        output.status.code()
    );
    assert_eq!(output.status.code(), Some(1));
    let me = std::process::id();
    assert!(
        stderr.contains(&format!("port {port} is taken by"))
            && stderr.contains(&format!("pid {me}")),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    Ok(())
}
