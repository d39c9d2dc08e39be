//! `scalectl load`: fires `/generate` at a target, at a fixed rate or a
//! fixed concurrency, for a count or a duration, and summarizes what came
//! back. Accepted ids can be written out, so that a later check can prove
//! every one was processed.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use indicatif::ProgressBar;
use tokio::sync::{Mutex, Semaphore};

/// How to make request `n` of a load (from 0): `scalectl load` GETs its
/// URL; bench POSTs jobs to the publish API as well.
pub type MakeRequest =
    Arc<dyn Fn(&reqwest::Client, usize) -> reqwest::RequestBuilder + Send + Sync>;

/// How much load, how fast.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// The `/generate` URL.
    pub url: String,
    /// Requests per second; `None` runs a closed loop at `concurrency`.
    pub rate: Option<f64>,
    /// Requests in flight at most.
    pub concurrency: usize,
    /// Stop after this many requests.
    pub count: Option<u64>,
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// Per-request timeout.
    pub timeout: Duration,
}

/// Parses `20/s`, `600/m` or a bare number (per second).
pub fn parse_rate(text: &str) -> anyhow::Result<f64> {
    let (number, unit) = text.split_once('/').unwrap_or((text, "s"));
    let n: f64 = number
        .trim()
        .parse()
        .with_context(|| format!("not a rate: {text:?} (try 20/s)"))?;
    let per_second = match unit.trim() {
        "s" | "sec" => n,
        "m" | "min" => n / 60.0,
        other => bail!("unknown rate unit {other:?} (use /s or /m)"),
    };
    if !(per_second > 0.0 && per_second.is_finite()) {
        bail!("the rate must be above zero");
    }
    Ok(per_second)
}

/// The `q` quantile (0..=1) of sorted samples, nearest rank; zero when
/// there are none. The one owner of this rule: bench reports with it too.
pub fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// What the load got back.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    /// 202s.
    pub accepted: u64,
    /// 503s (the broker or the bridge could not take it; retry later).
    pub rejected: u64,
    /// Other statuses and transport errors.
    pub errors: u64,
    /// Latencies of every answered request, sorted.
    pub latencies: Vec<Duration>,
    /// Wall time.
    pub elapsed: Duration,
    /// The accepted job ids.
    pub ids: Vec<String>,
}

impl Summary {
    /// A latency quantile (nearest rank).
    pub fn quantile(&self, q: f64) -> Duration {
        quantile(&self.latencies, q)
    }

    /// Requests answered per second.
    pub fn achieved_rate(&self) -> f64 {
        (self.accepted + self.rejected + self.errors) as f64
            / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }

    /// The closing summary, for a terminal.
    pub fn render(&self) -> String {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        format!(
            "accepted {} | rejected (503) {} | errors {}\nlatency ms: p50 {:.1} p90 {:.1} p99 {:.1} max {:.1}\nachieved {:.1} req/s over {:.1} s",
            self.accepted,
            self.rejected,
            self.errors,
            ms(self.quantile(0.5)),
            ms(self.quantile(0.9)),
            ms(self.quantile(0.99)),
            ms(self.latencies.last().copied().unwrap_or_default()),
            self.achieved_rate(),
            self.elapsed.as_secs_f64()
        )
    }
}

#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    rejected: AtomicU64,
    errors: AtomicU64,
}

