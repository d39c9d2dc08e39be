//! The command line: flags (clap derive, each mirrored by an env var), the
//! subcommands that wire the library's parts together, and the exit
//! contract every binary of the project keeps:
//! - `--help` and `--version`: printed, exit 0;
//! - a bad flag or setting, whether clap or a later check catches it: one
//!   line naming it, exit 64 (EX_USAGE);
//! - a failure while running (a file not written, a goal out of reach, the
//!   cluster unreachable): one line, exit 1.
//!
//! The simulation, the search and the cluster calls live in their own
//! modules; this one only reads flags and prints.

mod load;
mod plan;
mod tune;
mod watch;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;

use crate::cluster::{Cluster, FLOOR, Version};
use crate::plan::{Phases, Scenario};

/// EX_USAGE: a configuration error, as sysexits(3) defines it.
pub use cli_contract::EX_USAGE;

/// scalectl's flags.
#[derive(Parser)]
#[command(
    name = "scalectl",
    version,
    about = "See queue-length autoscaling instead of reading about it"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Predict how an HPA scales a load: replicas, drain time, a chart.
    Plan(plan::PlanArgs),
    /// Find the HPA settings that meet a goal (drain time, wait) for a load
    /// at the fewest pod-seconds; optionally write them as the HPA's YAML.
    Tune(tune::TuneArgs),
    /// Fire /generate at a target, at a rate or a concurrency, and summarize.
    Load(load::LoadArgs),
    /// Watch the HPA, the worker Deployment and the queue live; on Ctrl-C
    /// write the timeline (CSV) and a chart (SVG).
    Watch(watch::WatchArgs),
}

/// A setting refused after clap parsed it (a phase past its period, an
/// HPA the API server would refuse): exit 64, not 1.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Usage(pub String);

/// Wraps an error about a setting so that it exits 64.
fn usage(e: impl std::fmt::Display) -> anyhow::Error {
    Usage(e.to_string()).into()
}

/// Parses the arguments and runs the subcommand, with the exit contract
/// above. `main` is this and nothing else.
pub fn main(args: impl IntoIterator<Item = std::ffi::OsString>) -> ExitCode {
    // The workspace's contract (`cli-contract`): help and version exit 0,
    // a flag that does not parse is one line and exit 64.
    let cli: Cli = cli_contract::parse_from("scalectl", args);
    exit(run(cli.command))
}

/// The exit code and the one line for a command's outcome.
fn exit(outcome: anyhow::Result<()>) -> ExitCode {
    let Err(e) = outcome else {
        return ExitCode::SUCCESS;
    };
    // `scalectl plan | head`: the reader left; nothing went wrong.
    let broken_pipe = e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    });
    if broken_pipe {
        return ExitCode::SUCCESS;
    }
    // One line whatever the causes say: these are the user's inputs or
    // the world's state, not scalectl's bugs.
    let line = format!("{e:#}").replace('\n', " ");
    eprintln!("scalectl: {line}");
    if e.chain().any(|c| c.is::<Usage>()) {
        ExitCode::from(EX_USAGE)
    } else {
        ExitCode::FAILURE
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Load(args) => load::run(args),
        Command::Watch(args) => watch::run(args),
        Command::Plan(args) => plan::run(args),
        Command::Tune(args) => tune::run(args),
    }
}

