//! `hearthlink check-config --connect`: one connection to the broker and
//! one session with the cloud, each step reported for a person, so an
//! installer can check a configuration end to end before starting the
//! service (issue 16, item 21).
//!
//! The broker is reached with the daemon's own options under the client
//! id `<client_id>-check` (the daemon's id would cut a running daemon's
//! session) and no last will; the cloud with the daemon's own dialer,
//! then `hello`, and the first frame must be `welcome`. Both connections
//! are closed cleanly.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rumqttc::{Event, Packet};
use tokio_tungstenite::tungstenite::Message;

use crate::config::Config;
use crate::protocol::{self, Inbound};

/// How long each step may take.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to the broker once: `Ok` on CONNACK.
pub async fn broker(cfg: &Config) -> Result<(), String> {
    let mut mqtt = cfg.mqtt.clone();
    mqtt.client_id = format!("{}-check", mqtt.client_id);
    let (client, mut eventloop) = rumqttc::AsyncClient::new(crate::mqtt::options(&mqtt, None), 10);
    let connack = async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(crate::broker_log::describe(&e)),
            }
        }
    };
    let r = tokio::time::timeout(STEP_TIMEOUT, connack)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {} s", STEP_TIMEOUT.as_secs())));
    if r.is_ok() {
        let _ = client.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_secs(1), eventloop.poll()).await;
    }
    r
}

/// Opens a cloud session: upgrade, `hello`, `welcome`. `Ok`: the clock
/// offset the welcome gave, in ms.
pub async fn cloud(cfg: &Config) -> Result<i64, String> {
    let session = async {
        let platform = crate::cloud::tls::platform_roots();
        let mut ws = crate::cloud::connect(&cfg.cloud, &platform)
            .await
            .map_err(|e| e.to_string())?;
        ws.send(Message::Text(protocol::encode_hello(&cfg.gateway_id)))
            .await
            .map_err(|e| format!("sending hello: {e}"))?;
        let offset = loop {
            match ws.next().await {
                Some(Ok(Message::Text(text))) => match protocol::decode(&text) {
                    Ok(Inbound::Welcome { server_time, .. }) => {
                        break server_time - crate::clock::local_ms();
                    }
                    _ => return Err("the cloud's first frame was not a welcome".to_owned()),
                },
                Some(Ok(Message::Close(close))) => {
                    return Err(match close {
                        Some(c) => format!("the cloud closed the session: {} {}", c.code, c.reason),
                        None => "the cloud closed the session".to_owned(),
                    })
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(format!("reading the welcome: {e}")),
                None => return Err("the cloud closed the connection before a welcome".to_owned()),
            }
        };
        let _ = ws.close(None).await;
        Ok(offset)
    };
    tokio::time::timeout(STEP_TIMEOUT, session)
        .await
        .unwrap_or_else(|_| Err(format!("no welcome within {} s", STEP_TIMEOUT.as_secs())))
}

/// Runs both steps, printing each; true when both worked.
pub async fn run(cfg: &Config) -> bool {
    let broker_ok = match broker(cfg).await {
        Ok(()) => {
            println!("broker {}: connected", cfg.mqtt.broker);
            true
        }
        Err(e) => {
            println!("broker {}: FAILED: {e}", cfg.mqtt.broker);
            false
        }
    };
    let cloud_ok = match cloud(cfg).await {
        Ok(offset) => {
            println!(
                "cloud {}: session opened (welcome, clock offset {offset} ms)",
                cfg.cloud.url
            );
            true
        }
        Err(e) => {
            println!("cloud {}: FAILED: {e}", cfg.cloud.url);
            false
        }
    };
    broker_ok && cloud_ok
}
