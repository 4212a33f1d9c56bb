//! The `naive-relay` path: the reference point of the issue's CPU budget,
//! "a naive relay of about 100 lines (rumqttc into tokio-tungstenite, no
//! checks)", rebuilt here so it is measured in the same run as the rest.
//!
//! The bench starts itself again as a child process
//! (`relay_load --naive-relay BROKER_PORT SINK_PORT CA_FILE TOKEN_FILE`),
//! so the relay's CPU and memory are its own, as hearthlink's are. It is
//! what one writes first: the default (multi-thread) tokio runtime, one
//! loop that polls rumqttc and sends each publish as a `state` frame with
//! `send` (a write and a flush per message), the payload embedded as it
//! is: no privacy filter, no JSON check, no allow-list, no buffer, no
//! reconnect, no heartbeat. Its frames have the daemon's layout, so the
//! sink records them as it records hearthlink's.

use futures_util::{SinkExt, StreamExt};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use crate::client;

/// The flag that turns the bench binary into the naive relay.
pub const FLAG: &str = "--naive-relay";

/// Runs the relay until the broker or the sink goes away; the arguments
/// are those after [`FLAG`].
pub fn main(args: &[String]) -> Result<(), String> {
    let [broker, sink, ca, token] = args else {
        return Err(format!(
            "usage: {FLAG} BROKER_PORT SINK_PORT CA_FILE TOKEN_FILE"
        ));
    };
    let broker: u16 = broker.parse().map_err(|e| format!("broker port: {e}"))?;
    let sink: u16 = sink.parse().map_err(|e| format!("sink port: {e}"))?;
    let token = std::fs::read_to_string(token).map_err(|e| format!("{token}: {e}"))?;
    let ca = std::fs::read(ca).map_err(|e| format!("{ca}: {e}"))?;
    tokio::runtime::Runtime::new()
        .map_err(|e| format!("runtime: {e}"))?
        .block_on(relay(broker, sink, &ca, token.trim()))
}

async fn relay(broker: u16, sink: u16, ca: &[u8], token: &str) -> Result<(), String> {
    let tcp = TcpStream::connect(("127.0.0.1", sink))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    tcp.set_nodelay(true).map_err(|e| format!("nodelay: {e}"))?;
    let tls = tokio_rustls::TlsConnector::from(client::tls_config(ca)?)
        .connect(client::server_name()?, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let req = client::request(sink, token)?;
    let (mut ws, _) = tokio_tungstenite::client_async(req, tls)
        .await
        .map_err(|e| format!("websocket: {e}"))?;
    ws.send(Message::Text(
        r#"{"type":"hello","gateway_id":"naive"}"#.into(),
    ))
    .await
    .map_err(|e| format!("hello: {e}"))?;
    match ws.next().await {
        Some(Ok(Message::Text(t))) if t.contains(r#""welcome""#) => {}
        other => return Err(format!("expected welcome, got {other:?}")),
    }

    let (client, mut eventloop) =
        AsyncClient::new(MqttOptions::new("naive-relay", "127.0.0.1", broker), 100);
    client
        .subscribe("bench/#", QoS::AtMostOnce)
        .await
        .map_err(|e| format!("subscribe: {e}"))?;
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let payload = String::from_utf8_lossy(&p.payload);
                let ts = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis());
                let frame = format!(
                    r#"{{"type":"state","audience":"app","topic":"{}","payload":{payload},"ts":{ts}}}"#,
                    p.topic
                );
                ws.send(Message::Text(frame))
                    .await
                    .map_err(|e| format!("send: {e}"))?;
            }
            Ok(_) => {}
            Err(e) => return Err(format!("broker: {e}")),
        }
    }
}
