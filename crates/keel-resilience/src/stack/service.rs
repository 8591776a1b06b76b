use std::fmt;
use std::task::{Context, Poll};

use tower::Service;
use tower::util::Either;

use crate::BoxError;
use crate::bulkhead::BulkheadService;
use crate::circuit_breaker::CircuitBreakerService;
use crate::deadline::DeadlineService;
use crate::rate_limiter::RateLimiterService;
use crate::retry::RetryService;

type Attempt<S> = DeadlineService<S>;
type Breaker<S, BC> = Either<CircuitBreakerService<Attempt<S>, BC>, Attempt<S>>;
type Retried<S, BC, RC> = Either<RetryService<Breaker<S, BC>, RC>, Breaker<S, BC>>;
type Bulkheaded<S, BC, RC> = Either<BulkheadService<Retried<S, BC, RC>>, Retried<S, BC, RC>>;
type Limited<S, BC, RC> = Either<RateLimiterService<Bulkheaded<S, BC, RC>>, Bulkheaded<S, BC, RC>>;
type Stack<S, BC, RC> = DeadlineService<Limited<S, BC, RC>>;

/// The service built by [`ResilienceLayer`](super::ResilienceLayer).
pub struct ResilienceService<S, BC, RC> {
    inner: Stack<S, BC, RC>,
}

impl<S, BC, RC> ResilienceService<S, BC, RC> {
    pub(crate) fn new(inner: Stack<S, BC, RC>) -> Self {
        Self { inner }
    }
}

impl<S, BC, RC, R> Service<R> for ResilienceService<S, BC, RC>
where
    Stack<S, BC, RC>: Service<R, Error = BoxError>,
{
    type Response = <Stack<S, BC, RC> as Service<R>>::Response;
    type Error = BoxError;
    type Future = <Stack<S, BC, RC> as Service<R>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        self.inner.call(request)
    }
}

impl<S: Clone, BC: Clone, RC: Clone> Clone for ResilienceService<S, BC, RC> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<S: fmt::Debug, BC, RC> fmt::Debug for ResilienceService<S, BC, RC> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResilienceService").finish_non_exhaustive()
    }
}
