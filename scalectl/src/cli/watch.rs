//! `scalectl watch`: flags to a `watch::Watcher`, the redraw loop until
//! Ctrl-C, and the timeline written on the way out.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use crate::watch::{Sample, Watcher, csv, render, svg};

#[derive(clap::Args)]
pub(super) struct WatchArgs {
    /// Namespace (the kubeconfig's context picks the cluster).
    #[arg(
        long,
        short = 'n',
        env = "SCALECTL_NAMESPACE",
        default_value = "wasm-jobs"
    )]
    namespace: String,
    /// The HPA.
    #[arg(long, env = "SCALECTL_WATCH_HPA", default_value = "worker")]
    hpa: String,
    /// The Deployment it scales.
    #[arg(long, env = "SCALECTL_DEPLOYMENT", default_value = "worker")]
    deployment: String,
    /// Prometheus base URL for the queue depth (e.g. a port-forward); without
    /// it, the depth is the HPA's metric times its replicas. `http://` only:
    /// scalectl has no TLS client for it (`kubectl port-forward` is plain).
    #[arg(long, env = "SCALECTL_PROMETHEUS", value_parser = plain_http_url)]
    prometheus: Option<String>,
    /// The PromQL for the queue depth.
    #[arg(
        long,
        env = "SCALECTL_QUERY",
        default_value = r#"sum(rabbitmq_detailed_queue_messages{queue="jobs"})"#
    )]
    query: String,
    /// Seconds between samples, 0.2 to 3600.
    #[arg(long, env = "SCALECTL_INTERVAL", default_value = "2", value_parser = interval)]
    interval: Duration,
    /// The timeline CSV written on exit.
    #[arg(long, env = "SCALECTL_WATCH_CSV", default_value = "scalectl-watch.csv")]
    csv: PathBuf,
    /// The chart written on exit.
    #[arg(long, env = "SCALECTL_WATCH_SVG", default_value = "scalectl-watch.svg")]
    svg: PathBuf,
}

/// A base URL that this build can reach: `http://`, since reqwest is built
/// here without a TLS backend.
fn plain_http_url(text: &str) -> Result<String, String> {
    match reqwest::Url::parse(text) {
        Ok(url) if url.scheme() == "http" => Ok(text.to_owned()),
        Ok(_) => {
            Err("must be an http:// URL: there is no TLS client (use kubectl port-forward)".into())
        }
        Err(e) => Err(format!("not a URL: {e}")),
    }
}

/// Seconds between samples: a finite number from 0.2 (faster only loads the
/// API server) to an hour. `inf` or `NaN` would panic in `Duration`.
fn interval(text: &str) -> Result<Duration, String> {
    match text.parse::<f64>() {
        Ok(s) if (0.2..=3600.0).contains(&s) => Ok(Duration::from_secs_f64(s)),
        _ => Err(format!(
            "{text:?} is not a number of seconds from 0.2 to 3600"
        )),
    }
}

pub(super) fn run(args: WatchArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    let samples = runtime.block_on(watch(&args))?;
    std::fs::write(&args.csv, csv(&samples))
        .with_context(|| format!("writing {}", args.csv.display()))?;
    let title = format!("{}/{}: queue depth and replicas", args.namespace, args.hpa);
    std::fs::write(&args.svg, svg(&samples, &title)?)
        .with_context(|| format!("writing {}", args.svg.display()))?;
    println!("\nwrote {} and {}", args.csv.display(), args.svg.display());
    Ok(())
}

/// Samples and redraws until Ctrl-C; the samples taken.
async fn watch(args: &WatchArgs) -> anyhow::Result<Vec<Sample>> {
    let client = kube::Client::try_default()
        .await
        .context("no usable kubeconfig")?;
    let prometheus = args.prometheus.clone().map(|url| (url, args.query.clone()));
    let watcher = Watcher::new(
        client,
        &args.namespace,
        &args.hpa,
        &args.deployment,
        prometheus,
    );
    let started = std::time::Instant::now();
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval(args.interval);
    let mut stop = std::pin::pin!(tokio::signal::ctrl_c());
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = tick.tick() => {}
        }
        match watcher.sample(started.elapsed().as_secs_f64()).await {
            Ok(sample) => {
                let events = watcher.recent_events(5).await.unwrap_or_default();
                // Clear the screen and redraw.
                print!("\x1b[2J\x1b[H{}", render(&sample, &events));
                samples.push(sample);
            }
            Err(e) => eprintln!("scalectl: {e:#}"),
        }
    }
    Ok(samples)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_must_be_plain_http_and_intervals_finite() {
        assert!(plain_http_url("http://127.0.0.1:9090").is_ok());
        let err = plain_http_url("https://prometheus.example").unwrap_err();
        assert!(err.contains("http://"), "{err}");
        assert!(plain_http_url("not a url").is_err());
        assert_eq!(interval("2"), Ok(Duration::from_secs(2)));
        for bad in ["inf", "NaN", "0", "0.1", "-1", "3601", "two"] {
            assert!(interval(bad).is_err(), "{bad}");
        }
    }
}
