//! `hearthlink demo`: the whole system in one process, on loopback.
//!
//! An in-process MQTT broker (rumqttd), a local TLS websocket cloud with a
//! generated certificate ([`cloud`]), simulated devices of a small home,
//! and the real daemon ([`crate::run`], the same code as `hearthlink run`)
//! wired to both. A guided walkthrough: the cloud links an Alexa-like
//! assistant, shows side by side what the app and the assistant receive,
//! sends commands, revokes the assistant, shows its silence, and prints the
//! audit export. Output fits 80 columns and is the same for the same
//! `--seed` (timestamps are never printed).

mod cloud;

use std::collections::HashMap;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Arguments of `hearthlink demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Stop after this many seconds (default: run until Ctrl-C). The
    /// walkthrough takes about 8 s; the home keeps running after it.
    #[arg(long)]
    pub duration: Option<u64>,
    /// Seed for the simulated devices' values.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
}

const WIDTH: usize = 78;
const ASSISTANT: &str = "alexa-demo";

fn line(s: &str) {
    let mut out: String = s.chars().take(WIDTH).collect();
    if s.chars().count() > WIDTH {
        out.pop();
        out.push('…');
    }
    println!("{out}");
}

fn heading(s: &str) {
    println!();
    line(&format!(
        "== {s} {}",
        "=".repeat(WIDTH.saturating_sub(s.len() + 4))
    ));
}

/// Starts rumqttd on a free loopback port, in its own threads.
fn start_broker() -> anyhow::Result<u16> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let cfg: rumqttd::Config = serde_json::from_value(json!({
        "id": 0,
        "router": {"max_connections": 100, "max_outgoing_packet_count": 200,
                   "max_segment_size": 1048576, "max_segment_count": 10},
        "v4": {"1": {"name": "demo", "listen": format!("127.0.0.1:{port}"),
                     "next_connection_delay_ms": 1,
                     "connections": {"connection_timeout_ms": 60000, "max_payload_size": 65536,
                                     "max_inflight_count": 100, "dynamic_filters": true}}}
    }))?;
    std::thread::Builder::new()
        .name("rumqttd".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(cfg);
            if let Err(e) = broker.start() {
                eprintln!("demo broker stopped: {e}");
            }
        })?;
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    anyhow::bail!("the demo broker did not start on port {port}")
}

/// Runs the demo.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            stop.cancel();
        });
    }
    if let Some(d) = args.duration {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(d)).await;
            stop.cancel();
        });
    }
    let dir = tempfile_dir()?;
    let certs = cloud::generate()?;
    let ca_file = dir.join("demo-ca.pem");
    std::fs::write(&ca_file, &certs.ca_pem)?;
    let token_file = dir.join("token");
    write_private(&token_file, "demo-token\n")?;

    let port = start_broker()?;
    let cloud_stop = CancellationToken::new();
    let mut cloud = cloud::start(&certs, "demo-token".into(), cloud_stop.clone()).await?;
    let toml = format!(
        r#"gateway_id = "demo-gw"
state_dir = "{state}"
[mqtt]
port = {port}
subscribe = ["ampio/from/#"]
[cloud]
url = "wss://localhost:{cloud_port}/v1/gateway"
token_file = "{token}"
ca_file = "{ca}"
max_backoff_s = 2
"#,
        state = dir.join("state").display(),
        cloud_port = cloud.addr.port(),
        token = token_file.display(),
        ca = ca_file.display(),
    );
    let config = crate::config::from_toml_str(&toml, std::iter::empty())?.config;
    let state_dir = config.state_dir.clone();
    let daemon_token = CancellationToken::new();
    let daemon = tokio::spawn(crate::run(config, daemon_token.clone()));

    line("hearthlink demo: in-process broker, local TLS cloud, the real daemon.");
    line(&format!(
        "broker 127.0.0.1:{port}  cloud wss://localhost:{}  seed {}",
        cloud.addr.port(),
        args.seed
    ));

    let home = Home::start(port, args.seed).await?;
    let result = tokio::select! {
        r = walkthrough(&mut cloud, &home, &state_dir) => r,
        _ = stop.cancelled() => { line("stopping."); Ok(()) }
    };
    daemon_token.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), daemon).await;
    cloud_stop.cancel();
    drop(cloud);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("hearthlink-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn write_private(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

/// Simulated devices: they publish state and obey commands.
struct Home {
    client: AsyncClient,
    rng: std::sync::Mutex<rand::rngs::StdRng>,
}

impl Home {
    async fn start(port: u16, seed: u64) -> anyhow::Result<Self> {
        let mut o = MqttOptions::new("demo-devices", "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(10));
        let (client, mut events) = AsyncClient::new(o, 64);
        client.subscribe("ampio/to/#", QoS::AtLeastOnce).await?;
        let obey = client.clone();
        tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        // ampio/to/<dev>/o/<n>/cmd -> ampio/from/<dev>/state/o/<n>
                        let parts: Vec<&str> = p.topic.split('/').collect();
                        if let [_, _, dev, "o", n, "cmd"] = parts.as_slice() {
                            let value = String::from_utf8_lossy(&p.payload).into_owned();
                            println!("  device  {dev}/o/{n} obeys command: {value}");
                            let topic = format!("ampio/from/{dev}/state/o/{n}");
                            let _ = obey
                                .publish(
                                    topic,
                                    QoS::AtLeastOnce,
                                    false,
                                    json!({"value": value}).to_string(),
                                )
                                .await;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
        Ok(Home {
            client,
            rng: std::sync::Mutex::new(rand::rngs::StdRng::seed_from_u64(seed)),
        })
    }

    fn states(&self) -> Vec<(String, Value)> {
        let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
        let temp = 19.0 + f64::from(rng.gen_range(0..40u8)) / 10.0;
        vec![
            (
                "ampio/from/living/state/o/1".into(),
                json!({"value": rng.gen_range(0..2u8), "room": "living room"}),
            ),
            (
                "ampio/from/blinds/state/pos".into(),
                json!({"position": rng.gen_range(0..=100u8)}),
            ),
            (
                "ampio/from/thermo/state/t".into(),
                json!({"temperature": temp, "setpoint": 21.5}),
            ),
            (
                "ampio/from/scene/state/evening".into(),
                json!({"scene": "evening", "owner": {"name": "Anna Kowalska",
                       "email": "anna.kowalska@example.com"}, "note": "set by anna.kowalska@example.com",
                       "lights": [1, 2, 5]}),
            ),
        ]
    }

    async fn publish_all(&self) -> anyhow::Result<()> {
        for (topic, v) in self.states() {
            self.client
                .publish(topic, QoS::AtLeastOnce, false, v.to_string())
                .await?;
        }
        Ok(())
    }
}

/// Collects frames for a while and prints app and assistant views.
/// Waits for `expect` frames (at most 5 s), then `grace_ms` more for any
/// stragglers, and prints them sorted: the same story on a busy machine.
async fn show(
    frames: &mut mpsc::Receiver<Value>,
    expect: usize,
    grace_ms: u64,
    counts: &mut HashMap<String, u64>,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut seen: Vec<Value> = Vec::new();
    while seen.len() < expect {
        match tokio::time::timeout_at(deadline, frames.recv()).await {
            Ok(Some(v)) => seen.push(v),
            _ => break,
        }
    }
    let grace = tokio::time::Instant::now() + Duration::from_millis(grace_ms);
    while let Ok(Some(v)) = tokio::time::timeout_at(grace, frames.recv()).await {
        seen.push(v);
    }
    seen.sort_by(|a, b| {
        (a["topic"].as_str(), a["audience"].as_str())
            .cmp(&(b["topic"].as_str(), b["audience"].as_str()))
    });
    for v in seen {
        match v["type"].as_str() {
            Some("state") => {
                let aud = v["audience"].as_str().unwrap_or("?").to_owned();
                *counts.entry(aud.clone()).or_default() += 1;
                let who = if aud == "app" {
                    "APP      "
                } else {
                    "ASSISTANT"
                };
                let topic = v["topic"]
                    .as_str()
                    .unwrap_or("")
                    .trim_start_matches("ampio/from/");
                line(&format!("  {who} {topic}"));
                line(&format!("            {}", v["payload"]));
            }
            Some("ack") => line(&format!(
                "  cloud   ack {} {} {}",
                v["id"].as_str().unwrap_or(""),
                v["status"].as_str().unwrap_or(""),
                v["reason"].as_str().unwrap_or("")
            )),
            Some("hello") => line(&format!("  cloud   hello from {}", v["gateway_id"])),
            Some(other) => line(&format!("  cloud   {other} frame")),
            None => {}
        }
    }
}

async fn walkthrough(
    cloud: &mut cloud::Cloud,
    home: &Home,
    state_dir: &std::path::Path,
) -> anyhow::Result<()> {
    let mut counts = HashMap::new();
    heading("1. the gateway dials out to the cloud");
    show(&mut cloud.frames, 1, 200, &mut counts).await;

    heading("2. the cloud links an assistant");
    cloud
        .send
        .send(
            json!({"type": "link", "id": "l-1", "link": {"id": ASSISTANT, "kind": "alexa",
            "expose": ["ampio/from/+/state/#"], "commands": ["ampio/to/+/o/+/cmd"]}}),
        )
        .await?;
    show(&mut cloud.frames, 1, 100, &mut counts).await;

    heading("3. devices report; what the app and the assistant see");
    home.publish_all().await?;
    show(&mut cloud.frames, 8, 200, &mut counts).await;
    line("  -> the assistant never gets the owner's name or email.");

    heading("4. commands: from the app, then from the assistant");
    let now = crate::clock::local_ms();
    for (id, source) in [("c-1", "app:anna"), ("c-2", "link:alexa-demo")] {
        cloud
            .send
            .send(json!({"type": "command", "id": id, "source": source,
                "topic": "ampio/to/living/o/1/cmd", "payload": "1", "expires_at": now + 30_000}))
            .await?;
    }
    show(&mut cloud.frames, 6, 200, &mut counts).await;

    heading("5. the cloud revokes the assistant");
    cloud
        .send
        .send(json!({"type": "revoke", "id": "r-1", "link_id": ASSISTANT}))
        .await?;
    show(&mut cloud.frames, 1, 100, &mut counts).await;
    counts.remove(&format!("link:{ASSISTANT}"));
    home.publish_all().await?;
    cloud
        .send
        .send(
            json!({"type": "command", "id": "c-3", "source": "link:alexa-demo",
            "topic": "ampio/to/living/o/1/cmd", "payload": "0"}),
        )
        .await?;
    show(&mut cloud.frames, 5, 500, &mut counts).await;
    let after = counts
        .get(&format!("link:{ASSISTANT}"))
        .copied()
        .unwrap_or(0);
    line(&format!(
        "  -> frames for the assistant after its revocation: {after}"
    ));

    heading("6. the audit trail: what the assistant was sent");
    tokio::time::sleep(Duration::from_millis(1200)).await; // the revoke's audit flush lands
    let doc = crate::audit::export(state_dir, Some(ASSISTANT))?;
    let summary = &doc["links"][ASSISTANT];
    line(&format!(
        "  {ASSISTANT}: {} frames, revoked: {}",
        summary["frames_sent"], summary["revoked"]
    ));
    if let Some(topics) = summary["topics"].as_object() {
        let mut topics: Vec<_> = topics.iter().collect();
        topics.sort_by_key(|(topic, _)| *topic);
        for (topic, t) in topics {
            line(&format!(
                "  {:<34} keys {}",
                topic.trim_start_matches("ampio/from/"),
                t["keys"]
            ));
        }
    }
    heading("done");
    line("the home keeps running until --duration ends or Ctrl-C.");
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        home.publish_all().await?;
        show(&mut cloud.frames, 4, 100, &mut counts).await;
    }
}
