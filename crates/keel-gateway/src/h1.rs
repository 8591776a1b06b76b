//! The proxy's fast path to plain HTTP/1.1 upstreams, for requests without a body (`GET`,
//! `HEAD`, `DELETE`, … — most of a gateway's traffic): the request head is written and the
//! response read by the request's own task, with no connection task and no channel between
//! them, and a response whose body arrived with its head is answered from memory. Everything
//! else (request bodies, upgrades, TLS, h2c) takes hyper's client connections.
//!
//! The response is framed as RFC 9112 §6.3 says: no body for `HEAD`, 1xx, 204 and 304; a
//! chunked body when `Transfer-Encoding` ends in `chunked` (trailers are read and dropped);
//! `Content-Length` bytes; otherwise the body runs to the end of the connection. A connection
//! goes back to the pool only when its response was read to the end, the upstream did not ask
//! to close it, and nothing unasked followed the response.

use std::{
    io,
    task::{Context, Poll, ready},
};

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version, header};
use http_body::{Frame, SizeHint};
use tokio::{io::AsyncWriteExt, net::TcpStream};

use crate::{body::BoxError, client::Http1Pool};

/// Most response header fields accepted (hyper's client default, too).
const MAX_HEADERS: usize = 100;
/// Largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Longest chunk-size or trailer line accepted.
const MAX_LINE: usize = 8 * 1024;
/// Read buffer growth step.
const READ_CHUNK: usize = 8 * 1024;

/// An upstream connection and the bytes read from it that no response has used yet.
#[derive(Debug)]
pub(crate) struct Conn {
    io: TcpStream,
    buf: BytesMut,
}

/// Why an exchange failed.
#[derive(Debug)]
pub(crate) enum H1Error {
    /// The connection failed or ended before any byte of a response arrived: a reused
    /// connection the upstream had closed, or an upstream that closed without answering.
    NoResponse(String),
    /// Anything later: a malformed or oversized response, or the connection failing in it.
    Failed(String),
}

impl Conn {
    pub(crate) fn new(io: TcpStream) -> Self {
        Self {
            io,
            buf: BytesMut::with_capacity(READ_CHUNK),
        }
    }

    /// Whether an idle connection can carry another request: the upstream has neither closed
    /// it nor sent anything unasked. No system call while the socket has not become readable
    /// (tokio knows its readiness from the event loop).
    pub(crate) fn is_usable(&self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut probe = [0u8; 1];
        matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    fn reserve(&mut self) {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
            self.buf.reserve(READ_CHUNK);
        }
    }

    /// Writes `request` (head and body) and reads the final response head (1xx interim
    /// responses skipped). `head_request`: the request was `HEAD` (its response has no body).
    pub(crate) async fn exchange(
        &mut self,
        request: &[u8],
        head_request: bool,
    ) -> Result<(Head, Framing), H1Error> {
        self.io
            .write_all(request)
            .await
            .map_err(|e| H1Error::NoResponse(e.to_string()))?;
        let mut answered = false;
        loop {
            if let Some(mut h) = parse_head(&self.buf).map_err(H1Error::Failed)? {
                let _ = self.buf.split_to(h.len);
                if h.status.is_informational() {
                    if h.status == StatusCode::SWITCHING_PROTOCOLS {
                        return Err(H1Error::Failed(
                            "101 Switching Protocols to a request that asked for no upgrade".into(),
                        ));
                    }
                    answered = true;
                    continue;
                }
                let framing = framing(&mut h, head_request).map_err(H1Error::Failed)?;
                return Ok((h, framing));
            }
            if self.buf.len() > MAX_HEAD {
                return Err(H1Error::Failed(format!(
                    "the response head is larger than {} KiB",
                    MAX_HEAD / 1024
                )));
            }
            self.reserve();
            let before = self.buf.len();
            let read = tokio::io::AsyncReadExt::read_buf(&mut self.io, &mut self.buf).await;
            let fresh = !answered && before == 0;
            match read {
                Ok(0) if fresh => {
                    return Err(H1Error::NoResponse(
                        "the connection was closed before a response".into(),
                    ));
                }
                Ok(0) => {
                    return Err(H1Error::Failed(
                        "the connection was closed in the response head".into(),
                    ));
                }
                Ok(_) => {}
                Err(e) if fresh => return Err(H1Error::NoResponse(e.to_string())),
                Err(e) => return Err(H1Error::Failed(e.to_string())),
            }
        }
    }

