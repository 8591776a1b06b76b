use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::{Notify, broadcast};
use tokio::time::Instant;

use super::call::Call;
use super::config::CircuitBreakerConfig;
use super::error::CallNotPermitted;
use super::event::BreakerEvent;
use super::metrics::BreakerMetrics;
use super::snapshot::CircuitBreakerSnapshot;
use super::state::{State, Word};
use super::window::{Aggregate, Window};
use crate::classify::{Classify, DefaultClassifier, Outcome};
use crate::clock::{Clock, duration_nanos};
use crate::config::ConfigError;

/// A circuit breaker with Resilience4j's states and parameters.
///
/// Cloning is cheap and shares the breaker. Use [`call`](Self::call) for a future, the
/// [`CircuitBreakerLayer`](super::CircuitBreakerLayer) for a tower service, or
/// [`try_acquire`](Self::try_acquire) and [`Permit::record`] to drive it by hand.
///
/// ```
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use keel_resilience::{CircuitBreaker, CircuitBreakerConfig, CircuitBreakerError};
///
/// let breaker = CircuitBreaker::new("inventory", CircuitBreakerConfig::default())?;
/// match breaker.call(async { Ok::<_, std::io::Error>(42) }).await {
///     Ok(n) => assert_eq!(n, 42),
///     Err(CircuitBreakerError::NotPermitted(rejected)) => eprintln!("{rejected}"),
///     Err(CircuitBreakerError::Inner(error)) => eprintln!("call failed: {error}"),
/// }
/// # Ok(()) }
/// ```
///
/// # Concurrency
/// In CLOSED state a call costs one atomic load to be admitted. Recording it costs one more
/// load while the window is full of successes (the healthy steady state: nothing is written,
/// so threads sharing the breaker do not contend); otherwise one `fetch_add` and a read of a
/// ring slot, plus a swap and a compare-and-swap when the outcome differs from the one it
/// replaces. No lock is taken and no clock is read unless slow-call detection is on.
/// Transitions and HALF_OPEN bookkeeping take a mutex.
#[derive(Clone)]
pub struct CircuitBreaker {
    pub(crate) inner: Arc<Inner>,
}

/// Keeps the state word alone on its cache line: it is read by every call and written rarely.
#[repr(align(64))]
pub(crate) struct StateCell(AtomicU64);

pub(crate) struct Inner {
    state: StateCell,
    window: Window,
    name: Arc<str>,
    config: CircuitBreakerConfig,
    measure_slow: bool,
    slow_nanos: u64,
    min_calls: u64,
    clock: Clock,
    open_until: AtomicU64,
    cold: Mutex<Cold>,
    not_permitted: AtomicU64,
    events: broadcast::Sender<BreakerEvent>,
    changed: Arc<Notify>,
    metrics: BreakerMetrics,
}

#[derive(Default)]
struct Cold {
    half_open: HalfOpen,
}

/// Trial-call bookkeeping, valid while the state word equals `word`.
#[derive(Default)]
struct HalfOpen {
    word: Option<Word>,
    remaining: u32,
    calls: u32,
    failures: u32,
    slow: u32,
    until: Option<u64>,
}

/// What a call was admitted under: the state word at admission and, when slow calls are
/// measured, its start time.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ticket {
    word: Word,
    start: u64,
}

/// What a transition requires of the current state.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// Exactly this state word (no other transition happened meanwhile).
    Exactly(Word),
    /// CLOSED, with this window generation (the aggregate that triggered it is current).
    ClosedWindow(u16),
    /// Anything (operator).
    Any,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

const EVENT_CAPACITY: usize = 256;

