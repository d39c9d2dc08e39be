//! JSON for the answers hyper writes itself. hyper parses each request head
//! before any service sees it, and answers what it can't parse with a bare
//! head and no body: `400` (a bad method, version, header byte, two
//! `Content-Length`s, a TLS ClientHello), `414`, `431` (more than 100
//! header fields or a head over the read buffer), then closes. An HTTP/2
//! preface gets no answer at all. [`JsonWire`] wraps the socket and turns
//! each of those into the same JSON error every other answer is.
//!
//! It also holds a connection's first head until it is whole, in a buffer
//! the size of what arrived, before hyper sees a byte: hyper reserves its
//! 8-16 KiB read buffer at the first byte, so 1,500 slow clients (a head
//! trickled a byte at a time) held 33 MiB; now they hold what they sent.
//! A head still unfinished at [`MAX_READ_BUFFER`] gets a JSON `431`.
//!
//! It recognises hyper's answer by its shape at the end of a write: a
//! complete response head with a 4xx or 5xx status, no body and no
//! `Content-Type`. Every answer of the bridge's own has a `Content-Type`
//! (JSON or the metrics text), so only a bodiless error from elsewhere
//! could match, and giving that one a JSON body is the point anyway.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use job::ErrorBody;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::MAX_READ_BUFFER;

/// What an HTTP/2 client sends first (RFC 9113, section 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The longest head hyper writes for an error of its own.
const MAX_CANNED_HEAD: usize = 512;

/// A socket whose error answers from hyper come out as JSON.
pub struct JsonWire {
    inner: TcpStream,
    /// Bytes already taken from hyper and owed to the socket, with how many
    /// of them are written.
    owed: Option<(Vec<u8>, usize)>,
    /// The first head as it arrives, then what of it hyper has not read.
    first: First,
}

enum First {
    /// Gathering: not yet a whole head.
    Gathering(Vec<u8>),
    /// Whole: handed to hyper from this offset.
    Handing(Vec<u8>, usize),
    /// Handed over: hyper reads the socket itself.
    Done,
}

/// How much of the first head is read from the socket at a time.
const GATHER_CHUNK: usize = 1024;

impl JsonWire {
    /// Wraps an accepted connection.
    pub fn new(inner: TcpStream) -> Self {
        Self {
            inner,
            owed: None,
            first: First::Gathering(Vec::new()),
        }
    }

    /// Reads the first head until it is whole, before hyper is given the
    /// connection: hyper allocates its buffers (8 KiB to write heads, 8-16
    /// KiB to read them) when it starts, and a slow client should not cost
    /// that. `Ok(true)`: serve it; `Ok(false)`: answered here (an HTTP/2
    /// preface, a head too large), nothing more to do.
    pub async fn gather(&mut self) -> io::Result<bool> {
        let serve = std::future::poll_fn(|cx| self.poll_gather(cx)).await?;
        if !serve {
            std::future::poll_fn(|cx| self.poll_owed(cx)).await?;
            let inner = &mut self.inner;
            let _ = std::future::poll_fn(|cx| Pin::new(&mut *inner).poll_shutdown(cx)).await;
        }
        Ok(serve)
    }

