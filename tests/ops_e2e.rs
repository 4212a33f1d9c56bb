//! End to end, operations (issue 5): systemd notifications, `status`,
//! live reload (privacy applied without reconnecting, invalid config
//! refused), token rotation without a restart, and the retained status
//! topic. Real mosquitto, real TLS websocket clouds, the real binary or
//! the daemon in-process.

mod common;
mod e2e_support;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::broker::Broker;
use common::cloud::{Accept, Behavior, CloudServer, Counts};
use common::daemon::{write_files, Opts};
use common::mqtt::MqttClient;
use common::rig::{is_state, wait_relay_up};
use common::{toml_str, wait_until, LONG_WAIT, WAIT};
use e2e_support::{accept_hello_of, cli, is_link_frame, link_ok, BinDaemon, Gw};
use hearthlink::CancellationToken;
use serde_json::{json, Value};

// ------------------------------------------------------------ sd_notify

/// Datagrams received on a test-owned `NOTIFY_SOCKET`.
struct NotifySocket {
    path: PathBuf,
    msgs: Arc<Mutex<Vec<(Instant, String)>>>,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl NotifySocket {
    fn bind() -> NotifySocket {
        let dir = tempfile::Builder::new()
            .prefix("hl-notify")
            .tempdir()
            .expect("tempdir");
        let path = dir.path().join("notify.sock");
        let sock = tokio::net::UnixDatagram::bind(&path).expect("bind notify socket");
        let msgs = Arc::new(Mutex::new(Vec::new()));
        let m = msgs.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = sock.recv(&mut buf).await {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                m.lock().expect("msgs").push((Instant::now(), text));
            }
        });
        NotifySocket {
            path,
            msgs,
            task,
            _dir: dir,
        }
    }

    fn all(&self) -> Vec<(Instant, String)> {
        self.msgs.lock().expect("msgs").clone()
    }

    fn count(&self, pred: impl Fn(&str) -> bool) -> usize {
        self.all().iter().filter(|(_, m)| pred(m)).count()
    }

    fn first(&self, pred: impl Fn(&str) -> bool) -> Option<(Instant, String)> {
        self.all().into_iter().find(|(_, m)| pred(m))
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_status_and_watchdog_reach_the_notify_socket() {
    // The broker is down when the daemon starts: READY=1 must wait for it.
    let mut broker = Broker::start();
    broker.kill();
    let mut cloud = CloudServer::start().await;
    let files = write_files(&Opts::default(), broker.port(), &cloud);
    let notify = NotifySocket::bind();
    let sock = notify.path.display().to_string();
    let mut bin = BinDaemon::spawn(
        &files.config_path,
        files.dir.path(),
        &[("NOTIFY_SOCKET", &sock), ("WATCHDOG_USEC", "1000000")],
    );
    let (_conn, hello) = accept_hello_of(&mut cloud, &bin).await;
    assert_eq!(hello["type"], "hello");

    let n = &notify;
    assert!(
        wait_until(WAIT, || async move {
            n.count(|m| m.starts_with("STATUS=") && m.contains("broker unreachable")) > 0
                && n.count(|m| m == "WATCHDOG=1") >= 2
        })
        .await,
        "STATUS naming the unreachable broker and WATCHDOG=1 while it is down: {:?}\n{}",
        notify.all(),
        bin.stderr()
    );
    assert_eq!(
        notify.count(|m| m == "READY=1"),
        0,
        "no READY=1 before the broker is connected: {:?}",
        notify.all()
    );

    let restarted = Instant::now();
    broker.restart();
    assert!(
        wait_until(LONG_WAIT, || async move { n.count(|m| m == "READY=1") > 0 }).await,
        "READY=1 once the broker is up: {:?}\n{}",
        notify.all(),
        bin.stderr()
    );
    let (ready_at, _) = notify.first(|m| m == "READY=1").expect("READY=1");
    assert!(
        ready_at > restarted,
        "READY=1 came before the broker was up"
    );
    assert!(
        wait_until(WAIT, || async move {
            n.count(|m| m == "STATUS=relaying: broker and cloud connected") > 0
        })
        .await,
        "a STATUS saying both sides are connected: {:?}",
        notify.all()
    );
    let watchdogs = notify.count(|m| m == "WATCHDOG=1");
    assert!(
        wait_until(WAIT, || async move {
            n.count(|m| m == "WATCHDOG=1") > watchdogs
        })
        .await,
        "the watchdog keeps being fed"
    );

    bin.signal("TERM");
    let status = bin
        .wait_exit(Duration::from_secs(5))
        .await
        .unwrap_or_else(|| panic!("no exit within 5 s of SIGTERM: {}", bin.stderr()));
    assert_eq!(status.code(), Some(0), "{}", bin.stderr());
    assert!(
        wait_until(WAIT, || async move { n.count(|m| m == "STOPPING=1") > 0 }).await,
        "STOPPING=1 on shutdown: {:?}",
        notify.all()
    );

    let all = notify.all();
    assert_eq!(notify.count(|m| m == "READY=1"), 1, "READY=1 once: {all:?}");
    for (_, m) in &all {
        let known = ["READY=1", "WATCHDOG=1", "STOPPING=1"].contains(&m.as_str())
            || m.strip_prefix("STATUS=")
                .is_some_and(|s| s.contains("broker") || s.contains("cloud"));
        assert!(
            known,
            "unexpected notification {m:?} (STATUS lines name broker/cloud state)"
        );
    }
    println!(
        "notifications: {} in all, {} WATCHDOG=1; READY=1 {:.0} ms after the broker restart",
        all.len(),
        notify.count(|m| m == "WATCHDOG=1"),
        (ready_at - restarted).as_secs_f64() * 1000.0
    );
}

// ---------------------------------------------------------------- status

/// `status --json`: (exit code, parsed stdout).
async fn status_json(config: &Path) -> (Option<i32>, Value) {
    let (code, out, err) = cli(&["status", "--json"], config).await;
    let v = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("status --json prints JSON ({e}): {out:?} {err}"));
    (code, v)
}

