//! The open-loop load: a fixed-rate schedule, the payloads, and the MQTT
//! publisher and subscriber clients (rumqttc).
//!
//! # Schedule
//! Time is cut into ticks of `max(1 ms, 1/rate)`; tick `k` is due at
//! `t0 + k * period` and carries `floor((k+1) r p) - floor(k r p)` messages,
//! all stamped with the tick's due time. One task waits on the ticks and
//! sends; when it falls behind it sends every overdue tick with its
//! original stamp, so lateness becomes measured latency.
//!
//! The ticks come from a periodic Linux `timerfd` (CLOCK_MONOTONIC,
//! absolute) registered with tokio's reactor, not from `tokio::time`:
//! tokio's timer wheel has 1 ms granularity and would add 0 to 1 ms of
//! wake-up error to every message, which is larger than the loopback
//! latency being measured.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;

use crate::record::Recorder;

/// CLOCK_MONOTONIC in nanoseconds (the clock of `Instant` and the timerfd).
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn timespec(ns: u64) -> libc::timespec {
    libc::timespec {
        tv_sec: (ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (ns % 1_000_000_000) as libc::c_long,
    }
}

/// A periodic absolute-time timerfd, awaited through tokio.
pub struct Ticker {
    fd: AsyncFd<OwnedFd>,
}

impl Ticker {
    /// First expiry at `start_ns` (CLOCK_MONOTONIC), then every `period_ns`.
    pub fn new(start_ns: u64, period_ns: u64) -> io::Result<Ticker> {
        let flags = libc::TFD_NONBLOCK | libc::TFD_CLOEXEC;
        // SAFETY: plain syscall; the result is checked before use.
        let raw = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, flags) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let spec = libc::itimerspec {
            it_interval: timespec(period_ns),
            it_value: timespec(start_ns.max(1)),
        };
        // SAFETY: valid fd and itimerspec; a null old-value pointer is allowed.
        let rc = unsafe {
            libc::timerfd_settime(
                fd.as_raw_fd(),
                libc::TFD_TIMER_ABSTIME,
                &spec,
                std::ptr::null_mut(),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the OwnedFd is moved into the AsyncFd and stays open,
        // the same descriptor, until the AsyncFd is dropped.
        let fd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
            .map_err(|e| io::Error::other(e.to_string()))?;
        Ok(Ticker { fd })
    }

    /// Waits for the next expiry; returns how many expired since the last call.
    pub async fn wait(&self) -> io::Result<u64> {
        loop {
            let mut guard = self.fd.readable().await?;
            let r = guard.try_io(|fd| {
                let mut n = 0u64;
                // SAFETY: reading 8 bytes into a u64 from a timerfd.
                let got = unsafe { libc::read(fd.as_raw_fd(), (&mut n as *mut u64).cast(), 8) };
                if got == 8 {
                    Ok(n)
                } else {
                    Err(io::Error::last_os_error())
                }
            });
            if let Ok(result) = r {
                return result;
            }
        }
    }
}

/// One step's schedule.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub rate: f64,
    pub t0: u64,
    pub period: u64,
    pub ticks: u64,
    /// Scheduled times at or after this are measured (after the warm-up).
    pub measure_from: u64,
}

impl Schedule {
    pub fn new(rate: f64, start_ns: u64, warmup: Duration, measure: Duration) -> Schedule {
        let period = ((1e9 / rate) as u64).max(1_000_000);
        let total = (warmup + measure).as_nanos() as u64;
        Schedule {
            rate,
            t0: start_ns,
            period,
            ticks: total.div_ceil(period),
            measure_from: start_ns + warmup.as_nanos() as u64,
        }
    }

    /// Messages scheduled before tick `k`.
    pub fn before(&self, k: u64) -> u64 {
        (k as f64 * self.rate * self.period as f64 / 1e9).floor() as u64
    }

    pub fn end_ns(&self) -> u64 {
        self.t0 + self.ticks * self.period
    }

    pub fn total(&self) -> u64 {
        self.before(self.ticks)
    }

    /// Due time of the `i`-th message of this schedule.
    pub fn due(&self, i: u64) -> u64 {
        let per_tick = self.rate * self.period as f64 / 1e9;
        let mut k = (i as f64 / per_tick).floor() as u64;
        while k > 0 && self.before(k) > i {
            k -= 1;
        }
        while self.before(k + 1) <= i {
            k += 1;
        }
        self.t0 + k * self.period
    }
}

/// A sensor payload of about `size` bytes carrying `seq` and `t`.
pub fn payload(seq: u64, t: u64, size: usize) -> String {
    let mut s = format!(
        r#"{{"seq":{seq},"t":{t},"value":{}.{},"unit":"C","battery":87,"rssi":-61,"room":"living","name":"Anna","email":"anna@example.com","fw":"2.4.1","ok":true,"pad":""#,
        20 + seq % 5,
        seq % 10
    );
    let pad = size.saturating_sub(s.len() + 2);
    s.extend(std::iter::repeat_n('x', pad));
    s.push_str("\"}");
    s
}

/// Topic of message `seq`: 100 busy devices in turn; with `quiet` > 0,
/// every 50th message goes to one of `quiet` quiet devices instead (each
/// in turn), the pattern of a gateway with a few chatty sensors and many
/// that report now and then.
pub fn topic(seq: u64, quiet: u64) -> String {
    if quiet > 0 && seq % 50 == 49 {
        return format!("bench/quiet{}/state", (seq / 50) % quiet);
    }
    format!("bench/dev{}/state", seq % 100)
}

/// The number after `key` in `text` (`"seq":` -> 17).
pub fn field(text: &str, key: &str) -> Option<u64> {
    // Keys sit near the start: a plain scan beats building a searcher.
    let at = text
        .as_bytes()
        .windows(key.len())
        .position(|w| w == key.as_bytes())?
        + key.len();
    let digits = text[at..].bytes().take_while(u8::is_ascii_digit).count();
    text[at..at + digits].parse().ok()
}

/// Who produces the load.
pub enum Gen {
    /// MQTT publishes to the path's entry broker.
    Mqtt {
        client: AsyncClient,
        qos: QoS,
        size: usize,
        quiet: u64,
    },
    /// Cloud `command` frames, handed to the sink's writer in tick batches.
    Commands { tx: mpsc::Sender<Vec<String>> },
}

/// Counts of one driven schedule.
#[derive(Debug, Default, Clone, Copy)]
pub struct Sent {
    pub total: u64,
    pub measured: u64,
}

impl Gen {
    /// Sends every message of `s`, numbered from `seq0`, on schedule.
    pub async fn drive(&mut self, s: &Schedule, seq0: u64) -> io::Result<Sent> {
        let ticker = Ticker::new(s.t0, s.period)?;
        let mut sent = Sent::default();
        let (mut next, mut fired) = (0u64, 0u64);
        while next < s.ticks {
            fired += ticker.wait().await?;
            while next < fired.min(s.ticks) {
                let (first, n) = (s.before(next), s.before(next + 1) - s.before(next));
                let t = s.t0 + next * s.period;
                self.emit(seq0 + first, n, t).await?;
                sent.total += n;
                if t >= s.measure_from {
                    sent.measured += n;
                }
                next += 1;
            }
        }
        Ok(sent)
    }

    async fn emit(&mut self, seq: u64, n: u64, t: u64) -> io::Result<()> {
        match self {
            Gen::Mqtt {
                client,
                qos,
                size,
                quiet,
            } => {
                for i in seq..seq + n {
                    client
                        .publish(topic(i, *quiet), *qos, false, payload(i, t, *size))
                        .await
                        .map_err(|e| io::Error::other(format!("publish: {e}")))?;
                }
            }
            Gen::Commands { tx } => {
                let batch = (seq..seq + n).map(|i| command_frame(i, t)).collect();
                tx.send(batch)
                    .await
                    .map_err(|_| io::Error::other("cloud writer stopped"))?;
            }
        }
        Ok(())
    }
}

/// A `command` frame; the payload carries the sequence number and time.
pub fn command_frame(seq: u64, t: u64) -> String {
    format!(
        r#"{{"type":"command","id":"c-{seq}","source":"app","topic":"ampio/to/dev/o/1/cmd","payload":"{{\"set\":1,\"seq\":{seq},\"t\":{t}}}","qos":1}}"#
    )
}

/// MQTT options shared by the bench clients.
pub fn options(id: &str, port: u16) -> MqttOptions {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30))
        .set_clean_session(true)
        .set_inflight(1000)
        .set_request_channel_capacity(100_000)
        .set_max_packet_size(1 << 20, 1 << 20);
    o
}

