//! What a new installer meets on the command line (issue 16, items 13 to
//! 17): the real binary against a real mosquitto and the TLS test cloud,
//! or against state files alone.

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

// ------------------------------------ 14, 15, 16: broker failures, said

/// Waits until `bin`'s stderr contains `needle`; the stderr at that time.
async fn stderr_with(bin: &Binary, needle: &str, timeout: Duration) -> String {
    let found = wait_until(timeout, || async { bin.stderr().contains(needle) }).await;
    let err = bin.stderr();
    assert!(found, "no {needle:?} in stderr within {timeout:?}:\n{err}");
    err
}

/// A refused broker is logged at warn (with `RUST_LOG=warn`, nothing at
/// debug shows) from the first attempt, in words, with the attempt count
/// and the delay before the next; no Rust debug text. Before, the failure
/// was logged at debug only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_broker_is_logged_at_warn_in_words_with_the_next_delay() {
    let cloud = CloudServer::start().await;
    let files = write_files(&Opts::default(), free_port(), &cloud);
    let config = files.config_path.display().to_string();
    let mut bin = Binary::spawn_with_env(
        &["run", "--config", &config],
        files.dir.path(),
        &[("RUST_LOG", "warn")],
    );
    let err = stderr_with(&bin, "cannot reach the broker", WAIT).await;
    let line = err
        .lines()
        .find(|l| l.contains("cannot reach the broker"))
        .unwrap_or_default();
    assert!(
        line.contains("connection refused: is the broker running"),
        "{line}"
    );
    assert!(
        line.contains("attempt=1") && line.contains("next attempt in"),
        "{line}"
    );
    for debug_text in ["Custom {", "kind:", "Io error"] {
        assert!(
            !err.contains(debug_text),
            "Rust debug text {debug_text:?} in:\n{err}"
        );
    }
    bin.signal("TERM");
    bin.wait_exit(WAIT).await;
}

/// Two gateways with one `gateway_id` (one MQTT client id): the broker
/// keeps closing each one's session for the other's, and the log says so.
/// Before, they flapped every second with no hint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_with_one_gateway_id_are_told_why_they_flap() {
    let broker = Broker::start();
    let cloud = CloudServer::start().await;
    let mut bins = Vec::new();
    let mut all_files = Vec::new();
    for _ in 0..2 {
        let files = write_files(&Opts::default(), broker.port(), &cloud);
        let config = files.config_path.display().to_string();
        bins.push(Binary::spawn_with_env(
            &["run", "--config", &config],
            files.dir.path(),
            &[("RUST_LOG", "warn")],
        ));
        all_files.push(files);
    }
    let hinted = wait_until(LONG_WAIT * 2, || async {
        bins.iter().any(|b| b.stderr().contains("same gateway_id"))
    })
    .await;
    let logs: Vec<String> = bins.iter().map(Binary::stderr).collect();
    assert!(
        hinted,
        "no hint about the shared client id:\n{}",
        logs.join("\n---\n")
    );
    assert!(
        logs.iter()
            .any(|l| l.contains("client id `hearthlink-gw-test`")),
        "{logs:?}"
    );
    for mut b in bins {
        b.signal("TERM");
        b.wait_exit(WAIT).await;
    }
}

// ---------------------------------------------------------- 18: status

/// `status` of a daemon that reaches neither side says since when each is
/// down, how many attempts failed and when the next one is, that the clock
/// offset is not known yet, the buffered count and rejections in words;
/// with the token file gone it still finds the daemon (exit 1: unhealthy,
/// not 2), and exits 3 once the daemon is stopped. Before: "reconnects 0",
/// "clock offset 0 ms", rejections as raw JSON, exit 2 without a token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_says_what_is_down_since_when_and_the_next_try() {
    let cloud = CloudServer::start().await;
    let opts = Opts {
        url: Some(format!("wss://127.0.0.1:{}/gateway", free_port())),
        ..Opts::default()
    };
    let files = write_files(&opts, free_port(), &cloud);
    let config = files.config_path.display().to_string();
    let mut bin = Binary::spawn(&["run", "--config", &config], files.dir.path());
    let tried = wait_until(LONG_WAIT, || async {
        let (_, out, _) = cli(&["status", "--json"], &files.config_path).await;
        let v: Value = serde_json::from_str(&out).unwrap_or_default();
        v["broker"]["failed_attempts"].as_u64() >= Some(2)
            && v["cloud"]["failed_attempts"].as_u64() >= Some(1)
    })
    .await;
    assert!(tried, "no failed attempts counted:\n{}", bin.stderr());
    let (code, out, err) = cli(&["status"], &files.config_path).await;
    assert_eq!(code, Some(1), "unhealthy: {out} {err}");
    for expected in [
        "clock offset unknown (no welcome yet)",
        "broker   DOWN since",
        "cloud    DOWN since",
        "failed attempts, ",
        "buffered 0",
        "rejected 0",
        "last error: broker 127.0.0.1:",
    ] {
        assert!(out.contains(expected), "{expected:?} not in:\n{out}");
    }
    std::fs::remove_file(files.dir.path().join("token")).expect("remove token");
    let (code, out, err) = cli(&["status"], &files.config_path).await;
    assert_eq!(code, Some(1), "the daemon is still found: {out} {err}");
    assert!(err.contains("warning:") && err.contains("token"), "{err}");
    bin.signal("TERM");
    bin.wait_exit(WAIT).await;
    let (code, out, err) = cli(&["status"], &files.config_path).await;
    assert_eq!(code, Some(3), "no daemon, no token: {out} {err}");
}

// ------------------------------------------- 21: check-config --connect

/// `check-config --connect` connects to the broker and opens a cloud
/// session once, says so for each, and exits 0 only when both work; a
/// refused broker is named and the exit is 1. Before, there was no way to
/// check a configuration end to end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_connect_reports_the_broker_and_the_cloud() {
    let broker = Broker::start();
    let mut cloud = CloudServer::start().await;
    let files = write_files(&Opts::default(), broker.port(), &cloud);
    let (run, accepted) = tokio::join!(
        cli(&["check-config", "--connect"], &files.config_path),
        cloud.accept_hello(WAIT)
    );
    let (code, out, err) = run;
    assert_eq!(code, Some(0), "stdout {out} stderr {err}");
    assert!(
        out.contains(&format!("broker 127.0.0.1:{}: connected", broker.port())),
        "{out}"
    );
    assert!(
        out.contains("session opened (welcome, clock offset"),
        "{out}"
    );
    assert_eq!(accepted.1["gateway_id"], "gw-test", "{}", accepted.1);

    let refused = write_files(&Opts::default(), free_port(), &cloud);
    let (run, _) = tokio::join!(
        cli(&["check-config", "--connect"], &refused.config_path),
        cloud.accept_hello(WAIT)
    );
    let (code, out, err) = run;
    assert_eq!(code, Some(1), "stdout {out} stderr {err}");
    assert!(
        out.contains("FAILED: connection refused: is the broker running"),
        "{out}"
    );
    assert!(
        out.contains("session opened"),
        "the cloud step still runs: {out}"
    );
}
