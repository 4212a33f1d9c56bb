//! The local control socket and its command-line client.
//!
//! A Unix socket (`control_socket`, mode 0600) answering one JSON line per
//! connection with one JSON line: `{"cmd":"links"}`, `{"cmd":"revoke",
//! "link_id":"..."}`, `{"cmd":"status"}`, `{"cmd":"reload"}`. Every answer carries `"ok"`, and
//! `"error"` when it is false. The command line uses [`request`]; when no
//! daemon answers it falls back to the persisted state under the state-dir
//! lock ([`revoke_offline`], [`link_rows`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::links::{self, Origin, Registry, Snapshot};
use crate::relay::ControlRequest;
use crate::stats::Stats;

/// Longest request line accepted.
const MAX_REQUEST: usize = 64 * 1024;
/// How long a client or the server waits for the other side.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors of the control socket.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control socket {path}: {source}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no daemon answers on {path}: {source}")]
    NotRunning {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("control socket {path}: {message}")]
    Protocol { path: PathBuf, message: String },
    #[error("daemon refused: {0}")]
    Refused(String),
    /// The daemon is shutting down and could not finish the request; the
    /// command line tries again (the daemon, or the state files once the
    /// daemon has let go of them).
    #[error("the daemon is stopping: {0}")]
    Stopping(String),
    /// The state-dir lock stayed taken although no daemon answered.
    #[error(
        "state dir {} is locked by a hearthlink that does not answer on {} \
         (waited {} ms: is it starting or stopping?); try again",
        state_dir.display(), socket.display(), waited.as_millis()
    )]
    LockedSilent {
        state_dir: PathBuf,
        socket: PathBuf,
        waited: Duration,
    },
    /// Reading or writing the state files with no daemon running.
    #[error(transparent)]
    State(#[from] links::LinksError),
}

/// How long the command line keeps trying when the daemon is starting or
/// stopping: the socket gone or silent while the state-dir lock is held.
pub const CLI_WAIT: Duration = Duration::from_secs(3);
/// Pause between two tries within [`CLI_WAIT`].
const CLI_RETRY: Duration = Duration::from_millis(50);

/// Who carried out a command-line change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// The running daemon, through the control socket.
    Daemon,
    /// The command line itself, in the state files (no daemon running).
    StateFiles,
}

/// What the control socket reads.
pub struct Shared {
    pub registry: Arc<Registry>,
    pub stats: Arc<Stats>,
    pub clock: Arc<Clock>,
    pub started: Instant,
    pub gateway_id: String,
    pub relay: mpsc::Sender<ControlRequest>,
    pub reload: mpsc::Sender<crate::reload::Reply>,
}

/// Binds the socket, replacing a stale one, with mode 0600.
pub fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    let err = |source| ControlError::Bind {
        path: path.to_path_buf(),
        source,
    };
    if std::fs::symlink_metadata(path).is_ok() {
        // The state-dir lock proves no other daemon runs: the file is stale.
        std::fs::remove_file(path).map_err(err)?;
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    crate::statefile::chmod_unopenable(path, 0o600).map_err(err)?;
    Ok(listener)
}

/// Serves the control socket until `token` is cancelled.
pub async fn serve(
    listener: UnixListener,
    mut admit: crate::admit::Admit,
    shared: Shared,
    token: CancellationToken,
) {
    let shared = Arc::new(shared);
    loop {
        let conn = tokio::select! {
            _ = token.cancelled() => return,
            c = listener.accept() => c,
        };
        match conn {
            Ok((stream, _)) => {
                let Some(permit) = admit.admit() else {
                    continue; // dropped: closed at once
                };
                let shared = shared.clone();
                tokio::spawn(async move {
                    if let Err(e) = tokio::time::timeout(IO_TIMEOUT, handle(stream, &shared)).await
                    {
                        tracing::debug!(error = %e, "control client timed out");
                    }
                    drop(permit);
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "control socket accept failed");
                tokio::time::sleep(crate::admit::ACCEPT_BACKOFF).await;
            }
        }
    }
}

async fn handle(stream: UnixStream, shared: &Shared) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(MAX_REQUEST as u64));
    let answer = match reader.read_line(&mut line).await {
        Ok(0) => return,
        Ok(_) => match parse_request(&line) {
            Ok(req) => answer(req, shared).await,
            Err(e) => json!({"ok": false, "error": e}),
        },
        Err(e) => json!({"ok": false, "error": format!("reading request: {e}")}),
    };
    let mut out = answer.to_string();
    out.push('\n');
    let _ = write.write_all(out.as_bytes()).await;
    let _ = write.shutdown().await;
}

