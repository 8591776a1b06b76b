use std::sync::Arc;

use super::State;

/// What a circuit breaker publishes on its event stream
/// ([`CircuitBreaker::subscribe`](super::CircuitBreaker::subscribe)).
///
/// Per-call success and error events are deliberately not published (they would cost every
/// call); per-call outcomes are counted in `keel_circuit_breaker_calls_total`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum BreakerEvent {
    /// The breaker changed state.
    StateTransition {
        /// Breaker name.
        name: Arc<str>,
        /// State before.
        from: State,
        /// State after.
        to: State,
    },
    /// The failure rate reached the threshold (the breaker opens right after).
    FailureRateExceeded {
        /// Breaker name.
        name: Arc<str>,
        /// Failure rate in percent.
        failure_rate: f32,
        /// The configured threshold in percent.
        threshold: f32,
    },
    /// The slow-call rate reached the threshold (the breaker opens right after).
    SlowCallRateExceeded {
        /// Breaker name.
        name: Arc<str>,
        /// Slow-call rate in percent.
        slow_call_rate: f32,
        /// The configured threshold in percent.
        threshold: f32,
    },
    /// A call was rejected.
    CallNotPermitted {
        /// Breaker name.
        name: Arc<str>,
        /// The state that rejected it.
        state: State,
    },
    /// An operator reset the breaker (CLOSED, window emptied).
    Reset {
        /// Breaker name.
        name: Arc<str>,
    },
}

impl BreakerEvent {
    /// The name of the breaker that published the event.
    pub fn name(&self) -> &str {
        match self {
            BreakerEvent::StateTransition { name, .. }
            | BreakerEvent::FailureRateExceeded { name, .. }
            | BreakerEvent::SlowCallRateExceeded { name, .. }
            | BreakerEvent::CallNotPermitted { name, .. }
            | BreakerEvent::Reset { name } => name,
        }
    }
}
