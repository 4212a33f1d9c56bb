//! The cloud link: one task owns the outbound websocket.
//!
//! An outer loop dials (`connect`), runs one session, and waits the backoff
//! of edge rule 8.1 before the next attempt. A session sends `hello`, waits
//! up to 10 s for `welcome` (answering anything else with `error`), tells
//! the relay it is up, and then in one `select!` loop: reads frames (any
//! frame or pong proves liveness), pings every heartbeat, writes what the
//! relay queued (batched: one flush for every frame waiting, acks and other
//! priority frames ahead of state), and drops the connection when nothing
//! arrived for two heartbeats.
//!
//! Revocation is enforced here twice, which is what makes it instant: a
//! `revoke` frame revokes the link in the shared registry the moment it is
//! read, before the relay sees it; and every link frame is checked against
//! the registry just before it is written, so nothing queued for that link
//! slips out behind the revocation. Disclosures are counted for the audit
//! only once actually written, and handed to the audit task every
//! `audit.flush_s`, within a second of a revocation (not at once: the
//! revocation's own durable write goes first, without an audit fsync
//! competing for the disk), and when the session ends.

pub mod tls;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use crate::audit::{AuditHandle, Tally};
use crate::backoff::{jitter, Backoff};
use crate::clock::{local_ms, Clock};
use crate::config::CloudConfig;
use crate::gate::Gate;
use crate::links::{Origin, Registry};
use crate::protocol::{self, FrameError, Inbound, Reason};
use crate::relay::{CloudEvent, OutFrame, StateOut};
use crate::stats::Stats;
use crate::topic::TopicMap;

/// How often liveness is checked: a quarter heartbeat, 50 ms to 1 s.
fn dead_check_period(heartbeat: Duration) -> Duration {
    (heartbeat / 4).clamp(Duration::from_millis(50), Duration::from_secs(1))
}

/// How long the cloud has to answer `hello`.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(10);
/// TCP connect, TLS and websocket handshake, together.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Error frames allowed per second per connection (edge rule 8.12).
const ERRORS_PER_SECOND: u32 = 10;
/// Frames written per flush at most (a message with links counts one per
/// audience).
const WRITE_BATCH: usize = 256;
/// Largest message the transport accepts before closing with 1009.
const TRANSPORT_MAX: usize = 16 * 1024 * 1024;

/// Errors of one connection attempt or session.
#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    #[error("cloud.url {0}: {1}")]
    Url(String, String),
    #[error("reading cloud.token_file {path}: {source}")]
    Token {
        path: String,
        source: std::io::Error,
    },
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("connecting to {0}: timed out")]
    ConnectTimeout(String),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("TLS handshake with {host}: {source}")]
    Handshake {
        host: String,
        source: std::io::Error,
    },
    #[error("websocket upgrade refused with HTTP {0} (unauthorized: check cloud.token_file)")]
    Unauthorized(u16),
    #[error("websocket upgrade: {0}")]
    Upgrade(String),
    #[error("the cloud sent {0}; closed with 1009")]
    TooLarge(String),
    #[error("server did not select subprotocol hearthlink.v1")]
    Subprotocol,
    #[error("no welcome within 10 s of hello")]
    NoWelcome,
    #[error("no frame or pong for {0:?}: connection dead")]
    Dead(Duration),
    #[error("cloud closed the connection: code {code} {reason:?}")]
    Closed { code: u16, reason: String },
    #[error("websocket: {0}")]
    Ws(#[from] WsError),
    #[error("writing to the cloud timed out")]
    WriteTimeout,
    #[error("cloud settings changed by a reload")]
    Reconfigured,
}

impl CloudError {
    fn is_auth(&self) -> bool {
        matches!(
            self,
            CloudError::Unauthorized(_) | CloudError::Closed { code: 4001, .. }
        )
    }
}

pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
pub(crate) type Ws = WebSocketStream<Box<dyn Io>>;