/// A request on the control socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Links,
    Status,
    Reload,
    /// `link_id` is valid ([`crate::protocol::valid_link_id`]).
    Revoke {
        link_id: String,
    },
}

/// Parses one request line; the error is the answer's `error` text.
pub fn parse_request(line: &str) -> Result<Request, String> {
    let req: Value = serde_json::from_str(line).map_err(|e| format!("request is not JSON: {e}"))?;
    match req.get("cmd").and_then(Value::as_str) {
        Some("links") => Ok(Request::Links),
        Some("status") => Ok(Request::Status),
        Some("reload") => Ok(Request::Reload),
        Some("revoke") => {
            let Some(id) = req.get("link_id").and_then(Value::as_str) else {
                return Err("revoke needs a string `link_id`".into());
            };
            if !crate::protocol::valid_link_id(id) {
                return Err("link id must be 1 to 128 bytes without control characters".into());
            }
            Ok(Request::Revoke {
                link_id: id.to_owned(),
            })
        }
        Some(other) => Err(format!("unknown command {other:?}")),
        None => Err("request needs a string `cmd`".into()),
    }
}

async fn answer(req: Request, shared: &Shared) -> Value {
    match req {
        Request::Links => json!({"ok": true, "links": link_rows(&shared.registry.load())}),
        Request::Status => json!({"ok": true, "status": status(shared)}),
        Request::Reload => {
            let (tx, rx) = oneshot::channel();
            if shared.reload.send(tx).await.is_err() {
                return json!({"ok": false, "error": "reload task stopped"});
            }
            match rx.await {
                Ok(Ok(warnings)) => json!({"ok": true, "warnings": warnings}),
                Ok(Err(e)) => {
                    json!({"ok": false, "error": format!("reload refused, running configuration kept: {e}")})
                }
                Err(_) => json!({"ok": false, "error": "reload task stopped"}),
            }
        }
        Request::Revoke { link_id } => answer_revoke(&link_id, shared).await,
    }
}

/// What a link id was just before a revoke; the command line says so,
/// because a typo revokes nothing that was active (the tombstone is
/// recorded all the same: revoking an unknown id is `ok`, section 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prior {
    /// An active link: it is cut off now.
    Active,
    /// Revoked already: nothing changes.
    Revoked,
    /// Never granted on this gateway: only the tombstone is new.
    Unknown,
}

impl Prior {
    /// The state of `id` in `snap`.
    pub fn of(snap: &Snapshot, id: &str) -> Prior {
        if snap.is_revoked(id) {
            Prior::Revoked
        } else if snap.get(id).is_some() {
            Prior::Active
        } else {
            Prior::Unknown
        }
    }

    /// The `was` member of a revoke answer.
    pub fn as_str(self) -> &'static str {
        match self {
            Prior::Active => "active",
            Prior::Revoked => "revoked",
            Prior::Unknown => "unknown",
        }
    }

    /// Reads the `was` member; an answer without it (an older daemon) is
    /// taken as [`Prior::Active`], which is what such a daemon reported.
    pub fn from_answer(v: &Value) -> Prior {
        match v.get("was").and_then(Value::as_str) {
            Some("revoked") => Prior::Revoked,
            Some("unknown") => Prior::Unknown,
            _ => Prior::Active,
        }
    }
}