    /// Takes `n` bytes from the buffer when they are all there.
    pub(crate) fn take_buffered(&mut self, n: u64) -> Option<Bytes> {
        let n = usize::try_from(n).ok()?;
        (self.buf.len() >= n).then(|| self.buf.split_to(n).freeze())
    }

    /// Reads more into the buffer; `Ok(0)` at the end of the connection.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        self.reserve();
        loop {
            ready!(self.io.poll_read_ready(cx))?;
            match self.io.try_read_buf(&mut self.buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                r => return Poll::Ready(r),
            }
        }
    }
}

/// A request head written into one buffer, with its body after it: for one write.
pub(crate) struct RequestWriter(BytesMut);

impl RequestWriter {
    /// The request line of `method target` (`/` when `target` is empty), with room for about
    /// `headers` header fields.
    pub(crate) fn new(method: &Method, target: &str, headers: usize) -> Self {
        let mut b = BytesMut::with_capacity(256 + target.len() + 64 * headers);
        b.put_slice(method.as_str().as_bytes());
        b.put_u8(b' ');
        b.put_slice(if target.is_empty() {
            b"/"
        } else {
            target.as_bytes()
        });
        b.put_slice(b" HTTP/1.1\r\n");
        Self(b)
    }

    /// Adds a header field.
    pub(crate) fn header(&mut self, name: &HeaderName, value: &HeaderValue) {
        let b = &mut self.0;
        b.reserve(name.as_str().len() + value.len() + 4);
        b.put_slice(name.as_str().as_bytes());
        b.put_slice(b": ");
        b.put_slice(value.as_bytes());
        b.put_slice(b"\r\n");
    }

    /// Ends the head and adds `body` (whose `Content-Length` the caller wrote).
    pub(crate) fn finish(mut self, body: &[u8]) -> BytesMut {
        self.0.reserve(2 + body.len());
        self.0.put_slice(b"\r\n");
        self.0.put_slice(body);
        self.0
    }
}

/// A parsed response head.
#[derive(Debug)]
pub(crate) struct Head {
    pub(crate) status: StatusCode,
    pub(crate) version: Version,
    pub(crate) headers: HeaderMap,
    /// Bytes the head took.
    len: usize,
}

impl Head {
    /// Whether the connection may carry another request after this response.
    pub(crate) fn keep_alive(&self) -> bool {
        let mut close = self.version == Version::HTTP_10;
        for v in self.headers.get_all(header::CONNECTION) {
            for token in v.as_bytes().split(|b| *b == b',') {
                let t = token.trim_ascii();
                if t.eq_ignore_ascii_case(b"close") {
                    return false;
                }
                if t.eq_ignore_ascii_case(b"keep-alive") {
                    close = false;
                }
            }
        }
        !close
    }
}

/// The head at the start of `buf`, or `None` when it is not all there yet.
fn parse_head(buf: &[u8]) -> Result<Option<Head>, String> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut fields);
    let len = match res.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(format!(
                "the response has more than {MAX_HEADERS} header fields"
            ));
        }
        Err(e) => return Err(format!("malformed response head: {e}")),
    };
    let status = res
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or("malformed response head: invalid status code")?;
    let version = if res.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let mut headers = HeaderMap::with_capacity(res.headers.len());
    for f in res.headers.iter() {
        let name = HeaderName::from_bytes(f.name.as_bytes())
            .map_err(|_| format!("malformed response header name {:?}", f.name))?;
        let value = HeaderValue::from_bytes(f.value)
            .map_err(|_| format!("malformed value of response header {:?}", f.name))?;
        headers.append(name, value);
    }
    Ok(Some(Head {
        status,
        version,
        headers,
        len,
    }))
}

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the upstream closes the connection.
    UntilClose,
}

