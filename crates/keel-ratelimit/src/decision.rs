//! What one check answers, and the response headers it produces.

use std::time::Duration;

use crate::Rate;

/// Response header names, as Spring Cloud Gateway's `RedisRateLimiter` writes them.
pub mod header {
    /// Whole tokens left in the bucket after this request (`-1` when the store failed).
    pub const REMAINING: &str = "X-RateLimit-Remaining";
    /// The route's `replenishRate`.
    pub const REPLENISH_RATE: &str = "X-RateLimit-Replenish-Rate";
    /// The route's `burstCapacity`.
    pub const BURST_CAPACITY: &str = "X-RateLimit-Burst-Capacity";
    /// The route's `requestedTokens`.
    pub const REQUESTED_TOKENS: &str = "X-RateLimit-Requested-Tokens";
    /// Whole seconds until the request could be allowed (RFC 9110), on denials only.
    pub const RETRY_AFTER: &str = "Retry-After";
}

/// The answer to one [`RateLimiter::check`](crate::RateLimiter::check).
///
/// | `allowed` | `degraded` | meaning | gateway answer |
/// |---|---|---|---|
/// | true | false | tokens taken | forward |
/// | false | false | not enough tokens | 429 |
/// | true | true | store failed, fail-open | forward |
/// | false | true | store failed, fail-closed | 503 |
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// Whole tokens left after this request; `-1` when the store could not be asked
    /// (Spring's value in that case).
    pub remaining: i64,
    /// The rate the request was checked against.
    pub rate: Rate,
    /// On a denial: how long until the bucket holds `requested_tokens`. `None` when
    /// allowed, when no wait would help (`requested_tokens > burst_capacity`, including
    /// `burst_capacity == 0`), or when the store failed.
    pub retry_after: Option<Duration>,
    /// The store failed or timed out, and the fail mode decided instead of the bucket.
    pub degraded: bool,
}

impl Decision {
    /// A decision made by the store's bucket.
    pub fn from_bucket(
        rate: Rate,
        allowed: bool,
        remaining: i64,
        retry_after: Option<Duration>,
    ) -> Self {
        Self {
            allowed,
            remaining,
            rate,
            retry_after: if allowed { None } else { retry_after },
            degraded: false,
        }
    }

    /// A decision made by the fail mode because the store failed.
    pub fn degraded(rate: Rate, allowed: bool) -> Self {
        Self {
            allowed,
            remaining: -1,
            rate,
            retry_after: None,
            degraded: true,
        }
    }

    /// The response headers for this decision, with Spring's names: the four
    /// `X-RateLimit-*` headers always, and `Retry-After` (whole seconds, rounded up) when
    /// denied with a known wait.
    pub fn headers(&self) -> impl Iterator<Item = (&'static str, String)> + use<> {
        let retry_after = self
            .retry_after
            .filter(|_| !self.allowed)
            .map(|wait| (header::RETRY_AFTER, retry_after_seconds(wait).to_string()));
        [
            (header::REMAINING, self.remaining.to_string()),
            (
                header::REPLENISH_RATE,
                self.rate.replenish_rate().to_string(),
            ),
            (
                header::BURST_CAPACITY,
                self.rate.burst_capacity().to_string(),
            ),
            (
                header::REQUESTED_TOKENS,
                self.rate.requested_tokens().to_string(),
            ),
        ]
        .into_iter()
        .chain(retry_after)
    }
}

/// Whole seconds, rounded up, at least 1: a client that waits that long finds the tokens.
fn retry_after_seconds(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(d: &Decision) -> Vec<(&'static str, String)> {
        d.headers().collect()
    }

    #[test]
    fn headers_follow_spring() {
        let rate = Rate::new(10, 20, 2).unwrap();
        let allowed = Decision::from_bucket(rate, true, 7, Some(Duration::from_secs(3)));
        assert_eq!(allowed.retry_after, None);
        assert_eq!(
            headers(&allowed),
            vec![
                ("X-RateLimit-Remaining", "7".to_owned()),
                ("X-RateLimit-Replenish-Rate", "10".to_owned()),
                ("X-RateLimit-Burst-Capacity", "20".to_owned()),
                ("X-RateLimit-Requested-Tokens", "2".to_owned()),
            ]
        );

        let denied = Decision::from_bucket(rate, false, 0, Some(Duration::from_millis(1_200)));
        let h = headers(&denied);
        assert_eq!(h.len(), 5);
        assert_eq!(h[4], ("Retry-After", "2".to_owned()));

        let short = Decision::from_bucket(rate, false, 1, Some(Duration::from_millis(100)));
        assert_eq!(headers(&short)[4], ("Retry-After", "1".to_owned()));

        // No wait helps: no Retry-After.
        let never = Decision::from_bucket(rate, false, 0, None);
        assert_eq!(headers(&never).len(), 4);

        let degraded = Decision::degraded(rate, true);
        assert!(degraded.degraded);
        assert_eq!(
            headers(&degraded)[0],
            ("X-RateLimit-Remaining", "-1".to_owned())
        );
        assert_eq!(headers(&Decision::degraded(rate, false)).len(), 4);
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_seconds(Duration::ZERO), 1);
        assert_eq!(retry_after_seconds(Duration::from_secs(2)), 2);
        assert_eq!(retry_after_seconds(Duration::from_nanos(2_000_000_001)), 3);
    }
}
