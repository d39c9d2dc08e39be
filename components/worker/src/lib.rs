//! The worker component: does one job's work per `POST`.
//!
//! The work is simulated: it waits `WORK_DURATION_MS` on a WASI clock, which
//! parks the instance without burning CPU, as real I/O-bound jobs would. The
//! worker owns only the job's work and its answer; delivery, retries and
//! acknowledgements belong to host-bridge, which maps this component's status
//! codes to ack (2xx), dead-letter (4xx) or requeue (5xx).

use std::time::{Duration, Instant};

use job::{ErrorBody, Job, WorkResult};
use spin_sdk::http::{IntoResponse, Method, Request, Response};
use spin_sdk::http_component;

/// How long one job's simulated work takes. Set in spin.toml
/// `[component.worker] environment`, or with `--env` under `wasmtime serve`.
const WORK_DURATION_ENV: &str = "WORK_DURATION_MS";
/// The default: about 5 s a job, as in the seed's worker.
const DEFAULT_WORK_DURATION_MS: u64 = 5_000;

#[http_component]
fn handle(req: Request) -> impl IntoResponse {
    if *req.method() != Method::Post {
        return error(405, "method_not_allowed", "POST one job as JSON")
            .header("allow", "POST")
            .build();
    }
    // The bridge sends at most job::MAX_JOB_BYTES; the check guards direct callers.
    if let Err(e) = job::check_size(req.body().len(), job::MAX_JOB_BYTES) {
        return error(e.status(), e.code(), e.to_string()).build();
    }
    // A job that can't be parsed never will be: answer 4xx so the bridge
    // dead-letters it instead of retrying it forever.
    let job = match Job::from_body(req.body()) {
        Ok(job) => job,
        Err(e) => return error(e.status(), e.code(), e.to_string()).build(),
    };
    let duration = match work_duration() {
        Ok(duration) => duration,
        // A bad setting is this worker's fault, not the job's: 5xx requeues.
        Err(message) => return error(500, "bad_config", message).build(),
    };
    // The trace this job belongs to, for the log line: only a well-formed
    // traceparent, so that a header can't write anything else into the log.
    let trace = req
        .header(job::TRACEPARENT_HEADER)
        .and_then(|v| v.as_str())
        .filter(|v| job::is_traceparent(v))
        .map(|v| format!(" (traceparent {v})"))
        .unwrap_or_default();
    let started = Instant::now();
    std::thread::sleep(duration);
    let result = WorkResult {
        id: job.id,
        worked_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    };
    eprintln!(
        "worker: finished job {} in {} ms{trace}",
        result.id, result.worked_ms
    );
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&result).unwrap_or_default())
        .build()
}

/// Reads `WORK_DURATION_MS`, defaulting when unset.
fn work_duration() -> Result<Duration, String> {
    match std::env::var(WORK_DURATION_ENV) {
        Err(_) => Ok(Duration::from_millis(DEFAULT_WORK_DURATION_MS)),
        Ok(v) => v.trim().parse().map(Duration::from_millis).map_err(|_| {
            format!("{WORK_DURATION_ENV} must be a whole number of milliseconds, got {v:?}")
        }),
    }
}

fn error(status: u16, code: &str, message: impl Into<String>) -> spin_sdk::http::ResponseBuilder {
    let mut builder = Response::builder();
    builder
        .status(status)
        .header("content-type", "application/json")
        .body(ErrorBody::new(code, message).to_json());
    builder
}
