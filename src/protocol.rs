//! Frames of the cloud-link protocol (`docs/protocol.md`), decoded and encoded.
//!
//! Pure code, no I/O. Decoding is strict where the protocol asks for it
//! (section 8.4: duplicate member names, out-of-range numbers, lone
//! surrogates and nesting deeper than 128 are invalid) and classifies every
//! text frame into something the relay can act on: an executable frame, a
//! frame with a usable `id` that must be rejected, or an [`FrameError`] that
//! becomes an `error` frame.
//!
//! Encoding of the hot-path `state` frame is written by hand into a `String`
//! so that an app-audience payload that already is JSON is embedded as the
//! broker delivered it, without being parsed into a tree and printed again.

use std::fmt::Write as _;

use base64::Engine as _;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::links::Kind;

/// Protocol version sent in `hello`.
pub const PROTOCOL_VERSION: u32 = 1;
/// Longest usable `id`, in bytes (section 8.3).
pub const MAX_ID_BYTES: usize = 128;
/// Websocket subprotocol the gateway asks for.
pub const SUBPROTOCOL: &str = "hearthlink.v1";

/// Why a command or other frame was refused; the `reason` of an ack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    Invalid,
    Forbidden,
    Revoked,
    Expired,
    RateLimited,
    TooLarge,
    Unavailable,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Invalid => "invalid",
            Reason::Forbidden => "forbidden",
            Reason::Revoked => "revoked",
            Reason::Expired => "expired",
            Reason::RateLimited => "rate_limited",
            Reason::TooLarge => "too_large",
            Reason::Unavailable => "unavailable",
        }
    }

    /// Section 8.6: these outcomes are not remembered for idempotency.
    pub fn is_retryable(self) -> bool {
        matches!(self, Reason::RateLimited | Reason::Unavailable)
    }

    pub const ALL: [Reason; 7] = [
        Reason::Invalid,
        Reason::Forbidden,
        Reason::Revoked,
        Reason::Expired,
        Reason::RateLimited,
        Reason::TooLarge,
        Reason::Unavailable,
    ];
}

/// The outcome an ack reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Rejected { reason: Reason, message: String },
}

impl Outcome {
    pub fn rejected(reason: Reason, message: impl Into<String>) -> Self {
        Outcome::Rejected {
            reason,
            message: message.into(),
        }
    }
}

/// Who sent a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `app` or `app:<user>`; the string is the whole source (rate-limit key).
    App(String),
    /// `link:<link_id>`; the string is the link id.
    Link(String),
}

/// A decoded `command` frame. Checks that need configuration or state
/// (size, expiry, links, topic, rate) are made by the relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub id: String,
    /// The `source` member as sent: the rate-limit key (section 8.7).
    pub source_raw: String,
    pub source: Source,
    pub topic: String,
    /// Bytes to publish.
    pub payload: Vec<u8>,
    pub qos: u8,
    pub expires_at: Option<i64>,
}

/// A link definition from a `link` frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkSpec {
    pub id: String,
    pub kind: Kind,
    pub expose: Vec<String>,
    pub commands: Vec<String>,
}

/// A text frame from the cloud that can be acted on.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    Welcome {
        server_time: i64,
        heartbeat_s: Option<u64>,
    },
    Command(Command),
    Link {
        id: String,
        link: LinkSpec,
    },
    Revoke {
        id: String,
        link_id: String,
    },
    Sync {
        id: String,
    },
    /// Has a usable id but cannot be executed: answered `rejected`/`invalid`.
    Invalid {
        id: String,
        message: String,
    },
}

impl Inbound {
    /// The frame's id, when it has one.
    pub fn id(&self) -> Option<&str> {
        match self {
            Inbound::Welcome { .. } => None,
            Inbound::Command(c) => Some(&c.id),
            Inbound::Link { id, .. }
            | Inbound::Revoke { id, .. }
            | Inbound::Sync { id }
            | Inbound::Invalid { id, .. } => Some(id),
        }
    }
}

/// A frame that cannot be acked: answered with an `error` frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct FrameError {
    pub reason: Reason,
    pub message: String,
}

