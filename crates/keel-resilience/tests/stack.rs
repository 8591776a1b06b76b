//! The whole stack, built from configuration, driven through tower with HTTP requests under
//! paused time.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use keel_resilience::circuit_breaker::{BreakerRegistry, BreakerRegistryConfig, State};
use keel_resilience::deadline::DEADLINE_HEADER;
use keel_resilience::{
    BoxError, BulkheadFull, CallNotPermitted, Cause, DeadlineExceeded, RateLimited,
    ResilienceConfig, stack, stack_in,
};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

/// What the downstream saw: one entry per attempt (time since start, `keel-deadline-ms`).
type Log = Arc<Mutex<Vec<(Duration, Option<String>)>>>;

/// A downstream that answers `statuses` in turn (the last one repeats) after `work`.
fn downstream(
    log: Log,
    work: Duration,
    statuses: Vec<u16>,
) -> impl Service<Request<()>, Response = Response<()>, Error = BoxError, Future: Send>
+ Clone
+ Send
+ 'static {
    let started = Instant::now();
    tower::service_fn(move |request: Request<()>| {
        let header = request
            .headers()
            .get(DEADLINE_HEADER)
            .map(|v| v.to_str().unwrap().to_owned());
        let n = {
            let mut log = log.lock().unwrap();
            log.push((started.elapsed(), header));
            log.len() - 1
        };
        let status = statuses[n.min(statuses.len() - 1)];
        async move {
            tokio::time::sleep(work).await;
            Ok::<_, BoxError>(Response::builder().status(status).body(()).unwrap())
        }
    })
}

fn config(toml: &str) -> ResilienceConfig {
    toml::from_str(toml).unwrap()
}

fn get() -> Request<()> {
    Request::builder()
        .method(Method::GET)
        .uri("/")
        .body(())
        .unwrap()
}

const ALL: &str = r#"
    [rate_limiter]
    limit_for_period = 100
    [bulkhead]
    max_concurrent_calls = 10
    [retry]
    max_attempts = 5
    wait_duration_ms = 100
    randomized_wait_factor = 0
    [circuit_breaker]
    minimum_number_of_calls = 4
    sliding_window_size = 4
    wait_duration_in_open_state_ms = 30000
    [timeout]
    timeout_duration_ms = 1000
"#;

