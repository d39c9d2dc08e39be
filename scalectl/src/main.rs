//! scalectl's entry point: parse the subcommand, run it.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use scalectl::plan::{Phases, Scenario, csv, over_phases, plan};

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
    /// Find the HPA settings that meet a goal (drain time, wait) for a load
    /// at the fewest pod-seconds; optionally write them as the HPA's YAML.
    Tune(TuneArgs),
    /// Fire /generate at a target, at a rate or a concurrency, and summarize.
    Load(LoadArgs),
    /// Watch the HPA, the worker Deployment and the queue live; on Ctrl-C
    /// write the timeline (CSV) and a chart (SVG).
    Watch(WatchArgs),
}

#[derive(clap::Args)]
struct WatchArgs {
    /// Namespace (the kubeconfig's context picks the cluster).
    #[arg(long, short = 'n', default_value = "wasm-jobs")]
    namespace: String,
    /// The HPA.
    #[arg(long, default_value = "worker")]
    hpa: String,
    /// The Deployment it scales.
    #[arg(long, default_value = "worker")]
    deployment: String,
    /// Prometheus base URL for the queue depth (e.g. a port-forward); without
    /// it, the depth is the HPA's metric times its replicas. `http://` only:
    /// scalectl has no TLS client for it (`kubectl port-forward` is plain).
    #[arg(long, value_parser = plain_http_url)]
    prometheus: Option<String>,
    /// The PromQL for the queue depth.
    #[arg(
        long,
        default_value = r#"sum(rabbitmq_detailed_queue_messages{queue="jobs"})"#
    )]
    query: String,
    /// Seconds between samples.
    #[arg(long, default_value_t = 2.0)]
    interval: f64,
    /// The timeline CSV written on exit.
    #[arg(long, default_value = "scalectl-watch.csv")]
    csv: PathBuf,
    /// The chart written on exit.
    #[arg(long, default_value = "scalectl-watch.svg")]
    svg: PathBuf,
}

#[derive(clap::Args)]
struct LoadArgs {
    /// The /generate URL.
    #[arg(long, default_value = "http://127.0.0.1:3000/generate")]
    url: String,
    /// Requests per second, e.g. 20/s or 600/m; without it, a closed loop at --concurrency.
    #[arg(long, value_parser = scalectl::load::parse_rate)]
    rate: Option<f64>,
    /// Requests in flight at most.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Stop after this many requests.
    #[arg(long)]
    count: Option<u64>,
    /// Stop after this long, e.g. 30s.
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<std::time::Duration>,
    /// Write the accepted job ids here, one per line.
    #[arg(long)]
    ids: Option<PathBuf>,
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

/// The load and the pipeline, shared by `plan` and `tune`.
#[derive(clap::Args)]
struct ScenarioArgs {
    /// The HPA manifest (the real file).
    #[arg(long, default_value = "manifests/hpa.yaml")]
    hpa: PathBuf,
    /// Jobs queued at once at --burst-at.
    #[arg(long, default_value_t = 300)]
    burst: u32,
    /// When the burst arrives, seconds (1 s: just after a sync and a scrape).
    #[arg(long, default_value_t = 1.0, value_parser = non_negative)]
    burst_at: f64,
    /// A steady arrival rate, jobs per second.
    #[arg(long, default_value_t = 0.0, value_parser = non_negative)]
    rate: f64,
    /// How long the steady rate lasts, seconds.
    #[arg(long, default_value_t = 0.0, value_parser = non_negative)]
    rate_duration: f64,
    /// Seconds of work per job.
    #[arg(long, default_value_t = 5.0, value_parser = non_negative)]
    service_time: f64,
    /// Jobs per pod at once (the bridge's CONCURRENCY).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    concurrency: u32,
    /// Seconds from scale-up to the new pod taking work.
    #[arg(long, default_value_t = 5.0, value_parser = non_negative)]
    pod_start: f64,
    /// RabbitMQ's collect_statistics_interval, seconds.
    #[arg(long, default_value_t = 5.0, value_parser = non_negative)]
    stats_interval: f64,
    /// Prometheus's scrape interval, seconds.
    #[arg(long, default_value_t = 15.0, value_parser = non_negative)]
    scrape_interval: f64,
    /// Phases per clock in the drain spread (steps³ plans; at most 20,
    /// 8,000 plans, so that a typo can't hang the command).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=20))]
    phase_steps: u16,
}

/// A finite number, zero or more.
fn non_negative(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("{text:?} is not a number, zero or more")),
    }
}

