use std::task::{Context, Poll};

use tower::{Service, ServiceExt};

use super::{RateLimiter, ResponseFuture};
use crate::BoxError;

/// A tower service behind a [`RateLimiter`] (see [`RateLimiterLayer`](super::RateLimiterLayer)).
///
/// The token is taken in `call`; a wait for it happens inside the response future, where an
/// enclosing deadline bounds it.
#[derive(Debug, Clone)]
pub struct RateLimiterService<S> {
    inner: S,
    limiter: RateLimiter,
}

impl<S> RateLimiterService<S> {
    /// Wrap `inner`.
    pub fn new(inner: S, limiter: RateLimiter) -> Self {
        Self { inner, limiter }
    }
}

impl<S, R> Service<R> for RateLimiterService<S>
where
    S: Service<R> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    R: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, S::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: R) -> Self::Future {
        let wait = match self.limiter.reserve(self.limiter.max_wait()) {
            Ok(wait) => wait,
            Err(rejected) => return ResponseFuture::rejected(rejected),
        };
        if wait.is_zero() {
            return ResponseFuture::admitted(self.inner.call(request));
        }
        let clone = self.inner.clone();
        let service = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::waiting(async move {
            tokio::time::sleep(wait).await;
            let mut service = service;
            let service = service.ready().await.map_err(Into::into)?;
            service.call(request).await.map_err(Into::into)
        })
    }
}
