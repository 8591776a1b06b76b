use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use tokio::time::Instant;
use tower::{Layer, ServiceExt};

use super::*;
use crate::BoxError;
use crate::classify::{HttpClassifier, Outcome};
use crate::deadline::{Deadline, DeadlineCarrier};

fn config() -> RetryConfig {
    RetryConfig {
        max_attempts: 3,
        wait_duration: Duration::from_millis(100),
        exponential_backoff_multiplier: 2.0,
        exponential_max_wait_duration: Duration::from_secs(1),
        randomized_wait_factor: 0.0,
        budget: RetryBudgetConfig {
            enabled: false,
            ..RetryBudgetConfig::default()
        },
        ..RetryConfig::default()
    }
}

/// Fails `failures` times, then succeeds; counts attempts.
fn flaky(
    attempts: &Arc<AtomicU32>,
    failures: u32,
) -> impl FnMut() -> std::future::Ready<Result<u32, &'static str>> {
    let attempts = attempts.clone();
    move || {
        let n = attempts.fetch_add(1, Ordering::SeqCst) + 1;
        std::future::ready(if n <= failures {
            Err("unavailable")
        } else {
            Ok(n)
        })
    }
}

#[tokio::test(start_paused = true)]
async fn retries_with_exponential_backoff_until_success() {
    let retry = Retry::new("r", config()).unwrap();
    let attempts = Arc::new(AtomicU32::new(0));
    let started = Instant::now();
    assert_eq!(retry.call(flaky(&attempts, 2)).await, Ok(3));
    assert_eq!(started.elapsed(), Duration::from_millis(100 + 200));
    let s = retry.snapshot();
    assert_eq!((s.successful_with_retry, s.retries), (1, 2));
}

#[tokio::test(start_paused = true)]
async fn gives_up_after_max_attempts_with_the_last_error() {
    let retry = Retry::new("r", config()).unwrap();
    let attempts = Arc::new(AtomicU32::new(0));
    assert_eq!(retry.call(flaky(&attempts, 10)).await, Err("unavailable"));
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
    let s = retry.snapshot();
    assert_eq!((s.failed_with_retry, s.retries), (1, 2));
}

#[tokio::test(start_paused = true)]
async fn only_failures_are_retried() {
    let retry = Retry::new("r", config()).unwrap();
    let attempts = Arc::new(AtomicU32::new(0));
    let not_found = |r: &Result<u32, &str>| match r {
        Err("not found") => Outcome::Ignored,
        Err(_) => Outcome::Failure,
        Ok(_) => Outcome::Success,
    };
    let a = attempts.clone();
    let result = retry
        .call_with(&not_found, move || {
            a.fetch_add(1, Ordering::SeqCst);
            std::future::ready(Err::<u32, _>("not found"))
        })
        .await;
    assert_eq!(result, Err("not found"));
    assert_eq!(attempts.load(Ordering::SeqCst), 1);
    assert_eq!(retry.snapshot().failed_without_retry, 1);
}