/// Everything the cloud task is wired to.
pub struct Wiring {
    pub gateway_id: String,
    /// The settings of the current connection (taken from `cfg_rx` at each
    /// connect).
    pub cfg: CloudConfig,
    /// Reloaded settings; a change drops the link and reconnects with them.
    pub cfg_rx: watch::Receiver<CloudConfig>,
    pub notifier: crate::notify::Notifier,
    pub registry: Arc<Registry>,
    pub clock: Arc<Clock>,
    pub stats: Arc<Stats>,
    pub audit: AuditHandle,
    /// How often counted disclosures go to the audit (`audit.flush_s`).
    pub audit_every: Duration,
    /// The tally goes to the audit before it would make more than this
    /// (`audit.max_file_bytes`, edge rule 20).
    pub audit_max_bytes: u64,
    pub to_relay: mpsc::Sender<CloudEvent>,
    /// Acks, errors, `revoked`, snapshots: written before any state.
    pub priority: mpsc::Receiver<OutFrame>,
    pub outbox: mpsc::Receiver<OutFrame>,
}

/// Runs the cloud link until `token` is cancelled.
pub async fn run(mut w: Wiring, token: CancellationToken) {
    let platform = tls::platform_roots();
    let mut backoff = Backoff::new(Duration::from_secs(w.cfg.max_backoff_s));
    loop {
        w.cfg = w.cfg_rx.borrow_and_update().clone();
        let result = tokio::select! {
            _ = token.cancelled() => return,
            r = tokio::time::timeout(CONNECT_TIMEOUT, connect(&w.cfg, &platform)) => match r {
                Ok(r) => r,
                Err(_) => Err(CloudError::ConnectTimeout(w.cfg.url.to_string())),
            },
        };
        let (err, lived) = match result {
            Ok(ws) => {
                let mut s = Session::new(&mut w, ws);
                let r = s.run(&token).await;
                let lived = s.up_since.map(|t| t.elapsed()).unwrap_or_default();
                s.finish().await;
                match r {
                    Ok(()) => return, // shut down
                    Err(e) => (e, lived),
                }
            }
            Err(e) => (e, Duration::ZERO),
        };
        w.notifier
            .status(&format!("cloud link down, reconnecting: {err}"));
        let delay = if matches!(err, CloudError::Reconfigured) {
            tracing::info!("cloud settings changed; reconnecting with them");
            Duration::ZERO
        } else if err.is_auth() {
            tracing::error!(error = %err, "cloud refused the gateway's credentials");
            backoff.auth_delay(jitter())
        } else {
            tracing::warn!(error = %err, "cloud link down");
            backoff.next_delay(lived, jitter())
        };
        w.stats.cloud.down(err.to_string(), Some(delay));
        tracing::info!(
            delay_ms = delay.as_millis() as u64,
            attempt = backoff.attempt(),
            "reconnecting to the cloud"
        );
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Dials the cloud: TCP, TLS (unless an allowed `ws://`), websocket upgrade
/// with the token and subprotocol.
pub(crate) async fn connect(
    cfg: &CloudConfig,
    platform: &[rustls::pki_types::CertificateDer<'static>],
) -> Result<Ws, CloudError> {
    let url = &cfg.url;
    let host = url
        .host_str()
        .ok_or_else(|| CloudError::Url(url.to_string(), "no host".into()))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = url
        .port_or_known_default()
        .ok_or_else(|| CloudError::Url(url.to_string(), "no port".into()))?;
    let token_text =
        std::fs::read_to_string(&cfg.token_file).map_err(|source| CloudError::Token {
            path: cfg.token_file.display().to_string(),
            source,
        })?;
    let addr = format!("{host}:{port}");
    let tcp = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|source| CloudError::Connect {
            addr: addr.clone(),
            source,
        })?;
    let _ = tcp.set_nodelay(true);
    let stream: Box<dyn Io> = if url.scheme() == "ws" {
        tracing::warn!(url = %url, "cloud.allow_insecure: connecting without TLS");
        Box::new(tcp)
    } else {
        let config = tls::client_config(platform, cfg.ca_file.as_deref(), &cfg.pin_sha256)?;
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|e| CloudError::Url(url.to_string(), e.to_string()))?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|source| CloudError::Handshake {
                host: host.clone(),
                source,
            })?;
        Box::new(tls)
    };
    let mut req = url
        .as_str()
        .into_client_request()
        .map_err(|e| CloudError::Url(url.to_string(), e.to_string()))?;
    let bearer = HeaderValue::from_str(&format!("Bearer {}", token_text.trim())).map_err(|_| {
        CloudError::Upgrade("cloud.token_file holds characters not allowed in a header".into())
    })?;
    req.headers_mut().insert("Authorization", bearer);
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static(protocol::SUBPROTOCOL),
    );
    let ws_cfg = WebSocketConfig {
        max_message_size: Some(TRANSPORT_MAX),
        max_frame_size: Some(TRANSPORT_MAX),
        ..WebSocketConfig::default()
    };
    let (ws, resp) = tokio_tungstenite::client_async_with_config(req, stream, Some(ws_cfg))
        .await
        .map_err(|e| match e {
            WsError::Http(resp) if matches!(resp.status().as_u16(), 401 | 403) => {
                CloudError::Unauthorized(resp.status().as_u16())
            }
            WsError::Http(resp) => CloudError::Upgrade(format!("HTTP {}", resp.status())),
            WsError::Protocol(p) if p.to_string().contains("SubProtocol") => {
                CloudError::Subprotocol
            }
            other => CloudError::Upgrade(other.to_string()),
        })?;
    let selected = resp
        .headers()
        .get("Sec-WebSocket-Protocol")
        .and_then(|v| v.to_str().ok());
    if selected != Some(protocol::SUBPROTOCOL) {
        return Err(CloudError::Subprotocol);
    }
    Ok(ws)
}

