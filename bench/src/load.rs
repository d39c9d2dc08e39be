//! The load for the benchmarks: scalectl's load engine (the one generator
//! in the workspace), run as a closed loop at a fixed concurrency for a
//! fixed count. It is not the thing under test: reqwest with a keep-alive
//! pool, in this process.

use std::time::Duration;

use anyhow::{Result, ensure};
use scalectl::load::{LoadOptions, run_requests};

pub use scalectl::load::MakeRequest;

use crate::stats::Run;

/// Longer than any answer of a healthy run; a hang fails the run.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Sends `count` requests with `concurrency` in flight; every answer must
/// be a 202. Returns the run's latencies and wall time.
pub async fn closed_loop(count: usize, concurrency: usize, make: MakeRequest) -> Result<Run> {
    let options = LoadOptions {
        // Unused: `make` builds each request.
        url: String::new(),
        rate: None,
        concurrency,
        count: Some(count as u64),
        duration: None,
        timeout: REQUEST_TIMEOUT,
    };
    let summary = run_requests(&options, make, None, std::future::pending()).await?;
    ensure!(
        summary.rejected == 0 && summary.errors == 0,
        "{} of {count} requests were not answered 202 ({} × 503, {} other)",
        summary.rejected + summary.errors,
        summary.rejected,
        summary.errors
    );
    Ok(Run::new(count, summary.elapsed, summary.latencies))
}
