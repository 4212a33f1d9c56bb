//! Edge rule 19: one device cannot stop the relay. A message over the
//! 16 MiB the daemon takes (retained, so the broker sends it again at
//! every subscribe) is skipped and counted, the broker session stays up,
//! and relaying goes on. Before, the daemon dropped the broker connection
//! ("payload size limit exceeded") and reconnected into the same message
//! forever. Real mosquitto; the blob is published with `mosquitto_pub`.

mod common;

use common::daemon::Opts;
use common::rig::{is_state, Rig};
use common::{wait_until, WAIT};

const BLOB_BYTES: usize = 17 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retained_message_over_16_mib_is_skipped_and_relaying_goes_on() {
    let mut rig = Rig::start(Opts::default()).await;
    let client = rig.mqtt().await;
    rig.wait_relay_up(&client).await;
    let blob = rig.daemon.files.dir.path().join("blob");
    std::fs::write(&blob, vec![b'x'; BLOB_BYTES]).expect("blob");
    for qos in ["0", "1", "2"] {
        let status = std::process::Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &rig.broker.port().to_string()])
            .args([
                "-t",
                &format!("ampio/from/blob/{qos}"),
                "-r",
                "-q",
                qos,
                "-f",
            ])
            .arg(&blob)
            .status()
            .expect("run mosquitto_pub");
        assert!(status.success(), "mosquitto_pub qos {qos}: {status}");
    }
    let counted = wait_until(WAIT, || async {
        rig.daemon.counter("mqtt_oversized").await == 3
    })
    .await;
    assert!(
        counted,
        "mqtt_oversized: {}",
        rig.daemon.counter("mqtt_oversized").await
    );

    let topic = "ampio/from/after/x";
    client.publish(topic, r#"{"v":1}"#, 1).await;
    let frame = rig
        .conn
        .expect_frame("state after the blobs", |v| is_state(v, topic), WAIT)
        .await;
    assert_eq!(frame["payload"]["v"], 1, "{frame}");
    let status = rig.daemon.status().await;
    assert_eq!(status["broker"]["connected"], true, "{status}");
    assert_eq!(
        status["broker"]["reconnects"], 0,
        "the broker session never dropped: {status}"
    );
    let blobs = rig.conn.take_backlog(|v| {
        v["topic"]
            .as_str()
            .is_some_and(|t| t.starts_with("ampio/from/blob/"))
    });
    assert!(
        blobs.is_empty(),
        "a skipped message reached the cloud: {} frames",
        blobs.len()
    );
    rig.daemon.stop().await;
}
