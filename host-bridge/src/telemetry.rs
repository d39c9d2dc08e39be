//! Logging setup: `tracing` to stderr, as text or JSON (`LOG_FORMAT=json`),
//! filtered by `RUST_LOG` (default `info`), with no credential at any level.

use tracing::{Level, Metadata};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{EnvFilter, FilterExt, filter_fn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::LogFormat;

/// The crates whose trace output holds AMQP frames.
const FRAME_LOGGERS: [&str; 2] = ["lapin", "amq_protocol"];

/// Whether an event may be logged whatever `RUST_LOG` says. lapin logs the
/// frames it queues and handles at TRACE, among them `Connection.StartOk`,
/// whose SASL PLAIN response is `\0user\0password` printed as a byte list
/// (no grep for the password finds it), and the jobs' bodies. So its TRACE
/// level and amq-protocol's are never logged; their DEBUG and above hold
/// no frames and still are.
pub fn may_log(metadata: &Metadata<'_>) -> bool {
    *metadata.level() < Level::TRACE
        || !FRAME_LOGGERS
            .iter()
            .any(|c| metadata.target().split("::").next() == Some(c))
}

/// Installs the global subscriber. Call once, from `main`.
pub fn init(format: LogFormat) {
    let env = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let filter = env.and(filter_fn(may_log));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry();
    match format {
        LogFormat::Text => registry.with(fmt.with_filter(filter)).init(),
        LogFormat::Json => registry.with(fmt.json().with_filter(filter)).init(),
    }
}
