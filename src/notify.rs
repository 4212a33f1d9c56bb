//! systemd readiness, status and watchdog (`sd_notify`), without libsystemd.
//!
//! Messages go as datagrams to `$NOTIFY_SOCKET` (a path, or `@name` for the
//! abstract namespace). With no socket set, every call is a no-op, so the
//! daemon runs the same under systemd, in a shell and in tests.
//!
//! The watchdog is fed only when the relay loop made progress since the
//! last feed: the relay bumps a [`Progress`] counter on every iteration (it
//! has a one-second tick, so an idle relay still iterates), and
//! [`watchdog`] sends `WATCHDOG=1` only when the counter moved. A relay
//! stuck inside one iteration stops the feed and systemd restarts us.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Where notifications go.
#[derive(Debug, Clone)]
pub struct Notifier {
    target: Option<Target>,
}

#[derive(Debug, Clone)]
enum Target {
    Path(PathBuf),
    Abstract(Vec<u8>),
}

impl Notifier {
    /// From `$NOTIFY_SOCKET`; a no-op notifier when it is not set.
    pub fn from_env() -> Self {
        Self::from_value(
            std::env::var_os("NOTIFY_SOCKET").map(|v| v.to_string_lossy().into_owned()),
        )
    }

    pub fn from_value(v: Option<String>) -> Self {
        let target = v
            .filter(|s| !s.is_empty())
            .map(|s| match s.strip_prefix('@') {
                Some(name) => Target::Abstract(name.as_bytes().to_vec()),
                None => Target::Path(PathBuf::from(s)),
            });
        Notifier { target }
    }

    /// Sends one notification (`READY=1`, `STATUS=...`, `WATCHDOG=1`).
    pub fn notify(&self, msg: &str) {
        let Some(target) = &self.target else { return };
        let result = (|| {
            let sock = UnixDatagram::unbound()?;
            match target {
                Target::Path(p) => sock.send_to(msg.as_bytes(), p).map(|_| ()),
                Target::Abstract(name) => {
                    use std::os::linux::net::SocketAddrExt;
                    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                    sock.send_to_addr(msg.as_bytes(), &addr).map(|_| ())
                }
            }
        })();
        if let Err(e) = result {
            tracing::debug!(error = %e, "sd_notify failed");
        }
    }

    pub fn status(&self, text: &str) {
        self.notify(&format!("STATUS={text}"));
    }
}

/// The relay's progress counter.
#[derive(Debug, Default)]
pub struct Progress(AtomicU64);

impl Progress {
    pub fn bump(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The watchdog interval systemd asks for (`WATCHDOG_USEC`), if any and if
/// meant for this process (`WATCHDOG_PID`).
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Decides each period whether to feed the watchdog: only when the relay
/// moved. Pure, so the rule is tested without timers.
#[derive(Debug, Default)]
pub struct Feed {
    last: Option<u64>,
}

impl Feed {
    pub fn should_feed(&mut self, progress_now: u64) -> bool {
        let moved = self.last != Some(progress_now);
        self.last = Some(progress_now);
        moved
    }
}

/// Feeds the watchdog every half `interval` while the relay progresses.
pub async fn watchdog(
    n: Notifier,
    interval: Duration,
    progress: Arc<Progress>,
    token: CancellationToken,
) {
    let mut feed = Feed::default();
    let mut tick = tokio::time::interval(interval / 2);
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tick.tick() => {
                if feed.should_feed(progress.get()) {
                    n.notify("WATCHDOG=1");
                } else {
                    tracing::warn!("relay loop made no progress; not feeding the watchdog");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feeds_only_on_progress() {
        let mut f = Feed::default();
        assert!(f.should_feed(0));
        assert!(!f.should_feed(0), "stuck relay: no feed");
        assert!(f.should_feed(1));
        assert!(f.should_feed(5));
        assert!(!f.should_feed(5));
    }

    #[test]
    fn sends_to_a_socket_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).expect("bind");
        let n = Notifier::from_value(Some(path.display().to_string()));
        n.notify("READY=1");
        let mut buf = [0u8; 64];
        let len = server.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..len], b"READY=1");
        Notifier::from_value(None).notify("READY=1"); // no-op, no panic
    }
}
