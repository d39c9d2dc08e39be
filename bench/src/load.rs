//! The load generator: a closed loop of HTTP requests at a fixed concurrency
//! for a fixed count. It is not the thing under test: reqwest with a keep-
//! alive pool, in this process.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::stats::Run;

/// How to make request `n`.
pub type MakeRequest =
    Arc<dyn Fn(&reqwest::Client, usize) -> reqwest::RequestBuilder + Send + Sync>;

/// Sends `count` requests with `concurrency` in flight; every answer must be
/// `expect`. Returns the run's latencies and wall time.
pub async fn closed_loop(
    count: usize,
    concurrency: usize,
    expect: u16,
    make: MakeRequest,
) -> Result<Run> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .tcp_nodelay(true)
        .build()?;
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, next, make) = (client.clone(), next.clone(), make.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= count {
                    return Ok::<_, anyhow::Error>(latencies);
                }
                let sent = Instant::now();
                let response = make(&client, n).send().await?;
                let status = response.status().as_u16();
                let _ = response.bytes().await?;
                if status != expect {
                    bail!("request {n} answered {status}, expected {expect}");
                }
                latencies.push(sent.elapsed());
            }
        }));
    }
    let mut latencies: Vec<Duration> = Vec::with_capacity(count);
    for task in tasks {
        latencies.extend(task.await??);
    }
    Ok(Run::new(count, started.elapsed(), latencies))
}
