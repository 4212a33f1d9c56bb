//! The `floor-relay` path: the least a separate relay process can cost,
//! measured in the same run as the bridge and hearthlink, so that the
//! gateway CPU budget can be read against what the two-process design
//! itself costs.
//!
//! The bench starts itself again as a child process
//! (`relay_load --floor-relay BROKER_SOCKET SINK_PORT CA_FILE TOKEN_FILE`).
//! It keeps what any relay to the cloud must do and drops everything else:
//! - one thread and blocking sockets, no async runtime: it sleeps in
//!   `read` on the broker's Unix socket, so a wake-up costs one `read`
//!   and no `epoll_wait`;
//! - MQTT parsed by hand (CONNECT, SUBSCRIBE, then QoS 0 PUBLISH only),
//!   no keep-alive, no reconnect;
//! - all the publishes one `read` returned become `state` frames
//!   (hearthlink's layout, so the sink records them as it records
//!   hearthlink's), written with one flush, hence one TLS record batch and
//!   one `write`, with no wait for more;
//! - no privacy filter, no JSON check, no allow-list, no buffer, no
//!   heartbeat, no command path, no reading of the cloud side.
//!
//! It is a measuring stick, not a design: a daemon needs the cloud's read
//! side, timers and commands, so it cannot sleep in one blocking `read`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;

use tokio_tungstenite::tungstenite::{self, Message};

use crate::client;

/// The flag that turns the bench binary into the floor relay.
pub const FLAG: &str = "--floor-relay";

/// Runs the relay until the broker or the sink goes away; the arguments
/// are those after [`FLAG`].
pub fn main(args: &[String]) -> Result<(), String> {
    let [socket, sink, ca, token] = args else {
        return Err(format!(
            "usage: {FLAG} BROKER_SOCKET SINK_PORT CA_FILE TOKEN_FILE"
        ));
    };
    let sink: u16 = sink.parse().map_err(|e| format!("sink port: {e}"))?;
    let token = std::fs::read_to_string(token).map_err(|e| format!("{token}: {e}"))?;
    let ca = std::fs::read(ca).map_err(|e| format!("{ca}: {e}"))?;

    let mut ws = cloud(sink, &ca, token.trim())?;
    let mut mqtt = UnixStream::connect(socket).map_err(|e| format!("{socket}: {e}"))?;
    mqtt.write_all(&connect_packet("floor-relay"))
        .and_then(|()| mqtt.write_all(&subscribe_packet("bench/#")))
        .map_err(|e| format!("broker: {e}"))?;

    let mut buf = vec![0u8; 64 * 1024];
    let mut filled = 0;
    loop {
        if filled == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        let n = mqtt
            .read(&mut buf[filled..])
            .map_err(|e| format!("broker: {e}"))?;
        if n == 0 {
            return Err("broker closed the connection".into());
        }
        filled += n;
        let mut pos = 0;
        let mut frames = 0;
        while let Some(p) = packet(&buf[pos..filled])? {
            if p.first >> 4 == 3 {
                ws.write(Message::Text(state_frame(p.body)?))
                    .map_err(|e| format!("sink: {e}"))?;
                frames += 1;
            }
            pos += p.len;
        }
        if frames > 0 {
            ws.flush().map_err(|e| format!("sink: {e}"))?;
        }
        buf.copy_within(pos..filled, 0);
        filled -= pos;
    }
}

type Ws = tungstenite::WebSocket<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>;

/// The TLS websocket to the sink, through `hello` and `welcome`.
fn cloud(sink: u16, ca: &[u8], token: &str) -> Result<Ws, String> {
    let conn = rustls::ClientConnection::new(client::tls_config(ca)?, client::server_name()?)
        .map_err(|e| e.to_string())?;
    let tcp = TcpStream::connect(("127.0.0.1", sink)).map_err(|e| format!("connect: {e}"))?;
    tcp.set_nodelay(true).map_err(|e| format!("nodelay: {e}"))?;
    let req = client::request(sink, token)?;
    let (mut ws, _) = tungstenite::client::client(req, rustls::StreamOwned::new(conn, tcp))
        .map_err(|e| format!("websocket: {e}"))?;
    ws.send(Message::Text(
        r#"{"type":"hello","gateway_id":"floor"}"#.into(),
    ))
    .map_err(|e| format!("hello: {e}"))?;
    match ws.read() {
        Ok(Message::Text(t)) if t.contains(r#""welcome""#) => Ok(ws),
        other => Err(format!("expected welcome, got {other:?}")),
    }
}

/// One whole MQTT packet.
struct Packet<'a> {
    /// The fixed header's first byte (type and flags).
    first: u8,
    body: &'a [u8],
    /// Header and body.
    len: usize,
}

/// The whole packet at the start of `buf`, or `None` when more bytes are
/// needed.
fn packet(buf: &[u8]) -> Result<Option<Packet<'_>>, String> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let mut len = 0usize;
    for i in 0..4 {
        let Some(&b) = buf.get(1 + i) else {
            return Ok(None);
        };
        len |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            let start = 2 + i;
            return Ok(buf.get(start..start + len).map(|body| Packet {
                first,
                body,
                len: start + len,
            }));
        }
    }
    Err("broker: malformed remaining length".into())
}

/// The `state` frame of a QoS 0 PUBLISH body, payload embedded as it is.
fn state_frame(body: &[u8]) -> Result<String, String> {
    let bad = || "broker: malformed PUBLISH".to_owned();
    let tlen = usize::from(u16::from_be_bytes([
        *body.first().ok_or_else(bad)?,
        *body.get(1).ok_or_else(bad)?,
    ]));
    let topic = std::str::from_utf8(body.get(2..2 + tlen).ok_or_else(bad)?).map_err(|_| bad())?;
    let payload = std::str::from_utf8(&body[2 + tlen..]).map_err(|_| bad())?;
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    Ok(format!(
        r#"{{"type":"state","audience":"app","topic":"{topic}","payload":{payload},"ts":{ts}}}"#
    ))
}

/// MQTT 3.1.1 CONNECT: clean session, keep-alive off.
fn connect_packet(client_id: &str) -> Vec<u8> {
    let mut body = b"\x00\x04MQTT\x04\x02\x00\x00".to_vec();
    body.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    body.extend_from_slice(client_id.as_bytes());
    with_header(0x10, body)
}

/// SUBSCRIBE to one filter at QoS 0, packet id 1.
fn subscribe_packet(filter: &str) -> Vec<u8> {
    let mut body = vec![0, 1];
    body.extend_from_slice(&(filter.len() as u16).to_be_bytes());
    body.extend_from_slice(filter.as_bytes());
    body.push(0);
    with_header(0x82, body)
}

fn with_header(first: u8, body: Vec<u8>) -> Vec<u8> {
    // Bodies here are far below 128 bytes: one length byte.
    let mut p = vec![first, body.len() as u8];
    p.extend(body);
    p
}
