//! host-bridge's entry point: parse the config, start logging, run until
//! SIGTERM or Ctrl-C. Everything else is in the library.

use std::process::ExitCode;

use clap::Parser;
use clap::error::ErrorKind;
use host_bridge::{BridgeError, Config, shutdown, telemetry};

/// EX_USAGE: a configuration error, as sysexits(3) defines it.
const EX_USAGE: u8 = 64;

#[tokio::main]
async fn main() -> ExitCode {
    let config = match Config::try_parse() {
        Ok(config) => config,
        // Asked for: printed in full, and a success.
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        // A flag or variable that does not parse is a bad setting like any
        // other: one line, exit 64, not clap's usage text and exit 2.
        Err(e) => {
            eprintln!("host-bridge: {}", host_bridge::config::one_line(&e));
            return ExitCode::from(EX_USAGE);
        }
    };
    telemetry::init(config.log_format);
    match host_bridge::run(config, shutdown::signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ BridgeError::Config(_)) => {
            eprintln!("host-bridge: {e}");
            ExitCode::from(EX_USAGE)
        }
        Err(e) => {
            eprintln!("host-bridge: {:#}", anyhow::Error::from(e));
            ExitCode::FAILURE
        }
    }
}
