//! Property test: for any configuration and any sequence of calls, time steps and operator
//! transitions, the circuit breaker agrees with a simple reference model — same admissions,
//! same state, same window counts — under paused tokio time.

use std::collections::VecDeque;
use std::time::Duration;

use keel_resilience::circuit_breaker::{
    CircuitBreaker, CircuitBreakerConfig, SlidingWindowType, State,
};
use keel_resilience::classify::Outcome;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    /// Acquire, let `millis` pass, then record `outcome`.
    Call { outcome: Outcome, millis: u64 },
    /// Let time pass.
    Advance { millis: u64 },
    /// Operator transition (`None`: reset).
    Operator(Option<State>),
}

/// The reference: a plain, single-threaded reading of the documented semantics.
#[derive(Debug)]
struct Model {
    config: CircuitBreakerConfig,
    state: State,
    now: u64,
    open_until: u64,
    /// (second, failure, slow) of the calls recorded since the window was last reset.
    window: VecDeque<(u64, bool, bool)>,
    half_remaining: u32,
    half_calls: u32,
    half_failures: u32,
    half_slow: u32,
    half_until: Option<u64>,
    not_permitted: u64,
}

impl Model {
    fn new(config: CircuitBreakerConfig) -> Self {
        Self {
            config,
            state: State::Closed,
            now: 0,
            open_until: 0,
            window: VecDeque::new(),
            half_remaining: 0,
            half_calls: 0,
            half_failures: 0,
            half_slow: 0,
            half_until: None,
            not_permitted: 0,
        }
    }

    fn ms(d: Duration) -> u64 {
        d.as_millis() as u64
    }

    fn enter(&mut self, to: State) {
        match to {
            State::Closed | State::MetricsOnly => self.window.clear(),
            State::Open => {
                self.open_until = self.now + Self::ms(self.config.wait_duration_in_open_state)
            }
            State::HalfOpen => {
                self.half_remaining = self.config.permitted_number_of_calls_in_half_open_state;
                self.half_calls = 0;
                self.half_failures = 0;
                self.half_slow = 0;
                let max_wait = Self::ms(self.config.max_wait_duration_in_half_open_state);
                self.half_until = (max_wait > 0).then_some(self.now + max_wait);
            }
            State::Disabled | State::ForcedOpen => {}
        }
        self.state = to;
    }

    fn operator(&mut self, to: Option<State>) {
        match to {
            None => self.enter(State::Closed),
            Some(to) if to != self.state => self.enter(to),
            Some(_) => {}
        }
    }

    fn acquire(&mut self) -> Option<State> {
        loop {
            match self.state {
                State::Closed | State::Disabled | State::MetricsOnly => return Some(self.state),
                State::ForcedOpen => {
                    self.not_permitted += 1;
                    return None;
                }
                State::Open => {
                    if self.now < self.open_until {
                        self.not_permitted += 1;
                        return None;
                    }
                    self.enter(State::HalfOpen);
                }
                State::HalfOpen => {
                    if self.half_until.is_none_or(|u| self.now < u) {
                        if self.half_remaining > 0 {
                            self.half_remaining -= 1;
                            return Some(State::HalfOpen);
                        }
                        self.not_permitted += 1;
                        return None;
                    }
                    self.enter(State::Open);
                }
            }
        }
    }

    /// Calls in the window as of `now`.
    fn in_window(&self) -> (u64, u64, u64) {
        let second = self.now / 1000;
        let size = u64::from(self.config.sliding_window_size);
        let mut counts = (0, 0, 0);
        let entries: Box<dyn Iterator<Item = &(u64, bool, bool)>> = match self
            .config
            .sliding_window_type
        {
            SlidingWindowType::CountBased => Box::new(self.window.iter().rev().take(size as usize)),
            SlidingWindowType::TimeBased => Box::new(
                self.window
                    .iter()
                    .filter(move |(s, _, _)| *s + size > second),
            ),
        };
        for (_, failure, slow) in entries {
            counts.0 += 1;
            counts.1 += u64::from(*failure);
            counts.2 += u64::from(*slow);
        }
        counts
    }

    fn exceeded(&self, calls: u64, failures: u64, slow: u64) -> bool {
        let c = calls as f32;
        failures as f32 * 100.0 / c >= self.config.failure_rate_threshold
            || slow as f32 * 100.0 / c >= self.config.slow_call_rate_threshold
    }

