//! Sliding windows that aggregate the outcomes of calls made in the CLOSED state.
//!
//! The count-based window is lock-free. Each call takes a sequence number (one `fetch_add`),
//! which picks a slot in a ring of `size` slots; the slot holds the outcome of the last call
//! that landed there, tagged with the window's generation. An aggregate word packs the
//! generation with the number of calls, failures and slow calls held by the ring, and is kept
//! equal to the sum of the slots: a call that replaces an outcome adds the difference with one
//! compare-and-swap. A call whose outcome equals the one it replaces (the steady state of a
//! healthy endpoint) only reads the slot, so the hot path is one contended `fetch_add`.
//!
//! A healthy endpoint needs even less: when the window is full of successes, another success
//! leaves it full of successes wherever the ring's head is, so the call only reads the
//! aggregate and writes nothing — no cache line bounces between cores however many threads
//! share the breaker. (Skipping the head advance is exact: every slot holds the same value, so
//! the ring is the same sequence from any starting point.)
//!
//! Resetting the window is a single store of a new generation with zero counts: slots tagged
//! with an older generation count as empty, so they never need clearing.
//!
//! Invariant (once in-flight records have finished): `aggregate == Σ slots of this generation`.
//! Between a slot swap and its aggregate update another thread may observe a count that is off
//! by the records in flight; a field can even be transiently "negative" (it wraps). Such
//! aggregates are recognised as invalid and not acted upon; the thread that completes the last
//! update always sees, and acts on, the exact value.
//!
//! The time-based window keeps one bucket per second behind a mutex, as Resilience4j does.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::config::{CircuitBreakerConfig, SlidingWindowType};
use crate::clock::Clock;

/// Calls, failures and slow calls currently in a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Aggregate {
    pub(crate) calls: u64,
    pub(crate) failures: u64,
    pub(crate) slow: u64,
}

impl Aggregate {
    fn add(&mut self, failure: bool, slow: bool) {
        self.calls += 1;
        self.failures += u64::from(failure);
        self.slow += u64::from(slow);
    }

    fn sub(&mut self, other: &Aggregate) {
        self.calls -= other.calls;
        self.failures -= other.failures;
        self.slow -= other.slow;
    }
}

/// The largest count-based window (counts are packed in 16-bit fields with headroom).
pub(crate) const MAX_COUNT_WINDOW: u32 = 16_383;
/// The largest time-based window, in seconds.
pub(crate) const MAX_TIME_WINDOW_SECONDS: u32 = 3_600;

#[derive(Debug)]
pub(crate) enum Window {
    Count(CountWindow),
    Time(Mutex<TimeWindow>),
}

impl Window {
    pub(crate) fn new(config: &CircuitBreakerConfig) -> Self {
        match config.sliding_window_type {
            SlidingWindowType::CountBased => {
                Window::Count(CountWindow::new(config.sliding_window_size))
            }
            SlidingWindowType::TimeBased => {
                Window::Time(Mutex::new(TimeWindow::new(config.sliding_window_size)))
            }
        }
    }

    /// Record one outcome. Returns the window's generation and new aggregate when the aggregate
    /// changed and is exact enough to act on.
    #[inline]
    pub(crate) fn record(
        &self,
        failure: bool,
        slow: bool,
        clock: &Clock,
    ) -> Option<(u16, Aggregate)> {
        match self {
            Window::Count(w) => w.record(failure, slow),
            Window::Time(w) => {
                let second = clock.now_nanos() / 1_000_000_000;
                Some(lock(w).record(second, failure, slow))
            }
        }
    }

    /// Empty the window; returns the new generation.
    pub(crate) fn reset(&self) -> u16 {
        match self {
            Window::Count(w) => w.reset(),
            Window::Time(w) => lock(w).reset(),
        }
    }

    pub(crate) fn generation(&self) -> u16 {
        match self {
            Window::Count(w) => unpack(w.hot.agg.load(Ordering::Acquire)).0,
            Window::Time(w) => lock(w).generation,
        }
    }

