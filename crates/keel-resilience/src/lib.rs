//! Resilience policies for Keel services — circuit breaker, retry, deadline, bulkhead, rate limiter and fallback — as tower layers and as plain async calls.
//!
//! Every policy exists twice: as a value with an `async` API (`breaker.call(fut)`,
//! `retry.call(|| fut)`, `bulkhead.call(fut)`, …) and as a tower [`Layer`](tower::Layer).
//! [`stack`] builds the whole chain from one [`ResilienceConfig`] in a fixed order:
//!
//! ```text
//! deadline (set) → rate limiter → bulkhead → retry → circuit breaker → deadline (enforce) → service
//! ```
//!
//! The guide is `docs/resilience.md`; metric names and events are listed there.

pub mod bulkhead;
pub mod circuit_breaker;
pub mod classify;
pub mod config;
pub mod deadline;
pub mod fallback;
pub mod rate_limiter;
pub mod retry;
pub mod stack;

mod clock;

pub use bulkhead::{Bulkhead, BulkheadConfig, BulkheadFull, BulkheadLayer};
pub use circuit_breaker::{
    BreakerEvent, BreakerRegistry, CallNotPermitted, CircuitBreaker, CircuitBreakerConfig,
    CircuitBreakerError, CircuitBreakerLayer, CircuitBreakerSnapshot, SlidingWindowType, State,
};
pub use classify::{Classify, DefaultClassifier, HttpClassifier, Outcome};
pub use config::ConfigError;
pub use deadline::{Deadline, DeadlineCarrier, DeadlineExceeded, DeadlineLayer};
pub use fallback::{Cause, FallbackExt, FallbackLayer};
pub use rate_limiter::{RateLimited, RateLimiter, RateLimiterConfig, RateLimiterLayer};
pub use retry::{Idempotent, Retry, RetryConfig, RetryLayer};
pub use stack::{
    ResilienceConfig, ResilienceLayer, ResilienceService, TimeoutConfig, stack, stack_in,
};

/// The error type of every Keel resilience tower service, as in tower itself.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;
