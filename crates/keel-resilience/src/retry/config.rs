use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, check, millis};

/// How a [`Retry`](super::Retry) is configured (Resilience4j's names where it has one).
///
/// The wait before retry `n` (1-based) is
/// `min(wait_duration × exponential_backoff_multiplier^(n-1), exponential_max_wait_duration)`,
/// then spread uniformly by ± `randomized_wait_factor`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts in total, the first one included. Default 3.
    pub max_attempts: u32,
    /// Wait before the first retry. Default 100 ms (`wait_duration_ms = 100`).
    #[serde(rename = "wait_duration_ms", with = "millis")]
    pub wait_duration: Duration,
    /// Growth of the wait per retry (1 = constant). Default 2.
    pub exponential_backoff_multiplier: f64,
    /// Cap on the wait, before jitter. Default 2000 ms.
    #[serde(rename = "exponential_max_wait_duration_ms", with = "millis")]
    pub exponential_max_wait_duration: Duration,
    /// Jitter: the wait is drawn uniformly from `wait × [1 - f, 1 + f]`. Default 0.5.
    pub randomized_wait_factor: f64,
    /// Retry requests that are not [`Idempotent`](super::Idempotent) (POST, PATCH without an
    /// idempotency key). Default false.
    pub retry_on_non_idempotent: bool,
    /// Do not start a retry unless at least this much time is left before the deadline once the
    /// backoff is over. Default 10 ms.
    #[serde(rename = "min_time_for_attempt_ms", with = "millis")]
    pub min_time_for_attempt: Duration,
    /// The retry budget.
    pub budget: RetryBudgetConfig,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            wait_duration: Duration::from_millis(100),
            exponential_backoff_multiplier: 2.0,
            exponential_max_wait_duration: Duration::from_secs(2),
            randomized_wait_factor: 0.5,
            retry_on_non_idempotent: false,
            min_time_for_attempt: Duration::from_millis(10),
            budget: RetryBudgetConfig::default(),
        }
    }
}

/// Caps retries as a fraction of calls (Finagle's and linkerd's retry budget).
///
/// Over the last `ttl`, retries may not exceed `retry_ratio` × calls plus a reserve of
/// `min_retries_per_second` × `ttl` seconds (so that low-traffic clients can still retry).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryBudgetConfig {
    /// Whether the budget applies. Default true.
    pub enabled: bool,
    /// Retries allowed per call, as a fraction (0.2 = one retry per five calls). Default 0.2.
    pub retry_ratio: f64,
    /// Retries always allowed per second regardless of traffic. Default 10.
    pub min_retries_per_second: u32,
    /// Period over which calls and retries are counted, 1 to 60 s. Default 10000 ms.
    #[serde(rename = "ttl_ms", with = "millis")]
    pub ttl: Duration,
}

impl Default for RetryBudgetConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            retry_ratio: 0.2,
            min_retries_per_second: 10,
            ttl: Duration::from_secs(10),
        }
    }
}

impl RetryConfig {
    /// Check every parameter; the error names the first one out of range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let attempts = self.max_attempts;
        check((1..=100).contains(&attempts), "max_attempts", || {
            format!("must be between 1 and 100, got {attempts}")
        })?;
        let multiplier = self.exponential_backoff_multiplier;
        check(
            multiplier.is_finite() && (1.0..=100.0).contains(&multiplier),
            "exponential_backoff_multiplier",
            || format!("must be between 1 and 100, got {multiplier}"),
        )?;
        check(
            self.exponential_max_wait_duration >= self.wait_duration,
            "exponential_max_wait_duration_ms",
            || "must not be less than wait_duration_ms".to_owned(),
        )?;
        let factor = self.randomized_wait_factor;
        check(
            (0.0..1.0).contains(&factor),
            "randomized_wait_factor",
            || format!("must be in [0, 1), got {factor}"),
        )?;
        self.budget.validate().map_err(|e| e.within("budget"))
    }
}

impl RetryBudgetConfig {
    /// Check every parameter.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let ratio = self.retry_ratio;
        check(
            ratio.is_finite() && (0.0..=1000.0).contains(&ratio),
            "retry_ratio",
            || format!("must be between 0 and 1000, got {ratio}"),
        )?;
        check(
            (Duration::from_secs(1)..=Duration::from_secs(60)).contains(&self.ttl),
            "ttl_ms",
            || "must be between 1000 and 60000".to_owned(),
        )?;
        Ok(())
    }
}