    /// Reads until the first head is whole (or the peer stops sending):
    /// `Ready(true)` when it is time to hand over, `Ready(false)` when the
    /// connection got an answer of ours instead.
    fn poll_gather(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        let First::Gathering(head) = &mut self.first else {
            return Poll::Ready(Ok(true));
        };
        loop {
            let mut chunk = [0u8; GATHER_CHUNK];
            let mut buf = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut self.inner).poll_read(cx, &mut buf))?;
            let read = buf.filled();
            let at_end = read.is_empty();
            let before = head.len();
            head.extend_from_slice(read);
            let whole = head_ends_in(head, before);
            let n = head.len().min(H2_PREFACE.len());
            let answer = if n >= b"PRI * ".len() && head[..n] == H2_PREFACE[..n] {
                // An HTTP/2 client: answer in HTTP/1.1, which is all this
                // server speaks.
                Some(505)
            } else if head.len() > MAX_READ_BUFFER && !whole {
                Some(431)
            } else {
                None
            };
            if let Some(status) = answer {
                // hyper sees an end of stream and closes after the answer.
                self.first = First::Done;
                self.owed = Some((json_error(status), 0));
                return Poll::Ready(Ok(false));
            }
            if at_end || whole {
                let head = std::mem::take(head);
                self.first = First::Handing(head, 0);
                return Poll::Ready(Ok(true));
            }
        }
    }

    /// Writes what is owed; `Ready(Ok)` once nothing is.
    fn poll_owed(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, written)) = &mut self.owed {
            if *written == bytes.len() {
                self.owed = None;
                break;
            }
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &bytes[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for JsonWire {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_owed(cx))?;
        if this.owed.is_some() {
            return Poll::Pending;
        }
        if !ready!(this.poll_gather(cx))? {
            ready!(this.poll_owed(cx))?;
            return Poll::Ready(Ok(()));
        }
        if let First::Handing(head, at) = &mut this.first {
            let n = (head.len() - *at).min(buf.remaining());
            buf.put_slice(&head[*at..*at + n]);
            *at += n;
            if *at == head.len() {
                this.first = First::Done;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for JsonWire {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_owed(cx))?;
        if let Some(start) = canned_head_at(buf) {
            let status = status_of(&buf[start..]);
            let mut out = buf[..start].to_vec();
            out.extend_from_slice(&json_error(status));
            this.owed = Some((out, 0));
            // Taken whole: hyper's bytes are ours to deliver now.
            let _ = this.poll_owed(cx)?;
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_owed(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_owed(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

impl Drop for JsonWire {
    /// hyper may drop the connection right after its error answer, without
    /// a flush: send what is owed if the socket takes it now (an answer of
    /// a few hundred bytes into an idle socket always fits).
    fn drop(&mut self) {
        if let Some((bytes, written)) = &self.owed {
            let _ = self.inner.try_write(&bytes[*written..]);
        }
    }
}

/// Where a head of hyper's own error answer starts in `buf`, if `buf` ends
/// with one: a complete head, status 4xx or 5xx, `Content-Length: 0` or
/// none, no `Content-Type`.
fn canned_head_at(buf: &[u8]) -> Option<usize> {
    if !buf.ends_with(b"\r\n\r\n") {
        return None;
    }
    let window = buf.len().saturating_sub(MAX_CANNED_HEAD);
    let start = window + find_last(&buf[window..], b"HTTP/1.1 ")?;
    let head = &buf[start..];
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(head) {
        Ok(httparse::Status::Complete(n)) if n == head.len() => {}
        _ => return None,
    }
    let code = response.code?;
    if !(400..600).contains(&code) {
        return None;
    }
    let bodiless = response.headers.iter().all(|h| {
        !h.name.eq_ignore_ascii_case("content-type")
            && (!h.name.eq_ignore_ascii_case("content-length") || h.value == b"0")
    });
    bodiless.then_some(start)
}

/// Whether the end of a head (`\r\n\r\n`) is in `head`, given that it
/// was not in its first `searched` bytes: only the new bytes (and the three
/// before them) are looked at, so a head trickled a byte at a time costs
/// one pass in all, not one per byte (16 KiB sent as 16,384 one-byte
/// segments would otherwise scan 134 MB).
fn head_ends_in(head: &[u8], searched: usize) -> bool {
    let from = searched.saturating_sub(3);
    head[from..].windows(4).any(|w| w == b"\r\n\r\n")
}

fn find_last(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).rposition(|w| w == needle)
}

fn status_of(head: &[u8]) -> u16 {
    head.get(9..12)
        .and_then(|s| std::str::from_utf8(s).ok())
        .and_then(|s| s.parse().ok())
        .unwrap_or(400)
}

/// The whole answer for one of hyper's errors, closing the connection as
/// hyper does after it.
fn json_error(status: u16) -> Vec<u8> {
    let (code, message) = match status {
        431 => (
            "headers_too_large",
            "the request head is too large: at most 100 header fields and 8192 bytes of headers",
        ),
        414 => ("uri_too_long", "the request target is too long"),
        505 => (
            "http_version_not_supported",
            "this server speaks HTTP/1.1 (and 1.0) only, without TLS",
        ),
        _ => (
            "bad_request",
            "the request is not valid HTTP/1.1 (a bad method, target, version or header)",
        ),
    };
    let body = ErrorBody::new(code, message).to_json();
    let reason = axum::http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_bodiless_untyped_error_head_at_the_end_is_hypers() {
        let canned = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        assert_eq!(canned_head_at(canned), Some(0));
        // After a response of ours in the same write (pipelining).
        let ours =
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
        let both = [&ours[..], &canned[..]].concat();
        assert_eq!(canned_head_at(&both), Some(ours.len()));
        // Ours: typed, or with a body, or a success.
        let typed = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(canned_head_at(typed), None);
        assert_eq!(canned_head_at(ours), None);
        let ok = b"HTTP/1.1 204 No Content\r\n\r\n";
        assert_eq!(canned_head_at(ok), None);
        // A body that merely ends like a head is not a head.
        let body =
            b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 8\r\n\r\nab\r\n\r\n";
        assert_eq!(canned_head_at(body), None);
    }

    #[test]
    fn a_head_end_split_across_reads_is_found_by_looking_at_the_new_bytes() {
        let head = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n";
        // Every split point: the end is found whatever the last read was.
        for split in 0..head.len() {
            assert!(head_ends_in(head, split), "split at {split}");
        }
        assert!(!head_ends_in(b"GET / HTTP/1.1\r\nhost: x\r\n", 0));
    }

    #[test]
    fn the_json_answer_keeps_the_status_and_closes() {
        let answer = String::from_utf8(json_error(431)).unwrap();
        assert!(answer.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(answer.contains("connection: close\r\n"));
        let body = answer.split("\r\n\r\n").nth(1).unwrap();
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"], "headers_too_large");
        assert_eq!(
            status_of(b"HTTP/1.1 505 HTTP Version Not Supported\r\n"),
            505
        );
    }
}