impl ScenarioArgs {
    /// Reads the HPA, warning about what the simulation leaves out.
    fn spec(&self) -> anyhow::Result<(HorizontalPodAutoscaler, scalectl::hpa::Spec)> {
        let hpa = scalectl::read_hpa(&self.hpa)?;
        let spec = scalectl::hpa::Spec::from_hpa(&hpa).context("reading the HPA")?;
        let others = scalectl::hpa::other_metrics(&hpa);
        if !others.is_empty() {
            eprintln!(
                "scalectl: not simulated: {} (the controller takes the most replicas over all metrics, so a cluster may run more than this plan)",
                others.join(", ")
            );
        }
        Ok((hpa, spec))
    }

    fn scenario(&self, phases: Phases) -> anyhow::Result<Scenario> {
        let scenario = Scenario {
            burst: self.burst,
            burst_at: self.burst_at,
            rate: self.rate,
            rate_duration: self.rate_duration,
            service_time: self.service_time,
            concurrency: self.concurrency,
            pod_start: self.pod_start,
            stats_interval: self.stats_interval,
            scrape_interval: self.scrape_interval,
            phases,
            ..Scenario::default()
        };
        scenario.validate().map_err(anyhow::Error::msg)?;
        Ok(scenario)
    }
}

/// The assumptions a plan or a tune rests on, for the printout.
fn assumptions(scenario: &Scenario) -> String {
    format!(
        "assumptions: {} jobs at {} s, {} jobs/s for {} s; {} s per job, {} per pod at once; \
         pods take work {} s after scale-up; stats every {} s, scrape every {} s, sync every {} s",
        scenario.burst,
        scenario.burst_at,
        scenario.rate,
        scenario.rate_duration,
        scenario.service_time,
        scenario.concurrency,
        scenario.pod_start,
        scenario.stats_interval,
        scenario.scrape_interval,
        scalectl::hpa::SYNC_PERIOD,
    )
}

#[derive(clap::Args)]
struct PlanArgs {
    #[command(flatten)]
    scenario: ScenarioArgs,
    /// When the stats refresh, the scrape and the HPA sync first tick,
    /// seconds: `stats,scrape,sync`. The table and chart use these; the
    /// drain spread sweeps them all.
    #[arg(long, default_value = "0,0,0")]
    phase: Phases,
    /// Write the per-sync table here (CSV).
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Write the chart here (SVG).
    #[arg(long)]
    svg: Option<PathBuf>,
}

#[derive(clap::Args)]
struct TuneArgs {
    #[command(flatten)]
    scenario: ScenarioArgs,
    /// What the load must see, at every clock phase: `drain=120s` (every
    /// job done within 120 s of the burst) or `wait=60s` (every job started
    /// within 60 s of arriving). Repeat for several.
    #[arg(long = "goal", required = true)]
    goals: Vec<scalectl::tune::Goal>,
    /// The largest maxReplicas to consider.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(i32).range(1..=1000))]
    max_replicas_limit: i32,
    /// How many settings to list, cheapest first.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=50))]
    top: u16,
    /// Write the cheapest setting here, as the HPA file with its target,
    /// maxReplicas and behavior replaced.
    #[arg(long)]
    write: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    // One line on failure, whatever RUST_BACKTRACE says: these are the
    // user's inputs, not scalectl's bugs.
    match run(Cli::parse().command) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // `scalectl plan | head`: the reader left; nothing went wrong.
        Err(e)
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("scalectl: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Load(args) => load(args),
        Command::Watch(args) => tokio::runtime::Runtime::new()?.block_on(watch(args)),
        Command::Plan(args) => plan_command(args),
        Command::Tune(args) => tune_command(args),
    }
}

