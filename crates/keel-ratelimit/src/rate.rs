//! The limit one route applies to each key: Spring Cloud Gateway's `redis-rate-limiter.*`
//! parameters, validated the way Spring validates them.

use std::time::Duration;

/// A token bucket's parameters, with Spring Cloud Gateway's names and rules.
///
/// - `replenish_rate` (`replenishRate`): tokens added per second, at least 1.
/// - `burst_capacity` (`burstCapacity`): tokens the bucket holds. `0` denies every request
///   (Spring documents this); otherwise it must be at least `replenish_rate` (Spring asserts
///   `burstCapacity >= replenishRate`).
/// - `requested_tokens` (`requestedTokens`): tokens one request costs, at least 1. Rates
///   below one request per second are written as Spring suggests: `replenish_rate = 1`,
///   `requested_tokens = 60`, `burst_capacity = 60` is one request per minute. A request
///   that costs more than `burst_capacity` is never allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rate {
    replenish_rate: u32,
    burst_capacity: u32,
    requested_tokens: u32,
}

/// A [`Rate`] parameter out of range. The message names the parameter as Spring does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidRate {
    /// `replenishRate` was 0.
    #[error("replenishRate must be at least 1, got 0")]
    ReplenishRate,
    /// `requestedTokens` was 0.
    #[error("requestedTokens must be at least 1, got 0")]
    RequestedTokens,
    /// `burstCapacity` was neither 0 nor at least `replenishRate`.
    #[error(
        "burstCapacity ({burst_capacity}) must be 0 (deny every request) or at least \
         replenishRate ({replenish_rate})"
    )]
    BurstCapacity {
        /// The `burstCapacity` given.
        burst_capacity: u32,
        /// The `replenishRate` given.
        replenish_rate: u32,
    },
}

impl InvalidRate {
    /// Spring's name of the offending parameter (`replenishRate`, `burstCapacity`,
    /// `requestedTokens`), for configuration errors that name the field.
    pub fn parameter(&self) -> &'static str {
        match self {
            Self::ReplenishRate => "replenishRate",
            Self::RequestedTokens => "requestedTokens",
            Self::BurstCapacity { .. } => "burstCapacity",
        }
    }
}

impl Rate {
    /// A validated rate; see the type's documentation for the rules.
    pub fn new(
        replenish_rate: u32,
        burst_capacity: u32,
        requested_tokens: u32,
    ) -> Result<Self, InvalidRate> {
        if replenish_rate == 0 {
            return Err(InvalidRate::ReplenishRate);
        }
        if requested_tokens == 0 {
            return Err(InvalidRate::RequestedTokens);
        }
        if burst_capacity != 0 && burst_capacity < replenish_rate {
            return Err(InvalidRate::BurstCapacity {
                burst_capacity,
                replenish_rate,
            });
        }
        Ok(Self {
            replenish_rate,
            burst_capacity,
            requested_tokens,
        })
    }

    /// Tokens added to the bucket per second.
    pub fn replenish_rate(&self) -> u32 {
        self.replenish_rate
    }

    /// Tokens the bucket holds when full; 0 denies every request.
    pub fn burst_capacity(&self) -> u32 {
        self.burst_capacity
    }

    /// Tokens one request takes.
    pub fn requested_tokens(&self) -> u32 {
        self.requested_tokens
    }

    /// Whether a request can ever be allowed: `requested_tokens <= burst_capacity`.
    pub fn can_allow(&self) -> bool {
        self.requested_tokens <= self.burst_capacity
    }

    /// How long an empty bucket takes to fill: `burst_capacity / replenish_rate` seconds.
    /// A bucket idle that long is full, the same as a bucket never used.
    pub fn fill_time(&self) -> Duration {
        Duration::from_secs_f64(f64::from(self.burst_capacity) / f64::from(self.replenish_rate))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spring_rules() {
        assert_eq!(Rate::new(0, 10, 1), Err(InvalidRate::ReplenishRate));
        assert_eq!(Rate::new(1, 10, 0), Err(InvalidRate::RequestedTokens));
        let err = Rate::new(10, 5, 1).unwrap_err();
        assert_eq!(err.parameter(), "burstCapacity");
        assert_eq!(
            err.to_string(),
            "burstCapacity (5) must be 0 (deny every request) or at least replenishRate (10)"
        );
        assert_eq!(InvalidRate::ReplenishRate.parameter(), "replenishRate");
        assert!(
            InvalidRate::ReplenishRate
                .to_string()
                .starts_with("replenishRate")
        );

        // Burst 0 is Spring's "deny all"; equal rate and burst is a steady rate.
        assert!(!Rate::new(10, 0, 1).unwrap().can_allow());
        let steady = Rate::new(10, 10, 1).unwrap();
        assert_eq!(
            (
                steady.replenish_rate(),
                steady.burst_capacity(),
                steady.requested_tokens()
            ),
            (10, 10, 1)
        );
        assert_eq!(steady.fill_time(), Duration::from_secs(1));
        // One request per minute, Spring's recipe.
        let per_minute = Rate::new(1, 60, 60).unwrap();
        assert!(per_minute.can_allow());
        assert_eq!(per_minute.fill_time(), Duration::from_secs(60));
        assert!(!Rate::new(1, 10, 11).unwrap().can_allow());
    }
}
