//! A stand-in worker for faults that are the worker's: it answers each job
//! as the job's payload scripts it, and reports every push it received.
//!
//! Payload keys, all optional:
//! - `answers`: statuses, one per delivery of that job, the last repeating
//!   (default `[200]`);
//! - `delays_ms`: waits before answering, one per delivery, the last
//!   repeating, to play a slow or hanging worker (default no wait);
//! - `fail_percent`: answer 503 to about this share of deliveries, chosen by
//!   a hash of (id, attempt) so that a run is reproducible.
//!
//! An outage ([`StandIn::set_outage`]) overrides every script: the whole
//! worker answers one status, as a bad rollout would.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use tokio::sync::mpsc;

/// One push the stand-in received.
#[derive(Debug, Clone)]
pub struct Push {
    /// The job's id (`?` if the body was not a job).
    pub id: String,
    /// Which delivery of this id it was, from 1.
    pub attempt: usize,
    /// What the stand-in answered.
    pub status: u16,
}

#[derive(Clone)]
struct Shared {
    attempts: Arc<Mutex<HashMap<String, usize>>>,
    outage: Arc<Mutex<Option<u16>>>,
    received: mpsc::UnboundedSender<(String, usize)>,
    pushes: mpsc::UnboundedSender<Push>,
}

/// A running stand-in worker.
pub struct StandIn {
    /// Its address; push URL is `http://{addr}/work`.
    pub addr: SocketAddr,
    /// Every push as it arrives: (id, attempt).
    pub received: mpsc::UnboundedReceiver<(String, usize)>,
    /// Every push, in order of answer.
    pub pushes: mpsc::UnboundedReceiver<Push>,
    outage: Arc<Mutex<Option<u16>>>,
}

impl StandIn {
    /// Starts one on 127.0.0.1:0.
    pub async fn start() -> anyhow::Result<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        let (received_tx, received) = mpsc::unbounded_channel();
        let outage = Arc::new(Mutex::new(None));
        let shared = Shared {
            attempts: Arc::default(),
            outage: outage.clone(),
            received: received_tx,
            pushes: tx,
        };
        let router = Router::new().route("/work", post(work)).with_state(shared);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move { axum::serve(listener, router).await });
        Ok(Self {
            addr,
            received,
            pushes: rx,
            outage,
        })
    }

    /// Answers every push with `status` from now on (`None`: as scripted).
    pub fn set_outage(&self, status: Option<u16>) {
        *self.outage.lock().expect("not poisoned") = status;
    }

    /// The URL to give the bridge as `--worker-url`.
    pub fn url(&self) -> String {
        format!("http://{}/work", self.addr)
    }

    /// The next push, waiting at most `limit`.
    pub async fn next_push(&mut self, limit: Duration) -> Push {
        tokio::time::timeout(limit, self.pushes.recv())
            .await
            .unwrap_or_else(|_| panic!("no push to the stand-in worker within {limit:?}"))
            .expect("the stand-in worker is running")
    }

    /// Collects pushes until every id in `ids` has had a 2xx answer, at
    /// most `limit`. Returns the 2xx answers per id, of these ids and any
    /// other that came meanwhile.
    pub async fn until_processed(
        &mut self,
        ids: &BTreeSet<String>,
        limit: Duration,
    ) -> BTreeMap<String, usize> {
        let mut done: BTreeMap<String, usize> = BTreeMap::new();
        // What is still awaited, shrinking as answers come: checking every id
        // on every push was quadratic, and tens of thousands of accepted jobs
        // (a long cluster fault) kept a test busy for minutes.
        let mut missing: BTreeSet<&String> = ids.iter().collect();
        let deadline = tokio::time::Instant::now() + limit;
        while !missing.is_empty() {
            let push = tokio::time::timeout_at(deadline, self.pushes.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "{} accepted jobs not processed within {limit:?}",
                        missing.len()
                    )
                })
                .expect("the stand-in worker is running");
            if (200..300).contains(&push.status) {
                missing.remove(&push.id);
                *done.entry(push.id).or_default() += 1;
            }
        }
        done
    }

    /// The next push to arrive (before it is answered), waiting at most `limit`.
    pub async fn next_received(&mut self, limit: Duration) -> (String, usize) {
        tokio::time::timeout(limit, self.received.recv())
            .await
            .unwrap_or_else(|_| panic!("no push arrived at the stand-in worker within {limit:?}"))
            .expect("the stand-in worker is running")
    }
}

async fn work(State(shared): State<Shared>, body: Bytes) -> StatusCode {
    let job: Option<job::Job> = serde_json::from_slice(&body).ok();
    let id = job
        .as_ref()
        .map_or_else(|| "?".to_owned(), |j| j.id.clone());
    let payload: serde_json::Value = job
        .and_then(|j| j.payload)
        .and_then(|raw| serde_json::from_str(raw.get()).ok())
        .unwrap_or_default();
    let attempt = {
        let mut attempts = shared.attempts.lock().expect("not poisoned");
        let n = attempts.entry(id.clone()).or_default();
        *n += 1;
        *n
    };
    let _ = shared.received.send((id.clone(), attempt));
    let mut status = per_attempt(&payload, "answers", attempt).unwrap_or(200) as u16;
    let fail_percent = payload
        .get("fail_percent")
        .and_then(|p| p.as_u64())
        .unwrap_or(0);
    if fail_percent > 0 {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        std::hash::Hash::hash(&(&id, attempt), &mut hasher);
        if std::hash::Hasher::finish(&hasher) % 100 < fail_percent {
            status = 503;
        }
    }
    if let Some(outage) = *shared.outage.lock().expect("not poisoned") {
        status = outage;
    }
    if let Some(ms) = per_attempt(&payload, "delays_ms", attempt) {
        // The scripted slowness itself: this is the fault being played.
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let _ = shared.pushes.send(Push {
        id,
        attempt,
        status,
    });
    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// The `attempt`th entry (from 1) of the list `key` in `payload`, the last
/// one repeating.
fn per_attempt(payload: &serde_json::Value, key: &str, attempt: usize) -> Option<u64> {
    let list = payload.get(key)?.as_array()?;
    list.get(attempt - 1).or(list.last())?.as_u64()
}
