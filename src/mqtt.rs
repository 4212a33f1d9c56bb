//! The broker side: one task owns the rumqttc event loop.
//!
//! The task polls the event loop without pause (rumqttc stalls when it is
//! not polled), forwards every received publish to the relay over a bounded
//! channel (waiting when it is full: backpressure reaches the broker, which
//! holds QoS 1 messages), re-subscribes after every CONNACK, and reconnects
//! with backoff.
//!
//! Publishing goes through [`MqttHandle`], callable from any task. To tell
//! the caller when the broker accepted a publish, the handle queues a waiter
//! in a FIFO under the same lock as it hands the request to rumqttc, so
//! waiters line up with rumqttc's `Outgoing::Publish` events, which follow
//! request order. A QoS 1 waiter then waits for the PUBACK of its packet id;
//! a QoS 0 waiter completes once the packet is written. On a disconnect,
//! every waiter gets [`MqttError::Disconnected`] and the requests rumqttc
//! kept for a retransmission are discarded: a command answered
//! `unavailable` is never published later behind the cloud's back.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::backoff::{jitter, Backoff};
use crate::clock::Clock;
use crate::config::{BrokerAddr, MqttConfig};
use crate::gate::Gate;
use crate::notify::Notifier;
use crate::stats::Stats;

/// Capacity of rumqttc's request channel.
const REQUEST_CAPACITY: usize = 256;
/// Most QoS 1 publishes awaiting a PUBACK at once.
const MAX_INFLIGHT: u16 = 100;
/// Longest wait for the broker after the first failure.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Largest MQTT packet taken; a larger publish is skipped (edge rule 19).
const MAX_PACKET_BYTES: usize = 16 * 1024 * 1024;

/// Errors of the broker side.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MqttError {
    #[error("broker not connected")]
    Disconnected,
    /// The PUBLISH was sent and the connection was lost before its PUBACK.
    #[error("the broker connection was lost after the command was sent: it may have run")]
    InDoubt,
    #[error("broker request queue full")]
    Busy,
    #[error("broker task stopped")]
    Stopped,
}

/// A message received from the broker.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub topic: String,
    pub payload: Bytes,
    /// Cloud-clock unix ms when it was received.
    pub ts: i64,
}

type Waiter = oneshot::Sender<Result<(), MqttError>>;

struct Inner {
    /// The current client; replaced when the broker settings change.
    client: AsyncClient,
    /// Requests handed to rumqttc, not yet written: (qos, waiter).
    queued: VecDeque<(QoS, Option<Waiter>)>,
    /// QoS 1 publishes written, awaiting PUBACK, by packet id.
    by_pkid: HashMap<u16, Waiter>,
    /// The retained status value (`online`, `cloud-down`).
    status: &'static str,
}

impl Inner {
    /// Publishes without a caller waiting (status); keeps the FIFO aligned.
    fn publish_untracked(&mut self, topic: &str, value: &'static str) {
        if self
            .client
            .try_publish(topic, QoS::AtLeastOnce, true, value)
            .is_ok()
        {
            self.queued.push_back((QoS::AtLeastOnce, None));
        }
    }
}

struct Shared {
    connected: AtomicBool,
    inner: Mutex<Inner>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Cloneable handle to the broker task.
#[derive(Clone)]
pub struct MqttHandle {
    shared: Arc<Shared>,
    status_topic: Option<Arc<str>>,
}

impl MqttHandle {
    pub fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::Acquire)
    }

    /// Hands a publish to the broker task; the receiver completes when the
    /// broker accepted it (PUBACK for QoS 1, written for QoS 0).
    pub fn publish(
        &self,
        topic: &str,
        payload: Vec<u8>,
        qos: u8,
        retain: bool,
    ) -> Result<oneshot::Receiver<Result<(), MqttError>>, MqttError> {
        let qos = to_qos(qos);
        let (tx, rx) = oneshot::channel();
        let mut inner = self.shared.lock();
        if !self.is_connected() {
            return Err(MqttError::Disconnected);
        }
        inner
            .client
            .try_publish(topic, qos, retain, payload)
            .map_err(|_| MqttError::Busy)?;
        inner.queued.push_back((qos, Some(tx)));
        Ok(rx)
    }

    /// Sets the daemon's retained status (`online`, `cloud-down`): published
    /// now when the broker is connected, and again after every reconnect.
    pub fn set_status(&self, value: &'static str) {
        let mut inner = self.shared.lock();
        inner.status = value;
        if let (Some(topic), true) = (&self.status_topic, self.is_connected()) {
            inner.publish_untracked(topic, value);
        }
    }
}

