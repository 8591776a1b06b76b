use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// No token was available in time. Maps to HTTP 429 with `Retry-After`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimited {
    name: Arc<str>,
    retry_after: Duration,
}

impl RateLimited {
    pub(crate) fn new(name: Arc<str>, retry_after: Duration) -> Self {
        Self { name, retry_after }
    }

    /// The limiter's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// When a token will be available (if nobody else takes it).
    pub fn retry_after(&self) -> Duration {
        self.retry_after
    }
}

impl fmt::Display for RateLimited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rate limiter `{}` does not permit further calls",
            self.name
        )
    }
}

impl std::error::Error for RateLimited {}
