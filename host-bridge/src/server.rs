//! HTTP plumbing the bridge's servers share: JSON error answers (hyper's
//! own included, see `wire`), bounded and timed body reading, and serving a
//! router until shutdown with a bound on connections that sheds the ones
//! doing nothing first, and a deadline on every request's headers.
//!
//! Routes and their logic live in `publish`, `ingress` and `admin`.

mod slots;
mod wire;

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use job::{BodyError, ErrorBody};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;
use tracing::{debug, warn};

/// The most header bytes (names and values) a request may carry; past it a
/// JSON `431`. Generous for any real client of these APIs.
pub const MAX_HEADER_BYTES: usize = 8 * 1024;

/// The most a connection's read buffer may hold. hyper's default (about
/// 400 KiB) let 300 connections that each sent 300 KiB of one unfinished
/// header hold 116 MiB until the header timeout, over the sidecar's 64 Mi;
/// with this, every listener's connections hold at most `MAX_CONNECTIONS`
/// × 16 KiB. A head that fills it before it ends gets hyper's own (bare)
/// `431` and a close; between [`MAX_HEADER_BYTES`] and this, the JSON one.
/// Bodies stream through the buffer and are bounded by their own limits.
pub const MAX_READ_BUFFER: usize = 2 * MAX_HEADER_BYTES;

/// How long to pause after a failed accept (out of file descriptors, say)
/// rather than spin on it.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// The limits every listener applies.
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    /// Connections served at once. Past it, the oldest connection with no
    /// request in service is closed for each new one; with none, the new
    /// ones wait in the kernel's backlog.
    pub max_connections: usize,
    /// How long a client may take to send a request's headers, and how long
    /// an idle keep-alive connection is kept.
    pub header_read_timeout: Duration,
}

/// An error answer: a status, a JSON [`ErrorBody`] and optional headers.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: ErrorBody,
    retry_after: Option<u32>,
    allow: Option<&'static str>,
}

impl ApiError {
    /// An error with a status, a stable code and a message.
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            body: ErrorBody::new(code, message),
            retry_after: None,
            allow: None,
        }
    }

    /// Tells the caller when to try again (`Retry-After`, in seconds).
    pub fn retry_after(self, seconds: u32) -> Self {
        Self {
            retry_after: Some(seconds),
            ..self
        }
    }

    /// A 405 listing the allowed methods.
    pub fn method_not_allowed(allow: &'static str) -> Self {
        Self {
            allow: Some(allow),
            ..Self::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("use {allow}"),
            )
        }
    }

    /// A 404 for any path the router doesn't know.
    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "no such route")
    }

    /// A 431 for a request whose headers are over [`MAX_HEADER_BYTES`].
    pub fn headers_too_large() -> Self {
        Self::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!("request headers are larger than {MAX_HEADER_BYTES} bytes"),
        )
    }

    /// The status.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl From<BodyError> for ApiError {
    fn from(e: BodyError) -> Self {
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST);
        Self {
            status,
            body: e.to_error_body(),
            retry_after: None,
            allow: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            self.body.to_json(),
        )
            .into_response();
        let headers = response.headers_mut();
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if let Some(allow) = self.allow {
            headers.insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        response
    }
}

/// Reads a JSON request body of at most `limit` bytes within `timeout`:
/// [`read_body`] after checking the content type.
pub async fn read_json_body(
    content_type: Option<&HeaderValue>,
    body: Body,
    limit: usize,
    timeout: Duration,
) -> Result<Vec<u8>, ApiError> {
    let content_type = content_type.map(|v| v.to_str().unwrap_or("(not text)"));
    job::check_content_type(content_type)?;
    read_body(body, limit, timeout).await
}

/// Reads a request body of at most `limit` bytes within `timeout`.
///
/// The limit is enforced on the stream as it arrives, so a chunked body with
/// no `Content-Length` (what a spin-sdk component sends) is bounded too, and
/// an oversized one is never held whole. The timeout covers the whole body,
/// so a client that trickles bytes cannot hold the request open.
pub async fn read_body(body: Body, limit: usize, timeout: Duration) -> Result<Vec<u8>, ApiError> {
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => Ok(bytes.to_vec()),
        // http-body-util's `Limited` (inside `to_bytes`) stops at the limit.
        Ok(Err(e)) if is_length_limit(&e) => Err(job::BodyError::TooLarge { limit }.into()),
        // The cause stays in the debug log: a client needs to know that its
        // body was unreadable, not how the HTTP stack noticed.
        Ok(Err(e)) => {
            debug!(error = %e, "request body read failed");
            Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "body_read_failed",
                "could not read the request body",
            ))
        }
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!("the request body did not arrive within {timeout:?}"),
        )),
    }
}

/// Whether a body error is `to_bytes`'s limit being reached.
fn is_length_limit(error: &axum::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = cause {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cause = e.source();
    }
    false
}

