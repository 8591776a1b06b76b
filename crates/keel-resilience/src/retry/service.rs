use std::task::{Context, Poll};

use tower::{Service, ServiceExt};

use super::{Idempotent, ResponseFuture, Retry};
use crate::BoxError;
use crate::classify::{Classify, Outcome};
use crate::deadline::DeadlineCarrier;
use crate::fallback::Cause;

/// A tower service whose failed calls are retried (see [`RetryLayer`](super::RetryLayer)).
#[derive(Debug, Clone)]
pub struct RetryService<S, C> {
    inner: S,
    retry: Retry,
    classifier: C,
}

impl<S, C> RetryService<S, C> {
    /// Wrap `inner`.
    pub fn new(inner: S, retry: Retry, classifier: C) -> Self {
        Self {
            inner,
            retry,
            classifier,
        }
    }
}

/// Never retries Keel's own rejections; otherwise asks `C`.
struct NotRejections<'a, C>(&'a C);

impl<T, C: Classify<T, BoxError>> Classify<T, BoxError> for NotRejections<'_, C> {
    fn classify(&self, result: &Result<T, BoxError>) -> Outcome {
        match result {
            Err(error) if Cause::of(error.as_ref()).is_rejection() => Outcome::Ignored,
            _ => self.0.classify(result),
        }
    }
}

impl<S, C, R> Service<R> for RetryService<S, C>
where
    S: Service<R> + Clone + Send + 'static,
    S::Future: Send,
    S::Response: Send + 'static,
    S::Error: Into<BoxError>,
    C: Classify<S::Response, BoxError> + Clone + Send + Sync + 'static,
    R: Clone + Idempotent + DeadlineCarrier + Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: R) -> Self::Future {
        // The readied service makes the first attempt; retries ready clones of it.
        let clone = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, clone);
        let base = ready.clone();
        let retry = self.retry.clone();
        let classifier = self.classifier.clone();
        ResponseFuture::new(async move {
            let deadline = request.deadline();
            let may_retry = retry.config().retry_on_non_idempotent || request.is_idempotent();
            let mut first = Some(ready);
            let attempt = move || {
                let service = first.take().unwrap_or_else(|| base.clone());
                let request = request.clone();
                async move {
                    let mut service = service;
                    let service = service.ready().await.map_err(Into::into)?;
                    service.call(request).await.map_err(Into::into)
                }
            };
            retry
                .run(&NotRejections(&classifier), deadline, may_retry, attempt)
                .await
        })
    }
}
