use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, check, millis};

/// How a [`RateLimiter`](super::RateLimiter) is configured (Resilience4j's names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimiterConfig {
    /// Tokens added per `limit_refresh_period`. Default 50.
    pub limit_for_period: u32,
    /// The period, at least 1 ms. Default 1000 ms (Resilience4j: 500 ns).
    #[serde(rename = "limit_refresh_period_ms", with = "millis")]
    pub limit_refresh_period: Duration,
    /// Tokens the bucket holds at most (calls that may go at once). Default: `limit_for_period`.
    pub burst: Option<u32>,
    /// How long a call may wait for a token; 0 rejects at once. Default 0
    /// (Resilience4j: 5s).
    #[serde(rename = "timeout_duration_ms", with = "millis")]
    pub timeout_duration: Duration,
}

impl Default for RateLimiterConfig {
    fn default() -> Self {
        Self {
            limit_for_period: 50,
            limit_refresh_period: Duration::from_secs(1),
            burst: None,
            timeout_duration: Duration::ZERO,
        }
    }
}

impl RateLimiterConfig {
    /// Check every parameter.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check(self.limit_for_period >= 1, "limit_for_period", || {
            "must be at least 1".to_owned()
        })?;
        check(
            self.limit_refresh_period >= Duration::from_millis(1),
            "limit_refresh_period_ms",
            || "must be at least 1".to_owned(),
        )?;
        check(self.burst != Some(0), "burst", || {
            "must be at least 1".to_owned()
        })?;
        Ok(())
    }

    /// The bucket size in effect.
    pub fn burst(&self) -> u32 {
        self.burst.unwrap_or(self.limit_for_period)
    }
}