fn plan_command(args: PlanArgs) -> anyhow::Result<()> {
    // Written, not println!: a closed pipe (`| head`) ends the command
    // quietly instead of panicking.
    let mut out = std::io::stdout().lock();
    let (_, spec) = args.scenario.spec()?;
    // A phase is where in its period a clock first ticks.
    for (name, phase, period) in [
        ("stats", args.phase.stats, args.scenario.stats_interval),
        ("scrape", args.phase.scrape, args.scenario.scrape_interval),
        ("sync", args.phase.sync, scalectl::hpa::SYNC_PERIOD),
    ] {
        anyhow::ensure!(
            period <= 0.0 || phase < period,
            "--phase: the {name} phase ({phase} s) must be below its period ({period} s)"
        );
    }
    let scenario = args.scenario.scenario(args.phase)?;
    let result = plan(&spec, &scenario);
    writeln!(
        out,
        "{} (phases {})\nHPA {}\n",
        assumptions(&scenario),
        scenario.phases,
        spec
    )?;
    writeln!(
        out,
        "{:>7} {:>6} {:>8} {:>7} {:>9} {:>10}",
        "t (s)", "ready", "unacked", "metric", "replicas", "ready pods"
    )?;
    for t in &result.ticks {
        writeln!(
            out,
            "{:>7.0} {:>6} {:>8} {:>7.0} {:>9} {:>10}",
            t.t, t.ready, t.unacked, t.metric, t.replicas, t.ready_pods
        )?;
    }
    writeln!(
        out,
        "\npeak replicas {}; first scale-up at {}; drained at {} (lower bound with {} workers: {:.0} s); \
         longest wait {}; {:.0} pod-seconds above min",
        result.peak_replicas,
        show(result.first_scale_up),
        show(result.drain_time),
        spec.max,
        result.lower_bound,
        show(result.max_wait),
        result.extra_pod_seconds,
    )?;
    match over_phases(&spec, &scenario, usize::from(args.scenario.phase_steps)) {
        Some(spread) => writeln!(
            out,
            "drain over {} clock phases: best {:.0} s (--phase {}), median {:.0} s, worst {:.0} s (--phase {}){}",
            spread.runs,
            spread.best.0,
            spread.best.1,
            spread.median,
            spread.worst.0,
            spread.worst.1,
            if spread.undrained > 0 {
                format!("; {} runs never drained", spread.undrained)
            } else {
                String::new()
            }
        )?,
        None => writeln!(
            out,
            "drain over clock phases: no run drained within the horizon"
        )?,
    }
    if let Some(path) = args.csv {
        std::fs::write(&path, csv(&result))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = args.svg {
        let title = format!(
            "{} jobs, HPA {} ({}, max {})",
            scenario.burst,
            args.scenario.hpa.display(),
            spec.target,
            spec.max
        );
        std::fs::write(&path, scalectl::chart::plan_svg(&result, &title)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Seconds, or "never".
fn show(v: Option<f64>) -> String {
    v.map_or("never".to_owned(), |s| format!("{s:.0} s"))
}

fn tune_command(args: TuneArgs) -> anyhow::Result<()> {
    // Written, not println!: a closed pipe (`| head`) ends the command
    // quietly instead of panicking.
    use scalectl::tune::{Search, evaluate, tune};
    let mut out = std::io::stdout().lock();
    let (mut hpa, spec) = args.scenario.spec()?;
    let scenario = args.scenario.scenario(Phases::default())?;
    let search = Search {
        max_replicas_limit: args.max_replicas_limit,
        verify_steps: usize::from(args.scenario.phase_steps),
        results: usize::from(args.top),
        ..Search::default()
    };
    let goals: Vec<String> = args.goals.iter().map(|g| g.to_string()).collect();
    writeln!(out, "goal: {}", goals.join("; "))?;
    writeln!(out, "{}", assumptions(&scenario))?;
    let runs = usize::from(args.scenario.phase_steps).pow(3);
    writeln!(
        out,
        "figures: worst over {runs} clock phases; pod-seconds above min, their mean\n"
    )?;
    let row = |name: &str, spec: &scalectl::hpa::Spec, o: &scalectl::tune::Outcome| {
        format!(
            "{name:<9} {:>7} {:>4} {:>6} {:>6} {:>9}  {}",
            spec.target.value(),
            spec.max,
            show(o.worst_drain),
            show(o.worst_wait),
            format!("{:.0}", o.extra_pod_seconds),
            spec,
        )
    };
    writeln!(
        out,
        "{:<9} {:>7} {:>4} {:>6} {:>6} {:>9}  HPA",
        "", "target", "max", "drain", "wait", "pod-s"
    )?;
    let own = evaluate(&spec, &scenario, search.verify_steps);
    let name = if own.meets(&args.goals) {
        "current"
    } else {
        "current*"
    };
    writeln!(out, "{}", row(name, &spec, &own))?;
    let found = tune(&spec, &scenario, &args.goals, &search)?;
    for (i, candidate) in found.iter().enumerate() {
        let name = format!("#{}", i + 1);
        writeln!(out, "{}", row(&name, &candidate.spec, &candidate.outcome))?;
    }
    if !own.meets(&args.goals) {
        writeln!(
            out,
            "\n* the current HPA ({}) misses the goal",
            args.scenario.hpa.display()
        )?;
    }
    if let Some(path) = args.write {
        let best = &found[0].spec;
        scalectl::tune::apply(best, &mut hpa)?;
        let header = format!(
            "# Written by `scalectl tune` from {}: {}.\n# {}.\n",
            args.scenario.hpa.display(),
            goals.join("; "),
            assumptions(&scenario)
        );
        std::fs::write(&path, header + &serde_yaml_ng::to_string(&hpa)?)
            .with_context(|| format!("writing {}", path.display()))?;
        writeln!(out, "\nwrote #1 to {}", path.display())?;
    }
    Ok(())
}

fn load(args: LoadArgs) -> anyhow::Result<()> {
    let options = scalectl::load::LoadOptions {
        url: args.url,
        rate: args.rate,
        concurrency: args.concurrency,
        count: args.count,
        duration: args.duration,
        timeout: std::time::Duration::from_secs(30),
    };
    let bar = match options.count {
        Some(n) => indicatif::ProgressBar::new(n),
        None => indicatif::ProgressBar::new_spinner(),
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos} sent  {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let runtime = tokio::runtime::Runtime::new()?;
    let summary = runtime.block_on(scalectl::load::run(&options, Some(bar.clone()), async {
        // Ctrl-C stops sending; the summary covers what was sent.
        let _ = tokio::signal::ctrl_c().await;
    }))?;
    bar.finish_and_clear();
    println!("{}", summary.render());
    if let Some(path) = args.ids {
        std::fs::write(&path, summary.ids.join("\n") + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        println!("accepted ids written to {}", path.display());
    }
    Ok(())
}

async fn watch(args: WatchArgs) -> anyhow::Result<()> {
    use scalectl::watch::{Watcher, csv, render, svg};
    let client = kube::Client::try_default()
        .await
        .context("no usable kubeconfig")?;
    let prometheus = args.prometheus.map(|url| (url, args.query.clone()));
    let watcher = Watcher::new(
        client,
        &args.namespace,
        &args.hpa,
        &args.deployment,
        prometheus,
    );
    let started = std::time::Instant::now();
    let mut samples = Vec::new();
    let mut tick =
        tokio::time::interval(std::time::Duration::from_secs_f64(args.interval.max(0.2)));
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
    std::fs::write(&args.csv, csv(&samples))
        .with_context(|| format!("writing {}", args.csv.display()))?;
    let title = format!("{}/{}: queue depth and replicas", args.namespace, args.hpa);
    std::fs::write(&args.svg, svg(&samples, &title)?)
        .with_context(|| format!("writing {}", args.svg.display()))?;
    println!("\nwrote {} and {}", args.csv.display(), args.svg.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_must_be_plain_http_and_durations_read_like_humantime() {
        assert!(plain_http_url("http://127.0.0.1:9090").is_ok());
        let err = plain_http_url("https://prometheus.example").unwrap_err();
        assert!(err.contains("http://"), "{err}");
        assert!(plain_http_url("not a url").is_err());
        let cli = Cli::try_parse_from(["scalectl", "load", "--duration", "1m30s"]);
        assert!(cli.is_ok(), "1m30s is a duration");
    }
}
