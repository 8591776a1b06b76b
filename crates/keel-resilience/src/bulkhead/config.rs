use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, check, millis};

/// How a [`Bulkhead`](super::Bulkhead) is configured (Resilience4j's names and defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BulkheadConfig {
    /// Calls allowed at once. Default 25.
    pub max_concurrent_calls: u32,
    /// How long a call may wait for a free slot; 0 rejects at once. Default 0.
    #[serde(rename = "max_wait_duration_ms", with = "millis")]
    pub max_wait_duration: Duration,
}

impl Default for BulkheadConfig {
    fn default() -> Self {
        Self {
            max_concurrent_calls: 25,
            max_wait_duration: Duration::ZERO,
        }
    }
}

impl BulkheadConfig {
    /// Check every parameter.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let max = self.max_concurrent_calls;
        check(
            (1..=1_000_000).contains(&max),
            "max_concurrent_calls",
            || format!("must be between 1 and 1000000, got {max}"),
        )
    }
}
