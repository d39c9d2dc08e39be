//! host-bridge's entry point: parse the config, start logging, run until
//! SIGTERM or Ctrl-C. Everything else is in the library.

use std::process::ExitCode;

use host_bridge::{BridgeError, Config, shutdown, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    // A flag or variable that does not parse is a bad setting like any
    // other: one line, exit 64 (the workspace's contract, `cli-contract`).
    let config: Config = cli_contract::parse("host-bridge");
    // An empty endpoint is unset, as the OpenTelemetry specification says.
    let endpoint = config
        .otlp_endpoint
        .as_deref()
        .filter(|e| !e.trim().is_empty());
    let telemetry = match telemetry::init(config.log_format, endpoint) {
        Ok(telemetry) => telemetry,
        Err(e) => return cli_contract::usage("host-bridge", e),
    };
    let result = host_bridge::run(config, shutdown::signal()).await;
    // After the drain: the last jobs' spans go out before the exit.
    drop(telemetry);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ BridgeError::Config(_)) => cli_contract::usage("host-bridge", e),
        Err(e) => cli_contract::failure("host-bridge", &e.into()),
    }
}