impl FrameError {
    pub fn invalid(message: impl Into<String>) -> Self {
        Self {
            reason: Reason::Invalid,
            message: message.into(),
        }
    }
}

/// A JSON value parsed strictly: duplicate member names are an error.
struct Strict(Value);

impl<'de> de::Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        serde_json::Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("number is not a finite f64"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(Strict(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(de::Error::custom(format_args!(
                    "duplicate member name {key:?}"
                )));
            }
            let Strict(v) = map.next_value()?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

/// Parses JSON text strictly (section 8.4).
pub fn parse_strict(text: &str) -> Result<Value, serde_json::Error> {
    serde_json::from_str::<Strict>(text).map(|s| s.0)
}

/// Decodes one text frame. `Err` means no usable id: answer with `error`.
pub fn decode(text: &str) -> Result<Inbound, FrameError> {
    let value = parse_strict(text).map_err(|e| FrameError::invalid(format!("not JSON: {e}")))?;
    let Value::Object(obj) = value else {
        return Err(FrameError::invalid("frame is not a JSON object"));
    };
    let ty = obj.get("type").and_then(Value::as_str);
    if ty == Some("welcome") {
        return decode_welcome(&obj);
    }
    let id = match obj.get("id") {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_ID_BYTES => s.clone(),
        Some(_) => {
            return Err(FrameError::invalid(
                "`id` must be a string of 1 to 128 bytes",
            ))
        }
        None => {
            return Err(FrameError::invalid(match ty {
                Some(t) => format!("frame of type {:?} has no `id`", truncate(t, 32)),
                None => "frame has no `type` and no `id`".to_owned(),
            }))
        }
    };
    let result = match ty {
        Some("command") => decode_command(&id, &obj).map(Inbound::Command),
        Some("link") => decode_link(&obj).map(|link| Inbound::Link {
            id: id.clone(),
            link,
        }),
        Some("revoke") => match obj.get("link_id") {
            Some(Value::String(l)) if valid_link_id(l) => Ok(Inbound::Revoke {
                id: id.clone(),
                link_id: l.clone(),
            }),
            _ => Err(
                "`link_id` must be a string of 1 to 128 bytes without control characters".into(),
            ),
        },
        Some("sync") => Ok(Inbound::Sync { id: id.clone() }),
        Some(other) => Err(format!("unknown frame type {:?}", truncate(other, 32))),
        None => Err("missing or non-string `type`".to_owned()),
    };
    Ok(result.unwrap_or_else(|message| Inbound::Invalid { id, message }))
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

fn decode_welcome(obj: &Map<String, Value>) -> Result<Inbound, FrameError> {
    let server_time = obj
        .get("server_time")
        .and_then(Value::as_i64)
        .ok_or_else(|| {
            FrameError::invalid("welcome: `server_time` must be an integer (unix ms)")
        })?;
    let heartbeat_s = match obj.get("heartbeat_s") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64() {
            Some(h) if (1..=3600).contains(&h) => Some(h),
            _ => {
                return Err(FrameError::invalid(
                    "welcome: `heartbeat_s` must be an integer from 1 to 3600",
                ))
            }
        },
    };
    Ok(Inbound::Welcome {
        server_time,
        heartbeat_s,
    })
}

/// A link id: 1 to 128 bytes, no control characters.
pub fn valid_link_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_ID_BYTES && !id.chars().any(char::is_control)
}

