//! `scalectl tune` finds settings that meet a goal, and those settings,
//! re-simulated one plan at a time (and read back from the YAML it
//! writes), meet it at every clock phase of the grid.

use std::path::Path;
use std::process::Command;

use scalectl::hpa::Spec;
use scalectl::plan::{Scenario, phase_grid, plan};
use scalectl::tune::{Goal, Search, TuneError, apply, evaluate, tune};

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

fn our_hpa() -> anyhow::Result<(
    k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler,
    Spec,
)> {
    let hpa = scalectl::read_hpa(&Path::new(ROOT).join("manifests/hpa.yaml"))?;
    let spec = Spec::from_hpa(&hpa)?;
    Ok((hpa, spec))
}

/// A small search, so that the debug build runs it in seconds.
fn search() -> Search {
    Search {
        max_replicas_limit: 40,
        search_steps: 2,
        verify_steps: 3,
        results: 3,
    }
}

/// Every plan of the verification grid, run one by one: the worst drain
/// and the worst wait.
fn resimulate(spec: &Spec, scenario: &Scenario, steps: usize) -> (f64, f64) {
    let (mut drain, mut wait) = (0.0f64, 0.0f64);
    for phases in phase_grid(scenario, steps) {
        let run = plan(
            spec,
            &Scenario {
                phases,
                ..scenario.clone()
            },
        );
        drain = drain.max(run.drain_time.unwrap_or(f64::INFINITY));
        wait = wait.max(run.max_wait.unwrap_or(f64::INFINITY));
    }
    (drain, wait)
}

#[test]
fn a_drain_goal_our_hpa_misses_is_met_and_written() -> anyhow::Result<()> {
    let (mut hpa, ours) = our_hpa()?;
    let scenario = Scenario::default();
    let goal = Goal::Drain(100.0);
    let search = search();
    let own = evaluate(&ours, &scenario, search.verify_steps);
    assert!(
        !own.meets(&[goal]),
        "our HPA drains 300 jobs in 100 s? {own:?}"
    );

    let found = tune(&ours, &scenario, &[goal], &search)?;
    let best = &found[0];
    println!("tune: drain=100s -> {} ({:?})", best.spec, best.outcome);
    let (drain, _) = resimulate(&best.spec, &scenario, search.verify_steps);
    assert!(drain <= 100.0, "re-simulated drain {drain} s");
    assert_eq!(Some(drain), best.outcome.worst_drain);
    // Cheapest first.
    for pair in found.windows(2) {
        assert!(pair[0].outcome.extra_pod_seconds <= pair[1].outcome.extra_pod_seconds);
    }

    // The YAML it writes reads back as the same HPA, and meets the goal.
    apply(&best.spec, &mut hpa)?;
    let path = std::env::temp_dir().join(format!("tune-{}.yaml", std::process::id()));
    std::fs::write(&path, serde_yaml_ng::to_string(&hpa)?)?;
    let back = Spec::from_hpa(&scalectl::read_hpa(&path)?)?;
    std::fs::remove_file(&path)?;
    assert_eq!(back, best.spec);
    assert!(resimulate(&back, &scenario, search.verify_steps).0 <= 100.0);
    Ok(())
}

#[test]
fn a_wait_goal_for_a_steady_rate_is_met_at_no_more_cost_than_ours() -> anyhow::Result<()> {
    let (_, ours) = our_hpa()?;
    // 3 jobs/s for 5 minutes: 15 busy workers at 5 s a job.
    let scenario = Scenario {
        burst: 0,
        rate: 3.0,
        rate_duration: 300.0,
        ..Scenario::default()
    };
    let goal = Goal::Wait(60.0);
    let search = search();
    let found = tune(&ours, &scenario, &[goal], &search)?;
    let best = &found[0];
    println!("tune: wait=60s -> {} ({:?})", best.spec, best.outcome);
    let (_, wait) = resimulate(&best.spec, &scenario, search.verify_steps);
    assert!(wait <= 60.0, "re-simulated wait {wait} s");
    // Our HPA meets this goal too, and is itself a candidate: the result
    // costs no more.
    let own = evaluate(&ours, &scenario, search.verify_steps);
    assert!(own.meets(&[goal]), "{own:?}");
    assert!(best.outcome.extra_pod_seconds <= own.extra_pod_seconds);
    Ok(())
}

#[test]
fn two_goals_at_once_and_an_impossible_one() -> anyhow::Result<()> {
    let (_, ours) = our_hpa()?;
    let scenario = Scenario {
        burst: 120,
        ..Scenario::default()
    };
    let goals = [Goal::Drain(90.0), Goal::Wait(60.0)];
    let found = tune(&ours, &scenario, &goals, &search())?;
    let (drain, wait) = resimulate(&found[0].spec, &scenario, search().verify_steps);
    assert!(drain <= 90.0 && wait <= 60.0, "{drain} s, {wait} s");

    // 120 jobs of 5 s on at most 40 workers take at least 15 s.
    match tune(&ours, &scenario, &[Goal::Drain(10.0)], &search()) {
        Err(e @ TuneError::Unreachable { .. }) => {
            let text = e.to_string();
            assert!(text.contains("in under 15 s"), "{text}");
        }
        other => panic!("a 10 s drain: {other:?}"),
    }
    assert!(matches!(
        tune(&ours, &scenario, &[], &search()),
        Err(TuneError::NoGoal)
    ));
    Ok(())
}

#[test]
fn the_cli_writes_the_hpa_and_fails_in_one_line() -> anyhow::Result<()> {
    let bin = env!("CARGO_BIN_EXE_scalectl");
    let out_path = std::env::temp_dir().join(format!("tune-cli-{}.yaml", std::process::id()));
    let hpa = Path::new(ROOT).join("manifests/hpa.yaml");
    let run = |extra: &[&str]| {
        Command::new(bin)
            .args(["tune", "--hpa"])
            .arg(&hpa)
            .args([
                "--burst",
                "60",
                "--phase-steps",
                "2",
                "--max-replicas-limit",
                "20",
            ])
            .args(extra)
            .output()
    };
    let ok = run(&["--goal", "drain=60s", "--write", out_path.to_str().unwrap()])?;
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(
        stdout.contains("current") && stdout.contains("#1"),
        "{stdout}"
    );
    let written = std::fs::read_to_string(&out_path)?;
    std::fs::remove_file(&out_path)?;
    assert!(
        written.starts_with("# Written by `scalectl tune`"),
        "{written}"
    );
    let spec = Spec::from_hpa(&serde_yaml_ng::from_str(&written)?)?;
    assert!(spec.max <= 20);

    // A wait goal names the metric that watches it in production.
    let waits = run(&["--goal", "wait=60s"])?;
    let stdout = String::from_utf8_lossy(&waits.stdout);
    assert!(waits.status.success(), "{stdout}");
    assert!(
        stdout.contains("watch in production: host_bridge_job_queue_wait_seconds"),
        "{stdout}"
    );

    let impossible = run(&["--goal", "drain=1s"])?;
    assert_eq!(impossible.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&impossible.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("scalectl: no setting"), "{stderr}");

    // A bad flag is a bad setting: one line naming it, exit 64 (EX_USAGE),
    // not clap's usage block and exit 2.
    let bad = run(&["--goal", "latency=5s"])?;
    assert_eq!(bad.status.code(), Some(64), "clap refuses a bad goal");
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("--goal") && stderr.contains("the goals are drain and wait"),
        "{stderr}"
    );
    Ok(())
}
