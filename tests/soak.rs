//! The soak (issue 16): the release binary for `SOAK_SECONDS` (default
//! 3600) at `SOAK_RATE` messages a second (default 2000) on 100 topics,
//! with link churn (a link granted and an older one revoked every 10 s),
//! the cloud dropping the connection every 60 s and a SIGHUP every 90 s.
//! Every 10 s it samples the daemon's RSS, open descriptors and threads
//! from /proc and what went through, into `target/soak/soak.csv`.
//!
//! Not part of the suite (`#[ignore]`): `scripts/soak.sh` runs it and
//! plots the result. At the end the daemon must still relay.

mod common;
mod e2e_support;

use std::io::Write;
use std::time::{Duration, Instant};

use common::broker::Broker;
use common::cloud::{CloudServer, Conn};
use common::daemon::{write_files, Binary, Opts};
use common::mqtt::MqttClient;
use common::rig::{is_state, wait_relay_up};
use common::{LONG_WAIT, WAIT};
use e2e_support::{accept_hello_of, link_ok, send_revoke};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `VmRSS` (kB), open descriptors and threads of `pid`.
fn sample(pid: u32) -> (u64, usize, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let count =
        |dir: &str| std::fs::read_dir(format!("/proc/{pid}/{dir}")).map_or(0, |d| d.count());
    (rss, count("fd"), count("task"))
}

/// Reads and discards what the cloud got for up to `window`; the count.
async fn drain(conn: &mut Conn, window: Duration) -> usize {
    conn.collect(|_| true, window).await.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "an hour; scripts/soak.sh runs it"]
async fn soak() {
    let seconds = env_u64("SOAK_SECONDS", 3600);
    let rate = env_u64("SOAK_RATE", 2000);
    let broker = Broker::start();
    let mut cloud = CloudServer::start().await;
    let files = write_files(&Opts::default(), broker.port(), &cloud);
    let config = files.config_path.display().to_string();
    let mut bin = Binary::spawn_with_env(
        &["run", "--config", &config],
        files.dir.path(),
        &[("RUST_LOG", "warn")],
    );
    let (mut conn, _) = accept_hello_of(&mut cloud, &bin).await;
    let client = MqttClient::connect(broker.port()).await;
    wait_relay_up(&mut conn, &client, LONG_WAIT).await;

    let publisher = MqttClient::connect(broker.port()).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let pub_stop = stop.clone();
    let published = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = published.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        let per_tick = (rate / 100).max(1);
        let mut n = 0u64;
        while !pub_stop.is_cancelled() {
            tick.tick().await;
            for _ in 0..per_tick {
                let topic = format!("ampio/from/soak/{}", n % 100);
                publisher
                    .publish(&topic, format!(r#"{{"n":{n},"t":21.5}}"#), 0)
                    .await;
                n += 1;
            }
            counter.store(n, std::sync::atomic::Ordering::Relaxed);
        }
    });

    let out_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/soak");
    std::fs::create_dir_all(&out_dir).expect("target/soak");
    let mut csv = std::fs::File::create(out_dir.join("soak.csv")).expect("soak.csv");
    writeln!(
        csv,
        "t_s,rss_kb,fds,threads,published,cloud_frames,links_granted,cloud_drops,sighups"
    )
    .ok();
    let started = Instant::now();
    let (mut frames, mut granted, mut drops, mut hups) = (0usize, 0usize, 0usize, 0usize);
    let mut step = 0u64;
    while started.elapsed() < Duration::from_secs(seconds) {
        frames += drain(&mut conn, Duration::from_secs(10)).await;
        step += 1;
        assert!(bin.running(), "the daemon exited:\n{}", bin.stderr());
        // Link churn: grant one, revoke the one granted three steps ago.
        let id = format!("soak-{step}");
        link_ok(&mut conn, &format!("l-{step}"), &id, &["ampio/from/soak/#"]).await;
        granted += 1;
        if step > 3 {
            send_revoke(&conn, &format!("r-{step}"), &format!("soak-{}", step - 3));
        }
        if step.is_multiple_of(6) {
            conn.drop_tcp();
            let (c, _) = accept_hello_of(&mut cloud, &bin).await;
            conn = c;
            drops += 1;
        }
        if step.is_multiple_of(9) {
            bin.signal("HUP");
            hups += 1;
        }
        let (rss, fds, threads) = sample(bin.pid());
        let p = published.load(std::sync::atomic::Ordering::Relaxed);
        let t = started.elapsed().as_secs();
        writeln!(
            csv,
            "{t},{rss},{fds},{threads},{p},{frames},{granted},{drops},{hups}"
        )
        .ok();
        eprintln!("soak: {t:>5} s  rss {rss:>6} kB  fds {fds:>3}  threads {threads:>2}  published {p:>8}  cloud frames {frames:>8}");
    }
    stop.cancel();
    let _ = drain(&mut conn, Duration::from_secs(2)).await;
    client
        .publish("ampio/from/soak/final", r#"{"final":true}"#, 1)
        .await;
    conn.expect_frame(
        "the final state",
        |v| is_state(v, "ampio/from/soak/final"),
        WAIT,
    )
    .await;
    bin.signal("TERM");
    bin.wait_exit(WAIT).await;
}
