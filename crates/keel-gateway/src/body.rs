//! The one body type the gateway sends and answers with: a streamed hyper body (the client's
//! request going up, the upstream's response coming down), a response body read straight off
//! a fast-path upstream connection, a byte buffer (problems, composed
//! documents, replayable retries), or nothing. No boxing on the hot path.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;

/// Boxed error, as hyper and tower use.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body went past its limit while streaming.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the request body is larger than {limit} bytes")]
pub struct BodyTooLarge {
    /// The limit.
    pub limit: u64,
}

/// A body.
#[derive(Debug, Default)]
pub enum Body {
    /// Nothing.
    #[default]
    Empty,
    /// Bytes in memory.
    Full(Option<Bytes>),
    /// A streamed body.
    Incoming(Incoming),
    /// A streamed body cut off at a limit.
    Limited(Limited),
    /// A response body still arriving on a fast-path upstream connection.
    Upstream(crate::h1::Streamed),
}

/// A streamed body with a byte limit; exceeding it ends the stream with [`BodyTooLarge`]
/// and raises the shared flag.
#[derive(Debug)]
pub struct Limited {
    inner: Incoming,
    remaining: u64,
    limit: u64,
    tripped: Arc<AtomicBool>,
}

impl Body {
    /// A body of `bytes`.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let b = bytes.into();
        if b.is_empty() {
            Body::Empty
        } else {
            Body::Full(Some(b))
        }
    }

    /// `inner`, ending with an error after `limit` bytes; `tripped` is set when that happens.
    pub fn limited(inner: Incoming, limit: u64, tripped: Arc<AtomicBool>) -> Self {
        Body::Limited(Limited {
            inner,
            remaining: limit,
            limit,
            tripped,
        })
    }
}

impl From<Incoming> for Body {
    fn from(b: Incoming) -> Self {
        Body::Incoming(b)
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Body::Empty => Poll::Ready(None),
            Body::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Body::Incoming(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Body::Limited(l) => {
                let frame = match Pin::new(&mut l.inner).poll_frame(cx) {
                    Poll::Ready(Some(Ok(f))) => f,
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
                    Poll::Ready(None) => return Poll::Ready(None),
                    Poll::Pending => return Poll::Pending,
                };
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    if n > l.remaining {
                        l.tripped.store(true, Ordering::Release);
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge { limit: l.limit }))));
                    }
                    l.remaining -= n;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Body::Upstream(s) => s.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Empty => true,
            Body::Full(b) => b.is_none(),
            Body::Incoming(b) => b.is_end_stream(),
            Body::Limited(l) => l.inner.is_end_stream(),
            Body::Upstream(s) => s.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Empty => SizeHint::with_exact(0),
            Body::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Body::Incoming(b) => b.size_hint(),
            Body::Limited(l) => l.inner.size_hint(),
            Body::Upstream(s) => s.size_hint(),
        }
    }
}
