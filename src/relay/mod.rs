//! The relay: routing between the broker and the cloud, command execution,
//! links, idempotency. One task owns all of this state.
//!
//! The relay never waits on the cloud writer: frames go to two bounded
//! channels with `try_send` (acks, errors, `revoked` and snapshots on the
//! priority channel, which the writer always empties first; state on the
//! outbox), and whatever does not fit (or arrives while the cloud is down)
//! waits in a local queue: control frames in a short FIFO, state in the
//! coalescing [`buffer::Coalescer`]. Select arms take channel capacity as
//! it frees up. Because the relay never blocks on the writer, the cloud
//! task may block handing inbound frames to the relay without any deadlock.
//!
//! Work on the hot path (one MQTT message): classify the payload once,
//! encode the app frame once; when links match, parse, filter and encode the
//! filtered payload once. The message then travels as one [`StateOut`]
//! whatever the number of links: one channel slot, one buffer entry; the
//! writer frames the per-link envelope as it writes (see `cloud`).
//!
//! Sub-modules are the pure core: [`checks`] (command checks),
//! [`idem`] (idempotency window), [`buffer`] (coalescing).

pub mod buffer;
pub mod checks;
pub mod idem;
pub mod latest;
mod store;

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::audit::{AuditHandle, Record};
use crate::clock::Clock;
use crate::gate::Gate;
use crate::links::{Origin, Registry};
use crate::mqtt::{Incoming, MqttHandle};
use crate::privacy::Policy;
use crate::protocol::{self, Command, Inbound, Outcome, PayloadRepr, Reason};
use crate::stats::Stats;
use crate::topic::{FilterSet, TopicMap};
use buffer::Coalescer;
use idem::{IdemStore, Seen};
use latest::Latest;
pub use store::{spawn_store, StoreHandle};

/// Capacity of the state channel from the relay to the cloud writer, in
/// MQTT messages (each is the app frame plus one frame per link).
pub const OUTBOX_CAPACITY: usize = 256;
/// Capacity of the priority channel (acks, errors, `revoked`, snapshots).
pub const PRIORITY_CAPACITY: usize = 1024;
/// Most control frames (acks, errors, snapshots) held while the writer is
/// behind; past that the oldest acks are dropped (the cloud retries and the
/// idempotency window answers again).
const CONTROL_QUEUE_MAX: usize = 50_000;

/// Most broker messages handled in one loop turn before the other event
/// sources get a look in.
const STATE_DRAIN: usize = 64;

/// One frame or group of frames for the cloud writer.
///
/// Acks, errors, `revoked` and snapshots travel on the priority channel and
/// are written before any queued state, so an ack never waits behind a
/// flood; state travels on the outbox as one [`StateOut`] per MQTT message.
#[derive(Debug, Clone)]
pub enum OutFrame {
    /// Ack, error: not re-buffered when the link drops.
    Control(String),
    /// A `sync` snapshot frame of `topic`, made from message `seq`. State
    /// of that topic still queued behind it is older and is not written
    /// after it (per-topic order).
    Snapshot {
        text: String,
        topic: Arc<str>,
        seq: u64,
    },
    /// A `revoked` frame for this link; the writer reports it written.
    Revoked { text: String, link: Arc<str> },
    /// What one MQTT message became.
    State(StateOut),
}

/// One MQTT message for every audience: the app frame, ready to write, and
/// the filtered payload with the links it goes to. The writer frames the
/// small per-link envelope itself, just after checking that the link is
/// still active, so the payload is filtered, encoded and queued once
/// however many links see the topic.
#[derive(Debug, Clone)]
pub struct StateOut {
    pub topic: Arc<str>,
    pub ts: i64,
    /// Relay-wide message number (orders a message against snapshots).
    pub seq: u64,
    /// The app frame; `None` once written (a partly written message handed
    /// back after a failed write).
    pub app: Option<String>,
    pub links: Option<Fanout>,
}

