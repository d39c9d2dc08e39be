//! A real Prometheus server (Debian's `prometheus`, or `PROMETHEUS_BIN`)
//! with a scrape config a test writes, queried over its HTTP API.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;
use tokio::process::{Child, Command};

use crate::eventually;
use crate::process::free_port;

/// A running Prometheus.
pub struct Prometheus {
    /// Its HTTP address.
    pub addr: String,
    dir: PathBuf,
    _child: Child,
    client: reqwest::Client,
}

impl Prometheus {
    /// Starts Prometheus with `scrape_configs` (YAML, the list under that
    /// key) and a 1 s scrape interval, and waits until it is ready.
    pub async fn start(test: &str, scrape_configs: &str) -> anyhow::Result<Self> {
        let port = free_port()?;
        let dir = std::env::temp_dir().join(format!("e2e-prometheus-{test}-{port}"));
        std::fs::create_dir_all(&dir)?;
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n{scrape_configs}"
        );
        std::fs::write(dir.join("prometheus.yml"), config)?;
        let binary = std::env::var("PROMETHEUS_BIN").unwrap_or_else(|_| "prometheus".into());
        let child = Command::new(&binary)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("failed to start {binary} (apt-get install prometheus)"))?;
        let prometheus = Self {
            addr: format!("127.0.0.1:{port}"),
            dir,
            _child: child,
            client: reqwest::Client::new(),
        };
        let ready = format!("http://{}/-/ready", prometheus.addr);
        eventually(
            "Prometheus to be ready",
            Duration::from_secs(30),
            || async {
                let response = prometheus.client.get(&ready).send().await.ok()?;
                response.status().is_success().then_some(())
            },
        )
        .await;
        Ok(prometheus)
    }

    /// Runs an instant query; returns each result's labels and value.
    pub async fn query(&self, expr: &str) -> anyhow::Result<Vec<(Value, f64)>> {
        let body: Value = self
            .client
            .get(format!("http://{}/api/v1/query", self.addr))
            .query(&[("query", expr)])
            .send()
            .await?
            .json()
            .await?;
        if body["status"] != "success" {
            bail!("query {expr} failed: {body}");
        }
        let results = body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        Ok(results
            .into_iter()
            .filter_map(|r| {
                let value = r["value"][1].as_str()?.parse().ok()?;
                Some((r["metric"].clone(), value))
            })
            .collect())
    }

    /// Every metric name Prometheus has scraped from job `job`.
    pub async fn metric_names(&self, job: &str) -> anyhow::Result<Vec<String>> {
        let body: Value = self
            .client
            .get(format!("http://{}/api/v1/label/__name__/values", self.addr))
            .query(&[("match[]", format!("{{job=\"{job}\"}}"))])
            .send()
            .await?
            .json()
            .await?;
        Ok(body["data"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
