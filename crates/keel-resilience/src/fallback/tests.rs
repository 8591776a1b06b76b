use std::time::Duration;

use tower::{Layer, ServiceExt};

use super::*;
use crate::BoxError;
use crate::circuit_breaker::{CircuitBreaker, CircuitBreakerError, CircuitBreakerLayer};
use crate::deadline::DeadlineLayer;

#[tokio::test]
async fn fallback_value_and_call() {
    let ok = async { Ok::<u32, &str>(1) }.fallback_value(|_| 0).await;
    assert_eq!(ok, 1);
    let failed = async { Err::<u32, &str>("boom") }
        .fallback_value(|e| e.len() as u32)
        .await;
    assert_eq!(failed, 4);
    let called = async { Err::<u32, &str>("boom") }
        .fallback(|e| async move {
            if e == "boom" {
                Ok::<u32, String>(2)
            } else {
                Err(e.to_owned())
            }
        })
        .await;
    assert_eq!(called, Ok(2));
}

#[tokio::test]
async fn fallback_sees_why_the_breaker_rejected() {
    let breaker = CircuitBreaker::new("b", Default::default()).unwrap();
    breaker.force_open();
    let value = breaker
        .call(async { Ok::<u32, std::io::Error>(1) })
        .fallback_value(|e| match e {
            CircuitBreakerError::NotPermitted(rejected) => {
                assert_eq!(rejected.name(), "b");
                10
            }
            CircuitBreakerError::Inner(_) => 20,
        })
        .await;
    assert_eq!(value, 10);
}

#[tokio::test(start_paused = true)]
async fn layer_gets_the_cause() {
    let breaker = CircuitBreaker::new("b", Default::default()).unwrap();
    breaker.force_open();
    let fallback = |error: BoxError| async move {
        let cause = Cause::of(error.as_ref());
        Ok::<_, BoxError>(format!("{:?}", cause.http_status().map(|s| s.as_u16())))
    };
    let inner = tower::service_fn(|_: http::Request<()>| async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        Ok::<_, BoxError>("fresh".to_owned())
    });
    let svc =
        FallbackLayer::new(fallback).layer(CircuitBreakerLayer::new(breaker.clone()).layer(inner));
    assert_eq!(
        svc.clone().oneshot(http::Request::new(())).await.unwrap(),
        "Some(503)"
    );
    breaker.reset();
    let svc =
        FallbackLayer::new(fallback).layer(DeadlineLayer::new(Duration::from_secs(1)).layer(inner));
    assert_eq!(
        svc.oneshot(http::Request::new(())).await.unwrap(),
        "Some(504)"
    );
}

#[test]
fn cause_looks_through_sources() {
    #[derive(Debug, thiserror::Error)]
    #[error("client error")]
    struct Wrapper(#[source] crate::DeadlineExceeded);
    let error: BoxError = Box::new(Wrapper(crate::DeadlineExceeded::default()));
    assert!(matches!(
        Cause::of(error.as_ref()),
        Cause::DeadlineExceeded(_)
    ));
    let other: BoxError = "plain".into();
    let cause = Cause::of(other.as_ref());
    assert!(!cause.is_rejection());
    assert_eq!(cause.http_status(), None);
}
