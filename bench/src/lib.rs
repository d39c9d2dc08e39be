//! The benchmark harness: the Wasm path against native, and both against the
//! broker's limit, side by side in one run on one machine.
//!
//! It owns the cases and the report. The load generator (`load`) and the raw
//! lapin client (`raw`) are separate from everything under test; the bridge
//! runs as its release binary, the components under `wasmtime serve` as
//! `make up` runs them (or, in smoke mode without wasmtime-cli, in-process).

pub mod cost;
pub mod load;
pub mod raw;
pub mod stats;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::json;
use testkit::amqp::TestQueue;
use testkit::process::BridgeProcess;

use crate::cost::CpuMeter;
use crate::load::MakeRequest;
use crate::raw::Raw;
use crate::stats::{Run, histogram_quantile, median_spread};

/// Outstanding confirms in the raw publisher.
const RAW_WINDOW: usize = 1024;

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// The broker.
    pub amqp_url: String,
    /// host-bridge's binary (release for real figures).
    pub bridge: PathBuf,
    /// wasmtime-cli, to host the components as `make up` does; `None` hosts
    /// them in-process (smoke mode only).
    pub wasmtime: Option<PathBuf>,
    /// Requests or jobs per measured run.
    pub count: usize,
    /// Measured runs per case (the median and spread are reported).
    pub runs: usize,
    /// Publish-path concurrencies.
    pub concurrency: Vec<usize>,
    /// Consume-path prefetch counts.
    pub prefetch: Vec<u16>,
}

/// A served component: a `wasmtime serve` process (with `make up`'s flags)
/// or an in-process host.
enum Served {
    Process(testkit::runtime::WasmtimeServe),
    InProcess(testkit::wasm::ServedComponent),
}

impl Served {
    fn url(&self, path: &str) -> String {
        match self {
            Served::Process(p) => p.url(path),
            Served::InProcess(c) => c.url(path),
        }
    }

    /// The runtime's process; `None` in-process (its CPU is the bench's).
    fn pid(&self) -> Option<u32> {
        match self {
            Served::Process(p) => p.pid(),
            Served::InProcess(_) => None,
        }
    }
}

async fn serve(options: &Options, name: &str, env: &[(&str, &str)]) -> Result<Served> {
    Ok(match &options.wasmtime {
        Some(wasmtime) => {
            Served::Process(testkit::runtime::WasmtimeServe::start_with(wasmtime, name, env).await?)
        }
        None => Served::InProcess(testkit::wasm::serve(name, env).await?),
    })
}

/// One row of a results table.
pub struct Row {
    /// The case.
    pub case: String,
    /// The setting (concurrency or prefetch).
    pub level: usize,
    /// Throughput per run.
    pub rates: Vec<f64>,
    /// p50 per run, ms.
    pub p50: Vec<f64>,
    /// p99 per run, ms.
    pub p99: Vec<f64>,
    /// CPU per request by process, ms, per run (publish path only).
    pub cpu: Vec<Vec<(&'static str, f64)>>,
}

impl Row {
    fn new(case: &str, level: usize) -> Self {
        Self {
            case: case.to_owned(),
            level,
            rates: vec![],
            p50: vec![],
            p99: vec![],
            cpu: vec![],
        }
    }

    fn add(&mut self, run: &Run) {
        self.rates.push(run.rate());
        self.p50.push(run.quantile(0.5).as_secs_f64() * 1e3);
        self.p99.push(run.quantile(0.99).as_secs_f64() * 1e3);
    }

    /// Median throughput.
    pub fn rate(&self) -> f64 {
        median_spread(&self.rates).0
    }

