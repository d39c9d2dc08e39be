//! `scalectl watch`: flags to a `watch::Watcher`, the redraw loop until
//! Ctrl-C, and the timeline written on the way out.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use super::PipelineArgs;
use crate::plan::{Phases, plan};
use crate::watch::{
    Queries, Sample, Sources, Watcher, arrivals, compare_svg, csv, divergence, render, svg,
};

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
    /// The HPA's name (`--hpa` is its manifest, for `--plan`).
    #[arg(long, env = "SCALECTL_WATCH_HPA", default_value = "worker")]
    hpa_name: String,
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
    /// The PromQL for the jobs confirmed so far: the arrivals `--plan`
    /// replays. `or vector(0)`: the counter exists only from a bridge's
    /// first job, and the first jobs must count as arrivals, not as where
    /// the count started.
    #[arg(
        long,
        env = "SCALECTL_ARRIVALS_QUERY",
        default_value = r#"sum(host_bridge_published_total{outcome="confirmed"}) or vector(0)"#
    )]
    arrivals_query: String,
    /// No Kubernetes API (the local stack): replicas come from Prometheus,
    /// with `--replicas-query`. Needs `--prometheus`.
    #[arg(long, env = "SCALECTL_LOCAL", requires = "prometheus")]
    local: bool,
    /// The PromQL for the workers taking jobs, with `--local`.
    #[arg(
        long,
        env = "SCALECTL_REPLICAS_QUERY",
        default_value = "count(host_bridge_worker_up)"
    )]
    replicas_query: String,
    /// On exit, replay the arrivals seen through `scalectl plan` for the
    /// HPA in `--hpa` and draw the plan beside the live run: queue,
    /// replicas and the queue wait's p50 and p95. Needs `--prometheus`.
    #[arg(long, env = "SCALECTL_WATCH_PLAN", requires = "prometheus")]
    plan: bool,
    #[command(flatten)]
    pipeline: PipelineArgs,
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
    // A bad --hpa or version is found before the watch, not after it.
    let planned = if args.plan {
        let cluster = args.pipeline.cluster()?;
        let (_, spec) = args.pipeline.spec(&cluster)?;
        Some((spec, args.pipeline.unloaded(Phases::default(), cluster)))
    } else {
        None
    };
    let (samples, buckets) = runtime.block_on(watch(&args))?;
    std::fs::write(&args.csv, csv(&samples))
        .with_context(|| format!("writing {}", args.csv.display()))?;
    let chart = match planned {
        Some((spec, unloaded)) => {
            let last = samples.last().map_or(0.0, |s| s.t);
            let scenario = crate::plan::Scenario {
                arrivals: arrivals(&samples),
                initial_replicas: samples.first().map_or(1, |s| s.current.max(1)),
                // Room for the plan to drain what arrived last.
                horizon: last + 3600.0,
                ..unloaded
            };
            scenario.validate().map_err(super::usage)?;
            let result = plan(&spec, &scenario);
            let buckets = buckets.as_deref();
            println!("\n{}", divergence(&samples, &result, buckets));
            let title = format!(
                "{}: live against the plan for {} (same arrivals)",
                where_(&args),
                args.pipeline.hpa.display()
            );
            compare_svg(&samples, &result, buckets, &title)?
        }
        None => svg(
            &samples,
            &format!("{}: queue depth and replicas", where_(&args)),
        )?,
    };
    std::fs::write(&args.svg, chart).with_context(|| format!("writing {}", args.svg.display()))?;
    println!("\nwrote {} and {}", args.csv.display(), args.svg.display());
    Ok(())
}

/// What the chart's title says was watched.
fn where_(args: &WatchArgs) -> String {
    if args.local {
        "local stack".to_owned()
    } else {
        format!("{}/{}", args.namespace, args.hpa_name)
    }
}

/// Samples and redraws until Ctrl-C (or SIGTERM); the samples taken and
/// the live wait histogram's buckets.
async fn watch(args: &WatchArgs) -> anyhow::Result<(Vec<Sample>, Option<Vec<f64>>)> {
    let kube = if args.local {
        None
    } else {
        let client = kube::Client::try_default()
            .await
            .context("no usable kubeconfig (on the local stack, use --local)")?;
        Some((
            client,
            args.namespace.clone(),
            args.hpa_name.clone(),
            args.deployment.clone(),
        ))
    };
    let prometheus = args.prometheus.clone().map(|url| Queries {
        url,
        queue: args.query.clone(),
        arrived: args.arrivals_query.clone(),
        replicas: args.replicas_query.clone(),
    });
    let watcher = Watcher::new(Sources { kube, prometheus });
    let started = std::time::Instant::now();
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval(args.interval);
    let mut stop = std::pin::pin!(tokio::signal::ctrl_c());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("listening for SIGTERM")?;
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = term.recv() => break,
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
    Ok((samples, watcher.wait_buckets().await))
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
