//! Logs and traces.
//!
//! Logs: `tracing` to stderr, as text or JSON (`LOG_FORMAT=json`), filtered
//! by `RUST_LOG` (default `info`), with no credential at any level.
//!
//! Traces: W3C trace context (`traceparent`, `tracestate`) is carried across
//! every hop the bridge makes: the ingress forwards it to the producer, the
//! publish API writes it into the AMQP message's headers, the consumer reads
//! it back and sends it with each push to the worker. So one job is one
//! trace, from the client's request to the worker's. With an OTLP endpoint
//! (`--otlp-endpoint`, `OTEL_EXPORTER_OTLP_ENDPOINT`) the bridge also
//! exports its own spans (`ingress`, `publish`, `job`, `push`) over
//! OTLP/HTTP with protobuf, batched on the SDK's own thread, at most
//! [`MAX_QUEUED_SPANS`] waiting (past it spans are dropped, never memory
//! grown). Without one no span is made for OpenTelemetry: the context a
//! request or message came with is passed on unchanged, which costs a
//! header's parse and write.
//!
//! The job id is a span attribute (`job.id`), never a metric label.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::http::HeaderMap;
use lapin::types::{AMQPValue, FieldTable};
use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider};
use tracing::{Level, Metadata, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{EnvFilter, FilterExt, Targets, filter_fn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::LogFormat;

/// The crates whose trace output holds AMQP frames.
const FRAME_LOGGERS: [&str; 2] = ["lapin", "amq_protocol"];

/// The most finished spans waiting for export. An unreachable collector
/// costs at most this many spans' memory (a few hundred bytes each).
pub const MAX_QUEUED_SPANS: usize = 2048;

/// How long finished spans wait to be sent in one batch.
const EXPORT_DELAY: Duration = Duration::from_secs(1);

/// The signal path appended to `OTEL_EXPORTER_OTLP_ENDPOINT`, as the OTLP
/// specification says for the base endpoint.
const TRACES_PATH: &str = "/v1/traces";

/// The `service.name` when `OTEL_SERVICE_NAME` does not give one.
const SERVICE_NAME: &str = "host-bridge";

/// The longest the last spans' export may hold up the exit, within the
/// pod's termination grace.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether spans are exported: set once by [`init`].
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether this process exports spans. The bridge makes its
/// OpenTelemetry-only spans (`ingress`, `publish`, `push`) only then: with
/// no endpoint they cost nothing, not even a formatted field.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

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

/// Why tracing could not start: a bad setting, reported like any other.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP endpoint is not an `http(s)://` URL.
    #[error("invalid setting --otlp-endpoint: {0}")]
    Endpoint(String),
    /// A protocol other than the one built in was asked for.
    #[error("invalid setting {0}: only http/protobuf is built in")]
    Protocol(&'static str),
    /// The exporter could not be built.
    #[error("the OTLP exporter could not be built: {0}")]
    Exporter(String),
}

/// What [`init`] started. Dropping it exports the spans still queued (within
/// the exporter's timeout) and stops the export thread: drop it after the
/// bridge has drained, so the last jobs' spans are not lost.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown_with_timeout(FLUSH_TIMEOUT)
        {
            eprintln!("host-bridge: the last spans could not be exported: {e}");
        }
    }
}

/// Installs the global subscriber, and the OTLP span exporter when
/// `otlp_endpoint` is set. Call once, from `main`.
pub fn init(format: LogFormat, otlp_endpoint: Option<&str>) -> Result<Telemetry, TelemetryError> {
    let env = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let filter = env.and(filter_fn(may_log));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Text => fmt.with_filter(filter).boxed(),
        LogFormat::Json => fmt.json().with_filter(filter).boxed(),
    };
    let provider = otlp_endpoint.map(tracer_provider).transpose()?;
    // The spans exported are the bridge's own, at INFO, whatever RUST_LOG
    // says of the logs.
    let spans = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer(SERVICE_NAME))
            .with_filter(Targets::new().with_target("host_bridge", Level::INFO))
    });
    tracing_subscriber::registry().with(fmt).with(spans).init();
    EXPORTING.store(provider.is_some(), Ordering::Relaxed);
    Ok(Telemetry { provider })
}

