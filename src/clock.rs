//! Time as the cloud sees it.
//!
//! Gateways often have no battery-backed clock, so every timestamp the
//! gateway sends (`ts`) and every expiry check uses the local clock plus the
//! offset learnt from the cloud's `welcome` (protocol section 2).

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Local wall-clock time in unix milliseconds.
pub fn local_ms() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

/// The cloud clock: local time plus the offset from the last `welcome`.
#[derive(Debug, Default)]
pub struct Clock {
    offset_ms: AtomicI64,
}

impl Clock {
    /// Unix ms on the cloud's clock.
    pub fn now_ms(&self) -> i64 {
        local_ms().saturating_add(self.offset_ms.load(Ordering::Relaxed))
    }

    /// Records `server_time` from a `welcome` read at local time `local_ms`.
    pub fn set_server_time(&self, server_time: i64, local_ms: i64) {
        self.offset_ms
            .store(server_time.saturating_sub(local_ms), Ordering::Relaxed);
    }

    pub fn offset_ms(&self) -> i64 {
        self.offset_ms.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_follows_welcome() {
        let c = Clock::default();
        let now = local_ms();
        c.set_server_time(now + 3_600_000, now);
        assert_eq!(c.offset_ms(), 3_600_000);
        assert!((c.now_ms() - now - 3_600_000).abs() < 1000);
        c.set_server_time(now - 3_600_000, now);
        assert_eq!(c.offset_ms(), -3_600_000);
    }
}
