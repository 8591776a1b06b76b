//! `[app.payments]`: which payment networks accounting authorizes through, and how.

use std::{collections::BTreeMap, time::Duration};

use keel_discovery::DiscoveryConfig;
use keel_resilience::{CircuitBreakerConfig, SlidingWindowType};
use serde::{Deserialize, Serialize};

/// How accounting authorizes payments. With no `networks` (the default) the card rule
/// decides locally.
///
/// ```toml
/// [app.payments]
/// networks = ["van-a", "van-b"]     # in order of preference; resolved through the registry
/// timeout_ms = 2000
/// [app.payments.urls]               # optional: fixed URLs instead of discovery
/// van-a = "http://127.0.0.1:8111"
/// [app.payments.breaker]
/// minimum_calls = 10
/// window_s = 60
/// ```
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PaymentsConfig {
    /// Network names (registry service names), in order of preference. Empty: the card rule.
    pub networks: Vec<String>,
    /// Fixed base URLs by network name; a network without one is resolved through
    /// `discovery`.
    pub urls: BTreeMap<String, String>,
    /// Where to discover networks without a fixed URL. Default: the Keel registry of
    /// `app.registration` (or `http://127.0.0.1:8761`).
    pub discovery: Option<DiscoveryConfig>,
    /// Time allowed for one call to a network, in milliseconds; a call that takes longer
    /// has an unknown outcome and is voided. Default 2000.
    pub timeout_ms: u64,
    /// How many times a network-cancel (void) or a reversal is tried before the command is
    /// left to the bus to retry. Default 3.
    pub void_attempts: u32,
    /// How a network is chosen. Default `ordered`.
    pub selection: Selection,
    /// Fees in basis points by network, overriding what the networks report.
    pub fee_bps: BTreeMap<String, u32>,
    /// Each network's circuit breaker.
    pub breaker: BreakerSettings,
}

impl Default for PaymentsConfig {
    fn default() -> Self {
        Self {
            networks: Vec::new(),
            urls: BTreeMap::new(),
            discovery: None,
            timeout_ms: 2_000,
            void_attempts: 3,
            selection: Selection::Ordered,
            fee_bps: BTreeMap::new(),
            breaker: BreakerSettings::default(),
        }
    }
}

/// How a network is chosen for an authorization.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Selection {
    /// The first network (in `networks` order) whose breaker lets calls through.
    #[default]
    Ordered,
    /// Among networks whose breakers are CLOSED, a random one weighted by 1/fee; the others,
    /// in order, if it fails.
    FeeWeighted,
}

impl Selection {
    /// `ordered` / `fee_weighted`.
    pub fn as_str(self) -> &'static str {
        match self {
            Selection::Ordered => "ordered",
            Selection::FeeWeighted => "fee_weighted",
        }
    }
}

/// A network's breaker: it opens when, within the last `window_s` seconds, at least
/// `minimum_calls` calls were made and `failure_rate` percent of them failed (by default:
/// at least 10 failed calls in a minute, when nothing succeeds); it stays open `open_ms`,
/// then lets `half_open_calls` trial calls decide whether to close again.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerSettings {
    /// The window, in seconds (1–3600). Default 60.
    pub window_s: u32,
    /// Calls the window must hold before the breaker may open (≥ 1). Default 10.
    pub minimum_calls: u32,
    /// Failure rate, in percent, at or above which it opens ((0, 100]). Default 50.
    pub failure_rate: f32,
    /// How long it stays open, in milliseconds (≥ 1). Default 10 000.
    pub open_ms: u64,
    /// Trial calls while half-open (≥ 1). Default 3.
    pub half_open_calls: u32,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            window_s: 60,
            minimum_calls: 10,
            failure_rate: 50.0,
            open_ms: 10_000,
            half_open_calls: 3,
        }
    }
}

