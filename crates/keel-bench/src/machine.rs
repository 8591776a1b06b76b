//! How much CPU time the machine itself takes away. On a virtual machine the hypervisor can
//! deschedule a virtual CPU for milliseconds at a time; at a few thousand requests a second
//! such stalls, not the software measured, set the 99th percentile. The probe keeps every
//! core busy with a thread reading the clock and records the gaps, so a report can say how
//! noisy the machine was beside its tail figures.

use std::time::{Duration, Instant};

/// A gap between two clock readings at least this long counts as a stall.
const STALL: Duration = Duration::from_micros(200);

/// What the probe saw.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Stalls {
    /// How long the probe ran.
    pub span: Duration,
    /// Stalls seen, over all cores.
    pub count: usize,
    /// The longest one.
    pub longest: Duration,
    /// Time lost to stalls, as a share of the probe's CPU time (span × cores).
    pub lost: f64,
}

impl Stalls {
    /// One line for a report.
    pub fn line(&self) -> String {
        format!(
            "machine check: with every core busy for {:.1} s, the CPUs were taken away {} times for ≥ {} µs (longest {:.1} ms, {:.2} % of the time); p99 figures below include such stalls",
            self.span.as_secs_f64(),
            self.count,
            STALL.as_micros(),
            self.longest.as_secs_f64() * 1e3,
            self.lost * 100.0
        )
    }
}

/// Spins one thread per core for `span`, recording gaps between clock readings. Blocks for
/// `span`; call it from a blocking task.
pub fn probe(span: Duration) -> Stalls {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads: Vec<_> = (0..cores)
        .map(|_| std::thread::spawn(move || gaps(span)))
        .collect();
    let mut all = Stalls {
        span,
        ..Stalls::default()
    };
    let mut lost = Duration::ZERO;
    for t in threads {
        let Ok((count, longest, sum)) = t.join() else {
            continue;
        };
        all.count += count;
        all.longest = all.longest.max(longest);
        lost += sum;
    }
    all.lost = lost.as_secs_f64() / (span.as_secs_f64() * cores as f64).max(1e-9);
    all
}

/// Stalls seen by one spinning thread: how many, the longest, and their sum.
fn gaps(span: Duration) -> (usize, Duration, Duration) {
    let start = Instant::now();
    let mut last = start;
    let (mut count, mut longest, mut sum) = (0, Duration::ZERO, Duration::ZERO);
    loop {
        let now = Instant::now();
        let gap = now - last;
        if gap >= STALL {
            count += 1;
            longest = longest.max(gap);
            sum += gap;
        }
        last = now;
        if now - start >= span {
            return (count, longest, sum);
        }
    }
}

/// Runs [`probe`] on a blocking thread and returns its report line.
pub async fn check(span: Duration) -> String {
    tokio::task::spawn_blocking(move || probe(span))
        .await
        .map(|s| s.line())
        .unwrap_or_else(|e| format!("machine check failed: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_runs_for_its_span_and_reports_shares_between_zero_and_one() {
        let s = probe(Duration::from_millis(50));
        assert_eq!(s.span, Duration::from_millis(50));
        assert!((0.0..=1.0).contains(&s.lost), "{s:?}");
        assert!(s.longest <= Duration::from_secs(5), "{s:?}");
        assert!(
            s.line()
                .starts_with("machine check: with every core busy for 0.1 s")
        );
    }
}
