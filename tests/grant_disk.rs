//! Protocol rule 18: granting waits for the disk, taking away does not.
//!
//! The state dir is a private tmpfs the test fills under the running
//! daemon, so the daemon's writes really fail (a read-only remount is
//! refused while the daemon holds files open for writing). Mounting
//! needs root, as CI has; without it the test fails saying so.

mod common;
mod e2e_support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::broker::Broker;
use common::cloud::{CloudServer, Conn};
use common::daemon::{write_files, Opts};
use common::mqtt::MqttClient;
use common::rig::wait_relay_up;
use common::LONG_WAIT;
use e2e_support::{assert_ok, assert_rejected, cli, command, is_link_frame, link, send_revoke, Gw};
use serde_json::{json, Value};

/// A tmpfs mounted at a path; unmounted (lazily) on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).expect("mount point");
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "mounting a tmpfs at {} failed: this test needs root",
            at.display()
        );
        Tmpfs(at.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

async fn states_for(conn: &mut Conn, link_id: &str, window: Duration) -> Vec<Value> {
    conn.collect(|v| is_link_frame(v, link_id), window).await
}

async fn link_ids(config: &Path) -> Vec<String> {
    let (code, out, err) = cli(&["links", "list", "--json"], config).await;
    assert_eq!(code, Some(0), "links list: {out} {err}");
    let rows: Value = serde_json::from_str(&out).expect("links list --json");
    rows.as_array()
        .expect("array")
        .iter()
        .filter(|r| r["state"] == "active")
        .filter_map(|r| r["id"].as_str().map(str::to_owned))
        .collect()
}

/// Fills the tmpfs at `state_dir`, leaving the daemon's files as they are.
fn fill(state_dir: &Path) -> PathBuf {
    let filler = state_dir.join("filler");
    let _ = std::fs::write(&filler, vec![0u8; 1024 * 1024]);
    filler
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_the_disk_refuses_is_never_in_force_and_a_revoke_always_is() {
    let broker = Broker::start();
    let mut cloud = CloudServer::start().await;
    let files = write_files(&Opts::default(), broker.port(), &cloud);
    let _fs = Tmpfs::mount(&files.state_dir(), "512k");
    let client = MqttClient::connect(broker.port()).await;
    let gw = Gw::start(&files.config_path);
    let (mut conn, _) = cloud.accept_hello(LONG_WAIT).await;
    wait_relay_up(&mut conn, &client, LONG_WAIT).await;
    let ack = link(&mut conn, "l-1", "kept", &["ampio/from/kept/#"], &[]).await;
    assert_ok(&ack);

    // A grant too large for the preallocated slots must go to links.json,
    // which the full disk refuses.
    let filler = fill(&files.state_dir());
    let mut expose: Vec<String> = (0..4000).map(|i| format!("ampio/from/big/{i}/#")).collect();
    expose.push("ampio/from/ro/#".into());
    let expose: Vec<&str> = expose.iter().map(String::as_str).collect();
    let ack = link(&mut conn, "l-2", "ro", &expose, &["ampio/to/ro/#"]).await;
    assert_rejected(&ack, "unavailable");
    // Neither state nor commands for the refused link.
    client.publish("ampio/from/ro/1", r#"{"v":1}"#, 1).await;
    client.publish("ampio/from/kept/1", r#"{"v":1}"#, 1).await;
    assert_eq!(
        states_for(&mut conn, "kept", Duration::from_secs(2))
            .await
            .len(),
        1
    );
    assert!(conn.take_backlog(|v| is_link_frame(v, "ro")).is_empty());
    command(&conn, "c-1", "link:ro", "ampio/to/ro/1", json!("1"));
    assert_rejected(&conn.expect_ack("c-1").await, "revoked");
    // A revoke is in force at once, whatever the disk says.
    send_revoke(&conn, "r-1", "kept");
    let _ = conn.expect_ack("r-1").await;
    client.publish("ampio/from/kept/2", r#"{"v":2}"#, 1).await;
    assert!(states_for(&mut conn, "kept", Duration::from_secs(2))
        .await
        .is_empty());

    // The disk comes back: the retry (every 5 s) persists the registry as
    // it is, never the refused grant.
    std::fs::remove_file(&filler).expect("remove filler");
    tokio::time::sleep(Duration::from_secs(7)).await;
    gw.stop().await;
    drop(conn);
    assert!(
        link_ids(&files.config_path).await.is_empty(),
        "after the retry"
    );
    let gw = Gw::start(&files.config_path);
    let (mut conn, _) = cloud.accept_hello(LONG_WAIT).await;
    wait_relay_up(&mut conn, &client, LONG_WAIT).await;
    client.publish("ampio/from/ro/2", r#"{"v":2}"#, 1).await;
    client.publish("ampio/from/kept/3", r#"{"v":3}"#, 1).await;
    let window = Duration::from_secs(2);
    let after = conn.collect(
        |v| is_link_frame(v, "ro") || is_link_frame(v, "kept"),
        window,
    );
    assert!(after.await.is_empty(), "a link came back after the restart");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_on_a_full_disk_are_either_acked_and_kept_or_refused_and_gone() {
    let broker = Broker::start();
    let mut cloud = CloudServer::start().await;
    let files = write_files(&Opts::default(), broker.port(), &cloud);
    let _fs = Tmpfs::mount(&files.state_dir(), "512k");
    let client = MqttClient::connect(broker.port()).await;
    let gw = Gw::start(&files.config_path);
    let (mut conn, _) = cloud.accept_hello(LONG_WAIT).await;
    wait_relay_up(&mut conn, &client, LONG_WAIT).await;
    let filler = fill(&files.state_dir());

    let mut acked = Vec::new();
    let mut refused = Vec::new();
    let expose: Vec<String> = (0..40).map(|i| format!("ampio/from/x{i}/#")).collect();
    let expose: Vec<&str> = expose.iter().map(String::as_str).collect();
    for i in 0..150 {
        let id = format!("full-{i}");
        let ack = link(&mut conn, &format!("l-{i}"), &id, &expose, &[]).await;
        match ack["status"].as_str() {
            Some("ok") => acked.push(id),
            _ => {
                assert_rejected(&ack, "unavailable");
                refused.push(id)
            }
        }
    }
    assert!(
        !refused.is_empty(),
        "the disk never filled: {} acked",
        acked.len()
    );
    // Room again: the store's retry (every 5 s) must not persist them.
    std::fs::remove_file(&filler).expect("remove filler");
    tokio::time::sleep(Duration::from_secs(7)).await;
    gw.stop().await;
    drop(conn);
    let active = link_ids(&files.config_path).await;
    for id in &refused {
        assert!(!active.contains(id), "refused link {id} was persisted");
    }
    for id in &acked {
        assert!(active.contains(id), "acked link {id} was lost");
    }
}