impl StateOut {
    /// What it costs against `cloud.buffer_bytes` in the offline buffer:
    /// the text it holds (the shared link list is not counted).
    pub fn weight(&self) -> usize {
        self.topic.len()
            + self.app.as_ref().map_or(0, String::len)
            + self.links.as_ref().map_or(0, |f| f.payload.len())
    }
}

/// The filtered payload of one message and the links to send it to.
#[derive(Debug, Clone)]
pub struct Fanout {
    /// The privacy-filtered payload, as JSON text.
    pub payload: Arc<str>,
    /// Its key paths, for the audit.
    pub keys: Arc<[String]>,
    /// The links exposing the topic (shared by every message of the topic
    /// until the registry changes).
    pub ids: LinkIds,
    /// How many of `ids` were written already (a message handed back after
    /// a failed write resumes there).
    pub from: usize,
}

/// The links a message goes to, in registry order.
pub type LinkIds = Arc<[Arc<str>]>;

/// Most topics whose routes are remembered; past that the cache restarts.
const ROUTE_CACHE_MAX: usize = 4096;

/// The links each topic goes to, for one registry snapshot: matching every
/// link's filters against the topic is done once per topic and snapshot,
/// not once per message.
#[derive(Default)]
struct RouteCache {
    /// The snapshot the routes were computed from (held, so its address
    /// cannot be reused by a newer one).
    snap: Option<Arc<crate::links::Snapshot>>,
    /// `None`: no active link exposes the topic (or it holds an address).
    routes: TopicMap<Option<LinkIds>>,
}

impl RouteCache {
    fn get(&mut self, registry: &Registry, topic: &Arc<str>) -> Option<LinkIds> {
        let current = registry.load();
        if !self.snap.as_ref().is_some_and(|s| Arc::ptr_eq(s, &current)) {
            self.snap = Some(arc_swap::Guard::into_inner(current));
            self.routes.clear();
        }
        if let Some(r) = self.routes.get(topic) {
            return r.clone();
        }
        let snap = self.snap.as_ref()?;
        let ids: Vec<Arc<str>> = if crate::privacy::contains_email(topic) {
            Vec::new() // a topic holding an address never goes to links
        } else {
            snap.routes(topic).map(|l| l.id.clone()).collect()
        };
        let r = (!ids.is_empty()).then(|| Arc::from(ids));
        if self.routes.len() >= ROUTE_CACHE_MAX {
            self.routes.clear();
        }
        self.routes.insert(topic.clone(), r.clone());
        r
    }
}

/// What the cloud task tells the relay.
#[derive(Debug)]
pub enum CloudEvent {
    /// A session started (`welcome` read).
    Up,
    /// The connection is gone; frames the writer had not written.
    Down { unsent: Vec<OutFrame> },
    /// A frame to execute.
    Frame(Inbound),
    /// The `revoked` frame for this link was written.
    Told(Arc<str>),
}

/// Requests from the local control socket.
#[derive(Debug)]
pub enum ControlRequest {
    /// A link revoked on the command line (already revoked in memory).
    Revoke {
        link_id: String,
        reply: oneshot::Sender<Result<(), String>>,
    },
}

/// Settings the relay reads on every message.
#[derive(Debug, Clone)]
pub struct Settings {
    pub command_topics: FilterSet,
    pub max_payload_bytes: usize,
    pub buffer_topics: usize,
    pub buffer_bytes: usize,
    pub policy: Arc<Policy>,
    pub commands_per_second: f64,
    pub command_burst: u32,
}

/// Everything the relay task is wired to.
pub struct Wiring {
    /// Per-message settings; a reload sends new ones, seen by the next message.
    pub settings: watch::Receiver<Settings>,
    /// Bumped on every loop iteration (the systemd watchdog watches it).
    pub progress: Arc<crate::notify::Progress>,
    pub registry: Arc<Registry>,
    pub clock: Arc<Clock>,
    pub stats: Arc<Stats>,
    pub mqtt: MqttHandle,
    pub outbox: mpsc::Sender<OutFrame>,
    pub priority: mpsc::Sender<OutFrame>,
    pub from_mqtt: mpsc::Receiver<Incoming>,
    pub from_cloud: mpsc::Receiver<CloudEvent>,
    pub from_control: mpsc::Receiver<ControlRequest>,
    pub store: StoreHandle,
    pub audit: AuditHandle,
}