/// One connected session.
struct Session<'a> {
    w: &'a mut Wiring,
    ws: Ws,
    heartbeat: Duration,
    last_rx: Instant,
    up_since: Option<Instant>,
    errors_window: (Instant, u32),
    tally: Tally,
    tally_since: Instant,
    /// Revocations known at the last audit flush.
    tally_revoked: usize,
    told_relay_up: bool,
    /// Frames taken from the outbox but not written when the link failed.
    carry: Vec<OutFrame>,
    /// Topics whose `sync` snapshot was written, with the number of the
    /// message it showed: app state of such a topic that is not newer was
    /// overtaken by the snapshot (which travels ahead of state) and is not
    /// written after it.
    snapshots: TopicMap<u64>,
}

enum Step {
    Continue,
    Stop(Result<(), CloudError>),
}

/// The session's one periodic timer and what is due when.
struct Timers {
    /// Ticks every quarter heartbeat (50 ms to 1 s).
    tick: tokio::time::Interval,
    tick_gate: Gate,
    /// The heartbeat these were made for.
    heartbeat: Duration,
    next_ping: Instant,
    next_second: Instant,
}

impl Timers {
    fn new(heartbeat: Duration) -> Self {
        let period = dead_check_period(heartbeat);
        let start = tokio::time::Instant::now() + period;
        let mut tick = tokio::time::interval_at(start, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let now = Instant::now();
        Timers {
            tick,
            tick_gate: Gate::new(),
            heartbeat,
            next_ping: now + heartbeat,
            next_second: now + Duration::from_secs(1),
        }
    }
}

impl<'a> Session<'a> {
    fn new(w: &'a mut Wiring, ws: Ws) -> Self {
        let heartbeat = Duration::from_secs(w.cfg.heartbeat_s);
        let tally_revoked = w.registry.load().revoked_count();
        Session {
            w,
            ws,
            heartbeat,
            last_rx: Instant::now(),
            up_since: None,
            errors_window: (Instant::now(), 0),
            tally: Tally::default(),
            tally_since: Instant::now(),
            tally_revoked,
            told_relay_up: false,
            carry: Vec::new(),
            snapshots: TopicMap::default(),
        }
    }

    async fn send_text(&mut self, text: String) -> Result<(), CloudError> {
        let n = text.len() as u64;
        tokio::time::timeout(self.heartbeat * 2, self.ws.send(Message::Text(text)))
            .await
            .map_err(|_| CloudError::WriteTimeout)??;
        Stats::add(&self.w.stats.bytes_up, n);
        Ok(())
    }

    /// Sends an `error` frame unless this connection is over its budget.
    async fn send_error(&mut self, err: FrameError) -> Result<(), CloudError> {
        let (start, count) = &mut self.errors_window;
        if start.elapsed() >= Duration::from_secs(1) {
            *start = Instant::now();
            *count = 0;
        }
        if *count >= ERRORS_PER_SECOND {
            Stats::add(&self.w.stats.errors_dropped, 1);
            return Ok(());
        }
        *count += 1;
        Stats::add(&self.w.stats.errors_sent, 1);
        self.send_text(protocol::encode_error(&err)).await
    }

