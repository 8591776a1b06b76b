//! W3C Trace Context (`traceparent` / `tracestate`): parsing, generation and propagation.
//!
//! The chassis's server stack reads the incoming context, starts a server span that is its
//! child, and makes the result the *current* context for the request's task. Outgoing calls
//! made from that task carry it on through [`inject`] or [`PropagateTraceLayer`].

use std::{
    fmt,
    task::{Context, Poll},
};

use http::{HeaderMap, HeaderName, HeaderValue, Request};

/// Header carrying the trace id, parent span id and flags.
pub const TRACEPARENT: &str = "traceparent";
/// Header carrying vendor-specific trace state.
pub const TRACESTATE: &str = "tracestate";

// The same names as `HeaderName`s: a map lookup with a `&str` validates and lower-cases the
// name first, on every request.
const TRACEPARENT_NAME: HeaderName = HeaderName::from_static(TRACEPARENT);
const TRACESTATE_NAME: HeaderName = HeaderName::from_static(TRACESTATE);

/// The trace context of the current unit of work.
#[derive(Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// 16-byte trace id, shared by every span of the trace.
    pub trace_id: [u8; 16],
    /// 8-byte id of the current span.
    pub span_id: [u8; 8],
    /// The span id of the caller's span, when there was one.
    pub parent_span_id: Option<[u8; 8]>,
    /// Trace flags (bit 0: sampled).
    pub flags: u8,
    /// The `tracestate` header, passed on unchanged.
    pub tracestate: Option<String>,
}

impl fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TraceContext")
            .field("trace_id", &self.trace_id_hex())
            .field("span_id", &self.span_id_hex())
            .field("flags", &self.flags)
            .finish()
    }
}

/// A parsed `traceparent` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    /// The trace id.
    pub trace_id: [u8; 16],
    /// The caller's span id.
    pub parent_id: [u8; 8],
    /// Trace flags.
    pub flags: u8,
}

impl TraceParent {
    /// Parses a version-00 (or later, forward-compatibly) `traceparent` value.
    /// Returns `None` for anything malformed, including all-zero ids.
    pub fn parse(value: &str) -> Option<Self> {
        let value = value.trim();
        let mut parts = value.split('-');
        let version = parts.next()?;
        let trace = parts.next()?;
        let parent = parts.next()?;
        let flags = parts.next()?;
        if version.len() != 2 || version.eq_ignore_ascii_case("ff") {
            return None;
        }
        // Version 00 has exactly four fields; later versions may append more.
        if version == "00" && parts.next().is_some() {
            return None;
        }
        if trace.len() != 32 || parent.len() != 16 || flags.len() != 2 {
            return None;
        }
        let mut trace_id = [0u8; 16];
        let mut parent_id = [0u8; 8];
        let mut flag = [0u8; 1];
        decode_hex(trace, &mut trace_id)?;
        decode_hex(parent, &mut parent_id)?;
        decode_hex(flags, &mut flag)?;
        if trace_id == [0; 16] || parent_id == [0; 8] {
            return None;
        }
        Some(Self {
            trace_id,
            parent_id,
            flags: flag[0],
        })
    }
}

impl TraceContext {
    /// A new root context (new trace id), sampled.
    pub fn new_root() -> Self {
        Self {
            trace_id: nonzero_random(),
            span_id: nonzero_random(),
            parent_span_id: None,
            flags: 1,
            tracestate: None,
        }
    }

    /// A server span continuing the caller's trace, or a new root when there is none.
    pub fn continue_from(parent: Option<TraceParent>, tracestate: Option<String>) -> Self {
        match parent {
            Some(p) => Self {
                trace_id: p.trace_id,
                span_id: nonzero_random(),
                parent_span_id: Some(p.parent_id),
                flags: p.flags,
                tracestate,
            },
            None => Self::new_root(),
        }
    }