/// How `h`'s body is delimited. A `Content-Length` beside `Transfer-Encoding` is removed (RFC
/// 9112 §6.3: the transfer coding wins, and the client must not be told a wrong length).
fn framing(h: &mut Head, head_request: bool) -> Result<Framing, String> {
    if head_request
        || h.status.is_informational()
        || h.status == StatusCode::NO_CONTENT
        || h.status == StatusCode::NOT_MODIFIED
    {
        return Ok(Framing::Empty);
    }
    let mut te = h
        .headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .peekable();
    if te.peek().is_some() {
        let last = te
            .filter_map(|v| v.as_bytes().rsplit(|b| *b == b',').next())
            .last()
            .map(<[u8]>::trim_ascii);
        let framing = match last {
            Some(l) if l.eq_ignore_ascii_case(b"chunked") => Framing::Chunked,
            _ => Framing::UntilClose,
        };
        h.headers.remove(header::CONTENT_LENGTH);
        return Ok(framing);
    }
    let mut length: Option<u64> = None;
    for v in h.headers.get_all(header::CONTENT_LENGTH) {
        for part in v.as_bytes().split(|b| *b == b',') {
            let n = std::str::from_utf8(part.trim_ascii())
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or("the response has an invalid Content-Length")?;
            if length.is_some_and(|l| l != n) {
                return Err("the response has conflicting Content-Length values".into());
            }
            length = Some(n);
        }
    }
    Ok(match length {
        Some(0) => Framing::Empty,
        Some(n) => Framing::Length(n),
        None => Framing::UntilClose,
    })
}

/// Where a chunked body's decoder stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chunked {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data, with this many bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// Reading trailer lines (dropped) up to the empty line.
    Trailers,
    /// The body is complete.
    Done,
}

/// Decodes from `buf`: the next data, or `None` when `buf` holds no more of it (the body is
/// complete when the state is [`Chunked::Done`], else more input is needed).
fn decode_chunked(state: &mut Chunked, buf: &mut BytesMut) -> Result<Option<Bytes>, String> {
    loop {
        match *state {
            Chunked::Size => {
                let Some(end) = line_end(buf)? else {
                    return Ok(None);
                };
                let line = &buf[..end];
                let digits = line
                    .split(|b| *b == b';')
                    .next()
                    .unwrap_or_default()
                    .trim_ascii();
                let size = std::str::from_utf8(digits)
                    .ok()
                    .filter(|s| !s.is_empty() && s.len() <= 16)
                    .and_then(|s| u64::from_str_radix(s, 16).ok())
                    .ok_or("malformed chunk size in the response body")?;
                let _ = buf.split_to(end + 2);
                *state = if size == 0 {
                    Chunked::Trailers
                } else {
                    Chunked::Data(size)
                };
            }
            Chunked::Data(left) => {
                if buf.is_empty() {
                    return Ok(None);
                }
                let take = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                let data = buf.split_to(take).freeze();
                let left = left - take as u64;
                *state = if left == 0 {
                    Chunked::DataEnd
                } else {
                    Chunked::Data(left)
                };
                return Ok(Some(data));
            }
            Chunked::DataEnd => {
                if buf.len() < 2 {
                    return Ok(None);
                }
                if &buf[..2] != b"\r\n" {
                    return Err(
                        "malformed chunk in the response body: no CRLF after its data".into(),
                    );
                }
                let _ = buf.split_to(2);
                *state = Chunked::Size;
            }
            Chunked::Trailers => {
                let Some(end) = line_end(buf)? else {
                    return Ok(None);
                };
                let _ = buf.split_to(end + 2);
                if end == 0 {
                    *state = Chunked::Done;
                }
            }
            Chunked::Done => return Ok(None),
        }
    }
}

/// Where the CRLF ending the line at the start of `buf` is, if it is there.
fn line_end(buf: &[u8]) -> Result<Option<usize>, String> {
    match buf.windows(2).position(|w| w == b"\r\n") {
        Some(i) if i <= MAX_LINE => Ok(Some(i)),
        Some(_) => Err("a chunk-size or trailer line in the response body is too long".into()),
        None if buf.len() > MAX_LINE + 1 => {
            Err("a chunk-size or trailer line in the response body is too long".into())
        }
        None => Ok(None),
    }
}

/// What is left of a streamed response body.
#[derive(Debug)]
enum Left {
    Length(u64),
    Chunked(Chunked),
    UntilClose,
}

/// A response body still arriving on its connection. At its end the connection goes back to
/// the pool (when it may be reused); dropped before its end, the connection is closed.
#[derive(Debug)]
pub struct Streamed {
    conn: Option<Conn>,
    left: Left,
    /// The pool and key the connection goes back to.
    reuse: Option<(Http1Pool, Box<str>)>,
}