async fn answer_revoke(id: &str, shared: &Shared) -> Value {
    let prior = Prior::of(&shared.registry.load(), id);
    // In force at once; the relay then persists it and tells the cloud.
    shared
        .registry
        .revoke(id, Origin::Local, shared.clock.now_ms());
    let (tx, rx) = oneshot::channel();
    let sent = shared
        .relay
        .send(ControlRequest::Revoke {
            link_id: id.to_owned(),
            reply: tx,
        })
        .await;
    if sent.is_err() {
        return json!({"ok": false, "stopping": true, "error": "relay stopped; revocation in force in memory only"});
    }
    match rx.await {
        Ok(Ok(())) => json!({"ok": true, "link_id": id, "was": prior.as_str()}),
        Ok(Err(e)) => {
            json!({"ok": false, "error": format!("revoked in memory, not persisted yet: {e}")})
        }
        Err(_) => {
            json!({"ok": false, "stopping": true, "error": "relay stopped before persisting"})
        }
    }
}

fn status(s: &Shared) -> Value {
    let snap = s.registry.load();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "gateway_id": s.gateway_id,
        "uptime_s": s.started.elapsed().as_secs(),
        "broker": s.stats.broker.view(),
        "cloud": s.stats.cloud.view(),
        // No offset before the first welcome: 0 would read as "in sync".
        "clock_offset_ms": s.stats.cloud.ever_connected().then(|| s.clock.offset_ms()),
        "counters": {
            "states_in": Stats::get(&s.stats.states_in),
            "link_dropped_not_json": Stats::get(&s.stats.link_dropped_not_json),
            "mqtt_oversized": Stats::get(&s.stats.mqtt_oversized),
            "buffered": Stats::get(&s.stats.buffered),
            "frames_up": Stats::get(&s.stats.frames_up),
            "link_frames_up": Stats::get(&s.stats.link_frames_up),
            "bytes_up": Stats::get(&s.stats.bytes_up),
            "bytes_down": Stats::get(&s.stats.bytes_down),
            "buffer_dropped": Stats::get(&s.stats.buffer_dropped),
            "errors_sent": Stats::get(&s.stats.errors_sent),
            "errors_dropped": Stats::get(&s.stats.errors_dropped),
            "commands_ok": Stats::get(&s.stats.commands_ok),
            "commands_rejected": crate::protocol::Reason::ALL
                .iter()
                .map(|r| (r.as_str().to_owned(), Value::from(s.stats.rejected(*r))))
                .collect::<serde_json::Map<_, _>>(),
        },
        "links": link_rows(&snap),
    })
}

/// One row of `links list`.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct LinkRow {
    pub id: String,
    pub kind: Option<links::Kind>,
    pub state: String,
    pub expose: Vec<String>,
    pub commands: Vec<String>,
}

/// Active links first, then tombstones, each by id.
pub fn link_rows(snap: &Snapshot) -> Vec<LinkRow> {
    let mut rows: Vec<LinkRow> = snap
        .active()
        .iter()
        .map(|l| LinkRow {
            id: l.id.to_string(),
            kind: Some(l.kind),
            state: "active".into(),
            expose: l.expose.as_slice().to_vec(),
            commands: l.commands.as_slice().to_vec(),
        })
        .collect();
    let mut revoked: Vec<LinkRow> = snap
        .revoked()
        .into_iter()
        .map(|r| LinkRow {
            id: r.id.clone(),
            kind: r.kind,
            state: "revoked".into(),
            expose: Vec::new(),
            commands: Vec::new(),
        })
        .collect();
    revoked.sort_by(|a, b| a.id.cmp(&b.id));
    rows.extend(revoked);
    rows
}