    async fn run(&mut self, token: &CancellationToken) -> Result<(), CloudError> {
        self.send_text(protocol::encode_hello(&self.w.gateway_id))
            .await?;
        // One timer, living across iterations, drives the ping, the
        // liveness check and the once-a-second work: nothing is registered
        // or removed per frame, and the hot path polls one timer, not three.
        let cancelled = token.cancelled();
        tokio::pin!(cancelled);
        let welcome_timer = tokio::time::sleep(WELCOME_TIMEOUT);
        tokio::pin!(welcome_timer);
        let mut timers = Timers::new(self.heartbeat);
        // The sources that are idle while state flows (see `crate::gate`).
        let (stop_gate, priority_gate, read_gate) = (Gate::new(), Gate::new(), Gate::new());
        loop {
            if timers.heartbeat != self.heartbeat {
                // `welcome` set another heartbeat.
                timers = Timers::new(self.heartbeat);
            }
            // Biased, in this order: timers (cheap to poll, and a flood
            // must not starve the heartbeat), then acks and other priority
            // frames, then reading (a `revoke` is read before more state
            // is written), then state.
            let step = tokio::select! {
                biased;
                _ = stop_gate.wait(|cx| cancelled.as_mut().poll(cx)) => Step::Stop(Ok(())),
                now = timers.tick_gate.wait(|cx| timers.tick.poll_tick(cx)) => {
                    self.on_tick(&mut timers, now.into_std()).await
                }
                _ = &mut welcome_timer, if self.up_since.is_none() => {
                    let _ = self.close(CloseCode::Protocol, "welcome expected").await;
                    Step::Stop(Err(CloudError::NoWelcome))
                }
                Some(f) = priority_gate.wait(|cx| self.w.priority.poll_recv(cx)), if self.told_relay_up => {
                    self.write_batch(f).await
                }
                msg = read_gate.wait(|cx| self.ws.poll_next_unpin(cx)) => self.on_message(msg).await,
                Some(f) = self.w.outbox.recv(), if self.told_relay_up => self.write_batch(f).await,
            };
            if let Step::Stop(r) = step {
                if r.is_ok() {
                    let _ = self.close(CloseCode::Away, "gateway shutting down").await;
                }
                return r;
            }
        }
    }

    /// A tick: ping when one is due, drop a silent link, and once a second
    /// the housekeeping of [`Session::every_second`].
    async fn on_tick(&mut self, t: &mut Timers, now: Instant) -> Step {
        if now >= t.next_ping {
            t.next_ping = now + self.heartbeat;
            if let Err(e) = self.ws.send(Message::Ping(Vec::new())).await {
                return Step::Stop(Err(e.into()));
            }
        }
        if self.last_rx.elapsed() >= self.heartbeat * 2 {
            return Step::Stop(Err(CloudError::Dead(self.heartbeat * 2)));
        }
        if now >= t.next_second {
            t.next_second = now + Duration::from_secs(1);
            return self.every_second().await;
        }
        Step::Continue
    }

    /// Once a second: hand the audit its counts when they are due (or a
    /// link was revoked meanwhile), take reloaded settings.
    async fn every_second(&mut self) -> Step {
        let revoked = self.w.registry.load().revoked_count();
        if self.tally_since.elapsed() >= self.w.audit_every || revoked != self.tally_revoked {
            self.flush_audit().await;
        }
        if self.w.cfg_rx.has_changed().unwrap_or(false)
            && *self.w.cfg_rx.borrow_and_update() != self.w.cfg
        {
            let _ = self
                .close(CloseCode::Restart, "gateway settings changed")
                .await;
            return Step::Stop(Err(CloudError::Reconfigured));
        }
        Step::Continue
    }

    /// After a close sent in the middle of the cloud's frame: reads and
    /// drops what the cloud is still sending (at most 2 s, 32 MiB), so the
    /// socket is not reset under it before it has read the close frame.
    async fn linger(&mut self) {
        use tokio::io::AsyncReadExt;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        let mut buf = vec![0u8; 64 * 1024];
        let mut left = 2 * TRANSPORT_MAX;
        let io = self.ws.get_mut();
        while left > 0 {
            match tokio::time::timeout_at(deadline, io.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => left = left.saturating_sub(n),
                _ => break,
            }
        }
    }

    async fn close(&mut self, code: CloseCode, reason: &str) -> Result<(), CloudError> {
        let frame = CloseFrame {
            code,
            reason: reason.to_owned().into(),
        };
        tokio::time::timeout(Duration::from_secs(2), self.ws.close(Some(frame)))
            .await
            .map_err(|_| CloudError::WriteTimeout)??;
        Ok(())
    }

