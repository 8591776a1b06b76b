use std::time::Duration;

use tower::Layer;

use super::DeadlineService;

/// Enforces the nearest of a time budget, the request's [`Deadline`](super::Deadline) and the
/// task's [`Deadline::current`](super::Deadline::current).
///
/// The request leaves with that deadline in its extensions and `keel-deadline-ms` header; the
/// inner future runs with it as [`Deadline::current`](super::Deadline::current). If no time is
/// left the service is not called. Requests must implement
/// [`DeadlineCarrier`](super::DeadlineCarrier) (`http::Request` does).
#[derive(Debug, Clone, Copy, Default)]
pub struct DeadlineLayer {
    budget: Option<Duration>,
}

impl DeadlineLayer {
    /// Allow each call at most `budget`, or less if its deadline is nearer.
    pub fn new(budget: Duration) -> Self {
        Self {
            budget: Some(budget),
        }
    }

    /// No budget of its own: enforce and propagate deadlines that came with the request.
    pub fn propagate() -> Self {
        Self { budget: None }
    }

    /// The budget, if any.
    pub fn budget(&self) -> Option<Duration> {
        self.budget
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = DeadlineService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        DeadlineService::new(inner, self.budget)
    }
}
