//! Injected faults: an error rate and a latency, changed at runtime through
//! `PUT /admin/faults`, applied to the operations they name.
//!
//! An injected error answers 503 before anything is read or stored, so a 503 from the
//! simulator always means "nothing happened". Latency is added *after* the operation is
//! stored, so a client that times out has a genuine unknown outcome.

use std::{sync::RwLock, time::Duration};

use serde::{Deserialize, Serialize};

/// An operation faults may apply to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Operation {
    /// `POST /authorizations`.
    Authorize,
    /// `POST /authorizations/{id}/cancel`.
    Cancel,
    /// `POST /network-cancel`.
    NetworkCancel,
}

impl Operation {
    /// The metrics label (`authorize`, `cancel`, `network-cancel`).
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Authorize => "authorize",
            Operation::Cancel => "cancel",
            Operation::NetworkCancel => "network-cancel",
        }
    }
}

/// The faults in effect (JSON: `{"errorRate": 0.5, "latencyMs": 200, "operations": ["authorize"]}`;
/// in the config file the snake_case names work too).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Faults {
    /// The share of requests answered with 503 (nothing stored), 0.0–1.0.
    #[serde(alias = "error_rate")]
    pub error_rate: f64,
    /// Delay added to every answer after the operation is stored, in milliseconds
    /// (at most 60 000).
    #[serde(alias = "latency_ms")]
    pub latency_ms: u64,
    /// The operations the faults apply to. Default: `["authorize"]` — voids and cancels
    /// stay healthy unless named.
    pub operations: Vec<Operation>,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            error_rate: 0.0,
            latency_ms: 0,
            operations: vec![Operation::Authorize],
        }
    }
}

/// The longest injectable latency.
pub(crate) const MAX_LATENCY_MS: u64 = 60_000;

impl Faults {
    /// Checks the ranges; the error names the field (camelCase, as in the API).
    pub fn validate(&self) -> Result<(), (String, String)> {
        if !(0.0..=1.0).contains(&self.error_rate) {
            return Err((
                "errorRate".to_owned(),
                format!(
                    "errorRate must be between 0.0 and 1.0, got {}",
                    self.error_rate
                ),
            ));
        }
        if self.latency_ms > MAX_LATENCY_MS {
            return Err((
                "latencyMs".to_owned(),
                format!(
                    "latencyMs must be at most {MAX_LATENCY_MS}, got {}",
                    self.latency_ms
                ),
            ));
        }
        Ok(())
    }

    fn applies(&self, op: Operation) -> bool {
        self.operations.contains(&op)
    }
}

/// The faults of one running network.
#[derive(Debug)]
pub(crate) struct FaultState(RwLock<Faults>);

impl FaultState {
    pub(crate) fn new(faults: Faults) -> Self {
        Self(RwLock::new(faults))
    }

    pub(crate) fn get(&self) -> Faults {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn set(&self, faults: Faults) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = faults;
    }

    /// Whether this request of `op` fails (drawn against the error rate).
    pub(crate) fn fails(&self, op: Operation) -> bool {
        let f = self.get();
        f.applies(op) && f.error_rate > 0.0 && rand::random::<f64>() < f.error_rate
    }

    /// The delay to add to an answer of `op`.
    pub(crate) fn latency(&self, op: Operation) -> Option<Duration> {
        let f = self.get();
        (f.applies(op) && f.latency_ms > 0).then(|| Duration::from_millis(f.latency_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_checked_and_rates_apply_per_operation() {
        assert!(Faults::default().validate().is_ok());
        let bad = Faults {
            latency_ms: MAX_LATENCY_MS + 1,
            ..Faults::default()
        };
        assert_eq!(bad.validate().unwrap_err().0, "latencyMs");
        let state = FaultState::new(Faults {
            error_rate: 1.0,
            latency_ms: 5,
            operations: vec![Operation::Authorize],
        });
        assert!(state.fails(Operation::Authorize));
        assert!(!state.fails(Operation::NetworkCancel));
        assert_eq!(
            state.latency(Operation::Authorize),
            Some(Duration::from_millis(5))
        );
        assert_eq!(state.latency(Operation::Cancel), None);
        state.set(Faults::default());
        assert!(!state.fails(Operation::Authorize));
        let parsed: Faults =
            serde_json::from_str(r#"{"error_rate": 0.25, "operations": ["network-cancel"]}"#)
                .unwrap();
        assert_eq!(parsed.error_rate, 0.25);
        assert_eq!(parsed.operations, vec![Operation::NetworkCancel]);
    }
}
