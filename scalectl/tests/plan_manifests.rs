//! `scalectl plan` on the repo's own HPA reproduces what the HPA's comments
//! claim, and its chart is a well-formed SVG with both series.

use std::path::Path;

use scalectl::hpa::Spec;
use scalectl::plan::{Scenario, plan};

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

#[test]
fn our_hpa_drains_a_300_job_burst_as_its_comment_claims() -> anyhow::Result<()> {
    let path = Path::new(ROOT).join("manifests/hpa.yaml");
    let spec = Spec::from_hpa(&scalectl::read_hpa(&path)?)?;
    let text = std::fs::read_to_string(&path)?;
    // "...so the burst drains in about 110-120 s; the physical lower bound
    // with 20 workers is ceil(300/20) * 5 s = 75 s."
    let claim = text
        .split("drains in about ")
        .nth(1)
        .and_then(|s| s.split(" s").next())
        .expect("a drain claim");
    let (low, high) = claim.split_once('-').expect("a range");
    let (low, high): (f64, f64) = (low.trim().parse()?, high.trim().parse()?);
    let result = plan(
        &spec,
        &Scenario {
            burst: 300,
            ..Scenario::default()
        },
    );
    let drain = result.drain_time.expect("the burst drains");
    println!(
        "plan: drained in {drain} s, claim {low}-{high} s, lower bound {} s",
        result.lower_bound
    );
    assert!(
        (low..=high).contains(&drain),
        "drained in {drain} s; hpa.yaml claims {low}-{high} s"
    );
    assert_eq!(result.peak_replicas, spec.max);
    assert!(
        text.contains(&format!("= {} s", result.lower_bound)),
        "the lower bound in the comment"
    );
    Ok(())
}

#[test]
fn the_chart_is_well_formed_svg_with_both_series() -> anyhow::Result<()> {
    let spec = Spec::from_hpa(&scalectl::read_hpa(
        &Path::new(ROOT).join("manifests/hpa.yaml"),
    )?)?;
    let result = plan(
        &spec,
        &Scenario {
            burst: 60,
            ..Scenario::default()
        },
    );
    let svg = scalectl::chart::plan_svg(&result, "test")?;
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    for label in [
        "queue depth (ready + unacked)",
        "metric the HPA saw",
        "replicas",
        "physical lower bound",
        "drained:",
    ] {
        assert!(svg.contains(label), "legend {label} missing");
    }
    // The chart runs until the scale-down back to min.
    assert_eq!(
        result.timeline.last().map(|t| t.replicas),
        Some(spec.min),
        "the timeline ends at min replicas"
    );
    // Each series is drawn from every tick of the plan: three lines of
    // exactly `timeline.len()` points, and no two alike.
    let lines: Vec<Vec<&str>> = svg
        .split("<polyline")
        .skip(1)
        .filter_map(|element| {
            let points = element.split("points=\"").nth(1)?.split('"').next()?;
            Some(points.split_whitespace().collect())
        })
        .filter(|points: &Vec<&str>| points.len() == result.timeline.len())
        .collect();
    assert_eq!(
        lines.len(),
        3,
        "three series of {} points",
        result.timeline.len()
    );
    assert!(lines[0] != lines[1] && lines[1] != lines[2] && lines[0] != lines[2]);
    Ok(())
}

