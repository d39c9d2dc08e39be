//! The ingress role: the producer's front door, an inbound proxy in the
//! manner of linkerd2-proxy's, because the Wasm runtime's own listener can't
//! be trusted with clients.
//!
//! `wasmtime serve` builds its HTTP server with no timer, so it has no header
//! or body read timeout at all, and the containerd shims expose whatever
//! their runtime does. With this role on, clients reach the bridge's
//! listener (with every limit [`crate::server::serve`] applies: a connection
//! cap, a header read timeout, JSON errors), and the bridge forwards each
//! request to the component on loopback:
//!
//! - the body is read whole, within `--body-read-timeout` and the job body
//!   limit, before the component sees the request, so a slow client holds
//!   no Wasm instance;
//! - at most `--ingress-max-in-flight` requests are held at once (the memory
//!   bound: each buffers at most one body); past it, `503 overloaded`;
//! - the component's answer is passed through unchanged.
//!
//! When the proxy can't tell what the component did, it says so, keeping
//! the contract "a non-202 means not queued unless it says otherwise":
//!
//! | answer | meaning |
//! |---|---|
//! | `503 producer_unavailable` + `Retry-After` | the component could not be reached: the request was never delivered |
//! | `504 outcome_unknown` + `Retry-After` | the request was delivered, but no whole answer came back in `--producer-timeout`: a job **may** be queued. Retry with the same id. |

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::{self, HeaderMap, HeaderName};
use axum::http::{Response, StatusCode};
use axum::response::IntoResponse;
use job::MAX_BODY_BYTES;
use tokio::sync::Semaphore;
use tracing::field::Empty;
use tracing::{Instrument, Span, debug, info_span, warn};

use crate::config::{Config, upstream_addr};
use crate::metrics::{IngressOutcome, Metrics};
use crate::server::{ApiError, discard_body, read_body};
use crate::telemetry;

/// The largest answer passed back from the component. Its answers are small
/// JSON objects; anything bigger is a broken component, not a client's data.
const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// How long a readiness probe waits for the component's answer. It is on
/// loopback and only makes an instance: a healthy one answers in
/// milliseconds.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// How long one probe's verdict stands. `/readyz` is open to whoever reaches
/// the admin port, and each probe makes a Wasm instance: however often it
/// is asked, the component is probed at most once per this.
const PROBE_FRESH: Duration = Duration::from_secs(1);

/// The component's probe route: answers `200` and creates nothing.
const PROBE_PATH: &str = "/healthz";

/// Headers that describe one hop, not the message (RFC 9110, section 7.6.1),
/// plus the framing headers the client library recomputes. Dropped both ways.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
];

/// Why the ingress could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum IngressError {
    /// The client for the component could not be built.
    #[error("failed to build the producer's HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    /// `--producer-url` is not a usable URL.
    #[error("invalid setting --producer-url: {0}")]
    Url(String),
}

/// The ingress role's state: the client for the component and its limits.
pub struct Ingress {
    client: reqwest::Client,
    /// `--producer-url` without its trailing slash; request paths are
    /// appended.
    upstream: String,
    timeout: Duration,
    body_timeout: Duration,
    retry_after: u32,
    max_in_flight: u32,
    permits: Arc<Semaphore>,
    /// The latest probe's verdict and when it was reached; the lock also
    /// makes concurrent `/readyz` calls share one probe.
    last_probe: tokio::sync::Mutex<Option<(Instant, Result<(), &'static str>)>>,
    metrics: Metrics,
}

impl Ingress {
    /// The role for a validated config.
    pub fn new(config: &Config, metrics: Metrics) -> Result<Self, IngressError> {
        let client = reqwest::Client::builder()
            // A redirect is the component's answer to the client, not ours
            // to follow.
            .redirect(reqwest::redirect::Policy::none())
            // Loopback: never through a proxy from the environment.
            .no_proxy()
            .tcp_nodelay(true)
            .timeout(config.producer_timeout)
            .build()
            .map_err(IngressError::Client)?;
        upstream_addr(&config.producer_url).map_err(IngressError::Url)?;
        Ok(Self {
            client,
            upstream: config.producer_url.trim_end_matches('/').to_owned(),
            timeout: config.producer_timeout,
            body_timeout: config.body_read_timeout,
            retry_after: config.retry_after_secs,
            max_in_flight: config.ingress_max_in_flight,
            permits: Arc::new(Semaphore::new(config.ingress_max_in_flight as usize)),
            last_probe: tokio::sync::Mutex::new(None),
            metrics,
        })
    }

