//! The job schema and the HTTP error shape shared by the producer, the worker
//! and host-bridge.
//!
//! This crate owns what crosses a process boundary: the JSON of a job, of a
//! worker's result and of an error answer, the headers of the producer's
//! protocol with the publish API, plus the checks every HTTP edge
//! applies to a request body (size, content type, UTF-8, JSON). It does no
//! I/O, so it builds for `wasm32-wasip2` and natively alike.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// The header in which the producer says until when (Unix time in
/// milliseconds) it will wait for the publish API's answer. The bridge
/// starts a publish only if its whole confirm wait fits before then, so
/// that a caller that gave up is never followed by a job queued behind its
/// back.
pub const DEADLINE_HEADER: &str = "publish-deadline";

/// The AMQP header in which the publish API records when it published a
/// job, in Unix milliseconds: the start of the job's queue wait. (The AMQP
/// `timestamp` property is whole seconds, too coarse for a wait.)
pub const PUBLISHED_AT_HEADER: &str = "x-published-at-ms";

/// The W3C Trace Context header naming the caller's trace and span. The
/// producer passes it (with [`TRACESTATE_HEADER`]) from its request to the
/// publish API; the bridge carries it through the queue to the worker.
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// The W3C Trace Context header with vendors' trace state, passed on with
/// a valid [`TRACEPARENT_HEADER`] only.
pub const TRACESTATE_HEADER: &str = "tracestate";

/// The longest `tracestate` passed on: the W3C limit is 32 members, and 512
/// bytes is what it says a platform must at least propagate.
pub const MAX_TRACESTATE_LEN: usize = 512;

/// Whether `value` is a `traceparent` of version `00` as the W3C
/// specification writes it: `00-<32 hex trace id>-<16 hex parent id>-<2 hex
/// flags>`, lowercase, with neither id all zeros. Only such a value is
/// passed on or logged by a component: it can carry nothing else.
pub fn is_traceparent(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    let hex = |s: &str, len: usize| {
        s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    let nonzero = |s: &str| s.bytes().any(|b| b != b'0');
    matches!(parts.as_slice(), [version, trace, parent, flags]
        if *version == "00"
            && hex(trace, 32) && nonzero(trace)
            && hex(parent, 16) && nonzero(parent)
            && hex(flags, 2))
}

/// The header in which the producer asks the bridge to count this publish
/// as its request `<METHOD> <route>`, answered with the bridge's verdict.
pub const OBSERVE_HEADER: &str = "observe-request";

/// The answer's header saying the bridge did count it: only then does the
/// producer skip its own report. Not set past the caller's deadline, when
/// the producer has given up and reports its own answer.
pub const OBSERVE_COUNTED_HEADER: &str = "observe-counted";

/// The largest body a client may `POST` to `/generate`: the limit the README
/// states. A job is a small envelope, not a data transfer.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Room for the envelope around a payload: `id` (at most [`MAX_ID_LEN`]
/// bytes that never need escaping), `created_at` and the JSON punctuation.
const ENVELOPE_BYTES: usize = 1024;

/// The largest job (the envelope plus the payload) that the bridge's publish
/// API and the worker accept. Any `/generate` body within [`MAX_BODY_BYTES`]
/// makes a job within this: the payload travels as the client wrote it.
pub const MAX_JOB_BYTES: usize = MAX_BODY_BYTES + ENVELOPE_BYTES;

/// The longest job id accepted. Ids become AMQP `message-id`s (a short
/// string, at most 255 bytes), HTTP header values and log fields.
pub const MAX_ID_LEN: usize = 128;

/// One unit of work, as published to the queue and pushed to the worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    /// Unique id, also the idempotency key for at-least-once delivery.
    pub id: String,
    /// When the producer created the job, RFC 3339 in UTC.
    pub created_at: String,
    /// Optional caller data, carried byte for byte as the caller wrote it:
    /// never re-encoded, so it cannot grow past the limit it was checked
    /// against (`1e5` stays `1e5`, not `100000.0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Box<RawValue>>,
}

impl Job {
    /// Checks the invariants a deserialized job must hold.
    pub fn validate(&self) -> Result<(), BodyError> {
        validate_id(&self.id)
    }

    /// Parses and validates a job from a request body.
    pub fn from_body(body: &[u8]) -> Result<Self, BodyError> {
        let job: Job = parse_json(body)?;
        job.validate()?;
        Ok(job)
    }
}

