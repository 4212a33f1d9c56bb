//! Fault injection on real sockets (issue 16): the daemon reaches the TLS
//! test cloud through a TCP fault proxy the test owns (this kernel has no
//! `netem`). Real mosquitto, the daemon in process.

mod common;
mod e2e_support;

use std::time::Duration;

use common::broker::Broker;
use common::cloud::CloudServer;
use common::daemon::{write_files, Daemon, Opts};
use common::mqtt::MqttClient;
use common::proxy::Proxy;
use common::rig::wait_relay_up;
use common::{LONG_WAIT, WAIT};
use serde_json::Value;

/// The cloud's port, from its URL.
fn port_of(cloud: &CloudServer) -> u16 {
    cloud
        .url()
        .rsplit(':')
        .next()
        .and_then(|rest| rest.split('/').next())
        .and_then(|p| p.parse().ok())
        .expect("cloud url port")
}

struct Setup {
    broker: Broker,
    cloud: CloudServer,
    proxy: Proxy,
    daemon: Daemon,
}

async fn through_proxy(opts: Opts) -> Setup {
    let broker = Broker::start();
    let cloud = CloudServer::start().await;
    let proxy = Proxy::start(port_of(&cloud)).await;
    let opts = Opts {
        url: Some(format!("wss://localhost:{}/v1/gateway", proxy.port)),
        ..opts
    };
    let daemon = Daemon::start(&opts, &broker, &cloud);
    Setup {
        broker,
        cloud,
        proxy,
        daemon,
    }
}

const TOPICS: usize = 10;
const MESSAGES: usize = 400;

/// 200 ms each way and 64 kbit/s during a flood of 400 messages on 10
/// topics: each topic's frames arrive in order and end at its last value,
/// and the offline buffer never holds more than one entry per topic. (The
/// flood fits the sockets' buffers, so it is not coalesced here; the
/// buffer's bound is held by `cloud_link`'s full-buffer test.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_thin_link_during_a_flood_keeps_order_and_delivers_the_last_values() {
    let mut s = through_proxy(Opts::default()).await;
    let (mut conn, _) = s.cloud.accept_hello(WAIT).await;
    let client = MqttClient::connect(s.broker.port()).await;
    wait_relay_up(&mut conn, &client, WAIT).await;
    s.proxy.set_link(Duration::from_millis(200), 64_000);
    for n in 0..MESSAGES {
        let topic = format!("ampio/from/flood/{}", n % TOPICS);
        client.publish(&topic, format!(r#"{{"n":{n}}}"#), 1).await;
    }
    let last = |t: usize| (MESSAGES - TOPICS + t) as u64;
    let mut seen: Vec<Vec<u64>> = vec![Vec::new(); TOPICS];
    let mut peak = 0;
    let deadline = tokio::time::Instant::now() + LONG_WAIT * 3;
    let is_flood = |v: &Value| {
        v["type"] == "state"
            && v["topic"]
                .as_str()
                .is_some_and(|t| t.starts_with("ampio/from/flood/"))
    };
    while !(0..TOPICS).all(|t| seen[t].last() == Some(&last(t))) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not all last values arrived: {seen:?}"
        );
        peak = peak.max(s.daemon.counter("buffered").await);
        let Some(f) = conn
            .try_expect_frame(is_flood, Duration::from_millis(500))
            .await
        else {
            continue;
        };
        let topic = f["topic"].as_str().unwrap_or_default();
        let t: usize = topic
            .rsplit('/')
            .next()
            .and_then(|t| t.parse().ok())
            .expect("topic index");
        seen[t].push(f["payload"]["n"].as_u64().expect("n"));
    }
    for (t, ns) in seen.iter().enumerate() {
        assert!(
            ns.windows(2).all(|w| w[0] < w[1]),
            "topic {t} out of order: {ns:?}"
        );
    }
    assert!(peak <= TOPICS as u64, "buffered {peak} > {TOPICS} topics");
    let delivered: usize = seen.iter().map(Vec::len).sum();
    eprintln!("faults: {delivered} of {MESSAGES} frames delivered over the thin link, buffered peak {peak}");
    s.daemon.stop().await;
}

