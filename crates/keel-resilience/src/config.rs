//! Configuration plumbing shared by every policy: the validation error and the duration format.
//!
//! As everywhere in Keel's configuration, a duration is an integer number of milliseconds in a
//! key ending in `_ms` (`wait_duration_in_open_state_ms = 10000`); in Rust it is a
//! [`Duration`](std::time::Duration) field without the suffix.

use std::borrow::Cow;

/// A configuration value was rejected when a policy was built.
///
/// `parameter` names the offending field with its path inside [`ResilienceConfig`]
/// (`circuit_breaker.failure_rate_threshold`, `retry.max_attempts`, …), so the message can be
/// shown to an operator as is.
///
/// [`ResilienceConfig`]: crate::ResilienceConfig
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid `{parameter}`: {reason}")]
pub struct ConfigError {
    parameter: Cow<'static, str>,
    reason: String,
}

impl ConfigError {
    /// A new error for `parameter`.
    pub fn new(parameter: impl Into<Cow<'static, str>>, reason: impl Into<String>) -> Self {
        Self {
            parameter: parameter.into(),
            reason: reason.into(),
        }
    }

    /// The parameter that was rejected, with its path (`circuit_breaker.sliding_window_size`).
    pub fn parameter(&self) -> &str {
        &self.parameter
    }

    /// Why it was rejected.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// Prefix the parameter with the section it belongs to (`retry` + `max_attempts`).
    #[must_use]
    pub fn within(self, section: &str) -> Self {
        Self {
            parameter: Cow::Owned(format!("{section}.{}", self.parameter)),
            reason: self.reason,
        }
    }
}

pub(crate) fn check(
    ok: bool,
    parameter: &'static str,
    reason: impl FnOnce() -> String,
) -> Result<(), ConfigError> {
    if ok {
        Ok(())
    } else {
        Err(ConfigError::new(parameter, reason()))
    }
}

pub(crate) fn check_percent(value: f32, parameter: &'static str) -> Result<(), ConfigError> {
    check(value > 0.0 && value <= 100.0, parameter, || {
        format!("must be a percentage in (0, 100], got {value}")
    })
}

/// `#[serde(with = "keel_resilience::config::millis")]`: a `Duration` written in configuration
/// as an integer number of milliseconds (the field is named with an `_ms` suffix).
pub mod millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    /// Serialize as whole milliseconds.
    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(u64::try_from(value.as_millis()).unwrap_or(u64::MAX))
    }

    /// Deserialize from whole milliseconds.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        u64::deserialize(deserializer).map(Duration::from_millis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_names_the_parameter() {
        let err = ConfigError::new("max_attempts", "must be at least 1").within("retry");
        assert_eq!(err.parameter(), "retry.max_attempts");
        assert_eq!(
            err.to_string(),
            "invalid `retry.max_attempts`: must be at least 1"
        );
    }
}