fn to_qos(q: u8) -> QoS {
    match q {
        0 => QoS::AtMostOnce,
        2 => QoS::ExactlyOnce,
        _ => QoS::AtLeastOnce,
    }
}

/// The retained topic where the daemon publishes its own state.
#[derive(Debug, Clone)]
pub struct StatusTopic {
    pub topic: String,
}

/// Builds the rumqttc options from the configuration.
pub(crate) fn options(cfg: &MqttConfig, status: Option<&StatusTopic>) -> MqttOptions {
    let mut o = match &cfg.broker {
        BrokerAddr::Tcp { host, port } => MqttOptions::new(cfg.client_id.clone(), host, *port),
        // rumqttc takes the socket's path in place of the host name.
        BrokerAddr::Unix(path) => {
            let mut o = MqttOptions::new(cfg.client_id.clone(), path.to_string_lossy(), 0);
            o.set_transport(rumqttc::Transport::Unix);
            o
        }
    };
    o.set_keep_alive(Duration::from_secs(cfg.keep_alive_s))
        .set_clean_session(true)
        .set_inflight(MAX_INFLIGHT)
        .set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES)
        .set_request_channel_capacity(REQUEST_CAPACITY);
    if let Some(user) = &cfg.username {
        let pass = cfg
            .password
            .as_ref()
            .map(|p| p.expose().to_owned())
            .unwrap_or_default();
        o.set_credentials(user.clone(), pass);
    }
    if let Some(s) = status {
        o.set_last_will(LastWill::new(
            s.topic.clone(),
            "offline",
            QoS::AtLeastOnce,
            true,
        ));
    }
    o
}

/// Everything the broker task is wired to.
pub struct Wiring {
    /// Broker settings; a change reconnects with the new ones.
    pub cfg: watch::Receiver<MqttConfig>,
    pub status: Option<StatusTopic>,
    pub clock: Arc<Clock>,
    pub stats: Arc<Stats>,
    pub notifier: Notifier,
    pub to_relay: mpsc::Sender<Incoming>,
}

/// Creates the handle and the task future. The future runs until `token`
/// is cancelled, then disconnects from the broker.
pub fn spawn(
    mut w: Wiring,
    token: CancellationToken,
) -> (MqttHandle, impl std::future::Future<Output = ()>) {
    let cfg = w.cfg.borrow_and_update().clone();
    let (client, eventloop) = AsyncClient::new(options(&cfg, w.status.as_ref()), REQUEST_CAPACITY);
    let shared = Arc::new(Shared {
        connected: AtomicBool::new(false),
        inner: Mutex::new(Inner {
            client: client.clone(),
            queued: VecDeque::new(),
            by_pkid: HashMap::new(),
            status: "cloud-down",
        }),
    });
    let handle = MqttHandle {
        shared: shared.clone(),
        status_topic: w.status.as_ref().map(|s| Arc::from(s.topic.as_str())),
    };
    let task = Task {
        client,
        eventloop,
        shared,
        addr: cfg.broker.to_string(),
        cfg,
        w,
        ready_sent: false,
        failures: Default::default(),
    };
    (handle, task.run(token))
}

struct Task {
    client: AsyncClient,
    eventloop: EventLoop,
    shared: Arc<Shared>,
    cfg: MqttConfig,
    addr: String,
    w: Wiring,
    ready_sent: bool,
    failures: crate::broker_log::Failures,
}

/// What the loop does after an event.
enum Flow {
    Continue,
    Stop,
}

