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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS,
};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::backoff::{jitter, Backoff};
use crate::clock::Clock;
use crate::config::MqttConfig;
use crate::stats::Stats;

/// Capacity of rumqttc's request channel.
const REQUEST_CAPACITY: usize = 256;
/// Most QoS 1 publishes awaiting a PUBACK at once.
const MAX_INFLIGHT: u16 = 100;
/// Longest wait for the broker after the first failure.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Errors of the broker side.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MqttError {
    #[error("broker not connected")]
    Disconnected,
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

#[derive(Default)]
struct Waiters {
    /// Requests handed to rumqttc, not yet written: (qos, waiter).
    queued: VecDeque<(QoS, Option<Waiter>)>,
    /// QoS 1 publishes written, awaiting PUBACK, by packet id.
    by_pkid: HashMap<u16, Waiter>,
}

struct Shared {
    connected: AtomicBool,
    waiters: Mutex<Waiters>,
}

/// Cloneable handle to the broker task.
#[derive(Clone)]
pub struct MqttHandle {
    client: AsyncClient,
    shared: Arc<Shared>,
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
        let mut w = self
            .shared
            .waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if !self.is_connected() {
            return Err(MqttError::Disconnected);
        }
        self.client
            .try_publish(topic, qos, retain, payload)
            .map_err(|_| MqttError::Busy)?;
        w.queued.push_back((qos, Some(tx)));
        Ok(rx)
    }
}

fn to_qos(q: u8) -> QoS {
    match q {
        0 => QoS::AtMostOnce,
        2 => QoS::ExactlyOnce,
        _ => QoS::AtLeastOnce,
    }
}

/// What the daemon publishes about itself (issue: status topic).
#[derive(Debug, Clone)]
pub struct StatusTopic {
    pub topic: String,
}

/// Builds the rumqttc options from the configuration.
fn options(cfg: &MqttConfig, status: Option<&StatusTopic>) -> MqttOptions {
    let mut o = MqttOptions::new(cfg.client_id.clone(), cfg.host.clone(), cfg.port);
    o.set_keep_alive(Duration::from_secs(cfg.keep_alive_s))
        .set_clean_session(true)
        .set_inflight(MAX_INFLIGHT)
        .set_max_packet_size(16 * 1024 * 1024, 16 * 1024 * 1024)
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

/// Creates the handle and the task future. The future runs until `token`
/// is cancelled, then disconnects from the broker.
pub fn spawn(
    cfg: &MqttConfig,
    status: Option<StatusTopic>,
    clock: Arc<Clock>,
    stats: Arc<Stats>,
    to_relay: mpsc::Sender<Incoming>,
    token: CancellationToken,
) -> (MqttHandle, impl std::future::Future<Output = ()>) {
    let (client, eventloop) = AsyncClient::new(options(cfg, status.as_ref()), REQUEST_CAPACITY);
    let shared = Arc::new(Shared {
        connected: AtomicBool::new(false),
        waiters: Mutex::new(Waiters::default()),
    });
    let handle = MqttHandle {
        client: client.clone(),
        shared: shared.clone(),
    };
    let task = Task {
        client,
        eventloop,
        shared,
        subscribe: cfg.subscribe.clone(),
        qos: to_qos(cfg.qos),
        addr: format!("{}:{}", cfg.host, cfg.port),
        status,
        clock,
        stats,
        to_relay,
    };
    (handle, task.run(token))
}

struct Task {
    client: AsyncClient,
    eventloop: EventLoop,
    shared: Arc<Shared>,
    subscribe: Vec<String>,
    qos: QoS,
    addr: String,
    status: Option<StatusTopic>,
    clock: Arc<Clock>,
    stats: Arc<Stats>,
    to_relay: mpsc::Sender<Incoming>,
}

impl Task {
    async fn run(mut self, token: CancellationToken) {
        let mut backoff = Backoff::new(MAX_BACKOFF);
        let mut up_since: Option<Instant> = None;
        loop {
            let ev = tokio::select! {
                _ = token.cancelled() => break,
                ev = self.eventloop.poll() => ev,
            };
            match ev {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    up_since = Some(Instant::now());
                    self.on_connected();
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let msg = Incoming {
                        topic: p.topic,
                        payload: p.payload,
                        ts: self.clock.now_ms(),
                    };
                    tokio::select! {
                        _ = token.cancelled() => break,
                        r = self.to_relay.send(msg) => if r.is_err() { break },
                    }
                }
                Ok(Event::Incoming(Packet::PubAck(ack))) => {
                    let mut w = self.waiters();
                    if let Some(tx) = w.by_pkid.remove(&ack.pkid) {
                        let _ = tx.send(Ok(()));
                    }
                }
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                    let mut w = self.waiters();
                    if let Some((qos, tx)) = w.queued.pop_front() {
                        match (qos, tx) {
                            (QoS::AtMostOnce, Some(tx)) => {
                                let _ = tx.send(Ok(()));
                            }
                            (_, Some(tx)) => {
                                w.by_pkid.insert(pkid, tx);
                            }
                            (_, None) => {}
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    let lived = up_since.take().map(|t| t.elapsed()).unwrap_or_default();
                    self.on_disconnected(&e);
                    let delay = backoff
                        .next_delay(lived, jitter())
                        .max(Duration::from_millis(100));
                    tokio::select! {
                        _ = token.cancelled() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        self.shutdown().await;
    }

    fn waiters(&self) -> std::sync::MutexGuard<'_, Waiters> {
        self.shared
            .waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn on_connected(&mut self) {
        tracing::info!(broker = %self.addr, "connected to broker");
        let filters: Vec<_> = self
            .subscribe
            .iter()
            .map(|f| rumqttc::SubscribeFilter::new(f.clone(), self.qos))
            .collect();
        if let Err(e) = self.client.try_subscribe_many(filters) {
            tracing::error!(error = %e, "subscribing to mqtt.subscribe failed");
        }
        self.shared.connected.store(true, Ordering::Release);
        self.stats.broker.up();
        if let Some(s) = &self.status {
            let mut w = self
                .shared
                .waiters
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if self
                .client
                .try_publish(s.topic.clone(), QoS::AtLeastOnce, true, "online")
                .is_ok()
            {
                w.queued.push_back((QoS::AtLeastOnce, None));
            }
        }
    }

    fn on_disconnected(&mut self, e: &ConnectionError) {
        let was_up = self.shared.connected.load(Ordering::Acquire);
        {
            let shared = self.shared.clone();
            let mut w = shared.waiters.lock().unwrap_or_else(|p| p.into_inner());
            shared.connected.store(false, Ordering::Release);
            // Move whatever is still in rumqttc's request channel into
            // `pending`, then drop it all: see the module doc.
            self.eventloop.clean();
            self.eventloop.pending.clear();
            for (_, tx) in w.queued.drain(..) {
                if let Some(tx) = tx {
                    let _ = tx.send(Err(MqttError::Disconnected));
                }
            }
            for (_, tx) in w.by_pkid.drain() {
                let _ = tx.send(Err(MqttError::Disconnected));
            }
        }
        let why = format!("broker {}: {e}", self.addr);
        if was_up {
            tracing::warn!(error = %why, "lost the broker connection; reconnecting");
        } else {
            tracing::debug!(error = %why, "broker connection attempt failed");
        }
        self.stats.broker.down(why);
    }

    async fn shutdown(mut self) {
        if !self.shared.connected.load(Ordering::Acquire) {
            return;
        }
        if let Some(s) = &self.status {
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
