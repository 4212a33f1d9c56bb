//! The two scenarios beyond a plain step: revocation under a flood, and
//! the saturation search.

use std::time::Duration;

use hdrhistogram::Histogram;

use crate::load::now_ns;
use crate::record::Percentiles;
use crate::report::{RevokeResult, Saturation};
use crate::rig::{PathKind, Rig, RigOpts};
use crate::sink::await_ack;

/// Revokes links a-0 .. a-(n-1) one at a time, spread over the measured
/// window of a `rate` msg/s flood with `opts.links` links, timing each
/// from send to `ok` ack; the sink counts link frames read after the ack.
pub async fn revoke(
    opts: &RigOpts,
    rate: f64,
    warmup: Duration,
    measure: Duration,
    n: usize,
) -> Result<RevokeResult, String> {
    let n = n.min(opts.links);
    let mut rig = Rig::start(PathKind::Links, opts).await?;
    let b = rig.begin(rate, warmup, measure);
    let rec = rig.recorder().clone();
    let sink = rig.sink.as_ref().ok_or("links rig without a sink")?;
    let from = b.s.measure_from;
    let gap = measure / (n as u32 + 1);
    let revoker = async {
        let mut lat = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
        let mut failures = Vec::new();
        tokio::time::sleep(Duration::from_nanos(from.saturating_sub(now_ns()))).await;
        for i in 0..n {
            tokio::time::sleep(gap).await;
            let id = format!("r-{i}");
            let rx = sink.expect_ack(&id);
            if let Ok(mut r) = rec.lock() {
                r.revoke.mark_sent(i);
            }
            let frame = format!(r#"{{"type":"revoke","id":"{id}","link_id":"a-{i}"}}"#);
            let t = now_ns();
            if let Err(e) = sink.send(vec![frame]).await {
                failures.push(format!("{id}: {e}"));
                continue;
            }
            match await_ack(rx, Duration::from_secs(5)).await {
                Ok((at, status)) if status == "ok" => {
                    lat.saturating_record((at.saturating_sub(t) / 1000).max(1));
                }
                Ok((_, status)) => failures.push(format!("{id}: acked {status:?}")),
                Err(e) => failures.push(format!("{id}: {e}")),
            }
        }
        (lat, failures)
    };
    let (sent, (lat, failures)) = tokio::join!(rig.gen.drive(&b.s, b.seq0), revoker);
    let sent = sent.map_err(|e| e.to_string())?;
    let load = rig.finish(b, sent, false).await?;
    let (after, between) = rig
        .recorder()
        .lock()
        .map(|r| (r.revoke.after_ack, r.revoke.between))
        .map_err(|_| "recorder poisoned".to_owned())?;
    Ok(RevokeResult {
        rate,
        links: opts.links,
        revokes: n,
        ack_latency_us: Percentiles::of(&lat),
        frames_after_ack: after,
        frames_in_flight: between,
        failures,
        load,
    })
}

pub fn describe_revoke(r: &RevokeResult) -> String {
    let a = &r.ack_latency_us;
    format!(
        "revoke under {}/s with {} links: {} revokes, send->ack p50 {} us p99 {} us max {} us; \
         link frames after ack {} (in flight before ack {}); flood lost {} of {}, p99 {} us{}",
        r.rate,
        r.links,
        r.revokes,
        a.p50,
        a.p99,
        a.max,
        r.frames_after_ack,
        r.frames_in_flight,
        r.load.lost,
        r.load.sent,
        r.load.latency_us.p99,
        if r.failures.is_empty() {
            String::new()
        } else {
            format!("; failures: {}", r.failures.join("; "))
        }
    )
}

/// Rates tried by `--saturate`, in order.
const LADDER: [f64; 14] = [
    500.0, 1000.0, 2000.0, 3000.0, 5000.0, 7500.0, 10_000.0, 15_000.0, 20_000.0, 30_000.0,
    40_000.0, 60_000.0, 80_000.0, 100_000.0,
];
const SAT_WARMUP: Duration = Duration::from_secs(1);
const SAT_MEASURE: Duration = Duration::from_secs(3);

/// Steps every path up the ladder until a step is not clean.
pub async fn saturate_all(paths: &[PathKind], opts: &RigOpts) -> Vec<Saturation> {
    let mut out = Vec::new();
    for &kind in paths {
        out.push(saturate(kind, opts).await);
    }
    out
}

async fn saturate(kind: PathKind, opts: &RigOpts) -> Saturation {
    let mut sat = Saturation {
        path: kind.name().to_owned(),
        highest_clean_rate: 0.0,
        first_failing_rate: None,
        steps: Vec::new(),
    };
    let mut rig = match Rig::start(kind, opts).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("relay_load: saturate {}: {e}", kind.name());
            return sat;
        }
    };
    for rate in LADDER {
        match rig.step(rate, SAT_WARMUP, SAT_MEASURE).await {
            Ok(r) => {
                let clean = r.clean();
                println!(
                    "saturate {:<17} {:>7}/s: lost {:>6} of {:>7}, p99 {:>8} us, {}",
                    kind.name(),
                    rate,
                    r.lost,
                    r.sent,
                    r.latency_us.p99,
                    if clean { "clean" } else { "NOT clean" }
                );
                sat.steps.push(r);
                if !clean {
                    sat.first_failing_rate = Some(rate);
                    break;
                }
                sat.highest_clean_rate = rate;
            }
            Err(e) => {
                eprintln!("relay_load: saturate {} at {rate}/s: {e}", kind.name());
                sat.first_failing_rate = Some(rate);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    sat
}
