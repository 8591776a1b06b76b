use tower::Layer;

use super::{CircuitBreaker, CircuitBreakerService};
use crate::classify::DefaultClassifier;

/// What a [`CircuitBreakerService`] does while its breaker rejects calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WhenOpen {
    /// `poll_ready` is ready and `call` fails at once with
    /// [`CallNotPermitted`](super::CallNotPermitted). Right for a single endpoint, where the
    /// caller wants a fast error (and maybe a fallback).
    #[default]
    FailFast,
    /// `poll_ready` stays `Pending` until the breaker admits calls again, the way
    /// linkerd2-proxy's breaker gates readiness: a balancer (p2c) in front of several endpoints
    /// then routes around the open one. Put a deadline or load-shed layer in front if callers
    /// must not wait.
    NotReady,
}

/// Applies a [`CircuitBreaker`] to a tower service.
///
/// Results are classified with `C` (default: `Err` is a failure; use
/// [`HttpClassifier`](crate::HttpClassifier) for HTTP responses). The service's error type is
/// [`BoxError`](crate::BoxError); a rejection is a boxed
/// [`CallNotPermitted`](super::CallNotPermitted).
#[derive(Debug, Clone)]
pub struct CircuitBreakerLayer<C = DefaultClassifier> {
    breaker: CircuitBreaker,
    classifier: C,
    when_open: WhenOpen,
}

impl CircuitBreakerLayer {
    /// A layer using `breaker`, failing fast while it is open.
    pub fn new(breaker: CircuitBreaker) -> Self {
        Self {
            breaker,
            classifier: DefaultClassifier,
            when_open: WhenOpen::FailFast,
        }
    }
}

impl<C> CircuitBreakerLayer<C> {
    /// Classify results with `classifier`.
    pub fn with_classifier<C2>(self, classifier: C2) -> CircuitBreakerLayer<C2> {
        CircuitBreakerLayer {
            breaker: self.breaker,
            classifier,
            when_open: self.when_open,
        }
    }

    /// Choose what the service does while the breaker rejects calls.
    #[must_use]
    pub fn when_open(mut self, when_open: WhenOpen) -> Self {
        self.when_open = when_open;
        self
    }

    /// The breaker.
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }
}

impl<S, C: Clone> Layer<S> for CircuitBreakerLayer<C> {
    type Service = CircuitBreakerService<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreakerService::new(
            inner,
            self.breaker.clone(),
            self.classifier.clone(),
            self.when_open,
        )
    }
}
