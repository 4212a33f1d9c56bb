//! End to end, the cloud link: upgrade, reconnects, liveness, offline
//! buffering, and the TLS / URL checks that must refuse a connection.

mod common;

use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use common::broker::Broker;
use common::cloud::{generate_certs, Accept, Behavior, CloudServer, Counts, Welcome};
use common::daemon::{write_files, Daemon, Opts};
use common::rig::{is_state, wait_relay_up, Rig};
use common::{wait_until, LONG_WAIT, WAIT};
use serde_json::json;

fn count(n: &AtomicUsize) -> usize {
    Counts::get(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_carries_token_and_subprotocol() {
    let rig = Rig::start(Opts::default()).await;
    let up = &rig.conn.upgrade;
    assert_eq!(up.path, "/v1/gateway");
    assert_eq!(
        up.authorization.as_deref(),
        Some(format!("Bearer {}", rig.cloud.token).as_str()),
        "token from cloud.token_file, whitespace trimmed"
    );
    let protocols = up.protocols.clone().unwrap_or_default();
    assert!(
        protocols.split(',').any(|p| p.trim() == "hearthlink.v1"),
        "asks for hearthlink.v1: {protocols:?}"
    );
    assert_eq!(rig.hello["type"], "hello");
    assert_eq!(rig.hello["gateway_id"], "gw-test");
    assert_eq!(rig.hello["protocol"], 1);
    rig.daemon.stop().await;
}

async fn reconnects_after(drop_it: impl FnOnce(&common::cloud::Conn)) {
    let mut rig = Rig::start(Opts::default()).await;
    let client = rig.mqtt().await;
    rig.wait_relay_up(&client).await;
    drop_it(&rig.conn);
    let (mut conn2, hello2) = rig.cloud.accept_hello(WAIT).await;
    assert_eq!(conn2.id, 2, "a new connection");
    assert_eq!(hello2["type"], "hello");
    assert_eq!(hello2["gateway_id"], "gw-test");
    wait_relay_up(&mut conn2, &client, WAIT).await;
    client.publish("ampio/from/again/state", "2", 1).await;
    let f = conn2
        .expect_frame(
            "state on the new connection",
            |v| is_state(v, "ampio/from/again/state"),
            WAIT,
        )
        .await;
    assert_eq!(f["payload"], json!(2));
    rig.daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_closes_the_connection_daemon_says_hello_again() {
    reconnects_after(|c| c.close(1000)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_drops_tcp_daemon_says_hello_again() {
    reconnects_after(|c| c.drop_tcp()).await;
}

/// The link goes half-open: the server stops reading and answering pings.
async fn half_open_is_detected(config_heartbeat_s: u64, welcome_heartbeat_s: Option<u64>) {
    let opts = Opts {
        heartbeat_s: config_heartbeat_s,
        ..Opts::default()
    };
    let mut rig = Rig::start_with(opts, |cloud| {
        cloud.set_behavior(Behavior {
            welcome: Welcome::Auto {
                offset_ms: 0,
                heartbeat_s: welcome_heartbeat_s,
            },
            ..Behavior::default()
        })
    })
    .await;
    let client = rig.mqtt().await;
    rig.wait_relay_up(&client).await;
    // A link answering pings is kept over several heartbeats (1 s each).
    let early = rig.cloud.try_accept(Duration::from_millis(3500)).await;
    assert!(
        early.is_none(),
        "a link answering pings must not be dropped (counts: {:?})",
        rig.cloud.counts
    );
    assert!(!rig.conn.is_closed());

    rig.conn.stall();
    let (mut conn2, hello2) = rig.cloud.accept_hello(WAIT).await;
    assert_eq!(hello2["type"], "hello");
    wait_relay_up(&mut conn2, &client, WAIT).await;
    rig.daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_link_is_dropped_and_redialled() {
    half_open_is_detected(1, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_from_welcome_overrides_the_config() {
    // Configured 20 s, welcome says 1 s: pings must follow the welcome, or
    // a healthy link is declared dead; and a half-open one is found fast.
    half_open_is_detected(20, Some(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_buffer_keeps_only_the_latest_value_per_topic() {
    let mut rig = Rig::start(Opts::default()).await;
    let client = rig.mqtt().await;
    rig.wait_relay_up(&client).await;

    // Cloud down: the connection goes, and new ones are dropped at once.
    rig.cloud.set_behavior(Behavior {
        accept: Accept::DropTcp,
        ..Behavior::default()
    });
    let counts = &*rig.cloud.counts;
    let tcp_before = count(&counts.tcp);
    rig.conn.drop_tcp();
    assert!(
        wait_until(WAIT, || async move { count(&counts.tcp) > tcp_before }).await,
        "the daemon should try to reconnect"
    );
    assert_eq!(rig.daemon.status().await["cloud"]["connected"], false);
    let base = rig.daemon.counter("states_in").await;

    let (a, b) = ("ampio/from/buf/a", "ampio/from/buf/b");
    for i in 1..=3 {
        client.publish(a, format!("{{\"a\":{i}}}"), 1).await;
    }
    for i in 1..=2 {
        client.publish(b, format!("{{\"b\":{i}}}"), 1).await;
    }
    let daemon = &rig.daemon;
    assert!(
        wait_until(WAIT, || async move {
            daemon.counter("states_in").await >= base + 5
        })
        .await,
        "the daemon should receive the 5 messages while offline"
    );

    rig.cloud.set_behavior(Behavior::default());
    let (mut conn2, _) = rig.cloud.accept_hello(LONG_WAIT).await;
    let fa = conn2
        .expect_frame("buffered a", |v| is_state(v, a), WAIT)
        .await;
    let fb = conn2
        .expect_frame("buffered b", |v| is_state(v, b), WAIT)
        .await;
    assert_eq!(fa["payload"], json!({"a": 3}), "the latest value of {a}");
    assert_eq!(fb["payload"], json!({"b": 2}), "the latest value of {b}");
    // The session is up now (it flushed): a live frame published now comes
    // after anything else flushed from the buffer.
    client.publish("ampio/from/buf/live", "1", 1).await;
    conn2
        .expect_frame("live barrier", |v| is_state(v, "ampio/from/buf/live"), WAIT)
        .await;
    let more = conn2.take_backlog(|v| is_state(v, a) || is_state(v, b));
    assert!(more.is_empty(), "only the latest value per topic: {more:?}");
    let old = rig.conn.take_backlog(|v| is_state(v, a) || is_state(v, b));
    assert!(
        old.is_empty(),
        "nothing went to the dead connection: {old:?}"
    );
    rig.daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_offline_buffer_drops_the_least_recently_updated_topic() {
    let opts = Opts {
        buffer_topics: Some(2),
        ..Opts::default()
    };
    offline_buffer_drops_the_least_recently_updated(opts, 0).await;
}

/// `cloud.buffer_bytes`: three 30 KB values do not fit in 64 KiB, so the
/// least recently updated topic goes, though `buffer_topics` has room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_buffer_over_its_bytes_drops_the_least_recently_updated_topic() {
    let opts = Opts {
        buffer_bytes: Some(65_536),
        ..Opts::default()
    };
    offline_buffer_drops_the_least_recently_updated(opts, 30_000).await;
}

/// With the cloud away: A and B fill the buffer, A is updated (B is now
/// the oldest), C evicts B. Payloads are `{"v":N,"pad":"x..."}`.
async fn offline_buffer_drops_the_least_recently_updated(opts: Opts, pad: usize) {
    let mut rig = Rig::start(opts).await;
    let client = rig.mqtt().await;
    rig.wait_relay_up(&client).await;
    rig.cloud.set_behavior(Behavior {
        accept: Accept::DropTcp,
        ..Behavior::default()
    });
    let counts = &*rig.cloud.counts;
    let tcp_before = count(&counts.tcp);
    rig.conn.drop_tcp();
    assert!(
        wait_until(WAIT, || async move { count(&counts.tcp) > tcp_before }).await,
        "the daemon should try to reconnect"
    );
    let base = rig.daemon.counter("states_in").await;
    let dropped_before = rig.daemon.counter("buffer_dropped").await;

    let (a, b, c) = ("ampio/from/lru/a", "ampio/from/lru/b", "ampio/from/lru/c");
    let value = |v: u32| format!("{{\"v\":{v},\"pad\":\"{}\"}}", "x".repeat(pad));
    client.publish(a, value(1), 1).await;
    client.publish(b, value(1), 1).await;
    client.publish(a, value(2), 1).await;
    client.publish(c, value(1), 1).await;
    let daemon = &rig.daemon;
    assert!(
        wait_until(WAIT, || async move {
            daemon.counter("states_in").await >= base + 4
        })
        .await,
        "the daemon should receive the 4 messages while offline"
    );
    let dropped = rig.daemon.counter("buffer_dropped").await - dropped_before;
    assert_eq!(dropped, 1, "one entry dropped, and counted");

    rig.cloud.set_behavior(Behavior::default());
    let (mut conn2, _) = rig.cloud.accept_hello(LONG_WAIT).await;
    let fc = conn2
        .expect_frame("buffered c", |v| is_state(v, c), WAIT)
        .await;
    assert_eq!(fc["payload"]["v"], json!(1));
    // Once the flush has begun, a live frame is a barrier behind it (sent
    // earlier, while the relay is still offline, it would join the full
    // buffer and evict a buffered topic).
    client.publish("ampio/from/lru/live", "1", 1).await;
    conn2
        .expect_frame("live barrier", |v| is_state(v, "ampio/from/lru/live"), WAIT)
        .await;
    let got: Vec<(String, serde_json::Value)> = conn2
        .take_backlog(|v| {
            v["type"] == "state"
                && v["topic"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("ampio/from/lru/"))
                && v["topic"] != "ampio/from/lru/live"
        })
        .into_iter()
        .map(|v| {
            (
                v["topic"].as_str().unwrap_or("").to_owned(),
                v["payload"]["v"].clone(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![(a.to_owned(), json!(2))],
        "besides {c}: only {a}'s latest value; the least recently updated topic ({b}) was dropped"
    );
    rig.daemon.stop().await;
}

/// Waits until the daemon has dialled at least twice (so it retries) and
/// checks no websocket session ever came up.
async fn assert_refused(cloud: &CloudServer, what: &str) {
    let c = &cloud.counts;
    assert!(
        wait_until(LONG_WAIT, || async move { count(&c.tcp) >= 2 }).await,
        "{what}: the daemon should dial (and retry); counts {c:?}"
    );
    assert!(
        wait_until(WAIT, || async move { count(&c.tls_failed) >= 2 }).await,
        "{what}: the TLS handshakes should fail; counts {c:?}"
    );
    assert_eq!(
        count(&c.ws_ok),
        0,
        "{what}: no websocket handshake; counts {c:?}"
    );
    assert_eq!(
        count(&c.hellos),
        0,
        "{what}: never says hello; counts {c:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_ca_is_refused() {
    let broker = Broker::start();
    let cloud = CloudServer::start().await;
    let other = generate_certs();
    let dir = tempfile::tempdir().expect("tempdir");
    let other_ca = dir.path().join("other-ca.pem");
    std::fs::write(&other_ca, other.ca_pem).expect("write CA");
    let opts = Opts {
        ca_file: Some(Some(other_ca)),
        ..Opts::default()
    };
    let daemon = Daemon::start(&opts, &broker, &cloud);
    assert_refused(&cloud, "unknown CA").await;
    let status = daemon.status().await;
    assert_eq!(status["cloud"]["connected"], false, "{status}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_pin_is_refused_and_the_right_pin_accepted() {
    use base64::Engine as _;
    let broker = Broker::start();
    let mut cloud = CloudServer::start().await;
    let wrong = ring::digest::digest(&ring::digest::SHA256, b"some other key");
    let opts = Opts {
        pin_sha256: vec![base64::engine::general_purpose::STANDARD.encode(wrong.as_ref())],
        ..Opts::default()
    };
    let daemon = Daemon::start(&opts, &broker, &cloud);
    assert_refused(&cloud, "wrong pin").await;
    daemon.stop().await;

    // The same server, CA and config with the right pin: accepted.
    let opts = Opts {
        pin_sha256: vec![cloud.server_pin.clone()],
        ..Opts::default()
    };
    let daemon = Daemon::start(&opts, &broker, &cloud);
    let (_conn, hello) = cloud.accept_hello(LONG_WAIT).await;
    assert_eq!(hello["type"], "hello");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_scheme_without_allow_insecure_is_refused_at_load() {
    let cloud = CloudServer::start().await;
    let url = format!("ws://127.0.0.1:{}/v1/gateway", cloud.addr.port());
    let opts = Opts {
        url: Some(url.clone()),
        ca_file: Some(None),
        ..Opts::default()
    };
    let files = write_files(&opts, 1, &cloud);
    let err = hearthlink::config::from_toml_str(&files.toml, std::iter::empty())
        .expect_err("ws:// without allow_insecure must be refused");
    assert_eq!(err.key(), Some("cloud.url"), "{err}");
    assert!(
        err.to_string().contains("cloud.url"),
        "the error names the key: {err}"
    );

    // The same URL is accepted, with a warning, once allowed.
    let opts = Opts {
        allow_insecure: true,
        ..opts
    };
    let files = write_files(&opts, 1, &cloud);
    let loaded = hearthlink::config::from_toml_str(&files.toml, std::iter::empty())
        .unwrap_or_else(|e| panic!("ws:// with allow_insecure loads: {e}"));
    assert_eq!(loaded.config.cloud.url.as_str(), url);
    assert!(
        loaded.warnings.iter().any(|w| w.contains("ws://")),
        "a warning about the clear-text link: {:?}",
        loaded.warnings
    );
    assert_eq!(count(&cloud.counts.tcp), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_401_is_retried_after_the_backoff() {
    let broker = Broker::start();
    let mut cloud = CloudServer::start().await;
    cloud.set_behavior(Behavior {
        accept: Accept::Http401,
        ..Behavior::default()
    });
    let daemon = Daemon::start(&Opts::default(), &broker, &cloud);
    let counts = cloud.counts.clone();
    let c = &*counts;
    assert!(
        wait_until(LONG_WAIT, || async move { count(&c.ws_refused) >= 2 }).await,
        "the daemon retries after a 401; counts {c:?}"
    );
    assert_eq!(count(&c.ws_ok), 0);
    cloud.set_behavior(Behavior::default());
    let (_conn, hello) = cloud.accept_hello(LONG_WAIT).await;
    assert_eq!(hello["type"], "hello");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_subprotocol_selected_means_no_session() {
    let broker = Broker::start();
    let mut cloud = CloudServer::start().await;
    cloud.set_behavior(Behavior {
        select_subprotocol: false,
        ..Behavior::default()
    });
    let daemon = Daemon::start(&Opts::default(), &broker, &cloud);
    for attempt in 1..=2 {
        let mut conn = cloud.accept(LONG_WAIT).await;
        assert!(
            conn.wait_ended(WAIT).await,
            "attempt {attempt}: the daemon closes a connection without hearthlink.v1"
        );
        let frames = conn.take_backlog(|_| true);
        assert!(
            frames.is_empty(),
            "attempt {attempt}: no frame, no hello: {frames:?}"
        );
    }
    assert_eq!(count(&cloud.counts.hellos), 0);
    cloud.set_behavior(Behavior::default());
    // A connection may already be under way with the old behavior.
    let deadline = tokio::time::Instant::now() + LONG_WAIT;
    loop {
        let mut conn = cloud.accept(LONG_WAIT).await;
        if conn
            .try_expect_frame(|v| v["type"] == "hello", Duration::from_secs(2))
            .await
            .is_some()
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no hello once the subprotocol is selected"
        );
    }
    daemon.stop().await;
}
