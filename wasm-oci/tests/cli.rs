//! The command-line contract (crate `cli-contract`), on the real binary:
//! a bad flag or setting is one line and exit 64; `--help` and `--version`
//! exit 0.

use std::path::Path;

use cli_contract::check;

const BINARY: &str = env!("CARGO_BIN_EXE_wasm-oci");

#[test]
fn a_bad_flag_or_setting_exits_64_with_one_line() {
    check::bad_settings_exit_64(
        Path::new(BINARY),
        "wasm-oci",
        &["TAG"],
        &[
            (&["--bogus"][..], &[][..], "--bogus"),
            (&[][..], &[][..], "required"),
            (&["a.wasm", "out", "--tag"][..], &[][..], "--tag"),
        ],
    );
}

#[test]
fn help_and_version_exit_0() {
    check::help_and_version_exit_0(Path::new(BINARY));
}
