//! A one-line progress display on standard error (only when it is a terminal).

use std::{
    io::{IsTerminal, Write},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::task::JoinHandle;

/// Counters the order tasks bump.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) placed: AtomicU64,
    pub(crate) approved: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) failed: AtomicU64,
}

/// The display.
#[derive(Debug)]
pub(crate) struct Progress {
    total: u64,
    enabled: bool,
    counters: Arc<Counters>,
}

/// The running display; [`Ticker::finish`] clears it.
#[derive(Debug)]
pub(crate) struct Ticker {
    task: Option<JoinHandle<()>>,
}

impl Progress {
    pub(crate) fn new(total: u64, enabled: bool) -> Self {
        Self {
            total,
            enabled: enabled && std::io::stderr().is_terminal(),
            counters: Arc::default(),
        }
    }

    pub(crate) fn counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }

    pub(crate) fn start(&self) -> Ticker {
        if !self.enabled {
            return Ticker { task: None };
        }
        let (total, c) = (self.total, self.counters.clone());
        let started = Instant::now();
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let placed = c.placed.load(Ordering::Relaxed);
                let failed = c.failed.load(Ordering::Relaxed);
                let approved = c.approved.load(Ordering::Relaxed);
                let rejected = c.rejected.load(Ordering::Relaxed);
                eprint!(
                    "\r{} {placed}/{total} placed · {approved} approved · {rejected} rejected · {failed} failed · {:.0}s ",
                    bar(placed + failed, total, 30),
                    started.elapsed().as_secs_f64()
                );
                let _ = std::io::stderr().flush();
            }
        });
        Ticker { task: Some(task) }
    }
}

impl Ticker {
    pub(crate) fn finish(mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            eprintln!();
        }
    }
}

/// `[#####.....]`, `width` cells, filled in proportion.
pub(crate) fn bar(done: u64, total: u64, width: usize) -> String {
    let filled = if total == 0 {
        width
    } else {
        ((done.min(total) as f64 / total as f64) * width as f64).round() as usize
    };
    format!("[{}{}]", "#".repeat(filled), ".".repeat(width - filled))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_bar_fills_in_proportion() {
        assert_eq!(super::bar(0, 10, 4), "[....]");
        assert_eq!(super::bar(5, 10, 4), "[##..]");
        assert_eq!(super::bar(12, 10, 4), "[####]");
    }
}