type Pending = Pin<Box<dyn Future<Output = Completion> + Send>>;

/// A frame whose ack had to wait (PUBACK, durable write).
struct Completion {
    id: String,
    outcome: Outcome,
    command: bool,
    /// The command may have run although the ack is `unavailable`.
    in_doubt: bool,
}

struct Relay {
    w: Wiring,
    settings: Settings,
    online: bool,
    control: VecDeque<OutFrame>,
    buffer: Coalescer<StateOut>,
    /// The last message of each topic (for `sync`).
    latest: Latest,
    /// Messages received so far (numbers `StateOut::seq`).
    seq: u64,
    idem: IdemStore,
    limits: crate::limits::Limits,
    pending: FuturesUnordered<Pending>,
    /// Warnings, at most one a minute each: offline buffer drops, topics
    /// forgotten by `latest`.
    drops_warn: WarnEvery,
    forgotten_warn: WarnEvery,
    routes: RouteCache,
    /// The `sync` being answered, if any (one at a time, edge rule 20).
    sync: Option<SyncRun>,
    /// Links whose revocation is in the audit already (since start).
    audited_revokes: std::collections::HashSet<String>,
}

/// Runs the relay until `token` is cancelled.
pub async fn run(mut w: Wiring, token: CancellationToken) {
    let settings = w.settings.borrow_and_update().clone();
    let limits = crate::limits::Limits::new(settings.commands_per_second, settings.command_burst);
    let mut r = Relay {
        buffer: Coalescer::with_bytes(
            settings.buffer_topics,
            settings.buffer_bytes,
            StateOut::weight,
        ),
        latest: Latest::new(settings.buffer_topics, settings.buffer_bytes),
        settings,
        w,
        online: false,
        control: VecDeque::new(),
        seq: 0,
        idem: IdemStore::default(),
        limits,
        pending: FuturesUnordered::new(),
        drops_warn: WarnEvery::default(),
        forgotten_warn: WarnEvery::default(),
        audited_revokes: Default::default(),
        routes: RouteCache::default(),
        sync: None,
    };
    // One timer: a tick a second keeps the watchdog's progress moving on
    // an idle relay, and every 60th runs the housekeeping.
    let mut second = tokio::time::interval(Duration::from_secs(1));
    let mut seconds: u64 = 0;
    let cancelled = token.cancelled();
    tokio::pin!(cancelled);
    // The sources that are idle while state flows (see `crate::gate`).
    let (stop_gate, cloud_gate, control_gate, second_gate) =
        (Gate::new(), Gate::new(), Gate::new(), Gate::new());
    loop {
        r.w.progress.bump();
        let control_backlog = r.online && (!r.control.is_empty() || r.sync.is_some());
        let state_backlog = r.online && !r.buffer.is_empty();
        let ev = tokio::select! {
            _ = stop_gate.wait(|cx| cancelled.as_mut().poll(cx)) => break,
            Some(ev) = cloud_gate.wait(|cx| r.w.from_cloud.poll_recv(cx)) => Event::Cloud(ev),
            Some(done) = r.pending.next(), if !r.pending.is_empty() => Event::Done(done),
            Some(req) = control_gate.wait(|cx| r.w.from_control.poll_recv(cx)) => Event::Control(req),
            Some(msg) = r.w.from_mqtt.recv() => Event::State(msg),
            Some(permit) = room(&r.w.priority, control_backlog) => Event::Room(permit, true),
            Some(permit) = room(&r.w.outbox, state_backlog) => Event::Room(permit, false),
            _ = second_gate.wait(|cx| second.poll_tick(cx)) => {
                seconds += 1;
                if !seconds.is_multiple_of(60) {
                    continue;
                }
                Event::Housekeeping
            }
        };
        // A reload that landed while we waited applies to this very event.
        if r.w.settings.has_changed().unwrap_or(false) {
            r.apply_settings();
        }
        match ev {
            Event::Cloud(ev) => r.on_cloud(ev),
            Event::Done(done) => r.on_completion(done),
            Event::Control(req) => r.on_control(req),
            Event::State(msg) => {
                r.on_state(msg);
                // Take the messages that queued behind it in the same turn,
                // without a pass through `select!` for each. Each spends
                // the task's cooperative budget, as `recv` would: the
                // cloud writer (same thread) must get its turn in a burst,
                // or the outbox fills and values are coalesced away.
                for _ in 1..STATE_DRAIN {
                    match r.w.from_mqtt.try_recv() {
                        Ok(msg) => {
                            r.on_state(msg);
                            tokio::task::coop::consume_budget().await;
                        }
                        Err(_) => break,
                    }
                }
            }
            Event::Room(permit, control) => {
                let next = if control {
                    r.next_control()
                } else {
                    r.buffer.pop_oldest().map(|e| OutFrame::State(e.item))
                };
                if let Some(f) = next {
                    permit.send(f);
                }
            }
            Event::Housekeeping => r.limits.housekeep(),
        }
        r.pump();
        r.report_drops();
    }
}