/// `scalectl plan` itself, on our HPA: it prints the spread over phases,
/// and refuses phases and sweep sizes that make no sense, with one line and
/// a non-zero exit, before simulating anything.
#[test]
fn the_plan_command_prints_the_spread_and_refuses_bad_phases() -> anyhow::Result<()> {
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_scalectl"))
            .arg("plan")
            .args(args)
            .current_dir(ROOT)
            .output()
    };
    let ok = run(&[])?;
    assert!(ok.status.success());
    let stdout = String::from_utf8(ok.stdout)?;
    assert!(stdout.starts_with("assumptions:"), "{stdout}");
    assert!(
        stdout.contains("drain over 125 clock phases: best"),
        "{stdout}"
    );
    for (args, says) in [
        (
            &["--phase", "0,20,0"][..],
            "scrape phase (20 s) must be below its period",
        ),
        (&["--phase", "1,2"][..], "want three phases"),
        (&["--phase-steps", "1000"][..], "1000 is not in 1..=20"),
    ] {
        let refused = run(args)?;
        let stderr = String::from_utf8(refused.stderr)?;
        assert!(!refused.status.success(), "{args:?}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(refused.stdout.is_empty(), "{args:?}: nothing simulated");
    }
    Ok(())
}

/// `scalectl plan | head -1`, at its worst: the reader is gone before
/// plan writes a byte. plan ends quietly with success, not with a panic
/// about a broken pipe (exit 101).
#[test]
fn a_reader_that_leaves_early_ends_the_plan_quietly() -> anyhow::Result<()> {
    let (reader, writer) = std::io::pipe()?;
    drop(reader);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_scalectl"))
        .args(["plan", "--phase-steps", "1"])
        .current_dir(ROOT)
        .stdout(writer)
        .output()?;
    let stderr = String::from_utf8(out.stderr)?;
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
    Ok(())
}

/// The two exactness cases on our own HPA. At --phase 0,0,2.4 the
/// syncs fall at 2.4 + 15k s; the 1 -> 5 scale-up at 17.4 s is exactly
/// 15 s old at 32.4 s and out of the policies' period, so upstream goes to
/// 10 there (with float time, 174 x 0.1 = 17.400000000000002 kept it in,
/// held 5, and drained in 126 s).
#[test]
fn a_fractional_sync_phase_counts_windows_exactly() -> anyhow::Result<()> {
    let spec = Spec::from_hpa(&scalectl::read_hpa(
        &Path::new(ROOT).join("manifests/hpa.yaml"),
    )?)?;
    let scenario = Scenario {
        phases: "0,0,2.4".parse().map_err(anyhow::Error::msg)?,
        ..Scenario::default()
    };
    let result = plan(&spec, &scenario);
    let replicas: Vec<(f64, i32)> = result
        .ticks
        .iter()
        .take(4)
        .map(|t| (t.t, t.replicas))
        .collect();
    assert_eq!(replicas, [(2.4, 1), (17.4, 5), (32.4, 10), (47.4, 20)]);
    // "drained at 116 s" as plan prints it.
    assert_eq!(result.drain_time, Some(116.4));
    Ok(())
}

/// A target of 1.4 and 21 messages: 21000 / 1400 = 15 replicas, as
/// upstream divides milli-units, not (21 / 1.4).ceil() = 16.
#[test]
fn a_fractional_target_divides_in_milli_units() -> anyhow::Result<()> {
    let text = std::fs::read_to_string(Path::new(ROOT).join("manifests/hpa.yaml"))?;
    let hpa =
        serde_yaml_ng::from_str(&text.replace("averageValue: \"5\"", "averageValue: \"1.4\""))?;
    let spec = Spec::from_hpa(&hpa)?;
    assert_eq!(spec.target.to_string(), "averageValue 1.4");
    // 21 jobs that outlast the plan's first minute: the metric reads 21 at
    // every sync from 15 s, and the fleet grows 1 -> 5 -> 10 -> 15.
    let scenario = Scenario {
        burst: 21,
        service_time: 1000.0,
        ..Scenario::default()
    };
    let result = plan(&spec, &scenario);
    let seen: Vec<(f64, i32)> = result
        .ticks
        .iter()
        .take(5)
        .map(|t| (t.metric, t.replicas))
        .collect();
    assert_eq!(
        seen,
        [(0.0, 1), (21.0, 5), (21.0, 10), (21.0, 15), (21.0, 15)]
    );
    assert_eq!(result.peak_replicas, 15);
    Ok(())
}
