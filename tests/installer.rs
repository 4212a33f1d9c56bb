//! What a new installer meets on the command line (issue 16, items 13, 17,
//! 18, 20, 21, 22): the real binary against a real mosquitto and the TLS
//! test cloud, or against state files alone.

mod common;
mod e2e_support;

use std::time::{Duration, Instant};

use common::broker::{free_port, Broker};
use common::cloud::CloudServer;
use common::daemon::{write_files, Binary, Opts};
use common::mqtt::MqttClient;
use common::rig::wait_relay_up;
use common::{wait_until, LONG_WAIT, WAIT};
use e2e_support::{cli, link_ok, Gw};
use serde_json::Value;

/// The rows of `links list --json`.
async fn link_rows(config: &std::path::Path) -> Value {
    let (code, out, err) = cli(&["links", "list", "--json"], config).await;
    assert_eq!(code, Some(0), "links list: {out} {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("links list --json ({e}): {out}"))
}

fn state_of(rows: &Value, id: &str) -> Option<String> {
    rows.as_array()?
        .iter()
        .find(|r| r["id"] == id)
        .and_then(|r| r["state"].as_str().map(str::to_owned))
}

// ------------------------------------------------ 17: revoking a typo

/// `links revoke` of an id no link had says so and exits 2, through the
/// daemon and with no daemon running; the tombstone is recorded all the
/// same, the real link stays active, and a real revoke still exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_of_an_unknown_id_says_no_such_link_was_known() {
    let broker = Broker::start();
    let mut cloud = CloudServer::start().await;
    let files = write_files(&Opts::default(), broker.port(), &cloud);
    let gw = Gw::start(&files.config_path);
    let (mut conn, _) = cloud.accept_hello(LONG_WAIT).await;
    let client = MqttClient::connect(broker.port()).await;
    wait_relay_up(&mut conn, &client, LONG_WAIT).await;
    link_ok(&mut conn, "l-1", "kitchen-1", &["ampio/from/kitchen/#"]).await;

    let (code, out, err) = cli(&["links", "revoke", "kitchen-l"], &files.config_path).await;
    assert_eq!(code, Some(2), "a typo exits 2: stdout {out} stderr {err}");
    assert!(
        err.contains("no link kitchen-l was known") && !out.contains("revoked;"),
        "says no such link was known: stdout {out} stderr {err}"
    );
    let rows = link_rows(&files.config_path).await;
    assert_eq!(
        state_of(&rows, "kitchen-1").as_deref(),
        Some("active"),
        "{rows}"
    );
    assert_eq!(
        state_of(&rows, "kitchen-l").as_deref(),
        Some("revoked"),
        "tombstone: {rows}"
    );

    let (code, out, err) = cli(&["links", "revoke", "kitchen-1"], &files.config_path).await;
    assert_eq!(code, Some(0), "a real revoke: {out} {err}");
    assert!(out.contains("link kitchen-1 revoked"), "{out}");
    let (code, out, err) = cli(&["links", "revoke", "kitchen-1"], &files.config_path).await;
    assert_eq!(code, Some(0), "revoking twice: {out} {err}");
    assert!(out.contains("already revoked"), "{out}");
    gw.stop().await;

    // No daemon: the same answers from the state files.
    let (code, out, err) = cli(&["links", "revoke", "typo-2"], &files.config_path).await;
    assert_eq!(
        code,
        Some(2),
        "offline typo exits 2: stdout {out} stderr {err}"
    );
    assert!(err.contains("no link typo-2 was known"), "{err}");
    let (code, out, err) = cli(&["links", "revoke", "kitchen-1"], &files.config_path).await;
    assert_eq!(code, Some(0), "offline, already revoked: {out} {err}");
    assert!(out.contains("already revoked"), "{out}");
    let rows = link_rows(&files.config_path).await;
    assert_eq!(
        state_of(&rows, "typo-2").as_deref(),
        Some("revoked"),
        "{rows}"
    );
}

// ------------------------------------- 13: revoking around a shutdown

