//! `scalectl plan`: one simulated run printed as a table, the drain spread
//! over clock phases, and optionally the run as CSV and SVG.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;

use super::{ScenarioArgs, assumptions, show, usage};
use crate::hpa::{SYNC_PERIOD, Spec};
use crate::plan::{Phases, Plan, Scenario, csv, over_phases, plan};

#[derive(clap::Args)]
pub(super) struct PlanArgs {
    #[command(flatten)]
    scenario: ScenarioArgs,
    /// When the stats refresh, the scrape and the HPA sync first tick,
    /// seconds: `stats,scrape,sync`. The table and chart use these; the
    /// drain spread sweeps them all.
    #[arg(long, env = "SCALECTL_PHASE", default_value = "0,0,0")]
    phase: Phases,
    /// Write the per-sync table here (CSV).
    #[arg(long, env = "SCALECTL_CSV")]
    csv: Option<PathBuf>,
    /// Write the chart here (SVG).
    #[arg(long, env = "SCALECTL_SVG")]
    svg: Option<PathBuf>,
}

pub(super) fn run(args: PlanArgs) -> anyhow::Result<()> {
    let cluster = args.scenario.cluster()?;
    check_phases(&args)?;
    let (_, spec) = args.scenario.spec(&cluster)?;
    let scenario = args.scenario.scenario(args.phase, cluster)?;
    let result = plan(&spec, &scenario);
    // Written, not println!: a closed pipe (`| head`) ends the command
    // quietly instead of panicking.
    let mut out = std::io::stdout().lock();
    print_table(&mut out, &spec, &scenario, &result)?;
    print_spread(&mut out, &spec, &scenario, args.scenario.phase_steps)?;
    if let Some(path) = &args.csv {
        std::fs::write(path, csv(&result))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.svg {
        let title = format!(
            "{} jobs, HPA {} ({}, max {})",
            scenario.burst,
            args.scenario.pipeline.hpa.display(),
            spec.target,
            spec.max
        );
        std::fs::write(path, crate::chart::plan_svg(&result, &title)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// A phase is where in its period a clock first ticks: below the period.
fn check_phases(args: &PlanArgs) -> anyhow::Result<()> {
    for (name, phase, period) in [
        (
            "stats",
            args.phase.stats,
            args.scenario.pipeline.stats_interval,
        ),
        (
            "scrape",
            args.phase.scrape,
            args.scenario.pipeline.scrape_interval,
        ),
        ("sync", args.phase.sync, SYNC_PERIOD),
    ] {
        if period > 0.0 && phase >= period {
            return Err(usage(format!(
                "--phase: the {name} phase ({phase} s) must be below its period ({period} s)"
            )));
        }
    }
    Ok(())
}

fn print_table(
    out: &mut impl Write,
    spec: &Spec,
    scenario: &Scenario,
    result: &Plan,
) -> anyhow::Result<()> {
    writeln!(
        out,
        "{} (phases {})\nHPA {}\n",
        assumptions(scenario),
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
            "{:>7.1} {:>6} {:>8} {:>7.0} {:>9} {:>10}",
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
    Ok(())
}

fn print_spread(
    out: &mut impl Write,
    spec: &Spec,
    scenario: &Scenario,
    steps: u16,
) -> anyhow::Result<()> {
    let Some(spread) = over_phases(spec, scenario, usize::from(steps)) else {
        writeln!(
            out,
            "drain over clock phases: no run drained within the horizon"
        )?;
        return Ok(());
    };
    let undrained = if spread.undrained > 0 {
        format!("; {} runs never drained", spread.undrained)
    } else {
        String::new()
    };
    writeln!(
        out,
        "drain over {} clock phases: best {:.0} s (--phase {}), median {:.0} s, worst {:.0} s (--phase {}){undrained}",
        spread.runs, spread.best.0, spread.best.1, spread.median, spread.worst.0, spread.worst.1,
    )?;
    Ok(())
}