async fn wait_status_code(config: &Path, want: i32) -> Value {
    let deadline = Instant::now() + LONG_WAIT;
    loop {
        let (code, v) = status_json(config).await;
        if code == Some(want) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "status never exited {want}; last {code:?}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_json_fields_and_exit_codes() {
    let mut broker = Broker::start();
    let mut cloud = CloudServer::start().await;
    let files = write_files(&Opts::default(), broker.port(), &cloud);
    let config = files.config_path.clone();

    // No daemon: exit 3.
    let (code, v) = status_json(&config).await;
    assert_eq!(code, Some(3), "no daemon: {v}");
    assert_eq!(v["running"], false, "{v}");

    let gw = Gw::start(&config);
    let (mut conn, _) = cloud.accept_hello(LONG_WAIT).await;
    let client = MqttClient::connect(broker.port()).await;
    wait_relay_up(&mut conn, &client, LONG_WAIT).await;
    link_ok(&mut conn, "l-1", "st-1", &["ampio/from/st/#"]).await;
    client.publish("ampio/from/st/1", r#"{"v":1}"#, 1).await;
    conn.expect_frame("link frame", |v| is_link_frame(v, "st-1"), WAIT)
        .await;

    let v = wait_status_code(&config, 0).await;
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"), "{v}");
    assert_eq!(v["gateway_id"], "gw-test", "{v}");
    assert!(v["uptime_s"].is_u64(), "{v}");
    assert_eq!(v["broker"]["connected"], true, "{v}");
    assert_eq!(v["cloud"]["connected"], true, "{v}");
    let c = &v["counters"];
    for name in [
        "states_in",
        "frames_up",
        "link_frames_up",
        "bytes_up",
        "bytes_down",
        "buffer_dropped",
        "errors_sent",
        "errors_dropped",
        "commands_ok",
    ] {
        assert!(c[name].is_u64(), "counters.{name}: {v}");
    }
    assert!(c["states_in"].as_u64() >= Some(2), "{v}");
    assert!(c["frames_up"].as_u64() >= Some(2), "{v}");
    assert!(c["link_frames_up"].as_u64() >= Some(1), "{v}");
    assert!(c["bytes_up"].as_u64() > Some(0), "{v}");
    assert!(c["bytes_down"].as_u64() > Some(0), "{v}");
    for reason in [
        "invalid",
        "forbidden",
        "revoked",
        "expired",
        "rate_limited",
        "too_large",
        "unavailable",
    ] {
        assert!(
            c["commands_rejected"][reason].is_u64(),
            "counters.commands_rejected.{reason}: {v}"
        );
    }
    let links = v["links"].as_array().expect("links");
    assert!(
        links
            .iter()
            .any(|l| l["id"] == "st-1" && l["state"] == "active" && l["kind"] == "alexa"),
        "{v}"
    );
    let (code, text, _) = cli(&["status"], &config).await;
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("connected"), "{text}");

    // Broker gone: degraded, exit 1.
    broker.kill();
    let v = wait_status_code(&config, 1).await;
    assert_eq!(v["broker"]["connected"], false, "{v}");
    assert!(v["broker"]["last_error"].is_string(), "{v}");
    broker.restart();
    wait_status_code(&config, 0).await;

    // Cloud gone (the connection dropped, redials refused): degraded, exit 1.
    // The server object stays: the config names its CA file.
    cloud.set_behavior(Behavior {
        accept: Accept::DropTcp,
        ..Behavior::default()
    });
    conn.drop_tcp();
    let v = wait_status_code(&config, 1).await;
    assert_eq!(v["cloud"]["connected"], false, "{v}");
    assert_eq!(v["broker"]["connected"], true, "{v}");
    assert!(v["cloud"]["reconnects"].as_u64() >= Some(1), "{v}");

    gw.stop().await;
    let (code, v) = status_json(&config).await;
    assert_eq!(code, Some(3), "daemon stopped: {v}");
}

// ---------------------------------------------------------------- reload

/// A link frame for `link` on `topic` whose payload satisfies `pred`,
/// publishing `payload` every 250 ms until one arrives.
async fn link_payload_until(
    conn: &mut common::cloud::Conn,
    client: &MqttClient,
    link: &str,
    topic: &str,
    payload: &Value,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        client.publish(topic, payload.to_string(), 1).await;
        if let Some(f) = conn
            .try_expect_frame(
                |v| is_link_frame(v, link) && v["topic"] == topic && pred(&v["payload"]),
                Duration::from_millis(250),
            )
            .await
        {
            return f;
        }
        assert!(
            Instant::now() < deadline,
            "no link frame on {topic} matching the expectation"
        );
    }
}

