//! Where buckets live: the [`Store`] trait and its error.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::{Decision, Rate};

/// The future a [`Store`] returns.
pub type StoreFuture<'a> = Pin<Box<dyn Future<Output = Result<Decision, StoreError>> + Send + 'a>>;

/// Keeps one token bucket per `(route id, key)` and takes tokens from it atomically.
///
/// Implemented by [`LocalStore`](crate::LocalStore) and [`RedisStore`](crate::RedisStore);
/// other implementations must follow the same bucket rules (see the crate's README): a
/// bucket never seen is full, it refills continuously at `replenish_rate` up to
/// `burst_capacity`, and a request takes `requested_tokens` or nothing.
pub trait Store: Send + Sync + fmt::Debug + 'static {
    /// Short name for the `store` label of metrics and logs (`local`, `redis`).
    fn name(&self) -> &'static str;

    /// Takes `rate.requested_tokens()` from the bucket of `(route_id, key)` if it holds that
    /// many. The returned [`Decision`] has `degraded: false`; failures are errors, and the
    /// [`RateLimiter`](crate::RateLimiter)'s fail mode decides what they mean. A store with
    /// I/O bounds its own wait.
    fn acquire<'a>(&'a self, route_id: &'a str, key: &'a str, rate: &'a Rate) -> StoreFuture<'a>;
}

/// A store could not decide.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store did not answer within its timeout.
    #[error("the rate limiter store did not answer within {0:?}")]
    Timeout(Duration),
    /// The store is not connected, and the next connection attempt is not yet due.
    #[error("the rate limiter store is unreachable; reconnecting in {retry_in:?}")]
    Unavailable {
        /// Time until the next connection attempt.
        retry_in: Duration,
    },
    /// Connecting to Redis failed.
    #[error("cannot connect to Redis: {0}")]
    Connect(redis::RedisError),
    /// The Redis URL is invalid.
    #[error("invalid Redis URL: {0}")]
    InvalidUrl(redis::RedisError),
    /// Redis failed the script call (a server error or a broken connection).
    #[error("the Redis rate limiter script failed: {0}")]
    Redis(redis::RedisError),
    /// Any other failure, for stores outside this crate.
    #[error(transparent)]
    Other(Box<dyn std::error::Error + Send + Sync + 'static>),
}
