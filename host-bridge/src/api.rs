//! HTTP plumbing the bridge's servers share: JSON error answers, bounded
//! body reading, and serving a router until shutdown.
//!
//! Routes and their logic live in `publish` and `admin`.

use std::future::Future;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use job::{BodyError, ErrorBody};
use tokio::net::TcpListener;

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

    /// A 503 that tells the caller when to try again.
    pub fn unavailable(code: &str, message: impl Into<String>, retry_after: u32) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
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

/// Reads a JSON request body of at most `limit` bytes.
///
/// The limit is enforced on the stream as it arrives, so a chunked body with
/// no `Content-Length` (what a spin-sdk component sends) is bounded too, and
/// an oversized one is never held whole.
pub async fn read_json_body(
    content_type: Option<&HeaderValue>,
    body: Body,
    limit: usize,
) -> Result<Vec<u8>, ApiError> {
    let content_type = content_type.map(|v| v.to_str().unwrap_or("(not text)"));
    job::check_content_type(content_type)?;
    let mut stream = body.into_data_stream();
    let mut buf = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "body_read_failed",
                format!("could not read the body: {e}"),
            )
        })?;
        if buf.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge { limit }.into());
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

/// Serves `router` on `listener` until `shutdown` resolves, then lets
/// in-flight requests finish (axum's graceful shutdown).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn streamed_bodies_are_bounded() {
        let chunked = || {
            let chunks: [&'static [u8]; 3] = [b"{\"a\":", b"1234567890", b"}"];
            Body::from_stream(futures::stream::iter(chunks.map(Ok::<_, std::io::Error>)))
        };
        let err = read_json_body(None, chunked(), 8).await.unwrap_err();
        assert_eq!(err.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let body = chunked();
        assert_eq!(
            read_json_body(None, body, 64).await.unwrap(),
            b"{\"a\":1234567890}"
        );
    }

    #[tokio::test]
    async fn wrong_content_type_is_415() {
        let ct = HeaderValue::from_static("text/plain");
        let err = read_json_body(Some(&ct), Body::empty(), 8)
            .await
            .unwrap_err();
        assert_eq!(err.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }
}
