//! End to end, assistant links (issue 3): what a link sees, revocation
//! (cloud and local, live and offline, under load, across a restart, when
//! it cannot be persisted), and the audit trail. Real mosquitto, real TLS
//! websocket cloud, the daemon in-process or the real binary.

mod common;
mod e2e_support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::broker::Broker;
use common::cloud::{Accept, Behavior, CloudServer, Conn};
use common::daemon::{write_files, Opts};
use common::mqtt::MqttClient;
use common::rig::{is_state, wait_relay_up, Rig};
use common::{wait_until, LONG_WAIT, WAIT};
use e2e_support::{
    assert_ok, assert_rejected, audience, cli, cli_timed, command, is_link_frame, link, link_ok,
    next_frame, normalise, personal_keys, send_revoke, Gw, DEFAULT_STRIP_KEYS,
};
use hearthlink::CancellationToken;
use serde_json::{json, Value};

const CMD_TOPIC: &str = "ampio/to/ab12/o/1/cmd";

/// The JSON stdout of a successful command-line run.
fn json_out(what: &str, r: (Option<i32>, String, String)) -> Value {
    let (code, out, err) = r;
    assert_eq!(code, Some(0), "{what} exits 0: stdout {out} stderr {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{what}: stdout is not JSON ({e}): {out}"))
}

/// The row of `links list --json` for `id`.
fn row<'a>(rows: &'a Value, id: &str) -> &'a Value {
    rows.as_array()
        .and_then(|a| a.iter().find(|r| r["id"] == id))
        .unwrap_or_else(|| panic!("no row for {id}: {rows}"))
}

/// The tombstone of `id` in the `links.json` at `path`, if it is there.
/// The tombstone of `id` as the state dir of `links.json` at `path` holds
/// it (the tombstone log, with the links files).
fn tombstone(path: &std::path::Path, id: &str) -> Option<Value> {
    let file = hearthlink::links::load_file(path.parent()?).ok()?;
    let r = file.revoked.into_iter().find(|r| r.id == id)?;
    serde_json::to_value(r).ok()
}

/// Whether the copy in `links.json` at `path` lists `id` as active.
fn active_in_json(path: &std::path::Path, id: &str) -> bool {
    let Ok(text) = std::fs::read_to_string(path) else {
        return false;
    };
    let doc: Value = serde_json::from_str(&text).unwrap_or_default();
    doc["links"]
        .as_array()
        .is_some_and(|a| a.iter().any(|l| l["id"] == id))
}

/// Waits until the copy in `links.json` at `path` shows `links` active
/// links. The copy is written after the ack of the change; a test that
/// replaces the file must let it land first, or its rename would put a
/// file back where the test put something else.
async fn wait_copied(path: &std::path::Path, links: usize) {
    assert!(
        wait_until(WAIT, || async move {
            std::fs::read_to_string(path)
                .ok()
                .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                .and_then(|v| v["links"].as_array().map(|a| a.len() == links))
                .unwrap_or(false)
        })
        .await,
        "{} shows {links} links",
        path.display()
    );
}

/// Publishes a message on a topic no link exposes and waits for its app
/// frame: everything the relay emitted before it has been received.
async fn barrier(conn: &mut Conn, client: &MqttClient, name: &str) {
    let topic = format!("ampio/from/barrier/{name}");
    client.publish(&topic, "1", 1).await;
    conn.expect_frame(&format!("barrier {name}"), |v| is_state(v, &topic), WAIT)
        .await;
}