/// The OTLP endpoint for traces: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` as it
/// is, else the base endpoint with `/v1/traces` appended.
pub fn traces_endpoint(base: &str) -> Result<String, TelemetryError> {
    let endpoint = match std::env::var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
        Ok(signal) if !signal.trim().is_empty() => signal.trim().to_owned(),
        _ => format!("{}{TRACES_PATH}", base.trim().trim_end_matches('/')),
    };
    let url = reqwest::Url::parse(&endpoint)
        .map_err(|e| TelemetryError::Endpoint(format!("{endpoint:?}: {e}")))?;
    // The exporter's client is built without TLS: an https:// endpoint
    // would fail every export, so it is refused here, where it is seen.
    if url.scheme() != "http" || url.host().is_none() {
        return Err(TelemetryError::Endpoint(format!(
            "{endpoint:?} must be an http:// URL (no TLS is built in: use a collector on the node or in the pod)"
        )));
    }
    for setting in [
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    ] {
        if std::env::var(setting).is_ok_and(|p| !p.is_empty() && p != "http/protobuf") {
            return Err(TelemetryError::Protocol(setting));
        }
    }
    Ok(endpoint)
}

fn tracer_provider(base: &str) -> Result<SdkTracerProvider, TelemetryError> {
    use opentelemetry_otlp::WithExportConfig;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(traces_endpoint(base)?)
        .build()
        .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    let batches = BatchSpanProcessor::builder(exporter)
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_max_queue_size(MAX_QUEUED_SPANS)
                .with_scheduled_delay(EXPORT_DELAY)
                .build(),
        )
        .build();
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(SERVICE_NAME);
    }
    Ok(SdkTracerProvider::builder()
        .with_span_processor(batches)
        .with_resource(resource.build())
        .build())
}

/// The trace context of an HTTP request: its `traceparent` and
/// `tracestate`. Empty (not an error) when absent or malformed: a bad
/// header starts a new trace, as the W3C specification says.
pub fn from_http(headers: &HeaderMap) -> Context {
    extract(&HeaderExtractor(headers))
}

/// The trace context a message was published with.
pub fn from_amqp(headers: Option<&FieldTable>) -> Context {
    match headers {
        Some(headers) => extract(&AmqpHeaders(headers)),
        None => Context::new(),
    }
}

/// The propagator's reading of `carrier`, for a `traceparent` written
/// exactly as the W3C specification says ([`job::is_traceparent`]). The
/// propagator alone is lenient: it reads a 15-digit parent id as if it had
/// a leading zero, and would pass on an id the caller never sent.
fn extract(carrier: &dyn Extractor) -> Context {
    match carrier.get(job::TRACEPARENT_HEADER) {
        Some(value) if job::is_traceparent(value.trim()) => {
            TraceContextPropagator::new().extract(&Bounded(carrier))
        }
        _ => Context::new(),
    }
}

/// A carrier whose `tracestate` is dropped past [`job::MAX_TRACESTATE_LEN`]
/// bytes: each span and message carries it, so a client can't make either
/// large.
struct Bounded<'a>(&'a dyn Extractor);

impl Extractor for Bounded<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        let value = self.0.get(key)?;
        (key != job::TRACESTATE_HEADER || value.len() <= job::MAX_TRACESTATE_LEN).then_some(value)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys()
    }
}

/// Makes `span` a child of `parent` and returns the context to send onward:
/// the span's own when spans are exported, else `parent` unchanged, so that
/// a bridge without an exporter still carries its caller's trace through.
pub fn follow(span: &Span, parent: &Context) -> Context {
    // Err only when no OpenTelemetry layer is installed: nothing to link.
    let _ = span.set_parent(parent.clone());
    let own = span.context();
    if own.span().span_context().is_valid() {
        own
    } else {
        parent.clone()
    }
}

/// The trace id of `cx`, in W3C hex, when it has one: for log lines.
pub fn trace_id(cx: &Context) -> Option<String> {
    let span = cx.span();
    let span_context = span.span_context();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}

