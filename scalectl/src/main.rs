//! scalectl's entry point: parse the subcommand, run it.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use scalectl::plan::{Scenario, csv, plan};

#[derive(Parser)]
#[command(
    name = "scalectl",
    version,
    about = "See queue-length autoscaling instead of reading about it"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Predict how an HPA scales a load: replicas, drain time, a chart.
    Plan(PlanArgs),
}

#[derive(clap::Args)]
struct PlanArgs {
    /// The HPA manifest (the real file).
    #[arg(long, default_value = "manifests/hpa.yaml")]
    hpa: PathBuf,
    /// Jobs queued at once at t = 0.
    #[arg(long, default_value_t = 300)]
    burst: u32,
    /// When the burst arrives, seconds (1 s: just after a sync and a scrape).
    #[arg(long, default_value_t = 1.0)]
    burst_at: f64,
    /// A steady arrival rate, jobs per second.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// How long the steady rate lasts, seconds.
    #[arg(long, default_value_t = 0.0)]
    rate_duration: f64,
    /// Seconds of work per job.
    #[arg(long, default_value_t = 5.0)]
    service_time: f64,
    /// Jobs per pod at once (the bridge's CONCURRENCY).
    #[arg(long, default_value_t = 1)]
    concurrency: u32,
    /// Seconds from scale-up to the new pod taking work.
    #[arg(long, default_value_t = 5.0)]
    pod_start: f64,
    /// RabbitMQ's collect_statistics_interval, seconds.
    #[arg(long, default_value_t = 5.0)]
    stats_interval: f64,
    /// Prometheus's scrape interval, seconds.
    #[arg(long, default_value_t = 15.0)]
    scrape_interval: f64,
    /// Write the per-sync table here (CSV).
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Write the chart here (SVG).
    #[arg(long)]
    svg: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Plan(args) => {
            let hpa = scalectl::read_hpa(&args.hpa)?;
            let spec = scalectl::hpa::Spec::from_hpa(&hpa).context("reading the HPA")?;
            let scenario = Scenario {
                burst: args.burst,
                burst_at: args.burst_at,
                rate: args.rate,
                rate_duration: args.rate_duration,
                service_time: args.service_time,
                concurrency: args.concurrency,
                pod_start: args.pod_start,
                stats_interval: args.stats_interval,
                scrape_interval: args.scrape_interval,
                ..Scenario::default()
            };
            let result = plan(&spec, &scenario);
            println!(
                "{:>7} {:>6} {:>8} {:>7} {:>9} {:>10}",
                "t (s)", "ready", "unacked", "metric", "replicas", "ready pods"
            );
            for t in &result.ticks {
                println!(
                    "{:>7.0} {:>6} {:>8} {:>7.0} {:>9} {:>10}",
                    t.t, t.ready, t.unacked, t.metric, t.replicas, t.ready_pods
                );
            }
            let show = |v: Option<f64>| v.map_or("never".to_owned(), |s| format!("{s:.0} s"));
            println!(
                "\npeak replicas {}; first scale-up at {}; drained at {} (lower bound with {} workers: {:.0} s)",
                result.peak_replicas,
                show(result.first_scale_up),
                show(result.drain_time),
                spec.max,
                result.lower_bound
            );
            if let Some(path) = args.csv {
                std::fs::write(&path, csv(&result))
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            if let Some(path) = args.svg {
                let title = format!(
                    "{} jobs, HPA {} (target {} per worker, max {})",
                    args.burst,
                    args.hpa.display(),
                    spec.target,
                    spec.max
                );
                std::fs::write(&path, scalectl::chart::plan_svg(&result, &title)?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            Ok(())
        }
    }
}
