//! Keyed token-bucket rate limiting for the gateway, with Spring Cloud Gateway's `RequestRateLimiter` semantics, in process or shared through Redis.
//!
//! The caller computes the key (client address, header, JWT subject, …) and the [`Rate`] of
//! the route; [`RateLimiter::check`] takes tokens from the bucket of `(route id, key)` in a
//! [`Store`] and answers a [`Decision`], whose [`headers`](Decision::headers) are Spring's
//! `X-RateLimit-*`. Two stores:
//!
//! - [`LocalStore`]: a sharded in-process map, refilled lazily from a monotonic clock, with
//!   idle buckets evicted and a bound on keys. Each instance has its own budget.
//! - [`RedisStore`]: one atomic Lua script over Spring's keys, timed by the Redis server, so
//!   several instances spend one budget. Each call is bounded by a timeout.
//!
//! When the store fails, the [`FailMode`] decides: `Open` lets the request through,
//! `Closed` refuses it; either way the decision says `degraded: true` (a gateway answers a
//! degraded refusal with 503, an ordinary one with 429). The crate's `README.md` states the
//! bucket rules.
//!
//! # Metrics
//! | name | type | labels |
//! |---|---|---|
//! | `keel_rate_limiter_requests_total` | counter | `route`, `outcome` = `allowed` \| `denied` \| `degraded` |
//! | `keel_rate_limiter_store_errors_total` | counter | `store` = `local` \| `redis` |

mod decision;
mod local;
mod rate;
mod redis_store;
mod store;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use metrics::counter;

pub use decision::{Decision, header};
pub use local::LocalStore;
pub use rate::{InvalidRate, Rate};
pub use redis_store::{RECONNECT_BACKOFF, RedisStore};
pub use store::{Store, StoreError, StoreFuture};

/// What a check answers when the store fails or times out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailMode {
    /// Allow the request (Spring's only behaviour): availability over the limit.
    Open,
    /// Refuse the request: the limit over availability.
    Closed,
}

/// Checks requests against per-key token buckets in one [`Store`]. Cloning shares it.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Box<dyn Store>,
    fail_mode: FailMode,
    /// Whether the last store call succeeded, to log failures once per outage.
    healthy: AtomicBool,
}

impl RateLimiter {
    /// A limiter over `store`, deciding by `fail_mode` when the store fails.
    pub fn new(store: impl Store, fail_mode: FailMode) -> Self {
        Self {
            inner: Arc::new(Inner {
                store: Box::new(store),
                fail_mode,
                healthy: AtomicBool::new(true),
            }),
        }
    }

    /// What happens when the store fails.
    pub fn fail_mode(&self) -> FailMode {
        self.inner.fail_mode
    }

    /// The store's name (`local`, `redis`).
    pub fn store_name(&self) -> &'static str {
        self.inner.store.name()
    }

    /// Takes `rate.requested_tokens()` from the bucket of `(route_id, key)`, or decides by
    /// the fail mode if the store fails. Never errors and never waits longer than the
    /// store's own bound.
    pub async fn check(&self, route_id: &str, key: &str, rate: &Rate) -> Decision {
        let store = &self.inner.store;
        let decision = match store.acquire(route_id, key, rate).await {
            Ok(decision) => {
                if !self.inner.healthy.swap(true, Ordering::Relaxed) {
                    tracing::info!(store = store.name(), "rate limiter store answers again");
                }
                decision
            }
            Err(e) => {
                counter!("keel_rate_limiter_store_errors_total", "store" => store.name())
                    .increment(1);
                let allowed = self.inner.fail_mode == FailMode::Open;
                if self.inner.healthy.swap(false, Ordering::Relaxed) {
                    tracing::warn!(
                        store = store.name(),
                        route = route_id,
                        fail_mode = ?self.inner.fail_mode,
                        error = %e,
                        "rate limiter store failed; deciding by the fail mode until it answers"
                    );
                } else {
                    tracing::debug!(store = store.name(), route = route_id, error = %e, "rate limiter store failed");
                }
                Decision::degraded(*rate, allowed)
            }
        };
        let outcome = match (decision.degraded, decision.allowed) {
            (true, _) => "degraded",
            (false, true) => "allowed",
            (false, false) => "denied",
        };
        counter!("keel_rate_limiter_requests_total", "route" => route_id.to_owned(), "outcome" => outcome)
            .increment(1);
        decision
    }
}

impl<S: Store + ?Sized> Store for Arc<S> {
    fn name(&self) -> &'static str {
        (**self).name()
    }

    fn acquire<'a>(&'a self, route_id: &'a str, key: &'a str, rate: &'a Rate) -> StoreFuture<'a> {
        (**self).acquire(route_id, key, rate)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use super::*;

    /// Fails every other call.
    #[derive(Debug, Default)]
    struct Flaky {
        calls: AtomicUsize,
    }

    impl Store for Flaky {
        fn name(&self) -> &'static str {
            "flaky"
        }

        fn acquire<'a>(&'a self, _: &'a str, _: &'a str, rate: &'a Rate) -> StoreFuture<'a> {
            let n = self.calls.fetch_add(1, Ordering::Relaxed);
            Box::pin(async move {
                if n % 2 == 1 {
                    Err(StoreError::Timeout(Duration::from_millis(5)))
                } else {
                    Ok(Decision::from_bucket(
                        *rate,
                        false,
                        0,
                        Some(Duration::from_secs(1)),
                    ))
                }
            })
        }
    }

    #[tokio::test]
    async fn fail_modes_decide_only_when_the_store_fails() {
        let rate = Rate::new(1, 1, 1).unwrap();
        for (mode, allowed_when_failing) in [(FailMode::Open, true), (FailMode::Closed, false)] {
            let limiter = RateLimiter::new(Flaky::default(), mode);
            assert_eq!(limiter.fail_mode(), mode);
            assert_eq!(limiter.store_name(), "flaky");

            let answered = limiter.check("r", "k", &rate).await;
            assert!(!answered.allowed && !answered.degraded);
            assert_eq!(answered.retry_after, Some(Duration::from_secs(1)));

            let failed = limiter.check("r", "k", &rate).await;
            assert!(failed.degraded);
            assert_eq!(failed.allowed, allowed_when_failing);
            assert_eq!((failed.remaining, failed.retry_after), (-1, None));

            let again = limiter.clone().check("r", "k", &rate).await;
            assert!(!again.degraded);
        }
    }

    #[tokio::test]
    async fn a_shared_store_is_one_budget() {
        let store = Arc::new(LocalStore::new());
        let open = RateLimiter::new(Arc::clone(&store), FailMode::Open);
        let closed = RateLimiter::new(Arc::clone(&store), FailMode::Closed);
        // Two requests fit; the next token takes 1 000 s.
        let rate = Rate::new(1, 2_000, 1_000).unwrap();
        assert!(open.check("r", "k", &rate).await.allowed);
        assert!(closed.check("r", "k", &rate).await.allowed);
        let third = open.check("r", "k", &rate).await;
        assert!(!third.allowed && !third.degraded);
        assert_eq!(store.len(), 1);
    }
}
