//! `scalectl load`: fires `/generate` at a target, at a fixed rate or a
//! fixed concurrency, for a count or a duration, and summarizes what came
//! back. Accepted ids can be written out, so that a later check can prove
//! every one was processed.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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

/// What the requests in flight report into, shared by their tasks.
#[derive(Default)]
struct Tallies {
    accepted: AtomicU64,
    rejected: AtomicU64,
    errors: AtomicU64,
    latencies: Mutex<Vec<Duration>>,
    ids: Mutex<Vec<String>>,
}

impl Tallies {
    /// Counts one answer: 202s (with their ids) and 503s are answers with
    /// a latency; anything else is an error.
    async fn record(&self, answer: reqwest::Result<reqwest::Response>, elapsed: Duration) {
        match answer {
            Ok(response) if response.status().as_u16() == 202 => {
                self.accepted.fetch_add(1, Ordering::Relaxed);
                if let Ok(body) = response.json::<serde_json::Value>().await
                    && let Some(id) = body["id"].as_str()
                {
                    self.ids.lock().await.push(id.to_owned());
                }
                self.latencies.lock().await.push(elapsed);
            }
            Ok(response) if response.status().as_u16() == 503 => {
                self.rejected.fetch_add(1, Ordering::Relaxed);
                self.latencies.lock().await.push(elapsed);
            }
            Ok(_) | Err(_) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn progress(&self) -> String {
        format!(
            "accepted {} rejected {} errors {}",
            self.accepted.load(Ordering::Relaxed),
            self.rejected.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed)
        )
    }

    async fn summary(&self, elapsed: Duration) -> Summary {
        let mut latencies = std::mem::take(&mut *self.latencies.lock().await);
        latencies.sort();
        Summary {
            accepted: self.accepted.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            latencies,
            elapsed,
            ids: std::mem::take(&mut *self.ids.lock().await),
        }
    }
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
    let tallies = Arc::new(Tallies::default());
    let slots = Arc::new(Semaphore::new(options.concurrency.max(1)));
    let started = Instant::now();
    let deadline = options.duration.map(|d| started + d);
    let mut tick = options
        .rate
        .map(|r| tokio::time::interval(Duration::from_secs_f64(1.0 / r)));
    let mut tasks = tokio::task::JoinSet::new();
    let mut stop = std::pin::pin!(stop);
    for n in 0.. {
        if options.count.is_some_and(|c| n >= c) || deadline.is_some_and(|d| Instant::now() >= d) {
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
        let request = make(&client, n as usize);
        let (tallies, progress) = (tallies.clone(), progress.clone());
        tasks.spawn(async move {
            let sent = Instant::now();
            let answer = request.send().await;
            tallies.record(answer, sent.elapsed()).await;
            if let Some(bar) = progress {
                bar.inc(1);
                bar.set_message(tallies.progress());
            }
            drop(permit);
        });
    }
    while tasks.join_next().await.is_some() {}
    Ok(tallies.summary(started.elapsed()).await)
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