/// Checks a job id: 1 to [`MAX_ID_LEN`] bytes of `A-Z a-z 0-9 . _ : -`.
///
/// The id is the idempotency key, the AMQP `message-id`, an HTTP header
/// value and a log field: a narrow charset keeps it safe in all four (no
/// escaping, no control characters, no header or log injection). UUIDs,
/// ULIDs and most database keys fit.
pub fn validate_id(id: &str) -> Result<(), BodyError> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(BodyError::Invalid(format!(
            "`id` must be 1 to {MAX_ID_LEN} bytes long"
        )));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
    {
        return Err(BodyError::Invalid(
            "`id` may contain only A-Z, a-z, 0-9 and . _ : -".into(),
        ));
    }
    Ok(())
}

/// The body a caller may `POST` to `/generate`. Every field is optional, and
/// an empty body means "no payload".
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateRequest {
    /// The caller's own job id (its idempotency key); the producer makes a
    /// UUIDv7 when absent. The `Idempotency-Key` header does the same.
    #[serde(default)]
    pub id: Option<String>,
    /// Caller data to carry in the job, untouched.
    #[serde(default)]
    pub payload: Option<Box<RawValue>>,
}

/// What the worker answers for a job it finished.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkResult {
    /// The job's id.
    pub id: String,
    /// How long the simulated work took, in milliseconds.
    pub worked_ms: u64,
}

/// Why a request body was refused. Each variant maps to one HTTP status.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BodyError {
    /// The body is over [`MAX_BODY_BYTES`].
    #[error("request body is larger than {limit} bytes")]
    TooLarge {
        /// The limit that was passed.
        limit: usize,
    },
    /// A body was sent with a content type other than JSON.
    #[error("content-type must be application/json, got {0:?}")]
    UnsupportedMediaType(String),
    /// The body is not UTF-8 (JSON must be).
    #[error("request body is not valid UTF-8 (first bad byte at offset {0})")]
    NotUtf8(usize),
    /// The body is UTF-8 but not JSON of the expected shape.
    #[error("request body is not valid JSON: {0}")]
    Json(String),
    /// The JSON parsed but breaks an invariant.
    #[error("invalid job: {0}")]
    Invalid(String),
}

impl BodyError {
    /// The HTTP status this error is answered with.
    pub fn status(&self) -> u16 {
        match self {
            BodyError::TooLarge { .. } => 413,
            BodyError::UnsupportedMediaType(_) => 415,
            BodyError::NotUtf8(_) | BodyError::Json(_) | BodyError::Invalid(_) => 400,
        }
    }

    /// A stable machine-readable code, used in error bodies.
    pub fn code(&self) -> &'static str {
        match self {
            BodyError::TooLarge { .. } => "payload_too_large",
            BodyError::UnsupportedMediaType(_) => "unsupported_media_type",
            BodyError::NotUtf8(_) => "invalid_utf8",
            BodyError::Json(_) => "invalid_json",
            BodyError::Invalid(_) => "invalid_job",
        }
    }

    /// The JSON error answer for this error.
    pub fn to_error_body(&self) -> ErrorBody {
        ErrorBody::new(self.code(), self.to_string())
    }
}

/// The JSON body of every error answer: `{"error": code, "message": text}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// A stable machine-readable code, e.g. `invalid_json`.
    pub error: String,
    /// A sentence for humans.
    pub message: String,
}

impl ErrorBody {
    /// Builds an error body.
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Self {
            error: code.to_owned(),
            message: message.into(),
        }
    }

    /// Serializes the body. Serializing two strings cannot fail.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{}"))
    }
}

