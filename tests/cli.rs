//! End to end, the real binary: `check-config` and `run` exit codes, and
//! shutdown on SIGTERM / SIGINT (protocol 8.15).

mod common;

use std::time::Duration;

use common::broker::Broker;
use common::cloud::CloudServer;
use common::daemon::{run_binary, write_files, Binary, Opts};
use common::mqtt::MqttClient;
use common::rig::wait_relay_up;
use common::LONG_WAIT;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_names_a_bad_key_and_exits_2() {
    let cloud = CloudServer::start().await;
    let files = write_files(&Opts::default(), 1, &cloud);
    let good = files.config_path.display().to_string();
    let (code, stdout, stderr) = run_binary(&["check-config", "--config", &good]);
    assert_eq!(code, Some(0), "a valid config passes: {stdout} {stderr}");

    // The last section of the generated file is [limits].
    let bad_section = files.dir.path().join("bad-section.toml");
    std::fs::write(&bad_section, format!("{}bogus_key = 1\n", files.toml)).expect("write");
    let bad_top = files.dir.path().join("bad-top.toml");
    std::fs::write(&bad_top, format!("gatewy_id = \"x\"\n{}", files.toml)).expect("write");
    for (path, key) in [(&bad_section, "limits.bogus_key"), (&bad_top, "gatewy_id")] {
        let path = path.display().to_string();
        let (code, _, stderr) = run_binary(&["check-config", "--config", &path]);
        assert_eq!(code, Some(2), "check-config on a bad key exits 2: {stderr}");
        assert!(stderr.contains(key), "stderr names `{key}`: {stderr}");

        // `run` refuses the same file the same way, before dialling anything.
        let mut bin = Binary::spawn(&["run", "--config", &path], files.dir.path());
        let status = bin
            .wait_exit(Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("run with a bad config should exit: {}", bin.stderr()));
        assert_eq!(
            status.code(),
            Some(2),
            "run on a bad key exits 2: {}",
            bin.stderr()
        );
        assert!(
            bin.stderr().contains(key),
            "run names `{key}`: {}",
            bin.stderr()
        );
    }
    assert_eq!(
        common::cloud::Counts::get(&cloud.counts.tcp),
        0,
        "no connection attempt with a bad config"
    );
}

async fn exits_cleanly_on(signal: &str) {
    let broker = Broker::start();
    let mut cloud = CloudServer::start().await;
    let files = write_files(&Opts::default(), broker.port(), &cloud);
    let config = files.config_path.display().to_string();
    let mut bin = Binary::spawn(&["run", "--config", &config], files.dir.path());
    let (mut conn, hello) =
        match tokio::time::timeout(LONG_WAIT, cloud.accept_hello(LONG_WAIT)).await {
            Ok(x) => x,
            Err(_) => panic!("the binary never said hello: {}", bin.stderr()),
        };
    assert_eq!(hello["type"], "hello");
    let client = MqttClient::connect(broker.port()).await;
    wait_relay_up(&mut conn, &client, LONG_WAIT).await;

    bin.signal(signal);
    let status = bin
        .wait_exit(Duration::from_secs(5))
        .await
        .unwrap_or_else(|| {
            panic!(
                "hearthlink did not exit within 5 s of SIG{signal}: {}",
                bin.stderr()
            )
        });
    assert_eq!(
        status.code(),
        Some(0),
        "exit 0 on SIG{signal}: {}",
        bin.stderr()
    );
    let code = conn.expect_close(Duration::from_secs(5)).await;
    assert_eq!(
        code,
        Some(1001),
        "the cloud link is closed with 1001 (going away)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_the_link_with_1001_and_exits_0() {
    exits_cleanly_on("TERM").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_closes_the_link_with_1001_and_exits_0() {
    exits_cleanly_on("INT").await;
}
