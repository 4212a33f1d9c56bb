//! End to end, relay: device state up, commands down, through a real
//! mosquitto and a real TLS websocket cloud, with the daemon in-process.

mod common;

use std::time::Duration;

use base64::Engine as _;
use common::broker::Broker;
use common::cloud::{Behavior, CloudServer, Welcome};
use common::daemon::{Daemon, Opts};
use common::mqtt::{without_status, MqttClient, Msg};
use common::rig::{is_state, Rig, PROBE_TOPIC};
use common::{now_ms, wait_until, LONG_WAIT, WAIT};
use serde_json::{json, Value};

const CMD_TOPIC: &str = "ampio/to/ab12/o/1/cmd";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn assert_rejected(ack: &Value, reason: &str) {
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["status"], "rejected", "expected a rejection: {ack}");
    assert_eq!(ack["reason"], reason, "wrong reason: {ack}");
}

fn assert_ok(ack: &Value) {
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["status"], "ok", "expected ok: {ack}");
    assert!(
        ack.get("reason").is_none(),
        "an ok ack has no reason: {ack}"
    );
}

/// (topic, payload text) of broker messages, status topic left out.
fn seen(msgs: Vec<Msg>) -> Vec<(String, String)> {
    without_status(msgs)
        .into_iter()
        .map(|m| (m.topic.clone(), m.text()))
        .collect()
}