/// The broker-side and cloud-side reconnect counters of a running daemon.
async fn reconnects(control_socket: &Path) -> (u64, u64) {
    let v = hearthlink::control::request(control_socket, &json!({"cmd": "status"}))
        .await
        .expect("status over the control socket");
    (
        v["status"]["broker"]["reconnects"]
            .as_u64()
            .expect("broker"),
        v["status"]["cloud"]["reconnects"].as_u64().expect("cloud"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_a_privacy_change_to_the_next_frame_without_reconnecting() {
    let broker = Broker::start();
    let mut cloud = CloudServer::start().await;
    let files = write_files(&Opts::default(), broker.port(), &cloud);
    let mut bin = BinDaemon::spawn(&files.config_path, files.dir.path(), &[]);
    let (mut conn, _) = accept_hello_of(&mut cloud, &bin).await;
    let client = MqttClient::connect(broker.port()).await;
    wait_relay_up(&mut conn, &client, LONG_WAIT).await;
    link_ok(&mut conn, "l-1", "rl-1", &["ampio/from/rl/#"]).await;
    let topic = "ampio/from/rl/1";

    client.publish(topic, r#"{"temp":1,"room":"x"}"#, 1).await;
    let f = conn
        .expect_frame("link frame", |v| is_link_frame(v, "rl-1"), WAIT)
        .await;
    assert_eq!(
        f["payload"],
        json!({"temp":1,"room":"x"}),
        "default privacy keeps room"
    );

    // `hearthlink reload`.
    let strip_room = format!("{}\n[privacy]\nstrip_keys = [\"room\"]\n", files.toml);
    std::fs::write(&files.config_path, &strip_room).expect("rewrite config");
    let (code, out, err) = cli(&["reload"], &files.config_path).await;
    assert_eq!(code, Some(0), "reload: {out} {err}");
    assert!(out.contains("configuration reloaded"), "{out}");
    client.publish(topic, r#"{"temp":2,"room":"x"}"#, 1).await;
    let app = conn
        .expect_frame(
            "app frame",
            |v| is_state(v, topic) && v["payload"]["temp"] == 2,
            WAIT,
        )
        .await;
    assert_eq!(
        app["payload"],
        json!({"temp":2,"room":"x"}),
        "the app is not filtered"
    );
    let f = conn
        .expect_frame(
            "link frame after reload",
            |v| is_link_frame(v, "rl-1") && v["payload"]["temp"] == 2,
            WAIT,
        )
        .await;
    assert_eq!(
        f["payload"],
        json!({"temp":2}),
        "the first frame after the reload lacks room"
    );

    // SIGHUP does the same.
    let strip_hum = format!(
        "{}\n[privacy]\nstrip_keys = [\"room\", \"hum\"]\n",
        files.toml
    );
    std::fs::write(&files.config_path, &strip_hum).expect("rewrite config");
    bin.signal("HUP");
    let f = link_payload_until(
        &mut conn,
        &client,
        "rl-1",
        topic,
        &json!({"temp":3,"room":"x","hum":5}),
        |p| p.get("hum").is_none(),
    )
    .await;
    assert_eq!(f["payload"], json!({"temp":3}), "{f}");

    assert!(!conn.is_closed(), "the cloud connection stayed up");
    assert_eq!(
        Counts::get(&cloud.counts.ws_ok),
        1,
        "no new cloud connection"
    );
    assert_eq!(Counts::get(&cloud.counts.hellos), 1, "no second hello");
    assert_eq!(
        reconnects(&files.control_socket()).await,
        (0, 0),
        "neither side reconnected"
    );
    assert!(bin.running(), "{}", bin.stderr());
    bin.signal("TERM");
    let status = bin.wait_exit(Duration::from_secs(5)).await;
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", bin.stderr());
}

/// Edge rule 24: a number outside the range the daemon works in is refused
/// by `check-config`, `run` and `reload`, naming the key. Before, a
/// command rate of 1e-9 passed, then overflowed the rate limiter: `run`
/// aborted, and `reload` said "configuration reloaded" and aborted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_setting_that_cannot_work_is_refused_and_never_crashes_the_daemon() {
    let broker = Broker::start();
    let mut cloud = CloudServer::start().await;
    let files = write_files(&Opts::default(), broker.port(), &cloud);
    assert!(
        files.toml.trim_end().ends_with("[limits]"),
        "{}",
        files.toml
    );
    let bad = format!("{}commands_per_second = 1e-9\n", files.toml);
    let bad_path = files.dir.path().join("bad.toml");
    std::fs::write(&bad_path, &bad).expect("write bad config");
    for cmd in ["check-config", "run"] {
        let (code, out, err) = cli(&[cmd], &bad_path).await;
        assert_eq!(code, Some(2), "{cmd}: {out} {err}");
        assert!(err.contains("limits.commands_per_second"), "{cmd}: {err}");
        assert!(!err.contains("panicked"), "{cmd}: {err}");
    }
    let mut bin = BinDaemon::spawn(&files.config_path, files.dir.path(), &[]);
    let (mut conn, _) = accept_hello_of(&mut cloud, &bin).await;
    let client = MqttClient::connect(broker.port()).await;
    wait_relay_up(&mut conn, &client, LONG_WAIT).await;
    std::fs::write(&files.config_path, &bad).expect("write bad config");
    let (code, out, err) = cli(&["reload"], &files.config_path).await;
    assert_ne!(code, Some(0), "reload: {out} {err}");
    assert!(err.contains("limits.commands_per_second"), "{err}");
    bin.signal("HUP");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(bin.running(), "{}", bin.stderr());
    assert!(!bin.stderr().contains("panicked"), "{}", bin.stderr());
    conn.command("c-1", "ampio/to/x/cmd", json!("on"));
    let ack = conn.expect_ack("c-1").await;
    assert_eq!(ack["status"], "ok", "still executing commands: {ack}");
    bin.signal("TERM");
    bin.wait_exit(Duration::from_secs(5)).await;
}

/// Edge rule 23 and installer item 19: at the most verbose log level, set
/// by `RUST_LOG` or by `log_level`, the cloud token appears nowhere in the
/// log (tungstenite printed the upgrade request with `Authorization:
/// Bearer` at trace), and a log that is not a terminal has no colour codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_never_reaches_the_log_at_trace_and_the_log_has_no_colour_codes() {
    let broker = Broker::start();
    let mut cloud = CloudServer::start().await;
    let by_config = Opts {
        extra_top: "log_level = \"trace\"\n".into(),
        ..Opts::default()
    };
    for (opts, env) in [
        (Opts::default(), vec![("RUST_LOG", "trace")]),
        (by_config, vec![("RUST_LOG", "")]),
    ] {
        let files = write_files(&opts, broker.port(), &cloud);
        let mut bin = BinDaemon::spawn(&files.config_path, files.dir.path(), &env);
        let (mut conn, _) = accept_hello_of(&mut cloud, &bin).await;
        let client = MqttClient::connect(broker.port()).await;
        wait_relay_up(&mut conn, &client, LONG_WAIT).await;
        bin.signal("TERM");
        bin.wait_exit(Duration::from_secs(5)).await;
        let log = bin.stderr();
        assert!(log.contains("TRACE"), "trace output is on ({env:?}): {log}");
        assert!(
            log.contains("handshake done"),
            "tungstenite's debug lines stay: {log}"
        );
        assert!(
            !log.contains(&cloud.token),
            "the token is in the log ({env:?})"
        );
        assert!(!log.to_ascii_lowercase().contains("bearer"), "{env:?}");
        assert!(
            !log.contains('\u{1b}'),
            "colour codes in a piped log ({env:?})"
        );
    }
}

/// Edge rule 22: a local user holding a thousand connections to the
/// metrics endpoint cannot leave the daemon without descriptors. Run with
/// a hard limit of 256 descriptors: before, the held connections took them
/// all and a link grant was answered `unavailable` ("Too many open
/// files"); now the endpoint serves `limits.max_connections` (default 64)
/// and closes the rest at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_held_open_on_the_metrics_port_cannot_starve_the_daemon() {
    let broker = Broker::start();
    let mut cloud = CloudServer::start().await;
    let port = common::broker::free_port();
    let opts = Opts {
        extra_sections: format!("\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n"),
        ..Opts::default()
    };
    let files = write_files(&opts, broker.port(), &cloud);
    let config = files.config_path.to_string_lossy().into_owned();
    let mut bin = common::daemon::Binary::spawn_under(
        &["prlimit", "--nofile=256:256"],
        &["run", "--config", &config],
        files.dir.path(),
        &[],
    );
    let (mut conn, _) = accept_hello_of(&mut cloud, &bin).await;
    let client = MqttClient::connect(broker.port()).await;
    wait_relay_up(&mut conn, &client, LONG_WAIT).await;
    let mut held = Vec::new();
    for _ in 0..1000 {
        match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            Ok(s) => held.push(s),
            Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The daemon still grants (a durable write), audits and revokes.
    link_ok(&mut conn, "l-1", "fd-1", &["ampio/from/fd/#"]).await;
    let (code, out, err) = cli(&["links", "revoke", "fd-1"], &files.config_path).await;
    assert_eq!(code, Some(0), "revoke: {out} {err}");
    assert!(bin.running(), "{}", bin.stderr());
    assert!(
        !bin.stderr().contains("Too many open files"),
        "{}",
        bin.stderr()
    );
    drop(held);
    bin.signal("TERM");
    bin.wait_exit(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_reload_keeps_the_running_configuration() {
    let broker = Broker::start();
    let mut cloud = CloudServer::start().await;
    let files = write_files(&Opts::default(), broker.port(), &cloud);
    let good = format!("{}\n[privacy]\nstrip_keys = [\"room\"]\n", files.toml);
    std::fs::write(&files.config_path, &good).expect("write config");
    let mut bin = BinDaemon::spawn(&files.config_path, files.dir.path(), &[]);
    let (mut conn, _) = accept_hello_of(&mut cloud, &bin).await;
    let client = MqttClient::connect(broker.port()).await;
    wait_relay_up(&mut conn, &client, LONG_WAIT).await;
    link_ok(&mut conn, "l-1", "inv-1", &["ampio/from/inv/#"]).await;

    let port_line = format!("port = {}", broker.port());
    assert!(good.contains(&port_line), "{good}");
    let bad = good.replace(&port_line, "port = \"abc\"");
    std::fs::write(&files.config_path, &bad).expect("write invalid config");

    // The command line refuses it, naming the key.
    let (code, out, err) = cli(&["reload"], &files.config_path).await;
    assert_ne!(
        code,
        Some(0),
        "reload of an invalid config fails: {out} {err}"
    );
    assert!(
        err.contains("mqtt.port"),
        "the message names mqtt.port: {err}"
    );
    // The daemon itself refuses it too (control socket, as a client would).
    let e = hearthlink::control::request(&files.control_socket(), &json!({"cmd": "reload"}))
        .await
        .expect_err("the daemon refuses the reload");
    let msg = e.to_string();
    assert!(msg.contains("mqtt.port"), "{msg}");
    assert!(
        msg.contains("kept"),
        "says the running config is kept: {msg}"
    );
    // And on SIGHUP it logs the refusal and keeps running.
    bin.signal("HUP");
    let b = &bin;
    assert!(
        wait_until(WAIT, || async move {
            b.stderr().contains("reload refused") && b.stderr().contains("mqtt.port")
        })
        .await,
        "SIGHUP refusal logged: {}",
        bin.stderr()
    );
    assert!(bin.running(), "{}", bin.stderr());

    // Still relaying, with the old privacy settings, on the same links.
    let topic = "ampio/from/inv/1";
    client.publish(topic, r#"{"temp":7,"room":"y"}"#, 1).await;
    let app = conn
        .expect_frame("app frame", |v| is_state(v, topic), WAIT)
        .await;
    assert_eq!(app["payload"], json!({"temp":7,"room":"y"}));
    let f = conn
        .expect_frame("link frame", |v| is_link_frame(v, "inv-1"), WAIT)
        .await;
    assert_eq!(
        f["payload"],
        json!({"temp":7}),
        "old strip_keys still apply"
    );
    assert_eq!(
        reconnects(&files.control_socket()).await,
        (0, 0),
        "the broker connection was not touched"
    );
    assert!(!conn.is_closed());
    bin.signal("TERM");
    let status = bin.wait_exit(Duration::from_secs(5)).await;
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", bin.stderr());
}

// -------------------------------------------------------- token rotation

/// A TLS websocket cloud that accepts exactly one token, changeable at
/// run time, and records every upgrade's `Authorization`.
struct TokenCloud {
    port: u16,
    ca_file: PathBuf,
    token: Arc<Mutex<String>>,
    /// (Authorization header, accepted?) per upgrade attempt.
    upgrades: Arc<Mutex<Vec<(String, bool)>>>,
    sessions: tokio::sync::mpsc::UnboundedReceiver<TokenSession>,
    stop: CancellationToken,
    _dir: tempfile::TempDir,
}

/// One accepted connection: its frames, and a way to close it.
struct TokenSession {
    auth: String,
    frames: tokio::sync::mpsc::UnboundedReceiver<Value>,
    close: Option<tokio::sync::oneshot::Sender<()>>,
}

impl TokenSession {
    async fn expect(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.frames.recv()).await {
                Ok(Some(v)) if pred(&v) => return v,
                Ok(Some(_)) => {}
                _ => panic!("no frame matching {what} ({})", self.auth),
            }
        }
    }

    /// Closes with 1000 from the cloud side.
    fn close(&mut self) {
        if let Some(tx) = self.close.take() {
            let _ = tx.send(());
        }
    }
}

impl TokenCloud {
    async fn start(token: &str) -> TokenCloud {
        let certs = common::cloud::generate_certs();
        let dir = tempfile::Builder::new()
            .prefix("hl-tokcloud")
            .tempdir()
            .expect("tempdir");
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, &certs.ca_pem).expect("write CA");
        let acceptor = common::cloud::tls_acceptor(&certs);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let token = Arc::new(Mutex::new(token.to_owned()));
        let upgrades = Arc::new(Mutex::new(Vec::new()));
        let (tx, sessions) = tokio::sync::mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let (t, u, s) = (token.clone(), upgrades.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let tcp = tokio::select! {
                    _ = s.cancelled() => return,
                    r = listener.accept() => match r { Ok((tcp, _)) => tcp, Err(_) => continue },
                };
                let (acceptor, t, u, tx, s) = (
                    acceptor.clone(),
                    t.clone(),
                    u.clone(),
                    tx.clone(),
                    s.clone(),
                );
                tokio::spawn(async move {
                    tokio::select! {
                        _ = s.cancelled() => {}
                        _ = serve_token_conn(tcp, acceptor, t, u, tx) => {}
                    }
                });
            }
        });
        TokenCloud {
            port,
            ca_file,
            token,
            upgrades,
            sessions,
            stop,
            _dir: dir,
        }
    }

    fn set_token(&self, token: &str) {
        *self.token.lock().expect("token") = token.to_owned();
    }

    fn refused_with(&self, auth: &str) -> usize {
        self.upgrades
            .lock()
            .expect("upgrades")
            .iter()
            .filter(|(a, ok)| a == auth && !ok)
            .count()
    }

    async fn accept(&mut self) -> TokenSession {
        let mut s = tokio::time::timeout(LONG_WAIT, self.sessions.recv())
            .await
            .ok()
            .flatten()
            .unwrap_or_else(|| {
                panic!(
                    "no accepted connection; upgrades: {:?}",
                    self.upgrades.lock().expect("upgrades")
                )
            });
        s.expect("hello", |v| v["type"] == "hello").await;
        s
    }
}

impl Drop for TokenCloud {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

// The handshake callback's error type is tungstenite's, not ours.
#[allow(clippy::result_large_err)]
async fn serve_token_conn(
    tcp: tokio::net::TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    token: Arc<Mutex<String>>,
    upgrades: Arc<Mutex<Vec<(String, bool)>>>,
    sessions: tokio::sync::mpsc::UnboundedSender<TokenSession>,
) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
    use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::Message;
    let Ok(tls) = acceptor.accept(tcp).await else {
        return;
    };
    let expected = format!("Bearer {}", token.lock().expect("token"));
    let mut auth = String::new();
    let callback = |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        auth = req
            .headers()
            .get("Authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let ok = auth == expected;
        upgrades.lock().expect("upgrades").push((auth.clone(), ok));
        if !ok {
            let mut e = ErrorResponse::new(Some("unauthorized".into()));
            *e.status_mut() = StatusCode::UNAUTHORIZED;
            return Err(e);
        }
        resp.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static("hearthlink.v1"),
        );
        Ok(resp)
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tls, callback).await else {
        return;
    };
    let (ftx, frames) = tokio::sync::mpsc::unbounded_channel();
    let (ctx, mut crx) = tokio::sync::oneshot::channel();
    let _ = sessions.send(TokenSession {
        auth,
        frames,
        close: Some(ctx),
    });
    loop {
        tokio::select! {
            _ = &mut crx => {
                let frame = CloseFrame { code: CloseCode::Normal, reason: "test closes".into() };
                let _ = ws.close(Some(frame)).await;
                return;
            }
            m = ws.next() => match m {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(&t).unwrap_or(Value::Null);
                    if v["type"] == "hello" {
                        let w = json!({"type": "welcome", "server_time": common::now_ms()});
                        if ws.send(Message::Text(w.to_string())).await.is_err() {
                            return;
                        }
                    }
                    let _ = ftx.send(v);
                }
                Some(Ok(_)) => {}
                _ => return,
            },
        }
    }
}

