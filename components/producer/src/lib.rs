//! The producer component: `/generate` creates a job and hands it to
//! host-bridge's publish API on loopback.
//!
//! It owns the public HTTP contract of job submission (methods, body checks,
//! status codes). It does not speak AMQP: the bridge does, and answers only
//! once the broker has confirmed the message, so a `202` here means "durably
//! queued". It imports only `wasi:*` interfaces and reads its settings from
//! environment variables, so the same .wasm runs under `spin up`,
//! `wasmtime serve -Scli` and the containerd shims.

use std::time::SystemTime;

use futures::SinkExt;
use job::{BodyError, ErrorBody, GenerateRequest, Job};
use spin_sdk::http::{
    Fields, IncomingRequest, Method, OutgoingResponse, Request, Response, ResponseOutparam, send,
};
use spin_sdk::http_component;

/// The bridge's publish endpoint. Set in spin.toml `[component.producer]
/// environment`, or with `--env` under `wasmtime serve`.
const PUBLISH_URL_ENV: &str = "BRIDGE_PUBLISH_URL";
/// host-bridge's default publish address (`--publish-addr`).
const DEFAULT_PUBLISH_URL: &str = "http://127.0.0.1:9091/v1/publish";
/// Where the producer reports each answer it gave, so that the bridge can
/// count requests per route and responses per status (the component has no
/// metrics endpoint of its own). Set like `BRIDGE_PUBLISH_URL`; `off` turns
/// the reports (and the producer metrics) off.
const OBSERVE_URL_ENV: &str = "BRIDGE_OBSERVE_URL";
/// host-bridge's default observation endpoint, beside the publish endpoint.
const DEFAULT_OBSERVE_URL: &str = "http://127.0.0.1:9091/v1/observe";
/// What the producer suggests when the bridge can't be reached at all; the
/// bridge sends its own `Retry-After` otherwise.
const DEFAULT_RETRY_AFTER_SECS: &str = "1";
/// The only route this component serves.
const GENERATE: &str = "/generate";

/// One answer, before it is written.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn json(status: u16, body: String) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body,
        }
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
    let route = route_label(&path);
    let answer = answer(req, &method, &path).await;
    let status = answer.status;
    respond(out, answer).await;
    // Report after the answer is complete, so the client never waits on
    // bookkeeping. Losing a report loses a count, never a job.
    observe(route, &method, status).await;
}

/// Decides the answer to one request.
async fn answer(req: IncomingRequest, method: &Method, path: &str) -> Answer {
    if route_label(path) != GENERATE {
        return Answer::error(
            404,
            "not_found",
            format!("no route for {path}; try {GENERATE}"),
        );
    }
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
    let job = Job {
        // UUIDv7 sorts by creation time, which makes queue dumps readable.
        id: uuid::Uuid::now_v7().to_string(),
        created_at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        payload: generate.payload,
    };
    publish(&job).await
}

/// Reads and checks a `POST /generate` body, stopping as soon as it passes
/// the size limit so that an oversized body is never held whole.
async fn read_generate_request(req: IncomingRequest) -> Result<GenerateRequest, Answer> {
    let content_type = header(&req.headers(), "content-type");
    job::check_content_type(content_type.as_deref())?;
    let mut stream = req.into_body_stream();
    let mut body = Vec::new();
    while let Some(chunk) = futures::StreamExt::next(&mut stream).await {
        let chunk = chunk.map_err(|e| {
            Answer::error(
                400,
                "body_read_failed",
                format!("could not read the body: {e}"),
            )
        })?;
        body.extend_from_slice(&chunk);
        job::check_size(body.len())?;
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(GenerateRequest::default());
    }
    Ok(job::parse_json(&body)?)
}

/// Hands the job to the bridge and turns its verdict into the client's answer.
async fn publish(job: &Job) -> Answer {
    let url = env_or(PUBLISH_URL_ENV, DEFAULT_PUBLISH_URL);
    let body = match serde_json::to_vec(job) {
        Ok(body) => body,
        Err(e) => return Answer::error(500, "internal", format!("could not encode the job: {e}")),
    };
    let request = Request::post(&url, body)
        .header("content-type", "application/json")
        .build();
    let response: Response = match send(request).await {
        Ok(response) => response,
        Err(e) => {
            return Answer::error(
                503,
                "bridge_unavailable",
                format!("the publish bridge at {url} did not answer: {e}"),
            )
            .with_header("retry-after", DEFAULT_RETRY_AFTER_SECS);
        }
    };
    match *response.status() {
        202 => Answer::json(202, serde_json::json!({ "id": job.id }).to_string()),
        // The broker could not take the job (down, queue full, nack): pass the
        // bridge's verdict and its retry hint through unchanged.
        503 => {
            let retry_after = response
                .header("retry-after")
                .and_then(|v| v.as_str())
                .unwrap_or(DEFAULT_RETRY_AFTER_SECS)
                .to_owned();
            Answer::json(503, String::from_utf8_lossy(response.body()).into_owned())
                .with_header("retry-after", &retry_after)
        }
        other => Answer::error(
            502,
            "bad_gateway",
            format!(
                "the publish bridge answered {other}: {}",
                String::from_utf8_lossy(response.body())
            ),
        ),
    }
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

/// Tells the bridge which answer was given, for its request and response
/// counters.
async fn observe(route: &str, method: &Method, status: u16) {
    let url = env_or(OBSERVE_URL_ENV, DEFAULT_OBSERVE_URL);
    if url == "off" {
        return;
    }
    let body =
        serde_json::json!({ "route": route, "method": method.to_string(), "status": status });
    let request = Request::post(&url, body.to_string())
        .header("content-type", "application/json")
        .build();
    if let Err(e) = send::<_, Response>(request).await {
        eprintln!("producer: could not report the answer to {url}: {e}");
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
