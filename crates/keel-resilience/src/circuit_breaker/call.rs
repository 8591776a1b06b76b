use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;

use super::breaker::{CircuitBreaker, Permit};
use super::error::CircuitBreakerError;
use crate::classify::Classify;

pin_project! {
    /// Future of [`CircuitBreaker::call`] and [`CircuitBreaker::call_with`]: asks the breaker on
    /// first poll, then runs the call and records its outcome. Dropped early, it records
    /// nothing and gives a HALF_OPEN trial permit back.
    #[must_use = "futures do nothing unless polled"]
    pub struct Call<'a, F, C: ?Sized> {
        breaker: &'a CircuitBreaker,
        classifier: &'a C,
        permit: Option<Permit<'a>>,
        started: bool,
        #[pin]
        future: F,
    }
}

impl<'a, F, C: ?Sized> Call<'a, F, C> {
    pub(crate) fn new(breaker: &'a CircuitBreaker, classifier: &'a C, future: F) -> Self {
        Self {
            breaker,
            classifier,
            permit: None,
            started: false,
            future,
        }
    }
}

impl<F, C, T, E> Future for Call<'_, F, C>
where
    F: Future<Output = Result<T, E>>,
    C: Classify<T, E> + ?Sized,
{
    type Output = Result<T, CircuitBreakerError<E>>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if !*this.started {
            *this.started = true;
            match this.breaker.try_acquire() {
                Ok(permit) => *this.permit = Some(permit),
                Err(rejected) => {
                    return Poll::Ready(Err(CircuitBreakerError::NotPermitted(rejected)));
                }
            }
        }
        let result = ready!(this.future.poll(cx));
        if let Some(permit) = this.permit.take() {
            permit.record(this.classifier.classify(&result));
        }
        Poll::Ready(result.map_err(CircuitBreakerError::Inner))
    }
}

impl<F, C: ?Sized> fmt::Debug for Call<'_, F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Call")
            .field("breaker", &self.breaker.name())
            .field("started", &self.started)
            .finish_non_exhaustive()
    }
}