/// The state-dir lock held by someone who does not answer on the control
/// socket (a daemon starting or stopping) makes `links revoke` wait and
/// try again, not fail at once; held for good, it fails after about 3 s
/// saying what it waited for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_waits_for_a_state_lock_held_briefly() {
    let cloud = CloudServer::start().await;
    let files = write_files(&Opts::default(), free_port(), &cloud);
    let config = files.config_path.clone();
    std::fs::create_dir_all(files.state_dir()).expect("state dir");

    let lock = hearthlink::links::StateLock::try_acquire(&files.state_dir()).expect("lock");
    let started = Instant::now();
    let run = tokio::spawn(async move { cli(&["links", "revoke", "held-1"], &config).await });
    tokio::time::sleep(Duration::from_millis(600)).await;
    drop(lock);
    let (code, out, err) = run.await.expect("cli task");
    assert!(
        !err.contains("locked"),
        "the lock was let go after 600 ms: stdout {out} stderr {err}"
    );
    assert_eq!(
        code,
        Some(2),
        "revoked offline (an unknown id): {out} {err}"
    );
    assert!(started.elapsed() >= Duration::from_millis(600));
    let rows = link_rows(&files.config_path).await;
    assert_eq!(
        state_of(&rows, "held-1").as_deref(),
        Some("revoked"),
        "{rows}"
    );

    let _lock = hearthlink::links::StateLock::try_acquire(&files.state_dir()).expect("lock");
    let started = Instant::now();
    let (code, out, err) = cli(&["links", "revoke", "held-2"], &files.config_path).await;
    let waited = started.elapsed();
    assert_eq!(code, Some(1), "a lock held for good fails: {out} {err}");
    assert!(
        err.contains("does not answer") && err.contains("try again"),
        "says what it waited for: {err}"
    );
    assert!(
        waited >= Duration::from_millis(2900) && waited < Duration::from_secs(8),
        "waited about 3 s: {waited:?}"
    );
}

/// `links revoke` right after SIGTERM, round after round: each revoke
/// lands (through the stopping daemon or in the files it let go of) and
/// none fails with "locked". In every other round the broker is frozen,
/// so the daemon takes its time to stop (its MQTT disconnect waits), as a
/// slow broker or cloud makes it: the socket is gone, the lock still held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_right_after_sigterm_always_lands() {
    let broker = Broker::start();
    let mut cloud = CloudServer::start().await;
    let files = write_files(&Opts::default(), broker.port(), &cloud);
    let config = files.config_path.display().to_string();
    for round in 0..6u64 {
        let mut bin = Binary::spawn(&["run", "--config", &config], files.dir.path());
        let (_conn, _) = e2e_support::accept_hello_of(&mut cloud, &bin).await;
        let socket = files.control_socket();
        let up = wait_until(WAIT, || {
            let socket = socket.clone();
            async move {
                let req = serde_json::json!({"cmd": "status"});
                hearthlink::control::request(&socket, &req)
                    .await
                    .is_ok_and(|v| v["status"]["broker"]["connected"] == true)
            }
        })
        .await;
        assert!(up, "round {round}: daemon up: {}", bin.stderr());
        let slow = round % 2 == 1;
        if slow {
            broker.pause();
        }
        bin.signal("TERM");
        let delay = Duration::from_millis(round * 5);
        tokio::time::sleep(delay).await;
        let id = format!("term-{round}");
        let (code, out, err) = cli(&["links", "revoke", &id], &files.config_path).await;
        broker.resume();
        assert!(
            matches!(code, Some(0) | Some(2)) && !err.contains("locked"),
            "round {round} (slow stop {slow}): revoke {delay:?} after SIGTERM: code {code:?} stdout {out} stderr {err}"
        );
        let exited = bin.wait_exit(Duration::from_secs(10)).await;
        assert!(exited.is_some(), "round {round}: the daemon exits");
        let rows = link_rows(&files.config_path).await;
        assert_eq!(
            state_of(&rows, &id).as_deref(),
            Some("revoked"),
            "round {round}: {rows}"
        );
    }
}
