use tower::Layer;

use super::{RateLimiter, RateLimiterService};

/// Applies a [`RateLimiter`] to a tower service (which must be `Clone` when calls may wait).
#[derive(Debug, Clone)]
pub struct RateLimiterLayer {
    limiter: RateLimiter,
}

impl RateLimiterLayer {
    /// A layer using `limiter`.
    pub fn new(limiter: RateLimiter) -> Self {
        Self { limiter }
    }
}

impl<S> Layer<S> for RateLimiterLayer {
    type Service = RateLimiterService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimiterService::new(inner, self.limiter.clone())
    }
}