    /// The current aggregate (for snapshots).
    pub(crate) fn aggregate(&self, clock: &Clock) -> Aggregate {
        match self {
            Window::Count(w) => w.aggregate(),
            Window::Time(w) => {
                let second = clock.now_nanos() / 1_000_000_000;
                let mut w = lock(w);
                w.advance(second);
                w.total
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

// ---- count-based window ----------------------------------------------------------------------

const PRESENT: u32 = 1 << 16;
const FAILURE: u32 = 1 << 17;
const SLOW: u32 = 1 << 18;
const MASK: u64 = 0xFFFF;

/// The words written on every call, kept on their own cache line.
#[derive(Debug)]
#[repr(align(64))]
struct Hot {
    /// Sequence number of the next call; wraps at 2^32 (a negligible reordering once per 4
    /// billion calls, never an inconsistency).
    head: AtomicU32,
    /// `generation << 48 | calls << 32 | failures << 16 | slow`.
    agg: AtomicU64,
}

#[derive(Debug)]
pub(crate) struct CountWindow {
    hot: Hot,
    size: u32,
    /// Lemire's fastmod constant for `size`.
    fastmod: u64,
    slots: Box<[AtomicU32]>,
}

#[inline]
fn pack(generation: u16, calls: u64, failures: u64, slow: u64) -> u64 {
    u64::from(generation) << 48 | (calls & MASK) << 32 | (failures & MASK) << 16 | (slow & MASK)
}

#[inline]
fn unpack(word: u64) -> (u16, u64, u64, u64) {
    (
        (word >> 48) as u16,
        (word >> 32) & MASK,
        (word >> 16) & MASK,
        word & MASK,
    )
}

#[inline]
fn slot_value(generation: u16, failure: bool, slow: bool) -> u32 {
    u32::from(generation)
        | PRESENT
        | if failure { FAILURE } else { 0 }
        | if slow { SLOW } else { 0 }
}

impl CountWindow {
    pub(crate) fn new(size: u32) -> Self {
        let size = size.clamp(1, MAX_COUNT_WINDOW);
        Self {
            hot: Hot {
                head: AtomicU32::new(0),
                agg: AtomicU64::new(0),
            },
            size,
            fastmod: (u64::MAX / u64::from(size)).wrapping_add(1),
            slots: (0..size).map(|_| AtomicU32::new(0)).collect(),
        }
    }

    /// `seq % size` without a division.
    #[inline]
    fn index(&self, seq: u32) -> usize {
        let low = self.fastmod.wrapping_mul(u64::from(seq));
        ((u128::from(low) * u128::from(self.size)) >> 64) as usize
    }

    #[inline]
    fn record(&self, failure: bool, slow: bool) -> Option<(u16, Aggregate)> {
        let agg = self.hot.agg.load(Ordering::Relaxed);
        if !failure && !slow && agg & 0xFFFF_FFFF_FFFF == u64::from(self.size) << 32 {
            // Full of successes, and this is one more: nothing changes.
            return None;
        }
        self.record_in_ring(failure, slow)
    }

    #[inline]
    fn record_in_ring(&self, failure: bool, slow: bool) -> Option<(u16, Aggregate)> {
        let seq = self.hot.head.fetch_add(1, Ordering::Relaxed);
        let generation = (self.hot.agg.load(Ordering::Relaxed) >> 48) as u16;
        let new = slot_value(generation, failure, slow);
        let slot = &self.slots[self.index(seq)];
        if slot.load(Ordering::Relaxed) == new {
            // Same outcome as the call it replaces: the aggregate does not change.
            return None;
        }
        let old = slot.swap(new, Ordering::Relaxed);
        if old == new {
            return None;
        }
        self.apply(old, new)
    }

    #[cold]
    fn apply(&self, old: u32, new: u32) -> Option<(u16, Aggregate)> {
        let mut current = self.hot.agg.load(Ordering::Relaxed);
        loop {
            let (generation, mut calls, mut failures, mut slow) = unpack(current);
            for (value, sign) in [(old, MASK), (new, 1)] {
                // `sign` is +1, or -1 as a 16-bit two's complement; fields wrap independently.
                if value & PRESENT != 0 && value as u16 == generation {
                    calls = calls.wrapping_add(sign) & MASK;
                    if value & FAILURE != 0 {
                        failures = failures.wrapping_add(sign) & MASK;
                    }
                    if value & SLOW != 0 {
                        slow = slow.wrapping_add(sign) & MASK;
                    }
                }
            }
            let next = pack(generation, calls, failures, slow);
            if next == current {
                return None;
            }
            match self.hot.agg.compare_exchange_weak(
                current,
                next,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    let valid = calls <= u64::from(self.size) && failures <= calls && slow <= calls;
                    return valid.then_some((
                        generation,
                        Aggregate {
                            calls,
                            failures,
                            slow,
                        },
                    ));
                }
                Err(actual) => current = actual,
            }
        }
    }

    fn reset(&self) -> u16 {
        let generation = unpack(self.hot.agg.load(Ordering::Acquire))
            .0
            .wrapping_add(1);
        self.hot
            .agg
            .store(pack(generation, 0, 0, 0), Ordering::Release);
        generation
    }

    fn aggregate(&self) -> Aggregate {
        let size = u64::from(self.size);
        let mut word = self.hot.agg.load(Ordering::Acquire);
        for _ in 0..64 {
            let (_, calls, failures, slow) = unpack(word);
            if calls <= size && failures <= calls && slow <= calls {
                return Aggregate {
                    calls,
                    failures,
                    slow,
                };
            }
            std::hint::spin_loop();
            word = self.hot.agg.load(Ordering::Acquire);
        }
        let (_, calls, failures, slow) = unpack(word);
        let calls = calls.min(size);
        Aggregate {
            calls,
            failures: failures.min(calls),
            slow: slow.min(calls),
        }
    }

    /// Recompute the aggregate from the slots (tests only: exact when no call is in flight).
    #[cfg(test)]
    pub(crate) fn recount(&self) -> Aggregate {
        let generation = unpack(self.hot.agg.load(Ordering::Acquire)).0;
        let mut agg = Aggregate::default();
        for slot in self.slots.iter() {
            let v = slot.load(Ordering::Acquire);
            if v & PRESENT != 0 && v as u16 == generation {
                agg.add(v & FAILURE != 0, v & SLOW != 0);
            }
        }
        agg
    }
}

// ---- time-based window -----------------------------------------------------------------------

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    second: u64,
    agg: Aggregate,
}

#[derive(Debug)]
pub(crate) struct TimeWindow {
    generation: u16,
    buckets: Box<[Bucket]>,
    total: Aggregate,
    head_second: u64,
}

impl TimeWindow {
    fn new(seconds: u32) -> Self {
        let n = seconds.clamp(1, MAX_TIME_WINDOW_SECONDS) as usize;
        Self {
            generation: 0,
            buckets: vec![Bucket::default(); n].into_boxed_slice(),
            total: Aggregate::default(),
            head_second: 0,
        }
    }

    /// Move the window so that it ends at `second`, dropping buckets that fell out.
    fn advance(&mut self, second: u64) {
        if second <= self.head_second {
            return;
        }
        let n = self.buckets.len() as u64;
        let first = (self.head_second + 1).max(second.saturating_sub(n - 1));
        for s in first..=second {
            let bucket = &mut self.buckets[(s % n) as usize];
            self.total.sub(&bucket.agg);
            *bucket = Bucket {
                second: s,
                agg: Aggregate::default(),
            };
        }
        if second - self.head_second >= n {
            // Everything fell out; the loop above cleared every bucket.
            debug_assert_eq!(self.total, Aggregate::default());
        }
        self.head_second = second;
    }

    fn record(&mut self, second: u64, failure: bool, slow: bool) -> (u16, Aggregate) {
        self.advance(second);
        let n = self.buckets.len() as u64;
        // A record for a second the window already moved past lands in the newest bucket.
        let bucket = &mut self.buckets[(self.head_second % n) as usize];
        debug_assert_eq!(bucket.second, self.head_second);
        bucket.agg.add(failure, slow);
        self.total.add(failure, slow);
        (self.generation, self.total)
    }

    fn reset(&mut self) -> u16 {
        self.generation = self.generation.wrapping_add(1);
        self.buckets.fill(Bucket::default());
        self.total = Aggregate::default();
        self.head_second = 0;
        self.generation
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn fastmod_matches_modulo() {
        for size in [1u32, 2, 3, 7, 10, 20, 100, 1000, 16_383] {
            let w = CountWindow::new(size);
            for seq in (0..5000u32).chain([u32::MAX - 3, u32::MAX - 1, u32::MAX]) {
                assert_eq!(w.index(seq), (seq % size) as usize, "size {size} seq {seq}");
            }
        }
    }

    #[test]
    fn count_window_keeps_last_n() {
        let w = CountWindow::new(4);
        let outcomes = [true, true, false, false, false, true, false];
        let mut last = None;
        for f in outcomes {
            if let Some((_, agg)) = w.record(f, false) {
                last = Some(agg);
            }
        }
        // last four: false, false, true, false
        assert_eq!(
            w.aggregate(),
            Aggregate {
                calls: 4,
                failures: 1,
                slow: 0
            }
        );
        assert_eq!(last, Some(w.aggregate()));
        assert_eq!(w.recount(), w.aggregate());
    }

    #[test]
    fn successes_into_a_window_full_of_successes_write_nothing() {
        let w = CountWindow::new(3);
        for _ in 0..3 {
            w.record(false, false);
        }
        let head = w.hot.head.load(Ordering::Relaxed);
        for _ in 0..10 {
            assert_eq!(w.record(false, false), None);
        }
        assert_eq!(
            w.hot.head.load(Ordering::Relaxed),
            head,
            "no write on the fast path"
        );
        // The ring behaves as if the head had moved: the next three outcomes replace all three.
        w.record(true, false);
        assert_eq!(
            w.aggregate(),
            Aggregate {
                calls: 3,
                failures: 1,
                slow: 0
            }
        );
        w.record(true, false);
        w.record(true, false);
        assert_eq!(
            w.aggregate(),
            Aggregate {
                calls: 3,
                failures: 3,
                slow: 0
            }
        );
        w.record(false, true);
        assert_eq!(
            w.aggregate(),
            Aggregate {
                calls: 3,
                failures: 2,
                slow: 1
            }
        );
        assert_eq!(w.recount(), w.aggregate());
    }

    #[test]
    fn reset_forgets_slots_without_clearing_them() {
        let w = CountWindow::new(3);
        for _ in 0..3 {
            w.record(true, true);
        }
        assert_eq!(
            w.aggregate(),
            Aggregate {
                calls: 3,
                failures: 3,
                slow: 3
            }
        );
        w.reset();
        assert_eq!(w.aggregate(), Aggregate::default());
        assert_eq!(
            w.record(false, false).map(|r| r.1),
            Some(Aggregate {
                calls: 1,
                failures: 0,
                slow: 0
            })
        );
        assert_eq!(w.recount(), w.aggregate());
    }

    #[test]
    fn concurrent_records_stay_exact() {
        let w = Arc::new(CountWindow::new(1000));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let w = w.clone();
                std::thread::spawn(move || {
                    for i in 0..20_000u32 {
                        w.record((i + t) % 3 == 0, i % 5 == 0);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(w.aggregate(), w.recount());
        assert_eq!(w.aggregate().calls, 1000);
    }

    #[test]
    fn time_window_drops_old_seconds() {
        let mut w = TimeWindow::new(3);
        w.record(0, true, false);
        w.record(1, false, false);
        w.record(2, true, true);
        assert_eq!(
            w.total,
            Aggregate {
                calls: 3,
                failures: 2,
                slow: 1
            }
        );
        w.advance(3);
        assert_eq!(
            w.total,
            Aggregate {
                calls: 2,
                failures: 1,
                slow: 1
            }
        );
        w.advance(100);
        assert_eq!(w.total, Aggregate::default());
        w.record(100, true, false);
        assert_eq!(
            w.total,
            Aggregate {
                calls: 1,
                failures: 1,
                slow: 0
            }
        );
    }
}