impl Streamed {
    pub(crate) fn new(conn: Conn, framing: Framing, reuse: Option<(Http1Pool, Box<str>)>) -> Self {
        let left = match framing {
            Framing::Empty => Left::Length(0),
            Framing::Length(n) => Left::Length(n),
            Framing::Chunked => Left::Chunked(Chunked::Size),
            Framing::UntilClose => Left::UntilClose,
        };
        Self {
            conn: Some(conn),
            left,
            reuse,
        }
    }

    fn finish(&mut self) {
        if let (Some(conn), Some((pool, key))) = (self.conn.take(), self.reuse.take()) {
            pool.checkin_raw(&key, conn);
        }
    }

    fn fail(&mut self, e: impl Into<BoxError>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.conn = None;
        Poll::Ready(Some(Err(e.into())))
    }

    pub(crate) fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match &mut self.left {
                Left::Length(0) => {
                    self.finish();
                    return Poll::Ready(None);
                }
                Left::Length(n) if !conn.buf.is_empty() => {
                    let take = usize::try_from(*n)
                        .unwrap_or(usize::MAX)
                        .min(conn.buf.len());
                    let data = conn.buf.split_to(take).freeze();
                    *n -= take as u64;
                    if *n == 0 {
                        self.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Left::Chunked(state) => match decode_chunked(state, &mut conn.buf) {
                    Ok(Some(data)) => {
                        if *state == Chunked::Done {
                            self.finish();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    Ok(None) if *state == Chunked::Done => {
                        self.finish();
                        return Poll::Ready(None);
                    }
                    Ok(None) => {}
                    Err(e) => return self.fail(e),
                },
                Left::UntilClose if !conn.buf.is_empty() => {
                    let data = conn.buf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Left::Length(_) | Left::UntilClose => {}
            }
            match ready!(conn.poll_fill(cx)) {
                Ok(0) if matches!(self.left, Left::UntilClose) => {
                    self.conn = None;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    return self.fail("the upstream closed the connection in the response body");
                }
                Ok(_) => {}
                Err(e) => return self.fail(e),
            }
        }
    }

    pub(crate) fn is_end_stream(&self) -> bool {
        self.conn.is_none() || matches!(self.left, Left::Length(0))
    }

    pub(crate) fn size_hint(&self) -> SizeHint {
        match self.left {
            Left::Length(n) if self.conn.is_some() => SizeHint::with_exact(n),
            Left::Length(_) => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Head {
        parse_head(text.as_bytes()).unwrap().unwrap()
    }

    #[test]
    fn a_partial_head_needs_more() {
        assert!(
            parse_head(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n")
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn heads_parse_with_their_length() {
        let h = head("HTTP/1.1 201 Created\r\nA: 1\r\na: 2\r\n\r\nbody");
        assert_eq!(h.status, StatusCode::CREATED);
        assert_eq!(h.len, 36);
        assert_eq!(h.headers.get_all("a").iter().count(), 2);
    }

    #[test]
    fn malformed_heads_are_errors() {
        assert!(parse_head(b"HTTP/1.1 2000 OK\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n").is_err());
        let many: String = (0..=MAX_HEADERS).map(|i| format!("h{i}: v\r\n")).collect();
        let e = parse_head(format!("HTTP/1.1 200 OK\r\n{many}\r\n").as_bytes()).unwrap_err();
        assert!(e.contains("more than 100"), "{e}");
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let f = |t: &str, head_request: bool| framing(&mut head(t), head_request);
        assert_eq!(
            f("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", false),
            Ok(Framing::Length(5))
        );
        assert_eq!(
            f("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", true),
            Ok(Framing::Empty)
        );
        assert_eq!(
            f("HTTP/1.1 204 No Content\r\n\r\n", false),
            Ok(Framing::Empty)
        );
        assert_eq!(
            f(
                "HTTP/1.1 304 Not Modified\r\ncontent-length: 9\r\n\r\n",
                false
            ),
            Ok(Framing::Empty)
        );
        assert_eq!(
            f(
                "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\ncontent-length: 3\r\n\r\n",
                false
            ),
            Ok(Framing::Chunked)
        );
        let mut both =
            head("HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n");
        assert_eq!(framing(&mut both, false), Ok(Framing::Chunked));
        assert!(!both.headers.contains_key(header::CONTENT_LENGTH));
        assert_eq!(
            f("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n", false),
            Ok(Framing::UntilClose)
        );
        assert_eq!(f("HTTP/1.1 200 OK\r\n\r\n", false), Ok(Framing::UntilClose));
        assert_eq!(
            f("HTTP/1.1 200 OK\r\ncontent-length: 4, 4\r\n\r\n", false),
            Ok(Framing::Length(4))
        );
        assert!(f("HTTP/1.1 200 OK\r\ncontent-length: 4, 5\r\n\r\n", false).is_err());
        assert!(f("HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n", false).is_err());
        assert!(f("HTTP/1.1 200 OK\r\ncontent-length: +1\r\n\r\n", false).is_err());
    }

    #[test]
    fn keep_alive_follows_version_and_connection() {
        assert!(head("HTTP/1.1 200 OK\r\n\r\n").keep_alive());
        assert!(!head("HTTP/1.1 200 OK\r\nConnection: Close\r\n\r\n").keep_alive());
        assert!(!head("HTTP/1.1 200 OK\r\nconnection: foo, close\r\n\r\n").keep_alive());
        assert!(!head("HTTP/1.0 200 OK\r\n\r\n").keep_alive());
        assert!(head("HTTP/1.0 200 OK\r\nconnection: keep-alive\r\n\r\n").keep_alive());
    }

    fn decode_all(input: &[u8], split: usize) -> Result<(Vec<u8>, Chunked), String> {
        let mut state = Chunked::Size;
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for piece in input.chunks(split.max(1)) {
            buf.extend_from_slice(piece);
            while let Some(d) = decode_chunked(&mut state, &mut buf)? {
                out.extend_from_slice(&d);
            }
        }
        Ok((out, state))
    }

    #[test]
    fn chunked_bodies_decode_however_they_arrive() {
        let body = b"5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nx-trailer: 1\r\n\r\n";
        for split in 1..=body.len() {
            let (out, state) = decode_all(body, split).unwrap();
            assert_eq!(out, b"hello, world", "split {split}");
            assert_eq!(state, Chunked::Done, "split {split}");
        }
        let (out, state) = decode_all(b"A\r\n0123456789\r\n", 4).unwrap();
        assert_eq!(out, b"0123456789");
        assert_eq!(state, Chunked::Size, "more input needed");
    }

    #[test]
    fn malformed_chunks_are_errors() {
        assert!(decode_all(b"zz\r\n", 64).is_err());
        assert!(decode_all(b"2\r\nabX\r\n", 64).is_err());
        assert!(decode_all(b"\r\n", 64).is_err());
        assert!(decode_all(b"11111111111111111\r\n", 64).is_err());
        assert!(decode_all(&vec![b'1'; MAX_LINE + 10], 64).is_err());
    }

    #[test]
    fn requests_are_written_head_then_body() {
        let mut w = RequestWriter::new(&Method::GET, "/p?q=1", 1);
        w.header(&header::HOST, &HeaderValue::from_static("up:80"));
        w.header(
            &HeaderName::from_static("x-a"),
            &HeaderValue::from_static("1"),
        );
        assert_eq!(
            &w.finish(b"")[..],
            b"GET /p?q=1 HTTP/1.1\r\nhost: up:80\r\nx-a: 1\r\n\r\n"
        );
        let w = RequestWriter::new(&Method::DELETE, "", 0);
        assert_eq!(&w.finish(b"")[..], b"DELETE / HTTP/1.1\r\n\r\n");
        // More headers than the room asked for, and a body.
        let mut w = RequestWriter::new(&Method::POST, "/o", 0);
        let long = HeaderValue::from_str(&"v".repeat(600)).unwrap();
        w.header(&HeaderName::from_static("x-long"), &long);
        w.header(&header::CONTENT_LENGTH, &HeaderValue::from_static("7"));
        let b = w.finish(b"{\"a\":1}");
        let expected = format!(
            "POST /o HTTP/1.1\r\nx-long: {}\r\ncontent-length: 7\r\n\r\n{{\"a\":1}}",
            "v".repeat(600)
        );
        assert_eq!(&b[..], expected.as_bytes());
    }
}