fn decode_command(id: &str, obj: &Map<String, Value>) -> Result<Command, String> {
    let source_raw = match obj.get("source") {
        Some(Value::String(s)) => s.clone(),
        _ => return Err("`source` must be a string".into()),
    };
    let source = if source_raw == "app" {
        Source::App(source_raw.clone())
    } else if let Some(user) = source_raw.strip_prefix("app:") {
        if user.is_empty() || user.len() > MAX_ID_BYTES {
            return Err("`source` app user must be 1 to 128 bytes".into());
        }
        Source::App(source_raw.clone())
    } else if let Some(link) = source_raw.strip_prefix("link:") {
        if !valid_link_id(link) {
            return Err(
                "`source` link id must be 1 to 128 bytes without control characters".into(),
            );
        }
        Source::Link(link.to_owned())
    } else {
        return Err("`source` must be \"app\", \"app:<user>\" or \"link:<link_id>\"".into());
    };
    let topic = match obj.get("topic") {
        Some(Value::String(t)) => t.clone(),
        _ => return Err("`topic` must be a string".into()),
    };
    let payload = match (obj.get("payload"), obj.get("payload_b64")) {
        (Some(_), Some(_)) => return Err("`payload` and `payload_b64` are both present".into()),
        (None, None) => return Err("`payload` or `payload_b64` is required".into()),
        (Some(Value::String(s)), None) => s.clone().into_bytes(),
        (Some(v), None) => serde_json::to_vec(v).map_err(|e| format!("`payload`: {e}"))?,
        (None, Some(Value::String(b))) => base64::engine::general_purpose::STANDARD
            .decode(b)
            .map_err(|e| format!("`payload_b64` is not valid base64: {e}"))?,
        (None, Some(_)) => return Err("`payload_b64` must be a string".into()),
    };
    let qos = match obj.get("qos") {
        None => 1,
        Some(v) => match v.as_u64() {
            Some(q @ (0 | 1)) => q as u8,
            _ => return Err("`qos` must be 0 or 1".into()),
        },
    };
    let expires_at = match obj.get("expires_at") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_i64()
                .ok_or("`expires_at` must be an integer (unix ms)")?,
        ),
    };
    Ok(Command {
        id: id.to_owned(),
        source_raw,
        source,
        topic,
        payload,
        qos,
        expires_at,
    })
}

fn decode_link(obj: &Map<String, Value>) -> Result<LinkSpec, String> {
    let Some(Value::Object(link)) = obj.get("link") else {
        return Err("`link` must be an object".into());
    };
    let id = match link.get("id") {
        Some(Value::String(s)) if valid_link_id(s) => s.clone(),
        _ => {
            return Err(
                "`link.id` must be a string of 1 to 128 bytes without control characters".into(),
            )
        }
    };
    let kind = match link.get("kind").and_then(Value::as_str) {
        Some("alexa") => Kind::Alexa,
        Some("google") => Kind::Google,
        Some("homekit") => Kind::Homekit,
        Some("other") => Kind::Other,
        _ => {
            return Err(
                "`link.kind` must be \"alexa\", \"google\", \"homekit\" or \"other\"".into(),
            )
        }
    };
    let filters = |name: &str| -> Result<Vec<String>, String> {
        match link.get(name) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|f| match f {
                    Value::String(s) => crate::topic::validate_filter(s)
                        .map(|()| s.clone())
                        .map_err(|e| {
                            format!("`link.{name}`: invalid filter {:?}: {e}", truncate(s, 64))
                        }),
                    _ => Err(format!("`link.{name}` must be a list of strings")),
                })
                .collect(),
            Some(_) => Err(format!("`link.{name}` must be a list of topic filters")),
        }
    };
    Ok(LinkSpec {
        id,
        kind,
        expose: filters("expose")?,
        commands: filters("commands")?,
    })
}

// ---------------------------------------------------------------- encoding

