use std::time::Duration;

use tower::{Layer, ServiceBuilder};

use super::ResilienceService;
use crate::bulkhead::{Bulkhead, BulkheadLayer};
use crate::circuit_breaker::{CircuitBreaker, CircuitBreakerLayer};
use crate::classify::{DefaultClassifier, HttpClassifier};
use crate::deadline::DeadlineLayer;
use crate::rate_limiter::{RateLimiter, RateLimiterLayer};
use crate::retry::{Retry, RetryLayer};

/// The layer built by [`stack`](super::stack). `BC` classifies results for the breaker, `RC`
/// for retry.
#[derive(Debug, Clone)]
pub struct ResilienceLayer<BC = DefaultClassifier, RC = DefaultClassifier> {
    budget: Option<Duration>,
    rate_limiter: Option<RateLimiter>,
    bulkhead: Option<Bulkhead>,
    retry: Option<Retry>,
    breaker: Option<CircuitBreaker>,
    breaker_classifier: BC,
    retry_classifier: RC,
}

impl ResilienceLayer {
    pub(crate) fn new(
        budget: Option<Duration>,
        rate_limiter: Option<RateLimiter>,
        bulkhead: Option<Bulkhead>,
        retry: Option<Retry>,
        breaker: Option<CircuitBreaker>,
    ) -> Self {
        Self {
            budget,
            rate_limiter,
            bulkhead,
            retry,
            breaker,
            breaker_classifier: DefaultClassifier,
            retry_classifier: DefaultClassifier,
        }
    }
}

impl<BC, RC> ResilienceLayer<BC, RC> {
    /// Classify HTTP responses: 5xx count as breaker failures; 502, 503 and 504 are retried.
    pub fn for_http(self) -> ResilienceLayer<HttpClassifier, HttpClassifier> {
        self.with_breaker_classifier(HttpClassifier::server_errors())
            .with_retry_classifier(HttpClassifier::retryable())
    }

    /// Classify results for the circuit breaker with `classifier`.
    pub fn with_breaker_classifier<C>(self, classifier: C) -> ResilienceLayer<C, RC> {
        ResilienceLayer {
            budget: self.budget,
            rate_limiter: self.rate_limiter,
            bulkhead: self.bulkhead,
            retry: self.retry,
            breaker: self.breaker,
            breaker_classifier: classifier,
            retry_classifier: self.retry_classifier,
        }
    }

    /// Classify results for retry with `classifier` (failures are retried).
    pub fn with_retry_classifier<C>(self, classifier: C) -> ResilienceLayer<BC, C> {
        ResilienceLayer {
            budget: self.budget,
            rate_limiter: self.rate_limiter,
            bulkhead: self.bulkhead,
            retry: self.retry,
            breaker: self.breaker,
            breaker_classifier: self.breaker_classifier,
            retry_classifier: classifier,
        }
    }

    /// The circuit breaker, if configured.
    pub fn circuit_breaker(&self) -> Option<&CircuitBreaker> {
        self.breaker.as_ref()
    }

    /// The retry policy, if configured.
    pub fn retry(&self) -> Option<&Retry> {
        self.retry.as_ref()
    }

    /// The bulkhead, if configured.
    pub fn bulkhead(&self) -> Option<&Bulkhead> {
        self.bulkhead.as_ref()
    }

    /// The rate limiter, if configured.
    pub fn rate_limiter(&self) -> Option<&RateLimiter> {
        self.rate_limiter.as_ref()
    }

    /// The time budget per call, if configured.
    pub fn timeout(&self) -> Option<Duration> {
        self.budget
    }
}

impl<S, BC: Clone, RC: Clone> Layer<S> for ResilienceLayer<BC, RC> {
    type Service = ResilienceService<S, BC, RC>;

    fn layer(&self, service: S) -> Self::Service {
        let deadline = match self.budget {
            Some(budget) => DeadlineLayer::new(budget),
            None => DeadlineLayer::propagate(),
        };
        // The order is documented on `stack`.
        let stack = ServiceBuilder::new()
            .layer(deadline)
            .option_layer(self.rate_limiter.clone().map(RateLimiterLayer::new))
            .option_layer(self.bulkhead.clone().map(BulkheadLayer::new))
            .option_layer(
                self.retry
                    .clone()
                    .map(|r| RetryLayer::new(r).with_classifier(self.retry_classifier.clone())),
            )
            .option_layer(self.breaker.clone().map(|b| {
                CircuitBreakerLayer::new(b).with_classifier(self.breaker_classifier.clone())
            }))
            .layer(deadline)
            .service(service);
        ResilienceService::new(stack)
    }
}
