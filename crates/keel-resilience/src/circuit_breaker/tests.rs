//! Deterministic tests: paused tokio time for every transition and window type.

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::broadcast::error::TryRecvError;
use tokio::time::advance;
use tower::{Layer, Service, ServiceExt};

use super::window::Window;
use super::*;
use crate::BoxError;
use crate::classify::Outcome;

fn config() -> CircuitBreakerConfig {
    CircuitBreakerConfig {
        failure_rate_threshold: 50.0,
        sliding_window_size: 10,
        minimum_number_of_calls: 4,
        permitted_number_of_calls_in_half_open_state: 2,
        wait_duration_in_open_state: Duration::from_secs(5),
        max_wait_duration_in_half_open_state: Duration::from_secs(20),
        automatic_transition_from_open_to_half_open_enabled: false,
        ..CircuitBreakerConfig::default()
    }
}

fn breaker(config: CircuitBreakerConfig) -> CircuitBreaker {
    CircuitBreaker::new("test", config).unwrap()
}

fn run(b: &CircuitBreaker, outcome: Outcome) -> Result<(), CallNotPermitted> {
    b.try_acquire().map(|p| p.record(outcome))
}

fn open(b: &CircuitBreaker) {
    while b.state() == State::Closed {
        run(b, Outcome::Failure).unwrap();
    }
    assert_eq!(b.state(), State::Open);
}

fn drain(rx: &mut tokio::sync::broadcast::Receiver<BreakerEvent>) -> Vec<BreakerEvent> {
    let mut events = Vec::new();
    loop {
        match rx.try_recv() {
            Ok(e) => events.push(e),
            Err(TryRecvError::Empty | TryRecvError::Closed) => return events,
            Err(TryRecvError::Lagged(_)) => {}
        }
    }
}