/// A `sync` being answered: the topics still to send, oldest first.
struct SyncRun {
    id: String,
    topics: std::vec::IntoIter<Arc<str>>,
}

/// The `sync` frame of one remembered topic.
fn snapshot_frame(s: &latest::Snap<'_>) -> OutFrame {
    OutFrame::Snapshot {
        text: protocol::encode_state(None, s.topic, PayloadRepr::classify(s.payload), s.ts, true),
        topic: s.topic.clone(),
        seq: s.seq,
    }
}

enum Event {
    Cloud(CloudEvent),
    Done(Completion),
    Control(ControlRequest),
    State(Incoming),
    /// Room in the priority channel (`true`) or the outbox.
    Room(mpsc::OwnedPermit<OutFrame>, bool),
    Housekeeping,
}

/// Waits for room in `tx` when `wanted`; never completes otherwise. The
/// sender is only cloned when there is backlog to move.
fn room(
    tx: &mpsc::Sender<OutFrame>,
    wanted: bool,
) -> impl Future<Output = Option<mpsc::OwnedPermit<OutFrame>>> {
    let tx = wanted.then(|| tx.clone());
    async move {
        match tx {
            Some(tx) => tx.reserve_owned().await.ok(),
            None => std::future::pending().await,
        }
    }
}

impl Relay {
    /// Takes reloaded settings; they apply from the next message on.
    fn apply_settings(&mut self) {
        let new = self.w.settings.borrow_and_update().clone();
        if (new.commands_per_second, new.command_burst)
            != (
                self.settings.commands_per_second,
                self.settings.command_burst,
            )
        {
            self.limits = crate::limits::Limits::new(new.commands_per_second, new.command_burst);
        }
        self.buffer
            .set_capacity(new.buffer_topics, new.buffer_bytes);
        self.latest
            .set_capacity(new.buffer_topics, new.buffer_bytes);
        self.settings = new;
        tracing::info!("relay settings reloaded");
    }

    /// Moves backlog into the outbound channels while they have room.
    fn pump(&mut self) {
        if !self.online {
            return;
        }
        while let Some(f) = self.next_control() {
            if let Err(TrySendError::Full(f) | TrySendError::Closed(f)) =
                self.w.priority.try_send(f)
            {
                self.control.push_front(f);
                break;
            }
        }
        while let Some(e) = self.buffer.pop_oldest() {
            if let Err(TrySendError::Full(f) | TrySendError::Closed(f)) =
                self.w.outbox.try_send(OutFrame::State(e.item))
            {
                self.unpop(f);
                break;
            }
        }
    }

    /// Puts a frame taken from the backlog (or handed back unsent by the
    /// writer) back where it came from; state only if nothing newer is
    /// buffered for its topic.
    fn unpop(&mut self, f: OutFrame) {
        match f {
            OutFrame::State(item) => self.buffer.put_if_absent(item.topic.clone(), item),
            OutFrame::Control(_) | OutFrame::Snapshot { .. } => self.control.push_front(f),
            OutFrame::Revoked { .. } => {} // re-sent after the next welcome
        }
    }

