//! Helpers shared by `links_e2e` and `ops_e2e` only, on top of the common
//! harness in `tests/common/` (which stays untouched):
//!
//! - [`Gw`]: the daemon in-process through `hearthlink::run_with`, loaded
//!   from a config *file* (so the command line, reload and a restart on
//!   the same `state_dir` all see the same configuration).
//! - [`BinDaemon`]: the real binary as a child, with the environment the
//!   test chooses (`NOTIFY_SOCKET`, `WATCHDOG_USEC`, ...).
//! - [`cli`]: one run of the real binary with `--config FILE`.
//! - frame helpers: links, revokes, the next frame in arrival order.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::cloud::Conn;
use crate::common::daemon::{Binary, Running};
use crate::common::WAIT;

/// The default strip keys of docs/privacy.md, normalised.
pub const DEFAULT_STRIP_KEYS: &[&str] = &[
    "email",
    "mail",
    "name",
    "firstname",
    "lastname",
    "surname",
    "fullname",
    "givenname",
    "familyname",
    "username",
    "user",
    "owner",
    "phone",
    "mobile",
    "address",
];

/// Key normalisation of protocol section 6, good enough for the ASCII keys
/// these tests use: lower-case, letters and digits only.
pub fn normalise(key: &str) -> String {
    key.chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .collect()
}

/// Every object key in `v`, at any depth.
pub fn all_keys(v: &Value) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, c) in m {
                    out.push(k.clone());
                    walk(c, out);
                }
            }
            Value::Array(a) => a.iter().for_each(|c| walk(c, out)),
            _ => {}
        }
    }
    walk(v, &mut out);
    out
}

/// Keys of `v` (any depth) that a default strip key matches.
pub fn personal_keys(v: &Value) -> Vec<String> {
    all_keys(v)
        .into_iter()
        .filter(|k| DEFAULT_STRIP_KEYS.contains(&normalise(k).as_str()))
        .collect()
}

/// `link:<id>`
pub fn audience(link_id: &str) -> String {
    format!("link:{link_id}")
}

/// Whether `v` is a state frame for the link `link_id`.
pub fn is_link_frame(v: &Value, link_id: &str) -> bool {
    v["type"] == "state" && v["audience"] == audience(link_id).as_str()
}

/// Whether `v` is a state frame for any link.
pub fn is_any_link_frame(v: &Value) -> bool {
    v["type"] == "state"
        && v["audience"]
            .as_str()
            .is_some_and(|a| a.starts_with("link:"))
}

/// Sends a `link` frame and returns its ack.
pub async fn link(
    conn: &mut Conn,
    req_id: &str,
    link_id: &str,
    expose: &[&str],
    commands: &[&str],
) -> Value {
    conn.send(&json!({
        "type": "link", "id": req_id,
        "link": {"id": link_id, "kind": "alexa", "expose": expose, "commands": commands},
    }));
    conn.expect_ack(req_id).await
}

/// Sends a `link` frame and insists on an `ok` ack.
pub async fn link_ok(conn: &mut Conn, req_id: &str, link_id: &str, expose: &[&str]) {
    let ack = link(conn, req_id, link_id, expose, &[]).await;
    assert_eq!(ack["status"], "ok", "link {link_id} refused: {ack}");
}

/// Sends a `revoke` frame (the ack is left to the caller).
pub fn send_revoke(conn: &Conn, req_id: &str, link_id: &str) {
    conn.send(&json!({"type": "revoke", "id": req_id, "link_id": link_id}));
}

/// A command frame from `source`.
pub fn command(conn: &Conn, id: &str, source: &str, topic: &str, payload: Value) {
    conn.send(&json!({
        "type": "command", "id": id, "source": source, "topic": topic, "payload": payload,
    }));
}

/// The oldest frame not yet taken (strict arrival order), or `None`.
pub async fn next_frame(conn: &mut Conn, timeout: Duration) -> Option<Value> {
    conn.try_expect_frame(|_| true, timeout).await
}

pub fn assert_rejected(ack: &Value, reason: &str) {
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["status"], "rejected", "expected a rejection: {ack}");
    assert_eq!(ack["reason"], reason, "wrong reason: {ack}");
}

pub fn assert_ok(ack: &Value) {
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["status"], "ok", "expected ok: {ack}");
}

// ------------------------------------------------------------ in-process

/// The daemon in-process, loaded from a config file, with reload wired to
/// that file (like the binary, without SIGHUP).
pub struct Gw {
    pub config: hearthlink::config::Config,
    pub config_path: PathBuf,
    running: Running,
}

impl Gw {
    pub fn start(config_path: &Path) -> Gw {
        let loaded = hearthlink::config::load(config_path)
            .unwrap_or_else(|e| panic!("test config {} refused: {e}", config_path.display()));
        let path = config_path.to_path_buf();
        let opts = hearthlink::Options {
            reload: Some(Arc::new(move || hearthlink::config::load(&path))),
            set_log_level: None,
            sighup: false,
        };
        Gw {
            config: loaded.config.clone(),
            config_path: config_path.to_path_buf(),
            running: Running::spawn(loaded.config, opts),
        }
    }

    /// Cancels and waits for `run_with` to return Ok (state lock released).
    pub async fn stop(self) {
        self.running.stop().await;
    }

    /// The `status` answer of the control socket.
    pub async fn status(&self) -> Value {
        self.running.status().await
    }
}

// ---------------------------------------------------------------- binary

/// Runs `hearthlink <args...> --config <config>` to completion, off the
/// async runtime (an in-process daemon keeps its worker threads):
/// (exit code, stdout, stderr).
pub async fn cli(args: &[&str], config: &Path) -> (Option<i32>, String, String) {
    cli_timed(args, config).await.0
}

/// [`cli`], also returning the instant the child was seen to exit.
pub async fn cli_timed(args: &[&str], config: &Path) -> ((Option<i32>, String, String), Instant) {
    let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    all.push("--config".into());
    all.push(config.display().to_string());
    tokio::task::spawn_blocking(move || {
        let a: Vec<&str> = all.iter().map(String::as_str).collect();
        let r = crate::common::daemon::run_binary(&a);
        (r, Instant::now())
    })
    .await
    .expect("cli task")
}

/// `hearthlink run --config FILE` as a child (the harness's [`Binary`]),
/// with `env` added to a cleaned environment.
pub struct BinDaemon;

impl BinDaemon {
    pub fn spawn(config: &Path, dir: &Path, env: &[(&str, &str)]) -> Binary {
        let config = config.to_string_lossy();
        Binary::spawn_with_env(&["run", "--config", &config], dir, env)
    }
}

/// Waits for the daemon's `hello` on the next connection, failing with the
/// child's log.
pub async fn accept_hello_of(
    cloud: &mut crate::common::cloud::CloudServer,
    bin: &Binary,
) -> (Conn, Value) {
    match tokio::time::timeout(
        crate::common::LONG_WAIT,
        cloud.try_accept(crate::common::LONG_WAIT),
    )
    .await
    {
        Ok(Some(mut conn)) => {
            let hello = conn
                .try_expect_frame(|v| v["type"] == "hello", WAIT)
                .await
                .unwrap_or_else(|| panic!("no hello: {}", bin.stderr()));
            (conn, hello)
        }
        _ => panic!("the binary never connected: {}", bin.stderr()),
    }
}
