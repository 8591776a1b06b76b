//! Fallbacks: turn a rejected or failed call into a fallback value or a fallback call, with the
//! cause at hand.
//!
//! For futures, [`FallbackExt`]:
//!
//! ```
//! # async fn demo(breaker: keel_resilience::CircuitBreaker) {
//! use keel_resilience::{CircuitBreakerError, FallbackExt};
//!
//! let price = breaker
//!     .call(async { Err::<u32, &str>("pricing is down") })
//!     .fallback_value(|error| match error {
//!         CircuitBreakerError::NotPermitted(_) => 0, // breaker open: don't even try
//!         CircuitBreakerError::Inner(_) => 1,
//!     })
//!     .await;
//! # }
//! ```
//!
//! For tower services, [`FallbackLayer`], whose function receives the [`BoxError`] and can
//! tell Keel's rejections from other failures with [`Cause::of`].

mod future;
mod layer;
mod service;

use std::error::Error;
use std::future::Future;

use http::StatusCode;

pub use future::{Fallback, FallbackValue, ResponseFuture};
pub use layer::FallbackLayer;
pub use service::FallbackService;

use crate::bulkhead::BulkheadFull;
use crate::circuit_breaker::CallNotPermitted;
use crate::deadline::DeadlineExceeded;
use crate::rate_limiter::RateLimited;

/// Why a call produced an error: one of Keel's rejections, or the call's own failure.
#[derive(Debug, Clone, Copy)]
pub enum Cause<'a> {
    /// A circuit breaker rejected it.
    NotPermitted(&'a CallNotPermitted),
    /// Its deadline passed.
    DeadlineExceeded(&'a DeadlineExceeded),
    /// A bulkhead was full.
    BulkheadFull(&'a BulkheadFull),
    /// A rate limiter had no token.
    RateLimited(&'a RateLimited),
    /// The call itself failed.
    Failed(&'a (dyn Error + 'static)),
}

impl<'a> Cause<'a> {
    /// Classify `error`, looking through its chain of sources for a Keel rejection.
    pub fn of(error: &'a (dyn Error + 'static)) -> Self {
        let mut current = Some(error);
        while let Some(e) = current {
            if let Some(e) = e.downcast_ref::<CallNotPermitted>() {
                return Cause::NotPermitted(e);
            }
            if let Some(e) = e.downcast_ref::<DeadlineExceeded>() {
                return Cause::DeadlineExceeded(e);
            }
            if let Some(e) = e.downcast_ref::<BulkheadFull>() {
                return Cause::BulkheadFull(e);
            }
            if let Some(e) = e.downcast_ref::<RateLimited>() {
                return Cause::RateLimited(e);
            }
            current = e.source();
        }
        Cause::Failed(error)
    }

    /// Whether a Keel policy rejected the call (rather than the call failing).
    pub fn is_rejection(&self) -> bool {
        !matches!(self, Cause::Failed(_))
    }

    /// The status a server should answer with: 503 for an open breaker or a full bulkhead, 504
    /// for a passed deadline, 429 for a rate limit; `None` for the call's own failure (usually
    /// 502 at a gateway).
    pub fn http_status(&self) -> Option<StatusCode> {
        match self {
            Cause::NotPermitted(_) | Cause::BulkheadFull(_) => {
                Some(StatusCode::SERVICE_UNAVAILABLE)
            }
            Cause::DeadlineExceeded(_) => Some(StatusCode::GATEWAY_TIMEOUT),
            Cause::RateLimited(_) => Some(StatusCode::TOO_MANY_REQUESTS),
            Cause::Failed(_) => None,
        }
    }
}

/// Fallback combinators for any future of a `Result`.
pub trait FallbackExt<T, E>: Future<Output = Result<T, E>> + Sized {
    /// On `Err(e)`, run the future `f(e)` instead.
    fn fallback<F, Fut, E2>(self, f: F) -> Fallback<Self, F, Fut>
    where
        F: FnOnce(E) -> Fut,
        Fut: Future<Output = Result<T, E2>>,
    {
        Fallback::new(self, f)
    }

    /// On `Err(e)`, use the value `f(e)`.
    fn fallback_value<F>(self, f: F) -> FallbackValue<Self, F>
    where
        F: FnOnce(E) -> T,
    {
        FallbackValue::new(self, f)
    }
}

impl<Fut, T, E> FallbackExt<T, E> for Fut where Fut: Future<Output = Result<T, E>> {}

#[cfg(test)]
mod tests;
