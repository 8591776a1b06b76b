//! Bulkhead: at most `max_concurrent_calls` calls at once, with an optional bounded wait for a
//! free slot; calls that find no slot in time are rejected with [`BulkheadFull`] and counted.
//!
//! # Metrics
//! | name | type | labels |
//! |---|---|---|
//! | `keel_bulkhead_rejected_calls_total` | counter | `name` |
//! | `keel_bulkhead_available_concurrent_calls` | gauge | `name` |

mod config;
mod error;
mod future;
mod layer;
mod service;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use metrics::{Counter, Gauge, counter, gauge};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub use config::BulkheadConfig;
pub use error::BulkheadFull;
pub use future::ResponseFuture;
pub use layer::BulkheadLayer;
pub use service::BulkheadService;

use crate::config::ConfigError;

/// A semaphore bulkhead (Resilience4j's `SemaphoreBulkhead`). Cloning shares it.
#[derive(Clone)]
pub struct Bulkhead {
    inner: Arc<Inner>,
}

struct Inner {
    name: Arc<str>,
    config: BulkheadConfig,
    semaphore: Arc<Semaphore>,
    rejected: AtomicU64,
    rejected_metric: Counter,
    available_metric: Gauge,
}

/// A slot in the bulkhead, freed when dropped.
pub struct BulkheadPermit {
    _permit: OwnedSemaphorePermit,
    bulkhead: Bulkhead,
}

impl Drop for BulkheadPermit {
    fn drop(&mut self) {
        // The semaphore permit is released after this body; count it as free already.
        let available = self.bulkhead.inner.semaphore.available_permits() + 1;
        self.bulkhead.inner.available_metric.set(available as f64);
    }
}

impl fmt::Debug for BulkheadPermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BulkheadPermit")
            .field("bulkhead", &self.bulkhead.inner.name)
            .finish()
    }
}

impl Bulkhead {
    /// A bulkhead named `name` (the `name` label of its metrics), after validating `config`.
    pub fn new(name: impl Into<String>, config: BulkheadConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let name: String = name.into();
        let permits = config.max_concurrent_calls as usize;
        let available_metric =
            gauge!("keel_bulkhead_available_concurrent_calls", "name" => name.clone());
        available_metric.set(permits as f64);
        Ok(Self {
            inner: Arc::new(Inner {
                rejected_metric: counter!("keel_bulkhead_rejected_calls_total", "name" => name.clone()),
                available_metric,
                name: name.into(),
                semaphore: Arc::new(Semaphore::new(permits)),
                config,
                rejected: AtomicU64::new(0),
            }),
        })
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The configuration.
    pub fn config(&self) -> &BulkheadConfig {
        &self.inner.config
    }

    /// Take a slot if one is free now (a rejection is counted).
    pub fn try_acquire(&self) -> Result<BulkheadPermit, BulkheadFull> {
        match self.inner.semaphore.clone().try_acquire_owned() {
            Ok(permit) => Ok(self.permit(permit)),
            Err(_) => Err(self.reject()),
        }
    }

    /// Take a slot, waiting up to `max_wait_duration` for one (in FIFO order).
    pub async fn acquire(&self) -> Result<BulkheadPermit, BulkheadFull> {
        if let Ok(permit) = self.inner.semaphore.clone().try_acquire_owned() {
            return Ok(self.permit(permit));
        }
        let wait = self.inner.config.max_wait_duration;
        if wait.is_zero() {
            return Err(self.reject());
        }
        match tokio::time::timeout(wait, self.inner.semaphore.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(self.permit(permit)),
            // Timed out (the semaphore is never closed).
            _ => Err(self.reject()),
        }
    }

    /// Run `future` in a slot.
    pub async fn call<F: Future>(&self, future: F) -> Result<F::Output, BulkheadFull> {
        let _permit = self.acquire().await?;
        Ok(future.await)
    }

    /// Free slots now.
    pub fn available_concurrent_calls(&self) -> usize {
        self.inner.semaphore.available_permits()
    }

    /// Calls rejected so far.
    pub fn rejected_calls(&self) -> u64 {
        self.inner.rejected.load(Ordering::Relaxed)
    }

    fn permit(&self, permit: OwnedSemaphorePermit) -> BulkheadPermit {
        self.inner
            .available_metric
            .set(self.inner.semaphore.available_permits() as f64);
        BulkheadPermit {
            _permit: permit,
            bulkhead: self.clone(),
        }
    }

    fn reject(&self) -> BulkheadFull {
        self.inner.rejected.fetch_add(1, Ordering::Relaxed);
        self.inner.rejected_metric.increment(1);
        BulkheadFull::new(self.inner.name.clone())
    }
}

impl fmt::Debug for Bulkhead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bulkhead")
            .field("name", &self.inner.name)
            .field("config", &self.inner.config)
            .field("available", &self.available_concurrent_calls())
            .finish()
    }
}

#[cfg(test)]
mod tests;
