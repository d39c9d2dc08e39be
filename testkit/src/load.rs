//! Load that spans a fault: paced publishes through a bridge's publish
//! API, each answer recorded with when it was sent and answered, so that a
//! test can count what was accepted and how long nothing was.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::task::JoinHandle;

use crate::rig::job;

/// What one caller was told.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The job's id.
    pub id: String,
    /// The HTTP status.
    pub status: u16,
    /// The JSON error code (empty for a 202).
    pub code: String,
    /// When the request was sent.
    pub sent: Instant,
    /// When its answer had arrived, body included.
    pub answered: Instant,
}

/// Publishes from one client, one job (id `{prefix}-{n}`) every `every`,
/// until `stop` is set. Any answer but 202, 503 or 504, a non-JSON body,
/// or no answer within 10 s fails the test.
pub fn paced(
    url: String,
    prefix: String,
    every: Duration,
    stop: Arc<AtomicBool>,
) -> JoinHandle<Vec<Answer>> {
    tokio::spawn(async move {
        let http = reqwest::Client::new();
        let mut answers = Vec::new();
        let mut pace = tokio::time::interval(every);
        for n in 0.. {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            pace.tick().await;
            let id = format!("{prefix}-{n}");
            let sent = Instant::now();
            let response = http
                .post(&url)
                .header("content-type", "application/json")
                .timeout(Duration::from_secs(10))
                .body(job(&id, json!(null)))
                .send()
                .await
                .unwrap_or_else(|e| panic!("{id}: no answer: {e}"));
            let status = response.status().as_u16();
            assert!(
                matches!(status, 202 | 503 | 504),
                "{id}: unexpected answer {status}"
            );
            let body: serde_json::Value = response
                .json()
                .await
                .unwrap_or_else(|e| panic!("{id}: {status} with a non-JSON body: {e}"));
            answers.push(Answer {
                id,
                status,
                code: body["error"].as_str().unwrap_or("").to_owned(),
                sent,
                answered: Instant::now(),
            });
        }
        answers
    })
}
