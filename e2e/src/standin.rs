//! A stand-in worker for faults that are the worker's: it answers each job
//! as the job's payload scripts it, and reports every push it received.
//!
//! Payload keys: `answers` (a list of statuses, one per delivery of that
//! job, the last repeating; default `[200]`) and `delay_ms` (wait before
//! answering, to play a slow or hanging worker).

use std::collections::HashMap;
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
    pushes: mpsc::UnboundedSender<Push>,
}

/// A running stand-in worker.
pub struct StandIn {
    /// Its address; push URL is `http://{addr}/work`.
    pub addr: SocketAddr,
    /// Every push, in order of answer.
    pub pushes: mpsc::UnboundedReceiver<Push>,
}

impl StandIn {
    /// Starts one on 127.0.0.1:0.
    pub async fn start() -> anyhow::Result<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Shared {
            attempts: Arc::default(),
            pushes: tx,
        };
        let router = Router::new().route("/work", post(work)).with_state(shared);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move { axum::serve(listener, router).await });
        Ok(Self { addr, pushes: rx })
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
}

async fn work(State(shared): State<Shared>, body: Bytes) -> StatusCode {
    let job: Option<job::Job> = serde_json::from_slice(&body).ok();
    let id = job
        .as_ref()
        .map_or_else(|| "?".to_owned(), |j| j.id.clone());
    let payload = job.and_then(|j| j.payload).unwrap_or_default();
    let attempt = {
        let mut attempts = shared.attempts.lock().expect("not poisoned");
        let n = attempts.entry(id.clone()).or_default();
        *n += 1;
        *n
    };
    let answers: Vec<u16> = payload
        .get("answers")
        .and_then(|a| serde_json::from_value(a.clone()).ok())
        .unwrap_or_else(|| vec![200]);
    let status = answers
        .get(attempt - 1)
        .or(answers.last())
        .copied()
        .unwrap_or(200);
    if let Some(ms) = payload.get("delay_ms").and_then(|d| d.as_u64()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let _ = shared.pushes.send(Push {
        id,
        attempt,
        status,
    });
    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}
