//! The command-line contract (crate `cli-contract`), on the real binary:
//! a bad flag or setting is one line and exit 64; `--help` and `--version`
//! exit 0.

use std::process::Command;

const BINARY: &str = env!("CARGO_BIN_EXE_bench");

fn run(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let mut command = Command::new(BINARY);
    // Set by `make test` for the other tests; some cases here need it unset.
    command.args(args).env_remove("WASMTIME").env_remove("TAG");
    for (k, v) in env {
        command.env(k, v);
    }
    let output = command.output().expect("the binary runs");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_bad_flag_or_setting_exits_64_with_one_line() {
    for (args, env, names) in [
        (&["--count", "many"][..], &[][..], "--count"),
        (&["--bogus"][..], &[][..], "--bogus"),
        // The full run needs wasmtime-cli: caught after parsing, still 64.
        (&[][..], &[][..], "--wasmtime"),
        (&["--runs=-1"][..], &[][..], "--runs"),
    ] {
        let (code, _, stderr) = run(args, env);
        println!("{args:?} {env:?}: exit {code:?}: {stderr}");
        assert_eq!(code, Some(64), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("bench: "), "{stderr}");
        assert!(stderr.contains(names), "{args:?}: {stderr}");
    }
}

#[test]
fn help_and_version_exit_0() {
    for flag in ["--help", "--version"] {
        let (code, stdout, _) = run(&[flag], &[]);
        assert_eq!(code, Some(0), "{flag}");
        assert!(!stdout.is_empty(), "{flag}");
    }
}
