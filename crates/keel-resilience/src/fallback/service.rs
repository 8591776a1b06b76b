use std::fmt;
use std::future::Future;
use std::task::{Context, Poll};

use tower::Service;

use super::ResponseFuture;
use crate::BoxError;

/// A tower service with a fallback (see [`FallbackLayer`](super::FallbackLayer)).
#[derive(Clone)]
pub struct FallbackService<S, F> {
    inner: S,
    f: F,
}

impl<S, F> FallbackService<S, F> {
    /// Wrap `inner`.
    pub fn new(inner: S, f: F) -> Self {
        Self { inner, f }
    }
}

impl<S, F, Fut, R> Service<R> for FallbackService<S, F>
where
    S: Service<R>,
    S::Error: Into<BoxError>,
    F: Fn(BoxError) -> Fut + Clone,
    Fut: Future<Output = Result<S::Response, BoxError>>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, F, Fut>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: R) -> Self::Future {
        ResponseFuture::new(self.inner.call(request), self.f.clone())
    }
}

impl<S: fmt::Debug, F> fmt::Debug for FallbackService<S, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}