/// The load, the pipeline and the cluster, shared by `plan` and `tune`.
#[derive(clap::Args)]
struct ScenarioArgs {
    #[command(flatten)]
    pipeline: PipelineArgs,
    /// Jobs queued at once at --burst-at.
    #[arg(long, env = "SCALECTL_BURST", default_value_t = 300)]
    burst: u32,
    /// When the burst arrives, seconds (1 s: just after a sync and a scrape).
    #[arg(long, env = "SCALECTL_BURST_AT", default_value_t = 1.0, value_parser = non_negative)]
    burst_at: f64,
    /// A steady arrival rate, jobs per second.
    #[arg(long, env = "SCALECTL_RATE", default_value_t = 0.0, value_parser = non_negative)]
    rate: f64,
    /// How long the steady rate lasts, seconds.
    #[arg(long, env = "SCALECTL_RATE_DURATION", default_value_t = 0.0, value_parser = non_negative)]
    rate_duration: f64,
    /// Phases per clock in the drain spread (steps³ plans; at most 20,
    /// 8,000 plans, so that a typo can't hang the command).
    #[arg(long, env = "SCALECTL_PHASE_STEPS", default_value_t = 5,
          value_parser = clap::value_parser!(u16).range(1..=20))]
    phase_steps: u16,
}

/// The HPA, the workers, the metric pipeline and the cluster: everything a
/// plan needs but the load (`watch` takes the load it observes).
#[derive(clap::Args)]
struct PipelineArgs {
    /// The HPA manifest (the real file).
    #[arg(long, env = "SCALECTL_HPA", default_value = "manifests/hpa.yaml")]
    hpa: PathBuf,
    /// Seconds of work per job.
    #[arg(long, env = "SCALECTL_SERVICE_TIME", default_value_t = 5.0, value_parser = non_negative)]
    service_time: f64,
    /// Jobs per pod at once (the bridge's CONCURRENCY).
    #[arg(long, env = "SCALECTL_CONCURRENCY", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..))]
    concurrency: u32,
    /// Seconds from scale-up to the new pod taking work.
    #[arg(long, env = "SCALECTL_POD_START", default_value_t = 5.0, value_parser = non_negative)]
    pod_start: f64,
    /// RabbitMQ's collect_statistics_interval, seconds.
    #[arg(long, env = "SCALECTL_STATS_INTERVAL", default_value_t = 5.0, value_parser = non_negative)]
    stats_interval: f64,
    /// Prometheus's scrape interval, seconds.
    #[arg(long, env = "SCALECTL_SCRAPE_INTERVAL", default_value_t = 15.0, value_parser = non_negative)]
    scrape_interval: f64,
    /// The Kubernetes release the controller and API server run (1.23 and
    /// later): it decides the tolerance rule. The default is the project's
    /// floor.
    #[arg(long, env = "SCALECTL_KUBERNETES_VERSION", default_value_t = FLOOR.to_string())]
    kubernetes_version: String,
    /// Feature gates on top of the release's defaults, as the control
    /// plane takes them: `HPAConfigurableTolerance=true` (1.33 and 1.34),
    /// `HPAScaleToZero=true`.
    #[arg(long, env = "SCALECTL_FEATURE_GATES", default_value = "")]
    feature_gates: String,
}

/// A finite number, zero or more.
fn non_negative(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("{text:?} is not a number, zero or more")),
    }
}

impl PipelineArgs {
    /// The cluster the flags describe.
    fn cluster(&self) -> anyhow::Result<Cluster> {
        let version: Version = self
            .kubernetes_version
            .parse()
            .map_err(|e| usage(format!("--kubernetes-version: {e}")))?;
        Cluster::new(version, &self.feature_gates)
            .map_err(|e| usage(format!("--feature-gates: {e}")))
    }

    /// Reads and validates the HPA for `cluster`, warning about what the
    /// simulation leaves out.
    fn spec(
        &self,
        cluster: &Cluster,
    ) -> anyhow::Result<(HorizontalPodAutoscaler, crate::hpa::Spec)> {
        let (hpa, spec) =
            crate::read_spec(&self.hpa, cluster).map_err(|e| usage(format!("--hpa {e:#}")))?;
        for warning in cluster.warnings(&spec) {
            eprintln!("scalectl: {warning}");
        }
        let others = crate::hpa::other_metrics(&hpa);
        if !others.is_empty() {
            eprintln!(
                "scalectl: not simulated: {} (the controller takes the most replicas over all metrics, so a cluster may run more than this plan)",
                others.join(", ")
            );
        }
        Ok((hpa, spec))
    }