/// Sends one request to a running daemon.
pub async fn request(path: &Path, req: &Value) -> Result<Value, ControlError> {
    let not_running = |source| ControlError::NotRunning {
        path: path.to_path_buf(),
        source,
    };
    let proto = |message: String| ControlError::Protocol {
        path: path.to_path_buf(),
        message,
    };
    let work = async {
        let mut stream = UnixStream::connect(path).await.map_err(not_running)?;
        let mut line = req.to_string();
        line.push('\n');
        stream
            .write_all(line.as_bytes())
            .await
            .map_err(|e| proto(format!("sending request: {e}")))?;
        let mut answer = String::new();
        BufReader::new(stream)
            .read_line(&mut answer)
            .await
            .map_err(|e| proto(format!("reading answer: {e}")))?;
        let v: Value =
            serde_json::from_str(&answer).map_err(|e| proto(format!("answer is not JSON: {e}")))?;
        if v.get("ok") == Some(&Value::Bool(true)) {
            Ok(v)
        } else {
            let msg = v
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("no reason given");
            if v.get("stopping") == Some(&Value::Bool(true)) {
                Err(ControlError::Stopping(msg.to_owned()))
            } else {
                Err(ControlError::Refused(msg.to_owned()))
            }
        }
    };
    tokio::time::timeout(IO_TIMEOUT, work)
        .await
        .unwrap_or_else(|_| Err(proto("daemon did not answer within 5 s".into())))
}

/// Revokes `link_id` through the running daemon, or in the state files
/// when none runs. A daemon that is starting or stopping holds the lock
/// without answering for a moment: both are tried again for up to `wait`.
pub async fn revoke(
    socket: &Path,
    state_dir: &Path,
    link_id: &str,
    wait: Duration,
) -> Result<(Prior, Route), ControlError> {
    let req = json!({"cmd": "revoke", "link_id": link_id});
    let started = Instant::now();
    loop {
        let again = started.elapsed() < wait;
        match request(socket, &req).await {
            Ok(v) => return Ok((Prior::from_answer(&v), Route::Daemon)),
            Err(ControlError::NotRunning { .. }) => {
                match links::StateLock::try_acquire(state_dir) {
                    Ok(lock) => {
                        let prior = revoke_offline(state_dir, link_id, &lock)?;
                        return Ok((prior, Route::StateFiles));
                    }
                    Err(links::LinksError::Locked { .. }) if again => {}
                    Err(links::LinksError::Locked { .. }) => {
                        return Err(ControlError::LockedSilent {
                            state_dir: state_dir.to_path_buf(),
                            socket: socket.to_path_buf(),
                            waited: started.elapsed(),
                        })
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            // Cut off mid-request by a shutdown: revoking again is harmless.
            Err(ControlError::Stopping(_) | ControlError::Protocol { .. }) if again => {}
            Err(e) => return Err(e),
        }
        tokio::time::sleep(CLI_RETRY).await;
    }
}

/// Revokes a link with no daemon running: under the state-dir lock, in the
/// persisted file, noted as not yet told to the cloud (edge rule 8.10).
/// Returns what the id was before; nothing is written when it was revoked
/// already. `lock` is the state-dir lock, taken by the caller.
pub fn revoke_offline(
    state_dir: &Path,
    link_id: &str,
    _lock: &links::StateLock,
) -> Result<Prior, links::LinksError> {
    let (mut store, file) = links::Store::open(state_dir)?;
    let registry = Registry::from_file(file)?;
    let prior = Prior::of(&registry.load(), link_id);
    let kind = registry.load().get(link_id).map(|l| l.kind);
    let at = crate::clock::local_ms();
    let newly = registry.revoke(link_id, Origin::Local, at);
    if newly {
        // Durable in one write, and `links.json` current before we exit.
        store.persist(&registry, &[])?;
        store.mirror()?;
        crate::audit::append(
            state_dir,
            &[crate::audit::Record::Revoke {
                ts: at,
                link: link_id.to_owned(),
                kind,
                origin: Origin::Local,
            }],
        )
        .map_err(|e| links::LinksError::Write {
            path: state_dir.join(crate::audit::AUDIT_FILE),
            source: std::io::Error::other(e.to_string()),
        })?;
        give_to_dir_owner(
            state_dir,
            &[
                links::LINKS_FILE,
                links::SLOTS_FILE,
                crate::tombstones::TOMBSTONES_FILE,
                crate::audit::AUDIT_FILE,
            ],
        );
    }
    Ok(prior)
}

/// Files written by root on the command line must stay readable by the
/// daemon's own user (systemd's `DynamicUser=` owns `state_dir`): hand them
/// to the owner of the directory.
fn give_to_dir_owner(state_dir: &Path, names: &[&str]) {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(state_dir) else {
        return;
    };
    for name in names {
        let path = state_dir.join(name);
        if let Err(e) = crate::statefile::chown(&path, meta.uid(), meta.gid()) {
            tracing::warn!(path = %path.display(), error = %e, "could not hand the file to the state_dir owner");
        }
    }
}

/// Unix ms as "3.2 s ago" / "in 4 s" from `now_ms` (tenths under 10 s).
fn relative(ms: &Value, now_ms: i64) -> Option<String> {
    let d = ms.as_i64()? - now_ms;
    let secs = |ms: i64| {
        if ms < 10_000 {
            format!("{:.1} s", ms as f64 / 1000.0)
        } else {
            format!("{} s", ms / 1000)
        }
    };
    Some(if d <= 0 {
        format!("{} ago", secs(-d))
    } else {
        format!("in {}", secs(d))
    })
}

/// One side's line(s): state, since when, attempts, next try, last error.
fn side_lines(name: &str, s: &Value, now_ms: i64) -> String {
    let mut line = if s["connected"] == true {
        let since = relative(&s["since_ms"], now_ms)
            .map(|r| format!(" since {r}"))
            .unwrap_or_default();
        format!("{name:<8} connected{since}, reconnects {}", s["reconnects"])
    } else {
        let since = relative(&s["down_since_ms"], now_ms)
            .map(|r| format!(" since {r}"))
            .unwrap_or_default();
        let n = s["failed_attempts"].as_u64().unwrap_or(0);
        let plural = if n == 1 { "" } else { "s" };
        let mut l = format!("{name:<8} DOWN{since}, {n} failed attempt{plural}");
        match s["next_attempt_ms"].as_i64() {
            Some(next) if next > now_ms => {
                let when = relative(&s["next_attempt_ms"], now_ms).unwrap_or_default();
                l.push_str(&format!(", next {when}"));
            }
            Some(_) => l.push_str(", trying now"),
            None => {}
        }
        l
    };
    if let Some(err) = s["last_error"].as_str() {
        line.push_str(&format!("\n         last error: {err}"));
    }
    line
}

/// Non-zero rejection counts as `forbidden 2, expired 1`, or `0`.
fn rejected_line(c: &Value) -> String {
    let parts: Vec<String> = c
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, n)| n.as_u64().unwrap_or(0) > 0)
        .map(|(reason, n)| format!("{reason} {n}"))
        .collect();
    let total: u64 = c
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(_, n)| n.as_u64())
        .sum();
    if parts.is_empty() {
        "0".into()
    } else {
        format!("{total} ({})", parts.join(", "))
    }
}

