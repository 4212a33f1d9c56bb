//! Micro benchmarks of the pure pieces on the relay's hot path.
//!
//! Each group times one function the relay calls per message (or per
//! frame) on realistic inputs, so that a regression in one of them shows
//! here before it shows in `relay_load`:
//! - `protocol`: decoding a typical `command` frame, classifying an MQTT
//!   payload and encoding the `state` frame (app and link audience);
//! - `privacy`: the filter alone and the whole link-path work the relay
//!   does per message (parse, filter, serialise), in MB/s of payload;
//! - `topic`: one topic against a [`FilterSet`] of 1000 filters;
//! - `coalescer`: put/pop on the coalescing buffer at 1000 topics;
//! - `links`: 1000 upserts, then `routes` and `is_active` on the snapshot.
//!
//! Run with `cargo bench --bench micro` (add `-- GROUP` to run one group).

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use hearthlink::links::{Kind, LinksFile, Origin, Registry};
use hearthlink::privacy::{Mode, Policy};
use hearthlink::protocol::{self, PayloadRepr};
use hearthlink::relay::buffer::Coalescer;
use hearthlink::topic::FilterSet;

/// A typical cloud command, as the relay receives it.
const COMMAND: &str = r#"{"type":"command","id":"c-1842","source":"app:anna","topic":"ampio/to/ab12/o/1/cmd","payload":"1","qos":1,"expires_at":1764028805000}"#;

/// A ~200-byte sensor payload with personal fields (the load bench's shape).
const SENSOR: &str = r#"{"seq":184467,"t":1764028800123,"value":21.5,"unit":"C","battery":87,"rssi":-61,"room":"living","name":"Anna","email":"anna@example.com","fw":"2.4.1","ok":true,"pad":"xxxxxxxxxxxxxxxxxxxxxxxx"}"#;

/// A larger, nested payload: arrays, nested owners, an address in a value.
const NESTED: &str = r#"{"device":{"id":"ab12","model":"MSENS-2","owner":{"name":"Anna Kowalska","E-Mail":"anna@example.com","phone":"+48 600 100 200"},"location":{"room":"living","floor":1}},"readings":[{"k":"temp","v":21.5,"u":"C"},{"k":"hum","v":44,"u":"%"},{"k":"co2","v":612,"u":"ppm"},{"k":"lux","v":310,"u":"lx"}],"note":"calibrated by jan.nowak@example.org on site","history":[20.9,21.0,21.2,21.3,21.5,21.4,21.5,21.6],"status":{"battery":87,"rssi":-61,"uptime_s":1839921,"errors":[]},"user_name":"anna_k","label":"Czujnik salon"}"#;

/// A payload with no personal data and no `@`: the filter's fast path.
const CLEAN: &str = r#"{"value":1,"unit":"","changed":true,"channel":"o/1","ts":1764028800123}"#;

const TOPIC: &str = "ampio/from/ab12/state/o/1";

fn protocol_group(c: &mut Criterion) {
    let mut g = c.benchmark_group("protocol");
    g.throughput(Throughput::Elements(1));
    g.bench_function("decode_command", |b| {
        b.iter(|| protocol::decode(black_box(COMMAND)))
    });
    g.bench_function("classify_payload_200B", |b| {
        b.iter(|| PayloadRepr::classify(black_box(SENSOR.as_bytes())))
    });
    // The serde pass `classify` used before the scan, for comparison.
    g.bench_function("serde_ignored_any_200B", |b| {
        b.iter(|| serde_json::from_str::<serde::de::IgnoredAny>(black_box(SENSOR)).is_ok())
    });
    g.bench_function("encode_state_app_200B", |b| {
        b.iter(|| {
            protocol::encode_state(
                None,
                black_box(TOPIC),
                PayloadRepr::Json(black_box(SENSOR)),
                1_764_028_800_123,
                false,
            )
        })
    });
    g.bench_function("classify_and_encode_app_200B", |b| {
        b.iter(|| {
            let repr = PayloadRepr::classify(black_box(SENSOR.as_bytes()));
            protocol::encode_state(None, TOPIC, repr, 1_764_028_800_123, false)
        })
    });
    g.bench_function("encode_state_link_200B", |b| {
        b.iter(|| {
            protocol::encode_state(
                Some(black_box("alexa-7f3")),
                black_box(TOPIC),
                PayloadRepr::Json(black_box(SENSOR)),
                1_764_028_800_123,
                false,
            )
        })
    });
    g.finish();
}

fn privacy_group(c: &mut Criterion) {
    let deny = Policy::default();
    let allow = Policy::new(
        Mode::Allow,
        &[],
        &[
            "value", "unit", "battery", "rssi", "room", "readings", "k", "v", "u",
        ]
        .map(String::from),
    );
    let mut g = c.benchmark_group("privacy");
    for (name, text) in [
        ("sensor_200B", SENSOR),
        ("nested_1KB", NESTED),
        ("clean_80B", CLEAN),
    ] {
        let value: serde_json::Value = serde_json::from_str(text).expect("payload is JSON");
        g.throughput(Throughput::Bytes(text.len() as u64));
        g.bench_function(format!("filter_deny/{name}"), |b| {
            b.iter(|| deny.filter(black_box(&value)))
        });
        g.bench_function(format!("filter_allow/{name}"), |b| {
            b.iter(|| allow.filter(black_box(&value)))
        });
        // What the relay does once per message when links match.
        g.bench_function(format!("parse_filter_serialise/{name}"), |b| {
            b.iter(|| {
                let v: serde_json::Value = serde_json::from_str(black_box(text)).ok()?;
                deny.filter(&v).map(|f| f.to_string())
            })
        });
    }
    g.throughput(Throughput::Bytes(TOPIC.len() as u64));
    g.bench_function("contains_email/topic", |b| {
        b.iter(|| hearthlink::privacy::contains_email(black_box(TOPIC)))
    });
    g.finish();
}