/// The link is cut in the middle of a 20 KiB state frame: the daemon
/// dials again, says hello, relays what comes next, and a `sync` brings
/// the state whose frame was cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_in_the_middle_of_a_frame_is_redialled_and_sync_restores_the_state() {
    let mut s = through_proxy(Opts::default()).await;
    let (mut conn, _) = s.cloud.accept_hello(WAIT).await;
    let client = MqttClient::connect(s.broker.port()).await;
    wait_relay_up(&mut conn, &client, WAIT).await;
    let big = format!(r#"{{"blob":"{}"}}"#, "x".repeat(20 * 1024));
    s.proxy.reset_after(4096);
    client.publish("ampio/from/big/x", big.clone(), 1).await;
    let (mut conn2, hello) = s.cloud.accept_hello(LONG_WAIT).await;
    assert_eq!(hello["type"], "hello");
    assert!(s.proxy.accepted() >= 2, "no second connection");
    wait_relay_up(&mut conn2, &client, WAIT).await;
    conn2.send(&serde_json::json!({"type": "sync", "id": "s-1"}));
    let snap = conn2
        .expect_frame(
            "the cut topic in the sync",
            |v| v["topic"] == "ampio/from/big/x" && v["snapshot"] == true,
            WAIT,
        )
        .await;
    assert_eq!(
        snap["payload"]["blob"].as_str().map(str::len),
        Some(20 * 1024)
    );
    conn2.expect_ack("s-1").await;
    s.daemon.stop().await;
}

const COMMANDS: usize = 20;

/// The ack of command `c-<k>`.
async fn ack_of(conn: &mut common::cloud::Conn, k: usize) -> Value {
    let id = format!("c-{k}");
    conn.expect_frame(
        "an ack",
        |v| v["type"] == "ack" && v["id"] == id.as_str(),
        LONG_WAIT,
    )
    .await
}

/// The broker link is cut while 20 commands wait for their PUBACK (the
/// proxy delays each way by 300 ms): every command is answered, none is
/// published twice, not even when the cloud retries the `unavailable` ones
/// under the same ids (before: each retry ran the command again, as they
/// had reached the broker), and each one acked `ok` reached the broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_cut_while_commands_wait_for_puback_answers_each_and_doubles_none() {
    let broker = Broker::start();
    let mut cloud = CloudServer::start().await;
    let proxy = Proxy::start(broker.port()).await;
    let files = write_files(&Opts::default(), proxy.port, &cloud);
    let gw = e2e_support::Gw::start(&files.config_path);
    let (mut conn, _) = cloud.accept_hello(LONG_WAIT).await;
    let client = MqttClient::connect(broker.port()).await;
    wait_relay_up(&mut conn, &client, LONG_WAIT).await;
    let mut sub = MqttClient::connect(broker.port()).await;
    sub.subscribe("ampio/to/#").await;

    proxy.set_link(Duration::from_millis(300), 0);
    for k in 0..COMMANDS {
        conn.command(
            &format!("c-{k}"),
            "ampio/to/ab12/o/1/cmd",
            serde_json::json!({"k": k}),
        );
    }
    tokio::time::sleep(Duration::from_millis(450)).await;
    proxy.cut();
    proxy.set_link(Duration::ZERO, 0);
    let mut ok = Vec::new();
    for k in 0..COMMANDS {
        let ack = ack_of(&mut conn, k).await;
        if ack["status"] == "ok" {
            ok.push(k as u64);
        }
    }
    let mut seen = vec![0u32; COMMANDS];
    while let Some(m) = sub.recv(Duration::from_secs(2)).await {
        let v: Value = serde_json::from_slice(&m.payload).unwrap_or_default();
        if let Some(k) = v["k"].as_u64() {
            seen[k as usize] += 1;
        }
    }
    // The cloud retries what was `unavailable`, under the same ids: an ack
    // each, and nothing that reached the broker runs again.
    let unavailable: Vec<usize> = (0..COMMANDS)
        .filter(|k| !ok.contains(&(*k as u64)))
        .collect();
    for k in unavailable {
        conn.command(
            &format!("c-{k}"),
            "ampio/to/ab12/o/1/cmd",
            serde_json::json!({"k": k}),
        );
        let ack = ack_of(&mut conn, k).await;
        if ack["status"] == "ok" {
            ok.push(k as u64);
        } else {
            assert!(
                ack["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("may have run")),
                "an unavailable retry says why: {ack}"
            );
        }
    }
    while let Some(m) = sub.recv(Duration::from_secs(2)).await {
        let v: Value = serde_json::from_slice(&m.payload).unwrap_or_default();
        if let Some(k) = v["k"].as_u64() {
            seen[k as usize] += 1;
        }
    }
    eprintln!(
        "faults: {} of {COMMANDS} acked ok, deliveries per command {seen:?}",
        ok.len()
    );
    assert!(
        seen.iter().all(|n| *n <= 1),
        "a command was published twice: {seen:?}"
    );
    for k in &ok {
        assert_eq!(
            seen[*k as usize], 1,
            "c-{k} acked ok but never reached the broker"
        );
    }
    gw.stop().await;
}

