use super::*;

fn invalid_id(text: &str) -> Option<String> {
    match decode(text) {
        Ok(Inbound::Invalid { id, message }) => Some(format!("{id}: {message}")),
        _ => None,
    }
}

#[test]
fn decodes_a_command() {
    let f = decode(
        r#"{"type":"command","id":"c-17","source":"app","topic":"ampio/to/ab12/o/1/cmd","payload":"1","qos":1,"expires_at":1764028805000}"#,
    )
    .expect("decodes");
    let Inbound::Command(c) = f else {
        panic!("not a command: {f:?}")
    };
    assert_eq!(c.payload, b"1");
    assert_eq!(c.qos, 1);
    assert_eq!(c.expires_at, Some(1764028805000));
    assert_eq!(c.source, Source::App("app".into()));
}

#[test]
fn payload_forms() {
    let cmd = |p: &str| match decode(&format!(
        r#"{{"type":"command","id":"c","source":"app:bob","topic":"t",{p}}}"#
    )) {
        Ok(Inbound::Command(c)) => Ok(c.payload),
        other => Err(format!("{other:?}")),
    };
    assert_eq!(
        cmd(r#""payload":{"b":1,"a":[true,null]}"#),
        Ok(br#"{"b":1,"a":[true,null]}"#.to_vec())
    );
    assert_eq!(cmd(r#""payload":null"#), Ok(b"null".to_vec()));
    assert_eq!(cmd(r#""payload_b64":"AAH/""#), Ok(vec![0, 1, 255]));
    assert!(cmd(r#""payload_b64":"***""#).is_err());
    assert!(cmd(r#""payload":"1","payload_b64":"AA==""#).is_err());
    assert!(cmd(r#""qos":1"#).is_err());
}

#[test]
fn strict_json_rules() {
    assert!(invalid_id(
        r#"{"type":"command","id":"d","id2":1,"source":"app","topic":"t","payload":1,"payload":2}"#
    )
    .is_none());
    assert!(
        decode(r#"{"type":"sync","id":"a","id":"b"}"#).is_err(),
        "duplicate keys"
    );
    assert!(
        decode(r#"{"type":"sync","id":"\ud800"}"#).is_err(),
        "lone surrogate"
    );
    assert!(
        decode(r#"{"type":"sync","id":"a","x":1e400}"#).is_err(),
        "number out of range"
    );
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    assert!(
        decode(&format!(r#"{{"type":"sync","id":"a","x":{deep}}}"#)).is_err(),
        "too deep"
    );
    let ok_depth = format!("{}{}", "[".repeat(120), "]".repeat(120));
    assert!(decode(&format!(r#"{{"type":"sync","id":"a","x":{ok_depth}}}"#)).is_ok());
}

#[test]
fn usable_ids() {
    assert!(decode(r#"{"type":"sync","id":""}"#).is_err());
    assert!(decode(r#"{"type":"sync","id":5}"#).is_err());
    let long = "x".repeat(129);
    assert!(decode(&format!(r#"{{"type":"sync","id":"{long}"}}"#)).is_err());
    let max = "x".repeat(128);
    assert!(matches!(
        decode(&format!(r#"{{"type":"sync","id":"{max}"}}"#)),
        Ok(Inbound::Sync { .. })
    ));
    // an id with an unknown or missing type is acked rejected/invalid
    assert!(invalid_id(r#"{"type":"dance","id":"q"}"#).is_some());
    assert!(invalid_id(r#"{"id":"q"}"#).is_some());
    assert!(decode("[1,2]").is_err());
    assert!(decode("not json").is_err());
}

#[test]
fn sources_and_links() {
    assert!(
        invalid_id(r#"{"type":"command","id":"c","source":"robot","topic":"t","payload":1}"#)
            .is_some()
    );
    assert!(
        invalid_id(r#"{"type":"command","id":"c","source":"link:","topic":"t","payload":1}"#)
            .is_some()
    );
    let f = decode(
        r#"{"type":"link","id":"l-1","link":{"id":"alexa-7f3","kind":"alexa","expose":["ampio/from/+/state/#"]}}"#,
    );
    let Ok(Inbound::Link { link, .. }) = f else {
        panic!("{f:?}")
    };
    assert_eq!(link.kind, Kind::Alexa);
    assert!(link.commands.is_empty());
    assert!(invalid_id(
        r#"{"type":"link","id":"l","link":{"id":"a","kind":"alexa","expose":["a/#/b"]}}"#
    )
    .is_some());
    assert!(invalid_id(r#"{"type":"link","id":"l","link":{"id":"a","kind":"siri"}}"#).is_some());
    assert!(invalid_id(r#"{"type":"revoke","id":"r"}"#).is_some());
}

#[test]
fn welcome() {
    assert_eq!(
        decode(r#"{"type":"welcome","server_time":1764028800000,"heartbeat_s":5}"#),
        Ok(Inbound::Welcome {
            server_time: 1764028800000,
            heartbeat_s: Some(5)
        })
    );
    assert!(decode(r#"{"type":"welcome"}"#).is_err());
}

#[test]
fn encodes_state_frames() {
    let f = encode_state(
        None,
        "a/\"b\"",
        PayloadRepr::classify(br#" {"value":1} "#),
        5,
        false,
    );
    let v: serde_json::Value = serde_json::from_str(&f).expect("valid JSON");
    assert_eq!(v["payload"]["value"], 1);
    assert_eq!(v["topic"], "a/\"b\"");
    assert_eq!(v["audience"], "app");
    let f = encode_state(Some("al\"x"), "t", PayloadRepr::classify(b"on\n"), 5, true);
    let v: serde_json::Value = serde_json::from_str(&f).expect("valid JSON");
    assert_eq!(v["payload"], "on\n");
    assert_eq!(v["audience"], "link:al\"x");
    assert_eq!(v["snapshot"], true);
    let f = encode_state(None, "t", PayloadRepr::classify(&[0xff, 0]), 5, false);
    let v: serde_json::Value = serde_json::from_str(&f).expect("valid JSON");
    assert_eq!(v["payload_b64"], "/wA=");
    assert!(v.get("payload").is_none());
    let ctl = encode_state(None, "t", PayloadRepr::classify(b"\x01\x1f"), 1, false);
    assert!(serde_json::from_str::<serde_json::Value>(&ctl).is_ok());
}

#[test]
fn state_frames_carry_any_ts() {
    for ts in [0, 7, -7, 1_764_028_800_123, i64::MAX, i64::MIN] {
        let f = encode_state(Some("l"), "t", PayloadRepr::classify(b"1"), ts, false);
        let v: serde_json::Value = serde_json::from_str(&f).expect("valid JSON");
        assert_eq!(v["ts"].as_i64(), Some(ts), "{f}");
    }
}

#[test]
fn encodes_acks() {
    assert_eq!(
        encode_ack("c-17", &Outcome::Ok),
        r#"{"type":"ack","id":"c-17","status":"ok"}"#
    );
    assert_eq!(
        encode_ack(
            "c-18",
            &Outcome::rejected(Reason::Forbidden, "topic not allowed")
        ),
        r#"{"type":"ack","id":"c-18","status":"rejected","reason":"forbidden","message":"topic not allowed"}"#
    );
}