impl CircuitBreaker {
    /// A new breaker in CLOSED state, after validating `config`.
    pub fn new(name: impl Into<String>, config: CircuitBreakerConfig) -> Result<Self, ConfigError> {
        let name: String = name.into();
        if name.is_empty() {
            return Err(ConfigError::new("name", "a circuit breaker needs a name"));
        }
        config.validate()?;
        let metrics = BreakerMetrics::new(&name);
        metrics.state.set(State::Closed.gauge_value());
        metrics.failure_rate.set(-1.0);
        metrics.slow_call_rate.set(-1.0);
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        Ok(Self {
            inner: Arc::new(Inner {
                state: StateCell(AtomicU64::new(Word::new(0, State::Closed).0)),
                window: Window::new(&config),
                name: name.into(),
                measure_slow: config.measures_slow_calls(),
                slow_nanos: duration_nanos(config.slow_call_duration_threshold),
                min_calls: config.effective_minimum_calls(),
                clock: Clock::new(),
                open_until: AtomicU64::new(0),
                cold: Mutex::new(Cold::default()),
                not_permitted: AtomicU64::new(0),
                events,
                changed: Arc::new(Notify::new()),
                metrics,
                config,
            }),
        })
    }

    /// The breaker's name (the `name` label of its metrics).
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &CircuitBreakerConfig {
        &self.inner.config
    }

    /// The current state. An OPEN breaker whose wait has elapsed reports OPEN until the timer or
    /// the next call moves it to HALF_OPEN.
    pub fn state(&self) -> State {
        self.load().state()
    }

    /// Subscribe to state transitions, rejections and threshold crossings.
    pub fn subscribe(&self) -> broadcast::Receiver<BreakerEvent> {
        self.inner.events.subscribe()
    }

    /// Run `future` through the breaker; `Err` results count as failures.
    ///
    /// The breaker is asked on the first poll. If the returned future is dropped before
    /// `future` finishes, nothing is recorded and a HALF_OPEN trial permit is given back.
    #[inline]
    pub fn call<F, T, E>(&self, future: F) -> Call<'_, F, DefaultClassifier>
    where
        F: Future<Output = Result<T, E>>,
    {
        Call::new(self, &DefaultClassifier, future)
    }

    /// Run `future` through the breaker, classifying its result with `classifier`.
    #[inline]
    pub fn call_with<'a, C, F, T, E>(&'a self, classifier: &'a C, future: F) -> Call<'a, F, C>
    where
        C: Classify<T, E> + ?Sized,
        F: Future<Output = Result<T, E>>,
    {
        Call::new(self, classifier, future)
    }