impl BreakerSettings {
    /// The keel-resilience breaker configuration.
    pub fn circuit_breaker(&self) -> CircuitBreakerConfig {
        CircuitBreakerConfig {
            failure_rate_threshold: self.failure_rate,
            sliding_window_type: SlidingWindowType::TimeBased,
            sliding_window_size: self.window_s,
            minimum_number_of_calls: self.minimum_calls,
            wait_duration_in_open_state: Duration::from_millis(self.open_ms),
            permitted_number_of_calls_in_half_open_state: self.half_open_calls,
            ..CircuitBreakerConfig::default()
        }
    }
}

/// The configuration key that names a bad breaker parameter.
fn breaker_key(parameter: &str) -> &'static str {
    match parameter.rsplit('.').next().unwrap_or(parameter) {
        "sliding_window_size" => "window_s",
        "minimum_number_of_calls" => "minimum_calls",
        "wait_duration_in_open_state_ms" => "open_ms",
        "permitted_number_of_calls_in_half_open_state" => "half_open_calls",
        _ => "failure_rate",
    }
}

impl PaymentsConfig {
    /// Checks the settings; the error names the field (relative to `payments`).
    pub fn validate(&self) -> Result<(), (String, String)> {
        for (n, name) in self.networks.iter().enumerate() {
            if name.trim().is_empty() {
                return Err((format!("networks[{n}]"), "must not be empty".to_owned()));
            }
            if self.networks[..n].contains(name) {
                return Err((format!("networks[{n}]"), format!("{name} is listed twice")));
            }
        }
        for (name, url) in &self.urls {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err((
                    format!("urls.{name}"),
                    format!("not an http(s) URL: {url:?}"),
                ));
            }
        }
        if let Some(d) = &self.discovery {
            d.validate()
                .map_err(|(field, why)| (format!("discovery.{field}"), why))?;
        }
        if !(1..=600_000).contains(&self.timeout_ms) {
            return Err((
                "timeout_ms".to_owned(),
                "must be between 1 and 600000".to_owned(),
            ));
        }
        if !(1..=20).contains(&self.void_attempts) {
            return Err((
                "void_attempts".to_owned(),
                "must be between 1 and 20".to_owned(),
            ));
        }
        if let Some((name, fee)) = self.fee_bps.iter().find(|(_, f)| **f > 10_000) {
            return Err((
                format!("fee_bps.{name}"),
                format!("must be at most 10000, got {fee}"),
            ));
        }
        self.breaker.circuit_breaker().validate().map_err(|e| {
            (
                format!("breaker.{}", breaker_key(e.parameter())),
                e.reason().to_owned(),
            )
        })?;
        Ok(())
    }

    /// The per-call timeout.
    pub(crate) fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_named() {
        assert!(PaymentsConfig::default().validate().is_ok());
        let field = |c: PaymentsConfig| c.validate().unwrap_err().0;
        let base = PaymentsConfig {
            networks: vec!["van-a".to_owned(), "van-b".to_owned()],
            ..PaymentsConfig::default()
        };
        assert!(base.validate().is_ok());
        assert_eq!(
            field(PaymentsConfig {
                networks: vec!["van-a".to_owned(), "van-a".to_owned()],
                ..base.clone()
            }),
            "networks[1]"
        );
        assert_eq!(
            field(PaymentsConfig {
                urls: BTreeMap::from([("van-a".to_owned(), "ftp://x".to_owned())]),
                ..base.clone()
            }),
            "urls.van-a"
        );
        assert_eq!(
            field(PaymentsConfig {
                timeout_ms: 0,
                ..base.clone()
            }),
            "timeout_ms"
        );
        assert_eq!(
            field(PaymentsConfig {
                breaker: BreakerSettings {
                    window_s: 0,
                    ..BreakerSettings::default()
                },
                ..base.clone()
            }),
            "breaker.window_s"
        );
        assert_eq!(
            field(PaymentsConfig {
                breaker: BreakerSettings {
                    failure_rate: 0.0,
                    ..BreakerSettings::default()
                },
                ..base
            }),
            "breaker.failure_rate"
        );
    }
}
