//! The producer component: `/generate` creates a job and hands it to
//! host-bridge's publish API on loopback.
//!
//! It owns the public HTTP contract of job submission (methods, body checks,
//! status codes). It does not speak AMQP: the bridge does, and answers only
//! once the broker has confirmed the message, so a `202` here means "durably
//! queued". It imports only `wasi:*` interfaces and reads its settings from
//! environment variables, so the same .wasm runs under `spin up`,
//! `wasmtime serve -Scli` and the containerd shims.

use std::future::Future;
use std::task::Poll;
use std::time::{Duration, SystemTime};

use futures::SinkExt;
// The protocol's headers with the publish API live in `job`, with the bridge.
use job::{
    BodyError, DEADLINE_HEADER, ErrorBody, GenerateRequest, Job, OBSERVE_COUNTED_HEADER,
    OBSERVE_HEADER, TRACEPARENT_HEADER, TRACESTATE_HEADER,
};
use spin_sdk::http::{
    Fields, IncomingRequest, Method, OutgoingResponse, Request, Response, ResponseOutparam, send,
};
use spin_sdk::http_component;

/// The bridge's publish endpoint. Set in spin.toml `[component.producer]
/// environment`, or with `--env` under `wasmtime serve`.
const PUBLISH_URL_ENV: &str = "BRIDGE_PUBLISH_URL";
/// host-bridge's default publish address (`--publish-addr`).
const DEFAULT_PUBLISH_URL: &str = "http://127.0.0.1:9091/v1/publish";
/// Where the producer reports the answers the bridge did not give, so that
/// the bridge can count requests per route and responses per status (the
/// component has no metrics endpoint of its own). The bridge counts the
/// others as it publishes (`OBSERVE_HEADER`): one outbound call per job. Set
/// like `BRIDGE_PUBLISH_URL`; `off` turns both (and the producer metrics) off.
const OBSERVE_URL_ENV: &str = "BRIDGE_OBSERVE_URL";
/// host-bridge's default observation endpoint, beside the publish endpoint.
const DEFAULT_OBSERVE_URL: &str = "http://127.0.0.1:9091/v1/observe";
/// How long the producer waits for the bridge's answer, in milliseconds.
/// Set like `BRIDGE_PUBLISH_URL`.
const BRIDGE_TIMEOUT_ENV: &str = "BRIDGE_TIMEOUT_MS";
/// The default: the bridge's confirm timeout (`PUBLISH_TIMEOUT`, 5 s) and
/// room for the request to wait for the bridge. The bridge starts a publish
/// only if its whole confirm wait fits before this deadline, which it reads
/// from the `publish-deadline` header.
const DEFAULT_BRIDGE_TIMEOUT_MS: u64 = 7_000;
/// The header in which a client may choose the job id, so that a retry after
/// an ambiguous answer is recognisably the same job.
const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// What the producer suggests when the bridge can't be reached at all; the
/// bridge sends its own `Retry-After` otherwise.
const DEFAULT_RETRY_AFTER_SECS: &str = "1";
/// The route that creates jobs.
const GENERATE: &str = "/generate";
/// A liveness answer that creates nothing: the bridge's ingress probes it
/// for readiness (an instance can be made and answers), and Kubernetes
/// probes may too. Not reported to the bridge's counters.
const HEALTHZ: &str = "/healthz";

/// One answer, before it is written.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
    /// The bridge counted this answer when it gave it: no report to send.
    counted_by_bridge: bool,
}

impl Answer {
    fn json(status: u16, body: String) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body,
            counted_by_bridge: false,
        }
    }

    fn counted_by(mut self, bridge: bool) -> Self {
        self.counted_by_bridge = bridge;
        self
    }

    fn error(status: u16, code: &str, message: impl Into<String>) -> Self {
        Self::json(status, ErrorBody::new(code, message).to_json())
    }

    fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }
}

impl From<BodyError> for Answer {
    fn from(e: BodyError) -> Self {
        Answer::json(e.status(), e.to_error_body().to_json())
    }
}

