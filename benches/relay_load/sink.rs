//! The cloud end of the hearthlink paths: a TLS websocket server on a free
//! loopback port that accepts the daemon's one connection.
//!
//! It checks the bearer token, selects the `hearthlink.v1` subprotocol,
//! answers `hello` with `welcome`, and then timestamps every frame on
//! arrival: `state` frames go to the [`Recorder`] (app audience as
//! deliveries, link audiences as fan-out), acks wake whoever waits for
//! them. A writer task owns the sending half; the driver hands it batches
//! of frames (commands, links, revokes) through a bounded channel.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::Message;

use crate::load::{field, now_ns};
use crate::record::Recorder;

pub const SUBPROTOCOL: &str = "hearthlink.v1";

/// An ack as the sink read it: arrival time and `status`.
pub type Ack = (u64, String);

struct Shared {
    token: String,
    rec: Arc<Mutex<Recorder>>,
    probes: Arc<AtomicU64>,
    hello: AtomicBool,
    writer: OnceLock<mpsc::Sender<Vec<String>>>,
    waiters: Mutex<HashMap<String, oneshot::Sender<Ack>>>,
    frames: AtomicU64,
    errors: AtomicU64,
}

/// The sink; its tasks end when the connection does.
pub struct Sink {
    pub port: u16,
    pub token: String,
    shared: Arc<Shared>,
}