/// Publishes probes until a state frame for the probe topic arrives.
async fn relayed(s: &mut TokenSession, client: &MqttClient) {
    let deadline = Instant::now() + LONG_WAIT;
    loop {
        client
            .publish(common::rig::PROBE_TOPIC, r#"{"probe":1}"#, 1)
            .await;
        let got = tokio::time::timeout(Duration::from_millis(250), async {
            while let Some(v) = s.frames.recv().await {
                if is_state(&v, common::rig::PROBE_TOPIC) {
                    return true;
                }
            }
            false
        })
        .await;
        if got == Ok(true) {
            return;
        }
        assert!(Instant::now() < deadline, "no state relayed on {}", s.auth);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_token_is_used_at_the_next_connect_without_a_restart() {
    let broker = Broker::start();
    let mut cloud = TokenCloud::start("tok-A").await;
    let dir = tempfile::Builder::new()
        .prefix("hl-gw")
        .tempdir()
        .expect("tempdir");
    let token_file = dir.path().join("token");
    let write_token = |t: &str| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(&token_file, format!("{t}\n")).expect("write token");
        std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600))
            .expect("chmod token");
    };
    write_token("tok-A");
    let config_path = dir.path().join("hearthlink.toml");
    let path = |p: &Path| toml_str(&p.display().to_string());
    let toml = format!(
        "gateway_id = \"gw-tok\"\nstate_dir = {}\n\n[mqtt]\nhost = \"127.0.0.1\"\nport = {}\nkeep_alive_s = 5\nsubscribe = [\"ampio/from/#\"]\n\n[cloud]\nurl = \"wss://localhost:{}/v1/gateway\"\ntoken_file = {}\nca_file = {}\nheartbeat_s = 20\nmax_backoff_s = 1\n",
        path(&dir.path().join("state")),
        broker.port(),
        cloud.port,
        path(&token_file),
        path(&cloud.ca_file),
    );
    std::fs::write(&config_path, toml).expect("write config");
    let gw = Gw::start(&config_path);
    let client = MqttClient::connect(broker.port()).await;

    let mut s1 = cloud.accept().await;
    assert_eq!(s1.auth, "Bearer tok-A");
    relayed(&mut s1, &client).await;

    // Rotation: new token in the file, the cloud accepts only the new one,
    // then the cloud drops the session.
    write_token("tok-B");
    cloud.set_token("tok-B");
    s1.close();
    let mut s2 = cloud.accept().await;
    assert_eq!(s2.auth, "Bearer tok-B", "the token file is read again");
    relayed(&mut s2, &client).await;
    assert_eq!(
        cloud.refused_with("Bearer tok-A"),
        0,
        "the old token was not tried after the rotation"
    );

    // The cloud rotates first: the gateway is refused until the file changes.
    cloud.set_token("tok-C");
    s2.close();
    let c = &cloud;
    assert!(
        wait_until(
            LONG_WAIT,
            || async move { c.refused_with("Bearer tok-B") >= 1 }
        )
        .await,
        "the daemon retries with the token it has"
    );
    write_token("tok-C");
    let mut s3 = cloud.accept().await;
    assert_eq!(s3.auth, "Bearer tok-C");
    relayed(&mut s3, &client).await;

    let status = gw.status().await;
    assert_eq!(status["cloud"]["connected"], true, "{status}");
    assert!(
        status["cloud"]["reconnects"].as_u64() >= Some(2),
        "{status}"
    );
    assert!(
        status["uptime_s"].is_u64(),
        "the same daemon answered all along: {status}"
    );
    gw.stop().await;
}

