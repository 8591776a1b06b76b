use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use metrics::{Counter, counter};
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::{RetryBudget, RetryConfig};
use crate::classify::{Classify, DefaultClassifier, Outcome};
use crate::config::ConfigError;
use crate::deadline::Deadline;

/// Retries failed calls (see the [module docs](super) for the rules).
///
/// ```
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use keel_resilience::{Retry, RetryConfig};
///
/// let retry = Retry::new("inventory", RetryConfig::default())?;
/// let stock: u32 = retry.call(|| async { Ok::<_, std::io::Error>(7) }).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Retry {
    inner: Arc<Inner>,
}

struct Inner {
    name: Arc<str>,
    config: RetryConfig,
    budget: Option<RetryBudget>,
    counts: Counts,
    metrics: RetryMetrics,
}

#[derive(Default)]
struct Counts {
    successful_without_retry: AtomicU64,
    successful_with_retry: AtomicU64,
    failed_without_retry: AtomicU64,
    failed_with_retry: AtomicU64,
    retries: AtomicU64,
    budget_exhausted: AtomicU64,
    deadline: AtomicU64,
    non_idempotent: AtomicU64,
}

struct RetryMetrics {
    successful_without_retry: Counter,
    successful_with_retry: Counter,
    failed_without_retry: Counter,
    failed_with_retry: Counter,
    retries: Counter,
    budget_exhausted: Counter,
    deadline: Counter,
    non_idempotent: Counter,
}

impl RetryMetrics {
    fn new(name: &str) -> Self {
        let calls = |outcome: &'static str| counter!("keel_retry_calls_total", "name" => name.to_owned(), "outcome" => outcome);
        let suppressed = |reason: &'static str| counter!("keel_retry_suppressed_total", "name" => name.to_owned(), "reason" => reason);
        Self {
            successful_without_retry: calls("successful_without_retry"),
            successful_with_retry: calls("successful_with_retry"),
            failed_without_retry: calls("failed_without_retry"),
            failed_with_retry: calls("failed_with_retry"),
            retries: counter!("keel_retry_attempts_total", "name" => name.to_owned()),
            budget_exhausted: suppressed("budget_exhausted"),
            deadline: suppressed("deadline"),
            non_idempotent: suppressed("non_idempotent"),
        }
    }
}

/// Counters of a [`Retry`], for an admin endpoint and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetrySnapshot {
    /// Retry name.
    pub name: String,
    /// Calls that succeeded at the first attempt.
    pub successful_without_retry: u64,
    /// Calls that succeeded after one or more retries.
    pub successful_with_retry: u64,
    /// Calls that failed without being retried (not retryable, or retries suppressed).
    pub failed_without_retry: u64,
    /// Calls that failed after one or more retries.
    pub failed_with_retry: u64,
    /// Retries made (attempts after the first).
    pub retries: u64,
    /// Retries not made because the budget was exhausted.
    pub suppressed_by_budget: u64,
    /// Retries not made because the deadline was too near.
    pub suppressed_by_deadline: u64,
    /// Retries not made because the request was not idempotent.
    pub suppressed_non_idempotent: u64,
}

/// Why a failed attempt was not retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Attempts,
    Budget,
    Deadline,
    NonIdempotent,
}

fn bump(counter: &AtomicU64, metric: &Counter) {
    counter.fetch_add(1, Ordering::Relaxed);
    metric.increment(1);
}

impl Retry {
    /// A retry policy named `name` (the `name` label of its metrics), after validating `config`.
    pub fn new(name: impl Into<String>, config: RetryConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let name: String = name.into();
        let budget = config
            .budget
            .enabled
            .then(|| RetryBudget::new(&config.budget));
        Ok(Self {
            inner: Arc::new(Inner {
                metrics: RetryMetrics::new(&name),
                name: name.into(),
                config,
                budget,
                counts: Counts::default(),
            }),
        })
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The configuration.
    pub fn config(&self) -> &RetryConfig {
        &self.inner.config
    }

    /// Call `attempt` until it succeeds, retrying every `Err`, within the task's
    /// [`Deadline::current`]. Only use this for operations that are safe to repeat.
    pub async fn call<F, Fut, T, E>(&self, attempt: F) -> Result<T, E>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.run(&DefaultClassifier, Deadline::current(), true, attempt)
            .await
    }

