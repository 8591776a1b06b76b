use std::fmt;

use serde::{Deserialize, Serialize};

/// The state of a circuit breaker.
///
/// The `keel_circuit_breaker_state` gauge holds [`State::gauge_value`]: 0 CLOSED, 1 OPEN,
/// 2 HALF_OPEN, 3 DISABLED, 4 FORCED_OPEN, 5 METRICS_ONLY.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum State {
    /// Calls flow; outcomes are recorded and may open the breaker.
    Closed,
    /// Calls are rejected until `wait_duration_in_open_state` has passed.
    Open,
    /// A limited number of trial calls decide between CLOSED and OPEN.
    HalfOpen,
    /// Operator override: every call flows, nothing is recorded.
    Disabled,
    /// Operator override: every call is rejected until an operator changes the state.
    ForcedOpen,
    /// Operator override: every call flows and is recorded, but the breaker never opens.
    MetricsOnly,
}

impl State {
    pub(crate) const ALL: [State; 6] = [
        State::Closed,
        State::Open,
        State::HalfOpen,
        State::Disabled,
        State::ForcedOpen,
        State::MetricsOnly,
    ];

    /// The name used in logs, events and snapshots (`HALF_OPEN`).
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "CLOSED",
            State::Open => "OPEN",
            State::HalfOpen => "HALF_OPEN",
            State::Disabled => "DISABLED",
            State::ForcedOpen => "FORCED_OPEN",
            State::MetricsOnly => "METRICS_ONLY",
        }
    }

    /// The value of the `keel_circuit_breaker_state` gauge.
    pub fn gauge_value(self) -> f64 {
        f64::from(self.code())
    }

    /// Whether calls are let through in this state (HALF_OPEN: up to the permitted number).
    pub fn permits_calls(self) -> bool {
        !matches!(self, State::Open | State::ForcedOpen)
    }

    #[inline]
    pub(crate) fn code(self) -> u8 {
        self as u8
    }

    #[inline]
    pub(crate) fn from_code(code: u8) -> State {
        State::ALL[usize::from(code).min(5)]
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The state word: `generation << 8 | state code`. Every transition bumps the generation, so a
/// permit taken in one HALF_OPEN period cannot be counted in the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Word(pub(crate) u64);

impl Word {
    #[inline]
    pub(crate) fn new(generation: u32, state: State) -> Self {
        Word(u64::from(generation) << 8 | u64::from(state.code()))
    }

    #[inline]
    pub(crate) fn state(self) -> State {
        State::from_code(self.0 as u8)
    }

    #[inline]
    pub(crate) fn is_closed(self) -> bool {
        self.0 as u8 == State::Closed.code()
    }

    #[inline]
    pub(crate) fn generation(self) -> u32 {
        (self.0 >> 8) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for s in State::ALL {
            assert_eq!(State::from_code(s.code()), s);
            let w = Word::new(u32::MAX, s);
            assert_eq!(w.state(), s);
            assert_eq!(w.generation(), u32::MAX);
        }
        assert_eq!(State::HalfOpen.gauge_value(), 2.0);
    }
}
