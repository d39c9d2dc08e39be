//! `scalectl tune`: the search's table, and the cheapest setting written
//! back as the HPA's YAML on request.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;

use super::{ScenarioArgs, assumptions, show};
use crate::hpa::Spec;
use crate::plan::{Phases, Scenario};
use crate::tune::{Candidate, Goal, Outcome, Search, evaluate, tune};

#[derive(clap::Args)]
pub(super) struct TuneArgs {
    #[command(flatten)]
    scenario: ScenarioArgs,
    /// What the load must see, at every clock phase: `drain=120s` (every
    /// job done within 120 s of the burst) or `wait=60s` (every job started
    /// within 60 s of arriving). Repeat for several.
    #[arg(
        long = "goal",
        env = "SCALECTL_GOAL",
        value_delimiter = ',',
        required = true
    )]
    goals: Vec<Goal>,
    /// The largest maxReplicas to consider.
    #[arg(long, env = "SCALECTL_MAX_REPLICAS_LIMIT", default_value_t = 100,
          value_parser = clap::value_parser!(i32).range(1..=1000))]
    max_replicas_limit: i32,
    /// How many settings to list, cheapest first.
    #[arg(long, env = "SCALECTL_TOP", default_value_t = 5,
          value_parser = clap::value_parser!(u16).range(1..=50))]
    top: u16,
    /// Write the cheapest setting here, as the HPA file with its target,
    /// maxReplicas and behavior replaced.
    #[arg(long, env = "SCALECTL_WRITE")]
    write: Option<PathBuf>,
}

pub(super) fn run(args: TuneArgs) -> anyhow::Result<()> {
    let cluster = args.scenario.cluster()?;
    let (mut hpa, spec) = args.scenario.spec(&cluster)?;
    let scenario = args.scenario.scenario(Phases::default(), cluster)?;
    let search = Search {
        max_replicas_limit: args.max_replicas_limit,
        verify_steps: usize::from(args.scenario.phase_steps),
        results: usize::from(args.top),
        ..Search::default()
    };
    let goals: Vec<String> = args.goals.iter().map(Goal::to_string).collect();
    // Written, not println!: a closed pipe (`| head`) ends the command
    // quietly instead of panicking.
    let mut out = std::io::stdout().lock();
    print_header(&mut out, &goals, &scenario, search.verify_steps)?;
    let own = evaluate(&spec, &scenario, search.verify_steps);
    let meets = own.meets(&args.goals);
    writeln!(
        out,
        "{}",
        row(if meets { "current" } else { "current*" }, &spec, &own)
    )?;
    let found = tune(&spec, &scenario, &args.goals, &search)?;
    for (i, Candidate { spec, outcome }) in found.iter().enumerate() {
        writeln!(out, "{}", row(&format!("#{}", i + 1), spec, outcome))?;
    }
    if !meets {
        writeln!(
            out,
            "\n* the current HPA ({}) misses the goal",
            args.scenario.pipeline.hpa.display()
        )?;
    }
    // The goal tuned for is the one to watch: name it as production has it.
    for goal in &args.goals {
        if let Goal::Wait(seconds) = goal {
            writeln!(
                out,
                "\nwatch in production: {} (publish to first push), quantiles recorded as \
                 namespace:{}:p95/p99 by manifests/base/monitoring.yaml; alert when p99 passes {seconds} s",
                crate::tune::WAIT_METRIC,
                crate::tune::WAIT_METRIC,
            )?;
        }
    }
    let Some(path) = &args.write else {
        return Ok(());
    };
    crate::tune::apply(&found[0].spec, &mut hpa)?;
    let header = format!(
        "# Written by `scalectl tune` from {}: {}.\n# {}.\n",
        args.scenario.pipeline.hpa.display(),
        goals.join("; "),
        assumptions(&scenario)
    );
    std::fs::write(path, header + &serde_yaml_ng::to_string(&hpa)?)
        .with_context(|| format!("writing {}", path.display()))?;
    writeln!(out, "\nwrote #1 to {}", path.display())?;
    Ok(())
}

fn print_header(
    out: &mut impl Write,
    goals: &[String],
    scenario: &Scenario,
    steps: usize,
) -> std::io::Result<()> {
    writeln!(out, "goal: {}", goals.join("; "))?;
    writeln!(out, "{}", assumptions(scenario))?;
    writeln!(
        out,
        "figures: worst over {} clock phases; pod-seconds above min, their mean\n",
        steps.pow(3)
    )?;
    writeln!(
        out,
        "{:<9} {:>7} {:>4} {:>6} {:>6} {:>9}  HPA",
        "", "target", "max", "drain", "wait", "pod-s"
    )
}

/// One setting's line of the table.
fn row(name: &str, spec: &Spec, o: &Outcome) -> String {
    format!(
        "{name:<9} {:>7} {:>4} {:>6} {:>6} {:>9}  {}",
        spec.target.value().to_string(),
        spec.max,
        show(o.worst_drain),
        show(o.worst_wait),
        format!("{:.0}", o.extra_pod_seconds),
        spec,
    )
}