/// 1000 filters of the shapes installers and links use.
fn thousand_filters() -> Vec<String> {
    (0..1000)
        .map(|i| match i % 4 {
            0 => format!("ampio/from/dev{i}/state/#"),
            1 => format!("ampio/from/+/state/o/{i}"),
            2 => format!("home/{i}/+/temperature"),
            _ => format!("zigbee2mqtt/sensor-{i}"),
        })
        .collect()
}

fn topic_group(c: &mut Criterion) {
    let set = FilterSet::new(thousand_filters()).expect("valid filters");
    let mut g = c.benchmark_group("topic");
    g.throughput(Throughput::Elements(1));
    // No filter matches: every one of the 1000 is tried (the worst case).
    g.bench_function("filterset_1000/miss", |b| {
        b.iter(|| set.matches(black_box("ampio/from/ab12/state/o/1/extra")))
    });
    // Matches the last filter only.
    g.bench_function("filterset_1000/match_last", |b| {
        b.iter(|| set.matches(black_box("zigbee2mqtt/sensor-999")))
    });
    g.bench_function("filterset_1000/match_first", |b| {
        b.iter(|| set.matches(black_box("ampio/from/dev0/state/o/1")))
    });
    g.finish();
}

fn coalescer_group(c: &mut Criterion) {
    let topics: Vec<Arc<str>> = (0..1000)
        .map(|i| Arc::from(format!("ampio/from/dev{i}/state").as_str()))
        .collect();
    let mut g = c.benchmark_group("coalescer");
    g.throughput(Throughput::Elements(1));
    // Steady state while the writer is behind: 1000 topics held, each put
    // replaces an older value of the same topic.
    g.bench_function("put_replace_1000_topics", |b| {
        let mut buf = Coalescer::new(10_000);
        for t in &topics {
            buf.put(t.clone(), 0u64);
        }
        let mut i = 0usize;
        b.iter(|| {
            i = (i + 1) % topics.len();
            buf.put(topics[i].clone(), i as u64)
        })
    });
    // Buffer full (cap 500) while 1000 topics cycle: every put is a new
    // key and drops the least recently updated one.
    g.bench_function("put_evict_full_500", |b| {
        let mut buf = Coalescer::new(500);
        for t in &topics {
            buf.put(t.clone(), 0u64);
        }
        let mut i = 0usize;
        b.iter(|| {
            i = (i + 1) % topics.len();
            buf.put(topics[i].clone(), i as u64)
        })
    });
    // Fill with 1000 entries, drain them all: one op = one put + one pop.
    g.throughput(Throughput::Elements(1000));
    g.bench_function("fill_then_drain_1000", |b| {
        b.iter_batched_ref(
            || Coalescer::new(10_000),
            |buf| {
                for (i, t) in topics.iter().enumerate() {
                    buf.put(t.clone(), i as u64);
                }
                while let Some(e) = buf.pop_oldest() {
                    black_box(e);
                }
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn registry_with(n: usize) -> Registry {
    let reg = Registry::from_file(LinksFile::default()).expect("empty registry");
    for i in 0..n {
        reg.upsert(
            &format!("link-{i}"),
            Kind::Alexa,
            vec![format!("ampio/from/dev{i}/#"), "bench/#".to_owned()],
            vec![],
        )
        .expect("upsert");
    }
    reg
}

/// One op = revoking an unknown id in memory with 50 000 tombstones there
/// (issue 16 defect 8: each revoke copied them all). Short: every op adds
/// a tombstone for good.
fn revoke_group(c: &mut Criterion) {
    let mut g = c.benchmark_group("links");
    g.sample_size(10)
        .warm_up_time(std::time::Duration::from_millis(300))
        .measurement_time(std::time::Duration::from_secs(1));
    let tombs = registry_with(0);
    for i in 0..50_000 {
        tombs.revoke(&format!("gone-{i}"), Origin::Cloud, 0);
    }
    let mut next = 0u64;
    g.bench_function("revoke_unknown_after_50000", |b| {
        b.iter(|| {
            next += 1;
            let newly = tombs.revoke(&format!("new-{next}"), Origin::Cloud, 0);
            drop(tombs.take_unsaved());
            newly
        })
    });
    g.finish();
}

fn links_group(c: &mut Criterion) {
    let mut g = c.benchmark_group("links");
    g.sample_size(10);
    // One op = building a registry of 1000 links one upsert at a time.
    g.bench_function("upsert_1000", |b| b.iter(|| registry_with(1000)));
    g.sample_size(100);
    let reg = registry_with(1000);
    g.throughput(Throughput::Elements(1));
    // Every link exposes bench/#: 1000 routes yielded.
    g.bench_function("routes_1000_all_match", |b| {
        b.iter(|| reg.load().routes(black_box("bench/dev1/state")).count())
    });
    // Exactly one link exposes this topic; all 1000 are checked.
    g.bench_function("routes_1000_one_match", |b| {
        b.iter(|| reg.load().routes(black_box("ampio/from/dev500/x")).count())
    });
    g.bench_function("is_active_1000", |b| {
        b.iter(|| reg.load().is_active(black_box("link-742")))
    });
    g.bench_function("is_active_1000_miss", |b| {
        b.iter(|| reg.load().is_active(black_box("link-nope")))
    });
    g.finish();
}

criterion_group!(
    benches,
    protocol_group,
    privacy_group,
    topic_group,
    coalescer_group,
    links_group,
    revoke_group
);
criterion_main!(benches);
