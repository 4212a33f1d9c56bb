//! Reconnect delays (protocol section 1 and edge rule 8.1).
//!
//! Pure: the caller says what happened, this says how long to wait. Used by
//! the cloud link and, with the same shape, by the broker link.

use std::time::Duration;

/// How long a connection must live before the attempt counter resets.
pub const HEALTHY_AFTER: Duration = Duration::from_secs(30);
const BASE_S: f64 = 0.5;

/// Exponential backoff with full jitter.
#[derive(Debug, Clone)]
pub struct Backoff {
    attempt: u32,
    max: Duration,
}

impl Backoff {
    pub fn new(max: Duration) -> Self {
        Self { attempt: 0, max }
    }

    /// The attempt counter `n`.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Upper bound of the next delay: min(max, 0.5 s x 2^n).
    pub fn ceiling(&self) -> Duration {
        let exp = BASE_S * 2f64.powi(self.attempt.min(62) as i32);
        Duration::from_secs_f64(exp.min(self.max.as_secs_f64()))
    }

    /// Delay before the next attempt after a failure or a short-lived
    /// connection; `lived` is how long the connection was up (zero when it
    /// never came up). `unit` is a uniform sample in [0, 1).
    pub fn next_delay(&mut self, lived: Duration, unit: f64) -> Duration {
        if lived >= HEALTHY_AFTER {
            self.attempt = 0;
        }
        let d = self.ceiling().mul_f64(unit.clamp(0.0, 1.0));
        self.attempt = self.attempt.saturating_add(1);
        d
    }

    /// Delay after an authorisation failure (close 4001, HTTP 401/403):
    /// uniform(0.9, 1.0) x max.
    pub fn auth_delay(&mut self, unit: f64) -> Duration {
        self.attempt = self.attempt.saturating_add(1);
        self.max.mul_f64(0.9 + 0.1 * unit.clamp(0.0, 1.0))
    }
}

/// A uniform sample in [0, 1).
pub fn jitter() -> f64 {
    rand::random::<f64>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_caps_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(60));
        let zero = Duration::ZERO;
        assert_eq!(b.next_delay(zero, 1.0), Duration::from_millis(500));
        assert_eq!(b.next_delay(zero, 1.0), Duration::from_secs(1));
        assert_eq!(b.next_delay(zero, 1.0), Duration::from_secs(2));
        for _ in 0..20 {
            b.next_delay(zero, 0.5);
        }
        assert_eq!(b.next_delay(zero, 1.0), Duration::from_secs(60));
        // a short-lived connection still counts as a failure
        assert_eq!(
            b.next_delay(Duration::from_secs(29), 1.0),
            Duration::from_secs(60)
        );
        // a healthy one resets the counter
        assert_eq!(
            b.next_delay(Duration::from_secs(30), 1.0),
            Duration::from_millis(500)
        );
        assert_eq!(b.next_delay(zero, 0.0), Duration::ZERO);
    }

    #[test]
    fn auth_failure_waits_near_max() {
        let mut b = Backoff::new(Duration::from_secs(60));
        assert_eq!(b.auth_delay(0.0), Duration::from_secs(54));
        assert_eq!(b.auth_delay(1.0), Duration::from_secs(60));
    }
}