fn pair(topic: &str, payload: &str) -> (String, String) {
    (topic.to_owned(), payload.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_relayed_as_json_text_and_binary() {
    let mut rig = Rig::start(Opts::default()).await;
    assert_eq!(rig.hello["type"], "hello");
    assert_eq!(rig.hello["gateway_id"], "gw-test");
    assert_eq!(rig.hello["protocol"], 1);
    assert!(rig.hello["version"].is_string(), "{}", rig.hello);
    let client = rig.mqtt().await;
    rig.wait_relay_up(&client).await;

    let binary: Vec<u8> = vec![0xff, 0x00, 0xfe, 0x80];
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "ampio/from/ab12/state/o/1",
            br#"{"value":1,"nested":{"a":[1,2]}}"#.to_vec(),
        ),
        ("ampio/from/ab12/state/o/2", b"42".to_vec()),
        ("ampio/from/ab12/state/o/3", b"hello world".to_vec()),
        ("ampio/from/ab12/state/o/4", br#""quoted""#.to_vec()),
        ("ampio/from/ab12/state/o/5", binary.clone()),
        ("ampio/from/ab12/state/o/6", "zażółć".as_bytes().to_vec()),
    ];
    let before = now_ms();
    for (topic, payload) in &cases {
        client.publish(topic, payload.clone(), 1).await;
    }
    let mut frames = Vec::new();
    for (topic, _) in &cases {
        let f = rig
            .conn
            .expect_frame(topic, |v| is_state(v, topic), WAIT)
            .await;
        frames.push(f);
    }
    let after = now_ms();

    assert_eq!(
        frames[0]["payload"],
        json!({"value":1,"nested":{"a":[1,2]}})
    );
    assert_eq!(frames[1]["payload"], json!(42));
    assert_eq!(frames[2]["payload"], json!("hello world"));
    assert_eq!(frames[3]["payload"], json!("quoted"));
    assert_eq!(frames[4]["payload_b64"], json!(b64(&binary)));
    assert!(
        frames[4].get("payload").is_none(),
        "binary has no payload: {}",
        frames[4]
    );
    assert_eq!(frames[5]["payload"], json!("zażółć"));
    for f in &frames {
        if f["topic"] != "ampio/from/ab12/state/o/5" {
            assert!(f.get("payload_b64").is_none(), "{f}");
        }
        let ts = f["ts"]
            .as_i64()
            .unwrap_or_else(|| panic!("ts is an integer: {f}"));
        assert!(
            ts >= before - 5_000 && ts <= after + 5_000,
            "ts {ts} not near the (offset 0) cloud clock [{before}, {after}]: {f}"
        );
        assert!(
            f.get("snapshot").is_none_or(|s| s == false),
            "a live frame is not a snapshot: {f}"
        );
    }
    rig.daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_messages_on_one_topic_keep_their_order() {
    let mut rig = Rig::start(Opts::default()).await;
    let client = rig.mqtt().await;
    rig.wait_relay_up(&client).await;
    let topic = "ampio/from/order/state";
    for i in 0..1000 {
        client.publish(topic, format!("{{\"seq\":{i}}}"), 1).await;
    }
    let mut seqs = Vec::new();
    while seqs.last() != Some(&999) {
        let f = rig
            .conn
            .expect_frame(
                &format!("state {topic} after seq {:?}", seqs.last()),
                |v| is_state(v, topic),
                Duration::from_secs(30),
            )
            .await;
        seqs.push(f["payload"]["seq"].as_i64().expect("seq"));
    }
    let expected: Vec<i64> = (0..1000).collect();
    assert_eq!(seqs.len(), 1000, "every message relayed once, in order");
    assert_eq!(seqs, expected);
    rig.daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_payloads_are_published_as_the_protocol_says() {
    let opts = Opts {
        max_payload_bytes: Some(64),
        ..Opts::default()
    };
    let mut rig = Rig::start(opts).await;
    let mut sub = rig.mqtt().await;
    sub.subscribe("ampio/to/#").await;
    let sends = [
        json!({"type":"command","id":"p-1","source":"app","topic":CMD_TOPIC,"payload":"on"}),
        json!({"type":"command","id":"p-2","source":"app:alice","topic":CMD_TOPIC,"payload":{"b":1,"a":[true,null]}}),
        json!({"type":"command","id":"p-3","source":"app","topic":CMD_TOPIC,"payload":null}),
        json!({"type":"command","id":"p-4","source":"app","topic":CMD_TOPIC,"payload_b64":b64(&[0, 1, 2, 255])}),
        json!({"type":"command","id":"p-5","source":"app","topic":CMD_TOPIC,"payload":7,"qos":0}),
    ];
    for (i, f) in sends.iter().enumerate() {
        rig.conn.send(f);
        assert_ok(&rig.conn.expect_ack(&format!("p-{}", i + 1)).await);
    }
    // relay.max_payload_bytes counts the bytes published: a JSON string
    // of 64 characters is 64 bytes (no quotes), 65 raw bytes are too many.
    let at_limit = "y".repeat(64);
    rig.conn.command("p-6", CMD_TOPIC, json!(at_limit));
    assert_ok(&rig.conn.expect_ack("p-6").await);
    rig.conn.send(
        &json!({"type":"command","id":"p-7","source":"app","topic":CMD_TOPIC,
        "payload_b64": b64(&[7u8; 65])}),
    );
    assert_rejected(&rig.conn.expect_ack("p-7").await, "too_large");
    let msgs = sub
        .recv_until(WAIT, |m| m.payload == at_limit.as_bytes())
        .await;
    let got: Vec<Vec<u8>> = msgs.iter().map(|m| m.payload.clone()).collect();
    assert_eq!(
        got,
        vec![
            b"on".to_vec(),
            br#"{"b":1,"a":[true,null]}"#.to_vec(),
            b"null".to_vec(),
            vec![0, 1, 2, 255],
            b"7".to_vec(),
            at_limit.as_bytes().to_vec(),
        ]
    );
    assert!(
        msgs.iter().all(|m| !m.retain),
        "commands are never retained"
    );
    rig.daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_rejection_reason_and_nothing_published() {
    let opts = Opts {
        max_payload_bytes: Some(64),
        commands_per_second: Some(0.1),
        command_burst: Some(3),
        ..Opts::default()
    };
    let mut rig = Rig::start(opts).await;
    let mut sub = rig.mqtt().await;
    sub.subscribe("#").await;

    rig.conn.command("ok-1", CMD_TOPIC, json!("1"));
    assert_ok(&rig.conn.expect_ack("ok-1").await);
    let first = sub.recv_until(WAIT, |m| m.topic == CMD_TOPIC).await;
    assert_eq!(seen(first), vec![pair(CMD_TOPIC, "1")]);

    let now = now_ms();
    let big = "x".repeat(65);
    let rejections = [
        (
            "invalid",
            json!({"type":"command","id":"r-inv","source":"app","payload":"no topic"}),
        ),
        (
            "too_large",
            json!({"type":"command","id":"r-big","source":"app","topic":CMD_TOPIC,"payload":big}),
        ),
        (
            "expired",
            json!({"type":"command","id":"r-exp","source":"app","topic":CMD_TOPIC,"payload":"exp","expires_at":now - 60_000}),
        ),
        (
            "revoked",
            json!({"type":"command","id":"r-rev","source":"link:no-such-link","topic":CMD_TOPIC,"payload":"rev"}),
        ),
        (
            "forbidden",
            json!({"type":"command","id":"r-out","source":"app","topic":"ampio/from/ab12/state/o/1","payload":"out"}),
        ),
        (
            "forbidden",
            json!({"type":"command","id":"r-plus","source":"app","topic":"ampio/to/+/o/1/cmd","payload":"plus"}),
        ),
        (
            "forbidden",
            json!({"type":"command","id":"r-hash","source":"app","topic":"ampio/to/#","payload":"hash"}),
        ),
        (
            "forbidden",
            json!({"type":"command","id":"r-other","source":"app","topic":"other/topic","payload":"other"}),
        ),
    ];
    for (reason, frame) in &rejections {
        rig.conn.send(frame);
        let id = frame["id"].as_str().expect("id");
        let ack = rig.conn.expect_ack(id).await;
        assert_rejected(&ack, reason);
        assert!(ack["message"].is_string(), "a rejection says why: {ack}");
    }

    // rate_limited: a burst of 3 for app:rl, then the 4th is refused.
    for i in 1..=3 {
        rig.conn.send(&json!({"type":"command","id":format!("rl-{i}"),"source":"app:rl","topic":CMD_TOPIC,"payload":format!("rl-{i}")}));
    }
    rig.conn.send(
        &json!({"type":"command","id":"rl-4","source":"app:rl","topic":CMD_TOPIC,"payload":"rl-4"}),
    );
    for i in 1..=3 {
        assert_ok(&rig.conn.expect_ack(&format!("rl-{i}")).await);
    }
    assert_rejected(&rig.conn.expect_ack("rl-4").await, "rate_limited");

    // Barrier: everything published before the marker arrives before it.
    rig.conn.command("marker", CMD_TOPIC, json!("marker"));
    assert_ok(&rig.conn.expect_ack("marker").await);
    let msgs = sub.recv_until(WAIT, |m| m.payload == b"marker").await;
    assert_eq!(
        seen(msgs),
        vec![
            pair(CMD_TOPIC, "rl-1"),
            pair(CMD_TOPIC, "rl-2"),
            pair(CMD_TOPIC, "rl-3"),
            pair(CMD_TOPIC, "marker"),
        ],
        "only the accepted commands reach the broker"
    );
    rig.daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_retry_publishes_once_and_replays_the_ack() {
    let mut rig = Rig::start(Opts::default()).await;
    let mut sub = rig.mqtt().await;
    sub.subscribe("ampio/to/#").await;

    rig.conn.command("c-1", CMD_TOPIC, json!("first"));
    let a1 = rig.conn.expect_ack("c-1").await;
    assert_ok(&a1);
    rig.conn.command("c-1", CMD_TOPIC, json!("first"));
    let a2 = rig.conn.expect_ack("c-1").await;
    assert_eq!(a1, a2, "the same ack again");
    // Same id, other content: still the first ack, nothing published.
    rig.conn.command("c-1", CMD_TOPIC, json!("changed"));
    assert_eq!(rig.conn.expect_ack("c-1").await, a1);

    // A duplicate while the first waits for its PUBACK.
    rig.conn.command("c-2", CMD_TOPIC, json!("second"));
    rig.conn.command("c-2", CMD_TOPIC, json!("second"));
    let b1 = rig.conn.expect_ack("c-2").await;
    let b2 = rig.conn.expect_ack("c-2").await;
    assert_ok(&b1);
    assert_eq!(b1, b2);

    // A rejection is replayed too, message and all.
    let bad =
        json!({"type":"command","id":"c-3","source":"app","topic":"ampio/from/x","payload":"no"});
    rig.conn.send(&bad);
    let r1 = rig.conn.expect_ack("c-3").await;
    assert_rejected(&r1, "forbidden");
    rig.conn.send(&bad);
    assert_eq!(rig.conn.expect_ack("c-3").await, r1);

    rig.conn.command("marker", CMD_TOPIC, json!("marker"));
    assert_ok(&rig.conn.expect_ack("marker").await);
    let msgs = sub.recv_until(WAIT, |m| m.payload == b"marker").await;
    assert_eq!(
        seen(msgs),
        vec![
            pair(CMD_TOPIC, "first"),
            pair(CMD_TOPIC, "second"),
            pair(CMD_TOPIC, "marker")
        ]
    );
    let extra = rig
        .conn
        .collect(|v| v["type"] == "ack", Duration::from_millis(300))
        .await;
    assert!(extra.is_empty(), "one ack per frame, no more: {extra:?}");
    rig.daemon.stop().await;
}

async fn expiry_uses_the_cloud_clock(offset_ms: i64) {
    let mut rig = Rig::start_with(Opts::default(), |cloud| {
        cloud.set_behavior(Behavior {
            welcome: Welcome::Auto {
                offset_ms,
                heartbeat_s: None,
            },
            ..Behavior::default()
        })
    })
    .await;
    let mut sub = rig.mqtt().await;
    sub.subscribe("ampio/to/#").await;

    let cloud_now = now_ms() + offset_ms;
    rig.conn.send(
        &json!({"type":"command","id":"e-ok","source":"app","topic":CMD_TOPIC,
        "payload":"in time","expires_at":cloud_now + 5_000}),
    );
    rig.conn.send(
        &json!({"type":"command","id":"e-late","source":"app","topic":CMD_TOPIC,
        "payload":"too late","expires_at":cloud_now - 1_000}),
    );
    assert_ok(&rig.conn.expect_ack("e-ok").await);
    assert_rejected(&rig.conn.expect_ack("e-late").await, "expired");
    let msgs = sub.recv_until(WAIT, |m| m.payload == b"in time").await;
    assert_eq!(seen(msgs), vec![pair(CMD_TOPIC, "in time")]);

    // The offset is visible, and used for state timestamps too.
    let offset = rig.daemon.status().await["clock_offset_ms"]
        .as_i64()
        .expect("clock_offset_ms");
    assert!(
        (offset - offset_ms).abs() < 5_000,
        "clock offset {offset}, cloud is {offset_ms} ms off"
    );
    let client = rig.mqtt().await;
    rig.wait_relay_up(&client).await;
    client.publish("ampio/from/clock/state", "1", 1).await;
    let f = rig
        .conn
        .expect_frame(
            "clock state",
            |v| is_state(v, "ampio/from/clock/state"),
            WAIT,
        )
        .await;
    let ts = f["ts"].as_i64().expect("ts");
    let want = now_ms() + offset_ms;
    assert!(
        (ts - want).abs() < 60_000,
        "ts {ts} should be on the cloud clock (~{want})"
    );
    rig.daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_with_cloud_clock_an_hour_ahead() {
    // expires_at of e-late is an hour in the local future: only the offset
    // makes it expired.
    expiry_uses_the_cloud_clock(3_600_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_with_cloud_clock_an_hour_behind() {
    // expires_at of e-ok is an hour in the local past: only the offset
    // makes it in time.
    expiry_uses_the_cloud_clock(-3_600_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_welcome_updates_the_clock_offset() {
    let mut rig = Rig::start(Opts::default()).await;
    rig.conn.command("w-0", CMD_TOPIC, json!("before"));
    assert_ok(&rig.conn.expect_ack("w-0").await);
    rig.conn
        .send(&json!({"type":"welcome","server_time": now_ms() + 3_600_000}));
    // A minute ahead of the local clock, but an hour behind the new cloud
    // clock.
    rig.conn.send(
        &json!({"type":"command","id":"w-1","source":"app","topic":CMD_TOPIC,
        "payload":"late","expires_at":now_ms() + 60_000}),
    );
    assert_rejected(&rig.conn.expect_ack("w-1").await, "expired");
    let offset = rig.daemon.status().await["clock_offset_ms"]
        .as_i64()
        .expect("clock_offset_ms");
    assert!((offset - 3_600_000).abs() < 5_000, "offset {offset}");
    assert!(
        !rig.conn.is_closed(),
        "a second welcome does not end the session"
    );
    rig.daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_burst_per_source() {
    let opts = Opts {
        commands_per_second: Some(0.2),
        command_burst: Some(5),
        ..Opts::default()
    };
    let mut rig = Rig::start(opts).await;
    let mut sub = rig.mqtt().await;
    sub.subscribe("ampio/to/#").await;

    // Rejected commands spend no token.
    for i in 0..3 {
        rig.conn.send(
            &json!({"type":"command","id":format!("f-{i}"),"source":"app",
            "topic":"not/allowed","payload":"x"}),
        );
    }
    for i in 0..7 {
        rig.conn
            .command(&format!("b-{i}"), CMD_TOPIC, json!(format!("b-{i}")));
    }
    for i in 0..3 {
        assert_rejected(&rig.conn.expect_ack(&format!("f-{i}")).await, "forbidden");
    }
    for i in 0..5 {
        assert_ok(&rig.conn.expect_ack(&format!("b-{i}")).await);
    }
    for i in 5..7 {
        assert_rejected(
            &rig.conn.expect_ack(&format!("b-{i}")).await,
            "rate_limited",
        );
    }
    // Another source has its own bucket.
    rig.conn.send(
        &json!({"type":"command","id":"alice-1","source":"app:alice",
        "topic":CMD_TOPIC,"payload":"alice"}),
    );
    assert_ok(&rig.conn.expect_ack("alice-1").await);
    let msgs = sub.recv_until(WAIT, |m| m.payload == b"alice").await;
    let expected: Vec<(String, String)> = (0..5)
        .map(|i| pair(CMD_TOPIC, &format!("b-{i}")))
        .chain([pair(CMD_TOPIC, "alice")])
        .collect();
    assert_eq!(seen(msgs), expected);
    rig.daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_killed_then_restarted() {
    let mut rig = Rig::start(Opts::default()).await;
    let client = rig.mqtt().await;
    rig.wait_relay_up(&client).await;
    drop(client);

    rig.broker.kill();
    // "During the outage" means once the daemon knows it: a command sent
    // into the dying connection before that is in doubt (protocol note 30)
    // and its `unavailable` is remembered, which is not what this tests.
    let noticed = common::wait_until(WAIT, || async {
        rig.daemon.status().await["broker"]["connected"] == false
    })
    .await;
    assert!(noticed, "the daemon never saw the broker go");
    rig.conn.command("u-1", CMD_TOPIC, json!("during outage 1"));
    assert_rejected(&rig.conn.expect_ack("u-1").await, "unavailable");
    rig.conn.command("u-2", CMD_TOPIC, json!("during outage 2"));
    assert_rejected(&rig.conn.expect_ack("u-2").await, "unavailable");
    assert!(!rig.conn.is_closed(), "the cloud link stays up");
    assert!(!rig.daemon.is_finished(), "the daemon keeps running");

    rig.broker.restart();
    let mut sub = rig.mqtt().await;
    sub.subscribe("ampio/to/#").await;
    let client = rig.mqtt().await;
    common::rig::wait_relay_up(&mut rig.conn, &client, Duration::from_secs(30)).await;

    // State flows again.
    client
        .publish("ampio/from/after/state", r#"{"back":true}"#, 1)
        .await;
    let f = rig
        .conn
        .expect_frame(
            "state after restart",
            |v| is_state(v, "ampio/from/after/state"),
            WAIT,
        )
        .await;
    assert_eq!(f["payload"], json!({"back": true}));

    // `unavailable` is not remembered: the cloud's retry now executes.
    rig.conn.command("u-1", CMD_TOPIC, json!("during outage 1"));
    assert_ok(&rig.conn.expect_ack("u-1").await);
    rig.conn.command("marker", CMD_TOPIC, json!("marker"));
    assert_ok(&rig.conn.expect_ack("marker").await);
    let msgs = sub.recv_until(WAIT, |m| m.payload == b"marker").await;
    assert_eq!(
        seen(msgs),
        vec![
            pair(CMD_TOPIC, "during outage 1"),
            pair(CMD_TOPIC, "marker")
        ],
        "a command answered unavailable is never published later behind the cloud's back"
    );
    rig.daemon.stop().await;
}

/// `mqtt.socket`: the daemon reaches the broker through its Unix socket
/// (its config has no host or port: state could reach this broker's
/// subscribers no other way) while the devices use TCP.
/// State goes up, a command comes down, and a broker restart (which leaves
/// the dead socket file behind) is survived as over TCP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_through_the_brokers_unix_socket() {
    let mut broker = Broker::start_with_socket();
    let mut cloud = CloudServer::start().await;
    let opts = Opts {
        mqtt_socket: Some(broker.socket_path()),
        ..Opts::default()
    };
    let daemon = Daemon::start(&opts, &broker, &cloud);
    assert!(
        daemon.files.toml.contains("socket = "),
        "{}",
        daemon.files.toml
    );
    assert!(
        !daemon.files.toml.contains("port = "),
        "{}",
        daemon.files.toml
    );
    let (mut conn, _) = cloud.accept_hello(WAIT).await;
    let client = MqttClient::connect(broker.port()).await;
    common::rig::wait_relay_up(&mut conn, &client, LONG_WAIT).await;
    client
        .publish("ampio/from/sock/state", r#"{"on":true}"#, 1)
        .await;
    let f = conn
        .expect_frame(
            "state through the socket",
            |v| is_state(v, "ampio/from/sock/state"),
            WAIT,
        )
        .await;
    assert_eq!(f["payload"], json!({"on": true}));
    drop(client);

    broker.kill();
    assert!(
        broker.socket_path().exists(),
        "SIGKILL leaves the socket file"
    );
    conn.command("s-1", CMD_TOPIC, json!("during outage"));
    assert_rejected(&conn.expect_ack("s-1").await, "unavailable");
    broker.restart();
    let mut sub = MqttClient::connect(broker.port()).await;
    sub.subscribe("ampio/to/#").await;
    let client = MqttClient::connect(broker.port()).await;
    common::rig::wait_relay_up(&mut conn, &client, Duration::from_secs(30)).await;
    conn.command("s-2", CMD_TOPIC, json!("after restart"));
    assert_ok(&conn.expect_ack("s-2").await);
    let msgs = sub
        .recv_until(WAIT, |m| m.payload == b"after restart")
        .await;
    assert_eq!(seen(msgs), vec![pair(CMD_TOPIC, "after restart")]);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_in_flight_when_the_broker_dies_is_not_published_later() {
    let mut rig = Rig::start(Opts::default()).await;
    let client = rig.mqtt().await;
    rig.wait_relay_up(&client).await;
    drop(client);

    // Frozen broker: the daemon writes the PUBLISH and waits for a PUBACK.
    rig.broker.pause();
    rig.conn.command("k-1", CMD_TOPIC, json!("in flight"));
    let broker = &rig.broker;
    let written = wait_until(WAIT, || async move { broker.unread_bytes() > 0 }).await;
    assert!(
        written,
        "the daemon should have written the PUBLISH to the broker"
    );
    rig.broker.kill();
    assert_rejected(&rig.conn.expect_ack("k-1").await, "unavailable");

    rig.broker.restart();
    let mut sub = rig.mqtt().await;
    sub.subscribe("ampio/to/#").await;
    let client = rig.mqtt().await;
    common::rig::wait_relay_up(&mut rig.conn, &client, Duration::from_secs(30)).await;
    rig.conn.command("marker", CMD_TOPIC, json!("marker"));
    assert_ok(&rig.conn.expect_ack("marker").await);
    let msgs = sub.recv_until(WAIT, |m| m.payload == b"marker").await;
    assert_eq!(
        seen(msgs),
        vec![pair(CMD_TOPIC, "marker")],
        "a command answered unavailable must not be replayed after the reconnect"
    );
    rig.daemon.stop().await;
}

/// A broker that stays connected but stalls (SIGSTOP) for longer than any
/// sensible reply time: the PUBLISH is already on the wire, so the outcome
/// is unknown until the broker answers or the connection is declared dead.
/// The gateway must not answer `unavailable` in the meantime (that answer
/// is not remembered, so the cloud would retry and the command would run
/// twice); once the broker resumes, the command is acked `ok` and was
/// published exactly once. Takes about 12 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_broker_command_is_answered_once_its_fate_is_known() {
    let opts = Opts {
        mqtt_keep_alive_s: 60,
        ..Opts::default()
    };
    let mut rig = Rig::start(opts).await;
    let mut sub = common::mqtt::MqttClient::connect_with_keep_alive(
        rig.broker.port(),
        Duration::from_secs(60),
    )
    .await;
    sub.subscribe("ampio/to/#").await;

    rig.broker.pause();
    rig.conn.command("t-1", CMD_TOPIC, json!("slow"));
    let early = rig
        .conn
        .try_expect_frame(|v| v["id"] == "t-1", Duration::from_secs(11))
        .await;
    rig.broker.resume();
    assert!(
        early.is_none(),
        "no ack may be given while the broker's answer is unknown, got {early:?}"
    );
    assert_ok(&rig.conn.expect_ack("t-1").await);
    rig.conn.command("marker", CMD_TOPIC, json!("marker"));
    assert_ok(&rig.conn.expect_ack("marker").await);
    let msgs = sub.recv_until(WAIT, |m| m.payload == b"marker").await;
    assert_eq!(
        seen(msgs),
        vec![pair(CMD_TOPIC, "slow"), pair(CMD_TOPIC, "marker")],
        "the stalled command is published exactly once"
    );
    rig.daemon.stop().await;
}

/// Snapshots are written ahead of queued state; a topic's values must
/// still never go backwards, whatever the timing of the `sync`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_during_a_flood_keeps_each_topic_in_order() {
    let mut rig = Rig::start(Opts::default()).await;
    let client = rig.mqtt().await;
    rig.wait_relay_up(&client).await;
    rig.conn.take_backlog(|_| true);
    let topics = ["ampio/from/fl/a", "ampio/from/fl/b"];
    // Big enough that the gateway's writes back up while the cloud pauses.
    let pad = "x".repeat(4096);
    let n = 3000;
    rig.conn.pause(Duration::from_millis(1500));
    let mut syncs = 0;
    for i in 0..n {
        client
            .publish(
                topics[i % 2],
                format!("{{\"seq\":{i},\"pad\":\"{pad}\"}}"),
                0,
            )
            .await;
        if i % 1000 == 500 {
            rig.conn
                .send(&json!({"type":"sync","id":format!("s-{syncs}")}));
            syncs += 1;
        }
    }
    let last = |t: usize| (n - 2 + t) as i64;
    let mut seen: [Vec<(i64, bool)>; 2] = [Vec::new(), Vec::new()];
    let mut acks = 0;
    while acks < syncs
        || seen
            .iter()
            .enumerate()
            .any(|(t, v)| v.last().map(|x| x.0) != Some(last(t)))
    {
        let f = rig
            .conn
            .expect_frame(
                "flood frame or sync ack",
                |v| v["type"] == "ack" || topics.iter().any(|t| is_state(v, t)),
                Duration::from_secs(30),
            )
            .await;
        if f["type"] == "ack" {
            // A `sync` sent while one is answered is refused (edge rule 20).
            if f["status"] != "rejected" || f["reason"] != "rate_limited" {
                assert_ok(&f);
            }
            acks += 1;
            continue;
        }
        let t = usize::from(f["topic"] == topics[1]);
        let seq = f["payload"]["seq"].as_i64().expect("seq");
        seen[t].push((seq, f["snapshot"] == true));
    }
    for (t, values) in seen.iter().enumerate() {
        // Each live frame is newer than anything before it; a snapshot may
        // repeat the value last shown (a later `sync`), never an older one.
        let backwards: Vec<_> = values
            .windows(2)
            .filter(|w| w[1].0 < w[0].0 || (w[1].0 == w[0].0 && !w[1].1))
            .collect();
        assert!(
            backwards.is_empty(),
            "{}: values went backwards or repeated (seq, snapshot): {backwards:?}",
            topics[t]
        );
        assert!(
            values.iter().any(|v| v.1),
            "{}: no snapshot seen",
            topics[t]
        );
    }
    rig.daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_sends_snapshots_then_the_ack() {
    let mut rig = Rig::start(Opts::default()).await;
    let client = rig.mqtt().await;
    rig.wait_relay_up(&client).await;
    let binary = vec![0x00, 0x9f, 0x92, 0x96];
    client.publish("ampio/from/s/a", r#"{"v":1}"#, 1).await;
    client.publish("ampio/from/s/a", r#"{"v":2}"#, 1).await;
    client.publish("ampio/from/s/b", "text", 1).await;
    client.publish("ampio/from/s/c", binary.clone(), 1).await;
    rig.conn
        .expect_frame(
            "a v2",
            |v| is_state(v, "ampio/from/s/a") && v["payload"]["v"] == 2,
            WAIT,
        )
        .await;
    rig.conn
        .expect_frame("b", |v| is_state(v, "ampio/from/s/b"), WAIT)
        .await;
    rig.conn
        .expect_frame("c", |v| is_state(v, "ampio/from/s/c"), WAIT)
        .await;
    rig.conn.take_backlog(|_| true);

    rig.conn.send(&json!({"type":"sync","id":"s-1"}));
    let ack = rig.conn.expect_ack("s-1").await;
    assert_ok(&ack);
    // Everything still in the backlog arrived before the ack.
    let snaps = rig.conn.take_backlog(|v| v["type"] == "state");
    for s in &snaps {
        assert_eq!(s["snapshot"], true, "{s}");
        assert_eq!(s["audience"], "app", "{s}");
    }
    let find =
        |topic: &str| -> Vec<&Value> { snaps.iter().filter(|s| s["topic"] == topic).collect() };
    let a = find("ampio/from/s/a");
    assert_eq!(a.len(), 1, "one snapshot per topic: {snaps:?}");
    assert_eq!(a[0]["payload"], json!({"v":2}), "the latest value");
    let b = find("ampio/from/s/b");
    assert_eq!(b.len(), 1, "{snaps:?}");
    assert_eq!(b[0]["payload"], json!("text"));
    let c = find("ampio/from/s/c");
    assert_eq!(c.len(), 1, "{snaps:?}");
    assert_eq!(c[0]["payload_b64"], json!(b64(&binary)));
    assert_eq!(
        find(PROBE_TOPIC).len(),
        1,
        "the probe topic was seen too: {snaps:?}"
    );
    assert_eq!(snaps.len(), 4, "every topic seen, nothing else: {snaps:?}");
    rig.daemon.stop().await;
}

/// `sync` remembers at most `cloud.buffer_topics` topics, the most recently
/// updated ones: a device inventing topics cannot grow the daemon's memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_remembers_only_the_most_recent_topics_up_to_the_bound() {
    let mut rig = Rig::start(Opts {
        buffer_topics: Some(3),
        ..Opts::default()
    })
    .await;
    let client = rig.mqtt().await;
    rig.wait_relay_up(&client).await;
    for i in 1..=5 {
        client
            .publish(&format!("ampio/from/b/{i}"), format!("{{\"v\":{i}}}"), 1)
            .await;
    }
    // Topic 2 again: now more recent than 3 and 4.
    client.publish("ampio/from/b/2", r#"{"v":22}"#, 1).await;
    rig.conn
        .expect_frame(
            "b/2 again",
            |v| is_state(v, "ampio/from/b/2") && v["payload"]["v"] == 22,
            WAIT,
        )
        .await;
    rig.conn.take_backlog(|_| true);

    rig.conn.send(&json!({"type":"sync","id":"s-1"}));
    assert_ok(&rig.conn.expect_ack("s-1").await);
    let snaps = rig.conn.take_backlog(|v| v["type"] == "state");
    let got: Vec<(String, Value)> = snaps
        .iter()
        .map(|s| {
            (
                s["topic"].as_str().unwrap_or("").to_owned(),
                s["payload"].clone(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("ampio/from/b/4".to_owned(), json!({"v":4})),
            ("ampio/from/b/5".to_owned(), json!({"v":5})),
            ("ampio/from/b/2".to_owned(), json!({"v":22})),
        ],
        "the three most recently updated topics, oldest first"
    );
    rig.daemon.stop().await;
}

/// Peak resident memory of this process (the daemon runs in it), in KiB.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

/// Edge rule 20: one `sync` is answered at a time, and answering it costs
/// no copy of the sync memory. Before, each `sync` queued an encoded copy
/// of every remembered value (the issue: 100 syncs, 826 MB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syncs_are_answered_one_at_a_time_without_copying_the_memory() {
    let mut rig = Rig::start(Opts {
        buffer_bytes: Some(32 << 20),
        ..Opts::default()
    })
    .await;
    let client = rig.mqtt().await;
    rig.wait_relay_up(&client).await;
    // 6000 topics of 4 KiB: 24 MiB remembered, more than the sockets hold.
    let (topics, pad) = (6000, "x".repeat(4000));
    for i in 0..topics {
        let payload = format!("{{\"i\":{i},\"pad\":\"{pad}\"}}");
        client
            .publish(&format!("ampio/from/m/{i}"), payload, 0)
            .await;
    }
    let last = format!("ampio/from/m/{}", topics - 1);
    rig.conn
        .expect_frame("the last topic", |v| is_state(v, &last), LONG_WAIT)
        .await;
    rig.conn.take_backlog(|_| true);
    std::fs::write("/proc/self/clear_refs", "5").expect("reset the peak RSS");
    let before = peak_rss_kib();
    rig.conn.pause(Duration::from_secs(3));
    let syncs = 20;
    for i in 0..syncs {
        rig.conn.send(&json!({"type":"sync","id":format!("s-{i}")}));
    }
    let mut outcomes = Vec::new();
    for i in 0..syncs {
        let ack = rig.conn.expect_ack(&format!("s-{i}")).await;
        outcomes.push(format!("{}/{}", ack["status"], ack["reason"]));
    }
    let grown_mib = peak_rss_kib().saturating_sub(before) / 1024;
    let snaps = rig.conn.take_backlog(|v| v["snapshot"] == true).len();
    eprintln!("peak RSS grew {grown_mib} MiB answering {syncs} syncs: {outcomes:?}");
    assert_eq!(outcomes[0], "\"ok\"/null", "{outcomes:?}");
    let ok = outcomes.iter().filter(|o| *o == "\"ok\"/null").count();
    let refused = outcomes
        .iter()
        .filter(|o| *o == "\"rejected\"/\"rate_limited\"")
        .count();
    // Those sent while the cloud read nothing found the first one running.
    assert_eq!(ok + refused, syncs, "{outcomes:?}");
    assert!(refused >= syncs / 2, "{outcomes:?}");
    assert_eq!(
        snaps,
        ok * (topics + 1),
        "one frame per topic (and the probe)"
    );
    assert!(
        grown_mib < 48,
        "peak RSS grew {grown_mib} MiB during the syncs"
    );
    // Once answered, the next `sync` is taken.
    rig.conn.send(&json!({"type":"sync","id":"s-after"}));
    assert_ok(&rig.conn.expect_ack("s-after").await);
    rig.daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_stops_cleanly_in_process() {
    let mut rig = Rig::start(Opts::default()).await;
    let client = rig.mqtt().await;
    rig.wait_relay_up(&client).await;
    let Rig {
        daemon, mut conn, ..
    } = rig;
    daemon.stop().await;
    assert_eq!(conn.expect_close(WAIT).await, Some(1001), "going away");
}
