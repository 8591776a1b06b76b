//! The in-process store: buckets in a sharded map, refilled lazily from a monotonic clock.
//!
//! Tokens are counted in billionths (1 token = 10⁹ nano-tokens), so a refill of
//! `elapsed_ns × replenish_rate` nano-tokens is exact integer arithmetic. The clock is
//! [`tokio::time::Instant`], which follows tokio's paused clock in tests.
//!
//! Memory stays bounded two ways. A bucket idle long enough to be full again is the same as
//! one never seen, so it is dropped without changing any answer: each shard sweeps such
//! buckets at most once a second when a new key arrives ([`LocalStore::evict_idle`] sweeps
//! all of them on demand). And each shard holds at most its share of
//! [`LocalStore::with_max_keys`]: at that size, a new key first evicts the least recently
//! used sixteenth of the shard — those keys start again with full buckets, so under that
//! pressure the limiter errs toward allowing.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::store::{Store, StoreFuture};
use crate::{Decision, Rate};

/// Nano-tokens per token, and nanoseconds per second.
const NANOS: u64 = 1_000_000_000;
/// Shards of the map (a power of two); a call locks one.
const SHARDS: usize = 32;
/// How often a shard sweeps buckets that are full again.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// A bucket store in this process: each gateway instance has its own budget.
///
/// A lookup locks one of 32 shards for a few hundred nanoseconds; nothing is awaited while
/// it is held.
#[derive(Debug)]
pub struct LocalStore {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    max_per_shard: usize,
}

#[derive(Debug, Default)]
struct Shard {
    /// route id → key → bucket, so lookups by `&str` allocate nothing.
    routes: HashMap<Box<str>, HashMap<Box<str>, Bucket>>,
    len: usize,
    last_sweep: Option<Instant>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Nano-tokens held at `updated`.
    nanotokens: u64,
    /// Last time tokens were counted (every check, allowed or not).
    updated: Instant,
    /// When the bucket is full again if left alone.
    full_at: Instant,
}

impl LocalStore {
    /// The default bound on buckets held, [`LocalStore::new`]'s.
    pub const DEFAULT_MAX_KEYS: usize = 100_000;

    /// A store holding at most about [`Self::DEFAULT_MAX_KEYS`] buckets.
    pub fn new() -> Self {
        Self::with_max_keys(Self::DEFAULT_MAX_KEYS)
    }

    /// A store holding at most about `max_keys` buckets (rounded up to a multiple of the
    /// shard count, 32).
    pub fn with_max_keys(max_keys: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            max_per_shard: max_keys.div_ceil(SHARDS).max(1),
        }
    }

    /// Takes `rate.requested_tokens()` from the bucket of `(route_id, key)` if it holds that
    /// many. Never fails.
    pub fn try_acquire(&self, route_id: &str, key: &str, rate: &Rate) -> Decision {
        let now = Instant::now();
        if rate.burst_capacity() == 0 {
            // Spring's "deny all": nothing to remember (its script writes nothing either).
            return Decision::from_bucket(*rate, false, 0, None);
        }
        let mut shard = self.shard(route_id, key);
        let bucket = shard.bucket(route_id, key, rate, now, self.max_per_shard);
        bucket.take(rate, now)
    }

    /// Buckets held.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len).sum()
    }

    /// Whether no bucket is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops every bucket that is full again now (such a bucket answers like one never
    /// seen). Calls do this per shard on their own; this is for callers that want memory
    /// back at once.
    pub fn evict_idle(&self) {
        let now = Instant::now();
        for shard in self.shards.iter() {
            lock(shard).evict_full(now);
        }
    }

    fn shard(&self, route_id: &str, key: &str) -> MutexGuard<'_, Shard> {
        let mut h = self.hasher.build_hasher();
        route_id.hash(&mut h);
        key.hash(&mut h);
        // SHARDS is a power of two; the low bits of the hash pick the shard.
        let index = (h.finish() as usize) & (SHARDS - 1);
        lock(&self.shards[index])
    }
}

impl Default for LocalStore {
    fn default() -> Self {
        Self::new()
    }
}

impl Store for LocalStore {
    fn name(&self) -> &'static str {
        "local"
    }

    fn acquire<'a>(&'a self, route_id: &'a str, key: &'a str, rate: &'a Rate) -> StoreFuture<'a> {
        Box::pin(std::future::ready(
            Ok(self.try_acquire(route_id, key, rate)),
        ))
    }
}

fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    // A panic while holding the lock cannot leave a bucket half-written (each is one
    // assignment), so the data behind a poisoned lock is still good.
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shard {
    /// The bucket of `(route_id, key)`, created full if absent.
    fn bucket(
        &mut self,
        route_id: &str,
        key: &str,
        rate: &Rate,
        now: Instant,
        max: usize,
    ) -> &mut Bucket {
        let exists = self
            .routes
            .get(route_id)
            .is_some_and(|keys| keys.contains_key(key));
        if !exists {
            self.make_room(now, max);
            let full = Bucket {
                nanotokens: nanotokens(rate.burst_capacity()),
                updated: now,
                full_at: now,
            };
            match self.routes.get_mut(route_id) {
                Some(keys) => {
                    keys.insert(key.into(), full);
                }
                None => {
                    self.routes
                        .insert(route_id.into(), HashMap::from([(key.into(), full)]));
                }
            }
            self.len += 1;
        }
        self.routes
            .get_mut(route_id)
            .and_then(|keys| keys.get_mut(key))
            .expect("the bucket exists or was just inserted")
    }

    /// Before a new key goes in: sweep full buckets when a sweep is due, then evict the least
    /// recently used if the shard is still at its bound.
    fn make_room(&mut self, now: Instant, max: usize) {
        let due = self
            .last_sweep
            .is_none_or(|last| now.saturating_duration_since(last) >= SWEEP_INTERVAL);
        if due {
            self.evict_full(now);
        }
        if self.len >= max {
            self.evict_least_recent((max / 16).max(1));
        }
    }

    fn evict_full(&mut self, now: Instant) {
        self.retain(|bucket| bucket.full_at > now);
        self.last_sweep = Some(now);
    }

    /// Drops `count` buckets (or all, if fewer), the least recently checked first.
    fn evict_least_recent(&mut self, count: usize) {
        let mut times: Vec<Instant> = self
            .routes
            .values()
            .flat_map(|keys| keys.values().map(|b| b.updated))
            .collect();
        if times.len() <= count {
            self.retain(|_| false);
            return;
        }
        let (_, &mut cutoff, _) = times.select_nth_unstable(count - 1);
        // Everything older than the cutoff goes; ties at the cutoff go until `count` are gone.
        let older = times.iter().filter(|&&t| t < cutoff).count();
        let mut ties = count - older;
        self.retain(|bucket| {
            if bucket.updated < cutoff {
                false
            } else if bucket.updated == cutoff && ties > 0 {
                ties -= 1;
                false
            } else {
                true
            }
        });
    }

    fn retain(&mut self, mut keep: impl FnMut(&Bucket) -> bool) {
        let mut len = 0;
        self.routes.retain(|_, keys| {
            keys.retain(|_, bucket| keep(bucket));
            len += keys.len();
            !keys.is_empty()
        });
        self.len = len;
    }
}

impl Bucket {
    /// Refills for the time since the last check, then takes the requested tokens if there
    /// are enough. The same rules as the Redis script, in integers.
    fn take(&mut self, rate: &Rate, now: Instant) -> Decision {
        let per_sec = u64::from(rate.replenish_rate());
        let capacity = nanotokens(rate.burst_capacity());
        let requested = nanotokens(rate.requested_tokens());

        // Nanoseconds × tokens per second = nano-tokens, exactly.
        let elapsed = now.saturating_duration_since(self.updated).as_nanos();
        let refill = elapsed.saturating_mul(u128::from(per_sec));
        let filled = (u128::from(self.nanotokens) + refill).min(u128::from(capacity));
        let filled = u64::try_from(filled).unwrap_or(capacity);

        let allowed = filled >= requested;
        let left = if allowed { filled - requested } else { filled };
        self.nanotokens = left;
        self.updated = now;
        self.full_at = later(now, (capacity - left).div_ceil(per_sec));

        let retry_after = (!allowed && requested <= capacity)
            .then(|| Duration::from_nanos((requested - filled).div_ceil(per_sec)));
        let remaining = i64::try_from(left / NANOS).unwrap_or(i64::MAX);
        Decision::from_bucket(*rate, allowed, remaining, retry_after)
    }
}