/// Appends `s` escaped for the inside of a JSON string literal.
fn push_escaped(out: &mut String, s: &str) {
    let bytes = s.as_bytes();
    // Most strings (topics, ids) need no escape: what comes before the
    // first byte that does is found eight bytes at a time.
    let plain = json::plain_prefix(bytes);
    out.push_str(&s[..plain]);
    let mut start = plain;
    for (i, &b) in bytes.iter().enumerate().skip(plain) {
        let esc: &str = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if esc.is_empty() {
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.push_str(esc);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
}

/// Appends `n` in decimal (no formatter machinery on the hot path).
fn push_i64(out: &mut String, n: i64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    let mut v = n.unsigned_abs();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    if n < 0 {
        out.push('-');
    }
    // ASCII digits, pushed as they are (no UTF-8 check of the buffer).
    out.extend(buf[i..].iter().map(|&d| char::from(d)));
}

/// Appends `s` as a JSON string literal.
fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    push_escaped(out, s);
    out.push('"');
}

/// How a state payload is carried in a frame.
#[derive(Debug, Clone, Copy)]
pub enum PayloadRepr<'a> {
    /// Valid JSON text, embedded as is.
    Json(&'a str),
    /// UTF-8 that is not JSON: sent as a JSON string.
    Text(&'a str),
    /// Not UTF-8: sent as `payload_b64`.
    Binary(&'a [u8]),
}

impl<'a> PayloadRepr<'a> {
    /// Classifies an MQTT payload (section 3, `payload`). JSON is what the
    /// cloud's strict parse accepts (edge rule 4), so an embedded payload
    /// never makes the frame invalid.
    pub fn classify(bytes: &'a [u8]) -> Self {
        match std::str::from_utf8(bytes) {
            Ok(text) => {
                if json::is_strict_json(text) {
                    PayloadRepr::Json(text)
                } else {
                    PayloadRepr::Text(text)
                }
            }
            Err(_) => PayloadRepr::Binary(bytes),
        }
    }
}

/// Encodes a `state` frame. `audience` is `None` for the app, else a link id.
pub fn encode_state(
    audience: Option<&str>,
    topic: &str,
    payload: PayloadRepr<'_>,
    ts: i64,
    snapshot: bool,
) -> String {
    // The envelope: 76 bytes for a link frame with a 13-digit ts, 16 more
    // with the snapshot flag; the rest is slack for escapes.
    let mut out = String::with_capacity(
        112 + audience.map_or(0, str::len) + topic.len() + payload_len(&payload),
    );
    out.push_str("{\"type\":\"state\",\"audience\":");
    match audience {
        None => out.push_str("\"app\""),
        Some(link) => {
            out.push_str("\"link:");
            push_escaped(&mut out, link);
            out.push('"');
        }
    }
    out.push_str(",\"topic\":");
    push_json_str(&mut out, topic);
    match payload {
        PayloadRepr::Json(raw) => {
            out.push_str(",\"payload\":");
            out.push_str(raw.trim());
        }
        PayloadRepr::Text(text) => {
            out.push_str(",\"payload\":");
            push_json_str(&mut out, text);
        }
        PayloadRepr::Binary(bytes) => {
            out.push_str(",\"payload_b64\":\"");
            base64::engine::general_purpose::STANDARD.encode_string(bytes, &mut out);
            out.push('"');
        }
    }
    out.push_str(",\"ts\":");
    push_i64(&mut out, ts);
    if snapshot {
        out.push_str(",\"snapshot\":true");
    }
    out.push('}');
    out
}

fn payload_len(p: &PayloadRepr<'_>) -> usize {
    match p {
        PayloadRepr::Json(s) | PayloadRepr::Text(s) => s.len(),
        PayloadRepr::Binary(b) => b.len() * 4 / 3 + 4,
    }
}

/// Encodes an `ack` frame.
pub fn encode_ack(id: &str, outcome: &Outcome) -> String {
    #[derive(Serialize)]
    struct Ack<'a> {
        #[serde(rename = "type")]
        ty: &'static str,
        id: &'a str,
        status: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<Reason>,
        #[serde(skip_serializing_if = "Option::is_none")]
        message: Option<&'a str>,
    }
    let ack = match outcome {
        Outcome::Ok => Ack {
            ty: "ack",
            id,
            status: "ok",
            reason: None,
            message: None,
        },
        Outcome::Rejected { reason, message } => Ack {
            ty: "ack",
            id,
            status: "rejected",
            reason: Some(*reason),
            message: Some(message),
        },
    };
    serde_json::to_string(&ack).unwrap_or_default()
}

/// Encodes an `error` frame.
pub fn encode_error(err: &FrameError) -> String {
    serde_json::json!({"type": "error", "reason": err.reason, "message": err.message}).to_string()
}

/// Encodes the `hello` frame.
pub fn encode_hello(gateway_id: &str) -> String {
    serde_json::json!({
        "type": "hello",
        "gateway_id": gateway_id,
        "version": env!("CARGO_PKG_VERSION"),
        "protocol": PROTOCOL_VERSION,
    })
    .to_string()
}

/// Encodes a `revoked` frame (a revocation made on the gateway itself).
pub fn encode_revoked(link_id: &str, ts: i64) -> String {
    serde_json::json!({"type": "revoked", "link_id": link_id, "origin": "local", "ts": ts})
        .to_string()
}

pub mod json;
#[cfg(test)]
mod tests;