/// Reads and throws away a request body that will not be used (a refusal
/// before the body was read), at most `limit` bytes within `timeout`.
///
/// Answering before the body is in makes hyper close the connection while
/// the client may still be sending, and the client then sees a reset instead
/// of the answer. Draining costs no memory: each chunk is dropped as it comes.
pub async fn discard_body(body: Body, limit: usize, timeout: Duration) {
    let drain = async {
        let mut stream = body.into_data_stream();
        let mut seen = 0;
        while let Some(Ok(chunk)) = stream.next().await {
            seen += chunk.len();
            if seen > limit {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(timeout, drain).await;
}

/// A component's error answer as one log field: its JSON error's `error:
/// message` when it is one, else its first bytes, escaped. Under runwasi's
/// wasmtime shim a component's stderr never reaches the container log, so
/// the bridge beside it logs what it answered.
pub fn answer_summary(body: &[u8]) -> String {
    const SHOWN: usize = 256;
    match serde_json::from_slice::<ErrorBody>(body) {
        // Both fields are the component's: bound each, and escape them.
        Ok(e) => {
            let bounded = |t: &str| format!("{:?}", t.chars().take(SHOWN).collect::<String>());
            format!("{}: {}", bounded(&e.error), bounded(&e.message))
        }
        Err(_) => {
            let text = String::from_utf8_lossy(&body[..body.len().min(SHOWN)]);
            // Debug escapes control characters: a line of its own, always.
            format!("{text:?}")
        }
    }
}

/// The size of a request's headers as [`MAX_HEADER_BYTES`] counts them.
fn header_bytes(request: &Request<Incoming>) -> usize {
    request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum()
}

/// Serves `router` on `listener` until `shutdown` resolves, then lets
/// in-flight requests finish.
///
/// At most `limits.max_connections` connections are open at once. One
/// more is accepted anyway when some open one has no request in service:
/// the oldest that has never sent a whole head goes, else the oldest idle
/// keep-alive one (see `slots`), so a flood of slow or idle clients can't
/// keep an honest one waiting in the kernel's backlog. Only when every
/// connection has a request in service does accepting wait. Headers must
/// arrive within `limits.header_read_timeout` (hyper closes the connection
/// past it, idle keep-alive connections included).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServeLimits,
    shed: prometheus::IntCounter,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let slots = slots::Slots::new(limits.max_connections, shed);
    let connections = TaskTracker::new();
    let stop = CancellationToken::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            () = slots.room() => {}
        }
        let stream = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                // Out of file descriptors, or a connection reset before it
                // was accepted: pause briefly rather than spin.
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        // Room was there a moment ago; a connection may have started a
        // request since. Then this one waits its turn like any other.
        let slot = slots.take().await;
        let router = router.clone();
        let phase = slot.phase();
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            let mut router = router.clone();
            let busy = phase.busy();
            async move {
                let Some(_busy) = busy else {
                    return Ok(ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "connection_shed",
                        "this connection was closed for a newer one; send the request again",
                    )
                    .into_response());
                };
                if header_bytes(&request) > MAX_HEADER_BYTES {
                    return Ok::<_, Infallible>(ApiError::headers_too_large().into_response());
                }
                // `*` (OPTIONS) and `host:port` (CONNECT) name no resource
                // here; nothing is forwarded or counted for them.
                if !request.uri().path().starts_with('/') {
                    return Ok(ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "bad_request_target",
                        "the request target must be a path starting with /",
                    )
                    .into_response());
                }
                router.call(request).await
            }
        });
        let stop = stop.clone();
        connections.spawn(async move {
            // Until its first head is whole, a connection costs what it
            // sent; hyper (and its buffers) start after.
            let mut wire = wire::JsonWire::new(stream);
            let gathered = tokio::select! {
                gathered = tokio::time::timeout(limits.header_read_timeout, wire.gather()) => gathered,
                () = slot.evicted() => return,
                () = stop.cancelled() => return,
            };
            match gathered {
                Ok(Ok(true)) => {}
                Ok(Ok(false)) => return,
                Ok(Err(e)) => return debug!(error = %e, "connection failed before its first head"),
                Err(_) => return debug!("no whole head within the header read timeout"),
            }
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                // A client that shuts its side after the request (`nc -N`,
                // some probes) still gets the answer.
                .half_close(true)
                .max_buf_size(MAX_READ_BUFFER);
            let io = TokioIo::new(wire);
            let connection = builder.serve_connection(io, service);
            let mut connection = std::pin::pin!(connection);
            let served = tokio::select! {
                served = connection.as_mut() => served,
                // Shed for a newer connection: it had no request in service.
                () = slot.evicted() => Ok(()),
                () = stop.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = served {
                debug!(error = %e, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    stop.cancel();
    connections.close();
    connections.wait().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_answers_are_summed_up_on_one_line() {
        let json = br#"{"error":"bad_config","message":"BRIDGE_TIMEOUT_MS is not a number"}"#;
        assert_eq!(
            answer_summary(json),
            r#""bad_config": "BRIDGE_TIMEOUT_MS is not a number""#
        );
        // A component's error code can't make a log line of any length.
        let long = format!(r#"{{"error":"{}","message":"m"}}"#, "e".repeat(100_000));
        assert!(answer_summary(long.as_bytes()).len() < 300);
        assert_eq!(
            answer_summary(b"boom\nsecond line"),
            r#""boom\nsecond line""#
        );
        assert!(answer_summary(&[b'x'; 1000]).len() < 300);
    }

    #[tokio::test]
    async fn streamed_bodies_are_bounded() {
        let chunked = || {
            let chunks: [&'static [u8]; 3] = [b"{\"a\":", b"1234567890", b"}"];
            Body::from_stream(futures::stream::iter(chunks.map(Ok::<_, std::io::Error>)))
        };
        let second = Duration::from_secs(1);
        let err = read_json_body(None, chunked(), 8, second)
            .await
            .unwrap_err();
        assert_eq!(err.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let body = chunked();
        assert_eq!(
            read_json_body(None, body, 64, second).await.unwrap(),
            b"{\"a\":1234567890}"
        );
    }

    #[tokio::test]
    async fn wrong_content_type_is_415() {
        let ct = HeaderValue::from_static("text/plain");
        let err = read_json_body(Some(&ct), Body::empty(), 8, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert_eq!(err.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_times_out_with_408() {
        let stalled = futures::stream::iter([Ok::<_, std::io::Error>(&b"{"[..])])
            .chain(futures::stream::pending());
        let err = read_json_body(None, Body::from_stream(stalled), 64, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(err.status(), StatusCode::REQUEST_TIMEOUT);
    }
}
