//! What the receiving end of a path saw during one measured step.
//!
//! One [`Recorder`] per rig, shared (behind a mutex, uncontended: one
//! receiving task writes, the driver reads after the step) by the MQTT
//! subscriber or the cloud sink's reader. Messages are recognised by the
//! sequence number and scheduled send time carried in their payload;
//! latency is receive time minus *scheduled* send time, so a stalled
//! publisher shows up as latency instead of being hidden.

use hdrhistogram::Histogram;

use crate::load::Schedule;

/// Latencies are recorded in microseconds up to this bound (60 s).
const MAX_LATENCY_US: u64 = 60_000_000;

/// The step being measured: sequence numbers from `base_seq`, scheduled
/// times in `[from_ns, to_ns)` count.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub base_seq: u64,
    pub slots: usize,
    pub from_ns: u64,
    pub to_ns: u64,
}

/// Per-step counters and histograms.
pub struct Recorder {
    win: Option<Window>,
    /// App-audience frame (or subscriber delivery) latency, µs.
    pub lat: Histogram<u64>,
    /// Down path: scheduled send to `ack` received, µs.
    pub ack_lat: Histogram<u64>,
    /// Links path: scheduled send to the last link frame of the message, µs.
    pub fanout_lat: Histogram<u64>,
    /// Per measured message: bit 7 = delivered, low bits = link frames.
    seen: Vec<u8>,
    pub delivered: u64,
    pub duplicates: u64,
    pub link_frames: u64,
    /// Link frames that held a stripped key or an email address.
    pub leaks: u64,
    pub acks_ok: u64,
    pub acks_rejected: u64,
    /// Link frames each message should fan out to.
    pub expect_links: u8,
    /// Revocation bookkeeping, indexed by link number.
    pub revoke: RevokeWatch,
    /// Down path: the command schedule and its first sequence number, to
    /// find the due time of the command an ack answers.
    pub commands: Option<(Schedule, u64)>,
}

/// Link frames seen around each link's revocation.
#[derive(Default)]
pub struct RevokeWatch {
    /// Revoke frame handed to the writer.
    pub sent: Vec<bool>,
    /// `ok` ack for it read.
    pub acked: Vec<bool>,
    /// Link frames read between send and ack (in flight, allowed).
    pub between: u64,
    /// Link frames read after the ack (must be zero).
    pub after_ack: u64,
}

impl RevokeWatch {
    fn on_link_frame(&mut self, link: usize) {
        if self.acked.get(link).copied().unwrap_or(false) {
            self.after_ack += 1;
        } else if self.sent.get(link).copied().unwrap_or(false) {
            self.between += 1;
        }
    }

    fn mark(v: &mut Vec<bool>, link: usize) {
        if v.len() <= link {
            v.resize(link + 1, false);
        }
        v[link] = true;
    }

    pub fn mark_sent(&mut self, link: usize) {
        Self::mark(&mut self.sent, link);
    }

    pub fn mark_acked(&mut self, link: usize) {
        Self::mark(&mut self.acked, link);
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            win: None,
            lat: histogram(),
            ack_lat: histogram(),
            fanout_lat: histogram(),
            seen: Vec::new(),
            delivered: 0,
            duplicates: 0,
            link_frames: 0,
            leaks: 0,
            acks_ok: 0,
            acks_rejected: 0,
            expect_links: 0,
            revoke: RevokeWatch::default(),
            commands: None,
        }
    }
}

impl Recorder {
    /// Starts a step: clears everything but the link expectations.
    pub fn arm(&mut self, win: Window) {
        let expect_links = self.expect_links;
        *self = Recorder::default();
        self.expect_links = expect_links;
        self.seen = vec![0; win.slots];
        self.win = Some(win);
    }

    /// Stops counting (late frames after the drain are ignored).
    pub fn disarm(&mut self) {
        self.win = None;
        self.seen = Vec::new();
    }

    /// The slot of a measured message, or None.
    fn slot(&self, seq: u64, sched_ns: u64) -> Option<usize> {
        let w = self.win?;
        if sched_ns < w.from_ns || sched_ns >= w.to_ns || seq < w.base_seq {
            return None;
        }
        let i = usize::try_from(seq - w.base_seq).ok()?;
        (i < self.seen.len()).then_some(i)
    }

    /// The message itself arrived (subscriber, or app-audience frame).
    pub fn on_delivery(&mut self, seq: u64, sched_ns: u64, now_ns: u64) {
        let Some(i) = self.slot(seq, sched_ns) else {
            return;
        };
        if self.seen[i] & 0x80 != 0 {
            self.duplicates += 1;
            return;
        }
        self.seen[i] |= 0x80;
        self.delivered += 1;
        record(&mut self.lat, sched_ns, now_ns);
    }

    /// A link-audience frame arrived for link number `link`.
    pub fn on_link_frame(&mut self, link: usize, seq: u64, sched_ns: u64, now_ns: u64, leak: bool) {
        self.revoke.on_link_frame(link);
        let Some(i) = self.slot(seq, sched_ns) else {
            return;
        };
        self.link_frames += 1;
        self.leaks += u64::from(leak);
        let n = (self.seen[i] & 0x7f).saturating_add(1).min(0x7f);
        self.seen[i] = (self.seen[i] & 0x80) | n;
        if self.expect_links > 0 && n == self.expect_links.min(0x7f) {
            record(&mut self.fanout_lat, sched_ns, now_ns);
        }
    }

    /// An ack for command number `seq`.
    pub fn on_command_ack(&mut self, seq: u64, now_ns: u64, ok: bool) {
        let Some((s, seq0)) = self.commands else {
            return;
        };
        let Some(i) = seq.checked_sub(seq0) else {
            return;
        };
        let sched_ns = s.due(i);
        if self.slot(seq, sched_ns).is_none() {
            return;
        }
        if ok {
            self.acks_ok += 1;
            record(&mut self.ack_lat, sched_ns, now_ns);
        } else {
            self.acks_rejected += 1;
        }
    }
}

fn record(h: &mut Histogram<u64>, sched_ns: u64, now_ns: u64) {
    let us = now_ns.saturating_sub(sched_ns) / 1000;
    h.saturating_record(us.clamp(1, MAX_LATENCY_US));
}

/// Latency percentiles of one histogram, µs.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: h.len(),
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}
