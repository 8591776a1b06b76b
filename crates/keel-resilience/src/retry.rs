//! Retry with exponential backoff and jitter, bounded by a retry budget and by the call's
//! deadline.
//!
//! - Only results classified as [`Outcome::Failure`](crate::Outcome::Failure) are retried; the
//!   last result is returned as is once attempts, budget or time run out (no wrapper error).
//! - Rejections by Keel's own policies — [`CallNotPermitted`](crate::CallNotPermitted),
//!   [`DeadlineExceeded`](crate::DeadlineExceeded), [`BulkheadFull`](crate::BulkheadFull),
//!   [`RateLimited`](crate::RateLimited) — are never retried by the tower layer.
//! - The tower layer retries only requests that are [`Idempotent`] unless
//!   `retry_on_non_idempotent` is set. The plain [`Retry::call`] trusts its caller.
//! - The [budget](RetryBudgetConfig) caps retries at a fraction of calls over a sliding period,
//!   so that retries cannot multiply the load on a struggling service (a "retry storm").
//! - No retry starts unless, after the backoff, at least `min_time_for_attempt` is left before
//!   the deadline ([`Deadline::current`](crate::Deadline::current) for the plain API, the
//!   request's deadline for the layer); the backoff never sleeps past the deadline.
//!
//! # Metrics
//! | name | type | labels |
//! |---|---|---|
//! | `keel_retry_calls_total` | counter | `name`, `outcome` = `successful_without_retry` \| `successful_with_retry` \| `failed_without_retry` \| `failed_with_retry` |
//! | `keel_retry_attempts_total` | counter (retries, not counting first attempts) | `name` |
//! | `keel_retry_suppressed_total` | counter | `name`, `reason` = `budget_exhausted` \| `deadline` \| `non_idempotent` |

mod budget;
mod config;
mod future;
mod layer;
mod policy;
mod service;

pub use budget::RetryBudget;
pub use config::{RetryBudgetConfig, RetryConfig};
pub use future::ResponseFuture;
pub use layer::RetryLayer;
pub use policy::{Retry, RetrySnapshot};
pub use service::RetryService;

/// Whether a request may safely be sent more than once.
pub trait Idempotent {
    /// True if repeating the request cannot do harm.
    fn is_idempotent(&self) -> bool;
}

/// Idempotency key header: a request carrying one may be retried whatever its method.
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";

impl<B> Idempotent for http::Request<B> {
    /// GET, HEAD, OPTIONS, TRACE, PUT and DELETE are idempotent (RFC 9110); any request with
    /// an `Idempotency-Key` header is too.
    fn is_idempotent(&self) -> bool {
        self.method().is_idempotent() || self.headers().contains_key(IDEMPOTENCY_KEY_HEADER)
    }
}

#[cfg(test)]
mod tests;