    /// Sends a message's frames now, or buffers them (behind older ones).
    fn emit_state(&mut self, item: StateOut) {
        if !self.online || !self.buffer.is_empty() {
            return self.buffer_state(item);
        }
        if let Err(TrySendError::Full(f) | TrySendError::Closed(f)) =
            self.w.outbox.try_send(OutFrame::State(item))
        {
            if let OutFrame::State(item) = f {
                self.buffer_state(item);
            }
        }
    }

    fn buffer_state(&mut self, item: StateOut) {
        if self.buffer.put(item.topic.clone(), item) {
            Stats::add(&self.w.stats.buffer_dropped, 1);
        }
    }

    fn emit_control(&mut self, text: String) {
        self.queue_control(text);
        self.pump();
    }

    fn queue_control(&mut self, text: String) {
        if self.control.len() >= CONTROL_QUEUE_MAX {
            self.control.pop_front();
        }
        self.control.push_back(OutFrame::Control(text));
    }

    fn report_drops(&mut self) {
        let buffered = self.buffer.len() as u64;
        self.w
            .stats
            .buffered
            .store(buffered, std::sync::atomic::Ordering::Relaxed);
        if let Some(dropped) = self.drops_warn.due(self.buffer.dropped()) {
            tracing::warn!(
                dropped,
                topics = self.settings.buffer_topics,
                bytes = self.settings.buffer_bytes,
                "offline buffer full (cloud.buffer_topics, cloud.buffer_bytes): dropped the least recently updated topics"
            );
        }
        if let Some(forgotten) = self.forgotten_warn.due(self.latest.forgotten()) {
            tracing::warn!(
                forgotten,
                topics = self.settings.buffer_topics,
                bytes = self.settings.buffer_bytes,
                "sync memory full (cloud.buffer_topics, cloud.buffer_bytes): forgot the least recently updated topics"
            );
        }
    }

    // ------------------------------------------------------------ state up

    fn on_state(&mut self, msg: Incoming) {
        Stats::add(&self.w.stats.states_in, 1);
        self.seq += 1;
        let seq = self.seq;
        let topic = self.latest.record(&msg.topic, &msg.payload, msg.ts, seq);
        let repr = PayloadRepr::classify(&msg.payload);
        let app = protocol::encode_state(None, &topic, repr, msg.ts, false);
        let links = self.fanout(&topic, repr);
        self.emit_state(StateOut {
            topic,
            ts: msg.ts,
            seq,
            app: Some(app),
            links,
        });
    }

    /// The filtered payload for every active link exposing `topic`, if any.
    fn fanout(&mut self, topic: &Arc<str>, repr: PayloadRepr<'_>) -> Option<Fanout> {
        let ids = self.routes.get(&self.w.registry, topic)?;
        let policy = &self.settings.policy;
        let allow = policy.mode() == crate::privacy::Mode::Allow;
        let filtered = match repr {
            PayloadRepr::Json(text) => {
                let value: serde_json::Value = serde_json::from_str(text).ok()?;
                // Allow mode: only what an allow-list can apply to (rule 6.1.4).
                if allow && !(value.is_object() || value.is_array()) {
                    return None;
                }
                // `None`: fail closed (too deep).
                policy.filter(&value)?
            }
            PayloadRepr::Text(text) if crate::privacy::looks_like_json(text) => {
                Stats::add(&self.w.stats.link_dropped_not_json, 1);
                return None;
            }
            PayloadRepr::Text(_) if allow => return None,
            PayloadRepr::Text(text) => {
                serde_json::Value::String(policy.redact_text(text).into_owned())
            }
            PayloadRepr::Binary(_) => return None, // never sent to links
        };
        Some(Fanout {
            keys: Arc::from(crate::audit::key_paths(&filtered)),
            payload: Arc::from(filtered.to_string()),
            ids,
            from: 0,
        })
    }

    // ------------------------------------------------------- cloud frames

