use std::task::{Context, Poll};

use tower::{Service, ServiceExt};

use super::{Bulkhead, ResponseFuture};
use crate::BoxError;

/// A tower service behind a [`Bulkhead`] (see [`BulkheadLayer`](super::BulkheadLayer)).
///
/// `poll_ready` reports the inner service's readiness only; the slot is taken in `call`, so a
/// wait for a slot happens inside the response future, where an enclosing deadline bounds it.
#[derive(Debug, Clone)]
pub struct BulkheadService<S> {
    inner: S,
    bulkhead: Bulkhead,
}

impl<S> BulkheadService<S> {
    /// Wrap `inner`.
    pub fn new(inner: S, bulkhead: Bulkhead) -> Self {
        Self { inner, bulkhead }
    }
}

impl<S, R> Service<R> for BulkheadService<S>
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
        if let Ok(permit) = self.bulkhead.inner.semaphore.clone().try_acquire_owned() {
            let permit = self.bulkhead.permit(permit);
            return ResponseFuture::admitted(self.inner.call(request), permit);
        }
        if self.bulkhead.config().max_wait_duration.is_zero() {
            return ResponseFuture::rejected(self.bulkhead.reject());
        }
        let clone = self.inner.clone();
        let service = std::mem::replace(&mut self.inner, clone);
        let bulkhead = self.bulkhead.clone();
        ResponseFuture::waiting(async move {
            let _permit = bulkhead.acquire().await?;
            let mut service = service;
            let service = service.ready().await.map_err(Into::into)?;
            service.call(request).await.map_err(Into::into)
        })
    }
}