impl Task {
    async fn run(mut self, token: CancellationToken) {
        let mut backoff = Backoff::new(MAX_BACKOFF);
        let mut up_since: Option<Instant> = None;
        let cancelled = token.cancelled();
        tokio::pin!(cancelled);
        // See `crate::gate`: `cancelled` is polled through the gate only
        // (a poll elsewhere would take its waker); rare waits below use
        // fresh `token.cancelled()` futures.
        let stop_gate = Gate::new();
        // The settings watch, likewise: one future living across
        // iterations, behind a gate (a fresh `changed()` on every pass
        // would add and remove a waiter under the watch's lock each time).
        // It watches a clone of `w.cfg` and hands it back with each change.
        let next_settings = |mut rx: watch::Receiver<MqttConfig>| async move {
            let r = rx.changed().await;
            r.map(|()| rx)
        };
        let mut settings = std::pin::pin!(next_settings(self.w.cfg.clone()));
        let (settings_gate, mut settings_live) = (Gate::new(), true);
        loop {
            // `poll` is only ever abandoned at shutdown or when new broker
            // settings replace the event loop: it is not cancel-safe.
            let ev = tokio::select! {
                _ = stop_gate.wait(|cx| cancelled.as_mut().poll(cx)) => break,
                r = settings_gate.wait(|cx| settings.as_mut().poll(cx)), if settings_live => {
                    match r {
                        Ok(mut rx) => {
                            let cfg = rx.borrow_and_update().clone();
                            settings.set(next_settings(rx));
                            if self.reconfigure(cfg) {
                                up_since = None;
                            }
                        }
                        Err(_) => settings_live = false, // no more reloads
                    }
                    continue;
                }
                ev = self.eventloop.poll() => ev,
            };
            self.take_oversized();
            let mut flow = match ev {
                Ok(ev) => self.on_event(ev, &mut up_since, &token).await,
                Err(e) => {
                    let lived = up_since.take().map(|t| t.elapsed());
                    let delay = backoff
                        .next_delay(lived.unwrap_or_default(), jitter())
                        .max(Duration::from_millis(100));
                    self.on_disconnected(&crate::broker_log::describe(&e), lived, Some(delay));
                    tokio::select! {
                        _ = token.cancelled() => Flow::Stop,
                        _ = tokio::time::sleep(delay) => Flow::Continue,
                    }
                }
            };
            // One read from the broker socket often brings several packets:
            // rumqttc has parsed them already. Take them here, in order,
            // without another pass through `select!` (what `poll` would
            // return next, minus its per-call timers and allocation).
            while let Flow::Continue = flow {
                let Some(ev) = self.eventloop.state.events.pop_front() else {
                    break;
                };
                flow = self.on_event(ev, &mut up_since, &token).await;
            }
            if let Flow::Stop = flow {
                break;
            }
        }
        self.shutdown().await;
    }