    /// Reads the context from request headers and starts a child span of it.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let parent = headers
            .get(&TRACEPARENT_NAME)
            .and_then(|v| v.to_str().ok())
            .and_then(TraceParent::parse);
        let state = parent.and(
            headers
                .get(&TRACESTATE_NAME)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        );
        Self::continue_from(parent, state)
    }

    /// A child span of this one (same trace, new span id).
    pub fn child(&self) -> Self {
        Self {
            trace_id: self.trace_id,
            span_id: nonzero_random(),
            parent_span_id: Some(self.span_id),
            flags: self.flags,
            tracestate: self.tracestate.clone(),
        }
    }

    /// The trace id as 32 lowercase hex digits.
    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }

    /// The span id as 16 lowercase hex digits.
    pub fn span_id_hex(&self) -> String {
        hex(&self.span_id)
    }

    /// The `traceparent` value naming this span as the parent.
    pub fn traceparent(&self) -> String {
        String::from_utf8(self.traceparent_bytes().to_vec()).unwrap_or_default()
    }

    /// `traceparent` as bytes, built without formatting machinery (it is written on every
    /// proxied request).
    fn traceparent_bytes(&self) -> [u8; 55] {
        let mut out = [b'-'; 55];
        out[..2].copy_from_slice(b"00");
        hex_into(&self.trace_id, &mut out[3..35]);
        hex_into(&self.span_id, &mut out[36..52]);
        hex_into(&[self.flags], &mut out[53..55]);
        out
    }

    /// Writes `traceparent` (and `tracestate`, when present) into `headers`.
    pub fn write_headers(&self, headers: &mut HeaderMap) {
        for (name, value) in self.headers() {
            headers.insert(name, value);
        }
    }

    /// The headers that carry this context to the next hop: `traceparent`, and `tracestate`
    /// when there is one. (What [`write_headers`](Self::write_headers) inserts, for callers
    /// that write a request head without a `HeaderMap`.)
    pub fn headers(&self) -> impl Iterator<Item = (HeaderName, HeaderValue)> + use<> {
        let parent = HeaderValue::from_bytes(&self.traceparent_bytes())
            .ok()
            .map(|v| (TRACEPARENT_NAME, v));
        let state = self
            .tracestate
            .as_deref()
            .and_then(|s| HeaderValue::from_str(s).ok())
            .map(|v| (TRACESTATE_NAME, v));
        parent.into_iter().chain(state)
    }
}

tokio::task_local! {
    static CURRENT: TraceContext;
}

/// The trace context of the request (or message) this task is handling, if any.
pub fn current() -> Option<TraceContext> {
    CURRENT.try_with(Clone::clone).ok()
}

/// Runs `fut` with `cx` as the current trace context.
pub async fn scope<F: Future>(cx: TraceContext, fut: F) -> F::Output {
    CURRENT.scope(cx, fut).await
}

/// Writes the current trace context into outgoing `headers`; does nothing outside a
/// traced task. Call this on every outgoing request that is not sent through
/// [`PropagateTraceLayer`].
pub fn inject(headers: &mut HeaderMap) {
    if let Some(cx) = current() {
        cx.write_headers(headers);
    }
}

/// A tower layer for HTTP *clients* that writes the current trace context into every
/// outgoing request that does not carry one already.
#[derive(Debug, Clone, Copy, Default)]
pub struct PropagateTraceLayer;

impl<S> tower::Layer<S> for PropagateTraceLayer {
    type Service = PropagateTrace<S>;
    fn layer(&self, inner: S) -> Self::Service {
        PropagateTrace { inner }
    }
}

/// The service built by [`PropagateTraceLayer`].
#[derive(Debug, Clone)]
pub struct PropagateTrace<S> {
    inner: S,
}

impl<S, B> tower::Service<Request<B>> for PropagateTrace<S>
where
    S: tower::Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        if !req.headers().contains_key(TRACEPARENT) {
            inject(req.headers_mut());
        }
        self.inner.call(req)
    }
}

thread_local! {
    /// Ids come from a fast generator seeded from the operating system once per thread: trace
    /// and span ids must not collide, but they are not secrets (they travel in headers and
    /// logs), so a cryptographic generator per id is not needed.
    static IDS: std::cell::RefCell<rand::rngs::SmallRng> = std::cell::RefCell::new(seeded());
}

fn seeded() -> rand::rngs::SmallRng {
    use rand::SeedableRng;
    rand::rngs::SmallRng::try_from_os_rng().unwrap_or_else(|_| {
        // No OS entropy: seeded from the clock and the thread.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let thread = std::hash::BuildHasher::hash_one(
            &std::collections::hash_map::RandomState::new(),
            std::thread::current().id(),
        );
        rand::rngs::SmallRng::seed_from_u64(nanos ^ thread)
    })
}

fn nonzero_random<const N: usize>() -> [u8; N] {
    use rand::RngCore;
    IDS.with(|ids| {
        let mut ids = ids.borrow_mut();
        loop {
            let mut v = [0u8; N];
            ids.fill_bytes(&mut v);
            if v.iter().any(|b| *b != 0) {
                return v;
            }
        }
    })
}