    fn on_cloud(&mut self, ev: CloudEvent) {
        match ev {
            CloudEvent::Up => {
                self.online = true;
                self.w.mqtt.set_status("online");
                // Revocations the cloud has not been told go first.
                let snap = self.w.registry.snapshot();
                let mut untold: Vec<_> = snap
                    .revoked()
                    .into_iter()
                    .filter(|r| !r.cloud_told)
                    .collect();
                untold.sort_by_key(|r| r.at_ms);
                for r in untold.into_iter().rev() {
                    self.control.push_front(OutFrame::Revoked {
                        text: protocol::encode_revoked(&r.id, r.at_ms),
                        link: Arc::from(r.id.as_str()),
                    });
                }
            }
            CloudEvent::Down { unsent } => {
                self.online = false;
                self.w.mqtt.set_status("cloud-down");
                let snap = self.w.registry.load();
                for mut f in unsent.into_iter().rev() {
                    if let OutFrame::State(item) = &mut f {
                        if let Some(fan) = &item.links {
                            if !fan.ids[fan.from..].iter().any(|l| snap.is_active(l)) {
                                item.links = None;
                            }
                        }
                    }
                    self.unpop(f);
                }
            }
            CloudEvent::Told(link) => {
                if self.w.registry.mark_told(&link) {
                    drop(self.w.store.persist());
                }
            }
            CloudEvent::Frame(frame) => self.on_frame(frame),
        }
    }

    fn on_frame(&mut self, frame: Inbound) {
        let Some(id) = frame.id().map(str::to_owned) else {
            return; // welcome is handled by the cloud task
        };
        // A revoke is executed even when its id was seen: revocation must
        // never be lost to an id collision (see docs/protocol.md, notes).
        if let Inbound::Revoke { link_id, .. } = &frame {
            self.revoke(link_id, Origin::Cloud);
        }
        match self.idem.check(&id, Instant::now()) {
            Seen::Done(outcome) => {
                self.emit_control(protocol::encode_ack(&id, &outcome));
                return;
            }
            Seen::Running => return,
            Seen::New => {}
        }
        match frame {
            Inbound::Welcome { .. } => {}
            Inbound::Invalid { message, .. } => {
                self.finish_now(&id, Outcome::rejected(Reason::Invalid, message), true)
            }
            Inbound::Command(cmd) => self.on_command(cmd),
            Inbound::Sync { .. } => self.on_sync(&id),
            Inbound::Link { link, .. } => self.on_link(&id, link),
            Inbound::Revoke { .. } => {
                let rx = self.w.store.persist();
                self.wait_for(id, false, async move { durable_outcome(rx.await) });
            }
        }
    }

    /// Answers at once and remembers the ack.
    fn finish_now(&mut self, id: &str, outcome: Outcome, command: bool) {
        self.count(command, &outcome);
        self.idem.record(id, &outcome, Instant::now());
        self.emit_control(protocol::encode_ack(id, &outcome));
    }

    fn count(&self, command: bool, outcome: &Outcome) {
        if !command {
            return;
        }
        match outcome {
            Outcome::Ok => Stats::add(&self.w.stats.commands_ok, 1),
            Outcome::Rejected { reason, .. } => self.w.stats.command_rejected(*reason),
        }
    }

    /// Runs `fut` beside the loop; its outcome is acked when it completes.
    fn wait_for(
        &mut self,
        id: String,
        command: bool,
        fut: impl Future<Output = Outcome> + Send + 'static,
    ) {
        self.wait_for_settled(id, command, async move { (fut.await, false) });
    }

    /// [`Relay::wait_for`] whose future also says whether the outcome is
    /// in doubt (the command may have run).
    fn wait_for_settled(
        &mut self,
        id: String,
        command: bool,
        fut: impl Future<Output = (Outcome, bool)> + Send + 'static,
    ) {
        self.idem.start(&id);
        self.pending.push(Box::pin(async move {
            let (outcome, in_doubt) = fut.await;
            Completion {
                outcome,
                id,
                command,
                in_doubt,
            }
        }));
    }

    fn on_completion(&mut self, c: Completion) {
        self.queue_completion(c);
        self.pump();
    }

