use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::window::{MAX_COUNT_WINDOW, MAX_TIME_WINDOW_SECONDS};
use crate::config::{ConfigError, check, check_percent, millis};

/// How a circuit breaker is configured. Names follow Resilience4j's, in snake_case; defaults
/// are chosen for services (see `docs/resilience.md` for the side-by-side table).
///
/// ```toml
/// [circuit_breaker]
/// failure_rate_threshold = 50
/// sliding_window_size = 20
/// minimum_number_of_calls = 10
/// wait_duration_in_open_state_ms = 10000
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CircuitBreakerConfig {
    /// Failure rate, in percent, at or above which the breaker opens. Default 50.
    pub failure_rate_threshold: f32,
    /// Slow-call rate, in percent, at or above which the breaker opens. Default 100: slow calls
    /// alone never open the breaker, and call durations are not measured at all (which keeps
    /// the hot path free of clock reads). Set below 100 to enable slow-call detection.
    pub slow_call_rate_threshold: f32,
    /// A call taking at least this long is slow. Default 5000 ms.
    #[serde(rename = "slow_call_duration_threshold_ms", with = "millis")]
    pub slow_call_duration_threshold: Duration,
    /// Trial calls let through in HALF_OPEN; their outcomes decide between CLOSED and OPEN.
    /// Default 5.
    pub permitted_number_of_calls_in_half_open_state: u32,
    /// Longest time the breaker may stay HALF_OPEN before going back to OPEN, so that trial
    /// calls that never finish cannot leave it stuck. Default 30000 ms; 0 means no limit
    /// (Resilience4j's default, and the cause of stuck breakers — not recommended).
    #[serde(rename = "max_wait_duration_in_half_open_state_ms", with = "millis")]
    pub max_wait_duration_in_half_open_state: Duration,
    /// Count-based (last N calls) or time-based (last N seconds). Default count-based.
    pub sliding_window_type: SlidingWindowType,
    /// N: calls (count-based, at most 16383) or seconds (time-based, at most 3600). Default 20.
    pub sliding_window_size: u32,
    /// Calls the window must hold before rates are computed and the breaker may open. For a
    /// count-based window the effective value is at most `sliding_window_size`. Default 10.
    pub minimum_number_of_calls: u32,
    /// How long the breaker stays OPEN before letting trial calls through. Default 10000 ms.
    #[serde(rename = "wait_duration_in_open_state_ms", with = "millis")]
    pub wait_duration_in_open_state: Duration,
    /// Move OPEN → HALF_OPEN (and an expired HALF_OPEN → OPEN) on a timer when a tokio runtime
    /// is available, rather than on the next call. Either way the move happens on the next call
    /// if the timer has not fired. Default true.
    pub automatic_transition_from_open_to_half_open_enabled: bool,
}

/// The kind of sliding window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SlidingWindowType {
    /// The last `sliding_window_size` calls.
    #[default]
    CountBased,
    /// The calls of the last `sliding_window_size` seconds.
    TimeBased,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        Self {
            failure_rate_threshold: 50.0,
            slow_call_rate_threshold: 100.0,
            slow_call_duration_threshold: Duration::from_secs(5),
            permitted_number_of_calls_in_half_open_state: 5,
            max_wait_duration_in_half_open_state: Duration::from_secs(30),
            sliding_window_type: SlidingWindowType::CountBased,
            sliding_window_size: 20,
            minimum_number_of_calls: 10,
            wait_duration_in_open_state: Duration::from_secs(10),
            automatic_transition_from_open_to_half_open_enabled: true,
        }
    }
}