fn hex(bytes: &[u8]) -> String {
    let mut out = vec![0u8; bytes.len() * 2];
    hex_into(bytes, &mut out);
    String::from_utf8(out).unwrap_or_default()
}

/// Writes `bytes` as lowercase hex digits into `out` (twice as long).
fn hex_into(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (b, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        pair[0] = DIGITS[(b >> 4) as usize];
        pair[1] = DIGITS[(b & 0xf) as usize];
    }
}

fn decode_hex(s: &str, out: &mut [u8]) -> Option<()> {
    let bytes = s.as_bytes();
    if bytes.len() != out.len() * 2 {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None, // W3C requires lowercase
    };
    for (i, o) in out.iter_mut().enumerate() {
        *o = (nibble(bytes[2 * i])? << 4) | nibble(bytes[2 * i + 1])?;
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn ids_are_distinct_within_and_across_threads() {
        let ids = || {
            (0..2000)
                .map(|_| TraceContext::new_root())
                .map(|cx| (cx.trace_id, cx.span_id))
                .collect::<Vec<_>>()
        };
        let mut all = ids();
        all.extend(std::thread::spawn(ids).join().unwrap());
        assert!(all.iter().all(|(t, s)| *t != [0; 16] && *s != [0; 8]));
        let traces: std::collections::HashSet<_> = all.iter().map(|(t, _)| *t).collect();
        let spans: std::collections::HashSet<_> = all.iter().map(|(_, s)| *s).collect();
        assert_eq!(traces.len(), all.len());
        assert_eq!(spans.len(), all.len());
    }

    #[test]
    fn parses_the_spec_example() {
        let p = TraceParent::parse(TP).unwrap();
        assert_eq!(hex(&p.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex(&p.parent_id), "00f067aa0ba902b7");
        assert_eq!(p.flags, 1);
    }

    #[test]
    fn formats_traceparent_as_the_spec_does() {
        let p = TraceParent::parse(TP).unwrap();
        let cx = TraceContext {
            trace_id: p.trace_id,
            span_id: p.parent_id,
            parent_span_id: None,
            flags: 1,
            tracestate: None,
        };
        assert_eq!(cx.traceparent(), TP);
        let mut h = HeaderMap::new();
        cx.write_headers(&mut h);
        assert_eq!(h[TRACEPARENT], TP);
        let sampled_out = TraceContext { flags: 0, ..cx };
        assert!(sampled_out.traceparent().ends_with("-00"));
    }

    #[test]
    fn rejects_malformed_values() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-xyz92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad:?}");
        }
        // A future version may carry more fields.
        assert!(TraceParent::parse(&format!("01{}-more", &TP[2..])).is_some());
    }

    #[test]
    fn continues_the_callers_trace() {
        let mut h = HeaderMap::new();
        h.insert(TRACEPARENT, HeaderValue::from_static(TP));
        h.insert(TRACESTATE, HeaderValue::from_static("vendor=1"));
        let cx = TraceContext::from_headers(&h);
        assert_eq!(cx.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(cx.span_id_hex(), "00f067aa0ba902b7");
        assert_eq!(
            cx.parent_span_id.map(|p| hex(&p)).as_deref(),
            Some("00f067aa0ba902b7")
        );
        let mut out = HeaderMap::new();
        cx.write_headers(&mut out);
        let tp = out[TRACEPARENT].to_str().unwrap();
        assert!(tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert_eq!(TraceParent::parse(tp).unwrap().parent_id, cx.span_id);
        assert_eq!(out[TRACESTATE], "vendor=1");
    }

    #[test]
    fn starts_a_root_without_valid_parent() {
        let mut h = HeaderMap::new();
        h.insert(TRACEPARENT, HeaderValue::from_static("garbage"));
        h.insert(TRACESTATE, HeaderValue::from_static("vendor=1"));
        let cx = TraceContext::from_headers(&h);
        assert_eq!(cx.parent_span_id, None);
        assert_eq!(
            cx.tracestate, None,
            "tracestate without traceparent is dropped"
        );
    }

    #[tokio::test]
    async fn inject_uses_the_current_context() {
        let cx = TraceContext::new_root();
        let mut h = HeaderMap::new();
        inject(&mut h);
        assert!(h.is_empty());
        scope(cx.clone(), async {
            inject(&mut h);
        })
        .await;
        assert_eq!(h[TRACEPARENT], cx.traceparent().as_str());
    }
}
