//! The command-line contract (crate `cli-contract`), on the real binary:
//! a bad flag or setting is one line and exit 64; `--help` and `--version`
//! exit 0.

use std::path::Path;

use cli_contract::check;

const BINARY: &str = env!("CARGO_BIN_EXE_bench");

#[test]
fn a_bad_flag_or_setting_exits_64_with_one_line() {
    // `make test` sets WASMTIME for the other tests; the last case needs it unset.
    check::bad_settings_exit_64(
        Path::new(BINARY),
        "bench",
        &["WASMTIME"],
        &[
            (&["--count", "many"][..], &[][..], "--count"),
            (&["--bogus"][..], &[][..], "--bogus"),
            (&["--runs=-1"][..], &[][..], "--runs"),
            // The full run needs wasmtime-cli: caught after parsing, still 64.
            (&[][..], &[][..], "--wasmtime"),
        ],
    );
}

#[test]
fn help_and_version_exit_0() {
    check::help_and_version_exit_0(Path::new(BINARY));
}
