use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tower::Service;

use super::breaker::OwnedPermit;
use super::future::ResponseFuture;
use super::{CallNotPermitted, CircuitBreaker, WhenOpen};
use crate::BoxError;
use crate::classify::Classify;

/// A tower service behind a circuit breaker (see [`CircuitBreakerLayer`](super::CircuitBreakerLayer)).
pub struct CircuitBreakerService<S, C> {
    inner: S,
    breaker: CircuitBreaker,
    classifier: C,
    when_open: WhenOpen,
    admission: Admission,
    wait: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

#[derive(Debug, Default)]
enum Admission {
    #[default]
    None,
    Admitted(OwnedPermit),
    Rejected(CallNotPermitted),
}

impl<S, C> CircuitBreakerService<S, C> {
    /// Wrap `inner`.
    pub fn new(inner: S, breaker: CircuitBreaker, classifier: C, when_open: WhenOpen) -> Self {
        Self {
            inner,
            breaker,
            classifier,
            when_open,
            admission: Admission::None,
            wait: None,
        }
    }

    /// The breaker.
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }

    /// Resolve `admission`, waiting (in [`WhenOpen::NotReady`]) for the breaker to admit calls.
    fn poll_admission(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            if !matches!(self.admission, Admission::None) {
                return Poll::Ready(());
            }
            let quiet = self.when_open == WhenOpen::NotReady;
            match self.breaker.acquire_with(!quiet) {
                Ok(ticket) => {
                    self.admission =
                        Admission::Admitted(OwnedPermit::new(self.breaker.clone(), ticket));
                    self.wait = None;
                }
                Err(rejected) if !quiet => self.admission = Admission::Rejected(rejected),
                Err(_) => match &mut self.wait {
                    None => {
                        // Register for wake-ups first, then check again, so none is missed.
                        self.wait = Some(wait_for_change(&self.breaker));
                    }
                    Some(wait) => {
                        ready!(wait.as_mut().poll(cx));
                        self.wait = None;
                    }
                },
            }
        }
    }
}

/// Resolves when the breaker changes state, gives a trial permit back, or reaches the end of
/// its OPEN wait or HALF_OPEN limit.
fn wait_for_change(breaker: &CircuitBreaker) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    let mut notified = Box::pin(breaker.changed().notified_owned());
    notified.as_mut().enable();
    let deadline = breaker.next_deadline();
    Box::pin(async move {
        match deadline {
            Some(deadline) => {
                tokio::select! {
                    () = notified => {}
                    () = tokio::time::sleep_until(deadline) => {}
                }
            }
            None => notified.await,
        }
    })
}

impl<S, C, R> Service<R> for CircuitBreakerService<S, C>
where
    S: Service<R>,
    S::Error: Into<BoxError>,
    C: Classify<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        ready!(self.poll_admission(cx));
        match self.admission {
            Admission::Admitted(_) => self.inner.poll_ready(cx).map_err(Into::into),
            _ => Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, request: R) -> Self::Future {
        let permit = match std::mem::take(&mut self.admission) {
            Admission::Admitted(permit) => permit,
            Admission::Rejected(rejected) => return ResponseFuture::rejected(rejected),
            // `call` without `poll_ready`: admit now, failing fast.
            Admission::None => match self.breaker.try_acquire_owned() {
                Ok(permit) => permit,
                Err(rejected) => return ResponseFuture::rejected(rejected),
            },
        };
        ResponseFuture::called(self.inner.call(request), permit, self.classifier.clone())
    }
}

impl<S: Clone, C: Clone> Clone for CircuitBreakerService<S, C> {
    fn clone(&self) -> Self {
        Self::new(
            self.inner.clone(),
            self.breaker.clone(),
            self.classifier.clone(),
            self.when_open,
        )
    }
}

impl<S: fmt::Debug, C> fmt::Debug for CircuitBreakerService<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerService")
            .field("inner", &self.inner)
            .field("breaker", &self.breaker)
            .field("when_open", &self.when_open)
            .field("admission", &self.admission)
            .finish_non_exhaustive()
    }
}
