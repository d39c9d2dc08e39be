//! host-bridge's entry point: parse the config, start logging, run until
//! SIGTERM or Ctrl-C. Everything else is in the library.

use std::process::ExitCode;

use clap::Parser;
use host_bridge::{BridgeError, Config, shutdown, telemetry};

/// EX_USAGE: a configuration error, as sysexits(3) defines it.
const EX_USAGE: u8 = 64;

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
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
