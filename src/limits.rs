//! Command rate limits, keyed by the exact `source` string (edge rule 8.7).
//!
//! A GCRA limiter from `governor` per source: `commands_per_second`
//! sustained, `command_burst` at once. Sources seen long ago are forgotten
//! by [`Limits::housekeep`], so a cloud inventing sources cannot grow the
//! table without bound.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

const MIN_PER_SECOND: f64 = 0.001;
const MAX_PER_SECOND: f64 = 1_000_000.0;
const MAX_BURST: u32 = 1_000_000;

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
    /// `per_second` and `burst` are clamped to the ranges config
    /// validation allows (0.001 to 10^6 per second, a burst of 1 to 10^6),
    /// inside which the limiter's arithmetic cannot overflow: no value
    /// can make it panic.
    pub fn new(per_second: f64, burst: u32) -> Self {
        let per_second = if per_second.is_finite() {
            per_second.clamp(MIN_PER_SECOND, MAX_PER_SECOND)
        } else {
            1.0
        };
        let period = Duration::from_secs_f64(1.0 / per_second).max(Duration::from_nanos(1));
        let burst = NonZeroU32::new(burst.min(MAX_BURST)).unwrap_or(NonZeroU32::MIN);
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
    fn no_rate_or_burst_panics() {
        for rate in [
            1e-9,
            0.0,
            -1.0,
            f64::NAN,
            f64::INFINITY,
            1e-300,
            0.001,
            1e12,
        ] {
            for burst in [0, 1, 20, 1_000_000, u32::MAX] {
                let l = Limits::new(rate, burst);
                assert!(l.try_acquire("app"), "{rate} {burst}");
                l.housekeep();
            }
        }
    }

    #[test]
    fn burst_then_refuse_per_source() {
        let l = Limits::new(1.0, 3);
        assert!((0..3).all(|_| l.try_acquire("app")));
        assert!(!l.try_acquire("app"));
        assert!(l.try_acquire("app:alice"), "sources are separate");
    }
}