    async fn on_message(&mut self, msg: Option<Result<Message, WsError>>) -> Step {
        let msg = match msg {
            None => {
                return Step::Stop(Err(CloudError::Closed {
                    code: 1006,
                    reason: "connection ended".into(),
                }))
            }
            // Over the transport's bound (edge rule 25): the rest of the
            // frame cannot be read, but the cloud is told why.
            Some(Err(WsError::Capacity(e))) => {
                let reason = "message over 16 MiB";
                let _ = self.close(CloseCode::Size, reason).await;
                self.linger().await;
                return Step::Stop(Err(CloudError::TooLarge(e.to_string())));
            }
            Some(Err(e)) => return Step::Stop(Err(e.into())),
            Some(Ok(m)) => m,
        };
        self.last_rx = Instant::now();
        let r = match msg {
            Message::Text(text) => {
                Stats::add(&self.w.stats.bytes_down, text.len() as u64);
                self.on_text(&text).await
            }
            Message::Binary(_) => {
                self.send_error(FrameError::invalid(
                    "binary frames are not part of the protocol",
                ))
                .await
            }
            Message::Close(frame) => {
                let (code, reason) = frame
                    .map(|f| (u16::from(f.code), f.reason.to_string()))
                    .unwrap_or((1005, String::new()));
                return Step::Stop(Err(CloudError::Closed { code, reason }));
            }
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => Ok(()),
        };
        match r {
            Ok(()) => Step::Continue,
            Err(e) => Step::Stop(Err(e)),
        }
    }

    async fn on_text(&mut self, text: &str) -> Result<(), CloudError> {
        if text.len() > self.w.cfg.max_frame_bytes {
            return self
                .send_error(FrameError {
                    reason: Reason::TooLarge,
                    message: format!(
                        "frame of {} bytes is over cloud.max_frame_bytes",
                        text.len()
                    ),
                })
                .await;
        }
        let frame = match protocol::decode(text) {
            Ok(f) => f,
            Err(e) => return self.send_error(e).await,
        };
        if let Inbound::Welcome {
            server_time,
            heartbeat_s,
        } = frame
        {
            self.w.clock.set_server_time(server_time, local_ms());
            if let Some(h) = heartbeat_s {
                self.heartbeat = Duration::from_secs(h);
            }
            if self.up_since.is_none() {
                self.up_since = Some(Instant::now());
                self.w.stats.cloud.up();
                self.w.notifier.status(if self.w.stats.broker.is_up() {
                    "relaying: broker and cloud connected"
                } else {
                    "cloud connected; broker unreachable"
                });
                tracing::info!(url = %self.w.cfg.url, offset_ms = self.w.clock.offset_ms(), "cloud session up");
                self.tell_relay(CloudEvent::Up).await?;
                self.told_relay_up = true;
            }
            return Ok(());
        }
        if self.up_since.is_none() {
            return self
                .send_error(FrameError::invalid("welcome expected"))
                .await;
        }
        if let Inbound::Revoke { link_id, .. } = &frame {
            // Instant: no frame for this link is written after this line.
            self.w
                .registry
                .revoke(link_id, Origin::Cloud, self.w.clock.now_ms());
        }
        self.tell_relay(CloudEvent::Frame(frame)).await
    }

    async fn tell_relay(&mut self, ev: CloudEvent) -> Result<(), CloudError> {
        // The relay never blocks on us, so this wait is short.
        self.w
            .to_relay
            .send(ev)
            .await
            .map_err(|_| CloudError::Upgrade("relay stopped".into()))
    }

    /// Writes `first` and whatever else is queued (priority frames first),
    /// then flushes once, all within two heartbeats. The timer is armed
    /// only if the batch has to wait for the socket: most batches are
    /// written at the first poll, and a timer made and dropped for each
    /// of them would cost a clock read and a timer entry.
    async fn write_batch(&mut self, first: OutFrame) -> Step {
        let deadline = self.heartbeat * 2;
        let mut told = Vec::new();
        let result = {
            let mut write = std::pin::pin!(self.write_frames(first, &mut told));
            match futures_util::poll!(write.as_mut()) {
                std::task::Poll::Ready(r) => r,
                std::task::Poll::Pending => match tokio::time::timeout(deadline, write).await {
                    Ok(r) => r,
                    Err(_) => Err(CloudError::WriteTimeout),
                },
            }
        };
        if let Err(e) = result {
            return Step::Stop(Err(e));
        }
        for link in told {
            let _ = self.tell_relay(CloudEvent::Told(link)).await;
        }
        Step::Continue
    }

