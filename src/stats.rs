//! Counters and connection state shared by the tasks, read by `status`.
//!
//! Plain atomics: every task bumps its own counters without locks; the
//! control socket reads a consistent-enough view for monitoring.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use serde::Serialize;

use crate::protocol::Reason;

/// One side's connection state.
#[derive(Debug, Default)]
pub struct Side {
    connected: AtomicBool,
    /// Unix ms (local clock) of the current connection, 0 when down.
    since_ms: AtomicI64,
    /// Unix ms (local clock) since which it is down (0: up, or never tried).
    down_since_ms: AtomicI64,
    /// Failed attempts since the last connection.
    failed_attempts: AtomicU64,
    /// Unix ms (local clock) of the next attempt, 0 when none is due.
    next_attempt_ms: AtomicI64,
    /// Connections made (the first one included).
    connections: AtomicU64,
    /// Connections lost.
    reconnects: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl Side {
    pub fn up(&self) {
        self.connected.store(true, Relaxed);
        let now = crate::clock::local_ms();
        self.since_ms.store(now, Relaxed);
        self.down_since_ms.store(0, Relaxed);
        self.failed_attempts.store(0, Relaxed);
        self.next_attempt_ms.store(0, Relaxed);
        self.connections.fetch_add(1, Relaxed);
    }

    /// The connection was lost, or an attempt failed; `next`: the delay
    /// before the next attempt.
    pub fn down(&self, why: impl Into<String>, next: Option<std::time::Duration>) {
        let now = crate::clock::local_ms();
        if self.connected.swap(false, Relaxed) {
            self.reconnects.fetch_add(1, Relaxed);
        } else {
            self.failed_attempts.fetch_add(1, Relaxed);
        }
        if self.down_since_ms.load(Relaxed) == 0 {
            self.down_since_ms.store(now, Relaxed);
        }
        let next_ms = next.map_or(0, |d| {
            now.saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        });
        self.next_attempt_ms.store(next_ms, Relaxed);
        self.since_ms.store(0, Relaxed);
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(why.into());
    }

    /// True once a connection has been made.
    pub fn ever_connected(&self) -> bool {
        self.connections.load(Relaxed) > 0
    }

    pub fn is_up(&self) -> bool {
        self.connected.load(Relaxed)
    }

    pub fn view(&self) -> SideView {
        SideView {
            connected: self.is_up(),
            since_ms: match self.since_ms.load(Relaxed) {
                0 => None,
                v => Some(v),
            },
            reconnects: self.reconnects.load(Relaxed),
            down_since_ms: match self.down_since_ms.load(Relaxed) {
                0 => None,
                v => Some(v),
            },
            failed_attempts: self.failed_attempts.load(Relaxed),
            next_attempt_ms: match self.next_attempt_ms.load(Relaxed) {
                0 => None,
                v => Some(v),
            },
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SideView {
    pub connected: bool,
    pub since_ms: Option<i64>,
    /// Connections lost.
    pub reconnects: u64,
    pub down_since_ms: Option<i64>,
    /// Failed attempts since the last connection.
    pub failed_attempts: u64,
    pub next_attempt_ms: Option<i64>,
    pub last_error: Option<String>,
}

/// All counters of one daemon.
#[derive(Debug, Default)]
pub struct Stats {
    pub broker: Side,
    pub cloud: Side,
    pub states_in: AtomicU64,
    /// Messages not sent to links because they look like JSON but are not strict JSON (rule 6.1.4).
    pub link_dropped_not_json: AtomicU64,
    /// MQTT messages over the size limit, skipped (rule 19).
    pub mqtt_oversized: AtomicU64,
    /// State frames in the offline buffer now (a gauge).
    pub buffered: AtomicU64,
    pub frames_up: AtomicU64,
    pub link_frames_up: AtomicU64,
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
    pub buffer_dropped: AtomicU64,
    pub errors_sent: AtomicU64,
    pub errors_dropped: AtomicU64,
    pub commands_ok: AtomicU64,
    commands_rejected: [AtomicU64; 7],
}

impl Stats {
    pub fn command_rejected(&self, reason: Reason) {
        self.commands_rejected[reason as usize].fetch_add(1, Relaxed);
    }

    pub fn rejected(&self, reason: Reason) -> u64 {
        self.commands_rejected[reason as usize].load(Relaxed)
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Relaxed)
    }
}
