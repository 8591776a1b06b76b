use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

use super::*;
use crate::BoxError;

fn bulkhead(max: u32, wait: Duration) -> Bulkhead {
    Bulkhead::new(
        "b",
        BulkheadConfig {
            max_concurrent_calls: max,
            max_wait_duration: wait,
        },
    )
    .unwrap()
}

#[tokio::test(start_paused = true)]
async fn rejects_beyond_max_concurrent_calls() {
    let b = bulkhead(2, Duration::ZERO);
    let p1 = b.try_acquire().unwrap();
    let _p2 = b.acquire().await.unwrap();
    assert_eq!(b.available_concurrent_calls(), 0);
    let err = b.acquire().await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "bulkhead `b` is full and does not permit further calls"
    );
    assert!(b.try_acquire().is_err());
    assert_eq!(b.rejected_calls(), 2);
    drop(p1);
    assert!(b.try_acquire().is_ok());
}

#[tokio::test(start_paused = true)]
async fn waits_up_to_max_wait_duration() {
    let b = bulkhead(1, Duration::from_millis(100));
    let held = b.acquire().await.unwrap();
    let started = Instant::now();
    assert!(b.acquire().await.is_err());
    assert_eq!(started.elapsed(), Duration::from_millis(100));
    assert_eq!(b.rejected_calls(), 1);

    // A slot freed during the wait is taken.
    let b2 = b.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(40)).await;
        drop(held);
    });
    let started = Instant::now();
    let result = b2.call(async { 7 }).await;
    assert_eq!(result, Ok(7));
    assert_eq!(started.elapsed(), Duration::from_millis(40));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrency_never_exceeds_the_limit() {
    let b = bulkhead(3, Duration::from_secs(60));
    let running = Arc::new(AtomicU32::new(0));
    let peak = Arc::new(AtomicU32::new(0));
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let (b, running, peak) = (b.clone(), running.clone(), peak.clone());
            tokio::spawn(async move {
                b.call(async {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    tokio::task::yield_now().await;
                    running.fetch_sub(1, Ordering::SeqCst);
                })
                .await
                .unwrap();
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert!(peak.load(Ordering::SeqCst) <= 3);
    assert_eq!(b.available_concurrent_calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn layer_holds_the_slot_until_the_response() {
    let b = bulkhead(1, Duration::ZERO);
    let svc = BulkheadLayer::new(b.clone()).layer(tower::service_fn(|d: u64| async move {
        tokio::time::sleep(Duration::from_millis(d)).await;
        Ok::<_, BoxError>(d)
    }));
    let mut first = svc.clone();
    let slow = first.ready().await.unwrap().call(100);
    let err = svc.clone().oneshot(1).await.unwrap_err();
    assert!(err.is::<BulkheadFull>());
    assert_eq!(slow.await.unwrap(), 100);
    assert_eq!(svc.oneshot(1).await.unwrap(), 1);
    assert_eq!(b.rejected_calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn layer_waits_inside_the_response_future() {
    let b = bulkhead(1, Duration::from_millis(500));
    let svc = BulkheadLayer::new(b.clone()).layer(tower::service_fn(|d: u64| async move {
        tokio::time::sleep(Duration::from_millis(d)).await;
        Ok::<_, BoxError>(d)
    }));
    let slow = tokio::spawn(svc.clone().oneshot(200));
    tokio::task::yield_now().await;
    let started = Instant::now();
    assert_eq!(svc.oneshot(1).await.unwrap(), 1);
    assert_eq!(started.elapsed(), Duration::from_millis(201));
    slow.await.unwrap().unwrap();
}

#[test]
fn config_is_validated() {
    let err = Bulkhead::new(
        "b",
        BulkheadConfig {
            max_concurrent_calls: 0,
            ..Default::default()
        },
    )
    .unwrap_err();
    assert_eq!(err.parameter(), "max_concurrent_calls");
}