    /// Handles one event of the broker connection.
    async fn on_event(
        &mut self,
        ev: Event,
        up_since: &mut Option<Instant>,
        token: &CancellationToken,
    ) -> Flow {
        match ev {
            Event::Incoming(Packet::ConnAck(_)) => {
                *up_since = Some(Instant::now());
                self.on_connected();
            }
            Event::Incoming(Packet::Publish(p)) => {
                let msg = Incoming {
                    topic: p.topic,
                    payload: p.payload,
                    ts: self.w.clock.now_ms(),
                };
                // The relay usually has room: no wait, no `select!`. The
                // cooperative budget is spent as `send` would spend it, so
                // a burst from the broker yields to the relay and the
                // cloud writer (same thread) every so often.
                match self.w.to_relay.try_send(msg) {
                    Ok(()) => tokio::task::coop::consume_budget().await,
                    Err(mpsc::error::TrySendError::Closed(_)) => return Flow::Stop,
                    Err(mpsc::error::TrySendError::Full(msg)) => {
                        tokio::select! {
                            _ = token.cancelled() => return Flow::Stop,
                            r = self.w.to_relay.send(msg) => if r.is_err() { return Flow::Stop },
                        }
                    }
                }
            }
            Event::Incoming(Packet::PubAck(ack)) => {
                if let Some(tx) = self.shared.lock().by_pkid.remove(&ack.pkid) {
                    let _ = tx.send(Ok(()));
                }
            }
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                let mut inner = self.shared.lock();
                match inner.queued.pop_front() {
                    Some((QoS::AtMostOnce, Some(tx))) => {
                        let _ = tx.send(Ok(()));
                    }
                    Some((_, Some(tx))) => {
                        inner.by_pkid.insert(pkid, tx);
                    }
                    _ => {}
                }
            }
            _ => {}
        }
        Flow::Continue
    }

    /// New broker settings: drop the connection and start over with them.
    /// Returns false when nothing that matters changed.
    fn reconfigure(&mut self, cfg: MqttConfig) -> bool {
        if cfg == self.cfg {
            return false;
        }
        let addr = cfg.broker.to_string();
        tracing::info!(broker = %addr, "broker settings changed; reconnecting");
        let _ = self.client.try_disconnect();
        self.on_disconnected("broker settings changed", None, None);
        let (client, eventloop) =
            AsyncClient::new(options(&cfg, self.w.status.as_ref()), REQUEST_CAPACITY);
        self.shared.lock().client = client.clone();
        self.client = client;
        self.eventloop = eventloop;
        self.addr = addr;
        self.cfg = cfg;
        true
    }

    fn on_connected(&mut self) {
        tracing::info!(broker = %self.addr, "connected to broker");
        let qos = to_qos(self.cfg.qos);
        let filters: Vec<_> = self
            .cfg
            .subscribe
            .iter()
            .map(|f| rumqttc::SubscribeFilter::new(f.clone(), qos))
            .collect();
        if let Err(e) = self.client.try_subscribe_many(filters) {
            tracing::error!(error = %e, "subscribing to mqtt.subscribe failed");
        }
        {
            let mut inner = self.shared.lock();
            self.shared.connected.store(true, Ordering::Release);
            if let Some(s) = &self.w.status {
                let value = inner.status;
                inner.publish_untracked(&s.topic, value);
            }
        }
        self.w.stats.broker.up();
        if !self.ready_sent {
            self.ready_sent = true;
            self.w.notifier.notify("READY=1");
        }
        self.w.notifier.status(if self.w.stats.cloud.is_up() {
            "relaying: broker and cloud connected"
        } else {
            "broker connected; waiting for the cloud"
        });
    }

    /// `lived`: how long the session had been up (`None`: it never was);
    /// `next`: the delay before the next attempt.
    fn on_disconnected(&mut self, error: &str, lived: Option<Duration>, next: Option<Duration>) {
        let was_up = self.shared.connected.load(Ordering::Acquire);
        {
            let mut inner = self.shared.lock();
            self.shared.connected.store(false, Ordering::Release);
            // Move whatever is still in rumqttc's request channel into
            // `pending`, then drop it all: see the module doc.
            self.eventloop.clean();
            self.eventloop.pending.clear();
            for (_, tx) in inner.queued.drain(..) {
                if let Some(tx) = tx {
                    let _ = tx.send(Err(MqttError::Disconnected));
                }
            }
            for (_, tx) in inner.by_pkid.drain() {
                let _ = tx.send(Err(MqttError::InDoubt));
            }
        }
        let why = format!("broker {}: {error}", self.addr);
        self.log_failure(&why, was_up.then(|| lived.unwrap_or_default()), next);
        self.w
            .notifier
            .status(&format!("broker unreachable, retrying: {why}"));
        self.w.stats.broker.down(why, next);
    }

    /// Messages over the size limit that rumqttc skipped (edge rule 19):
    /// counted and logged, and the relay goes on.
    fn take_oversized(&mut self) {
        while let Some((topic, size)) = self.eventloop.state.oversized.pop_front() {
            Stats::add(&self.w.stats.mqtt_oversized, 1);
            tracing::warn!(
                topic = %topic,
                bytes = size,
                "skipped an MQTT message over the {} MiB the daemon takes; relaying goes on",
                MAX_PACKET_BYTES >> 20
            );
        }
    }

    /// Logs a failure as [`crate::broker_log::Failures`] decides.
    fn log_failure(&mut self, why: &str, lived: Option<Duration>, next: Option<Duration>) {
        let next_s = next.map_or(0.0, |d| d.as_secs_f64());
        let Some(lived) = lived else {
            let r = self.failures.attempt_failed();
            if r.warn {
                tracing::warn!(error = %why, attempt = r.attempt, "cannot reach the broker; next attempt in {next_s:.1} s");
            } else {
                tracing::debug!(error = %why, attempt = r.attempt, "broker connection attempt failed; next in {next_s:.1} s");
            }
            return;
        };
        let r = self.failures.lost(lived, &self.cfg.client_id);
        tracing::warn!(error = %why, "lost the broker connection; reconnecting in {next_s:.1} s");
        if let Some(hint) = r.hint {
            tracing::warn!("{hint}");
        }
    }

    async fn shutdown(mut self) {
        if !self.shared.connected.load(Ordering::Acquire) {
            return;
        }
        if let Some(s) = &self.w.status {
            let _ = self
                .client
                .try_publish(s.topic.clone(), QoS::AtLeastOnce, true, "offline");
        }
        let _ = self.client.try_disconnect();
        let drain = async {
            loop {
                match self.eventloop.poll().await {
                    Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
        self.shared.connected.store(false, Ordering::Release);
        tracing::info!(broker = %self.addr, "disconnected from broker");
    }
}