/// Checks a request's `Content-Type`. A missing header is accepted (curl and
/// many clients omit it); anything present must be JSON: `application/json`,
/// with or without parameters, or an `application/*+json` type.
pub fn check_content_type(content_type: Option<&str>) -> Result<(), BodyError> {
    let Some(value) = content_type else {
        return Ok(());
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    if essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
    {
        Ok(())
    } else {
        Err(BodyError::UnsupportedMediaType(value.to_owned()))
    }
}

/// Checks a body's length against `limit` ([`MAX_BODY_BYTES`] for
/// `/generate`, [`MAX_JOB_BYTES`] for a job).
pub fn check_size(len: usize, limit: usize) -> Result<(), BodyError> {
    if len > limit {
        Err(BodyError::TooLarge { limit })
    } else {
        Ok(())
    }
}

/// Parses a JSON body, telling bad UTF-8 apart from bad JSON so that the
/// caller learns which one to fix.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, BodyError> {
    let text = std::str::from_utf8(body).map_err(|e| BodyError::NotUtf8(e.valid_up_to()))?;
    serde_json::from_str(text).map_err(|e| BodyError::Json(e.to_string()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn traceparents_are_recognised_exactly() {
        use super::is_traceparent;
        assert!(is_traceparent(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ));
        for bad in [
            "",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\n",
        ] {
            assert!(!is_traceparent(bad), "{bad:?}");
        }
    }

    use super::*;

    #[test]
    fn job_round_trips_and_omits_missing_payload() {
        let job = Job {
            id: "a".into(),
            created_at: "2026-01-01T00:00:00Z".into(),
            payload: None,
        };
        let json = serde_json::to_string(&job).unwrap();
        assert!(!json.contains("payload"), "{json}");
        let back = Job::from_body(json.as_bytes()).unwrap();
        assert_eq!((back.id, back.payload.is_none()), ("a".into(), true));
    }

    #[test]
    fn payloads_travel_as_written_and_a_full_body_fits_a_job() {
        let body = br#"{"payload": [1e5, 1E+5, 0.10, "\u00e9"]}"#;
        let request: GenerateRequest = parse_json(body).unwrap();
        let job = Job {
            id: "x".repeat(MAX_ID_LEN),
            created_at: "2026-01-01T00:00:00.000Z".into(),
            payload: request.payload,
        };
        let json = serde_json::to_string(&job).unwrap();
        assert!(json.contains(r#"[1e5, 1E+5, 0.10, "\u00e9"]"#), "{json}");
        // The worst case: a body at the limit with the longest id.
        let filler = "x".repeat(MAX_BODY_BYTES - r#"{"payload":""}"#.len());
        let body = format!(r#"{{"payload":"{filler}"}}"#);
        assert_eq!(body.len(), MAX_BODY_BYTES);
        let request: GenerateRequest = parse_json(body.as_bytes()).unwrap();
        let job = Job {
            payload: request.payload,
            ..job
        };
        assert!(check_size(serde_json::to_vec(&job).unwrap().len(), MAX_JOB_BYTES).is_ok());
    }

    #[test]
    fn job_ids_are_checked() {
        let long = format!(
            r#"{{"id":"{}","created_at":"x"}}"#,
            "a".repeat(MAX_ID_LEN + 1)
        );
        assert_eq!(Job::from_body(long.as_bytes()).unwrap_err().status(), 400);
        let empty = br#"{"id":"","created_at":"x"}"#;
        assert_eq!(Job::from_body(empty).unwrap_err().code(), "invalid_job");
        let control = br#"{"id":"a\nb","created_at":"x"}"#;
        assert!(Job::from_body(control).is_err());
        for bad in ["a b", "a/b", "é", r"a\u001b[31m", r"x\r\ny"] {
            let json = format!(r#"{{"id":"{bad}","created_at":"x"}}"#);
            assert!(Job::from_body(json.as_bytes()).is_err(), "{bad}");
        }
        for good in [
            "0190f0a2-7c4e-7d6f-8000-000000000000",
            "order:42",
            "A.b_c-9",
        ] {
            validate_id(good).unwrap();
        }
    }

    #[test]
    fn bad_utf8_is_told_apart_from_bad_json() {
        let err = parse_json::<Job>(b"{\"id\": \"\xff\"}").unwrap_err();
        assert_eq!(err, BodyError::NotUtf8(8));
        assert_eq!(err.code(), "invalid_utf8");
        let err = parse_json::<Job>(b"{\"id\": ").unwrap_err();
        assert_eq!(err.code(), "invalid_json");
        assert_eq!(err.status(), 400);
    }

    #[test]
    fn generate_request_rejects_unknown_fields() {
        assert!(parse_json::<GenerateRequest>(br#"{"payload": {"a": 1}}"#).is_ok());
        let with_id = parse_json::<GenerateRequest>(br#"{"id": "k-1"}"#).unwrap();
        assert_eq!(with_id.id.as_deref(), Some("k-1"));
        assert!(parse_json::<GenerateRequest>(br#"{"paylod": 1}"#).is_err());
    }

    #[test]
    fn content_types() {
        assert!(check_content_type(None).is_ok());
        assert!(check_content_type(Some("application/json")).is_ok());
        assert!(check_content_type(Some("Application/JSON; charset=utf-8")).is_ok());
        assert!(check_content_type(Some("application/vnd.job+json")).is_ok());
        let err = check_content_type(Some("text/plain")).unwrap_err();
        assert_eq!((err.status(), err.code()), (415, "unsupported_media_type"));
    }

    #[test]
    fn size_limit_is_inclusive() {
        assert!(check_size(MAX_BODY_BYTES, MAX_BODY_BYTES).is_ok());
        let err = check_size(MAX_BODY_BYTES + 1, MAX_BODY_BYTES).unwrap_err();
        assert_eq!(err.status(), 413);
    }

    #[test]
    fn error_body_shape() {
        let body = BodyError::TooLarge { limit: 1 }.to_error_body().to_json();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"], "payload_too_large");
        assert!(v["message"].as_str().unwrap().contains("1 bytes"));
    }
}
