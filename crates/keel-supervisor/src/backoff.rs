//! Restart backoff: exponential, capped, reset after a long enough run.

use std::time::Duration;

use crate::topology::RestartBackoff;

/// Restart delays for one process instance.
#[derive(Debug)]
pub(crate) struct Backoff {
    settings: RestartBackoff,
    next: Duration,
}

impl Backoff {
    pub(crate) fn new(settings: RestartBackoff) -> Self {
        Self {
            settings,
            next: settings.initial,
        }
    }

    /// The delay before restarting a process that exited after running for `uptime`.
    pub(crate) fn next_delay(&mut self, uptime: Duration) -> Duration {
        if uptime >= self.settings.reset_after {
            self.next = self.settings.initial;
        }
        let delay = self.next.min(self.settings.max);
        self.next = delay.saturating_mul(2).min(self.settings.max);
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn settings() -> RestartBackoff {
        RestartBackoff {
            initial: ms(500),
            max: ms(30_000),
            reset_after: ms(10_000),
        }
    }

    #[test]
    fn doubles_up_to_the_cap() {
        let mut b = Backoff::new(settings());
        let delays: Vec<u128> = (0..9).map(|_| b.next_delay(ms(10)).as_millis()).collect();
        assert_eq!(
            delays,
            [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
    }

    #[test]
    fn resets_after_a_long_enough_run() {
        let mut b = Backoff::new(settings());
        for _ in 0..4 {
            b.next_delay(ms(10));
        }
        assert_eq!(b.next_delay(ms(9_999)), ms(8000));
        assert_eq!(b.next_delay(ms(10_000)), ms(500));
        assert_eq!(b.next_delay(ms(0)), ms(1000));
    }

    #[test]
    fn huge_values_do_not_overflow() {
        let mut b = Backoff::new(RestartBackoff {
            initial: Duration::MAX,
            max: Duration::MAX,
            reset_after: Duration::MAX,
        });
        assert_eq!(b.next_delay(ms(0)), Duration::MAX);
        assert_eq!(b.next_delay(ms(0)), Duration::MAX);
    }
}
