//! A rumqttc test client: publishes device state, watches topics.
//!
//! One task polls the event loop; received publishes go to an unbounded
//! channel (a test reads them when it wants), acknowledgements to another.
//! The task ends at the first connection error: after a broker restart the
//! test makes a new client.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;

/// A message seen on the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msg {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
}

impl Msg {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
}

enum Ack {
    Connected,
    Subscribed,
    Failed(String),
}

pub struct MqttClient {
    client: AsyncClient,
    msgs: mpsc::UnboundedReceiver<Msg>,
    acks: mpsc::UnboundedReceiver<Ack>,
    task: tokio::task::JoinHandle<()>,
}

impl MqttClient {
    /// Connects to the broker on 127.0.0.1:`port` and waits for CONNACK.
    pub async fn connect(port: u16) -> MqttClient {
        Self::connect_with_keep_alive(port, Duration::from_secs(5)).await
    }

    /// Like [`MqttClient::connect`]; a long keep-alive survives a broker
    /// frozen for a while.
    pub async fn connect_with_keep_alive(port: u16, keep_alive: Duration) -> MqttClient {
        let mut opts = MqttOptions::new(super::unique("test-client"), "127.0.0.1", port);
        opts.set_keep_alive(keep_alive)
            .set_clean_session(true)
            .set_max_packet_size(16 * 1024 * 1024, 16 * 1024 * 1024);
        let (client, mut eventloop) = AsyncClient::new(opts, 2048);
        let (msg_tx, msgs) = mpsc::unbounded_channel();
        let (ack_tx, acks) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = msg_tx.send(Msg {
                            topic: p.topic,
                            payload: p.payload.to_vec(),
                            retain: p.retain,
                        });
                    }
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = ack_tx.send(Ack::Connected);
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = ack_tx.send(Ack::Subscribed);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let _ = ack_tx.send(Ack::Failed(e.to_string()));
                        return;
                    }
                }
            }
        });
        let mut c = MqttClient {
            client,
            msgs,
            acks,
            task,
        };
        c.wait_ack("CONNACK", |a| matches!(a, Ack::Connected)).await;
        c
    }

    async fn wait_ack(&mut self, what: &str, want: impl Fn(&Ack) -> bool) {
        let deadline = tokio::time::Instant::now() + super::WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.acks.recv()).await {
                Ok(Some(Ack::Failed(e))) => panic!("test MQTT client: waiting for {what}: {e}"),
                Ok(Some(a)) if want(&a) => return,
                Ok(Some(_)) => {}
                Ok(None) => panic!("test MQTT client: event loop ended waiting for {what}"),
                Err(_) => panic!("test MQTT client: no {what} within {:?}", super::WAIT),
            }
        }
    }

    /// Subscribes (QoS 1) and waits for SUBACK.
    pub async fn subscribe(&mut self, filter: &str) {
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .expect("queue SUBSCRIBE");
        self.wait_ack("SUBACK", |a| matches!(a, Ack::Subscribed))
            .await;
    }

    /// Publishes (not retained) at QoS 0 or 1.
    pub async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>, qos: u8) {
        let qos = if qos == 0 {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        };
        self.client
            .publish(topic, qos, false, payload.into())
            .await
            .expect("queue PUBLISH");
    }

    /// The next message, or `None` after `timeout`.
    pub async fn recv(&mut self, timeout: Duration) -> Option<Msg> {
        tokio::time::timeout(timeout, self.msgs.recv())
            .await
            .ok()
            .flatten()
    }

    /// Every message up to and including the first one matching `until`;
    /// panics when none matches within `timeout`.
    pub async fn recv_until(
        &mut self,
        timeout: Duration,
        until: impl Fn(&Msg) -> bool,
    ) -> Vec<Msg> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            match tokio::time::timeout_at(deadline, self.msgs.recv()).await {
                Ok(Some(m)) => {
                    let done = until(&m);
                    seen.push(m);
                    if done {
                        return seen;
                    }
                }
                Ok(None) | Err(_) => panic!(
                    "no matching MQTT message within {timeout:?}; saw {:?}",
                    seen.iter()
                        .map(|m| (&m.topic, m.text()))
                        .collect::<Vec<_>>()
                ),
            }
        }
    }
}

impl Drop for MqttClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Messages that are not the daemon's own status topic
/// (`hearthlink/<gateway_id>/status`, retained online/offline).
pub fn without_status(msgs: Vec<Msg>) -> Vec<Msg> {
    msgs.into_iter()
        .filter(|m| !(m.topic.starts_with("hearthlink/") && m.topic.ends_with("/status")))
        .collect()
}