fn nanotokens(tokens: u32) -> u64 {
    // u32::MAX × 10⁹ < u64::MAX.
    u64::from(tokens) * NANOS
}

fn later(now: Instant, nanos: u64) -> Instant {
    let wait = Duration::from_nanos(nanos);
    now.checked_add(wait)
        .unwrap_or_else(|| now + Duration::from_secs(86_400 * 365 * 30))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::time::advance;

    use super::*;

    fn rate(replenish: u32, burst: u32, requested: u32) -> Rate {
        Rate::new(replenish, burst, requested).unwrap()
    }

    /// `(allowed, remaining)` of `n` calls.
    fn take_n(store: &LocalStore, key: &str, rate: &Rate, n: usize) -> Vec<(bool, i64)> {
        (0..n)
            .map(|_| {
                let d = store.try_acquire("route", key, rate);
                assert!(!d.degraded);
                (d.allowed, d.remaining)
            })
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn burst_then_deny() {
        let store = LocalStore::new();
        let r = rate(10, 10, 1);
        let got = take_n(&store, "k", &r, 10);
        let want: Vec<_> = (0..10).rev().map(|left| (true, left)).collect();
        assert_eq!(got, want);

        let denied = store.try_acquire("route", "k", &r);
        assert!(!denied.allowed);
        assert_eq!(denied.remaining, 0);
        assert_eq!(denied.retry_after, Some(Duration::from_millis(100)));
        assert_eq!(denied.rate, r);
    }

    #[tokio::test(start_paused = true)]
    async fn refills_over_time_up_to_the_burst() {
        let store = LocalStore::new();
        let r = rate(10, 20, 1);
        assert!(take_n(&store, "k", &r, 20).iter().all(|(ok, _)| *ok));
        assert!(!store.try_acquire("route", "k", &r).allowed);

        // One token every 100 ms; 99 ms is not enough.
        advance(Duration::from_millis(99)).await;
        let d = store.try_acquire("route", "k", &r);
        assert!(!d.allowed);
        assert_eq!(d.retry_after, Some(Duration::from_millis(1)));
        advance(Duration::from_millis(1)).await;
        assert_eq!(take_n(&store, "k", &r, 2), vec![(true, 0), (false, 0)]);

        // Half a second gives five.
        advance(Duration::from_millis(500)).await;
        let got = take_n(&store, "k", &r, 6);
        assert_eq!(got.iter().filter(|(ok, _)| *ok).count(), 5);

        // A long pause refills to the burst capacity, not beyond.
        advance(Duration::from_secs(60)).await;
        let got = take_n(&store, "k", &r, 21);
        assert_eq!(got[0], (true, 19));
        assert_eq!(got.iter().filter(|(ok, _)| *ok).count(), 20);
    }

    #[tokio::test(start_paused = true)]
    async fn requested_tokens_above_one() {
        let store = LocalStore::new();
        let r = rate(10, 20, 3);
        let got = take_n(&store, "k", &r, 7);
        assert_eq!(
            got,
            vec![
                (true, 17),
                (true, 14),
                (true, 11),
                (true, 8),
                (true, 5),
                (true, 2),
                (false, 2)
            ]
        );
        // One more token is missing: 100 ms.
        let d = store.try_acquire("route", "k", &r);
        assert_eq!(d.retry_after, Some(Duration::from_millis(100)));

        // Spring's recipe for one request per minute.
        let per_minute = rate(1, 60, 60);
        assert_eq!(
            take_n(&store, "slow", &per_minute, 2),
            vec![(true, 0), (false, 0)]
        );
        advance(Duration::from_secs(59)).await;
        let d = store.try_acquire("route", "slow", &per_minute);
        assert!(!d.allowed);
        assert_eq!(d.remaining, 59);
        assert_eq!(d.retry_after, Some(Duration::from_secs(1)));
        advance(Duration::from_secs(1)).await;
        assert!(store.try_acquire("route", "slow", &per_minute).allowed);
    }

    #[tokio::test(start_paused = true)]
    async fn keys_and_routes_are_independent() {
        let store = LocalStore::new();
        let r = rate(1, 2, 1);
        assert_eq!(
            take_n(&store, "a", &r, 3),
            vec![(true, 1), (true, 0), (false, 0)]
        );
        assert_eq!(
            take_n(&store, "b", &r, 3),
            vec![(true, 1), (true, 0), (false, 0)]
        );
        let other_route = store.try_acquire("other", "a", &r);
        assert!(other_route.allowed);
        assert_eq!(other_route.remaining, 1);
        assert_eq!(store.len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn burst_zero_denies_and_oversized_requests_never_pass() {
        let store = LocalStore::new();
        let deny_all = rate(5, 0, 1);
        for _ in 0..3 {
            let d = store.try_acquire("route", "k", &deny_all);
            assert!(!d.allowed);
            assert_eq!((d.remaining, d.retry_after), (0, None));
        }
        assert!(store.is_empty(), "deny-all keeps no state");

        let oversized = rate(1, 5, 6);
        let d = store.try_acquire("route", "k", &oversized);
        assert!(!d.allowed);
        assert_eq!((d.remaining, d.retry_after), (5, None));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_buckets_are_evicted() {
        let store = LocalStore::new();
        let r = rate(10, 10, 1);
        for i in 0..1_000 {
            assert!(store.try_acquire("route", &format!("old-{i}"), &r).allowed);
        }
        assert_eq!(store.len(), 1_000);

        // 50 ms later the buckets still miss tokens: nothing may go.
        advance(Duration::from_millis(50)).await;
        store.evict_idle();
        assert_eq!(store.len(), 1_000);

        // A bucket refills one token in 100 ms; then it is the same as a new one.
        advance(Duration::from_millis(50)).await;
        store.evict_idle();
        assert!(store.is_empty());

        // Without an explicit sweep: new keys a second later sweep their shards.
        for i in 0..1_000 {
            store.try_acquire("route", &format!("old-{i}"), &r);
        }
        advance(Duration::from_secs(2)).await;
        for i in 0..1_000 {
            store.try_acquire("route", &format!("new-{i}"), &r);
        }
        assert_eq!(store.len(), 1_000, "only the new keys are left");

        // An evicted key answers as a kept one would have: a full bucket.
        let d = store.try_acquire("route", "old-0", &r);
        assert_eq!((d.allowed, d.remaining), (true, 9));
    }

    #[tokio::test(start_paused = true)]
    async fn max_keys_bounds_memory() {
        let store = LocalStore::with_max_keys(64);
        // A long fill time: no bucket becomes idle during the test.
        let r = rate(1, 1_000, 1);
        for i in 0..10_000 {
            assert!(store.try_acquire("route", &format!("k{i}"), &r).allowed);
            advance(Duration::from_micros(1)).await;
        }
        assert!(store.len() <= 64, "{} buckets held", store.len());
        assert!(store.len() >= 32, "{} buckets held", store.len());
    }

    #[test]
    fn least_recent_eviction_keeps_the_newest() {
        let start = Instant::now();
        let mut shard = Shard::default();
        // Ten tokens taken: each bucket stays short of full for ten seconds.
        let r = rate(1, 100, 10);
        let mut check = |key: &str, at: u64| {
            let now = start + Duration::from_secs(at);
            shard
                .bucket("route", key, &r, now, usize::MAX)
                .take(&r, now);
        };
        for i in 0..10 {
            check(&format!("k{i}"), i);
        }
        check("tie", 0);
        assert_eq!(shard.len, 11);

        // Two buckets tie for oldest; evicting one takes exactly one of them.
        shard.evict_least_recent(1);
        assert_eq!(shard.len, 10);
        shard.evict_least_recent(2);
        assert_eq!(shard.len, 8);
        let keys = &shard.routes["route"];
        for i in 2..10 {
            assert!(keys.contains_key(format!("k{i}").as_str()), "k{i} evicted");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_checks_allow_exactly_the_budget() {
        let store = Arc::new(LocalStore::new());
        // 100 requests of 1 000 tokens fit; the next token takes 1 000 s to come.
        let r = rate(1, 100_000, 1_000);
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let store = Arc::clone(&store);
            tasks.spawn(async move {
                let mut allowed = 0;
                for _ in 0..50 {
                    if store.try_acquire("route", "shared", &r).allowed {
                        allowed += 1;
                    }
                    tokio::task::yield_now().await;
                }
                allowed
            });
        }
        let mut allowed = 0;
        while let Some(n) = tasks.join_next().await {
            allowed += n.unwrap();
        }
        assert_eq!(allowed, 100);
    }
}
