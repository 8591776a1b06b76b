use tower::Layer;

use super::{Retry, RetryService};
use crate::classify::DefaultClassifier;

/// Applies a [`Retry`] to a tower service.
///
/// The service must be `Clone` (each retry readies a clone) and so must requests; requests must
/// also be [`Idempotent`](super::Idempotent) and [`DeadlineCarrier`](crate::DeadlineCarrier)
/// (`http::Request<B>` is, for a `B: Clone` body). Results are classified with `C` — for HTTP,
/// [`HttpClassifier::retryable`](crate::HttpClassifier::retryable).
#[derive(Debug, Clone)]
pub struct RetryLayer<C = DefaultClassifier> {
    retry: Retry,
    classifier: C,
}

impl RetryLayer {
    /// A layer using `retry`, retrying every error.
    pub fn new(retry: Retry) -> Self {
        Self {
            retry,
            classifier: DefaultClassifier,
        }
    }
}

impl<C> RetryLayer<C> {
    /// Retry the results `classifier` calls failures.
    pub fn with_classifier<C2>(self, classifier: C2) -> RetryLayer<C2> {
        RetryLayer {
            retry: self.retry,
            classifier,
        }
    }

    /// The policy.
    pub fn retry(&self) -> &Retry {
        &self.retry
    }
}

impl<S, C: Clone> Layer<S> for RetryLayer<C> {
    type Service = RetryService<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        RetryService::new(inner, self.retry.clone(), self.classifier.clone())
    }
}
