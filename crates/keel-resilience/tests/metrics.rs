//! Metric names, labels and exact counts, with a recorder installed (its own test binary, since
//! the recorder is process-wide).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use keel_resilience::circuit_breaker::{CircuitBreaker, CircuitBreakerConfig, State};
use keel_resilience::{
    Bulkhead, BulkheadConfig, RateLimiter, RateLimiterConfig, Retry, RetryConfig,
};
use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, Key, KeyName, Metadata, Recorder, SharedString,
    Unit,
};

#[derive(Default)]
struct Cell(AtomicU64);

impl CounterFn for Cell {
    fn increment(&self, value: u64) {
        self.0.fetch_add(value, Ordering::Relaxed);
    }
    fn absolute(&self, value: u64) {
        self.0.store(value, Ordering::Relaxed);
    }
}

impl GaugeFn for Cell {
    fn increment(&self, value: f64) {
        self.set(f64::from_bits(self.0.load(Ordering::Relaxed)) + value);
    }
    fn decrement(&self, value: f64) {
        self.set(f64::from_bits(self.0.load(Ordering::Relaxed)) - value);
    }
    fn set(&self, value: f64) {
        self.0.store(value.to_bits(), Ordering::Relaxed);
    }
}

/// Keeps every metric by its rendered key, e.g. `keel_bulkhead_rejected_calls_total{name=b}`.
#[derive(Default)]
struct TestRecorder {
    cells: Mutex<BTreeMap<String, Arc<Cell>>>,
}

impl TestRecorder {
    fn cell(&self, key: &Key) -> Arc<Cell> {
        let mut labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        labels.sort();
        let name = format!("{}{{{}}}", key.name(), labels.join(","));
        self.cells.lock().unwrap().entry(name).or_default().clone()
    }

    fn counter(&self, name: &str) -> u64 {
        self.cells
            .lock()
            .unwrap()
            .get(name)
            .map_or(0, |c| c.0.load(Ordering::Relaxed))
    }

    fn gauge(&self, name: &str) -> f64 {
        f64::from_bits(self.cells.lock().unwrap()[name].0.load(Ordering::Relaxed))
    }
}

impl Recorder for TestRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.cell(key))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.cell(key))
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

fn recorder() -> &'static TestRecorder {
    static RECORDER: OnceLock<&'static TestRecorder> = OnceLock::new();
    RECORDER.get_or_init(|| {
        let recorder: &'static TestRecorder = Box::leak(Box::default());
        metrics::set_global_recorder(recorder).unwrap();
        recorder
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn breaker_counts_are_exact_across_many_tasks() {
    let r = recorder();
    let breaker = CircuitBreaker::new(
        "orders",
        CircuitBreakerConfig {
            failure_rate_threshold: 100.0,
            ..Default::default()
        },
    )
    .unwrap();
    let tasks: Vec<_> = (0..16u64)
        .map(|t| {
            let breaker = breaker.clone();
            tokio::spawn(async move {
                for i in 0..2_000u64 {
                    let fail = (i + t) % 5 == 0;
                    let _ = breaker
                        .call(async move {
                            tokio::task::yield_now().await;
                            if fail { Err(()) } else { Ok(()) }
                        })
                        .await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let calls = |outcome: &str| {
        r.counter(&format!(
            "keel_circuit_breaker_calls_total{{name=orders,outcome={outcome}}}"
        ))
    };
    assert_eq!(calls("success"), 25_600);
    assert_eq!(calls("failure"), 6_400);
    assert_eq!(
        calls("slow_success") + calls("slow_failure") + calls("ignored"),
        0
    );
    assert_eq!(r.gauge("keel_circuit_breaker_state{name=orders}"), 0.0);

    breaker.force_open();
    for _ in 0..7 {
        assert!(breaker.try_acquire().is_err());
    }
    assert_eq!(
        r.counter("keel_circuit_breaker_not_permitted_calls_total{name=orders}"),
        7
    );
    assert_eq!(
        r.gauge("keel_circuit_breaker_state{name=orders}"),
        State::ForcedOpen.gauge_value()
    );
    let rate = r.gauge("keel_circuit_breaker_failure_rate{name=orders}");
    assert!((0.0..=100.0).contains(&rate), "{rate}");
}

#[tokio::test(start_paused = true)]
async fn breaker_rates_are_gauges() {
    let r = recorder();
    let breaker = CircuitBreaker::new(
        "rates",
        CircuitBreakerConfig {
            sliding_window_size: 4,
            minimum_number_of_calls: 4,
            failure_rate_threshold: 100.0,
            slow_call_rate_threshold: 100.0,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        r.gauge("keel_circuit_breaker_failure_rate{name=rates}"),
        -1.0
    );
    for fail in [true, false, false, false] {
        let _ = breaker
            .call(async move { if fail { Err(()) } else { Ok(()) } })
            .await;
    }
    assert_eq!(
        r.gauge("keel_circuit_breaker_failure_rate{name=rates}"),
        25.0
    );
    assert_eq!(
        r.gauge("keel_circuit_breaker_slow_call_rate{name=rates}"),
        0.0
    );
}

#[tokio::test(start_paused = true)]
async fn retry_bulkhead_and_rate_limiter_metrics() {
    let r = recorder();
    let retry = Retry::new(
        "inventory",
        RetryConfig {
            randomized_wait_factor: 0.0,
            ..Default::default()
        },
    )
    .unwrap();
    let _ = retry.call(|| async { Err::<(), _>("down") }).await;
    let _ = retry.call(|| async { Ok::<_, ()>(()) }).await;
    assert_eq!(
        r.counter("keel_retry_calls_total{name=inventory,outcome=failed_with_retry}"),
        1
    );
    assert_eq!(
        r.counter("keel_retry_calls_total{name=inventory,outcome=successful_without_retry}"),
        1
    );
    assert_eq!(r.counter("keel_retry_attempts_total{name=inventory}"), 2);

    let bulkhead = Bulkhead::new(
        "pool",
        BulkheadConfig {
            max_concurrent_calls: 1,
            ..Default::default()
        },
    )
    .unwrap();
    let held = bulkhead.try_acquire().unwrap();
    assert_eq!(
        r.gauge("keel_bulkhead_available_concurrent_calls{name=pool}"),
        0.0
    );
    assert!(bulkhead.try_acquire().is_err());
    drop(held);
    assert_eq!(
        r.counter("keel_bulkhead_rejected_calls_total{name=pool}"),
        1
    );
    assert_eq!(
        r.gauge("keel_bulkhead_available_concurrent_calls{name=pool}"),
        1.0
    );

    let limiter = RateLimiter::new(
        "edge",
        RateLimiterConfig {
            limit_for_period: 1,
            limit_refresh_period: Duration::from_secs(1),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(limiter.try_acquire().is_ok());
    assert!(limiter.try_acquire().is_err());
    assert_eq!(
        r.counter("keel_rate_limiter_permitted_calls_total{name=edge}"),
        1
    );
    assert_eq!(
        r.counter("keel_rate_limiter_rejected_calls_total{name=edge}"),
        1
    );
}