#[test]
fn backoff_grows_caps_and_jitters() {
    let retry = Retry::new("r", config()).unwrap();
    let waits: Vec<_> = (1..=6).map(|n| retry.backoff(n).as_millis()).collect();
    assert_eq!(waits, vec![100, 200, 400, 800, 1000, 1000]);
    let jittered = Retry::new(
        "r",
        RetryConfig {
            randomized_wait_factor: 0.5,
            ..config()
        },
    )
    .unwrap();
    for n in 1..=6 {
        for _ in 0..200 {
            let base = retry.backoff(n).as_secs_f64();
            let wait = jittered.backoff(n).as_secs_f64();
            assert!(
                wait >= base * 0.5 - 1e-9 && wait <= base * 1.5 + 1e-9,
                "{wait} vs {base}"
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn budget_caps_retries_to_a_fraction_of_calls() {
    let retry = Retry::new(
        "r",
        RetryConfig {
            max_attempts: 10,
            wait_duration: Duration::ZERO,
            budget: RetryBudgetConfig {
                enabled: true,
                retry_ratio: 0.5,
                min_retries_per_second: 0,
                ttl: Duration::from_secs(10),
            },
            ..config()
        },
    )
    .unwrap();
    let attempts = Arc::new(AtomicU32::new(0));
    for _ in 0..10 {
        let _ = retry.call(flaky(&attempts, u32::MAX)).await;
    }
    let s = retry.snapshot();
    assert_eq!(s.retries, 5, "half of 10 calls");
    assert_eq!(attempts.load(Ordering::SeqCst), 15);
    assert_eq!(s.suppressed_by_budget, 10);

    // The budget is a sliding period: after the TTL, old calls and retries are forgotten.
    tokio::time::advance(Duration::from_secs(11)).await;
    let _ = retry.call(flaky(&attempts, u32::MAX)).await;
    let _ = retry.call(flaky(&attempts, u32::MAX)).await;
    assert_eq!(retry.snapshot().retries, 6);
}

#[tokio::test(start_paused = true)]
async fn budget_reserve_allows_retries_at_low_traffic() {
    let retry = Retry::new(
        "r",
        RetryConfig {
            max_attempts: 100,
            wait_duration: Duration::ZERO,
            budget: RetryBudgetConfig {
                enabled: true,
                retry_ratio: 0.0,
                min_retries_per_second: 2,
                ttl: Duration::from_secs(5),
            },
            ..config()
        },
    )
    .unwrap();
    let attempts = Arc::new(AtomicU32::new(0));
    let _ = retry.call(flaky(&attempts, u32::MAX)).await;
    assert_eq!(retry.snapshot().retries, 10, "2 per second over 5 s");
}

#[tokio::test(start_paused = true)]
async fn retries_respect_the_deadline() {
    let retry = Retry::new("r", config()).unwrap();
    let attempts = Arc::new(AtomicU32::new(0));
    let started = Instant::now();
    let result = Deadline::after(Duration::from_millis(250))
        .scope(retry.call(flaky(&attempts, 10)))
        .await;
    assert_eq!(result, Err("unavailable"));
    // Attempt at 0 ms, backoff 100 ms, attempt at 100 ms; the next backoff (200 ms) would end
    // past the deadline (250 ms), so no sleep and no third attempt.
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
    assert_eq!(started.elapsed(), Duration::from_millis(100));
    assert_eq!(retry.snapshot().suppressed_by_deadline, 1);
}

#[tokio::test(start_paused = true)]
async fn no_attempt_starts_without_min_time_left() {
    let retry = Retry::new(
        "r",
        RetryConfig {
            min_time_for_attempt: Duration::from_millis(60),
            ..config()
        },
    )
    .unwrap();
    let attempts = Arc::new(AtomicU32::new(0));
    // After the first backoff, 50 ms would be left: less than the 60 ms an attempt needs.
    let _ = Deadline::after(Duration::from_millis(150))
        .scope(retry.call(flaky(&attempts, 10)))
        .await;
    assert_eq!(attempts.load(Ordering::SeqCst), 1);
}

// ---- tower ------------------------------------------------------------------------------------

fn http_service(
    attempts: Arc<AtomicU32>,
    statuses: Vec<u16>,
) -> impl tower::Service<Request<()>, Response = Response<()>, Error = BoxError, Future: Send>
+ Clone
+ Send
+ 'static {
    tower::service_fn(move |_request: Request<()>| {
        let n = attempts.fetch_add(1, Ordering::SeqCst) as usize;
        let status = statuses[n.min(statuses.len() - 1)];
        async move { Ok::<_, BoxError>(Response::builder().status(status).body(()).unwrap()) }
    })
}

fn request(method: Method) -> Request<()> {
    Request::builder().method(method).uri("/").body(()).unwrap()
}

#[tokio::test(start_paused = true)]
async fn layer_retries_retryable_statuses_of_idempotent_requests() {
    let retry = Retry::new("r", config()).unwrap();
    let attempts = Arc::new(AtomicU32::new(0));
    let svc = RetryLayer::new(retry.clone())
        .with_classifier(HttpClassifier::retryable())
        .layer(http_service(attempts.clone(), vec![503, 502, 200]));
    let response = svc.oneshot(request(Method::GET)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(attempts.load(Ordering::SeqCst), 3);

    // Exhausted: the last response is returned as is.
    let attempts = Arc::new(AtomicU32::new(0));
    let svc = RetryLayer::new(retry.clone())
        .with_classifier(HttpClassifier::retryable())
        .layer(http_service(attempts.clone(), vec![503]));
    let response = svc.oneshot(request(Method::PUT)).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(attempts.load(Ordering::SeqCst), 3);

    // 500 is not retryable.
    let attempts = Arc::new(AtomicU32::new(0));
    let svc = RetryLayer::new(retry)
        .with_classifier(HttpClassifier::retryable())
        .layer(http_service(attempts.clone(), vec![500, 200]));
    let response = svc.oneshot(request(Method::GET)).await.unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(attempts.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn layer_never_retries_non_idempotent_requests_unless_told() {
    let retry = Retry::new("r", config()).unwrap();
    let attempts = Arc::new(AtomicU32::new(0));
    let svc = RetryLayer::new(retry.clone())
        .with_classifier(HttpClassifier::retryable())
        .layer(http_service(attempts.clone(), vec![503, 200]));
    let response = svc.clone().oneshot(request(Method::POST)).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(attempts.load(Ordering::SeqCst), 1);
    assert_eq!(retry.snapshot().suppressed_non_idempotent, 1);

    // With an idempotency key it is safe.
    attempts.store(0, Ordering::SeqCst);
    let mut keyed = request(Method::POST);
    keyed
        .headers_mut()
        .insert(IDEMPOTENCY_KEY_HEADER, "k-1".parse().unwrap());
    assert_eq!(svc.oneshot(keyed).await.unwrap().status(), StatusCode::OK);
    assert_eq!(attempts.load(Ordering::SeqCst), 2);

    // Or when configured to.
    let retry = Retry::new(
        "r",
        RetryConfig {
            retry_on_non_idempotent: true,
            ..config()
        },
    )
    .unwrap();
    attempts.store(0, Ordering::SeqCst);
    let svc = RetryLayer::new(retry)
        .with_classifier(HttpClassifier::retryable())
        .layer(http_service(attempts.clone(), vec![503, 200]));
    assert_eq!(
        svc.oneshot(request(Method::POST)).await.unwrap().status(),
        StatusCode::OK
    );
}

#[tokio::test(start_paused = true)]
async fn layer_never_retries_rejections() {
    let breaker = crate::CircuitBreaker::new("b", Default::default()).unwrap();
    breaker.force_open();
    let retry = Retry::new("r", config()).unwrap();
    let attempts = Arc::new(AtomicU32::new(0));
    let svc = RetryLayer::new(retry).layer(
        crate::CircuitBreakerLayer::new(breaker).layer(http_service(attempts.clone(), vec![200])),
    );
    let err = svc.oneshot(request(Method::GET)).await.unwrap_err();
    assert!(err.is::<crate::CallNotPermitted>());
    assert_eq!(attempts.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn layer_uses_the_request_deadline() {
    let retry = Retry::new("r", config()).unwrap();
    let attempts = Arc::new(AtomicU32::new(0));
    let svc = RetryLayer::new(retry)
        .with_classifier(HttpClassifier::retryable())
        .layer(http_service(attempts.clone(), vec![503]));
    let mut req = request(Method::GET);
    req.set_deadline(Deadline::after(Duration::from_millis(150)));
    let started = Instant::now();
    let response = svc.oneshot(req).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
    assert_eq!(started.elapsed(), Duration::from_millis(100));
}

#[test]
fn config_errors_name_the_parameter() {
    let bad = [
        (
            RetryConfig {
                max_attempts: 0,
                ..config()
            },
            "max_attempts",
        ),
        (
            RetryConfig {
                exponential_backoff_multiplier: 0.5,
                ..config()
            },
            "exponential_backoff_multiplier",
        ),
        (
            RetryConfig {
                randomized_wait_factor: 1.0,
                ..config()
            },
            "randomized_wait_factor",
        ),
        (
            RetryConfig {
                exponential_max_wait_duration: Duration::from_millis(1),
                ..config()
            },
            "exponential_max_wait_duration_ms",
        ),
        (
            RetryConfig {
                budget: RetryBudgetConfig {
                    retry_ratio: -1.0,
                    ..RetryBudgetConfig::default()
                },
                ..config()
            },
            "budget.retry_ratio",
        ),
    ];
    for (config, parameter) in bad {
        assert_eq!(Retry::new("r", config).unwrap_err().parameter(), parameter);
    }
}