fn transitions(events: &[BreakerEvent]) -> Vec<(State, State)> {
    events
        .iter()
        .filter_map(|e| match e {
            BreakerEvent::StateTransition { from, to, .. } => Some((*from, *to)),
            _ => None,
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn closed_stays_closed_below_minimum_calls() {
    let b = breaker(config());
    for _ in 0..3 {
        run(&b, Outcome::Failure).unwrap();
    }
    assert_eq!(b.state(), State::Closed);
    assert_eq!(b.snapshot().failure_rate, -1.0);
    run(&b, Outcome::Failure).unwrap();
    assert_eq!(b.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn closed_to_open_at_failure_rate_threshold() {
    let b = breaker(config());
    let mut rx = b.subscribe();
    for outcome in [
        Outcome::Success,
        Outcome::Success,
        Outcome::Success,
        Outcome::Failure,
        Outcome::Failure,
    ] {
        run(&b, outcome).unwrap();
    }
    // 2 of 5 = 40 %
    assert_eq!(b.state(), State::Closed);
    assert_eq!(b.snapshot().failure_rate, 40.0);
    run(&b, Outcome::Failure).unwrap(); // 3 of 6 = 50 %
    assert_eq!(b.state(), State::Open);
    let events = drain(&mut rx);
    assert!(matches!(
        events[0],
        BreakerEvent::FailureRateExceeded {
            failure_rate: 50.0,
            threshold: 50.0,
            ..
        }
    ));
    assert_eq!(transitions(&events), vec![(State::Closed, State::Open)]);
}

#[tokio::test(start_paused = true)]
async fn count_window_forgets_old_calls() {
    let b = breaker(CircuitBreakerConfig {
        sliding_window_size: 4,
        ..config()
    });
    for outcome in [
        Outcome::Failure,
        Outcome::Success,
        Outcome::Success,
        Outcome::Success,
    ] {
        run(&b, outcome).unwrap();
    }
    assert_eq!(b.snapshot().failed_calls, 1);
    for _ in 0..3 {
        run(&b, Outcome::Success).unwrap();
    }
    let s = b.snapshot();
    assert_eq!(
        (s.buffered_calls, s.failed_calls, s.failure_rate),
        (4, 0, 0.0)
    );
}

#[tokio::test(start_paused = true)]
async fn open_rejects_and_counts() {
    let b = breaker(config());
    open(&b);
    let mut rx = b.subscribe();
    let err = b.try_acquire().unwrap_err();
    assert_eq!(err.state(), State::Open);
    assert_eq!(err.name(), "test");
    assert_eq!(
        err.to_string(),
        "circuit breaker `test` is OPEN and does not permit further calls"
    );
    let err = b.call(async { Ok::<_, ()>(()) }).await.unwrap_err();
    assert!(err.is_not_permitted());
    assert_eq!(b.snapshot().not_permitted_calls, 2);
    assert_eq!(drain(&mut rx).len(), 2);
}

#[tokio::test(start_paused = true)]
async fn open_to_half_open_after_wait_on_next_call() {
    let b = breaker(config());
    open(&b);
    advance(Duration::from_millis(4_999)).await;
    assert!(b.try_acquire().is_err());
    advance(Duration::from_millis(1)).await;
    assert_eq!(
        b.state(),
        State::Open,
        "without automatic transition, the move waits for a call"
    );
    let permit = b.try_acquire().unwrap();
    assert_eq!(permit.state(), State::HalfOpen);
    assert_eq!(b.state(), State::HalfOpen);
    permit.record(Outcome::Success);
}

#[tokio::test(start_paused = true)]
async fn automatic_transition_open_to_half_open() {
    let b = breaker(CircuitBreakerConfig {
        automatic_transition_from_open_to_half_open_enabled: true,
        ..config()
    });
    let mut rx = b.subscribe();
    open(&b);
    tokio::time::sleep(Duration::from_secs(5)).await;
    tokio::task::yield_now().await;
    assert_eq!(b.state(), State::HalfOpen);
    // and an expired HALF_OPEN goes back to OPEN on its own
    tokio::time::sleep(Duration::from_secs(20)).await;
    tokio::task::yield_now().await;
    assert_eq!(b.state(), State::Open);
    assert_eq!(
        transitions(&drain(&mut rx)),
        vec![
            (State::Closed, State::Open),
            (State::Open, State::HalfOpen),
            (State::HalfOpen, State::Open)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn half_open_to_closed_when_trials_succeed() {
    let b = breaker(config());
    open(&b);
    advance(Duration::from_secs(5)).await;
    let p1 = b.try_acquire().unwrap();
    let p2 = b.try_acquire().unwrap();
    assert_eq!(
        b.try_acquire().unwrap_err().state(),
        State::HalfOpen,
        "only 2 trial calls"
    );
    p1.record(Outcome::Success);
    assert_eq!(b.state(), State::HalfOpen);
    p2.record(Outcome::Success);
    assert_eq!(b.state(), State::Closed);
    let s = b.snapshot();
    assert_eq!(s.buffered_calls, 0, "the window starts empty");
}

#[tokio::test(start_paused = true)]
async fn half_open_to_open_when_trials_fail() {
    let b = breaker(config());
    open(&b);
    advance(Duration::from_secs(5)).await;
    run(&b, Outcome::Success).unwrap();
    run(&b, Outcome::Failure).unwrap(); // 1 of 2 = 50 %
    assert_eq!(b.state(), State::Open);
    // The wait starts again from now.
    advance(Duration::from_millis(4_999)).await;
    assert!(b.try_acquire().is_err());
    advance(Duration::from_millis(1)).await;
    assert!(b.try_acquire().is_ok());
}

#[tokio::test(start_paused = true)]
async fn half_open_cannot_stick_when_trial_calls_never_finish() {
    let b = breaker(config());
    open(&b);
    advance(Duration::from_secs(5)).await;
    // Two trial calls hang forever.
    let hung1 = b.try_acquire().unwrap();
    let hung2 = b.try_acquire().unwrap();
    assert!(b.try_acquire().is_err());
    advance(Duration::from_secs(19)).await;
    assert!(b.try_acquire().is_err());
    assert_eq!(b.state(), State::HalfOpen);
    advance(Duration::from_secs(1)).await;
    // max_wait_duration_in_half_open_state elapsed: back to OPEN ...
    assert_eq!(b.try_acquire().unwrap_err().state(), State::Open);
    assert_eq!(b.state(), State::Open);
    advance(Duration::from_secs(5)).await;
    // ... and then HALF_OPEN again with fresh permits.
    let p1 = b.try_acquire().unwrap();
    let p2 = b.try_acquire().unwrap();
    // The hung calls finally finish: they belong to an earlier HALF_OPEN and decide nothing.
    hung1.record(Outcome::Failure);
    hung2.record(Outcome::Failure);
    assert_eq!(b.state(), State::HalfOpen);
    p1.record(Outcome::Success);
    p2.record(Outcome::Success);
    assert_eq!(b.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn half_open_cannot_stick_when_trial_futures_are_dropped() {
    let b = breaker(config());
    open(&b);
    advance(Duration::from_secs(5)).await;
    {
        // Cancelled calls (timeouts from outside, client gone): the permits come back.
        let _p1 = b.try_acquire().unwrap();
        let call = b.call(std::future::pending::<Result<(), ()>>());
        let mut call = std::pin::pin!(call);
        let waker = futures::task::noop_waker();
        assert!(
            call.as_mut()
                .poll(&mut Context::from_waker(&waker))
                .is_pending()
        );
        assert!(b.try_acquire().is_err());
    }
    run(&b, Outcome::Success).unwrap();
    run(&b, Outcome::Success).unwrap();
    assert_eq!(b.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn ignored_calls_are_not_counted_and_give_trial_permits_back() {
    let b = breaker(config());
    for _ in 0..10 {
        run(&b, Outcome::Ignored).unwrap();
    }
    assert_eq!(b.snapshot().buffered_calls, 0);
    open(&b);
    advance(Duration::from_secs(5)).await;
    for _ in 0..5 {
        run(&b, Outcome::Ignored).unwrap();
    }
    assert_eq!(b.state(), State::HalfOpen);
    run(&b, Outcome::Success).unwrap();
    run(&b, Outcome::Success).unwrap();
    assert_eq!(b.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn slow_calls_open_the_breaker() {
    let b = breaker(CircuitBreakerConfig {
        slow_call_rate_threshold: 50.0,
        slow_call_duration_threshold: Duration::from_secs(1),
        ..config()
    });
    let mut rx = b.subscribe();
    for _ in 0..2 {
        run(&b, Outcome::Success).unwrap();
    }
    for _ in 0..2 {
        let p = b.try_acquire().unwrap();
        advance(Duration::from_secs(1)).await;
        p.record(Outcome::Success);
    }
    // 2 slow of 4 = 50 %
    assert_eq!(b.state(), State::Open);
    let s = b.snapshot();
    assert_eq!(
        (s.slow_calls, s.failed_calls, s.slow_call_rate),
        (2, 0, 50.0)
    );
    assert!(matches!(
        drain(&mut rx)[0],
        BreakerEvent::SlowCallRateExceeded {
            slow_call_rate: 50.0,
            ..
        }
    ));
}

#[tokio::test(start_paused = true)]
async fn slow_trial_calls_reopen() {
    let b = breaker(CircuitBreakerConfig {
        slow_call_rate_threshold: 50.0,
        slow_call_duration_threshold: Duration::from_secs(1),
        ..config()
    });
    open(&b);
    advance(Duration::from_secs(5)).await;
    let p = b.try_acquire().unwrap();
    run(&b, Outcome::Success).unwrap();
    advance(Duration::from_secs(2)).await;
    p.record(Outcome::Success);
    assert_eq!(b.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn time_window_counts_only_recent_seconds() {
    let b = breaker(CircuitBreakerConfig {
        sliding_window_type: SlidingWindowType::TimeBased,
        sliding_window_size: 10,
        minimum_number_of_calls: 3,
        ..config()
    });
    run(&b, Outcome::Failure).unwrap();
    run(&b, Outcome::Failure).unwrap();
    advance(Duration::from_secs(9)).await;
    assert_eq!(b.snapshot().buffered_calls, 2);
    advance(Duration::from_secs(1)).await;
    assert_eq!(
        b.snapshot().buffered_calls,
        0,
        "second 0 fell out of the 10 s window"
    );
    run(&b, Outcome::Success).unwrap();
    run(&b, Outcome::Success).unwrap();
    run(&b, Outcome::Failure).unwrap();
    assert_eq!(
        b.state(),
        State::Closed,
        "1 of 3: the old failures no longer count"
    );
    run(&b, Outcome::Failure).unwrap();
    assert_eq!(b.state(), State::Open, "2 of 4 = 50 %");
}

#[tokio::test(start_paused = true)]
async fn time_window_minimum_calls_is_not_capped_by_size() {
    let b = breaker(CircuitBreakerConfig {
        sliding_window_type: SlidingWindowType::TimeBased,
        sliding_window_size: 2,
        minimum_number_of_calls: 5,
        ..config()
    });
    for _ in 0..4 {
        run(&b, Outcome::Failure).unwrap();
    }
    assert_eq!(b.state(), State::Closed);
    run(&b, Outcome::Failure).unwrap();
    assert_eq!(b.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn operator_states() {
    let b = breaker(config());
    let mut rx = b.subscribe();

    assert!(b.disable());
    for _ in 0..20 {
        run(&b, Outcome::Failure).unwrap();
    }
    assert_eq!(b.state(), State::Disabled);
    assert_eq!(b.snapshot().buffered_calls, 0);

    assert!(b.metrics_only());
    for _ in 0..20 {
        run(&b, Outcome::Failure).unwrap();
    }
    assert_eq!(b.state(), State::MetricsOnly);
    assert_eq!(b.snapshot().failure_rate, 100.0);

    assert!(b.force_open());
    assert!(!b.force_open(), "already forced open");
    advance(Duration::from_secs(3600)).await;
    assert_eq!(b.try_acquire().unwrap_err().state(), State::ForcedOpen);

    b.reset();
    assert_eq!(b.state(), State::Closed);
    assert_eq!(b.snapshot().buffered_calls, 0);
    run(&b, Outcome::Success).unwrap();

    let events = drain(&mut rx);
    assert!(
        events
            .iter()
            .any(|e| matches!(e, BreakerEvent::Reset { .. }))
    );
    assert_eq!(
        transitions(&events),
        vec![
            (State::Closed, State::Disabled),
            (State::Disabled, State::MetricsOnly),
            (State::MetricsOnly, State::ForcedOpen),
            (State::ForcedOpen, State::Closed)
        ]
    );

    // Manual OPEN and HALF_OPEN behave like the automatic ones.
    assert!(b.transition_to(State::Open));
    assert!(b.try_acquire().is_err());
    assert!(b.transition_to(State::HalfOpen));
    run(&b, Outcome::Success).unwrap();
    run(&b, Outcome::Success).unwrap();
    assert_eq!(b.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn calls_admitted_while_closed_do_not_decide_half_open() {
    let b = breaker(config());
    let late = b.try_acquire().unwrap();
    open(&b);
    advance(Duration::from_secs(5)).await;
    let trial = b.try_acquire().unwrap();
    late.record(Outcome::Failure);
    late_check(&b);
    trial.record(Outcome::Success);
    run(&b, Outcome::Success).unwrap();
    assert_eq!(b.state(), State::Closed);

    fn late_check(b: &CircuitBreaker) {
        assert_eq!(b.state(), State::HalfOpen);
    }
}

#[tokio::test(start_paused = true)]
async fn reset_during_calls_keeps_window_consistent() {
    let b = breaker(CircuitBreakerConfig {
        minimum_number_of_calls: 100,
        sliding_window_size: 100,
        ..config()
    });
    let in_flight: Vec<_> = (0..10).map(|_| b.try_acquire().unwrap()).collect();
    for _ in 0..5 {
        run(&b, Outcome::Failure).unwrap();
    }
    b.reset();
    for p in in_flight {
        p.record(Outcome::Failure);
    }
    let Window::Count(w) = b.window() else {
        unreachable!()
    };
    let s = b.snapshot();
    assert_eq!(
        s.buffered_calls, 10,
        "calls finishing after a reset count in the new window"
    );
    assert_eq!(w.recount().calls, s.buffered_calls);
    assert_eq!(w.recount().failures, s.failed_calls);
}

// ---- tower ------------------------------------------------------------------------------------

#[derive(Clone)]
struct Echo;

impl Service<Result<u32, &'static str>> for Echo {
    type Response = u32;
    type Error = &'static str;
    type Future = std::future::Ready<Result<u32, &'static str>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Result<u32, &'static str>) -> Self::Future {
        std::future::ready(req)
    }
}

#[tokio::test(start_paused = true)]
async fn layer_fails_fast_when_open() {
    let b = breaker(config());
    let mut svc = CircuitBreakerLayer::new(b.clone()).layer(Echo);
    assert_eq!(svc.ready().await.unwrap().call(Ok(7)).await.unwrap(), 7);
    for _ in 0..3 {
        // 1 success + 3 failures: 75 % of the minimum 4 calls
        let err = svc
            .ready()
            .await
            .unwrap()
            .call(Err("boom"))
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "boom");
    }
    assert_eq!(b.state(), State::Open);
    let err: BoxError = svc.ready().await.unwrap().call(Ok(1)).await.unwrap_err();
    let rejected = err.downcast_ref::<CallNotPermitted>().unwrap();
    assert_eq!(rejected.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn layer_not_ready_while_open() {
    let b = breaker(config());
    open(&b);
    let svc = CircuitBreakerLayer::new(b.clone())
        .when_open(WhenOpen::NotReady)
        .layer(Echo);
    let before = b.snapshot().not_permitted_calls;
    let mut svc = svc;
    let waker = futures::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    assert!(svc.poll_ready(&mut cx).is_pending());
    assert!(svc.poll_ready(&mut cx).is_pending());
    assert_eq!(
        b.snapshot().not_permitted_calls,
        before,
        "waiting is not rejecting"
    );
    // `ready()` resolves once the wait is over (paused time auto-advances to the timer).
    let started = tokio::time::Instant::now();
    svc.ready().await.unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(5) && waited < Duration::from_millis(5_002),
        "{waited:?}"
    );
    assert_eq!(b.state(), State::HalfOpen);
    assert_eq!(svc.call(Ok(3)).await.unwrap(), 3);
}

#[tokio::test(start_paused = true)]
async fn layer_not_ready_wakes_on_operator_reset() {
    let b = breaker(config());
    b.force_open();
    let mut svc = CircuitBreakerLayer::new(b.clone())
        .when_open(WhenOpen::NotReady)
        .layer(Echo);
    let b2 = b.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(60)).await;
        b2.reset();
    });
    svc.ready().await.unwrap();
    assert_eq!(b.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn layer_with_http_classifier() {
    use crate::classify::HttpClassifier;
    let b = breaker(config());
    let svc = tower::service_fn(|status: u16| async move {
        Ok::<_, std::convert::Infallible>(
            http::Response::builder().status(status).body(()).unwrap(),
        )
    });
    let mut svc = CircuitBreakerLayer::new(b.clone())
        .with_classifier(HttpClassifier::default())
        .layer(svc);
    for status in [200, 404, 503, 500] {
        svc.ready().await.unwrap().call(status).await.unwrap();
    }
    let s = b.snapshot();
    assert_eq!(
        (s.buffered_calls, s.failed_calls, b.state()),
        (4, 2, State::Open)
    );
}

#[tokio::test(start_paused = true)]
async fn dropped_response_future_gives_trial_permit_back() {
    let b = breaker(CircuitBreakerConfig {
        permitted_number_of_calls_in_half_open_state: 1,
        ..config()
    });
    open(&b);
    advance(Duration::from_secs(5)).await;
    let mut svc = CircuitBreakerLayer::new(b.clone()).layer(tower::service_fn(|()| async {
        std::future::pending::<Result<(), BoxError>>().await
    }));
    let fut = svc.ready().await.unwrap().call(());
    assert!(b.try_acquire().is_err());
    drop(fut);
    assert!(b.try_acquire().is_ok());
}

// ---- registry ---------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn registry_creates_named_breakers_and_lets_operators_act() {
    let mut instances = std::collections::BTreeMap::new();
    instances.insert(
        "payments".to_owned(),
        CircuitBreakerConfig {
            failure_rate_threshold: 25.0,
            ..CircuitBreakerConfig::default()
        },
    );
    let registry = BreakerRegistry::new(BreakerRegistryConfig {
        defaults: CircuitBreakerConfig::default(),
        instances,
    })
    .unwrap();
    let payments = registry.breaker("payments").unwrap();
    assert_eq!(payments.config().failure_rate_threshold, 25.0);
    let other = registry.breaker("inventory").unwrap();
    assert_eq!(other.config().failure_rate_threshold, 50.0);
    assert_eq!(
        registry.names(),
        vec!["inventory".to_owned(), "payments".to_owned()]
    );

    registry.force_open("payments").unwrap();
    assert_eq!(payments.state(), State::ForcedOpen);
    registry.disable("inventory").unwrap();
    registry.metrics_only("inventory").unwrap();
    assert_eq!(other.state(), State::MetricsOnly);
    registry.reset("payments").unwrap();
    assert_eq!(payments.state(), State::Closed);
    assert_eq!(
        registry.force_open("nope"),
        Err(UnknownBreaker("nope".to_owned()))
    );

    let snapshot = registry.snapshot();
    assert_eq!(snapshot.len(), 2);
    assert_eq!(snapshot[0].name, "inventory");
    assert_eq!(snapshot[0].state, State::MetricsOnly);
    let json = serde_json::to_value(&snapshot).unwrap();
    assert_eq!(json[1]["state"], "CLOSED");
    assert_eq!(json[1]["failure_rate"], -1.0);
}

#[test]
fn registry_config_errors_name_the_instance() {
    let config: BreakerRegistryConfig = toml::from_str(
        r#"
        [instances.payments]
        failure_rate_threshold = 150
        "#,
    )
    .unwrap();
    let err = BreakerRegistry::new(config).unwrap_err();
    assert_eq!(err.parameter(), "instances.payments.failure_rate_threshold");
}

#[test]
fn config_from_toml() {
    let config: CircuitBreakerConfig = toml::from_str(
        r#"
        failure_rate_threshold = 30
        sliding_window_type = "time_based"
        sliding_window_size = 60
        wait_duration_in_open_state_ms = 90000
        "#,
    )
    .unwrap();
    assert_eq!(config.sliding_window_type, SlidingWindowType::TimeBased);
    assert_eq!(config.wait_duration_in_open_state, Duration::from_secs(90));
    assert_eq!(
        config.minimum_number_of_calls, 10,
        "omitted fields take the defaults"
    );
    let unknown = toml::from_str::<CircuitBreakerConfig>("failure_rate = 30");
    assert!(unknown.unwrap_err().to_string().contains("unknown field"));
    let old_name = toml::from_str::<CircuitBreakerConfig>("wait_duration_in_open_state = 10");
    assert!(old_name.unwrap_err().to_string().contains("unknown field"));
    let bad = toml::from_str::<CircuitBreakerConfig>("wait_duration_in_open_state_ms = \"10s\"");
    assert!(bad.is_err());
}

// ---- concurrency ------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_tasks_one_breaker_counts_stay_exact() {
    let b = breaker(CircuitBreakerConfig {
        failure_rate_threshold: 100.0,
        sliding_window_size: 16_000,
        minimum_number_of_calls: 16_000,
        ..config()
    });
    let tasks: Vec<_> = (0..16u32)
        .map(|t| {
            let b = b.clone();
            tokio::spawn(async move {
                for i in 0..1000u32 {
                    let outcome = if (i + t) % 4 == 0 {
                        Outcome::Failure
                    } else {
                        Outcome::Success
                    };
                    let r = b
                        .call(async move {
                            tokio::task::yield_now().await;
                            if outcome == Outcome::Failure {
                                Err(())
                            } else {
                                Ok(())
                            }
                        })
                        .await;
                    assert!(!matches!(r, Err(CircuitBreakerError::NotPermitted(_))));
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let s = b.snapshot();
    assert_eq!(s.buffered_calls, 16_000);
    assert_eq!(s.failed_calls, 4_000);
    assert_eq!(s.failure_rate, 25.0);
    let Window::Count(w) = b.window() else {
        unreachable!()
    };
    assert_eq!(w.recount().calls, 16_000);
    assert_eq!(w.recount().failures, 4_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_tasks_small_window_stays_consistent_and_opens_once() {
    let b = breaker(CircuitBreakerConfig {
        sliding_window_size: 7,
        minimum_number_of_calls: 7,
        failure_rate_threshold: 100.0,
        ..config()
    });
    let mut rx = b.subscribe();
    let tasks: Vec<_> = (0..8u32)
        .map(|t| {
            let b = b.clone();
            tokio::spawn(async move {
                for i in 0..2000u32 {
                    let _ = b
                        .call(async move {
                            if (i * 7 + t) % 3 == 0 {
                                Err(())
                            } else {
                                Ok(())
                            }
                        })
                        .await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let Window::Count(w) = b.window() else {
        unreachable!()
    };
    let s = b.snapshot();
    assert_eq!(w.recount().calls, s.buffered_calls);
    assert_eq!(w.recount().failures, s.failed_calls);
    // Whatever happened, transitions were well-formed (each `from` is the previous `to`).
    let mut state = State::Closed;
    for (from, to) in transitions(&drain(&mut rx)) {
        assert_eq!(from, state);
        state = to;
    }
    assert_eq!(state, b.state());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_tasks_half_open_never_exceeds_permits() {
    let b = Arc::new(breaker(CircuitBreakerConfig {
        permitted_number_of_calls_in_half_open_state: 3,
        ..config()
    }));
    b.transition_to(State::HalfOpen);
    let admitted = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let start = Arc::new(tokio::sync::Barrier::new(16));
    let tried = Arc::new(tokio::sync::Barrier::new(16));
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (b, admitted, start, tried) =
                (b.clone(), admitted.clone(), start.clone(), tried.clone());
            tokio::spawn(async move {
                start.wait().await;
                let permit = b.try_acquire_owned().ok();
                if permit.is_some() {
                    admitted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                // Hold the permits until every task has tried.
                tried.wait().await;
                if let Some(p) = permit {
                    p.record(Outcome::Success);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(admitted.load(std::sync::atomic::Ordering::SeqCst), 3);
    assert_eq!(b.state(), State::Closed);
}