    /// Ask to make one call. The [`Permit`] must be given the call's outcome; dropping it
    /// unused records nothing (and gives a HALF_OPEN trial permit back).
    #[inline]
    pub fn try_acquire(&self) -> Result<Permit<'_>, CallNotPermitted> {
        let ticket = self.acquire()?;
        Ok(Permit {
            breaker: self,
            ticket: Some(ticket),
        })
    }

    /// Like [`try_acquire`](Self::try_acquire), with a permit that owns a handle to the breaker.
    pub fn try_acquire_owned(&self) -> Result<OwnedPermit, CallNotPermitted> {
        let ticket = self.acquire()?;
        Ok(OwnedPermit {
            breaker: self.clone(),
            ticket: Some(ticket),
        })
    }

    /// Counters and rates, for an admin endpoint.
    pub fn snapshot(&self) -> CircuitBreakerSnapshot {
        let inner = &*self.inner;
        let agg = inner.window.aggregate(&inner.clock);
        let (failure_rate, slow_call_rate) = self.rates(agg);
        CircuitBreakerSnapshot {
            name: inner.name.to_string(),
            state: self.state(),
            failure_rate,
            slow_call_rate,
            buffered_calls: agg.calls,
            failed_calls: agg.failures,
            slow_calls: agg.slow,
            not_permitted_calls: inner.not_permitted.load(Ordering::Relaxed),
        }
    }

    // ---- operator transitions -------------------------------------------------------------

    /// Move to `state` now (Resilience4j's `transitionTo…State`). Entering CLOSED or
    /// METRICS_ONLY empties the window; entering OPEN starts the wait; entering HALF_OPEN hands
    /// out fresh trial permits. Returns false if the breaker already was in `state`.
    pub fn transition_to(&self, state: State) -> bool {
        self.transition(Expect::Any, state, None, false)
    }

    /// FORCED_OPEN: reject every call until an operator changes the state.
    pub fn force_open(&self) -> bool {
        self.transition_to(State::ForcedOpen)
    }

    /// DISABLED: let every call through and record nothing.
    pub fn disable(&self) -> bool {
        self.transition_to(State::Disabled)
    }

    /// METRICS_ONLY: let every call through, record outcomes, never open.
    pub fn metrics_only(&self) -> bool {
        self.transition_to(State::MetricsOnly)
    }

    /// CLOSED with an empty window, whatever the state was; publishes [`BreakerEvent::Reset`].
    pub fn reset(&self) {
        self.transition(Expect::Any, State::Closed, None, true);
    }

    // ---- internals ------------------------------------------------------------------------

    #[inline]
    fn load(&self) -> Word {
        Word(self.inner.state.0.load(Ordering::Acquire))
    }

    #[inline]
    fn start_time(&self) -> u64 {
        if self.inner.measure_slow {
            self.inner.clock.now_nanos()
        } else {
            0
        }
    }

    #[inline]
    pub(crate) fn acquire(&self) -> Result<Ticket, CallNotPermitted> {
        self.acquire_with(true)
    }

    /// Admit a call. With `count_rejection` false a rejection is not counted or published (a
    /// service waiting for readiness polls repeatedly; its callers are not rejected).
    #[inline]
    pub(crate) fn acquire_with(&self, count_rejection: bool) -> Result<Ticket, CallNotPermitted> {
        let word = self.load();
        if word.is_closed() {
            return Ok(Ticket {
                word,
                start: self.start_time(),
            });
        }
        self.acquire_slow(word, count_rejection)
    }

    #[cold]
    fn acquire_slow(&self, mut word: Word, count: bool) -> Result<Ticket, CallNotPermitted> {
        let inner = &*self.inner;
        loop {
            match word.state() {
                State::Closed | State::Disabled | State::MetricsOnly => {
                    return Ok(Ticket {
                        word,
                        start: self.start_time(),
                    });
                }
                State::ForcedOpen => return Err(self.reject(State::ForcedOpen, count)),
                State::Open => {
                    if inner.clock.now_nanos() < inner.open_until.load(Ordering::Acquire) {
                        return Err(self.reject(State::Open, count));
                    }
                    self.transition(Expect::Exactly(word), State::HalfOpen, None, false);
                }
                State::HalfOpen => {
                    let now = inner.clock.now_nanos();
                    let mut cold = lock(&inner.cold);
                    if self.load() == word && cold.half_open.word == Some(word) {
                        let half = &mut cold.half_open;
                        if half.until.is_none_or(|until| now < until) {
                            if half.remaining > 0 {
                                half.remaining -= 1;
                                drop(cold);
                                return Ok(Ticket {
                                    word,
                                    start: self.start_time(),
                                });
                            }
                            drop(cold);
                            return Err(self.reject(State::HalfOpen, count));
                        }
                        drop(cold);
                        // Trial calls took too long: back to OPEN, so the breaker cannot stick.
                        self.transition(Expect::Exactly(word), State::Open, None, false);
                    }
                }
            }
            word = self.load();
        }
    }

    #[cold]
    fn reject(&self, state: State, count: bool) -> CallNotPermitted {
        let inner = &*self.inner;
        if count {
            inner.not_permitted.fetch_add(1, Ordering::Relaxed);
            inner.metrics.not_permitted.increment(1);
            let _ = inner.events.send(BreakerEvent::CallNotPermitted {
                name: inner.name.clone(),
                state,
            });
        }
        CallNotPermitted {
            name: inner.name.clone(),
            state,
        }
    }

    /// Record the outcome of a call admitted with `ticket`.
    #[inline]
    pub(crate) fn complete(&self, ticket: Ticket, outcome: Outcome) {
        match ticket.word.state() {
            State::Closed | State::MetricsOnly => self.record_closed(ticket, outcome),
            State::HalfOpen => self.record_half_open(ticket, outcome),
            _ => {}
        }
    }

    /// Classify the outcome as failure/slow and count it in the per-outcome metrics; `None`
    /// for an ignored call.
    #[inline]
    fn count(&self, ticket: &Ticket, outcome: Outcome) -> Option<(bool, bool)> {
        let inner = &*self.inner;
        let failure = match outcome {
            Outcome::Success => false,
            Outcome::Failure => true,
            Outcome::Ignored => {
                inner.metrics.ignored.increment(1);
                return None;
            }
        };
        let slow = inner.measure_slow
            && inner.clock.now_nanos().saturating_sub(ticket.start) >= inner.slow_nanos;
        match (failure, slow) {
            (false, false) => inner.metrics.success.increment(1),
            (true, false) => inner.metrics.failure.increment(1),
            (false, true) => inner.metrics.slow_success.increment(1),
            (true, true) => inner.metrics.slow_failure.increment(1),
        }
        Some((failure, slow))
    }

    #[inline]
    fn record_closed(&self, ticket: Ticket, outcome: Outcome) {
        let Some((failure, slow)) = self.count(&ticket, outcome) else {
            return;
        };
        if let Some((generation, agg)) = self.inner.window.record(failure, slow, &self.inner.clock)
        {
            self.on_window_change(generation, agg);
        }
    }

    fn rates(&self, agg: Aggregate) -> (f32, f32) {
        if agg.calls == 0 || agg.calls < self.inner.min_calls {
            return (-1.0, -1.0);
        }
        let calls = agg.calls as f32;
        (
            agg.failures as f32 * 100.0 / calls,
            agg.slow as f32 * 100.0 / calls,
        )
    }

    #[cold]
    fn on_window_change(&self, generation: u16, agg: Aggregate) {
        let inner = &*self.inner;
        let (failure_rate, slow_call_rate) = self.rates(agg);
        inner.metrics.failure_rate.set(failure_rate);
        inner.metrics.slow_call_rate.set(slow_call_rate);
        if failure_rate < 0.0 || !self.load().is_closed() {
            return;
        }
        let config = &inner.config;
        let cause = if failure_rate >= config.failure_rate_threshold {
            BreakerEvent::FailureRateExceeded {
                name: inner.name.clone(),
                failure_rate,
                threshold: config.failure_rate_threshold,
            }
        } else if slow_call_rate >= config.slow_call_rate_threshold {
            BreakerEvent::SlowCallRateExceeded {
                name: inner.name.clone(),
                slow_call_rate,
                threshold: config.slow_call_rate_threshold,
            }
        } else {
            return;
        };
        self.transition(
            Expect::ClosedWindow(generation),
            State::Open,
            Some(cause),
            false,
        );
    }

    fn record_half_open(&self, ticket: Ticket, outcome: Outcome) {
        let inner = &*self.inner;
        let Some((failure, slow)) = self.count(&ticket, outcome) else {
            self.release(ticket);
            return;
        };
        let mut cold = lock(&inner.cold);
        if self.load() != ticket.word || cold.half_open.word != Some(ticket.word) {
            return; // a trial call of an earlier HALF_OPEN period
        }
        let half = &mut cold.half_open;
        half.calls += 1;
        half.failures += u32::from(failure);
        half.slow += u32::from(slow);
        if half.calls < inner.config.permitted_number_of_calls_in_half_open_state {
            return;
        }
        let calls = half.calls as f32;
        let failure_rate = half.failures as f32 * 100.0 / calls;
        let slow_call_rate = half.slow as f32 * 100.0 / calls;
        drop(cold);
        inner.metrics.failure_rate.set(failure_rate);
        inner.metrics.slow_call_rate.set(slow_call_rate);
        let config = &inner.config;
        let (to, cause) = if failure_rate >= config.failure_rate_threshold {
            let cause = BreakerEvent::FailureRateExceeded {
                name: inner.name.clone(),
                failure_rate,
                threshold: config.failure_rate_threshold,
            };
            (State::Open, Some(cause))
        } else if slow_call_rate >= config.slow_call_rate_threshold {
            let cause = BreakerEvent::SlowCallRateExceeded {
                name: inner.name.clone(),
                slow_call_rate,
                threshold: config.slow_call_rate_threshold,
            };
            (State::Open, Some(cause))
        } else {
            (State::Closed, None)
        };
        self.transition(Expect::Exactly(ticket.word), to, cause, false);
    }

    /// A permit was dropped without an outcome, or its call was ignored: give a HALF_OPEN trial
    /// permit back.
    #[inline]
    pub(crate) fn release(&self, ticket: Ticket) {
        if ticket.word.state() == State::HalfOpen {
            self.release_trial(ticket);
        }
    }

    #[cold]
    fn release_trial(&self, ticket: Ticket) {
        let inner = &*self.inner;
        let mut cold = lock(&inner.cold);
        if self.load() == ticket.word && cold.half_open.word == Some(ticket.word) {
            let permitted = inner.config.permitted_number_of_calls_in_half_open_state;
            cold.half_open.remaining = (cold.half_open.remaining + 1).min(permitted);
            drop(cold);
            inner.changed.notify_waiters();
        }
    }

    /// Change state if `expect` holds. Returns whether the state changed.
    fn transition(
        &self,
        expect: Expect,
        to: State,
        cause: Option<BreakerEvent>,
        reset: bool,
    ) -> bool {
        let inner = &*self.inner;
        let config = &inner.config;
        let mut cold = lock(&inner.cold);
        let current = self.load();
        let holds = match expect {
            Expect::Exactly(word) => current == word,
            Expect::ClosedWindow(generation) => {
                current.is_closed() && inner.window.generation() == generation
            }
            Expect::Any => true,
        };
        let from = current.state();
        if !holds || (from == to && !reset) {
            return false;
        }
        let next = Word::new(current.generation().wrapping_add(1), to);
        let now = inner.clock.now_nanos();
        let mut timer = None;
        match to {
            State::Closed | State::MetricsOnly => {
                inner.window.reset();
            }
            State::Open => {
                let until = now.saturating_add(duration_nanos(config.wait_duration_in_open_state));
                inner.open_until.store(until, Ordering::Release);
                timer = Some((until, State::HalfOpen));
            }
            State::HalfOpen => {
                let max_wait = config.max_wait_duration_in_half_open_state;
                let until =
                    (!max_wait.is_zero()).then(|| now.saturating_add(duration_nanos(max_wait)));
                cold.half_open = HalfOpen {
                    word: Some(next),
                    remaining: config.permitted_number_of_calls_in_half_open_state,
                    calls: 0,
                    failures: 0,
                    slow: 0,
                    until,
                };
                timer = until.map(|until| (until, State::Open));
            }
            State::Disabled | State::ForcedOpen => {}
        }
        inner.state.0.store(next.0, Ordering::Release);
        drop(cold);

        inner.metrics.state.set(to.gauge_value());
        if matches!(to, State::Closed | State::MetricsOnly) {
            inner.metrics.failure_rate.set(-1.0);
            inner.metrics.slow_call_rate.set(-1.0);
        }
        if matches!(to, State::Open | State::ForcedOpen) {
            tracing::warn!(circuit_breaker = %inner.name, %from, %to, "circuit breaker state changed");
        } else {
            tracing::info!(circuit_breaker = %inner.name, %from, %to, "circuit breaker state changed");
        }
        if let Some(cause) = cause {
            let _ = inner.events.send(cause);
        }
        if reset {
            let _ = inner.events.send(BreakerEvent::Reset {
                name: inner.name.clone(),
            });
        }
        if from != to {
            let _ = inner.events.send(BreakerEvent::StateTransition {
                name: inner.name.clone(),
                from,
                to,
            });
        }
        inner.changed.notify_waiters();
        if let Some((at, next_state)) = timer {
            self.schedule(at, next, next_state);
        }
        true
    }

    /// Fire `expect → to` at `at` on a tokio timer, if enabled and a runtime is available.
    fn schedule(&self, at: u64, expect: Word, to: State) {
        if !self
            .inner
            .config
            .automatic_transition_from_open_to_half_open_enabled
        {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak = Arc::downgrade(&self.inner);
        let deadline = self.inner.clock.instant_at(at);
        runtime.spawn(async move {
            tokio::time::sleep_until(deadline).await;
            if let Some(inner) = weak.upgrade() {
                CircuitBreaker { inner }.transition(Expect::Exactly(expect), to, None, false);
            }
        });
    }

    /// When the breaker may next admit a call without anyone finishing one: the end of the
    /// OPEN wait or of the HALF_OPEN limit.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let inner = &*self.inner;
        let word = self.load();
        let at = match word.state() {
            State::Open => Some(inner.open_until.load(Ordering::Acquire)),
            State::HalfOpen => {
                let cold = lock(&inner.cold);
                cold.half_open
                    .until
                    .filter(|_| cold.half_open.word == Some(word))
            }
            _ => None,
        };
        at.map(|at| inner.clock.instant_at(at))
    }

    /// Notified on every transition and every trial permit given back.
    pub(crate) fn changed(&self) -> Arc<Notify> {
        self.inner.changed.clone()
    }

    #[cfg(test)]
    pub(crate) fn window(&self) -> &Window {
        &self.inner.window
    }
}

