use std::time::Duration;

use tokio::time::{Instant, advance};
use tower::{Layer, ServiceExt};

use super::*;
use crate::BoxError;

fn limiter(limit: u32, period_ms: u64, burst: Option<u32>, wait_ms: u64) -> RateLimiter {
    RateLimiter::new(
        "rl",
        RateLimiterConfig {
            limit_for_period: limit,
            limit_refresh_period: Duration::from_millis(period_ms),
            burst,
            timeout_duration: Duration::from_millis(wait_ms),
        },
    )
    .unwrap()
}

#[tokio::test(start_paused = true)]
async fn allows_a_burst_then_the_rate() {
    let rl = limiter(10, 1000, None, 0);
    for _ in 0..10 {
        rl.try_acquire().unwrap();
    }
    let err = rl.try_acquire().unwrap_err();
    assert_eq!(err.retry_after(), Duration::from_millis(100));
    assert_eq!(
        err.to_string(),
        "rate limiter `rl` does not permit further calls"
    );
    advance(Duration::from_millis(99)).await;
    assert!(rl.try_acquire().is_err());
    advance(Duration::from_millis(1)).await;
    rl.try_acquire().unwrap();
    assert!(rl.try_acquire().is_err());
    // A long idle refills up to the burst, not beyond.
    advance(Duration::from_secs(60)).await;
    for _ in 0..10 {
        rl.try_acquire().unwrap();
    }
    assert!(rl.try_acquire().is_err());
    assert_eq!(rl.rejected_calls(), 4);
}

#[tokio::test(start_paused = true)]
async fn burst_bounds_calls_at_once() {
    let rl = limiter(10, 1000, Some(2), 0);
    rl.try_acquire().unwrap();
    rl.try_acquire().unwrap();
    assert!(rl.try_acquire().is_err());
    advance(Duration::from_secs(10)).await;
    rl.try_acquire().unwrap();
    rl.try_acquire().unwrap();
    assert!(rl.try_acquire().is_err());
}

#[tokio::test(start_paused = true)]
async fn waits_up_to_the_timeout_in_order() {
    let rl = limiter(10, 1000, Some(1), 250);
    let started = Instant::now();
    rl.acquire().await.unwrap();
    rl.acquire().await.unwrap();
    rl.acquire().await.unwrap();
    assert_eq!(started.elapsed(), Duration::from_millis(200));
    // Reserve two more ahead of time: 100 ms and 200 ms of wait; a third would need 300 ms.
    let a = rl.reserve(250_000_000).unwrap();
    let b = rl.reserve(250_000_000).unwrap();
    assert_eq!(
        (a, b),
        (Duration::from_millis(100), Duration::from_millis(200))
    );
    assert!(rl.acquire().await.is_err());
}

#[tokio::test(start_paused = true)]
async fn sustained_rate_is_exact() {
    let rl = limiter(50, 1000, Some(1), 10_000);
    let started = Instant::now();
    for _ in 0..101 {
        rl.acquire().await.unwrap();
    }
    assert_eq!(started.elapsed(), Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn layer_rejects_and_waits() {
    let rl = limiter(1, 1000, None, 0);
    let svc = RateLimiterLayer::new(rl.clone()).layer(tower::service_fn(|x: u32| async move {
        Ok::<_, BoxError>(x)
    }));
    assert_eq!(svc.clone().oneshot(1).await.unwrap(), 1);
    let err = svc.clone().oneshot(2).await.unwrap_err();
    assert!(err.is::<RateLimited>());

    let rl = limiter(1, 1000, None, 1000);
    let svc =
        RateLimiterLayer::new(rl).layer(tower::service_fn(
            |x: u32| async move { Ok::<_, BoxError>(x) },
        ));
    assert_eq!(svc.clone().oneshot(1).await.unwrap(), 1);
    let started = Instant::now();
    assert_eq!(svc.oneshot(2).await.unwrap(), 2);
    assert_eq!(started.elapsed(), Duration::from_secs(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_callers_never_exceed_the_burst() {
    let rl = limiter(1000, 3_600_000, Some(1000), 0);
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let rl = rl.clone();
            tokio::spawn(async move { (0..500).filter(|_| rl.try_acquire().is_ok()).count() })
        })
        .collect();
    let mut permitted = 0;
    for t in tasks {
        permitted += t.await.unwrap();
    }
    // 1000 tokens in the bucket; refill over the test is well under one token.
    assert!((1000..=1001).contains(&permitted), "{permitted}");
    assert_eq!(rl.rejected_calls(), 4000 - permitted as u64);
}

#[test]
fn config_is_validated() {
    let bad = [
        (
            RateLimiterConfig {
                limit_for_period: 0,
                ..Default::default()
            },
            "limit_for_period",
        ),
        (
            RateLimiterConfig {
                limit_refresh_period: Duration::ZERO,
                ..Default::default()
            },
            "limit_refresh_period_ms",
        ),
        (
            RateLimiterConfig {
                burst: Some(0),
                ..Default::default()
            },
            "burst",
        ),
    ];
    for (config, parameter) in bad {
        assert_eq!(
            RateLimiter::new("x", config).unwrap_err().parameter(),
            parameter
        );
    }
}