    /// The median CPU per request across runs, ms: the total over the
    /// metered processes and each one's share. `None` when not metered.
    pub fn cpu(&self) -> Option<(f64, Vec<(&'static str, f64)>)> {
        let first = self.cpu.first().filter(|parts| !parts.is_empty())?;
        let totals: Vec<f64> = self
            .cpu
            .iter()
            .map(|r| r.iter().map(|p| p.1).sum())
            .collect();
        let parts = first
            .iter()
            .enumerate()
            .map(|(i, (name, _))| {
                let of_runs: Vec<f64> = self
                    .cpu
                    .iter()
                    .filter_map(|r| r.get(i).map(|p| p.1))
                    .collect();
                (*name, median_spread(&of_runs).0)
            })
            .collect();
        Some((median_spread(&totals).0, parts))
    }
}

/// Everything measured.
pub struct Results {
    /// Publish path rows.
    pub publish: Vec<Row>,
    /// Consume path rows.
    pub consume: Vec<Row>,
    /// Cost figures.
    pub cost: cost::Cost,
}

/// Runs every case.
pub async fn run(options: &Options) -> Result<Results> {
    let (publish, rss) = publish_path(options).await?;
    let consume = consume_path(options).await?;
    let cost = cost::measure(options, rss).await?;
    Ok(Results {
        publish,
        consume,
        cost,
    })
}

/// Publish path: (a) /generate through the Wasm producer, (b) the bridge's
/// publish API, (c) raw lapin with pipelined confirms.
async fn publish_path(options: &Options) -> Result<(Vec<Row>, cost::Rss)> {
    let queue = TestQueue::on(&options.amqp_url, "bench-publish");
    let bridge = BridgeProcess::spawn_binary(
        &options.bridge,
        &options.amqp_url,
        &["--roles", "publish", "--queue", &queue],
    )
    .await?;
    bridge.wait_ready().await;
    let publish_url = bridge.publish_url("/v1/publish");
    let observe_url = bridge.publish_url("/v1/observe");
    let producer = serve(
        options,
        "producer",
        &[
            ("BRIDGE_PUBLISH_URL", &publish_url),
            ("BRIDGE_OBSERVE_URL", &observe_url),
        ],
    )
    .await?;
    // The same, without the after-answer report to /v1/observe: what the
    // producer metrics cost.
    let quiet = serve(
        options,
        "producer",
        &[
            ("BRIDGE_PUBLISH_URL", &publish_url),
            ("BRIDGE_OBSERVE_URL", "off"),
        ],
    )
    .await?;
    let pid = bridge.pid().context("bridge pid")?;
    let broker = amqp_port(&options.amqp_url).and_then(cost::listener_pid);
    let cases = PublishCases {
        generate: get(producer.url("/generate")),
        generate_quiet: get(quiet.url("/generate")),
        direct: post_job(publish_url),
        meters: [
            CpuMeter::new([
                ("wasm", producer.pid()),
                ("bridge", Some(pid)),
                ("broker", broker),
            ]),
            CpuMeter::new([
                ("wasm", quiet.pid()),
                ("bridge", Some(pid)),
                ("broker", broker),
            ]),
            CpuMeter::new([("bridge", Some(pid)), ("broker", broker)]),
        ],
        raw: Raw::connect(&options.amqp_url).await?,
        queue: queue.to_string(),
    };
    let mut rss = cost::Rss {
        idle_kib: cost::rss_kib(pid)?,
        peak_kib: 0,
    };
    let mut rows = Vec::new();
    for &concurrency in &options.concurrency {
        rows.extend(cases.measure(options, concurrency, pid, &mut rss).await?);
    }
    bridge.sigterm()?;
    Ok((rows, rss))
}

/// The broker's port in an AMQP URL (5672 when not given).
fn amqp_port(url: &str) -> Option<u16> {
    let url = reqwest::Url::parse(url).ok()?;
    Some(url.port().unwrap_or(5672))
}

/// `GET url`, for every request.
fn get(url: String) -> MakeRequest {
    Arc::new(move |c, _| c.get(&url))
}

/// A job `bench-<n>` POSTed to the bridge's publish API.
fn post_job(url: String) -> MakeRequest {
    Arc::new(move |c, n| {
        c.post(&url)
            .header("content-type", "application/json")
            .body(
                json!({ "id": format!("bench-{n}"), "created_at": "2026-01-01T00:00:00Z" })
                    .to_string(),
            )
    })
}

/// The publish path's four cases, ready to run.
struct PublishCases {
    generate: MakeRequest,
    generate_quiet: MakeRequest,
    direct: MakeRequest,
    /// CPU meters for the three HTTP cases, in their order.
    meters: [CpuMeter; 3],
    raw: Raw,
    queue: String,
}

impl PublishCases {
    /// Every case at one concurrency: a warm-up, then `options.runs`
    /// interleaved runs, sampling the bridge's RSS meanwhile.
    async fn measure(
        &self,
        options: &Options,
        concurrency: usize,
        bridge_pid: u32,
        rss: &mut cost::Rss,
    ) -> Result<[Row; 4]> {
        let mut a = Row::new(
            "(a) /generate: Wasm producer → bridge → RabbitMQ",
            concurrency,
        );
        let mut a_quiet = Row::new("(a′) the same, BRIDGE_OBSERVE_URL=off", concurrency);
        let mut b = Row::new("(b) bridge publish API → RabbitMQ", concurrency);
        let mut c = Row::new("(c) raw lapin, confirms pipelined 1024 deep", concurrency);
        let http = [&self.generate, &self.generate_quiet, &self.direct];
        // Warm-up: connections, pools, JIT caches, the queue's first segment.
        let warm = warm_up_count(options);
        for make in http {
            load::closed_loop(warm, concurrency, make.clone()).await?;
        }
        self.raw.publish(&self.queue, warm, RAW_WINDOW).await?;
        self.raw.purge(&self.queue).await?;
        for _ in 0..options.runs {
            // Interleaved, so that drift affects the three cases alike.
            let sampler = cost::sample_rss(bridge_pid);
            for ((row, make), meter) in [&mut a, &mut a_quiet, &mut b]
                .into_iter()
                .zip(http)
                .zip(&self.meters)
            {
                let before = meter.read()?;
                row.add(&load::closed_loop(options.count, concurrency, make.clone()).await?);
                row.cpu.push(meter.per_op(&before, options.count)?);
            }
            rss.peak_kib = rss.peak_kib.max(sampler.stop().await);
            // The broker's limit: as deep a pipeline as a good client keeps,
            // whatever the HTTP concurrency (re-measured per block, so its
            // spread shows the machine's drift).
            c.add(
                &self
                    .raw
                    .publish(&self.queue, options.count, RAW_WINDOW)
                    .await?,
            );
            self.raw.purge(&self.queue).await?;
        }
        Ok([a, a_quiet, b, c])
    }
}

/// Requests or jobs in a warm-up: a fifth of a run, at least 10.
fn warm_up_count(options: &Options) -> usize {
    (options.count / 5).max(10)
}

/// The cumulative buckets of `host_bridge_job_duration_seconds` from a scrape.
fn job_buckets(text: &str) -> Vec<(f64, f64)> {
    testkit::samples(text, "host_bridge_job_duration_seconds_bucket")
        .filter_map(|(labels, count)| {
            let bound = match labels.get("le")?.as_str() {
                "+Inf" => f64::INFINITY,
                le => le.parse().ok()?,
            };
            Some((bound, count))
        })
        .collect()
}

/// Consume path, `WORK_DURATION_MS=0`: the bridge pushing to the Wasm worker,
/// to a trivial native handler, and raw lapin consume + ack.
async fn consume_path(options: &Options) -> Result<Vec<Row>> {
    let raw = Raw::connect(&options.amqp_url).await?;
    let wasm_worker = serve(options, "worker", &[("WORK_DURATION_MS", "0")]).await?;
    let native = native_worker().await?;
    let mut rows = Vec::new();
    for &prefetch in &options.prefetch {
        for (case, url) in [
            ("bridge → Wasm worker", wasm_worker.url("/work")),
            ("bridge → native handler", native.clone()),
        ] {
            rows.push(bridge_consume(options, &raw, case, &url, prefetch).await?);
        }
        rows.push(raw_consume(options, &raw, prefetch).await?);
    }
    Ok(rows)
}

/// One consume-path case: a consume bridge at `prefetch` pushing to `url`.
async fn bridge_consume(
    options: &Options,
    raw: &Raw,
    case: &str,
    url: &str,
    prefetch: u16,
) -> Result<Row> {
    let queue = TestQueue::on(&options.amqp_url, "bench-consume");
    let p = prefetch.to_string();
    let bridge = BridgeProcess::spawn_binary(
        &options.bridge,
        &options.amqp_url,
        &[
            "--roles",
            "consume",
            "--queue",
            &queue,
            "--worker-url",
            url,
            "--concurrency",
            &p,
        ],
    )
    .await?;
    bridge.wait_ready().await;
    let mut row = Row::new(case, prefetch.into());
    drain_through_bridge(raw, &bridge, &queue, warm_up_count(options)).await?;
    for _ in 0..options.runs {
        let (elapsed, delta) = drain_through_bridge(raw, &bridge, &queue, options.count).await?;
        row.rates.push(options.count as f64 / elapsed.as_secs_f64());
        row.p50.push(histogram_quantile(0.5, &delta) * 1e3);
        row.p99.push(histogram_quantile(0.99, &delta) * 1e3);
    }
    bridge.sigterm()?;
    Ok(row)
}

/// The broker's limit: raw lapin consume + ack at `prefetch`, on a queue
/// declared as the bridge declares it.
async fn raw_consume(options: &Options, raw: &Raw, prefetch: u16) -> Result<Row> {
    let queue = TestQueue::on(&options.amqp_url, "bench-consume-raw");
    let declarer = BridgeProcess::spawn_binary(
        &options.bridge,
        &options.amqp_url,
        &["--roles", "publish", "--queue", &queue],
    )
    .await?;
    declarer.wait_ready().await;
    let mut row = Row::new("raw lapin consume + ack", prefetch.into());
    // Run 0 is the warm-up.
    for n in 0..=options.runs {
        let count = if n == 0 {
            warm_up_count(options)
        } else {
            options.count
        };
        let consumer = {
            let (url, queue) = (options.amqp_url.clone(), queue.to_string());
            tokio::spawn(async move {
                Raw::connect(&url)
                    .await?
                    .consume(&queue, count, prefetch)
                    .await
            })
        };
        raw.publish(&queue, count, 256).await?;
        let run = consumer.await??;
        if n > 0 {
            row.add(&run);
        }
    }
    declarer.sigterm()?;
    Ok(row)
}

/// Publishes `count` jobs and waits until the bridge has acked them all.
/// Returns the wall time and the job-duration histogram's change.
async fn drain_through_bridge(
    raw: &Raw,
    bridge: &BridgeProcess,
    queue: &str,
    count: usize,
) -> Result<(Duration, Vec<(f64, f64)>)> {
    let before = bridge.admin("/metrics").await?.1;
    let acked_before =
        testkit::metric_value(&before, "host_bridge_jobs_total", &[("outcome", "acked")]);
    let started = Instant::now();
    raw.publish(queue, count, 256).await?;
    let target = acked_before + count as f64;
    let after = loop {
        let text = bridge.admin("/metrics").await?.1;
        let acked = testkit::metric_value(&text, "host_bridge_jobs_total", &[("outcome", "acked")]);
        if acked >= target {
            break text;
        }
        if testkit::metric_value(&text, "host_bridge_jobs_total", &[("outcome", "requeued")]) > 0.0
        {
            bail!("the worker failed jobs during the benchmark");
        }
        if started.elapsed() > Duration::from_secs(300) {
            bail!("{} of {count} jobs acked after 300 s", acked - acked_before);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let elapsed = started.elapsed();
    let (b, a) = (job_buckets(&before), job_buckets(&after));
    let delta = a
        .iter()
        .zip(b.iter().chain(std::iter::repeat(&(0.0, 0.0))))
        .map(|(x, y)| (x.0, x.1 - y.1))
        .collect();
    Ok((elapsed, delta))
}

/// A trivial native HTTP worker: 200 for every POST.
async fn native_worker() -> Result<String> {
    let app = axum::Router::new().route(
        "/work",
        axum::routing::post(|| async { axum::Json(json!({ "ok": true })) }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(format!("http://{addr}/work"))
}

/// The report as Markdown.
pub fn report(results: &Results, options: &Options, machine: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "## Machine\n\n{machine}\n");
    let _ = writeln!(
        out,
        "## Method\n\n{} requests or jobs per run, {} measured runs per case after a warm-up of a fifth of that; \
         the tables give the median and, in brackets, the spread (min–max) across runs. \
         Publish-path latencies are per request (client send to answer); consume-path p50/p99 are the bridge's \
         `host_bridge_job_duration_seconds` (delivery → worker answer → ack) over the run, interpolated within \
         histogram buckets as `histogram_quantile` does; for raw lapin, the gap between consecutive deliveries. \
         CPU ms/req is user + system time over the run, from /proc, of the `wasmtime serve` process, the bridge and \
         the broker (the load generator, in this process, is not counted), divided by the requests.\n",
        options.count, options.runs
    );
    out += &table("1. Publish path", "req/s", "concurrency", &results.publish);
    out += &publish_ratios(&results.publish, &options.concurrency);
    out += &table(
        "2. Consume path (WORK_DURATION_MS=0)",
        "jobs/s",
        "prefetch",
        &results.consume,
    );
    out += &consume_ratios(&results.consume, &options.prefetch);
    let _ = writeln!(out, "## 3. Cost\n\n{}", results.cost.markdown());
    let _ = writeln!(out, "## 4. Scaling arithmetic\n\n{}", scaling());
    out
}

/// A results table: per row, the median rate with its spread, p50 and p99.
fn table(title: &str, unit: &str, level: &str, rows: &[Row]) -> String {
    let mut out = format!(
        "## {title}\n\n| case | {level} | {unit} | p50 ms | p99 ms | CPU ms/req |\n|---|---:|---:|---:|---:|---|\n"
    );
    for r in rows {
        let (rate, lo, hi) = median_spread(&r.rates);
        let (p50, ..) = median_spread(&r.p50);
        let (p99, p99lo, p99hi) = median_spread(&r.p99);
        let cpu = r.cpu().map_or_else(
            || "–".to_owned(),
            |(total, parts)| {
                let parts: Vec<String> =
                    parts.iter().map(|(n, ms)| format!("{n} {ms:.3}")).collect();
                format!("{total:.3} ({})", parts.join(", "))
            },
        );
        let _ = writeln!(
            out,
            "| {} | {} | {rate:.0} ({lo:.0}–{hi:.0}) | {p50:.2} | {p99:.2} ({p99lo:.2}–{p99hi:.2}) | {cpu} |",
            r.case, r.level
        );
    }
    out.push('\n');
    out
}

/// The median rate of the row at `level` whose case starts with `prefix`.
fn median_rate(rows: &[Row], level: usize, prefix: &str) -> f64 {
    rows.iter()
        .find(|r| r.level == level && r.case.starts_with(prefix))
        .map(Row::rate)
        .unwrap_or(0.0)
}

/// The publish path's cases against the broker's limit and each other.
fn publish_ratios(rows: &[Row], concurrencies: &[usize]) -> String {
    let mut out = String::from("Ratios of medians:\n\n");
    for &c in concurrencies {
        let rate = |prefix| median_rate(rows, c, prefix);
        let (a, a_quiet, b, raw) = (rate("(a)"), rate("(a′)"), rate("(b)"), rate("(c)"));
        let _ = writeln!(
            out,
            "- concurrency {c}: a/c = {:.0} %, a′/c = {:.0} %, b/c = {:.0} %, a/b = {:.0} %",
            100.0 * a / raw,
            100.0 * a_quiet / raw,
            100.0 * b / raw,
            100.0 * a / b
        );
    }
    out.push('\n');
    out
}

/// The consume path's cases against the broker's limit and each other.
fn consume_ratios(rows: &[Row], prefetches: &[u16]) -> String {
    let mut out = String::from("Ratios of medians:\n\n");
    for &p in prefetches {
        let rate = |prefix| median_rate(rows, p.into(), prefix);
        let (wasm, native, raw) = (rate("bridge → Wasm"), rate("bridge → native"), rate("raw"));
        let _ = writeln!(
            out,
            "- prefetch {p}: Wasm/raw = {:.0} %, native/raw = {:.0} %, Wasm/native = {:.0} %",
            100.0 * wasm / raw,
            100.0 * native / raw,
            100.0 * wasm / native
        );
    }
    out.push('\n');
    out
}

/// What `scalectl plan` predicts for a 300-job burst on the repo's HPA.
fn scaling() -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/hpa.yaml");
    let spec = match scalectl::read_hpa(&path)
        .and_then(|h| scalectl::hpa::Spec::from_hpa(&h).map_err(anyhow::Error::from))
    {
        Ok(spec) => spec,
        Err(e) => return format!("scalectl plan could not read {}: {e}", path.display()),
    };
    let scenario = scalectl::plan::Scenario {
        burst: 300,
        ..Default::default()
    };
    let plan = scalectl::plan::plan(&spec, &scenario);
    let spread = scalectl::plan::over_phases(&spec, &scenario, 5).map_or_else(
        || " No phase of the clocks drained it.".to_owned(),
        |s| {
            format!(
                " Over {} phases of the stats, scrape and sync clocks the drain takes {:.0} s at best, \
                 {:.0} s at the median and {:.0} s at worst (`scalectl plan --phase {}`).",
                s.runs, s.best.0, s.median, s.worst.0, s.worst.1
            )
        },
    );
    format!(
        "`scalectl plan` on `manifests/hpa.yaml`, a burst of 300 jobs of {} s, pods ready {} s after scale-up, \
         RabbitMQ stats every {} s, a {} s scrape: peak {} replicas, first scale-up {} s after the burst, \
         drained in {} s, against a physical lower bound of ceil(300 / {}) x {} s = {} s.{spread}\n",
        scenario.service_time,
        scenario.pod_start,
        scenario.stats_interval,
        scenario.scrape_interval,
        plan.peak_replicas,
        plan.first_scale_up
            .map_or("never".into(), |t| format!("{t:.0}")),
        plan.drain_time
            .map_or("never".into(), |t| format!("{t:.0}")),
        spec.max,
        scenario.service_time,
        plan.lower_bound
    )
}