impl fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("name", &self.inner.name)
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

/// Permission to make one call, from [`CircuitBreaker::try_acquire`].
#[must_use = "a permit dropped without an outcome records nothing"]
pub struct Permit<'a> {
    breaker: &'a CircuitBreaker,
    ticket: Option<Ticket>,
}

impl Permit<'_> {
    /// Record the call's outcome.
    #[inline]
    pub fn record(mut self, outcome: Outcome) {
        if let Some(ticket) = self.ticket.take() {
            self.breaker.complete(ticket, outcome);
        }
    }

    /// The state the call was admitted in.
    pub fn state(&self) -> State {
        self.ticket.map_or(State::Closed, |t| t.word.state())
    }
}

impl Drop for Permit<'_> {
    #[inline]
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            self.breaker.release(ticket);
        }
    }
}

impl fmt::Debug for Permit<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("breaker", &self.breaker.name())
            .field("state", &self.state())
            .finish()
    }
}

/// Permission to make one call, owning a handle to its breaker
/// (from [`CircuitBreaker::try_acquire_owned`]).
#[must_use = "a permit dropped without an outcome records nothing"]
pub struct OwnedPermit {
    breaker: CircuitBreaker,
    ticket: Option<Ticket>,
}

impl OwnedPermit {
    pub(crate) fn new(breaker: CircuitBreaker, ticket: Ticket) -> Self {
        Self {
            breaker,
            ticket: Some(ticket),
        }
    }

    /// Record the call's outcome.
    pub fn record(mut self, outcome: Outcome) {
        if let Some(ticket) = self.ticket.take() {
            self.breaker.complete(ticket, outcome);
        }
    }

    /// The state the call was admitted in.
    pub fn state(&self) -> State {
        self.ticket.map_or(State::Closed, |t| t.word.state())
    }
}

impl Drop for OwnedPermit {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            self.breaker.release(ticket);
        }
    }
}

impl fmt::Debug for OwnedPermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OwnedPermit")
            .field("breaker", &self.breaker.name())
            .field("state", &self.state())
            .finish()
    }
}
