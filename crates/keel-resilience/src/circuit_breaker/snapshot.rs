use serde::{Deserialize, Serialize};

use super::State;

/// A breaker's state and counters at one moment, for an admin endpoint or a console.
///
/// Rates are percentages, or -1 while the window holds fewer calls than
/// `minimum_number_of_calls` (as in Resilience4j).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CircuitBreakerSnapshot {
    /// Breaker name.
    pub name: String,
    /// Current state.
    pub state: State,
    /// Failure rate of the calls in the window, in percent (-1: not enough calls).
    pub failure_rate: f32,
    /// Slow-call rate of the calls in the window, in percent (-1: not enough calls).
    pub slow_call_rate: f32,
    /// Calls in the window.
    pub buffered_calls: u64,
    /// Failed calls in the window.
    pub failed_calls: u64,
    /// Slow calls in the window (successful or not).
    pub slow_calls: u64,
    /// Calls rejected since the breaker was created.
    pub not_permitted_calls: u64,
}