/// The cloud's clock jumps three hours between two welcomes: the gateway
/// takes the new offset at once. State frames carry the new cloud time, a
/// command valid on the new clock runs, and one that was valid on the old
/// clock only is `expired`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clock_offset_jumping_by_hours_between_two_welcomes_is_followed() {
    use common::cloud::{Behavior, Welcome};
    use common::now_ms;
    const JUMP_MS: i64 = 3 * 3600 * 1000;
    let broker = Broker::start();
    let mut cloud = CloudServer::start().await;
    let files = write_files(&Opts::default(), broker.port(), &cloud);
    let gw = e2e_support::Gw::start(&files.config_path);
    let (mut conn, _) = cloud.accept_hello(LONG_WAIT).await;
    let client = MqttClient::connect(broker.port()).await;
    wait_relay_up(&mut conn, &client, LONG_WAIT).await;

    cloud.set_behavior(Behavior {
        welcome: Welcome::Auto {
            offset_ms: JUMP_MS,
            heartbeat_s: None,
        },
        ..Behavior::default()
    });
    conn.drop_tcp();
    let (mut conn, _) = cloud.accept_hello(LONG_WAIT).await;
    wait_relay_up(&mut conn, &client, LONG_WAIT).await;

    client.publish("ampio/from/clock/x", r#"{"v":1}"#, 1).await;
    let frame = conn
        .expect_frame(
            "state after the jump",
            |v| v["topic"] == "ampio/from/clock/x",
            WAIT,
        )
        .await;
    let ts = frame["ts"].as_i64().expect("ts");
    assert!(
        (ts - (now_ms() + JUMP_MS)).abs() < 60_000,
        "ts {ts} is not on the new clock"
    );

    let send = |id: &str, expires_at: i64| {
        conn.send(
            &serde_json::json!({"type": "command", "id": id, "source": "app",
            "topic": "ampio/to/ab12/o/1/cmd", "payload": {"v": 1}, "expires_at": expires_at}),
        );
    };
    send("new-clock", now_ms() + JUMP_MS + 60_000);
    send("old-clock", now_ms() + 60_000);
    let new = conn.expect_ack("new-clock").await;
    assert_eq!(new["status"], "ok", "{new}");
    let old = conn.expect_ack("old-clock").await;
    assert_eq!(old["reason"], "expired", "{old}");
    gw.stop().await;
}

/// The broker goes away in the middle of a link's traffic and a revoke
/// arrives while it is down: the revoke is acked `ok` at once (it needs
/// the disk, not the broker), and after the broker is back the link gets
/// nothing more while the app gets the state again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_during_a_revoke_leaves_the_link_revoked() {
    let mut broker = Broker::start();
    let mut cloud = CloudServer::start().await;
    let files = write_files(&Opts::default(), broker.port(), &cloud);
    let gw = e2e_support::Gw::start(&files.config_path);
    let (mut conn, _) = cloud.accept_hello(LONG_WAIT).await;
    let client = MqttClient::connect(broker.port()).await;
    wait_relay_up(&mut conn, &client, LONG_WAIT).await;
    e2e_support::link_ok(&mut conn, "l-1", "rs-1", &["ampio/from/rs/#"]).await;
    client.publish("ampio/from/rs/a", r#"{"v":1}"#, 1).await;
    conn.expect_frame(
        "a link frame",
        |v| e2e_support::is_link_frame(v, "rs-1"),
        WAIT,
    )
    .await;

    broker.kill();
    e2e_support::send_revoke(&conn, "r-1", "rs-1");
    let ack = conn.expect_ack("r-1").await;
    assert_eq!(ack["status"], "ok", "revoke with the broker down: {ack}");
    broker.restart();
    let client = MqttClient::connect(broker.port()).await;
    wait_relay_up(&mut conn, &client, LONG_WAIT).await;
    client.publish("ampio/from/rs/a", r#"{"v":2}"#, 1).await;
    conn.expect_frame(
        "the app frame",
        |v| v["topic"] == "ampio/from/rs/a" && v["audience"] == "app" && v["payload"]["v"] == 2,
        WAIT,
    )
    .await;
    let late = conn
        .collect(
            |v| e2e_support::is_link_frame(v, "rs-1") && v["payload"]["v"] == 2,
            Duration::from_secs(1),
        )
        .await;
    assert!(
        late.is_empty(),
        "a revoked link got state after the broker came back: {late:?}"
    );
    gw.stop().await;
}