    fn record(&mut self, admitted: State, outcome: Outcome, millis: u64) {
        let measured = self.config.slow_call_rate_threshold < 100.0;
        let slow = measured && millis >= Self::ms(self.config.slow_call_duration_threshold);
        let failure = outcome == Outcome::Failure;
        match admitted {
            State::Closed | State::MetricsOnly => {
                if outcome == Outcome::Ignored {
                    return;
                }
                self.window.push_back((self.now / 1000, failure, slow));
                let (calls, failures, slow) = self.in_window();
                let min = match self.config.sliding_window_type {
                    SlidingWindowType::CountBased => self
                        .config
                        .minimum_number_of_calls
                        .min(self.config.sliding_window_size),
                    SlidingWindowType::TimeBased => self.config.minimum_number_of_calls,
                };
                if self.state == State::Closed
                    && calls >= u64::from(min)
                    && self.exceeded(calls, failures, slow)
                {
                    self.enter(State::Open);
                }
            }
            State::HalfOpen => {
                if outcome == Outcome::Ignored {
                    self.half_remaining += 1;
                    return;
                }
                self.half_calls += 1;
                self.half_failures += u32::from(failure);
                self.half_slow += u32::from(slow);
                if self.half_calls == self.config.permitted_number_of_calls_in_half_open_state {
                    let (c, f, s) = (
                        self.half_calls.into(),
                        self.half_failures.into(),
                        self.half_slow.into(),
                    );
                    let to = if self.exceeded(c, f, s) {
                        State::Open
                    } else {
                        State::Closed
                    };
                    self.enter(to);
                }
            }
            _ => {}
        }
    }
}

fn config_strategy() -> impl Strategy<Value = CircuitBreakerConfig> {
    (
        prop_oneof![
            Just(SlidingWindowType::CountBased),
            Just(SlidingWindowType::TimeBased)
        ],
        1u32..12,
        1u32..15,
        prop_oneof![
            Just(10.0f32),
            Just(25.0),
            Just(50.0),
            Just(75.0),
            Just(100.0)
        ],
        prop_oneof![Just(100.0f32), Just(50.0), Just(20.0)],
        1u32..4,
        1u64..6,
        prop_oneof![Just(0u64), 1u64..10],
    )
        .prop_map(
            |(kind, size, min, failure, slow, permitted, wait, max_wait)| CircuitBreakerConfig {
                sliding_window_type: kind,
                sliding_window_size: size,
                minimum_number_of_calls: min,
                failure_rate_threshold: failure,
                slow_call_rate_threshold: slow,
                slow_call_duration_threshold: Duration::from_secs(1),
                permitted_number_of_calls_in_half_open_state: permitted,
                wait_duration_in_open_state: Duration::from_secs(wait),
                max_wait_duration_in_half_open_state: Duration::from_secs(max_wait),
                automatic_transition_from_open_to_half_open_enabled: false,
            },
        )
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let outcome = prop_oneof![
        4 => Just(Outcome::Success),
        4 => Just(Outcome::Failure),
        1 => Just(Outcome::Ignored),
    ];
    let state = prop_oneof![
        Just(None),
        Just(Some(State::Closed)),
        Just(Some(State::Open)),
        Just(Some(State::HalfOpen)),
        Just(Some(State::Disabled)),
        Just(Some(State::ForcedOpen)),
        Just(Some(State::MetricsOnly)),
    ];
    prop_oneof![
        12 => (outcome, prop_oneof![3 => Just(0u64), 1 => 0u64..2_500]).prop_map(|(outcome, millis)| Op::Call { outcome, millis }),
        3 => (0u64..7_000).prop_map(|millis| Op::Advance { millis }),
        1 => state.prop_map(Op::Operator),
    ]
}

async fn check(config: CircuitBreakerConfig, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let breaker = CircuitBreaker::new("model", config.clone()).unwrap();
    let mut model = Model::new(config);
    for (i, op) in ops.into_iter().enumerate() {
        match op.clone() {
            Op::Call { outcome, millis } => {
                let admitted = breaker.try_acquire();
                let expected = model.acquire();
                prop_assert_eq!(
                    admitted.as_ref().ok().map(|p| p.state()),
                    expected,
                    "op {}: {:?}",
                    i,
                    op
                );
                tokio::time::advance(Duration::from_millis(millis)).await;
                model.now += millis;
                if let (Ok(permit), Some(state)) = (admitted, expected) {
                    permit.record(outcome);
                    model.record(state, outcome, millis);
                }
            }
            Op::Advance { millis } => {
                tokio::time::advance(Duration::from_millis(millis)).await;
                model.now += millis;
            }
            Op::Operator(None) => {
                breaker.reset();
                model.operator(None);
            }
            Op::Operator(Some(state)) => {
                breaker.transition_to(state);
                model.operator(Some(state));
            }
        }
        prop_assert_eq!(breaker.state(), model.state, "op {}: {:?}", i, op);
        let snapshot = breaker.snapshot();
        {
            let (calls, failures, slow) = model.in_window();
            prop_assert_eq!(
                (
                    snapshot.buffered_calls,
                    snapshot.failed_calls,
                    snapshot.slow_calls
                ),
                (calls, failures, slow),
                "op {}: {:?}",
                i,
                op
            );
        }
        prop_assert_eq!(snapshot.not_permitted_calls, model.not_permitted);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn breaker_matches_reference_model(config in config_strategy(), ops in prop::collection::vec(op_strategy(), 1..150)) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(check(config, ops))?;
    }
}