impl Sink {
    /// Listens on a free loopback port; serves the first connection.
    pub async fn start(
        acceptor: tokio_rustls::TlsAcceptor,
        rec: Arc<Mutex<Recorder>>,
        probes: Arc<AtomicU64>,
    ) -> Result<Sink, String> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("sink bind: {e}"))?;
        let port = listener
            .local_addr()
            .map_err(|e| format!("sink addr: {e}"))?
            .port();
        let token = format!("bench-token-{}", now_ns());
        let shared = Arc::new(Shared {
            token: token.clone(),
            rec,
            probes,
            hello: AtomicBool::new(false),
            writer: OnceLock::new(),
            waiters: Mutex::new(HashMap::new()),
            frames: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        });
        let s = shared.clone();
        tokio::spawn(async move {
            if let Err(e) = serve(listener, acceptor, s).await {
                eprintln!("relay_load: cloud sink: {e}");
            }
        });
        Ok(Sink {
            port,
            token,
            shared,
        })
    }

    /// Waits until the daemon's `hello` has been answered.
    pub async fn wait_hello(&self, within: Duration) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + within;
        while !self.shared.hello.load(Ordering::Acquire) {
            if tokio::time::Instant::now() > deadline {
                return Err(format!("no hello from hearthlink within {within:?}"));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// The writer's channel (after the connection is up).
    pub fn writer(&self) -> Result<mpsc::Sender<Vec<String>>, String> {
        self.shared
            .writer
            .get()
            .cloned()
            .ok_or_else(|| "cloud sink has no connection".to_owned())
    }

    /// Registers a waiter for the ack of `id`.
    pub fn expect_ack(&self, id: &str) -> oneshot::Receiver<Ack> {
        let (tx, rx) = oneshot::channel();
        if let Ok(mut w) = self.shared.waiters.lock() {
            w.insert(id.to_owned(), tx);
        }
        rx
    }

    /// Sends frames (ids registered with [`Sink::expect_ack`] first).
    pub async fn send(&self, frames: Vec<String>) -> Result<(), String> {
        self.writer()?
            .send(frames)
            .await
            .map_err(|_| "cloud sink writer stopped".to_owned())
    }

    /// Sends probe commands until one is acked `ok` (the daemon's broker
    /// connection is up).
    pub async fn command_probe(&self, within: Duration) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + within;
        for i in 0.. {
            let id = format!("p-{i}");
            let rx = self.expect_ack(&id);
            let frame = format!(
                r#"{{"type":"command","id":"{id}","source":"app","topic":"ampio/to/dev/o/1/cmd","payload":"1","qos":1}}"#
            );
            self.send(vec![frame]).await?;
            if let Ok((_, status)) = await_ack(rx, Duration::from_secs(2)).await {
                if status == "ok" {
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err("no probe command was acked ok".into())
    }

    /// Creates links a-0 .. a-(n-1) exposing `bench/#`; waits for every ack.
    pub async fn add_links(&self, n: usize) -> Result<(), String> {
        let mut waits = Vec::with_capacity(n);
        let mut frames = Vec::with_capacity(n);
        for i in 0..n {
            waits.push(self.expect_ack(&format!("l-{i}")));
            frames.push(format!(
            r#"{{"type":"link","id":"l-{i}","link":{{"id":"a-{i}","kind":"alexa","expose":["bench/#"]}}}}"#
        ));
        }
        self.send(frames).await?;
        for (i, rx) in waits.into_iter().enumerate() {
            let (_, status) = await_ack(rx, Duration::from_secs(30)).await?;
            if status != "ok" {
                return Err(format!("link l-{i} acked {status:?}"));
            }
        }
        Ok(())
    }

    /// Frames read and `error` frames among them, since the start.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.shared.frames.load(Ordering::Relaxed),
            self.shared.errors.load(Ordering::Relaxed),
        )
    }
}

/// Waits for an ack; `Err` after `within`.
pub async fn await_ack(rx: oneshot::Receiver<Ack>, within: Duration) -> Result<Ack, String> {
    match tokio::time::timeout(within, rx).await {
        Ok(Ok(ack)) => Ok(ack),
        Ok(Err(_)) => Err("sink dropped the ack waiter".into()),
        Err(_) => Err(format!("no ack within {within:?}")),
    }
}

async fn serve(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    shared: Arc<Shared>,
) -> Result<(), String> {
    let (tcp, _) = listener
        .accept()
        .await
        .map_err(|e| format!("accept: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let tls = acceptor
        .accept(tcp)
        .await
        .map_err(|e| format!("TLS accept: {e}"))?;
    let want = format!("Bearer {}", shared.token);
    // The signature is tungstenite's server `Callback`; its error type is large.
    #[allow(clippy::result_large_err)]
    let check = move |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        let auth = req
            .headers()
            .get("Authorization")
            .and_then(|v| v.to_str().ok());
        let protos = req
            .headers()
            .get("Sec-WebSocket-Protocol")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if auth != Some(want.as_str()) || !protos.split(',').any(|p| p.trim() == SUBPROTOCOL) {
            let mut e = ErrorResponse::new(Some("unauthorized".into()));
            *e.status_mut() = StatusCode::UNAUTHORIZED;
            return Err(e);
        }
        resp.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static(SUBPROTOCOL),
        );
        Ok(resp)
    };
    let ws = tokio_tungstenite::accept_hdr_async(tls, check)
        .await
        .map_err(|e| format!("websocket upgrade: {e}"))?;
    let (mut write, mut read) = ws.split();
    let (tx, mut rx) = mpsc::channel::<Vec<String>>(4096);
    let _ = shared.writer.set(tx);
    tokio::spawn(async move {
        while let Some(batch) = rx.recv().await {
            for frame in batch {
                if write.feed(Message::Text(frame)).await.is_err() {
                    return;
                }
            }
            if write.flush().await.is_err() {
                return;
            }
        }
    });
    while let Some(msg) = read.next().await {
        match msg {
            Ok(Message::Text(text)) => on_text(&shared, &text).await,
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => {}
        }
    }
    Ok(())
}

const STATE_PREFIX: &str = r#"{"type":"state","audience":""#;

async fn on_text(shared: &Shared, text: &str) {
    let now = now_ns();
    shared.frames.fetch_add(1, Ordering::Relaxed);
    // Hot path: the daemon writes state frames with this exact layout.
    if let Some(f) = StateFrame::parse(text) {
        return on_state(shared, &f, now);
    }
    let Ok(v) = serde_json::from_str::<Value>(text) else {
        return;
    };
    match v.get("type").and_then(Value::as_str) {
        Some("state") => {
            // Not in the daemon's layout: counted as delivered only if its
            // parts can still be found.
            if let Some(f) = StateFrame::parse(text) {
                on_state(shared, &f, now);
            }
        }
        Some("hello") => {
            let welcome = format!(
                r#"{{"type":"welcome","server_time":{},"heartbeat_s":20}}"#,
                unix_ms()
            );
            if let Some(w) = shared.writer.get() {
                let _ = w.send(vec![welcome]).await;
            }
            shared.hello.store(true, Ordering::Release);
        }
        Some("ack") => {
            let id = v.get("id").and_then(Value::as_str).unwrap_or("");
            let status = v.get("status").and_then(Value::as_str).unwrap_or("");
            on_ack(shared, id, status, now);
        }
        Some("error") => {
            shared.errors.fetch_add(1, Ordering::Relaxed);
        }
        _ => {}
    }
}

/// The parts of a state frame the sink needs, found by position: the
/// daemon writes `{"type":"state","audience":A,"topic":T,"payload":P,...`.
/// At 500 000 link frames a second on a 2-core machine, the sink must cost
/// far less than the daemon, or it becomes the queue being measured.
struct StateFrame<'a> {
    audience: &'a str,
    topic: &'a str,
    /// From the payload to the end of the frame.
    payload: &'a str,
}

