//! How long a client connection may go without a request in progress: the time a client has
//! to send a request head (slow-loris protection) after connecting or after its previous
//! response, which is also how long an idle keep-alive connection is kept.
//!
//! One timer per connection, not per request: a request marks the connection busy until its
//! response body has been sent ([`Busy`], carried by the response body as [`Tracked`]), and
//! the connection's watchdog, when it fires, either finds the connection idle for the whole
//! timeout and closes it, or sleeps again until the new deadline. hyper's own header-read
//! timeout arms a fresh timer for every request instead, and registering it in the runtime's
//! timer wheel was a measurable part of a proxied request's latency at moderate load.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::time::Instant;

use crate::body::{Body, BoxError};

/// A connection's requests in progress and when it last became idle.
#[derive(Debug)]
pub(crate) struct ConnWatch {
    /// When the connection was accepted: the origin of `idle_since_ms`.
    origin: Instant,
    /// Requests started whose response has not been sent completely.
    busy: AtomicU32,
    /// Milliseconds after `origin` when `busy` last went to zero.
    idle_since_ms: AtomicU64,
}

/// What the watchdog found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Check {
    /// Idle for the whole timeout: close the connection.
    Expired,
    /// Look again at this instant.
    Until(Instant),
}

impl ConnWatch {
    pub(crate) fn new() -> Self {
        Self {
            origin: Instant::now(),
            busy: AtomicU32::new(0),
            idle_since_ms: AtomicU64::new(0),
        }
    }

    /// A request starts; the connection is busy until the returned guard is dropped.
    pub(crate) fn begin(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::AcqRel);
        Busy(self.clone())
    }

    fn end(&self) {
        if self.busy.fetch_sub(1, Ordering::AcqRel) == 1 {
            let ms = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
            self.idle_since_ms.store(ms, Ordering::Release);
        }
    }

    /// Whether the connection has been idle for `timeout` at `now`, or when to look again.
    pub(crate) fn check(&self, timeout: Duration, now: Instant) -> Check {
        if self.busy.load(Ordering::Acquire) > 0 {
            return Check::Until(now + timeout);
        }
        let idle_since =
            self.origin + Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire));
        let deadline = idle_since + timeout;
        // A request that began and ended since the last look moved `idle_since` forward.
        if now >= deadline && self.busy.load(Ordering::Acquire) == 0 {
            Check::Expired
        } else {
            Check::Until(deadline.max(now + Duration::from_millis(1)))
        }
    }
}

/// A request in progress on a connection (see [`ConnWatch::begin`]).
#[derive(Debug)]
pub(crate) struct Busy(Arc<ConnWatch>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// A response body that keeps its request's connection busy until it has been sent (or
/// dropped).
#[derive(Debug)]
pub(crate) struct Tracked {
    body: Body,
    _busy: Busy,
}

impl Tracked {
    pub(crate) fn new(body: Body, busy: Busy) -> Self {
        Self { body, _busy: busy }
    }
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(30);

    #[tokio::test(start_paused = true)]
    async fn idle_for_the_timeout_expires_and_a_request_moves_the_deadline() {
        let w = Arc::new(ConnWatch::new());
        let start = Instant::now();
        assert_eq!(w.check(T, start), Check::Until(start + T));
        assert_eq!(w.check(T, start + T), Check::Expired);

        tokio::time::advance(Duration::from_secs(10)).await;
        drop(w.begin());
        let idle = Instant::now();
        assert_eq!(w.check(T, start + T), Check::Until(idle + T));
        assert_eq!(w.check(T, idle + T), Check::Expired);
    }

    #[tokio::test(start_paused = true)]
    async fn never_expires_while_a_request_is_in_progress() {
        let w = Arc::new(ConnWatch::new());
        let a = w.begin();
        let b = w.begin();
        let later = Instant::now() + 10 * T;
        assert_eq!(w.check(T, later), Check::Until(later + T));
        drop(a);
        assert_eq!(
            w.check(T, later),
            Check::Until(later + T),
            "one still in progress"
        );
        tokio::time::advance(Duration::from_secs(5)).await;
        drop(b);
        let idle = Instant::now();
        assert_eq!(w.check(T, idle), Check::Until(idle + T));
        assert_eq!(w.check(T, idle + T), Check::Expired);
    }

    #[tokio::test]
    async fn the_tracked_body_ends_the_request_when_dropped() {
        use http_body_util::BodyExt;
        let w = Arc::new(ConnWatch::new());
        let body = Tracked::new(Body::full("abc"), w.begin());
        assert!(matches!(w.check(T, Instant::now() + T), Check::Until(_)));
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"abc");
        assert_eq!(w.check(T, Instant::now() + T), Check::Expired);
    }
}
