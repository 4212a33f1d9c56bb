//! Command rate limits, keyed by the exact `source` string (edge rule 8.7).
//!
//! A GCRA limiter from `governor` per source: `commands_per_second`
//! sustained, `command_burst` at once. Sources seen long ago are forgotten
//! by [`Limits::housekeep`], so a cloud inventing sources cannot grow the
//! table without bound.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// Rate limiter per command source.
pub struct Limits {
    limiter: DefaultKeyedRateLimiter<String>,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits")
            .field("sources", &self.limiter.len())
            .finish()
    }
}

impl Limits {
    /// `per_second` must be positive and finite, `burst` at least 1
    /// (config validation guarantees both; out-of-range values are clamped).
    pub fn new(per_second: f64, burst: u32) -> Self {
        let per_second = if per_second.is_finite() && per_second > 0.0 {
            per_second
        } else {
            1.0
        };
        let period = Duration::from_secs_f64(1.0 / per_second).max(Duration::from_nanos(1));
        let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::with_period(period)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(burst);
        Self {
            limiter: RateLimiter::keyed(quota),
        }
    }

    /// Spends one token of `source`; false when it has none left.
    pub fn try_acquire(&self, source: &str) -> bool {
        // The keyed store wants an owned key; sources are short.
        self.limiter.check_key(&source.to_owned()).is_ok()
    }

    /// Forgets sources whose bucket is full again.
    pub fn housekeep(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refuse_per_source() {
        let l = Limits::new(1.0, 3);
        assert!((0..3).all(|_| l.try_acquire("app")));
        assert!(!l.try_acquire("app"));
        assert!(l.try_acquire("app:alice"), "sources are separate");
    }
}
