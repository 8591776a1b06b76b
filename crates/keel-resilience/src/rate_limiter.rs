//! Rate limiter: a token bucket refilled with `limit_for_period` tokens every
//! `limit_refresh_period`, holding at most `burst` tokens, with an optional bounded wait.
//!
//! It is implemented as GCRA (the generic cell rate algorithm): one atomic "theoretical arrival
//! time" advanced by a compare-and-swap per call — no lock, no background refill task. A call
//! that may wait reserves its token and sleeps until it is due; if the waiting future is dropped
//! the token is not given back. Keyed and distributed limiters belong to the gateway.
//!
//! Unlike Resilience4j, which refills all of a period's permissions at the period's start,
//! tokens arrive evenly (one every `limit_refresh_period / limit_for_period`), and `burst`
//! bounds how many can be used at once.
//!
//! # Metrics
//! | name | type | labels |
//! |---|---|---|
//! | `keel_rate_limiter_permitted_calls_total` | counter | `name` |
//! | `keel_rate_limiter_rejected_calls_total` | counter | `name` |

mod config;
mod error;
mod future;
mod layer;
mod service;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use metrics::{Counter, counter};

pub use config::RateLimiterConfig;
pub use error::RateLimited;
pub use future::ResponseFuture;
pub use layer::RateLimiterLayer;
pub use service::RateLimiterService;

use crate::clock::{Clock, duration_nanos};
use crate::config::ConfigError;

/// A token-bucket rate limiter. Cloning shares it.
#[derive(Clone)]
pub struct RateLimiter {
    inner: Arc<Inner>,
}

struct Inner {
    name: Arc<str>,
    config: RateLimiterConfig,
    clock: Clock,
    /// Theoretical arrival time of the next call, in clock nanoseconds.
    tat: AtomicU64,
    /// Nanoseconds per token.
    interval: u64,
    /// `burst × interval`: how far ahead of now the arrival time may run.
    tolerance: u64,
    max_wait: u64,
    rejected: AtomicU64,
    permitted_metric: Counter,
    rejected_metric: Counter,
}

impl RateLimiter {
    /// A limiter named `name` (the `name` label of its metrics), after validating `config`.
    /// It starts full: `burst` calls can go at once.
    pub fn new(name: impl Into<String>, config: RateLimiterConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let name: String = name.into();
        let interval = (duration_nanos(config.limit_refresh_period)
            / u64::from(config.limit_for_period))
        .max(1);
        let clock = Clock::new();
        Ok(Self {
            inner: Arc::new(Inner {
                permitted_metric: counter!("keel_rate_limiter_permitted_calls_total", "name" => name.clone()),
                rejected_metric: counter!("keel_rate_limiter_rejected_calls_total", "name" => name.clone()),
                name: name.into(),
                tat: AtomicU64::new(clock.now_nanos()),
                clock,
                interval,
                tolerance: interval.saturating_mul(u64::from(config.burst())),
                max_wait: duration_nanos(config.timeout_duration),
                config,
                rejected: AtomicU64::new(0),
            }),
        })
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The configuration.
    pub fn config(&self) -> &RateLimiterConfig {
        &self.inner.config
    }

    /// Take a token now, without waiting.
    pub fn try_acquire(&self) -> Result<(), RateLimited> {
        self.reserve(0).map(|_| ())
    }

    /// Take a token, waiting up to `timeout_duration` for one.
    pub async fn acquire(&self) -> Result<(), RateLimited> {
        let wait = self.reserve(self.inner.max_wait)?;
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        Ok(())
    }

    /// Run `future` once a token is available.
    pub async fn call<F: Future>(&self, future: F) -> Result<F::Output, RateLimited> {
        self.acquire().await?;
        Ok(future.await)
    }

    /// Calls rejected so far.
    pub fn rejected_calls(&self) -> u64 {
        self.inner.rejected.load(Ordering::Relaxed)
    }

    /// Reserve a token due within `max_wait` nanoseconds; returns how long to wait for it.
    pub(crate) fn reserve(&self, max_wait: u64) -> Result<Duration, RateLimited> {
        let inner = &*self.inner;
        let now = inner.clock.now_nanos();
        let mut tat = inner.tat.load(Ordering::Relaxed);
        loop {
            let next = tat.max(now).saturating_add(inner.interval);
            // The token is due when `next - now` fits in the bucket.
            let wait = (next - now).saturating_sub(inner.tolerance);
            if wait > max_wait {
                inner.rejected.fetch_add(1, Ordering::Relaxed);
                inner.rejected_metric.increment(1);
                return Err(RateLimited::new(
                    inner.name.clone(),
                    Duration::from_nanos(wait),
                ));
            }
            match inner
                .tat
                .compare_exchange_weak(tat, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => {
                    inner.permitted_metric.increment(1);
                    return Ok(Duration::from_nanos(wait));
                }
                Err(actual) => tat = actual,
            }
        }
    }

    pub(crate) fn max_wait(&self) -> u64 {
        self.inner.max_wait
    }
}

impl fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiter")
            .field("name", &self.inner.name)
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