#[tokio::test(start_paused = true)]
async fn retries_through_the_breaker_within_one_budget() {
    let layer = stack(&config(ALL), "inventory").unwrap().for_http();
    let log = Log::default();
    let svc = layer.layer(downstream(
        log.clone(),
        Duration::from_millis(100),
        vec![503, 502, 200],
    ));
    let response = svc.oneshot(get()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let log = log.lock().unwrap().clone();
    // Attempts at 0, 200 (100 work + 100 backoff) and 500 ms (100 + 200): each is told what is
    // left of the same one-second budget.
    assert_eq!(
        log,
        vec![
            (Duration::ZERO, Some("1000".to_owned())),
            (Duration::from_millis(200), Some("800".to_owned())),
            (Duration::from_millis(500), Some("500".to_owned())),
        ]
    );
    let breaker = layer.circuit_breaker().unwrap().snapshot();
    assert_eq!((breaker.buffered_calls, breaker.failed_calls), (3, 2));
}

#[tokio::test(start_paused = true)]
async fn no_attempt_or_backoff_outlives_the_budget() {
    let layer = stack(&config(ALL), "inventory").unwrap().for_http();
    let log = Log::default();
    let svc = layer.layer(downstream(
        log.clone(),
        Duration::from_millis(400),
        vec![503],
    ));
    let started = Instant::now();
    let response = svc.oneshot(get()).await.unwrap();
    // 0–400 attempt, 100 backoff, 500–900 attempt; a 200 ms backoff would end past 1 s: stop.
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(started.elapsed(), Duration::from_millis(900));
    assert_eq!(log.lock().unwrap().len(), 2);
    assert_eq!(layer.retry().unwrap().snapshot().suppressed_by_deadline, 1);
}

#[tokio::test(start_paused = true)]
async fn timed_out_attempts_count_as_breaker_failures() {
    let layer = stack(&config(ALL), "inventory").unwrap().for_http();
    let svc = layer.layer(downstream(
        Log::default(),
        Duration::from_secs(3600),
        vec![200],
    ));
    let started = Instant::now();
    let error = svc.oneshot(get()).await.unwrap_err();
    assert!(error.is::<DeadlineExceeded>(), "{error}");
    assert_eq!(started.elapsed(), Duration::from_secs(1));
    assert_eq!(layer.circuit_breaker().unwrap().snapshot().failed_calls, 1);
}

#[tokio::test(start_paused = true)]
async fn incoming_deadline_wins_when_nearer() {
    let layer = stack(&config(ALL), "inventory").unwrap().for_http();
    let log = Log::default();
    let svc = layer.layer(downstream(
        log.clone(),
        Duration::from_millis(10),
        vec![200],
    ));
    let mut request = get();
    request
        .headers_mut()
        .insert(DEADLINE_HEADER, "250".parse().unwrap());
    svc.clone().oneshot(request).await.unwrap();
    assert_eq!(log.lock().unwrap()[0].1.as_deref(), Some("250"));

    // No time left: nothing is called, and the caller learns why.
    let mut request = get();
    request
        .headers_mut()
        .insert(DEADLINE_HEADER, "0".parse().unwrap());
    let error = svc.oneshot(request).await.unwrap_err();
    assert_eq!(
        Cause::of(error.as_ref()).http_status(),
        Some(StatusCode::GATEWAY_TIMEOUT)
    );
    assert_eq!(log.lock().unwrap().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn open_breaker_stops_retries_at_once() {
    let layer = stack(&config(ALL), "inventory").unwrap().for_http();
    let log = Log::default();
    let svc = layer.layer(downstream(log.clone(), Duration::ZERO, vec![500]));
    // 500 is a breaker failure but not retryable: one attempt per call.
    for _ in 0..4 {
        let response = svc.clone().oneshot(get()).await.unwrap();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
    assert_eq!(layer.circuit_breaker().unwrap().state(), State::Open);
    let error = svc.oneshot(get()).await.unwrap_err();
    assert!(error.is::<CallNotPermitted>());
    assert_eq!(log.lock().unwrap().len(), 4);
}

#[tokio::test(start_paused = true)]
async fn rate_limiter_and_bulkhead_reject_first() {
    let config = config(
        r#"
        [rate_limiter]
        limit_for_period = 2
        limit_refresh_period_ms = 1000
        [bulkhead]
        max_concurrent_calls = 1
        "#,
    );
    let layer = stack(&config, "edge").unwrap();
    let svc = layer.layer(downstream(
        Log::default(),
        Duration::from_millis(100),
        vec![200],
    ));
    let mut busy = svc.clone();
    let in_flight = busy.ready().await.unwrap().call(get());
    let error = svc.clone().oneshot(get()).await.unwrap_err();
    assert!(error.is::<BulkheadFull>(), "{error}");
    in_flight.await.unwrap();
    let error = svc.oneshot(get()).await.unwrap_err();
    assert!(error.is::<RateLimited>(), "{error}");
    assert_eq!(layer.bulkhead().unwrap().rejected_calls(), 1);
    assert_eq!(layer.rate_limiter().unwrap().rejected_calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn operators_reach_the_stack_through_the_registry() {
    let registry = BreakerRegistry::new(BreakerRegistryConfig::default()).unwrap();
    let layer = stack_in(&registry, &config(ALL), "payments").unwrap();
    let svc = layer.layer(downstream(Log::default(), Duration::ZERO, vec![200]));
    registry.force_open("payments").unwrap();
    let error = svc.clone().oneshot(get()).await.unwrap_err();
    assert!(error.is::<CallNotPermitted>());
    registry.reset("payments").unwrap();
    svc.oneshot(get()).await.unwrap();
    assert_eq!(registry.snapshot()[0].buffered_calls, 1);
}

#[tokio::test(start_paused = true)]
async fn empty_config_only_propagates_deadlines() {
    let layer = stack(&ResilienceConfig::default(), "plain").unwrap();
    let log = Log::default();
    let svc = layer.layer(downstream(log.clone(), Duration::from_secs(100), vec![503]));
    let response = svc.clone().oneshot(get()).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(log.lock().unwrap()[0].1, None);
}

#[test]
fn invalid_configuration_names_the_parameter() {
    let cases = [
        (
            "[circuit_breaker]\nfailure_rate_threshold = 120",
            "circuit_breaker.failure_rate_threshold",
        ),
        (
            "[circuit_breaker]\nsliding_window_size = 0",
            "circuit_breaker.sliding_window_size",
        ),
        ("[retry]\nmax_attempts = 0", "retry.max_attempts"),
        ("[retry.budget]\nttl_ms = 300000", "retry.budget.ttl_ms"),
        (
            "[bulkhead]\nmax_concurrent_calls = 0",
            "bulkhead.max_concurrent_calls",
        ),
        (
            "[rate_limiter]\nlimit_for_period = 0",
            "rate_limiter.limit_for_period",
        ),
        (
            "[timeout]\ntimeout_duration_ms = 0",
            "timeout.timeout_duration_ms",
        ),
    ];
    for (toml, parameter) in cases {
        let error = stack(&config(toml), "x").unwrap_err();
        assert_eq!(error.parameter(), parameter, "{toml}");
        assert!(
            error
                .to_string()
                .starts_with(&format!("invalid `{parameter}`"))
        );
    }
    let unknown = toml::from_str::<ResilienceConfig>("[circuit_breaker]\nfailure_threshold = 5");
    assert!(unknown.unwrap_err().to_string().contains("unknown field"));
}
