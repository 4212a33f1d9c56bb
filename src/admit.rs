//! How many connections a local listener (the metrics endpoint, the control
//! socket) serves at once: `limits.max_connections` each (edge rule 22).
//!
//! A connection over the bound is closed at once, so an unprivileged local
//! user holding connections open cannot take the descriptors the daemon
//! needs for its own work (the state files, the audit, the cloud and the
//! broker). Each served connection also has its listener's idle timeout.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::relay::WarnEvery;

/// The connections one listener may serve at once.
#[derive(Debug)]
pub struct Admit {
    what: &'static str,
    max: usize,
    slots: Arc<Semaphore>,
    refused: u64,
    warn: WarnEvery,
}

impl Admit {
    /// At most `max` connections (at least one) of the listener `what`.
    pub fn new(what: &'static str, max: usize) -> Self {
        let max = max.max(1);
        Self {
            what,
            max,
            slots: Arc::new(Semaphore::new(max)),
            refused: 0,
            warn: WarnEvery::default(),
        }
    }

    /// A slot for a new connection, held until the permit is dropped;
    /// `None` when all are taken (the caller closes the connection).
    pub fn admit(&mut self) -> Option<OwnedSemaphorePermit> {
        let permit = self.slots.clone().try_acquire_owned().ok();
        if permit.is_none() {
            self.refused += 1;
            if let Some(refused) = self.warn.due(self.refused) {
                tracing::warn!(
                    listener = self.what,
                    max = self.max,
                    refused,
                    "connections over limits.max_connections closed at once"
                );
            }
        }
        permit
    }
}

/// The pause after a failed `accept` (out of descriptors, say), so the
/// loop does not spin while the cause lasts.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_up_to_the_bound_and_again_when_one_ends() {
        let mut a = Admit::new("test", 2);
        let first = a.admit().expect("1");
        let _second = a.admit().expect("2");
        assert!(a.admit().is_none());
        drop(first);
        assert!(a.admit().is_some());
    }
}
