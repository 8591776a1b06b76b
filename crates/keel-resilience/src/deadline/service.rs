use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;
use tower::Service;

use super::{Deadline, DeadlineCarrier, ResponseFuture};
use crate::BoxError;

/// A service whose calls are bounded by a deadline (see [`DeadlineLayer`](super::DeadlineLayer)).
#[derive(Debug, Clone)]
pub struct DeadlineService<S> {
    inner: S,
    budget: Option<Duration>,
}

impl<S> DeadlineService<S> {
    /// Wrap `inner` with an optional budget of its own.
    pub fn new(inner: S, budget: Option<Duration>) -> Self {
        Self { inner, budget }
    }
}

impl<S, R> Service<R> for DeadlineService<S>
where
    S: Service<R>,
    S::Error: Into<BoxError>,
    R: DeadlineCarrier,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: R) -> Self::Future {
        let now = Instant::now();
        let own = self.budget.map(|budget| Deadline::after_at(budget, now));
        let deadline = Deadline::nearest(
            Deadline::nearest(own, request.deadline()),
            Deadline::current(),
        );
        match deadline {
            None => ResponseFuture::unbounded(self.inner.call(request)),
            Some(deadline) if deadline.instant() <= now => ResponseFuture::expired(),
            Some(deadline) => {
                request.set_deadline(deadline);
                let inner = &mut self.inner;
                let future = deadline.sync_scoped(|| inner.call(request));
                ResponseFuture::bounded(deadline, future)
            }
        }
    }
}