    /// Queues the ack of a completed request, once for each duplicate
    /// that waited for it too.
    fn queue_completion(&mut self, c: Completion) {
        self.count(c.command, &c.outcome);
        let waiting = self
            .idem
            .finish(&c.id, &c.outcome, Instant::now(), c.in_doubt);
        let text = protocol::encode_ack(&c.id, &c.outcome);
        for _ in 0..waiting {
            self.queue_control(text.clone());
        }
        self.queue_control(text);
    }

    fn on_command(&mut self, cmd: Command) {
        let snap = self.w.registry.load();
        let ctx = checks::Context {
            max_payload_bytes: self.settings.max_payload_bytes,
            now_ms: self.w.clock.now_ms(),
            links: &snap,
            command_topics: &self.settings.command_topics,
            broker_connected: self.w.mqtt.is_connected(),
        };
        let limits = &self.limits;
        let decision = checks::decide(&cmd, &ctx, |source| limits.try_acquire(source));
        drop(snap);
        match decision {
            checks::Decision::Reject(reason, message) => {
                tracing::debug!(id = %cmd.id, reason = reason.as_str(), "command rejected");
                self.finish_now(&cmd.id, Outcome::rejected(reason, message), true);
            }
            checks::Decision::Publish => {
                match self.w.mqtt.publish(&cmd.topic, cmd.payload, cmd.qos, false) {
                    Err(e) => self.finish_now(
                        &cmd.id,
                        Outcome::rejected(Reason::Unavailable, e.to_string()),
                        true,
                    ),
                    // No timeout of our own: once the PUBLISH may be on the
                    // wire, only the PUBACK or the loss of the connection
                    // (MQTT keepalive) tells its fate. Answering `unavailable`
                    // earlier would invite a retry of a command the broker
                    // may still run.
                    // Lost after it was sent: remembered, so a retry under
                    // the same id is answered again instead of run twice.
                    Ok(rx) => self.wait_for_settled(cmd.id, true, async move {
                        match rx.await {
                            Ok(Ok(())) => (Outcome::Ok, false),
                            Ok(Err(e)) => (
                                Outcome::rejected(Reason::Unavailable, e.to_string()),
                                e == crate::mqtt::MqttError::InDoubt,
                            ),
                            Err(_) => (
                                Outcome::rejected(Reason::Unavailable, "broker task stopped"),
                                false,
                            ),
                        }
                    }),
                }
            }
        }
    }

    /// Starts answering a `sync`: its frames are made one at a time as the
    /// priority channel takes them ([`Relay::next_control`]), so a `sync`
    /// costs a list of topic names, not a copy of every value; a `sync`
    /// while one is answered is `rate_limited` (edge rule 20).
    fn on_sync(&mut self, id: &str) {
        if self.sync.is_some() {
            let why = "a sync is already being answered; send it again after its ack";
            return self.finish_now(id, Outcome::rejected(Reason::RateLimited, why), false);
        }
        self.idem.start(id);
        self.sync = Some(SyncRun {
            id: id.to_owned(),
            topics: self.latest.order().into_iter(),
        });
    }

    /// The next frame for the priority channel: queued acks and errors
    /// first, then the running `sync`'s next snapshot frame, then its ack.
    fn next_control(&mut self) -> Option<OutFrame> {
        if let Some(f) = self.control.pop_front() {
            return Some(f);
        }
        let run = self.sync.as_mut()?;
        for topic in run.topics.by_ref() {
            if let Some(s) = self.latest.get(&topic) {
                return Some(snapshot_frame(&s));
            }
        }
        let run = self.sync.take()?;
        self.queue_completion(Completion {
            outcome: Outcome::Ok,
            id: run.id,
            command: false,
            in_doubt: false,
        });
        self.control.pop_front()
    }