impl CircuitBreakerConfig {
    /// Check every parameter; the error names the first one that is out of range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_percent(self.failure_rate_threshold, "failure_rate_threshold")?;
        check_percent(self.slow_call_rate_threshold, "slow_call_rate_threshold")?;
        check(
            !self.slow_call_duration_threshold.is_zero(),
            "slow_call_duration_threshold_ms",
            || "must be greater than zero".to_owned(),
        )?;
        let permitted = self.permitted_number_of_calls_in_half_open_state;
        check(
            (1..=10_000).contains(&permitted),
            "permitted_number_of_calls_in_half_open_state",
            || format!("must be between 1 and 10000, got {permitted}"),
        )?;
        let size = self.sliding_window_size;
        let max = match self.sliding_window_type {
            SlidingWindowType::CountBased => MAX_COUNT_WINDOW,
            SlidingWindowType::TimeBased => MAX_TIME_WINDOW_SECONDS,
        };
        check((1..=max).contains(&size), "sliding_window_size", || {
            format!(
                "must be between 1 and {max} for a {} window, got {size}",
                match self.sliding_window_type {
                    SlidingWindowType::CountBased => "count-based",
                    SlidingWindowType::TimeBased => "time-based",
                }
            )
        })?;
        check(
            self.minimum_number_of_calls >= 1,
            "minimum_number_of_calls",
            || "must be at least 1".to_owned(),
        )?;
        check(
            self.wait_duration_in_open_state >= Duration::from_millis(1),
            "wait_duration_in_open_state_ms",
            || "must be at least 1".to_owned(),
        )?;
        Ok(())
    }

    /// Whether call durations are measured (only when slow calls can open the breaker).
    pub(crate) fn measures_slow_calls(&self) -> bool {
        self.slow_call_rate_threshold < 100.0
    }

    /// The minimum number of calls actually applied.
    pub(crate) fn effective_minimum_calls(&self) -> u64 {
        let min = u64::from(self.minimum_number_of_calls);
        match self.sliding_window_type {
            SlidingWindowType::CountBased => min.min(u64::from(self.sliding_window_size)),
            SlidingWindowType::TimeBased => min,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        CircuitBreakerConfig::default().validate().unwrap();
    }

    #[test]
    fn bad_values_name_the_parameter() {
        let cases: Vec<(CircuitBreakerConfig, &str)> = vec![
            (
                CircuitBreakerConfig {
                    failure_rate_threshold: 0.0,
                    ..Default::default()
                },
                "failure_rate_threshold",
            ),
            (
                CircuitBreakerConfig {
                    failure_rate_threshold: 101.0,
                    ..Default::default()
                },
                "failure_rate_threshold",
            ),
            (
                CircuitBreakerConfig {
                    slow_call_rate_threshold: -1.0,
                    ..Default::default()
                },
                "slow_call_rate_threshold",
            ),
            (
                CircuitBreakerConfig {
                    failure_rate_threshold: f32::NAN,
                    ..Default::default()
                },
                "failure_rate_threshold",
            ),
            (
                CircuitBreakerConfig {
                    sliding_window_size: 0,
                    ..Default::default()
                },
                "sliding_window_size",
            ),
            (
                CircuitBreakerConfig {
                    sliding_window_size: 20_000,
                    ..Default::default()
                },
                "sliding_window_size",
            ),
            (
                CircuitBreakerConfig {
                    sliding_window_type: SlidingWindowType::TimeBased,
                    sliding_window_size: 7200,
                    ..Default::default()
                },
                "sliding_window_size",
            ),
            (
                CircuitBreakerConfig {
                    minimum_number_of_calls: 0,
                    ..Default::default()
                },
                "minimum_number_of_calls",
            ),
            (
                CircuitBreakerConfig {
                    permitted_number_of_calls_in_half_open_state: 0,
                    ..Default::default()
                },
                "permitted_number_of_calls_in_half_open_state",
            ),
            (
                CircuitBreakerConfig {
                    wait_duration_in_open_state: Duration::ZERO,
                    ..Default::default()
                },
                "wait_duration_in_open_state_ms",
            ),
            (
                CircuitBreakerConfig {
                    slow_call_duration_threshold: Duration::ZERO,
                    ..Default::default()
                },
                "slow_call_duration_threshold_ms",
            ),
        ];
        for (config, parameter) in cases {
            assert_eq!(config.validate().unwrap_err().parameter(), parameter);
        }
    }
}
