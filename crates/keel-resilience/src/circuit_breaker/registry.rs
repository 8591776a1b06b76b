use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};

use serde::{Deserialize, Serialize};

use super::{CircuitBreaker, CircuitBreakerConfig, CircuitBreakerSnapshot, State};
use crate::config::ConfigError;

/// Configuration of a [`BreakerRegistry`]: the configuration of breakers not listed, and a
/// configuration per named breaker.
///
/// ```toml
/// [circuit_breakers.defaults]
/// failure_rate_threshold = 50
///
/// [circuit_breakers.instances.payments]
/// failure_rate_threshold = 25
/// wait_duration_in_open_state_ms = 30000
/// ```
///
/// An instance's omitted fields take the built-in defaults, not those of `defaults`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerRegistryConfig {
    /// Configuration for breakers without an entry in `instances`.
    pub defaults: CircuitBreakerConfig,
    /// Configuration per breaker name.
    pub instances: BTreeMap<String, CircuitBreakerConfig>,
}

impl BreakerRegistryConfig {
    /// Validate every configuration; the error names the entry (`instances.payments.…`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.defaults.validate().map_err(|e| e.within("defaults"))?;
        for (name, config) in &self.instances {
            config
                .validate()
                .map_err(|e| e.within(&format!("instances.{name}")))?;
        }
        Ok(())
    }
}

/// Named circuit breakers, created on first use from configuration, with the operator
/// transitions an admin endpoint needs.
#[derive(Clone)]
pub struct BreakerRegistry {
    config: Arc<BreakerRegistryConfig>,
    breakers: Arc<RwLock<BTreeMap<String, CircuitBreaker>>>,
}

/// No breaker has that name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no circuit breaker named `{0}`")]
pub struct UnknownBreaker(pub String);

impl BreakerRegistry {
    /// A registry that creates breakers from `config` (validated now).
    pub fn new(config: BreakerRegistryConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self {
            config: Arc::new(config),
            breakers: Arc::default(),
        })
    }

    /// The breaker called `name`, created from its configuration on first use (fails only
    /// for an empty name: configurations were validated when the registry was built).
    pub fn breaker(&self, name: &str) -> Result<CircuitBreaker, ConfigError> {
        if let Some(breaker) = self.get(name) {
            return Ok(breaker);
        }
        let config = self
            .config
            .instances
            .get(name)
            .unwrap_or(&self.config.defaults)
            .clone();
        let mut breakers = self
            .breakers
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(breaker) = breakers.get(name) {
            return Ok(breaker.clone());
        }
        let breaker = CircuitBreaker::new(name, config)?;
        breakers.insert(name.to_owned(), breaker.clone());
        Ok(breaker)
    }

    /// The breaker called `name`, if it exists.
    pub fn get(&self, name: &str) -> Option<CircuitBreaker> {
        self.breakers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    /// Add a breaker built elsewhere (e.g. by [`stack`](crate::stack)), replacing any with the
    /// same name.
    pub fn register(&self, breaker: CircuitBreaker) {
        self.breakers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(breaker.name().to_owned(), breaker);
    }

    /// Names of the breakers created so far.
    pub fn names(&self) -> Vec<String> {
        self.breakers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect()
    }

    /// One snapshot per breaker, ordered by name.
    pub fn snapshot(&self) -> Vec<CircuitBreakerSnapshot> {
        let breakers: Vec<CircuitBreaker> = self
            .breakers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        breakers.iter().map(CircuitBreaker::snapshot).collect()
    }

    fn with(&self, name: &str, f: impl FnOnce(&CircuitBreaker)) -> Result<(), UnknownBreaker> {
        let breaker = self
            .get(name)
            .ok_or_else(|| UnknownBreaker(name.to_owned()))?;
        f(&breaker);
        Ok(())
    }

    /// Operator: reject every call of `name` until told otherwise.
    pub fn force_open(&self, name: &str) -> Result<(), UnknownBreaker> {
        self.with(name, |b| {
            b.force_open();
        })
    }

    /// Operator: let every call of `name` through, recording nothing.
    pub fn disable(&self, name: &str) -> Result<(), UnknownBreaker> {
        self.with(name, |b| {
            b.disable();
        })
    }

    /// Operator: record `name`'s calls but never open.
    pub fn metrics_only(&self, name: &str) -> Result<(), UnknownBreaker> {
        self.with(name, |b| {
            b.metrics_only();
        })
    }

    /// Operator: CLOSED with an empty window.
    pub fn reset(&self, name: &str) -> Result<(), UnknownBreaker> {
        self.with(name, CircuitBreaker::reset)
    }

    /// Operator: move `name` to any state.
    pub fn transition_to(&self, name: &str, state: State) -> Result<(), UnknownBreaker> {
        self.with(name, |b| {
            b.transition_to(state);
        })
    }
}

impl fmt::Debug for BreakerRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerRegistry")
            .field("breakers", &self.names())
            .finish_non_exhaustive()
    }
}
