//! Circuit breaker with Resilience4j's semantics and parameter names.
//!
//! # States
//! - **CLOSED**: calls flow; their outcomes fill a sliding window (count- or time-based). Once
//!   the window holds `minimum_number_of_calls`, a failure rate or slow-call rate at or above
//!   its threshold opens the breaker.
//! - **OPEN**: calls are rejected with [`CallNotPermitted`] for `wait_duration_in_open_state`,
//!   then the breaker moves to HALF_OPEN (on a timer when
//!   `automatic_transition_from_open_to_half_open_enabled`, and in any case on the next call).
//! - **HALF_OPEN**: `permitted_number_of_calls_in_half_open_state` trial calls are let through;
//!   when all have finished, their rates decide: OPEN again, or CLOSED with an empty window.
//!   Trial permits whose call is dropped or ignored are given back, and after
//!   `max_wait_duration_in_half_open_state` the breaker returns to OPEN whatever happened to
//!   the trial calls — so it can never stay HALF_OPEN forever (the Resilience4j issues #935,
//!   #903, #1389, #2093).
//! - **DISABLED**, **FORCED_OPEN**, **METRICS_ONLY**: operator overrides, left only by another
//!   operator transition ([`CircuitBreaker::transition_to`], [`BreakerRegistry`]).
//!
//! A call admitted in one state is recorded in that state only: a call admitted in CLOSED that
//! finishes after the breaker opened is counted in the window (as Resilience4j does) but cannot
//! decide a HALF_OPEN trial.
//!
//! # Metrics
//! | name | type | labels |
//! |---|---|---|
//! | `keel_circuit_breaker_state` | gauge, 0 CLOSED · 1 OPEN · 2 HALF_OPEN · 3 DISABLED · 4 FORCED_OPEN · 5 METRICS_ONLY | `name` |
//! | `keel_circuit_breaker_calls_total` | counter | `name`, `outcome` = `success` \| `failure` \| `slow_success` \| `slow_failure` \| `ignored` |
//! | `keel_circuit_breaker_not_permitted_calls_total` | counter | `name` |
//! | `keel_circuit_breaker_failure_rate` | gauge, percent, -1 below the minimum number of calls | `name` |
//! | `keel_circuit_breaker_slow_call_rate` | gauge, percent, -1 below the minimum number of calls | `name` |

mod breaker;
mod call;
mod config;
mod error;
mod event;
mod future;
mod layer;
mod metrics;
mod registry;
mod service;
mod snapshot;
mod state;
mod window;

#[cfg(test)]
mod tests;

pub use breaker::{CircuitBreaker, OwnedPermit, Permit};
pub use call::Call;
pub use config::{CircuitBreakerConfig, SlidingWindowType};
pub use error::{CallNotPermitted, CircuitBreakerError};
pub use event::BreakerEvent;
pub use future::ResponseFuture;
pub use layer::{CircuitBreakerLayer, WhenOpen};
pub use registry::{BreakerRegistry, BreakerRegistryConfig, UnknownBreaker};
pub use service::CircuitBreakerService;
pub use snapshot::CircuitBreakerSnapshot;
pub use state::State;