    /// A grant is acked `ok` only once it is on disk and in force
    /// (protocol rule 18); until then the link gets nothing.
    fn on_link(&mut self, id: &str, link: protocol::LinkSpec) {
        let prepared = self.w.registry.prepare(
            &link.id,
            link.kind,
            link.expose.clone(),
            link.commands.clone(),
        );
        let grant = match prepared {
            Err(crate::links::LinksError::Revoked(_)) => {
                return self.finish_now(id, Outcome::rejected(Reason::Revoked, REVOKED), false)
            }
            Err(e) => {
                return self.finish_now(
                    id,
                    Outcome::rejected(Reason::Invalid, e.to_string()),
                    false,
                )
            }
            Ok(grant) => grant,
        };
        let rec = Record::Link {
            ts: self.w.clock.now_ms(),
            link: link.id,
            kind: link.kind,
            expose: link.expose,
            commands: link.commands,
        };
        let audit = self.w.audit.clone();
        let rx = self.w.store.grant(grant);
        self.wait_for(id.to_owned(), false, async move {
            match rx.await {
                Ok(Ok(())) => {
                    audit.record(vec![rec]).await;
                    Outcome::Ok
                }
                Ok(Err(store::Refused::Revoked)) => Outcome::rejected(Reason::Revoked, REVOKED),
                Ok(Err(store::Refused::Disk(e))) => {
                    Outcome::rejected(Reason::Unavailable, format!("link not saved: {e}"))
                }
                Err(_) => Outcome::rejected(Reason::Unavailable, "link store stopped"),
            }
        });
    }

    /// Revokes `link_id` everywhere the relay holds frames for it.
    fn revoke(&mut self, link_id: &str, origin: Origin) {
        let at = self.w.clock.now_ms();
        let newly = self.w.registry.revoke(link_id, origin, at);
        // Revoked already by the cloud reader or the control socket: the
        // tombstone kept the kind the link had.
        let kind = self
            .w
            .registry
            .load()
            .revoked_entry(link_id)
            .and_then(|t| t.kind);
        // Buffered messages may still name the link: the writer checks every
        // link against the registry just before writing its frame.
        if newly {
            tracing::info!(link = %link_id, origin = ?origin, "link revoked");
        }
        // The cloud reader or the control socket revoked it in memory
        // already; the audit records the event once, from here.
        if !self.audited_revokes.insert(link_id.to_owned()) {
            return;
        }
        let recorded = self.w.audit.try_record(vec![Record::Revoke {
            ts: at,
            link: link_id.to_owned(),
            kind,
            origin,
        }]);
        if !recorded {
            tracing::error!(link = %link_id, "audit queue full: revoke event not recorded");
        }
    }

    fn on_control(&mut self, req: ControlRequest) {
        match req {
            ControlRequest::Revoke { link_id, reply } => {
                self.revoke(&link_id, Origin::Local);
                if self.online {
                    let at = self.w.clock.now_ms();
                    self.control.push_front(OutFrame::Revoked {
                        text: protocol::encode_revoked(&link_id, at),
                        link: Arc::from(link_id.as_str()),
                    });
                }
                let rx = self.w.store.persist();
                tokio::spawn(async move {
                    let r = match rx.await {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(e)) => Err(e),
                        Err(_) => Err("link store stopped".to_owned()),
                    };
                    let _ = reply.send(r);
                });
            }
        }
    }
}

const REVOKED: &str = "link id was revoked; re-link with a new id";

fn durable_outcome(r: Result<Result<(), String>, oneshot::error::RecvError>) -> Outcome {
    match r {
        Ok(Ok(())) => Outcome::Ok,
        Ok(Err(e)) => Outcome::rejected(Reason::Unavailable, format!("state not persisted: {e}")),
        Err(_) => Outcome::rejected(Reason::Unavailable, "link store stopped"),
    }
}

/// A counter reported at most once a minute: [`WarnEvery::due`] gives the
/// growth since the last report when one is due.
#[derive(Debug, Default)]
pub(crate) struct WarnEvery {
    reported: u64,
    last: Option<Instant>,
}

impl WarnEvery {
    pub(crate) fn due(&mut self, total: u64) -> Option<u64> {
        if total <= self.reported
            || self
                .last
                .is_some_and(|t| t.elapsed() < Duration::from_secs(60))
        {
            return None;
        }
        let grown = total - self.reported;
        self.reported = total;
        self.last = Some(Instant::now());
        Some(grown)
    }
}
