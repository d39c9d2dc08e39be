//! The command-line contract every binary of the workspace keeps, so that a
//! script or a Kubernetes pod can tell a bad setting from a failure:
//!
//! | what | output | exit |
//! |---|---|---|
//! | `--help`, `--version` | clap's text, on stdout | 0 |
//! | a flag or setting that is bad, caught by clap or after | one line on stderr, `<binary>: <what is wrong>` | 64 (`EX_USAGE`, sysexits(3)) |
//! | a failure while running | one line on stderr, the error and its causes joined by `: ` | 1 |
//!
//! A binary's `main` calls [`parse`] for its arguments, and returns
//! [`usage`] or [`failure`] for its errors. This crate owns only that
//! contract; each binary's settings and errors stay its own.

use std::fmt::Display;
use std::process::ExitCode;

use clap::error::ErrorKind;

/// EX_USAGE: a configuration error, as sysexits(3) defines it.
pub const EX_USAGE: u8 = 64;

/// Parses the process's arguments (and environment mirrors) as `T`. Help and
/// version are printed and exit 0; any other clap error is printed as one
/// line and exits 64.
pub fn parse<T: clap::Parser>(binary: &str) -> T {
    match T::try_parse() {
        Ok(parsed) => parsed,
        Err(e) => exit_on(binary, &e),
    }
}

/// Like [`parse`], from an explicit argument list (the first is the binary).
pub fn parse_from<T, I, A>(binary: &str, args: I) -> T
where
    T: clap::Parser,
    I: IntoIterator<Item = A>,
    A: Into<std::ffi::OsString> + Clone,
{
    match T::try_parse_from(args) {
        Ok(parsed) => parsed,
        Err(e) => exit_on(binary, &e),
    }
}

fn exit_on(binary: &str, error: &clap::Error) -> ! {
    match error.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = error.print();
            std::process::exit(0);
        }
        // clap would print the whole help here, on stderr, exit 2.
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            eprintln!("{binary}: a subcommand or argument is missing (see --help)");
        }
        _ => eprintln!("{binary}: {}", one_line(error)),
    }
    std::process::exit(EX_USAGE.into());
}

/// A clap error as one line, without the `error:` prefix or the pointer to
/// `--help`: e.g. "invalid value 'bogus' for '--roles <ROLES>' [possible
/// values: publish, consume, ingress]".
pub fn one_line(error: &clap::Error) -> String {
    error
        .render()
        .to_string()
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty() && !l.starts_with("For more information") && !l.starts_with("Usage:")
        })
        .map(|l| l.strip_prefix("error: ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A bad setting caught after parsing: prints `<binary>: <error>` on one
/// line and returns exit 64.
pub fn usage(binary: &str, error: impl Display) -> ExitCode {
    eprintln!("{binary}: {}", flatten(&error.to_string()));
    ExitCode::from(EX_USAGE)
}

/// A failure while running: prints `<binary>: <error>: <cause>: …` on one
/// line and returns exit 1.
pub fn failure(binary: &str, error: &anyhow::Error) -> ExitCode {
    eprintln!("{binary}: {}", flatten(&format!("{error:#}")));
    ExitCode::FAILURE
}

/// One line: a message that spans several (a cause quoting a file, say) is
/// joined with spaces.
fn flatten(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    #[command(name = "t", version)]
    struct Args {
        /// A number.
        #[arg(long)]
        n: u32,
    }

    #[test]
    fn a_clap_error_is_one_line_without_the_usage() {
        let e = Args::try_parse_from(["t", "--n", "x"]).unwrap_err();
        let line = one_line(&e);
        assert!(!line.contains('\n'), "{line}");
        assert!(line.contains("--n"), "{line}");
        assert!(!line.contains("Usage"), "{line}");
        let e = Args::try_parse_from(["t", "--bogus"]).unwrap_err();
        assert!(one_line(&e).contains("--bogus"));
    }

    #[test]
    fn causes_are_joined_on_one_line() {
        assert_eq!(flatten("a\n  b\n\nc"), "a b c");
    }
}

/// The contract's own checks, for each binary's tests to run on the real
/// executable (`env!("CARGO_BIN_EXE_<name>")`).
pub mod check {
    use std::path::Path;
    use std::process::Command;

    /// Runs `binary` with `args` and `env` (with `unset` removed from the
    /// environment): its exit code, stdout and stderr.
    pub fn run(
        binary: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        unset: &[&str],
    ) -> (Option<i32>, String, String) {
        let mut command = Command::new(binary);
        command.args(args);
        for name in unset {
            command.env_remove(name);
        }
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

    /// One bad setting: the arguments, the environment, and a word the
    /// one line must name.
    pub type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);

    /// Each case exits 64 with one line on stderr, `<name>: …`; `unset` is
    /// removed from the environment of every run. Panics with the case
    /// otherwise.
    pub fn bad_settings_exit_64(binary: &Path, name: &str, unset: &[&str], cases: &[Case<'_>]) {
        for (args, env, names) in cases {
            let (code, _, stderr) = run(binary, args, env, unset);
            println!("{args:?} {env:?}: exit {code:?}: {stderr}");
            assert_eq!(code, Some(super::EX_USAGE.into()), "{args:?}: {stderr}");
            assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
            assert!(stderr.starts_with(&format!("{name}: ")), "{stderr}");
            assert!(stderr.contains(names), "{args:?}: {stderr}");
        }
    }

    /// `--help` and `--version` exit 0 with their text on stdout.
    pub fn help_and_version_exit_0(binary: &Path) {
        for flag in ["--help", "--version"] {
            let (code, stdout, _) = run(binary, &[flag], &[], &[]);
            assert_eq!(code, Some(0), "{flag}");
            assert!(!stdout.is_empty(), "{flag}");
        }
    }
}