// ------------------------------------------------------------------ privacy

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_sees_stripped_frames_while_the_app_sees_full_ones() {
    let mut rig = Rig::start(Opts::default()).await;
    let client = rig.mqtt().await;
    rig.wait_relay_up(&client).await;
    // mqtt.subscribe is ["ampio/from/#"] in the harness: "home" lives below it.
    link_ok(&mut rig.conn, "l-1", "strip-1", &["ampio/from/home/#"]).await;
    let aud = audience("strip-1");

    let topic = "ampio/from/home/livingroom";
    let payload = json!({"temp":21,"owner":{"name":"Anna","E-Mail":"a@example.com"},"note":"mail anna@example.com"});
    client.publish(topic, payload.to_string(), 1).await;
    let app = rig
        .conn
        .expect_frame("app frame", |v| is_state(v, topic), WAIT)
        .await;
    assert_eq!(app["payload"], payload, "the app gets everything: {app}");
    let lf = rig
        .conn
        .expect_frame(
            "link frame",
            |v| is_link_frame(v, "strip-1") && v["topic"] == topic,
            WAIT,
        )
        .await;
    assert_eq!(lf["audience"], aud.as_str());
    assert_eq!(
        lf["payload"],
        json!({"temp":21,"note":"mail [redacted]"}),
        "owner (with name and e-mail inside) stripped, address redacted: {lf}"
    );

    // Personal keys at the top level and inside arrays, in other spellings.
    let topic2 = "ampio/from/home/kitchen";
    let payload2 = json!({"temp":22,"Name":"Anna","e_mail":"a@example.com","rooms":[{"first_name":"A","t":1}],"contact":"Anna <anna@example.com>"});
    client.publish(topic2, payload2.to_string(), 1).await;
    let app2 = rig
        .conn
        .expect_frame("app frame 2", |v| is_state(v, topic2), WAIT)
        .await;
    assert_eq!(app2["payload"], payload2);
    let lf2 = rig
        .conn
        .expect_frame(
            "link frame 2",
            |v| is_link_frame(v, "strip-1") && v["topic"] == topic2,
            WAIT,
        )
        .await;
    assert_eq!(
        lf2["payload"],
        json!({"temp":22,"rooms":[{"t":1}],"contact":"Anna <[redacted]>"}),
        "{lf2}"
    );
    for f in [&lf, &lf2] {
        assert!(personal_keys(f).is_empty(), "no personal key: {f}");
        assert!(!f.to_string().contains('@'), "no address: {f}");
    }

    // A topic holding an address goes to the app only.
    let email_topic = "ampio/from/home/anna@example.com/x";
    client.publish(email_topic, r#"{"present":true}"#, 1).await;
    let app3 = rig
        .conn
        .expect_frame("app frame, email topic", |v| is_state(v, email_topic), WAIT)
        .await;
    assert_eq!(app3["payload"], json!({"present":true}));

    // A payload that is not UTF-8 goes to the app as payload_b64 only.
    let bin_topic = "ampio/from/home/raw";
    let bytes = vec![0xffu8, 0xfe, 0x00, 0x80, b'a'];
    client.publish(bin_topic, bytes.clone(), 1).await;
    let app4 = rig
        .conn
        .expect_frame("app frame, binary", |v| is_state(v, bin_topic), WAIT)
        .await;
    assert_eq!(
        app4["payload_b64"],
        base64::engine::general_purpose::STANDARD.encode(&bytes)
    );
    assert!(app4.get("payload").is_none(), "{app4}");

    // Barrier on an exposed topic: its link frame comes after any link
    // frame the two messages above could have produced.
    let last = "ampio/from/home/last";
    client.publish(last, r#"{"v":1}"#, 1).await;
    rig.conn
        .expect_frame(
            "link frame, barrier",
            |v| is_link_frame(v, "strip-1") && v["topic"] == last,
            WAIT,
        )
        .await;
    let leaked = rig.conn.take_backlog(|v| {
        is_link_frame(v, "strip-1") && (v["topic"] == email_topic || v["topic"] == bin_topic)
    });
    assert!(
        leaked.is_empty(),
        "email topic / binary payload sent to a link: {leaked:?}"
    );
    rig.daemon.stop().await;
}

/// Rule 6.1.4: what the strict parse refuses but looks like JSON (what
/// Python's `json.dumps` writes for NaN, duplicate keys, 1e400, a BOM,
/// trailing text, single quotes, too deep) reaches no link, and is counted;
/// the app still gets it as text. Before, each reached the link as a text
/// string with only addresses redacted (`{"owner":"Johanna Smithers",...}`).
const LAX_JSON: &[&str] = &[
    r#"{"owner":"Johanna Smithers","t":NaN}"#,
    r#"{"owner":"J","owner":"Johanna Smithers"}"#,
    r#"{"owner":"Johanna Smithers","t":1e400}"#,
    "\u{feff}{\"owner\":\"Johanna Smithers\"}",
    r#"{"owner":"Johanna Smithers"} trailing"#,
    "{'owner':'Johanna Smithers'}",
    "  [\"Johanna Smithers\", Infinity]",
];

/// Publishes `payload` on `topic` and waits for its app frame.
async fn publish_seen(rig: &mut Rig, client: &MqttClient, topic: &str, payload: &[u8]) -> Value {
    client.publish(topic, payload.to_vec(), 1).await;
    rig.conn
        .expect_frame("app frame", |v| is_state(v, topic), WAIT)
        .await
}

/// The link frame of `topic` (after a barrier, none may be left over).
async fn link_payload(rig: &mut Rig, link: &str, topic: &str) -> Value {
    rig.conn
        .expect_frame(
            "link frame",
            |v| is_link_frame(v, link) && v["topic"] == topic,
            WAIT,
        )
        .await["payload"]
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lax_json_compound_keys_and_text_reach_links_only_as_rules_6_1_say() {
    let mut rig = Rig::start(Opts::default()).await;
    let client = rig.mqtt().await;
    rig.wait_relay_up(&client).await;
    link_ok(&mut rig.conn, "l-1", "lax-1", &["ampio/from/home/#"]).await;
    let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
    let mut lax: Vec<Vec<u8>> = LAX_JSON.iter().map(|p| p.as_bytes().to_vec()).collect();
    lax.push(deep.into_bytes());
    for (i, payload) in lax.iter().enumerate() {
        let app = publish_seen(
            &mut rig,
            &client,
            &format!("ampio/from/home/lax/{i}"),
            payload,
        )
        .await;
        assert!(app["payload"].is_string(), "the app gets it as text: {app}");
    }
    // Compound and look-alike keys (rules 6.1.1, 6.1.2), dressed addresses
    // (6.1.3) and a text payload (6.1.5).
    let compound = json!({"ownerName":"Jo","homeAddress":"x","\u{435}mail":"e","display_name":"Jo",
        "contactPhone2":"1","t":21,"note":"jo\u{ff20}x\u{ff0e}org or jo%40x.org"});
    publish_seen(
        &mut rig,
        &client,
        "ampio/from/home/compound",
        compound.to_string().as_bytes(),
    )
    .await;
    assert_eq!(
        link_payload(&mut rig, "lax-1", "ampio/from/home/compound").await,
        json!({"t":21,"note":"[redacted] or [redacted]"})
    );
    let text = "owner=Johanna t=21 user: jo mail \"jo smith\"@x.org";
    publish_seen(&mut rig, &client, "ampio/from/home/text", text.as_bytes()).await;
    assert_eq!(
        link_payload(&mut rig, "lax-1", "ampio/from/home/text").await,
        json!("owner=[redacted] t=21 user: [redacted] mail [redacted]")
    );
    let leaked = rig.conn.take_backlog(|v| {
        is_link_frame(v, "lax-1") && v["topic"].as_str().is_some_and(|t| t.contains("/lax/"))
    });
    assert!(leaked.is_empty(), "lax JSON sent to a link: {leaked:?}");
    assert_eq!(
        rig.daemon.counter("link_dropped_not_json").await,
        lax.len() as u64
    );
    rig.daemon.stop().await;
}

/// Rule 6.1.4, allow mode: only JSON objects and arrays go to links (a
/// scalar or a text cannot be allow-listed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_mode_sends_links_only_objects_and_arrays() {
    let mut rig = Rig::start(Opts {
        extra_sections: "[privacy]\nmode = \"allow\"\nallow_keys = [\"t\"]\n".into(),
        ..Opts::default()
    })
    .await;
    let client = rig.mqtt().await;
    rig.wait_relay_up(&client).await;
    link_ok(&mut rig.conn, "l-1", "allow-1", &["ampio/from/home/#"]).await;
    for (i, payload) in ["\"Johanna Smithers\"", "42", "Johanna Smithers", "true"]
        .iter()
        .enumerate()
    {
        publish_seen(
            &mut rig,
            &client,
            &format!("ampio/from/home/scalar/{i}"),
            payload.as_bytes(),
        )
        .await;
    }
    let object = json!({"t":1,"owner":"Jo","tOwner":2});
    publish_seen(
        &mut rig,
        &client,
        "ampio/from/home/object",
        object.to_string().as_bytes(),
    )
    .await;
    assert_eq!(
        link_payload(&mut rig, "allow-1", "ampio/from/home/object").await,
        json!({"t":1})
    );
    publish_seen(
        &mut rig,
        &client,
        "ampio/from/home/array",
        br#"[{"t":2,"x":3}]"#,
    )
    .await;
    assert_eq!(
        link_payload(&mut rig, "allow-1", "ampio/from/home/array").await,
        json!([{"t":2}])
    );
    let leaked = rig.conn.take_backlog(|v| {
        is_link_frame(v, "allow-1") && v["topic"].as_str().is_some_and(|t| t.contains("/scalar/"))
    });
    assert!(
        leaked.is_empty(),
        "a scalar or text reached a link in allow mode: {leaked:?}"
    );
    rig.daemon.stop().await;
}

// ------------------------------------------------------- revoke under load

const FLOOD_ROUNDS: usize = 20;
const FLOOD_MESSAGES: usize = 5000;

struct RoundStats {
    link_before_ack: usize,
    link_after_ack: Vec<Value>,
    /// Highest seq the link received (-1: none).
    link_max_seq: i64,
    seq_at_revoke: i64,
}

/// One round: link, flood its topic, revoke in the middle, check that no
/// frame for the link arrives after the revoke's ack.
async fn flood_round(conn: &mut Conn, broker_port: u16, round: usize) -> RoundStats {
    let link_id = format!("flood-{round}");
    let topic = format!("ampio/from/flood/{round}");
    link_ok(
        conn,
        &format!("fl-{round}"),
        &link_id,
        &["ampio/from/flood/#"],
    )
    .await;

    let publisher = MqttClient::connect(broker_port).await;
    let published = Arc::new(AtomicUsize::new(0));
    let (t, p) = (topic.clone(), published.clone());
    let task = tokio::spawn(async move {
        for i in 0..FLOOD_MESSAGES {
            publisher
                .publish(&t, format!("{{\"seq\":{i},\"name\":\"Anna\"}}"), 1)
                .await;
            p.fetch_add(1, Ordering::Relaxed);
        }
        publisher // kept alive until the round is over
    });

    let revoke_id = format!("rv-{round}");
    let last_seq = (FLOOD_MESSAGES - 1) as i64;
    let mut stats = RoundStats {
        link_before_ack: 0,
        link_after_ack: Vec::new(),
        link_max_seq: -1,
        seq_at_revoke: -1,
    };
    let mut max_seq = -1i64;
    let mut revoke_sent = false;
    let mut ack: Option<Value> = None;
    let mut last_app = false;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(ack.is_some() && last_app) {
        assert!(
            Instant::now() < deadline,
            "round {round}: stuck (published {}, max seq seen {max_seq}, revoke sent {revoke_sent}, ack {ack:?}, link frames {})",
            published.load(Ordering::Relaxed),
            stats.link_before_ack
        );
        if !revoke_sent && stats.link_before_ack > 0 && max_seq >= (FLOOD_MESSAGES / 2) as i64 {
            send_revoke(conn, &revoke_id, &link_id);
            revoke_sent = true;
            stats.seq_at_revoke = max_seq;
        }
        let Some(f) = next_frame(conn, Duration::from_millis(100)).await else {
            continue;
        };
        if f["type"] == "ack" && f["id"] == revoke_id.as_str() {
            ack = Some(f);
            continue;
        }
        if f["type"] != "state" || f["topic"] != topic.as_str() {
            continue;
        }
        let seq = f["payload"]["seq"].as_i64().unwrap_or(-1);
        if f["audience"] == "app" {
            max_seq = max_seq.max(seq);
            last_app |= seq == last_seq;
        } else if is_link_frame(&f, &link_id) {
            if ack.is_some() {
                stats.link_after_ack.push(f);
            } else {
                assert!(personal_keys(&f).is_empty(), "round {round}: {f}");
                stats.link_before_ack += 1;
                stats.link_max_seq = stats.link_max_seq.max(seq);
            }
        } else {
            panic!("round {round}: a frame for another audience: {f}");
        }
    }
    let ack = ack.expect("ack");
    assert_ok(&ack);
    // The link frame of the last message would follow its app frame:
    // a barrier frame (emitted after it) closes the round.
    let publisher = task.await.expect("publisher task");
    barrier_in_order(conn, &publisher, round, &link_id, &mut stats).await;
    stats
}

/// Like [`barrier`], reading in arrival order and recording link frames.
async fn barrier_in_order(
    conn: &mut Conn,
    client: &MqttClient,
    round: usize,
    link_id: &str,
    stats: &mut RoundStats,
) {
    let topic = format!("ampio/from/barrier/flood-{round}");
    client.publish(&topic, "1", 1).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let f = next_frame(conn, left)
            .await
            .unwrap_or_else(|| panic!("round {round}: no barrier frame"));
        if is_link_frame(&f, link_id) {
            stats.link_after_ack.push(f);
        } else if is_state(&f, &topic) {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_with_revoke_in_the_middle_no_link_frame_after_the_ack() {
    let mut rig = Rig::start(Opts::default()).await;
    let client = rig.mqtt().await;
    rig.wait_relay_up(&client).await;
    let port = rig.broker.port();
    let started = Instant::now();
    let mut total_link = 0;
    let mut rounds_cut = 0;
    for round in 0..FLOOD_ROUNDS {
        let s = flood_round(&mut rig.conn, port, round).await;
        assert!(
            s.link_after_ack.is_empty(),
            "round {round}: {} frame(s) for link:flood-{round} after the revoke ack, first: {}",
            s.link_after_ack.len(),
            s.link_after_ack[0]
        );
        assert!(
            s.link_before_ack > 0,
            "round {round}: the link saw no frame before the revoke: the round proves nothing"
        );
        println!(
            "round {round:2}: revoke sent when the cloud had seen seq {:4}; {:4} link frames before the ack, the last with seq {:4}; 0 after the ack",
            s.seq_at_revoke, s.link_before_ack, s.link_max_seq
        );
        total_link += s.link_before_ack;
        // Coalescing keeps the latest value: a link not cut would get the last seq.
        if s.link_max_seq < (FLOOD_MESSAGES - 1) as i64 {
            rounds_cut += 1;
        }
    }
    println!(
        "{FLOOD_ROUNDS} rounds x {FLOOD_MESSAGES} messages in {:.1} s; {total_link} link frames before the acks; the revoke cut the link mid-stream in {rounds_cut} rounds",
        started.elapsed().as_secs_f64()
    );
    assert!(
        rounds_cut > 0,
        "in no round did the revoke land while link frames were still to come"
    );
    let status = rig.daemon.status().await;
    let links = status["links"].as_array().expect("links");
    assert!(
        links.iter().all(|l| l["state"] == "revoked"),
        "every flood link is revoked: {status}"
    );
    rig.daemon.stop().await;
}

// ------------------------------------------------------------ persistence

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_the_link_revoked() {
    let broker = Broker::start();
    let mut cloud = CloudServer::start().await;
    let files = write_files(&Opts::default(), broker.port(), &cloud);
    let client = MqttClient::connect(broker.port()).await;

    let gw = Gw::start(&files.config_path);
    let (mut conn, _) = cloud.accept_hello(LONG_WAIT).await;
    wait_relay_up(&mut conn, &client, LONG_WAIT).await;
    let ack = link(
        &mut conn,
        "l-1",
        "keep-1",
        &["ampio/from/keep/#"],
        &["ampio/to/#"],
    )
    .await;
    assert_ok(&ack);
    command(&conn, "c-1", "link:keep-1", CMD_TOPIC, json!("1"));
    assert_ok(&conn.expect_ack("c-1").await);
    send_revoke(&conn, "r-1", "keep-1");
    assert_ok(&conn.expect_ack("r-1").await);
    gw.stop().await;

    // With no daemon, `links list` reads the state file.
    let rows = json_out(
        "links list --json (offline)",
        cli(&["links", "list", "--json"], &files.config_path).await,
    );
    assert_eq!(row(&rows, "keep-1")["state"], "revoked", "{rows}");

    let gw = Gw::start(&files.config_path);
    let (mut conn, _) = cloud.accept_hello(LONG_WAIT).await;
    wait_relay_up(&mut conn, &client, LONG_WAIT).await;
    let rows = json_out(
        "links list --json (daemon)",
        cli(&["links", "list", "--json"], &files.config_path).await,
    );
    let r = row(&rows, "keep-1");
    assert_eq!(r["state"], "revoked", "{rows}");
    assert_eq!(r["kind"], "alexa", "{rows}");
    let (code, table, err) = cli(&["links", "list"], &files.config_path).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(
        table
            .lines()
            .any(|l| l.contains("keep-1") && l.contains("revoked")),
        "table shows keep-1 revoked: {table}"
    );

    command(&conn, "c-2", "link:keep-1", CMD_TOPIC, json!("2"));
    assert_rejected(&conn.expect_ack("c-2").await, "revoked");
    let ack = link(&mut conn, "l-2", "keep-1", &["ampio/from/keep/#"], &[]).await;
    assert_rejected(&ack, "revoked");

    client.publish("ampio/from/keep/1", r#"{"v":1}"#, 1).await;
    conn.expect_frame("app frame", |v| is_state(v, "ampio/from/keep/1"), WAIT)
        .await;
    barrier(&mut conn, &client, "keep").await;
    let leaked = conn.take_backlog(|v| is_link_frame(v, "keep-1") || v["type"] == "revoked");
    assert!(
        leaked.is_empty(),
        "no link frame, and no `revoked` frame for a cloud revocation: {leaked:?}"
    );
    gw.stop().await;
}

/// The ack of a revoke means the revocation is on disk: the real binary,
/// killed with SIGKILL right after the ack, comes back with the link
/// revoked. `links.json` is made a directory first, so its copy cannot be
/// written and the state can only come from `links.slots`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_acked_before_a_kill_9_is_revoked_after_it() {
    use common::daemon::Binary;
    let broker = Broker::start();
    let mut cloud = CloudServer::start().await;
    let files = write_files(&Opts::default(), broker.port(), &cloud);
    let client = MqttClient::connect(broker.port()).await;
    let config = files.config_path.display().to_string();

    let mut bin = Binary::spawn(&["run", "--config", &config], files.dir.path());
    let (mut conn, _) = cloud.accept_hello(LONG_WAIT).await;
    wait_relay_up(&mut conn, &client, LONG_WAIT).await;
    for i in 0..3 {
        link_ok(
            &mut conn,
            &format!("l-{i}"),
            &format!("k9-{i}"),
            &["ampio/from/k9/#"],
        )
        .await;
    }
    let links_file = files.state_dir().join(hearthlink::links::LINKS_FILE);
    wait_copied(&links_file, 3).await;
    let lf = &links_file;
    std::fs::remove_file(&links_file).expect("remove links.json");
    std::fs::create_dir(&links_file).expect("links.json as a directory");

    send_revoke(&conn, "r-1", "k9-1");
    assert_ok(&conn.expect_ack("r-1").await);
    bin.signal("KILL");
    bin.wait_exit(WAIT).await.expect("the daemon died");
    drop(conn);
    std::fs::remove_dir(&links_file).expect("remove the blocking directory");

    let rows = json_out(
        "links list --json (after kill -9)",
        cli(&["links", "list", "--json"], &files.config_path).await,
    );
    assert_eq!(row(&rows, "k9-1")["state"], "revoked", "{rows}");
    assert_eq!(row(&rows, "k9-0")["state"], "active", "{rows}");
    assert_eq!(row(&rows, "k9-2")["state"], "active", "{rows}");

    // Started again, the daemon holds it revoked and writes links.json.
    let gw = Gw::start(&files.config_path);
    let (mut conn, _) = cloud.accept_hello(LONG_WAIT).await;
    wait_relay_up(&mut conn, &client, LONG_WAIT).await;
    command(&conn, "c-1", "link:k9-1", CMD_TOPIC, json!("1"));
    assert_rejected(&conn.expect_ack("c-1").await, "revoked");
    assert!(
        wait_until(WAIT, || async move {
            tombstone(lf, "k9-1").is_some() && !active_in_json(lf, "k9-1")
        })
        .await,
        "links.json catches up with links.slots at start"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relink_and_commands_of_a_revoked_link_are_refused_and_link_filters_apply() {
    let mut rig = Rig::start(Opts::default()).await;
    let mut sub = rig.mqtt().await;
    sub.subscribe("ampio/to/#").await;
    let ack = link(&mut rig.conn, "l-1", "cmd-1", &[], &["ampio/to/+/o/+/cmd"]).await;
    assert_ok(&ack);

    command(&rig.conn, "c-ok", "link:cmd-1", CMD_TOPIC, json!("on"));
    assert_ok(&rig.conn.expect_ack("c-ok").await);
    let got = sub.recv_until(WAIT, |m| m.topic == CMD_TOPIC).await;
    assert_eq!(got.last().map(|m| m.text()), Some("on".to_owned()));

    // Allowed by relay.command_topics, outside the link's own filter.
    command(
        &rig.conn,
        "c-out",
        "link:cmd-1",
        "ampio/to/ab12/scene/1",
        json!("x"),
    );
    assert_rejected(&rig.conn.expect_ack("c-out").await, "forbidden");
    // The app may use that topic.
    command(
        &rig.conn,
        "c-app",
        "app",
        "ampio/to/ab12/scene/1",
        json!("y"),
    );
    assert_ok(&rig.conn.expect_ack("c-app").await);

    send_revoke(&rig.conn, "r-1", "cmd-1");
    assert_ok(&rig.conn.expect_ack("r-1").await);
    command(&rig.conn, "c-rev", "link:cmd-1", CMD_TOPIC, json!("rev"));
    assert_rejected(&rig.conn.expect_ack("c-rev").await, "revoked");
    let ack = link(&mut rig.conn, "l-2", "cmd-1", &[], &["ampio/to/+/o/+/cmd"]).await;
    assert_rejected(&ack, "revoked");
    command(&rig.conn, "c-rev2", "link:cmd-1", CMD_TOPIC, json!("rev2"));
    assert_rejected(&rig.conn.expect_ack("c-rev2").await, "revoked");

    // Re-linking uses a new id.
    let ack = link(&mut rig.conn, "l-3", "cmd-2", &[], &["ampio/to/+/o/+/cmd"]).await;
    assert_ok(&ack);
    command(&rig.conn, "c-new", "link:cmd-2", CMD_TOPIC, json!("new"));
    assert_ok(&rig.conn.expect_ack("c-new").await);

    // Only the accepted commands reached the broker.
    command(&rig.conn, "marker", "app", CMD_TOPIC, json!("marker"));
    assert_ok(&rig.conn.expect_ack("marker").await);
    let msgs = sub.recv_until(WAIT, |m| m.payload == b"marker").await;
    let texts: Vec<String> = msgs.iter().map(|m| m.text()).collect();
    assert_eq!(texts, ["y", "new", "marker"], "{msgs:?}");
    rig.daemon.stop().await;
}

// --------------------------------------------------------- local revoke

/// Frames of one connection with the instant each was read.
struct Recorder {
    frames: Arc<Mutex<Vec<(Instant, Value)>>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Conn>,
}

impl Recorder {
    fn start(mut conn: Conn) -> Recorder {
        let frames = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let (f, s) = (frames.clone(), stop.clone());
        let task = tokio::spawn(async move {
            while !s.is_cancelled() {
                match next_frame(&mut conn, Duration::from_millis(50)).await {
                    Some(v) => f.lock().expect("frames").push((Instant::now(), v)),
                    None if conn.is_closed() => tokio::time::sleep(Duration::from_millis(50)).await,
                    None => {}
                }
            }
            conn
        });
        Recorder { frames, stop, task }
    }

    fn count(&self, pred: impl Fn(&Value) -> bool) -> usize {
        self.frames
            .lock()
            .expect("frames")
            .iter()
            .filter(|(_, v)| pred(v))
            .count()
    }

    async fn finish(self) -> (Conn, Vec<(Instant, Value)>) {
        self.stop.cancel();
        let conn = self.task.await.expect("recorder task");
        let frames = std::mem::take(&mut *self.frames.lock().expect("frames"));
        (conn, frames)
    }
}

/// Publishes on `topic` about every millisecond until cancelled.
fn steady_flood(
    client: MqttClient,
    topic: &str,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<(MqttClient, usize)> {
    let topic = topic.to_owned();
    tokio::spawn(async move {
        let mut i = 0usize;
        while !stop.is_cancelled() {
            client
                .publish(&topic, format!("{{\"seq\":{i},\"user\":\"u\"}}"), 1)
                .await;
            i += 1;
            if i.is_multiple_of(5) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        (client, i)
    })
}

/// Sum of the disclosure counts of `link` in an audit export.
fn disclosed(doc: &Value, link: &str) -> u64 {
    doc["records"]
        .as_array()
        .expect("records")
        .iter()
        .filter(|r| r["event"] == "disclosure" && r["link"] == link)
        .map(|r| r["count"].as_u64().expect("count"))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_cli_revoke_cuts_link_frames_at_once_and_tells_the_cloud() {
    let broker = Broker::start();
    let mut cloud = CloudServer::start().await;
    let files = write_files(&Opts::default(), broker.port(), &cloud);
    let gw = Gw::start(&files.config_path);
    let (mut conn, _) = cloud.accept_hello(LONG_WAIT).await;
    let client = MqttClient::connect(broker.port()).await;
    wait_relay_up(&mut conn, &client, LONG_WAIT).await;
    link_ok(&mut conn, "l-1", "cli-1", &["ampio/from/cli/#"]).await;

    let rec = Recorder::start(conn);
    let stop_flood = CancellationToken::new();
    let flood = steady_flood(
        MqttClient::connect(broker.port()).await,
        "ampio/from/cli/x",
        stop_flood.clone(),
    );
    let flowing = wait_until(WAIT, || {
        let n = rec.count(|v| is_link_frame(v, "cli-1"));
        async move { n >= 50 }
    })
    .await;
    assert!(flowing, "link frames should flow before the revoke");

    let cli_started = Instant::now();
    let ((code, out, err), exited) =
        cli_timed(&["links", "revoke", "cli-1"], &files.config_path).await;
    assert_eq!(code, Some(0), "links revoke: {out} {err}");
    assert!(out.contains("cli-1"), "{out}");
    // Keep the flood going: link frames would keep coming if not cut.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop_flood.cancel();
    let (_client, published) = flood.await.expect("flood task");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (mut conn, frames) = rec.finish().await;

    let link_times: Vec<Instant> = frames
        .iter()
        .filter(|(_, v)| is_link_frame(v, "cli-1"))
        .map(|(t, _)| *t)
        .collect();
    let last_link = *link_times.last().expect("link frames were seen");
    let cut_ms = if last_link >= exited {
        (last_link - exited).as_secs_f64() * 1000.0
    } else {
        -((exited - last_link).as_secs_f64() * 1000.0)
    };
    let after_exit = link_times.iter().filter(|t| **t > exited).count();
    let app_after_exit = frames
        .iter()
        .filter(|(t, v)| *t > exited && is_state(v, "ampio/from/cli/x"))
        .count();
    println!(
        "CLI revoke: CLI ran {:.1} ms; last link frame {cut_ms:+.1} ms relative to the CLI's exit; {after_exit} link frame(s) after exit; {app_after_exit} app frames after exit; {} link frames in all; {published} messages published",
        (exited - cli_started).as_secs_f64() * 1000.0,
        link_times.len(),
    );
    assert!(
        cut_ms < 1000.0,
        "link frames went on {cut_ms:.1} ms after `links revoke` exited"
    );
    assert!(
        app_after_exit > 0,
        "the flood went on after the revoke (app frames), so the cut-off is measured"
    );

    // The cloud is told, and nothing for the link follows that frame.
    let pos = frames
        .iter()
        .position(|(_, v)| v["type"] == "revoked")
        .unwrap_or_else(|| panic!("no `revoked` frame"));
    let told = &frames[pos].1;
    assert_eq!(told["link_id"], "cli-1", "{told}");
    assert_eq!(told["origin"], "local", "{told}");
    assert!(told["ts"].is_i64(), "{told}");
    let late: Vec<&Value> = frames[pos..]
        .iter()
        .map(|(_, v)| v)
        .filter(|v| is_link_frame(v, "cli-1"))
        .collect();
    assert!(
        late.is_empty(),
        "link frames after the `revoked` frame: {late:?}"
    );

    // The audit counts exactly the link frames the cloud received.
    let received = link_times.len() as u64;
    let path = files.config_path.clone();
    let matched = wait_until(WAIT, || {
        let path = path.clone();
        async move {
            let (code, out, _) = cli(&["audit", "export", "--link", "cli-1"], &path).await;
            code == Some(0)
                && serde_json::from_str::<Value>(&out)
                    .map(|d| disclosed(&d, "cli-1") == received)
                    .unwrap_or(false)
        }
    })
    .await;
    let doc = json_out(
        "audit export",
        cli(&["audit", "export", "--link", "cli-1"], &files.config_path).await,
    );
    assert!(
        matched,
        "audit disclosures for cli-1 ({}) != link frames received ({received})",
        disclosed(&doc, "cli-1")
    );
    assert!(
        doc["records"]
            .as_array()
            .expect("records")
            .iter()
            .any(|r| r["event"] == "revoke" && r["origin"] == "local"),
        "{doc}"
    );
    assert!(conn.take_backlog(|v| is_link_frame(v, "cli-1")).is_empty());
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_cli_revoke_is_sent_right_after_the_next_welcome() {
    let broker = Broker::start();
    let mut cloud = CloudServer::start().await;
    let files = write_files(&Opts::default(), broker.port(), &cloud);
    let client = MqttClient::connect(broker.port()).await;
    let gw = Gw::start(&files.config_path);
    let (mut conn, _) = cloud.accept_hello(LONG_WAIT).await;
    wait_relay_up(&mut conn, &client, LONG_WAIT).await;
    link_ok(&mut conn, "l-1", "off-1", &["ampio/from/off/#"]).await;
    gw.stop().await;
    drop(conn);

    let (code, out, err) = cli(&["links", "revoke", "off-1"], &files.config_path).await;
    assert_eq!(code, Some(0), "offline revoke: {out} {err}");
    assert!(out.contains("no daemon running"), "{out}");
    let state = hearthlink::links::load_file(&files.state_dir()).expect("link state");
    let state = serde_json::to_value(&state).expect("as JSON");
    let tomb = state["revoked"]
        .as_array()
        .and_then(|a| a.iter().find(|r| r["id"] == "off-1"))
        .unwrap_or_else(|| panic!("off-1 tombstone: {state}"));
    assert_eq!(tomb["origin"], "local", "{state}");
    assert_eq!(tomb["cloud_told"], false, "{state}");
    assert!(
        state["links"]
            .as_array()
            .is_none_or(|a| a.iter().all(|l| l["id"] != "off-1")),
        "{state}"
    );

    // Start with the cloud unreachable and state waiting in the buffer.
    cloud.set_behavior(Behavior {
        accept: Accept::DropTcp,
        ..Behavior::default()
    });
    let gw = Gw::start(&files.config_path);
    // Probe until the daemon's subscription is in place.
    let mut subscribed = false;
    for n in 0..100 {
        client
            .publish(common::rig::PROBE_TOPIC, format!("{{\"probe\":{n}}}"), 1)
            .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        if states_in(&gw).await > 0 {
            subscribed = true;
            break;
        }
    }
    assert!(
        subscribed,
        "the daemon never received state from the broker"
    );
    let base = states_in(&gw).await;
    for i in 0..3 {
        client
            .publish(&format!("ampio/from/off/{i}"), format!("{{\"v\":{i}}}"), 1)
            .await;
    }
    let gw_ref = &gw;
    assert!(
        wait_until(WAIT, || async move { states_in(gw_ref).await >= base + 3 }).await,
        "the daemon buffers the 3 messages while offline"
    );
    assert_eq!(
        common::cloud::Counts::get(&cloud.counts.ws_ok),
        1,
        "no session while the cloud drops connections"
    );
    cloud.set_behavior(Behavior::default());
    let (mut conn, _) = cloud.accept_hello(LONG_WAIT).await;
    let first = next_frame(&mut conn, WAIT)
        .await
        .expect("a frame after hello");
    assert_eq!(
        first["type"], "revoked",
        "the first frame after welcome is the queued revocation: {first}"
    );
    assert_eq!(first["link_id"], "off-1", "{first}");
    assert_eq!(first["origin"], "local", "{first}");
    for i in 0..3 {
        let topic = format!("ampio/from/off/{i}");
        conn.expect_frame(&topic, |v| is_state(v, &topic), WAIT)
            .await;
    }
    let leaked = conn.take_backlog(|v| is_link_frame(v, "off-1"));
    assert!(leaked.is_empty(), "{leaked:?}");

    // Told once: the tombstone is marked and persisted.
    let path = files.state_dir().join(hearthlink::links::LINKS_FILE);
    let p = &path;
    assert!(
        wait_until(WAIT, || async move {
            tombstone(p, "off-1").is_some_and(|r| r["cloud_told"] == true)
        })
        .await,
        "cloud_told is persisted once the frame was written"
    );
    gw.stop().await;
}

async fn states_in(gw: &Gw) -> u64 {
    gw.status().await["counters"]["states_in"]
        .as_u64()
        .unwrap_or(0)
}

// ------------------------------------------------------------------ audit

/// Edge rule 20: the disclosure tally goes to the audit before it would
/// make more than `audit.max_file_bytes`, and no audit file passes that
/// bound by more than one record. Before, the tally grew with every new
/// topic until `audit.flush_s` and was written as one file (the issue: 300
/// 000 topics, 272 MB of memory, one 49 MB file with a 1 MiB bound).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_of_many_topics_is_flushed_and_rotated_within_max_file_bytes() {
    let max = 4096;
    let mut rig = Rig::start(Opts {
        extra_sections: format!(
            "\n[audit]\nmax_file_bytes = {max}\nflush_s = 3600\nmax_files = 1000\n"
        ),
        ..Opts::default()
    })
    .await;
    let client = rig.mqtt().await;
    rig.wait_relay_up(&client).await;
    link_ok(&mut rig.conn, "l-1", "many-1", &["ampio/from/many/#"]).await;
    let topics = 300;
    for i in 0..topics {
        let topic = format!("ampio/from/many/device-{i:05}/state");
        client.publish(&topic, r#"{"temperature":21}"#, 0).await;
    }
    let last = format!("ampio/from/many/device-{:05}/state", topics - 1);
    rig.conn
        .expect_frame(
            "the last link frame",
            |v| is_link_frame(v, "many-1") && v["topic"] == last,
            WAIT,
        )
        .await;
    // Each record is about 200 bytes: 300 of them are ~15 bound-fulls,
    // written long before `flush_s`.
    let state = rig.daemon.files.state_dir();
    let disclosed = || -> Vec<(String, u64, usize)> {
        let mut files = Vec::new();
        for e in std::fs::read_dir(&state).expect("state dir").flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("audit.") && name.ends_with(".jsonl") {
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                let n = text
                    .lines()
                    .filter(|l| l.contains("\"disclosure\""))
                    .count();
                files.push((name, text.len() as u64, n));
            }
        }
        files
    };
    let ok = common::wait_until(Duration::from_secs(10), || {
        let n: usize = disclosed().iter().map(|f| f.2).sum();
        async move { n >= topics * 9 / 10 }
    })
    .await;
    let files = disclosed();
    assert!(ok, "the tally was not flushed by size: {files:?}");
    assert!(files.len() >= 10, "rotated past the bound: {files:?}");
    let record = 512;
    for (name, len, _) in &files {
        assert!(
            *len <= max + record,
            "{name} is {len} bytes, the bound {max}"
        );
    }
    rig.daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_export_matches_the_link_frames_sent() {
    let mut rig = Rig::start(Opts::default()).await;
    let client = rig.mqtt().await;
    rig.wait_relay_up(&client).await;
    link_ok(&mut rig.conn, "l-1", "au-1", &["ampio/from/au/a/#"]).await;
    link_ok(&mut rig.conn, "l-2", "au-2", &["ampio/from/au/#"]).await;

    let n = 30;
    for i in 0..n {
        let side = if i % 2 == 0 { "a" } else { "b" };
        let payload = json!({"temp":i,"name":"Anna","contact":{"email":"a@example.com","phone":"123"},"list":[{"user":"u","v":1}],"note":"x@example.com"});
        client
            .publish(
                &format!("ampio/from/au/{side}/{}", i % 3),
                payload.to_string(),
                1,
            )
            .await;
    }
    let end = "ampio/from/au/b/end";
    client.publish(end, r#"{"v":0}"#, 1).await;
    rig.conn
        .expect_frame(
            "end marker for au-2",
            |v| is_link_frame(v, "au-2") && v["topic"] == end,
            WAIT,
        )
        .await;
    let got1 = rig.conn.take_backlog(|v| is_link_frame(v, "au-1"));
    let got2 = rig.conn.take_backlog(|v| is_link_frame(v, "au-2"));
    let (sent1, sent2) = (got1.len() as u64, got2.len() as u64 + 1);
    assert_eq!(sent1, 15, "au-1 sees the a/ topics");
    assert_eq!(sent2, 31, "au-2 sees every au/ topic and the marker");

    send_revoke(&rig.conn, "r-1", "au-1");
    assert_ok(&rig.conn.expect_ack("r-1").await);

    // The writer hands its tally to the audit task once a second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let path = rig.daemon.files.config_path.clone();
    let export = |link: &'static str| {
        let path = path.clone();
        async move {
            let (code, out, err) = cli(&["audit", "export", "--link", link], &path).await;
            assert_eq!(code, Some(0), "audit export --link {link}: {err}");
            serde_json::from_str::<Value>(&out).expect("export is JSON")
        }
    };
    let done = wait_until(WAIT, || async {
        disclosed(&export("au-1").await, "au-1") >= sent1
            && disclosed(&export("au-2").await, "au-2") >= sent2
    })
    .await;
    let (doc1, doc2) = (export("au-1").await, export("au-2").await);
    assert!(done, "audit not written in time: {doc1} {doc2}");

    for (doc, id, sent) in [(&doc1, "au-1", sent1), (&doc2, "au-2", sent2)] {
        let records = doc["records"].as_array().expect("records");
        assert!(
            records.iter().all(|r| r["link"] == id),
            "--link {id}: {doc}"
        );
        assert_eq!(disclosed(doc, id), sent, "disclosures of {id}: {doc}");
        assert_eq!(doc["links"][id]["frames_sent"], sent, "{doc}");
        assert_eq!(doc["links"][id]["kind"], "alexa", "{doc}");
        assert!(
            records.iter().any(|r| r["event"] == "link"),
            "link event of {id}: {doc}"
        );
        for r in records.iter().filter(|r| r["event"] == "disclosure") {
            let topic = r["topic"].as_str().expect("topic");
            assert!(topic.starts_with("ampio/from/au/"), "{r}");
            for key in r["keys"].as_array().expect("keys") {
                let key = key.as_str().expect("key path");
                for seg in key.split('.') {
                    let seg = normalise(seg.trim_end_matches("[]"));
                    assert!(
                        !DEFAULT_STRIP_KEYS.contains(&seg.as_str()),
                        "personal key {key} in the audit: {r}"
                    );
                }
                assert!(!key.contains('@'), "{r}");
            }
            assert!(
                !r.to_string().contains("example.com") && !r.to_string().contains("Anna"),
                "no values in the audit: {r}"
            );
        }
        let keys: std::collections::BTreeSet<&str> = records
            .iter()
            .filter(|r| r["event"] == "disclosure" && r["topic"] != end)
            .flat_map(|r| r["keys"].as_array().expect("keys").iter())
            .map(|k| k.as_str().expect("key"))
            .collect();
        assert_eq!(
            keys.into_iter().collect::<Vec<_>>(),
            ["contact", "list", "list[].v", "note", "temp"],
            "{id}"
        );
    }
    let revokes = |doc: &Value| -> usize {
        doc["records"]
            .as_array()
            .expect("records")
            .iter()
            .filter(|r| r["event"] == "revoke")
            .count()
    };
    assert_eq!(revokes(&doc1), 1, "{doc1}");
    assert_eq!(doc1["links"]["au-1"]["revoked"], true, "{doc1}");
    assert_eq!(revokes(&doc2), 0, "{doc2}");
    assert_eq!(doc2["links"]["au-2"]["revoked"], false, "{doc2}");
    rig.daemon.stop().await;
}

// ------------------------------------------------ persistence failure

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_that_cannot_be_persisted_is_unavailable_but_cuts_off_at_once() {
    let mut rig = Rig::start(Opts::default()).await;
    let client = rig.mqtt().await;
    rig.wait_relay_up(&client).await;
    link_ok(&mut rig.conn, "l-1", "ro-1", &["ampio/from/ro/#"]).await;

    // Break every write for real, for root too: each state file replaced
    // by a directory. The slot write cannot open `links.slots` (EISDIR),
    // and the fallback's rename onto `links.json` fails the same way.
    let state_dir = rig.daemon.config.state_dir.clone();
    let links_file = state_dir.join(hearthlink::links::LINKS_FILE);
    let blockers = [
        links_file.clone(),
        state_dir.join(hearthlink::links::SLOTS_FILE),
        state_dir.join(hearthlink::tombstones::TOMBSTONES_FILE),
    ];
    wait_copied(&links_file, 1).await;
    for f in &blockers {
        let _ = std::fs::remove_file(f);
        std::fs::create_dir(f).expect("a state file replaced by a directory");
    }

    let stop_flood = CancellationToken::new();
    let flood = steady_flood(
        MqttClient::connect(rig.broker.port()).await,
        "ampio/from/ro/x",
        stop_flood.clone(),
    );
    rig.conn
        .expect_frame("a link frame", |v| is_link_frame(v, "ro-1"), WAIT)
        .await;
    send_revoke(&rig.conn, "r-1", "ro-1");
    let mut ack = None;
    let mut after_ack = Vec::new();
    let mut app_after_ack = 0;
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline && app_after_ack < 200 {
        let Some(f) = next_frame(&mut rig.conn, Duration::from_millis(100)).await else {
            continue;
        };
        if f["type"] == "ack" && f["id"] == "r-1" {
            ack = Some(f);
        } else if ack.is_some() && is_link_frame(&f, "ro-1") {
            after_ack.push(f);
        } else if ack.is_some() && is_state(&f, "ampio/from/ro/x") {
            app_after_ack += 1;
        }
    }
    stop_flood.cancel();
    let (flood_client, _) = flood.await.expect("flood");
    let ack = ack.expect("an ack for the revoke");
    assert_rejected(&ack, "unavailable");
    assert!(
        after_ack.is_empty(),
        "link frames after the (unavailable) revoke ack: {after_ack:?}"
    );
    assert!(
        app_after_ack > 0,
        "the app traffic went on after the revoke"
    );
    barrier(&mut rig.conn, &flood_client, "ro").await;
    let late = rig.conn.take_backlog(|v| is_link_frame(v, "ro-1"));
    assert!(late.is_empty(), "{late:?}");

    // In force in memory: commands refused, listed as revoked.
    command(&rig.conn, "c-1", "link:ro-1", CMD_TOPIC, json!("x"));
    assert_rejected(&rig.conn.expect_ack("c-1").await, "revoked");
    let status = rig.daemon.status().await;
    let ro = status["links"]
        .as_array()
        .and_then(|a| a.iter().find(|l| l["id"] == "ro-1"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(ro["state"], "revoked", "{status}");

    // Repaired: the cloud's retry of the same revoke (unavailable is not
    // remembered) is now persisted and acked ok.
    for f in &blockers {
        std::fs::remove_dir(f).expect("remove the blocking directory");
    }
    send_revoke(&rig.conn, "r-1", "ro-1");
    assert_ok(&rig.conn.expect_ack("r-1").await);
    let persisted = hearthlink::links::load_file(&state_dir).expect("link state");
    let persisted = serde_json::to_value(&persisted).expect("as JSON");
    assert!(
        persisted["revoked"]
            .as_array()
            .is_some_and(|a| a.iter().any(|r| r["id"] == "ro-1")),
        "{persisted}"
    );
    rig.daemon.stop().await;
}
