//! One configuration, one stack: [`stack`] builds every configured policy into a single tower
//! layer in a fixed order.

mod layer;
mod service;

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use layer::ResilienceLayer;
pub use service::ResilienceService;

use crate::bulkhead::{Bulkhead, BulkheadConfig};
use crate::circuit_breaker::{BreakerRegistry, CircuitBreaker, CircuitBreakerConfig};
use crate::config::{ConfigError, check, millis};
use crate::rate_limiter::{RateLimiter, RateLimiterConfig};
use crate::retry::{Retry, RetryConfig};

/// Every resilience policy of one client or route; each is off unless its section is present.
///
/// ```toml
/// [resilience.timeout]
/// timeout_duration_ms = 2000
///
/// [resilience.retry]
/// max_attempts = 3
///
/// [resilience.circuit_breaker]
/// failure_rate_threshold = 50
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResilienceConfig {
    /// Token-bucket rate limiter.
    pub rate_limiter: Option<RateLimiterConfig>,
    /// Concurrency limit.
    pub bulkhead: Option<BulkheadConfig>,
    /// Retries.
    pub retry: Option<RetryConfig>,
    /// Circuit breaker.
    pub circuit_breaker: Option<CircuitBreakerConfig>,
    /// The time budget of each call (retries included).
    pub timeout: Option<TimeoutConfig>,
}

/// The time budget of a call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TimeoutConfig {
    /// The whole budget of a call: queueing in the rate limiter and bulkhead, every attempt and
    /// every backoff. A nearer deadline that came with the request wins. Default 10000 ms
    /// (Resilience4j's TimeLimiter: 1s, per attempt).
    #[serde(rename = "timeout_duration_ms", with = "millis")]
    pub timeout_duration: Duration,
}

impl Default for TimeoutConfig {
    fn default() -> Self {
        Self {
            timeout_duration: Duration::from_secs(10),
        }
    }
}

impl TimeoutConfig {
    /// Check every parameter.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check(
            !self.timeout_duration.is_zero(),
            "timeout_duration_ms",
            || "must be greater than zero".to_owned(),
        )
    }
}

impl ResilienceConfig {
    /// Check every section; the error names the parameter with its section
    /// (`circuit_breaker.sliding_window_size`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn section<T>(
            value: &Option<T>,
            name: &str,
            validate: impl Fn(&T) -> Result<(), ConfigError>,
        ) -> Result<(), ConfigError> {
            value
                .as_ref()
                .map_or(Ok(()), |v| validate(v).map_err(|e| e.within(name)))
        }
        section(
            &self.rate_limiter,
            "rate_limiter",
            RateLimiterConfig::validate,
        )?;
        section(&self.bulkhead, "bulkhead", BulkheadConfig::validate)?;
        section(&self.retry, "retry", RetryConfig::validate)?;
        section(
            &self.circuit_breaker,
            "circuit_breaker",
            CircuitBreakerConfig::validate,
        )?;
        section(&self.timeout, "timeout", TimeoutConfig::validate)?;
        Ok(())
    }
}

/// Build the resilience stack named `name` from `config`. Every policy takes `name` as the
/// `name` label of its metrics.
///
/// # Order
///
/// A request goes through, outermost first:
///
/// 1. **deadline (set)** — the call's deadline becomes the nearer of the incoming one (request
///    extensions or `keel-deadline-ms` header, or [`Deadline::current`](crate::Deadline::current))
///    and now + `timeout.timeout_duration`. From here on the whole call — queueing, attempts,
///    backoffs — lives within that one budget, and is cut off when it runs out.
/// 2. **rate limiter** — excess calls are rejected (or wait for a token) before they take a
///    bulkhead slot or a retry budget.
/// 3. **bulkhead** — bounds concurrent calls; a call holds its slot through all its retries.
/// 4. **retry** — repeats failed attempts within the deadline and the retry budget; each
///    attempt passes through the breaker, so an open breaker stops retries at once
///    ([`CallNotPermitted`](crate::CallNotPermitted) is never retried).
/// 5. **circuit breaker** — sees every attempt, including those cut off by the deadline.
/// 6. **deadline (enforce)** — bounds each attempt by what is left of the same deadline, so the
///    breaker records a timed-out attempt as a failure, and writes the time left into the
///    request (`keel-deadline-ms`) for the next hop.
///
/// Absent sections are skipped (the deadline steps are always there and cost nothing without a
/// deadline). The service's error type is [`BoxError`](crate::BoxError); rejections are the
/// named errors of each policy, see [`Cause`](crate::Cause).
///
/// Results are classified with [`DefaultClassifier`](crate::DefaultClassifier) (`Err` is a
/// failure); for HTTP use [`ResilienceLayer::for_http`].
///
/// # Requirements
/// The wrapped service must be `Clone + Send + 'static`; requests must be
/// `Clone + Send + 'static` and implement [`DeadlineCarrier`](crate::DeadlineCarrier) and
/// [`Idempotent`](crate::Idempotent) (as `http::Request<B>` does for a `B: Clone` body).
pub fn stack(config: &ResilienceConfig, name: &str) -> Result<ResilienceLayer, ConfigError> {
    build(config, name, None)
}

/// Like [`stack`], taking the circuit breaker from `registry` (so operators can act on it) —
/// the registry's breaker called `name` if there is one, else a new one built from
/// `config.circuit_breaker` and registered.
pub fn stack_in(
    registry: &BreakerRegistry,
    config: &ResilienceConfig,
    name: &str,
) -> Result<ResilienceLayer, ConfigError> {
    build(config, name, Some(registry))
}

fn build(
    config: &ResilienceConfig,
    name: &str,
    registry: Option<&BreakerRegistry>,
) -> Result<ResilienceLayer, ConfigError> {
    config.validate()?;
    if name.is_empty() {
        return Err(ConfigError::new("name", "a resilience stack needs a name"));
    }
    let breaker = match (&config.circuit_breaker, registry) {
        (None, _) => None,
        (Some(breaker_config), None) => Some(CircuitBreaker::new(name, breaker_config.clone())?),
        (Some(breaker_config), Some(registry)) => Some(match registry.get(name) {
            Some(breaker) => breaker,
            None => {
                let breaker = CircuitBreaker::new(name, breaker_config.clone())?;
                registry.register(breaker.clone());
                breaker
            }
        }),
    };
    Ok(ResilienceLayer::new(
        config.timeout.as_ref().map(|t| t.timeout_duration),
        config
            .rate_limiter
            .as_ref()
            .map(|c| RateLimiter::new(name, c.clone()))
            .transpose()?,
        config
            .bulkhead
            .as_ref()
            .map(|c| Bulkhead::new(name, c.clone()))
            .transpose()?,
        config
            .retry
            .as_ref()
            .map(|c| Retry::new(name, c.clone()))
            .transpose()?,
        breaker,
    ))
}
