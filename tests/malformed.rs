//! End to end, malformed cloud frames: each gets the answer the protocol
//! asks for (`error`, or `ack` rejected when it has a usable id), nothing
//! reaches the broker, the connection stays open, and a normal command
//! still works afterwards.

mod common;

use std::time::Duration;

use common::cloud::{Behavior, Welcome};
use common::daemon::Opts;
use common::mqtt::without_status;
use common::rig::Rig;
use common::{now_ms, WAIT};
use serde_json::{json, Value};

const CMD_TOPIC: &str = "ampio/to/ab12/o/1/cmd";
const MAX_FRAME: usize = 32 * 1024;

enum Frame {
    Text(String),
    Binary(Vec<u8>),
}

#[derive(Debug, Clone, Copy)]
enum Expect {
    /// `{"type":"error","reason":..}`
    Error(&'static str),
    /// `{"type":"ack","id":..,"status":"rejected","reason":..}`
    Ack(&'static str, &'static str),
    /// JSON the strict parser refuses (protocol 8.4) but that carries an
    /// id: the protocol says `invalid` without settling whether it is an
    /// `error` or an `ack` for that id; either is accepted, nothing else.
    Invalid(&'static str),
}

impl Expect {
    fn may_be_error(self) -> bool {
        matches!(self, Expect::Error(_) | Expect::Invalid(_))
    }

    fn check(self, name: &str, v: &Value) {
        let is_error =
            |reason: &str| v["type"] == "error" && v["reason"] == reason && v.get("id").is_none();
        let is_ack = |id: &str, reason: &str| {
            v["type"] == "ack"
                && v["id"] == id
                && v["status"] == "rejected"
                && v["reason"] == reason
        };
        let ok = match self {
            Expect::Error(reason) => is_error(reason),
            Expect::Ack(id, reason) => is_ack(id, reason),
            Expect::Invalid(id) => is_error("invalid") || is_ack(id, "invalid"),
        };
        assert!(ok, "case {name:?}: expected {self:?}, got {v}");
        assert!(
            v["message"].is_string(),
            "case {name:?}: a message says why: {v}"
        );
    }
}

fn text(s: impl Into<String>) -> Frame {
    Frame::Text(s.into())
}

fn cmd(id: &str, extra: Value) -> Frame {
    let mut v = json!({"type":"command","id":id,"source":"app","topic":CMD_TOPIC,"payload":"1"});
    for (k, x) in extra.as_object().expect("object") {
        if x.is_null() {
            v.as_object_mut().expect("object").remove(k);
        } else {
            v[k] = x.clone();
        }
    }
    Frame::Text(v.to_string())
}

fn cases() -> Vec<(&'static str, Frame, Expect)> {
    use Expect::*;
    let id128 = "i".repeat(128);
    let id128: &'static str = Box::leak(id128.into_boxed_str());
    let deep_payload = format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000));
    vec![
        ("not JSON", text("hello there"), Error("invalid")),
        ("empty text", text(""), Error("invalid")),
        ("whitespace", text("   \n"), Error("invalid")),
        (
            "truncated",
            text(r#"{"type":"command","id":"m-trunc""#),
            Error("invalid"),
        ),
        (
            "trailing garbage",
            text(r#"{"type":"sync","id":"m-trail"} x"#),
            Error("invalid"),
        ),
        ("array", text("[1,2,3]"), Error("invalid")),
        (
            "array holding a frame",
            text(r#"[{"type":"sync","id":"m-arr"}]"#),
            Error("invalid"),
        ),
        ("string", text(r#""sync""#), Error("invalid")),
        ("number", text("42"), Error("invalid")),
        ("null", text("null"), Error("invalid")),
        ("true", text("true"), Error("invalid")),
        ("empty object", text("{}"), Error("invalid")),
        (
            "command without id",
            text(r#"{"type":"command","source":"app","topic":"ampio/to/x","payload":"1"}"#),
            Error("invalid"),
        ),
        (
            "unknown type, no id",
            text(r#"{"type":"bogus"}"#),
            Error("invalid"),
        ),
        (
            "id is a number",
            text(r#"{"type":"sync","id":17}"#),
            Error("invalid"),
        ),
        (
            "id is null",
            text(r#"{"type":"sync","id":null}"#),
            Error("invalid"),
        ),
        (
            "id is empty",
            text(r#"{"type":"sync","id":""}"#),
            Error("invalid"),
        ),
        (
            "id of 129 bytes",
            cmd(&"i".repeat(129), json!({})),
            Error("invalid"),
        ),
        (
            "missing type",
            text(r#"{"id":"m-notype"}"#),
            Ack("m-notype", "invalid"),
        ),
        (
            "unknown type",
            text(r#"{"type":"bogus","id":"m-unknown"}"#),
            Ack("m-unknown", "invalid"),
        ),
        (
            "type is a number",
            text(r#"{"type":5,"id":"m-typenum"}"#),
            Ack("m-typenum", "invalid"),
        ),
        (
            "id of 128 bytes, no topic",
            cmd(id128, json!({"topic": null})),
            Ack(id128, "invalid"),
        ),
        (
            "no source",
            cmd("m-nosrc", json!({"source": null})),
            Ack("m-nosrc", "invalid"),
        ),
        (
            "bad source",
            cmd("m-badsrc", json!({"source": "robot"})),
            Ack("m-badsrc", "invalid"),
        ),
        (
            "topic is a number",
            cmd("m-topicnum", json!({"topic": 5})),
            Ack("m-topicnum", "invalid"),
        ),
        (
            "NUL in topic",
            cmd("m-nul", json!({"topic": "ampio/to/a\u{0}b/cmd"})),
            Ack("m-nul", "forbidden"),
        ),
        (
            "+ in topic",
            cmd("m-plus", json!({"topic": "ampio/to/+/o/1/cmd"})),
            Ack("m-plus", "forbidden"),
        ),
        (
            "# in topic",
            cmd("m-hash", json!({"topic": "ampio/to/ab12/#"})),
            Ack("m-hash", "forbidden"),
        ),
        (
            "empty topic",
            cmd("m-emptytopic", json!({"topic": ""})),
            Ack("m-emptytopic", "forbidden"),
        ),
        (
            "bad base64",
            cmd(
                "m-b64",
                json!({"payload": null, "payload_b64": "***not base64***"}),
            ),
            Ack("m-b64", "invalid"),
        ),
        (
            "payload and payload_b64",
            cmd("m-both", json!({"payload_b64": "AQI="})),
            Ack("m-both", "invalid"),
        ),
        (
            "neither payload",
            cmd("m-neither", json!({"payload": null})),
            Ack("m-neither", "invalid"),
        ),
        (
            "qos 2",
            cmd("m-qos2", json!({"qos": 2})),
            Ack("m-qos2", "invalid"),
        ),
        (
            "qos as a string",
            cmd("m-qosstr", json!({"qos": "1"})),
            Ack("m-qosstr", "invalid"),
        ),
        (
            "expires_at a string",
            cmd("m-expstr", json!({"expires_at": "soon"})),
            Ack("m-expstr", "invalid"),
        ),
        (
            "expires_at beyond i64",
            cmd("m-expbig", json!({"expires_at": 1e20})),
            Ack("m-expbig", "invalid"),
        ),
        (
            "link with a bad filter",
            text(
                r#"{"type":"link","id":"m-link","link":{"id":"l-1","kind":"alexa","expose":["a/#/b"]}}"#,
            ),
            Ack("m-link", "invalid"),
        ),
        (
            "link with a bad kind",
            text(r#"{"type":"link","id":"m-kind","link":{"id":"l-2","kind":"toaster"}}"#),
            Ack("m-kind", "invalid"),
        ),
        (
            "revoke without link_id",
            text(r#"{"type":"revoke","id":"m-revoke"}"#),
            Ack("m-revoke", "invalid"),
        ),
        (
            "10k-deep nesting",
            text(format!(
                r#"{{"type":"command","id":"m-deep","source":"app","topic":"{CMD_TOPIC}","payload":{deep_payload}}}"#
            )),
            Invalid("m-deep"),
        ),
        (
            "10k-deep array frame",
            text(deep_payload.clone()),
            Error("invalid"),
        ),
        (
            "duplicate keys",
            text(format!(
                r#"{{"type":"command","id":"m-dup","source":"app","topic":"{CMD_TOPIC}","topic":"ampio/to/other","payload":"1"}}"#
            )),
            Invalid("m-dup"),
        ),
        (
            "duplicate id",
            text(format!(
                r#"{{"type":"command","id":"m-dupid","id":"m-dupid","source":"app","topic":"{CMD_TOPIC}","payload":"1"}}"#
            )),
            Invalid("m-dupid"),
        ),
        (
            "lone surrogate",
            text(format!(
                r#"{{"type":"command","id":"m-surr","source":"app","topic":"{CMD_TOPIC}","payload":"\ud800"}}"#
            )),
            Invalid("m-surr"),
        ),
        (
            "number 1e400",
            text(format!(
                r#"{{"type":"command","id":"m-1e400","source":"app","topic":"{CMD_TOPIC}","payload":"1","expires_at":1e400}}"#
            )),
            Invalid("m-1e400"),
        ),
        (
            "welcome without server_time",
            text(r#"{"type":"welcome","server_time":"noon"}"#),
            Error("invalid"),
        ),
        (
            "oversized frame",
            cmd("m-huge", json!({"payload": "x".repeat(MAX_FRAME + 100)})),
            Error("too_large"),
        ),
        (
            "binary frame",
            Frame::Binary(br#"{"type":"sync","id":"m-bin"}"#.to_vec()),
            Error("invalid"),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_each_get_the_right_answer() {
    let opts = Opts {
        max_frame_bytes: Some(MAX_FRAME as u64),
        ..Opts::default()
    };
    let mut rig = Rig::start(opts).await;
    let mut sub = rig.mqtt().await;
    sub.subscribe("#").await;
    let cases = cases();
    assert!(cases.len() >= 25);

    // Error frames are limited to 10 per second per connection (protocol
    // 8.12): pause after every 8 that may be errors so none is dropped.
    let mut errors_in_window = 0;
    for (name, frame, expect) in cases {
        if expect.may_be_error() {
            if errors_in_window == 8 {
                tokio::time::sleep(Duration::from_millis(1100)).await;
                errors_in_window = 0;
            }
            errors_in_window += 1;
        }
        match frame {
            Frame::Text(t) => rig.conn.send_text(t),
            Frame::Binary(b) => rig.conn.send_binary(b),
        }
        let answer = rig
            .conn
            .next_non_state(WAIT)
            .await
            .unwrap_or_else(|| panic!("case {name:?}: no answer within {WAIT:?}"));
        expect.check(name, &answer);
        assert!(
            !rig.conn.is_closed(),
            "case {name:?}: the connection must stay open"
        );
    }

    // The connection is still the first one and works.
    rig.conn.command("after", CMD_TOPIC, json!("after"));
    let ack = rig.conn.expect_ack("after").await;
    assert_eq!(ack["status"], "ok", "{ack}");
    let msgs = without_status(sub.recv_until(WAIT, |m| m.payload == b"after").await);
    let got: Vec<(String, String)> = msgs.iter().map(|m| (m.topic.clone(), m.text())).collect();
    assert_eq!(
        got,
        vec![(CMD_TOPIC.to_owned(), "after".to_owned())],
        "no malformed frame was published"
    );
    let extra = rig
        .conn
        .collect(|v| v["type"] != "state", Duration::from_millis(300))
        .await;
    assert!(extra.is_empty(), "one answer per frame: {extra:?}");
    assert!(!rig.conn.is_closed());
    assert!(
        rig.cloud.try_accept(Duration::ZERO).await.is_none(),
        "no reconnect"
    );
    assert!(
        !rig.daemon.is_finished(),
        "a bad frame never stops the daemon"
    );
    rig.daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_before_welcome_are_refused_and_not_executed() {
    let mut rig = Rig::start_with(Opts::default(), |cloud| {
        cloud.set_behavior(Behavior {
            welcome: Welcome::Manual,
            ..Behavior::default()
        })
    })
    .await;
    let mut sub = rig.mqtt().await;
    sub.subscribe("ampio/to/#").await;

    rig.conn.command("pw-1", CMD_TOPIC, json!("early"));
    rig.conn.send(&json!({"type":"sync","id":"pw-2"}));
    rig.conn.send_text("not json");
    for _ in 0..3 {
        let v = rig
            .conn
            .next_non_state(WAIT)
            .await
            .expect("an answer to a frame before welcome");
        assert_eq!(v["type"], "error", "before welcome: {v}");
        assert_eq!(v["reason"], "invalid", "{v}");
    }

    rig.conn
        .send(&json!({"type":"welcome","server_time":now_ms()}));
    // The same id again: it was never executed, so it runs now.
    rig.conn.command("pw-1", CMD_TOPIC, json!("early"));
    let ack = rig.conn.expect_ack("pw-1").await;
    assert_eq!(ack["status"], "ok", "{ack}");
    rig.conn.command("pw-3", CMD_TOPIC, json!("marker"));
    assert_eq!(rig.conn.expect_ack("pw-3").await["status"], "ok");
    let msgs = sub.recv_until(WAIT, |m| m.payload == b"marker").await;
    let got: Vec<String> = msgs.iter().map(|m| m.text()).collect();
    assert_eq!(
        got,
        vec!["early", "marker"],
        "the early command ran once, after welcome"
    );
    rig.daemon.stop().await;
}

/// Edge rule 25: a frame over the transport's 16 MiB is answered with a
/// close frame 1009 (before, the gateway dropped the TCP connection and the
/// cloud saw 1006), then the gateway reconnects as after any close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_over_16_mib_is_answered_with_close_1009_then_a_new_session() {
    let mut rig = Rig::start(Opts::default()).await;
    let client = rig.mqtt().await;
    rig.wait_relay_up(&client).await;
    rig.conn.send_text("x".repeat((16 << 20) + 1024));
    assert_eq!(
        rig.conn.expect_close(common::LONG_WAIT).await,
        Some(1009),
        "close code"
    );
    let (mut conn, hello) = rig.cloud.accept_hello(common::LONG_WAIT).await;
    assert_eq!(hello["type"], "hello");
    common::rig::wait_relay_up(&mut conn, &client, common::LONG_WAIT).await;
    rig.daemon.stop().await;
}