/// Runs the load (`GET` of `options.url`) until its count or duration is
/// reached or `stop` resolves (Ctrl-C); in-flight requests are awaited
/// either way.
pub async fn run(
    options: &LoadOptions,
    progress: Option<ProgressBar>,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<Summary> {
    let url = options.url.clone();
    let get: MakeRequest = Arc::new(move |client, _| client.get(&url));
    run_requests(options, get, progress, stop).await
}

/// The same load engine with requests of the caller's making
/// (`options.url` is not used): one generator for `scalectl load` and the
/// benchmarks.
pub async fn run_requests(
    options: &LoadOptions,
    make: MakeRequest,
    progress: Option<ProgressBar>,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<Summary> {
    if options.count.is_none() && options.duration.is_none() {
        bail!("give --count or --duration: a load must be bounded");
    }
    let client = reqwest::Client::builder()
        .timeout(options.timeout)
        .tcp_nodelay(true)
        .build()?;
    let counters = Arc::new(Counters::default());
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let ids = Arc::new(Mutex::new(Vec::new()));
    let slots = Arc::new(Semaphore::new(options.concurrency.max(1)));
    let issued = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let deadline = options.duration.map(|d| started + d);
    let mut tick = options
        .rate
        .map(|r| tokio::time::interval(Duration::from_secs_f64(1.0 / r)));
    let mut tasks = tokio::task::JoinSet::new();
    let mut stop = std::pin::pin!(stop);
    loop {
        if options
            .count
            .is_some_and(|c| issued.load(Ordering::Relaxed) as u64 >= c)
            || deadline.is_some_and(|d| Instant::now() >= d)
        {
            break;
        }
        // Pace by the rate if there is one; the semaphore bounds in-flight.
        let permit = tokio::select! {
            () = &mut stop => break,
            permit = async {
                if let Some(tick) = tick.as_mut() {
                    tick.tick().await;
                }
                slots.clone().acquire_owned().await
            } => permit?,
        };
        let n = issued.fetch_add(1, Ordering::Relaxed);
        let request = make(&client, n);
        let (counters, latencies, ids, progress) = (
            counters.clone(),
            latencies.clone(),
            ids.clone(),
            progress.clone(),
        );
        tasks.spawn(async move {
            let sent = Instant::now();
            let answer = request.send().await;
            let elapsed = sent.elapsed();
            match answer {
                Ok(response) if response.status().as_u16() == 202 => {
                    counters.accepted.fetch_add(1, Ordering::Relaxed);
                    if let Ok(body) = response.json::<serde_json::Value>().await
                        && let Some(id) = body["id"].as_str()
                    {
                        ids.lock().await.push(id.to_owned());
                    }
                    latencies.lock().await.push(elapsed);
                }
                Ok(response) if response.status().as_u16() == 503 => {
                    counters.rejected.fetch_add(1, Ordering::Relaxed);
                    latencies.lock().await.push(elapsed);
                }
                Ok(_) | Err(_) => {
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            if let Some(bar) = progress {
                bar.inc(1);
                bar.set_message(format!(
                    "accepted {} rejected {} errors {}",
                    counters.accepted.load(Ordering::Relaxed),
                    counters.rejected.load(Ordering::Relaxed),
                    counters.errors.load(Ordering::Relaxed)
                ));
            }
            drop(permit);
        });
    }
    while tasks.join_next().await.is_some() {}
    let mut latencies = std::mem::take(&mut *latencies.lock().await);
    latencies.sort();
    let ids = std::mem::take(&mut *ids.lock().await);
    Ok(Summary {
        accepted: counters.accepted.load(Ordering::Relaxed),
        rejected: counters.rejected.load(Ordering::Relaxed),
        errors: counters.errors.load(Ordering::Relaxed),
        latencies,
        elapsed: started.elapsed(),
        ids,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse() {
        assert_eq!(parse_rate("20/s").unwrap(), 20.0);
        assert_eq!(parse_rate("600/m").unwrap(), 10.0);
        assert_eq!(parse_rate("5").unwrap(), 5.0);
        assert!(parse_rate("0/s").is_err());
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("3/h").is_err());
    }

    #[test]
    fn summary_quantiles() {
        let s = Summary {
            latencies: (1..=100).map(Duration::from_millis).collect(),
            accepted: 100,
            elapsed: Duration::from_secs(10),
            ..Summary::default()
        };
        assert_eq!(s.quantile(0.5), Duration::from_millis(50));
        assert_eq!(s.quantile(0.99), Duration::from_millis(99));
        assert_eq!(s.achieved_rate(), 10.0);
    }
}