impl<'a> StateFrame<'a> {
    fn parse(text: &'a str) -> Option<StateFrame<'a>> {
        let rest = text.strip_prefix(STATE_PREFIX)?;
        let end = memchr::memchr(b'"', rest.as_bytes())?;
        let (audience, rest) = (&rest[..end], &rest[end..]);
        let rest = rest.strip_prefix(r#"","topic":""#)?;
        let end = memchr::memchr(b'"', rest.as_bytes())?;
        let (topic, rest) = (&rest[..end], &rest[end..]);
        let payload = rest.strip_prefix(r#"","payload":"#)?;
        Some(StateFrame {
            audience,
            topic,
            payload,
        })
    }
}

/// Finds a personal field the daemon should have removed.
fn leaks(payload: &str) -> bool {
    static NAME: std::sync::OnceLock<memchr::memmem::Finder<'static>> = std::sync::OnceLock::new();
    memchr::memchr(b'@', payload.as_bytes()).is_some()
        || NAME
            .get_or_init(|| memchr::memmem::Finder::new(r#""name":"#))
            .find(payload.as_bytes())
            .is_some()
}

fn on_state(shared: &Shared, f: &StateFrame<'_>, now: u64) {
    if f.topic == "bench/probe" {
        if f.audience == "app" {
            shared.probes.fetch_add(1, Ordering::Relaxed);
        }
        return;
    }
    // The bench's payloads start `{"seq":N,"t":T`; the filter keeps order.
    let (Some(seq), Some(t)) = (field(f.payload, r#"{"seq":"#), field(f.payload, r#","t":"#))
    else {
        return;
    };
    let Ok(mut rec) = shared.rec.lock() else {
        return;
    };
    if f.audience == "app" {
        rec.on_delivery(seq, t, now);
    } else if let Some(n) = f
        .audience
        .strip_prefix("link:a-")
        .and_then(|n| n.parse().ok())
    {
        rec.on_link_frame(n, seq, t, now, leaks(f.payload));
    }
}

fn on_ack(shared: &Shared, id: &str, status: &str, now: u64) {
    let ok = status == "ok";
    if let Some(n) = id.strip_prefix("c-").and_then(|n| n.parse().ok()) {
        if let Ok(mut rec) = shared.rec.lock() {
            rec.on_command_ack(n, now, ok);
        }
    } else if let Some(n) = id.strip_prefix("r-").and_then(|n| n.parse().ok()) {
        if ok {
            if let Ok(mut rec) = shared.rec.lock() {
                rec.revoke.mark_acked(n);
            }
        }
    }
    let waiter = shared.waiters.lock().ok().and_then(|mut w| w.remove(id));
    if let Some(tx) = waiter {
        let _ = tx.send((now, status.to_owned()));
    }
}

fn unix_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}