    /// Like [`call`](Self::call), retrying the results `classifier` calls failures.
    pub async fn call_with<C, F, Fut, T, E>(&self, classifier: &C, attempt: F) -> Result<T, E>
    where
        C: Classify<T, E> + ?Sized,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.run(classifier, Deadline::current(), true, attempt)
            .await
    }

    /// The wait before retry number `retry` (1 for the first retry), with jitter.
    pub fn backoff(&self, retry: u32) -> Duration {
        let config = &self.inner.config;
        let exponent = i32::try_from(retry.saturating_sub(1)).unwrap_or(i32::MAX);
        let base = config.wait_duration.as_secs_f64()
            * config.exponential_backoff_multiplier.powi(exponent);
        let base = base.min(config.exponential_max_wait_duration.as_secs_f64());
        let factor = config.randomized_wait_factor;
        let wait = if factor > 0.0 && base > 0.0 {
            rand::rng().random_range(base * (1.0 - factor)..=base * (1.0 + factor))
        } else {
            base
        };
        Duration::try_from_secs_f64(wait).unwrap_or(config.exponential_max_wait_duration)
    }

    /// Counters so far.
    pub fn snapshot(&self) -> RetrySnapshot {
        let c = &self.inner.counts;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RetrySnapshot {
            name: self.inner.name.to_string(),
            successful_without_retry: get(&c.successful_without_retry),
            successful_with_retry: get(&c.successful_with_retry),
            failed_without_retry: get(&c.failed_without_retry),
            failed_with_retry: get(&c.failed_with_retry),
            retries: get(&c.retries),
            suppressed_by_budget: get(&c.budget_exhausted),
            suppressed_by_deadline: get(&c.deadline),
            suppressed_non_idempotent: get(&c.non_idempotent),
        }
    }

    /// The retry loop shared by the plain API and the tower layer.
    pub(crate) async fn run<C, F, Fut, T, E>(
        &self,
        classifier: &C,
        deadline: Option<Deadline>,
        may_retry: bool,
        mut attempt: F,
    ) -> Result<T, E>
    where
        C: Classify<T, E> + ?Sized,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let inner = &*self.inner;
        if let Some(budget) = &inner.budget {
            budget.deposit();
        }
        let mut retries = 0u32;
        loop {
            let result = attempt().await;
            let stop = match classifier.classify(&result) {
                Outcome::Failure => self.may_retry_after(retries + 1, deadline, may_retry),
                Outcome::Success => {
                    self.finish(true, retries);
                    return result;
                }
                Outcome::Ignored => {
                    self.finish(result.is_ok(), retries);
                    return result;
                }
            };
            match stop {
                Ok(wait) => {
                    tokio::time::sleep(wait).await;
                    retries += 1;
                    bump(&inner.counts.retries, &inner.metrics.retries);
                    tracing::debug!(retry = %inner.name, attempt = retries + 1, "retrying");
                }
                Err(stop) => {
                    let (counter, metric) = match stop {
                        Stop::Attempts => (None, None),
                        Stop::Budget => (
                            Some(&inner.counts.budget_exhausted),
                            Some(&inner.metrics.budget_exhausted),
                        ),
                        Stop::Deadline => {
                            (Some(&inner.counts.deadline), Some(&inner.metrics.deadline))
                        }
                        Stop::NonIdempotent => (
                            Some(&inner.counts.non_idempotent),
                            Some(&inner.metrics.non_idempotent),
                        ),
                    };
                    if let (Some(counter), Some(metric)) = (counter, metric) {
                        bump(counter, metric);
                    }
                    self.finish(false, retries);
                    return result;
                }
            }
        }
    }

    /// Whether retry number `retry` may happen, and after which wait.
    fn may_retry_after(
        &self,
        retry: u32,
        deadline: Option<Deadline>,
        may_retry: bool,
    ) -> Result<Duration, Stop> {
        let config = &self.inner.config;
        if retry >= config.max_attempts {
            return Err(Stop::Attempts);
        }
        if !may_retry {
            return Err(Stop::NonIdempotent);
        }
        let wait = self.backoff(retry);
        if let Some(deadline) = deadline {
            let start = Instant::now() + wait;
            if start + config.min_time_for_attempt >= deadline.instant() {
                return Err(Stop::Deadline);
            }
        }
        if let Some(budget) = &self.inner.budget
            && !budget.try_withdraw()
        {
            return Err(Stop::Budget);
        }
        Ok(wait)
    }

    fn finish(&self, succeeded: bool, retries: u32) {
        let inner = &*self.inner;
        let (counter, metric) = match (succeeded, retries > 0) {
            (true, false) => (
                &inner.counts.successful_without_retry,
                &inner.metrics.successful_without_retry,
            ),
            (true, true) => (
                &inner.counts.successful_with_retry,
                &inner.metrics.successful_with_retry,
            ),
            (false, false) => (
                &inner.counts.failed_without_retry,
                &inner.metrics.failed_without_retry,
            ),
            (false, true) => (
                &inner.counts.failed_with_retry,
                &inner.metrics.failed_with_retry,
            ),
        };
        bump(counter, metric);
    }
}

impl fmt::Debug for Retry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retry")
            .field("name", &self.inner.name)
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}