    /// The scenario of these workers and this pipeline, with no load.
    fn unloaded(&self, phases: Phases, cluster: Cluster) -> Scenario {
        Scenario {
            burst: 0,
            service_time: self.service_time,
            concurrency: self.concurrency,
            pod_start: self.pod_start,
            stats_interval: self.stats_interval,
            scrape_interval: self.scrape_interval,
            phases,
            cluster,
            ..Scenario::default()
        }
    }
}

impl ScenarioArgs {
    /// The cluster the flags describe.
    fn cluster(&self) -> anyhow::Result<Cluster> {
        self.pipeline.cluster()
    }

    /// The HPA, read and validated.
    fn spec(
        &self,
        cluster: &Cluster,
    ) -> anyhow::Result<(HorizontalPodAutoscaler, crate::hpa::Spec)> {
        self.pipeline.spec(cluster)
    }

    fn scenario(&self, phases: Phases, cluster: Cluster) -> anyhow::Result<Scenario> {
        let scenario = Scenario {
            burst: self.burst,
            burst_at: self.burst_at,
            rate: self.rate,
            rate_duration: self.rate_duration,
            ..self.pipeline.unloaded(phases, cluster)
        };
        scenario.validate().map_err(usage)?;
        Ok(scenario)
    }
}

/// The assumptions a plan or a tune rests on, for the printout.
fn assumptions(scenario: &Scenario) -> String {
    format!(
        "assumptions: {} jobs at {} s, {} jobs/s for {} s; {} s per job, {} per pod at once; \
         pods take work {} s after scale-up; stats every {} s, scrape every {} s, sync every {} s; \
         {}",
        scenario.burst,
        scenario.burst_at,
        scenario.rate,
        scenario.rate_duration,
        scenario.service_time,
        scenario.concurrency,
        scenario.pod_start,
        scenario.stats_interval,
        scenario.scrape_interval,
        crate::hpa::SYNC_PERIOD,
        scenario.cluster,
    )
}

/// Seconds, or "never".
fn show(v: Option<f64>) -> String {
    v.map_or("never".to_owned(), |s| format!("{s:.0} s"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("scalectl").chain(args.iter().copied()))
    }

    #[test]
    fn a_flag_that_does_not_parse_is_one_line_naming_it() {
        for (args, names) in [
            (&["plan", "--burst", "many"][..], "--burst"),
            (&["plan", "--phase-steps", "1000"], "--phase-steps"),
            (&["tune", "--goal", "latency=5s"], "--goal"),
            (&["watch", "--interval", "inf"], "--interval"),
            // Nothing to replay or count replicas with, without Prometheus.
            (&["watch", "--plan"], "--prometheus"),
            (&["watch", "--local"], "--prometheus"),
            (&["load", "--concurrency", "0"], "--concurrency"),
            (&["plan", "--no-such-flag"], "--no-such-flag"),
        ] {
            let Err(e) = parse(args) else {
                panic!("{args:?} parsed")
            };
            let line = cli_contract::one_line(&e);
            assert!(
                !line.contains('\n') && line.contains(names),
                "{args:?}: {line}"
            );
            assert!(!line.starts_with("error:"), "{line}");
        }
    }

    #[test]
    fn settings_refused_after_parsing_exit_64_and_failures_1() {
        let code = |outcome: anyhow::Result<()>| format!("{:?}", exit(outcome));
        assert_eq!(
            code(Err(usage("bad phase"))),
            format!("{:?}", ExitCode::from(EX_USAGE))
        );
        let context = anyhow::Context::context(Err::<(), _>(usage("inner")), "outer");
        assert_eq!(code(context), format!("{:?}", ExitCode::from(EX_USAGE)));
        assert_eq!(
            code(Err(anyhow::anyhow!("disk full"))),
            format!("{:?}", ExitCode::FAILURE)
        );
        assert_eq!(code(Ok(())), format!("{:?}", ExitCode::SUCCESS));
    }
}
