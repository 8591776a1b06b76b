use std::fmt;
use std::sync::{Mutex, PoisonError};

use super::RetryBudgetConfig;
use crate::clock::{Clock, duration_nanos};

const BUCKETS: usize = 10;

/// Counts calls and retries over a sliding period and says whether one more retry fits.
///
/// The period is split in ten buckets; a bucket is emptied when the period moves past it.
pub struct RetryBudget {
    ratio: f64,
    reserve: f64,
    bucket_nanos: u64,
    clock: Clock,
    buckets: Mutex<[Bucket; BUCKETS]>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    epoch: u64,
    deposits: u64,
    withdrawals: u64,
}

impl RetryBudget {
    /// A budget for `config` (not validated here).
    pub fn new(config: &RetryBudgetConfig) -> Self {
        Self {
            ratio: config.retry_ratio,
            reserve: f64::from(config.min_retries_per_second) * config.ttl.as_secs_f64(),
            bucket_nanos: (duration_nanos(config.ttl) / BUCKETS as u64).max(1),
            clock: Clock::new(),
            buckets: Mutex::new([Bucket::default(); BUCKETS]),
        }
    }

    fn with_current<R>(&self, f: impl FnOnce(&mut [Bucket; BUCKETS], usize) -> R) -> R {
        let epoch = self.clock.now_nanos() / self.bucket_nanos;
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let index = (epoch % BUCKETS as u64) as usize;
        if buckets[index].epoch != epoch {
            buckets[index] = Bucket {
                epoch,
                ..Bucket::default()
            };
        }
        for bucket in buckets.iter_mut() {
            if epoch.saturating_sub(bucket.epoch) >= BUCKETS as u64 {
                *bucket = Bucket::default();
            }
        }
        f(&mut buckets, index)
    }

    /// Count one call.
    pub fn deposit(&self) {
        self.with_current(|buckets, i| buckets[i].deposits += 1);
    }

    /// Take one retry from the budget, if it has room.
    pub fn try_withdraw(&self) -> bool {
        self.with_current(|buckets, i| {
            let (deposits, withdrawals) = buckets
                .iter()
                .fold((0, 0), |(d, w), b| (d + b.deposits, w + b.withdrawals));
            let balance = self.reserve + self.ratio * deposits as f64 - withdrawals as f64;
            if balance >= 1.0 {
                buckets[i].withdrawals += 1;
                true
            } else {
                false
            }
        })
    }
}

impl fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryBudget")
            .field("ratio", &self.ratio)
            .field("reserve", &self.reserve)
            .finish_non_exhaustive()
    }
}
