//! Talking to a bridge's admin server, in-process or as a child process.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use crate::eventually;

/// A client of one admin server.
#[derive(Clone)]
pub struct Admin {
    addr: SocketAddr,
    client: reqwest::Client,
}

impl Admin {
    /// A client for the admin server at `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            client: reqwest::Client::new(),
        }
    }

    /// GETs a path, returning status and body.
    pub async fn get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        let response = self
            .client
            .get(format!("http://{}{path}", self.addr))
            .timeout(Duration::from_secs(5))
            .send()
            .await?;
        Ok((response.status().as_u16(), response.text().await?))
    }

    /// Waits until /readyz answers 200.
    pub async fn wait_ready(&self) {
        eventually(
            "the bridge to be ready",
            Duration::from_secs(30),
            || async { matches!(self.get("/readyz").await, Ok((200, _))).then_some(()) },
        )
        .await;
    }
}

/// Anything whose metrics a test reads and waits on.
pub trait MetricSource {
    /// One metric's value (see [`crate::metric_value`]).
    fn metric(&self, name: &str, labels: &[(&str, &str)]) -> impl Future<Output = f64>;

    /// Waits until a metric reaches at least `value`.
    fn wait_metric(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        value: f64,
        limit: Duration,
    ) -> impl Future<Output = ()> {
        async move {
            eventually(&format!("{name}{labels:?} >= {value}"), limit, || async {
                (self.metric(name, labels).await >= value).then_some(())
            })
            .await;
        }
    }
}