    /// Every path and method goes to the component: routes are its business.
    pub fn router(self: Arc<Self>) -> Router {
        Router::new().fallback(forward).with_state(self)
    }

    /// `Ok` while the component answers its probe route; `/readyz` asks.
    /// A TCP connect would not do: a frozen runtime's kernel still accepts.
    /// A verdict younger than [`PROBE_FRESH`] is reused.
    pub async fn probe(&self) -> Result<(), &'static str> {
        let mut last = self.last_probe.lock().await;
        if let Some((at, verdict)) = *last
            && at.elapsed() < PROBE_FRESH
        {
            return verdict;
        }
        let verdict = self.probe_now().await;
        *last = Some((Instant::now(), verdict));
        verdict
    }

    async fn probe_now(&self) -> Result<(), &'static str> {
        let probe = self
            .client
            .get(format!("{}{PROBE_PATH}", self.upstream))
            .timeout(PROBE_TIMEOUT)
            .send()
            .await;
        match probe {
            Ok(answer) if answer.status() == StatusCode::OK => Ok(()),
            Ok(_) => Err("the producer answers its probe with an error"),
            Err(e) if e.is_connect() => Err("the producer is unreachable"),
            Err(_) => Err("the producer does not answer"),
        }
    }

    fn answer(&self, outcome: IngressOutcome, error: ApiError) -> Response<Body> {
        self.metrics.ingress_done(outcome);
        error.into_response()
    }

    fn unavailable(&self) -> Response<Body> {
        self.answer(
            IngressOutcome::ProducerUnavailable,
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "producer_unavailable",
                "the producer could not be reached; nothing was queued",
            )
            .retry_after(self.retry_after),
        )
    }

    fn unknown(&self, why: &str) -> Response<Body> {
        self.answer(
            IngressOutcome::OutcomeUnknown,
            ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "outcome_unknown",
                format!("{why}; a job may have been queued: retry with the same id"),
            )
            .retry_after(self.retry_after),
        )
    }
}

/// Forwards one request and relays the answer, in a span that continues
/// the client's trace (or starts one, when spans are exported).
async fn forward(State(ingress): State<Arc<Ingress>>, request: Request) -> Response<Body> {
    // A URI's path holds no control characters or spaces: recorded as is.
    let span = if telemetry::exporting() {
        info_span!(
            "ingress",
            otel.kind = "server",
            http.request.method = %request.method(),
            url.path = %request.uri().path(),
            http.response.status_code = Empty,
        )
    } else {
        Span::none()
    };
    let trace = telemetry::follow(&span, &telemetry::from_http(request.headers()));
    let answer = relay(&ingress, request, &trace)
        .instrument(span.clone())
        .await;
    span.record("http.response.status_code", answer.status().as_u16());
    answer
}

/// [`forward`]'s work: `trace` is the context the component is sent.
async fn relay(
    ingress: &Ingress,
    request: Request,
    trace: &opentelemetry::Context,
) -> Response<Body> {
    let (parts, body) = request.into_parts();
    // Held from before the body is read until the answer is relayed: that
    // bounds the bodies and answers held at once.
    let Ok(_permit) = ingress.permits.clone().try_acquire_owned() else {
        discard_body(body, MAX_BODY_BYTES, ingress.body_timeout).await;
        return ingress.answer(
            IngressOutcome::Overloaded,
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                format!(
                    "{} requests are already in progress; nothing was queued",
                    ingress.max_in_flight
                ),
            )
            .retry_after(ingress.retry_after),
        );
    };
    let body = match read_body(body, MAX_BODY_BYTES, ingress.body_timeout).await {
        Ok(body) => body,
        Err(e) => return ingress.answer(IngressOutcome::Refused, e),
    };
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let mut headers = end_to_end(parts.headers);
    telemetry::to_http(trace, &mut headers);
    let sent = ingress
        .client
        .request(parts.method, format!("{}{path}", ingress.upstream))
        .headers(headers)
        .body(body)
        .send()
        .await;
    let response = match sent {
        Ok(response) => response,
        // Refused or not accepted in time: the request never left.
        Err(e) if e.is_connect() => {
            debug!(error = %e, "the producer could not be reached");
            return ingress.unavailable();
        }
        Err(e) if e.is_timeout() => {
            return ingress.unknown(&format!(
                "the producer did not answer within {:?}",
                ingress.timeout
            ));
        }
        Err(e) => {
            warn!(error = ?e, "the producer's answer broke off");
            return ingress.unknown("the producer's answer broke off");
        }
    };
    let status = response.status();
    let headers = end_to_end(response.headers().clone());
    let answer = match read_answer(response).await {
        Ok(answer) => answer,
        Err(why) => return ingress.unknown(why),
    };
    ingress.metrics.ingress_done(IngressOutcome::Forwarded);
    // The component's own stderr may never reach a log (runwasi's wasmtime
    // shim): its server errors are logged here. Client errors (4xx) are
    // the client's business and would let anyone fill the log.
    if status.is_server_error() {
        let said = crate::server::answer_summary(&answer);
        warn!(status = status.as_u16(), producer_said = %said, "the producer answered with an error");
    }
    let mut relayed = Response::new(Body::from(answer));
    *relayed.status_mut() = status;
    *relayed.headers_mut() = headers;
    relayed
}

