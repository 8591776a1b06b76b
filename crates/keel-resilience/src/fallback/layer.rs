use std::fmt;

use tower::Layer;

use super::FallbackService;

/// Calls `f(error)` when the inner service fails (or a Keel policy rejects the call), and
/// answers with its result. `f` receives the [`BoxError`](crate::BoxError); use
/// [`Cause::of`](super::Cause::of) to see why, and return `Err(error)` to pass it on.
#[derive(Clone)]
pub struct FallbackLayer<F> {
    f: F,
}

impl<F> FallbackLayer<F> {
    /// A layer calling `f` on errors.
    pub fn new(f: F) -> Self {
        Self { f }
    }
}

impl<S, F: Clone> Layer<S> for FallbackLayer<F> {
    type Service = FallbackService<S, F>;

    fn layer(&self, inner: S) -> Self::Service {
        FallbackService::new(inner, self.f.clone())
    }
}

impl<F> fmt::Debug for FallbackLayer<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackLayer").finish_non_exhaustive()
    }
}