#[http_component]
async fn handle(req: IncomingRequest, out: ResponseOutparam) {
    let method = req.method();
    let path = req.path_with_query().unwrap_or_default();
    if matches!(method, Method::Get) && path.split('?').next() == Some(HEALTHZ) {
        respond(out, Answer::json(200, r#"{"ok":true}"#.to_owned())).await;
        return;
    }
    let route = route_label(&path);
    let observe_url = observe_url();
    let answer = answer(req, &method, &path, observe_url.is_some()).await;
    let status = answer.status;
    let counted = answer.counted_by_bridge;
    respond(out, answer).await;
    // Report after the answer is complete, so the client never waits on
    // bookkeeping. Losing a report loses a count, never a job.
    if let (Some(url), false) = (observe_url, counted) {
        observe(&url, route, &method, status).await;
    }
}

/// Decides the answer to one request. With `observed`, a publish asks the
/// bridge to count it as this request.
async fn answer(req: IncomingRequest, method: &Method, path: &str, observed: bool) -> Answer {
    if route_label(path) != GENERATE {
        return Answer::error(
            404,
            "not_found",
            format!("no route for {path}; try {GENERATE}"),
        );
    }
    let key = header(&req.headers(), IDEMPOTENCY_KEY);
    let trace = trace_headers(&req.headers());
    let generate = match method {
        Method::Get => GenerateRequest::default(),
        Method::Post => match read_generate_request(req).await {
            Ok(body) => body,
            Err(answer) => return answer,
        },
        other => {
            return Answer::error(
                405,
                "method_not_allowed",
                format!("{other} is not allowed on {GENERATE}; use GET or POST"),
            )
            .with_header("allow", "GET, POST");
        }
    };
    let id = match job_id(key, generate.id) {
        Ok(id) => id,
        Err(answer) => return answer,
    };
    let job = Job {
        id,
        created_at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        payload: generate.payload,
    };
    publish(
        &job,
        observed.then(|| format!("{method} {GENERATE}")),
        &trace,
    )
    .await
}

/// The request's W3C trace context, to pass on to the publish API so that
/// the job's trace runs through this hop: a valid `traceparent` and, with
/// it, a `tracestate` of at most [`job::MAX_TRACESTATE_LEN`] bytes. The
/// producer makes no span of its own; the bridge's ingress span is the
/// parent the publish continues from.
fn trace_headers(fields: &Fields) -> Vec<(&'static str, String)> {
    let Some(parent) = header(fields, TRACEPARENT_HEADER).filter(|v| job::is_traceparent(v)) else {
        return Vec::new();
    };
    let mut headers = vec![(TRACEPARENT_HEADER, parent)];
    if let Some(state) = header(fields, TRACESTATE_HEADER).filter(|v| {
        v.len() <= job::MAX_TRACESTATE_LEN && v.bytes().all(|b| (b' '..=b'~').contains(&b))
    }) {
        headers.push((TRACESTATE_HEADER, state));
    }
    headers
}

/// The job's id: the client's (from `Idempotency-Key` or the body's `id`,
/// which must agree when both are given), else a new UUIDv7, which sorts by
/// creation time and makes queue dumps readable.
fn job_id(header: Option<String>, body: Option<String>) -> Result<String, Answer> {
    let id = match (header, body) {
        (Some(h), Some(b)) if h != b => {
            return Err(Answer::error(
                400,
                "conflicting_ids",
                "the Idempotency-Key header and the body's id differ",
            ));
        }
        (Some(id), _) | (None, Some(id)) => id,
        (None, None) => return Ok(uuid::Uuid::now_v7().to_string()),
    };
    job::validate_id(&id)?;
    Ok(id)
}

/// Reads and checks a `POST /generate` body, stopping as soon as it passes
/// the size limit so that an oversized body is never held whole.
async fn read_generate_request(req: IncomingRequest) -> Result<GenerateRequest, Answer> {
    let content_type = header(&req.headers(), "content-type");
    job::check_content_type(content_type.as_deref())?;
    let mut stream = req.into_body_stream();
    let mut body = Vec::new();
    while let Some(chunk) = futures::StreamExt::next(&mut stream).await {
        // The cause (a host's error, with its backtrace) is no business of
        // the client's: it learns that its body was unreadable.
        let chunk = chunk.map_err(|_| {
            Answer::error(400, "body_read_failed", "could not read the request body")
        })?;
        body.extend_from_slice(&chunk);
        job::check_size(body.len(), job::MAX_BODY_BYTES)?;
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(GenerateRequest::default());
    }
    Ok(job::parse_json(&body)?)
}

/// Hands the job to the bridge and turns its verdict into the client's
/// answer. With `observed` (`<METHOD> <route>`), the bridge counts the
/// request and its verdict, and the answer says so when it is that verdict.
async fn publish(job: &Job, observed: Option<String>, trace: &[(&str, String)]) -> Answer {
    let url = env_or(PUBLISH_URL_ENV, DEFAULT_PUBLISH_URL);
    let timeout = match bridge_timeout() {
        Ok(timeout) => timeout,
        Err(message) => return Answer::error(500, "bad_config", message),
    };
    let body = match serde_json::to_vec(job) {
        Ok(body) => body,
        Err(_) => return Answer::error(500, "internal", "could not encode the job"),
    };
    let deadline = SystemTime::now() + timeout;
    let deadline_ms = deadline
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default();
    let mut request = Request::post(&url, body);
    request
        .header("content-type", "application/json")
        .header(DEADLINE_HEADER, deadline_ms.to_string());
    if let Some(observed) = observed {
        request.header(OBSERVE_HEADER, observed);
    }
    for (name, value) in trace {
        request.header(*name, value.as_str());
    }
    let request = request.build();
    let unavailable = || {
        Answer::error(
            503,
            "bridge_unavailable",
            "the publish bridge did not answer; the job was not queued",
        )
        .with_header("retry-after", DEFAULT_RETRY_AFTER_SECS)
    };
    // The bridge refuses to start a publish it could not finish before the
    // deadline, so when this wait runs out the job is not queued.
    let answer = std::pin::pin!(send::<_, Response>(request));
    let timer = std::pin::pin!(sleep(timeout));
    let sent = futures::future::select(answer, timer).await;
    let response = match sent {
        futures::future::Either::Left((Ok(response), _)) => response,
        futures::future::Either::Left((Err(e), _)) => {
            eprintln!("producer: the publish bridge at {url} failed: {e}");
            return unavailable();
        }
        futures::future::Either::Right(_) => {
            eprintln!("producer: no answer from the publish bridge at {url} within {timeout:?}");
            return unavailable();
        }
    };
    let verdict = match *response.status() {
        202 => Answer::json(202, serde_json::json!({ "id": job.id }).to_string()),
        // Not queued (503), or maybe queued (504 outcome_unknown): pass the
        // bridge's verdict and its retry hint through unchanged.
        status @ (503 | 504) => {
            let retry_after = response
                .header("retry-after")
                .and_then(|v| v.as_str())
                .unwrap_or(DEFAULT_RETRY_AFTER_SECS)
                .to_owned();
            Answer::json(
                status,
                String::from_utf8_lossy(response.body()).into_owned(),
            )
            .with_header("retry-after", &retry_after)
        }
        other => {
            eprintln!(
                "producer: the publish bridge answered {other}: {}",
                String::from_utf8_lossy(response.body())
            );
            return Answer::error(
                502,
                "bad_gateway",
                format!("the publish bridge answered {other}; the job was not queued"),
            );
        }
    };
    // Only an answer the bridge says it counted goes unreported: an older
    // bridge, or a proxy's 503, leaves the report to the producer.
    verdict.counted_by(response.header(OBSERVE_COUNTED_HEADER).is_some())
}

/// Reads `BRIDGE_TIMEOUT_MS`, defaulting when unset.
fn bridge_timeout() -> Result<Duration, String> {
    match std::env::var(BRIDGE_TIMEOUT_ENV) {
        Err(_) => Ok(Duration::from_millis(DEFAULT_BRIDGE_TIMEOUT_MS)),
        Ok(v) => v
            .trim()
            .parse()
            .ok()
            .filter(|ms| *ms > 0)
            .map(Duration::from_millis)
            .ok_or_else(|| {
                format!("{BRIDGE_TIMEOUT_ENV} must be a positive whole number of milliseconds")
            }),
    }
}

/// Resolves after `duration`, on the wasi:clocks monotonic clock, driven by
/// spin-sdk's executor like its own HTTP futures.
fn sleep(duration: Duration) -> impl Future<Output = ()> {
    use wasi::clocks::monotonic_clock;
    let deadline = monotonic_clock::now()
        .saturating_add(u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX));
    // The registration lives as long as the future: dropping it (the answer
    // came first) withdraws the pollable from the executor.
    let mut registration: Option<spin_executor::CancelOnDropToken> = None;
    futures::future::poll_fn(move |context| {
        if monotonic_clock::now() >= deadline {
            registration.take();
            return Poll::Ready(());
        }
        let pollable = monotonic_clock::subscribe_instant(deadline);
        registration.replace(spin_executor::CancelOnDropToken::from(
            spin_executor::push_waker_and_get_token(pollable, context.waker().clone()),
        ));
        Poll::Pending
    })
}

/// Writes the answer and ends the response body.
async fn respond(out: ResponseOutparam, answer: Answer) {
    let mut headers = vec![("content-type".to_owned(), b"application/json".to_vec())];
    headers.extend(
        answer
            .headers
            .into_iter()
            .map(|(name, value)| (name, value.into_bytes())),
    );
    let Ok(fields) = Fields::from_list(&headers) else {
        eprintln!("producer: invalid response headers");
        return;
    };
    let response = OutgoingResponse::new(fields);
    if response.set_status_code(answer.status).is_err() {
        eprintln!("producer: invalid status {}", answer.status);
        return;
    }
    let mut body = response.take_body();
    out.set(response);
    let written = async {
        body.send(answer.body.into_bytes()).await?;
        body.close().await
    };
    if let Err(e) = written.await {
        eprintln!("producer: could not write the response: {e}");
    }
}

/// How long the report of an answer may take: one call to the sidecar on
/// loopback, after the client has its answer. Past it the report is
/// dropped (one count lost) and the Wasm instance is freed.
const OBSERVE_TIMEOUT: Duration = Duration::from_secs(1);

/// Where to report answers, or `None` when the producer metrics are off.
fn observe_url() -> Option<String> {
    Some(env_or(OBSERVE_URL_ENV, DEFAULT_OBSERVE_URL)).filter(|url| url != "off")
}

/// Tells the bridge which answer was given, for its request and response
/// counters: for the answers it did not count itself.
async fn observe(url: &str, route: &str, method: &Method, status: u16) {
    let body =
        serde_json::json!({ "route": route, "method": method.to_string(), "status": status });
    let request = Request::post(url, body.to_string())
        .header("content-type", "application/json")
        .build();
    // The client has its answer; this wait only holds the Wasm instance.
    let sent = std::pin::pin!(send::<_, Response>(request));
    let timer = std::pin::pin!(sleep(OBSERVE_TIMEOUT));
    match futures::future::select(sent, timer).await {
        futures::future::Either::Left((Ok(_), _)) => {}
        futures::future::Either::Left((Err(e), _)) => {
            eprintln!("producer: could not report the answer to {url}: {e}");
        }
        futures::future::Either::Right(_) => {
            eprintln!("producer: no answer to the report from {url} within {OBSERVE_TIMEOUT:?}");
        }
    }
}

/// The route label for metrics: a closed set, so that arbitrary paths can't
/// create label values.
fn route_label(path_with_query: &str) -> &'static str {
    if path_with_query.split('?').next() == Some(GENERATE) {
        GENERATE
    } else {
        "other"
    }
}

/// The first value of a header, if it is UTF-8.
fn header(fields: &Fields, name: &str) -> Option<String> {
    fields
        .get(name)
        .into_iter()
        .next()
        .and_then(|v| String::from_utf8(v).ok())
}

/// An environment variable, or a default when unset or empty.
fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned())
}