/// Prints a `status` answer for a person, in 80 columns.
pub fn print_status(v: &Value) {
    let now_ms = crate::clock::local_ms();
    let offset = match v["clock_offset_ms"].as_i64() {
        Some(ms) => format!("clock offset {ms} ms"),
        None => "clock offset unknown (no welcome yet)".into(),
    };
    println!(
        "hearthlink {} gateway {} up {} s, {offset}",
        v["version"].as_str().unwrap_or("?"),
        v["gateway_id"].as_str().unwrap_or("?"),
        v["uptime_s"],
    );
    println!("{}", side_lines("broker", &v["broker"], now_ms));
    println!("{}", side_lines("cloud", &v["cloud"], now_ms));
    let c = &v["counters"];
    println!(
        "states in {}  frames up {}  link frames {}  buffered {}  buffer dropped {}",
        c["states_in"], c["frames_up"], c["link_frames_up"], c["buffered"], c["buffer_dropped"]
    );
    println!(
        "commands ok {}  rejected {}",
        c["commands_ok"],
        rejected_line(&c["commands_rejected"])
    );
    if let Some(links) = v["links"].as_array() {
        for l in links {
            println!(
                "link {:<24} {:<8} {}",
                l["id"].as_str().unwrap_or("?"),
                l["kind"].as_str().unwrap_or("-"),
                l["state"].as_str().unwrap_or("?")
            );
        }
    }
}