/// A publisher: its event loop runs on a task of its own.
pub fn publisher(id: &str, port: u16) -> AsyncClient {
    let (client, eventloop) = AsyncClient::new(options(id, port), 100_000);
    tokio::spawn(poll_forever(eventloop, None));
    client
}

/// Starts a subscriber on `filter`; waits for its SUBACK.
pub async fn subscriber(
    id: &str,
    port: u16,
    filter: &str,
    qos: QoS,
    rec: Arc<Mutex<Recorder>>,
    probes: Arc<AtomicU64>,
) -> Result<AsyncClient, String> {
    let (client, mut eventloop) = AsyncClient::new(options(id, port), 1000);
    client
        .subscribe(filter, qos)
        .await
        .map_err(|e| format!("subscribe: {e}"))?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, eventloop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => break,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("subscriber {id} on port {port}: {e}")),
            Err(_) => return Err(format!("subscriber {id}: no SUBACK in 10 s")),
        }
    }
    tokio::spawn(poll_forever(eventloop, Some((rec, probes))));
    Ok(client)
}

/// Polls an event loop until it fails for good; records deliveries.
async fn poll_forever(mut el: EventLoop, sink: Option<(Arc<Mutex<Recorder>>, Arc<AtomicU64>)>) {
    let mut failures = 0;
    loop {
        match el.poll().await {
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let now = now_ns();
                let Some((rec, probes)) = &sink else { continue };
                if p.topic.starts_with("bench/probe") {
                    probes.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let text = std::str::from_utf8(&p.payload).unwrap_or("");
                if let (Some(seq), Some(t)) = (field(text, "\"seq\":"), field(text, "\"t\":")) {
                    if let Ok(mut r) = rec.lock() {
                        r.on_delivery(seq, t, now);
                    }
                }
            }
            Ok(_) => failures = 0,
            Err(_) => {
                failures += 1;
                if failures > 50 {
                    return; // the broker is gone (end of the step)
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Publishes probes on `bench/probe` until the receiving end has seen one.
pub async fn probe(
    client: &AsyncClient,
    probes: &AtomicU64,
    within: Duration,
) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + within;
    let before = probes.load(Ordering::Relaxed);
    while tokio::time::Instant::now() < deadline {
        client
            .publish("bench/probe", QoS::AtMostOnce, false, r#"{"probe":1}"#)
            .await
            .map_err(|e| format!("probe publish: {e}"))?;
        tokio::time::sleep(Duration::from_millis(50)).await;
        if probes.load(Ordering::Relaxed) > before {
            return Ok(());
        }
    }
    Err(format!("no probe came through in {within:?}"))
}