    async fn write_frames(
        &mut self,
        first: OutFrame,
        told: &mut Vec<Arc<str>>,
    ) -> Result<(), CloudError> {
        let mut next = Some(first);
        let mut n = 0;
        while let Some(f) = next.take() {
            let r = match f {
                OutFrame::Control(text) => self.feed(text).await.map(|()| 1),
                OutFrame::Snapshot { text, topic, seq } => {
                    let r = self.feed(text).await.map(|()| 1);
                    if r.is_ok() {
                        self.snapshots.insert(topic, seq);
                    }
                    r
                }
                OutFrame::Revoked { text, link } => {
                    let r = self.feed(text).await.map(|()| 1);
                    if r.is_ok() {
                        told.push(link);
                    }
                    r
                }
                OutFrame::State(item) => self.write_state(item).await,
            };
            match r {
                Ok(k) => n += k,
                Err(e) => return Err(e),
            }
            if n < WRITE_BATCH {
                next = match self.w.priority.try_recv() {
                    Ok(f) => Some(f),
                    Err(_) => self.w.outbox.try_recv().ok(),
                };
            }
        }
        self.ws.flush().await.map_err(CloudError::from)
    }

    async fn feed(&mut self, text: String) -> Result<(), CloudError> {
        let len = text.len() as u64;
        self.ws.feed(Message::Text(text)).await?;
        Stats::add(&self.w.stats.bytes_up, len);
        Ok(())
    }

    /// Writes one message's frames: the app's, then one per link still
    /// active at the moment its frame is written (the revocation check),
    /// each counted for the audit. On a failed write the rest goes to
    /// `carry` (the frame whose write failed is not retried: it may be in
    /// the dead connection's buffer). Returns the number of frames written.
    async fn write_state(&mut self, mut item: StateOut) -> Result<usize, CloudError> {
        let mut n = 0;
        if !self.snapshots.is_empty() {
            match self.snapshots.get(&item.topic) {
                Some(&snap) if item.seq <= snap => item.app = None,
                Some(_) => {
                    self.snapshots.remove(&item.topic);
                }
                None => {}
            }
        }
        if let Some(text) = item.app.take() {
            if let Err(e) = self.feed(text).await {
                self.carry.push(OutFrame::State(item));
                return Err(e);
            }
            Stats::add(&self.w.stats.frames_up, 1);
            n += 1;
        }
        let Some(fan) = item.links.take() else {
            return Ok(n);
        };
        let counts = self.tally.slot(&item.topic, &fan.keys);
        let mut counted = 0;
        for (i, link) in fan.ids.iter().enumerate().skip(fan.from) {
            // The revocation check, made just before the write.
            let Some(kind) = self.w.registry.load().get(link).map(|l| l.kind) else {
                continue;
            };
            let text = protocol::encode_state(
                Some(link),
                &item.topic,
                protocol::PayloadRepr::Json(&fan.payload),
                item.ts,
                false,
            );
            let len = text.len() as u64;
            if let Err(e) = self.ws.feed(Message::Text(text)).await {
                item.links = Some(crate::relay::Fanout { from: i + 1, ..fan });
                self.carry.push(OutFrame::State(item));
                self.tally.grew(counted);
                return Err(e.into());
            }
            Stats::add(&self.w.stats.bytes_up, len);
            Stats::add(&self.w.stats.link_frames_up, 1);
            counted += counts.add(i, link, kind, item.ts);
            n += 1;
        }
        self.tally.grew(counted);
        if self.tally.weight() as u64 >= self.w.audit_max_bytes {
            self.flush_audit().await;
        }
        Ok(n)
    }

    async fn flush_audit(&mut self) {
        self.tally_since = Instant::now();
        self.tally_revoked = self.w.registry.load().revoked_count();
        if !self.tally.is_empty() {
            self.w.audit.record(self.tally.drain()).await;
        }
    }

    /// After the session: audit what was sent, hand unsent frames back.
    async fn finish(mut self) {
        self.flush_audit().await;
        let mut unsent = std::mem::take(&mut self.carry);
        while let Ok(f) = self.w.priority.try_recv() {
            unsent.push(f);
        }
        while let Ok(f) = self.w.outbox.try_recv() {
            unsent.push(f);
        }
        if self.told_relay_up {
            let _ = self.w.to_relay.send(CloudEvent::Down { unsent }).await;
        }
    }
}