/// Writes `cx` into an outgoing request's headers, replacing any trace
/// headers already there; writes nothing for an empty context.
pub fn to_http(cx: &Context, headers: &mut HeaderMap) {
    headers.remove("traceparent");
    headers.remove("tracestate");
    TraceContextPropagator::new().inject_context(cx, &mut HeaderInjector(headers));
    // The propagator writes an empty `tracestate` when there is none.
    if headers.get("tracestate").is_some_and(|v| v.is_empty()) {
        headers.remove("tracestate");
    }
}

/// Writes `cx` into a message's headers.
pub fn to_amqp(cx: &Context, headers: &mut FieldTable) {
    TraceContextPropagator::new().inject_context(cx, &mut AmqpInjector(headers));
}

/// Reads trace headers from AMQP message headers (long strings).
struct AmqpHeaders<'a>(&'a FieldTable);

impl Extractor for AmqpHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match self.0.inner().get(key)? {
            AMQPValue::LongString(value) => std::str::from_utf8(value.as_bytes()).ok(),
            AMQPValue::ShortString(value) => Some(value.as_str()),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        self.0.inner().keys().map(|k| k.as_str()).collect()
    }
}

/// Writes trace headers into AMQP message headers, as long strings (what
/// other AMQP instrumentations read).
struct AmqpInjector<'a>(&'a mut FieldTable);

impl Injector for AmqpInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        // No empty `tracestate`: a header that says nothing.
        if !value.is_empty() {
            self.0
                .insert(key.into(), AMQPValue::LongString(value.into()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn without_an_exporter_the_callers_context_passes_through_unchanged() {
        let mut incoming = HeaderMap::new();
        incoming.insert("traceparent", PARENT.parse().unwrap());
        incoming.insert("tracestate", "vendor=1".parse().unwrap());
        let parent = from_http(&incoming);
        assert_eq!(
            trace_id(&parent).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        let onward = follow(&tracing::info_span!("hop"), &parent);
        let mut message = FieldTable::default();
        to_amqp(&onward, &mut message);
        let mut outgoing = HeaderMap::new();
        outgoing.insert("traceparent", "stale".parse().unwrap());
        to_http(&from_amqp(Some(&message)), &mut outgoing);
        assert_eq!(outgoing["traceparent"], PARENT);
        assert_eq!(outgoing["tracestate"], "vendor=1");
        // An oversized tracestate is not carried on; the trace still is.
        let mut big = HeaderMap::new();
        big.insert("traceparent", PARENT.parse().unwrap());
        big.insert(
            "tracestate",
            format!("v={}", "x".repeat(600)).parse().unwrap(),
        );
        let mut outgoing = HeaderMap::new();
        to_http(&from_http(&big), &mut outgoing);
        assert_eq!(outgoing["traceparent"], PARENT);
        assert!(outgoing.get("tracestate").is_none());
    }

    #[test]
    fn a_malformed_or_absent_traceparent_starts_nothing_and_sends_nothing() {
        for value in [
            "",
            "00-zz-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        ] {
            let mut incoming = HeaderMap::new();
            incoming.insert("traceparent", value.parse().unwrap());
            let cx = from_http(&incoming);
            assert_eq!(trace_id(&cx), None, "{value:?}");
            let mut outgoing = HeaderMap::new();
            outgoing.insert("traceparent", PARENT.parse().unwrap());
            to_http(&cx, &mut outgoing);
            assert!(outgoing.get("traceparent").is_none(), "{value:?}");
        }
        assert_eq!(trace_id(&from_amqp(None)), None);
    }

    #[test]
    fn the_traces_endpoint_gets_the_signal_path() {
        assert_eq!(
            traces_endpoint("http://collector:4318/").unwrap(),
            "http://collector:4318/v1/traces"
        );
        assert!(traces_endpoint("collector:4318").is_err());
        assert!(traces_endpoint("ftp://collector").is_err());
        assert!(traces_endpoint("https://collector:4318").is_err());
    }
}
