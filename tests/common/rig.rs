//! A whole setup: private broker, cloud server, daemon in-process, and the
//! first cloud connection with its `hello` answered.

use std::time::Duration;

use serde_json::Value;

use super::broker::Broker;
use super::cloud::{CloudServer, Conn};
use super::daemon::{Daemon, Opts};
use super::mqtt::MqttClient;

/// Topic of the readiness probes: tests that inspect state frames look at
/// their own topics and ignore this one.
pub const PROBE_TOPIC: &str = "ampio/from/probe/state";

pub struct Rig {
    pub broker: Broker,
    pub cloud: CloudServer,
    pub daemon: Daemon,
    pub conn: Conn,
    pub hello: Value,
}

impl Rig {
    /// Starts everything and waits for the daemon's `hello` (answered by
    /// the server's default `welcome`, unless `opts` / the behavior say
    /// otherwise).
    pub async fn start(opts: Opts) -> Rig {
        Self::start_with(opts, |_| {}).await
    }

    /// Like [`Rig::start`], letting the test set the server's behavior
    /// before the daemon dials.
    pub async fn start_with(opts: Opts, setup: impl FnOnce(&CloudServer)) -> Rig {
        let broker = Broker::start();
        let mut cloud = CloudServer::start().await;
        setup(&cloud);
        let daemon = Daemon::start(&opts, &broker, &cloud);
        let (conn, hello) = cloud.accept_hello(super::WAIT).await;
        Rig {
            broker,
            cloud,
            daemon,
            conn,
            hello,
        }
    }

    /// A test MQTT client on this rig's broker.
    pub async fn mqtt(&self) -> MqttClient {
        MqttClient::connect(self.broker.port()).await
    }

    /// Waits until state published on the broker reaches the cloud over
    /// `self.conn` (the daemon is subscribed and the session is up):
    /// publishes a probe every 250 ms until one arrives.
    pub async fn wait_relay_up(&mut self, client: &MqttClient) {
        wait_relay_up(&mut self.conn, client, super::LONG_WAIT).await;
    }
}

/// See [`Rig::wait_relay_up`]; for a connection other than the rig's.
pub async fn wait_relay_up(conn: &mut Conn, client: &MqttClient, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut n = 0u32;
    loop {
        n += 1;
        client
            .publish(PROBE_TOPIC, format!("{{\"probe\":{n}}}"), 1)
            .await;
        let got = conn
            .try_expect_frame(
                |v| v["type"] == "state" && v["topic"] == PROBE_TOPIC,
                Duration::from_millis(250),
            )
            .await;
        if got.is_some() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "state from the broker did not reach the cloud within {timeout:?} (conn {} closed: {})",
            conn.id,
            conn.is_closed()
        );
    }
}

/// Whether `v` is a state frame for `topic` (app audience).
pub fn is_state(v: &Value, topic: &str) -> bool {
    v["type"] == "state" && v["topic"] == topic && v["audience"] == "app"
}
