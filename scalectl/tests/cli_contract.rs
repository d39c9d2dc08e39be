//! scalectl's exit contract, as every binary of the project keeps it:
//! `--help`/`--version` exit 0; a bad flag or setting is one line naming
//! it and exit 64 (EX_USAGE); an HPA the API server would refuse is a bad
//! setting too, refused before anything is simulated.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

fn scalectl(args: &[&str]) -> std::io::Result<Output> {
    Command::new(env!("CARGO_BIN_EXE_scalectl"))
        .args(args)
        .current_dir(ROOT)
        .output()
}

/// Our HPA with one edit, written to a file of its own.
fn edited_hpa(name: &str, from: &str, to: &str) -> anyhow::Result<PathBuf> {
    let text = std::fs::read_to_string(Path::new(ROOT).join("manifests/hpa.yaml"))?;
    anyhow::ensure!(text.contains(from), "{from:?} not in hpa.yaml");
    let path = std::env::temp_dir().join(format!("scalectl-{name}-{}.yaml", std::process::id()));
    std::fs::write(&path, text.replacen(from, to, 1))?;
    Ok(path)
}

/// Asserts exit 64, one line on stderr containing `says`, nothing on stdout.
fn assert_refused(out: &Output, says: &str, what: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{what}: {stderr}");
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "{what}: one line: {stderr}"
    );
    assert!(stderr.starts_with("scalectl: "), "{what}: {stderr}");
    assert!(stderr.contains(says), "{what}: {stderr}");
    assert!(out.stdout.is_empty(), "{what}: nothing simulated");
}

#[test]
fn help_and_version_exit_0() -> anyhow::Result<()> {
    for args in [&["--help"][..], &["--version"], &["plan", "--help"]] {
        let out = scalectl(args)?;
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert!(!out.stdout.is_empty(), "{args:?} prints");
    }
    Ok(())
}

#[test]
fn a_bad_flag_is_one_line_and_exit_64() -> anyhow::Result<()> {
    for (args, says) in [
        (&["plan", "--bogus"][..], "--bogus"),
        (&["plan", "--burst", "many"], "--burst"),
        (&["watch", "--interval", "inf"], "--interval"),
        (
            &["plan", "--kubernetes-version", "2.0"],
            "--kubernetes-version",
        ),
        (
            &["plan", "--feature-gates", "HPAConfigurableTolerance=true"],
            "1.30",
        ),
        (
            &["plan", "--phase", "0,20,0"],
            "scrape phase (20 s) must be below",
        ),
        (&[], "a subcommand or argument is missing"),
    ] {
        assert_refused(&scalectl(args)?, says, &format!("{args:?}"));
    }
    Ok(())
}

#[test]
fn specs_the_api_server_refuses_are_refused() -> anyhow::Result<()> {
    for (name, from, to, says) in [
        (
            "max0",
            "maxReplicas: 20",
            "maxReplicas: 0",
            "spec.maxReplicas: Invalid value: 0",
        ),
        (
            "minneg",
            "minReplicas: 1",
            "minReplicas: -2",
            "spec.minReplicas: Invalid value: -2",
        ),
        (
            "min3",
            "minReplicas: 1\n  maxReplicas: 20",
            "minReplicas: 3\n  maxReplicas: 1",
            "must be greater than or equal to `minReplicas`",
        ),
        ("min0", "minReplicas: 1", "minReplicas: 0", "HPAScaleToZero"),
        (
            "window",
            "stabilizationWindowSeconds: 120",
            "stabilizationWindowSeconds: 4000",
            "3600",
        ),
    ] {
        let path = edited_hpa(name, from, to)?;
        let out = scalectl(&[
            "plan",
            "--phase-steps",
            "1",
            "--hpa",
            path.to_str().unwrap(),
        ])?;
        std::fs::remove_file(&path)?;
        assert_refused(&out, says, name);
    }
    // A per-direction tolerance: ignored, with a warning, before 1.33 (the
    // default, the floor) and with the gate off; applied from 1.35.
    let path = edited_hpa(
        "tolerance",
        "stabilizationWindowSeconds: 0",
        "stabilizationWindowSeconds: 0\n      tolerance: 50m",
    )?;
    let file = path.to_str().unwrap();
    for (version, warns) in [
        ("1.30", "has no such field"),
        ("1.33", "HPAConfigurableTolerance is off"),
        ("1.35", ""),
    ] {
        let out = scalectl(&[
            "plan",
            "--phase-steps",
            "1",
            "--kubernetes-version",
            version,
            "--hpa",
            file,
        ])?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{version}: {stderr}");
        if warns.is_empty() {
            assert!(stderr.is_empty(), "{version}: {stderr}");
        } else {
            assert!(
                stderr.contains(warns) && stderr.lines().count() == 1,
                "{version}: {stderr}"
            );
        }
    }
    std::fs::remove_file(&path)?;
    // minReplicas 0 with the gate on is a valid HPA: planned.
    let path = edited_hpa("min0-gated", "minReplicas: 1", "minReplicas: 0")?;
    let out = scalectl(&[
        "plan",
        "--phase-steps",
        "1",
        "--feature-gates",
        "HPAScaleToZero=true",
        "--hpa",
        path.to_str().unwrap(),
    ])?;
    std::fs::remove_file(&path)?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[test]
fn the_assumptions_name_the_tolerance_rule() -> anyhow::Result<()> {
    for (version, says) in [
        (
            "1.30",
            "Kubernetes 1.30 (the project's floor): tolerance |1 - ratio| <= 0.1",
        ),
        (
            "1.33",
            "behavior.*.tolerance ignored (HPAConfigurableTolerance off)",
        ),
        ("1.35", "tolerance per direction from behavior.*.tolerance"),
    ] {
        let out = scalectl(&[
            "plan",
            "--phase-steps",
            "1",
            "--kubernetes-version",
            version,
        ])?;
        assert!(out.status.success(), "{version}");
        let stdout = String::from_utf8(out.stdout)?;
        let first = stdout.lines().next().unwrap_or_default();
        assert!(
            first.starts_with("assumptions:") && first.contains(says),
            "{version}: {first}"
        );
    }
    Ok(())
}