/// The component's whole answer body, at most [`MAX_ANSWER_BYTES`]; the
/// client's timeout covers it.
async fn read_answer(mut response: reqwest::Response) -> Result<Vec<u8>, &'static str> {
    let mut answer = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) if answer.len() + chunk.len() <= MAX_ANSWER_BYTES => {
                answer.extend_from_slice(&chunk);
            }
            Ok(Some(_)) => return Err("the producer's answer was too large"),
            Ok(None) => return Ok(answer),
            Err(e) if e.is_timeout() => return Err("the producer's answer did not finish in time"),
            Err(_) => return Err("the producer's answer broke off"),
        }
    }
}

/// `headers` without the hop-by-hop ones, including those a `Connection`
/// header names.
fn end_to_end(mut headers: HeaderMap) -> HeaderMap {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in HOP_BY_HOP {
        headers.remove(*name);
    }
    for name in &named {
        headers.remove(name);
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[tokio::test]
    async fn readiness_probes_the_component_at_most_once_per_second_however_often_asked() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let hits = Arc::new(AtomicUsize::new(0));
        let counted = hits.clone();
        let component = Router::new().route(
            PROBE_PATH,
            axum::routing::get(move || {
                counted.fetch_add(1, Ordering::SeqCst);
                async { "ok" }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, component).await });
        let url = format!("http://{addr}");
        let config = <Config as clap::Parser>::try_parse_from([
            "host-bridge",
            "--roles",
            "ingress",
            "--producer-url",
            url.as_str(),
        ])
        .unwrap();
        let ingress = Arc::new(Ingress::new(&config, Metrics::new()).unwrap());
        let asks: Vec<_> = (0..50)
            .map(|_| {
                let ingress = ingress.clone();
                tokio::spawn(async move { ingress.probe().await })
            })
            .collect();
        for ask in asks {
            assert_eq!(ask.await.unwrap(), Ok(()));
        }
        assert_eq!(hits.load(Ordering::SeqCst), 1, "50 asks, one probe");
    }

    #[test]
    fn the_component_address_is_host_and_port_only() {
        assert_eq!(
            upstream_addr("http://127.0.0.1:3080").unwrap(),
            "127.0.0.1:3080"
        );
        assert_eq!(upstream_addr("http://127.0.0.1/").unwrap(), "127.0.0.1:80");
        assert_eq!(upstream_addr("http://[::1]:81").unwrap(), "[::1]:81");
        for bad in [
            "https://127.0.0.1",
            "http://h/generate",
            "http://u:p@h",
            "nope",
        ] {
            assert!(upstream_addr(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hop_by_hop_headers_are_dropped_and_the_rest_kept() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive, x-secret-hop"),
            ("x-secret-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("host", "example"),
            ("content-type", "application/json"),
            ("idempotency-key", "job-1"),
        ] {
            headers.append(name, HeaderValue::from_static(value));
        }
        let kept = end_to_end(headers);
        let mut names: Vec<_> = kept.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["content-type", "idempotency-key"]);
    }
}