// -------------------------------------------------- retained status topic

/// The retained value of `topic` as a new subscriber sees it.
async fn retained(port: u16, topic: &str) -> Option<(String, bool)> {
    let mut c = MqttClient::connect(port).await;
    c.subscribe(topic).await;
    c.recv(Duration::from_millis(500))
        .await
        .map(|m| (m.text(), m.retain))
}

async fn expect_retained(port: u16, topic: &str, want: &str, why: &str) {
    let mut last = None;
    let deadline = Instant::now() + LONG_WAIT;
    while Instant::now() < deadline {
        last = retained(port, topic).await;
        if last == Some((want.to_owned(), true)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{why}: retained {topic} should be {want:?}, is {last:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_status_topic_follows_the_cloud_and_the_process() {
    let broker = Broker::start();
    let mut cloud = CloudServer::start().await;
    let files = write_files(&Opts::default(), broker.port(), &cloud);
    let topic = "hearthlink/gw-test/status";
    let port = broker.port();

    let mut bin = BinDaemon::spawn(&files.config_path, files.dir.path(), &[]);
    let (conn, _) = accept_hello_of(&mut cloud, &bin).await;
    expect_retained(port, topic, "online", "cloud up").await;

    // The cloud goes away and refuses the redials.
    cloud.set_behavior(Behavior {
        accept: Accept::DropTcp,
        ..Behavior::default()
    });
    conn.drop_tcp();
    expect_retained(port, topic, "cloud-down", "cloud connection dropped").await;

    cloud.set_behavior(Behavior::default());
    let (_conn, _) = accept_hello_of(&mut cloud, &bin).await;
    expect_retained(port, topic, "online", "cloud back").await;

    bin.signal("TERM");
    let status = bin.wait_exit(Duration::from_secs(5)).await;
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", bin.stderr());
    expect_retained(port, topic, "offline", "after SIGTERM").await;

    // Killed outright: the broker publishes the last will.
    let mut bin = BinDaemon::spawn(&files.config_path, files.dir.path(), &[]);
    let (_conn, _) = accept_hello_of(&mut cloud, &bin).await;
    expect_retained(port, topic, "online", "second run").await;
    bin.signal("KILL");
    assert!(bin.wait_exit(Duration::from_secs(5)).await.is_some());
    expect_retained(port, topic, "offline", "after kill -9 (last will)").await;
}
