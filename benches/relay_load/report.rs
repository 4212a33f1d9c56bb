//! Results of the load bench: per-step figures, the printed tables, the
//! budget verdicts and `target/bench/relay_load.json`.

use std::fmt::Write as _;

use serde::Serialize;

use crate::record::Percentiles;

/// One process over one measured step.
#[derive(Debug, Clone, Serialize)]
pub struct ProcStat {
    pub name: String,
    /// CPU seconds (utime + stime) per 10 000 measured messages.
    pub cpu_s_per_10k: f64,
    /// Average share of one core over the window, percent.
    pub cpu_pct: f64,
    /// Peak resident set (VmHWM) at the end of the step, kB.
    pub hwm_kb: u64,
}

/// One path at one rate.
#[derive(Debug, Clone, Serialize)]
pub struct StepResult {
    pub path: String,
    /// Which round of a `--rounds` run (from 0).
    pub round: usize,
    pub rate: f64,
    pub measured_s: f64,
    pub payload_bytes: usize,
    pub quiet_topics: u64,
    pub links: usize,
    pub sent: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub latency_us: Percentiles,
    pub achieved_rate: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ack_latency_us: Option<Percentiles>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acks_rejected: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fanout_latency_us: Option<Percentiles>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link_frames: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link_frames_expected: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub privacy_leaks: Option<u64>,
    pub procs: Vec<ProcStat>,
    /// `error` frames the daemon sent the sink (hearthlink paths).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_frames: Option<u64>,
    /// The bench process itself (publisher, subscriber, sink).
    pub bench_cpu_pct: f64,
    /// 1-minute load average at the end of the step (2 cores: above 2
    /// means something else competed for the CPU).
    pub loadavg: f64,
    /// hearthlink's memory before any load (connected, subscribed, no links).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hearthlink_idle: Option<IdleMem>,
}

/// A process's memory at rest, kB (`/proc/<pid>/status`).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct IdleMem {
    /// VmHWM: peak resident set so far.
    pub hwm_kb: u64,
    /// RssAnon: heap, stacks (what the process allocated).
    pub rss_anon_kb: u64,
    /// RssFile: mapped pages of the binary and libraries.
    pub rss_file_kb: u64,
}

impl StepResult {
    /// No loss, every fan-out frame and ack there, p99 at most 100 ms.
    pub fn clean(&self) -> bool {
        let links_ok = match (self.link_frames, self.link_frames_expected) {
            (Some(got), Some(want)) => got >= want,
            _ => true,
        };
        let acks_ok = self.acks_rejected.unwrap_or(0) == 0
            && self
                .ack_latency_us
                .is_none_or(|a| a.count >= self.sent && a.p99 <= 100_000);
        self.sent > 0 && self.lost == 0 && links_ok && acks_ok && self.latency_us.p99 <= 100_000
    }

    pub fn proc(&self, name: &str) -> Option<&ProcStat> {
        self.procs.iter().find(|p| p.name == name)
    }

    /// CPU seconds per 10k on the gateway side: the broker the load
    /// enters (`mosquitto`, or bridge broker A) plus the relay, if any
    /// (hearthlink, the naive or the floor relay). The bridge's broker B
    /// and the bench's sink stand for the cloud and are not counted.
    pub fn gateway_cpu(&self) -> f64 {
        const GATEWAY: [&str; 5] = ["mosquitto-a", "mosquitto", "hearthlink", "naive", "floor"];
        GATEWAY
            .iter()
            .filter_map(|n| self.proc(n))
            .map(|p| p.cpu_s_per_10k)
            .sum()
    }
}

/// Revocation under load.
#[derive(Debug, Clone, Serialize)]
pub struct RevokeResult {
    pub rate: f64,
    pub links: usize,
    pub revokes: usize,
    pub ack_latency_us: Percentiles,
    /// Link frames for a revoked link read after its `ok` ack (must be 0).
    pub frames_after_ack: u64,
    /// Link frames read between sending the revoke and its ack.
    pub frames_in_flight: u64,
    pub failures: Vec<String>,
    pub load: StepResult,
}

/// Highest clean rate of one path.
#[derive(Debug, Clone, Serialize)]
pub struct Saturation {
    pub path: String,
    pub highest_clean_rate: f64,
    pub first_failing_rate: Option<f64>,
    pub steps: Vec<StepResult>,
}

/// Short process label for the table: m (mosquitto), a, b, hl.
fn short(name: &str) -> &str {
    match name {
        "mosquitto" => "m",
        "mosquitto-a" => "a",
        "mosquitto-b" => "b",
        "hearthlink" => "hl",
        "naive" => "nv",
        "floor" => "fl",
        other => other,
    }
}

fn ms(us: u64) -> String {
    if us >= 10_000 {
        format!("{:.0}", us as f64 / 1000.0)
    } else {
        format!("{:.2}", us as f64 / 1000.0)
    }
}

/// The main table (latencies in µs, as recorded).
pub fn table(results: &[StepResult]) -> String {
    header() + &rows(results)
}

pub fn header() -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<17} {:>6} {:>7} {:>7} {:>5} {:>6} {:>6} {:>7} {:>7} {:>7} {:>7}  {:<22} {:<20} {:<11}",
        "path",
        "rate",
        "sent",
        "deliv",
        "lost",
        "p50us",
        "p90us",
        "p99us",
        "p99.9us",
        "max_us",
        "got/s",
        "cpu s/10k msgs",
        "peak RSS MB",
        "bench%/load"
    );
    out
}

/// Table rows, one (or two) per result.
pub fn rows(results: &[StepResult]) -> String {
    let mut out = String::new();
    for r in results {
        let cpu: Vec<String> = r
            .procs
            .iter()
            .map(|p| format!("{}={:.3}", short(&p.name), p.cpu_s_per_10k))
            .collect();
        let rss: Vec<String> = r
            .procs
            .iter()
            .map(|p| format!("{}={:.1}", short(&p.name), p.hwm_kb as f64 / 1024.0))
            .collect();
        let l = &r.latency_us;
        let _ = writeln!(
            out,
            "{:<17} {:>6} {:>7} {:>7} {:>5} {:>6} {:>6} {:>7} {:>7} {:>7} {:>7.0}  {:<22} {:<20} {:.0}/{:.1}",
            r.path,
            r.rate,
            r.sent,
            r.delivered,
            r.lost,
            l.p50,
            l.p90,
            l.p99,
            l.p999,
            l.max,
            r.achieved_rate,
            cpu.join(" "),
            rss.join(" "),
            r.bench_cpu_pct,
            r.loadavg
        );
        if let Some(a) = &r.ack_latency_us {
            let _ = writeln!(
                out,
                "{:<17} {:>6} {:>7} {:>7} {:>5} {:>6} {:>6} {:>7} {:>7} {:>7}   (time to `ok` ack; rejected {})",
                "  ack", "", "", a.count, "", a.p50, a.p90, a.p99, a.p999, a.max,
                r.acks_rejected.unwrap_or(0)
            );
        }
        if let (Some(f), Some(got), Some(want)) =
            (&r.fanout_latency_us, r.link_frames, r.link_frames_expected)
        {
            let _ = writeln!(
                out,
                "{:<17} {:>6} {:>7} {:>7} {:>5} {:>6} {:>6} {:>7} {:>7} {:>7}   (last of the fan-out; link frames {got}/{want}, leaks {})",
                "  fan-out", "", "", f.count, "", f.p50, f.p90, f.p99, f.p999, f.max,
                r.privacy_leaks.unwrap_or(0)
            );
        }
    }
    out
}

/// Ratios hearthlink-up / bridge-q0, / direct, / naive-relay and / floor-relay
/// per rate, and the naive and floor relays' own against the bridge (the
/// issue's reference, and what any separate relay process costs).
pub fn ratios(results: &[StepResult]) -> String {
    let mut out = String::new();
    let find = |path: &str, rate: f64| results.iter().find(|r| r.path == path && r.rate == rate);
    let mut rates: Vec<f64> = results.iter().map(|r| r.rate).collect();
    rates.sort_by(f64::total_cmp);
    rates.dedup();
    let pairs = [
        ("hearthlink-up", "bridge-q0"),
        ("hearthlink-up", "direct"),
        ("hearthlink-up", "naive-relay"),
        ("hearthlink-up-tcp", "bridge-q0"),
        ("hearthlink-up-tcp", "naive-relay"),
        ("naive-relay", "bridge-q0"),
        ("hearthlink-up", "floor-relay"),
        ("floor-relay", "bridge-q0"),
    ];
    for rate in rates {
        for (path, base) in pairs {
            let (Some(up), Some(b)) = (find(path, rate), find(base, rate)) else {
                continue;
            };
            let q = |a: u64, b: u64| a as f64 / (b.max(1) as f64);
            let gw_cpu = up.gateway_cpu();
            let base_cpu = b.gateway_cpu();
            let _ = writeln!(
                out,
                "{path:>17}/{base:<11} at {rate:>6}/s: p50 {:.2}x  p90 {:.2}x  p99 {:.2}x  p99.9 {:.2}x  gateway CPU {:.2}x ({:.3} vs {:.3} s/10k)",
                q(up.latency_us.p50, b.latency_us.p50),
                q(up.latency_us.p90, b.latency_us.p90),
                q(up.latency_us.p99, b.latency_us.p99),
                q(up.latency_us.p999, b.latency_us.p999),
                gw_cpu / base_cpu.max(1e-9),
                gw_cpu,
                base_cpu
            );
        }
    }
    out
}

/// Short human form of a latency in ms, for verdict lines.
pub fn fmt_ms(us: u64) -> String {
    format!("{} ms", ms(us))
}

/// One budget checked in one run: `PASS`/`MISS`, the budget, the figures,
/// and the one figure the verdict turns on (a ratio, ms, MB or a count:
/// `unit`), so that `--rounds` can give its median.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub ok: bool,
    pub budget: String,
    pub detail: String,
    pub value: f64,
    pub unit: &'static str,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mark = if self.ok { "PASS" } else { "MISS" };
        write!(f, "{mark} {}: {}", self.budget, self.detail)
    }
}

/// `text` is `budget: figures`.
fn verdict(ok: bool, text: String, value: f64, unit: &'static str) -> Verdict {
    let (budget, detail) = text.split_once(": ").unwrap_or((&text, ""));
    Verdict {
        ok,
        budget: budget.to_owned(),
        detail: detail.to_owned(),
        value,
        unit,
    }
}

/// Each budget over the rounds of a `--rounds` run: in how many it passed,
/// and the median and range of its figure. `rounds` holds each round's
/// verdicts.
pub fn over_rounds(rounds: &[Vec<Verdict>]) -> String {
    let mut budgets: Vec<&str> = Vec::new();
    for v in rounds.iter().flatten() {
        if !budgets.contains(&v.budget.as_str()) {
            budgets.push(&v.budget);
        }
    }
    let mut out = format!("budgets over {} rounds (median, range):\n", rounds.len());
    for b in budgets {
        let mut values: Vec<f64> = Vec::new();
        let mut passed = 0;
        let mut unit = "";
        for v in rounds.iter().flatten().filter(|v| v.budget == b) {
            values.push(v.value);
            passed += usize::from(v.ok);
            unit = v.unit;
        }
        values.sort_by(f64::total_cmp);
        let mid = values.len() / 2;
        let median = if values.len() % 2 == 1 {
            values[mid]
        } else {
            (values[mid - 1] + values[mid]) / 2.0
        };
        let _ = writeln!(
            out,
            "{passed:>3}/{} PASS  {b}: {median:.2}{unit} ({:.2}-{:.2})",
            values.len(),
            values[0],
            values[values.len() - 1],
        );
    }
    out
}

/// The up paths the budgets are checked on: through the broker's Unix
/// socket, and over loopback TCP.
const UP_PATHS: [&str; 2] = ["hearthlink-up", "hearthlink-up-tcp"];

/// The budgets, each as a PASS/MISS line with the figures.
pub fn budgets(
    results: &[StepResult],
    revoke: Option<&RevokeResult>,
    saturation: &[Saturation],
) -> Vec<Verdict> {
    let mut out = Vec::new();
    let find = |path: &str, rate: f64| results.iter().find(|r| r.path == path && r.rate == rate);
    // Through the broker's Unix socket (recommended), then over TCP.
    for (name_up, rate) in UP_PATHS
        .into_iter()
        .flat_map(|p| [(p, 1000.0), (p, 5000.0)])
    {
        let (Some(up), Some(br)) = (find(name_up, rate), find("bridge-q0", rate)) else {
            continue;
        };
        for (name, a, b) in [
            ("p50", up.latency_us.p50, br.latency_us.p50),
            ("p99", up.latency_us.p99, br.latency_us.p99),
        ] {
            let q = a as f64 / b.max(1) as f64;
            out.push(verdict(
                a <= b,
                format!(
                    "{name_up} {name} <= bridge-q0 {name} at {rate}/s: {} vs {} ({:+.0}%)",
                    fmt_ms(a),
                    fmt_ms(b),
                    (q - 1.0) * 100.0
                ),
                q,
                "x",
            ));
        }
        if let Some(d) = find("direct", rate) {
            let (a, b) = (up.latency_us.p50, d.latency_us.p50);
            let q = a as f64 / b.max(1) as f64;
            out.push(verdict(
                a <= 2 * b,
                format!(
                    "{name_up} p50 within 2x of direct at {rate}/s: {} vs {} ({q:.2}x)",
                    fmt_ms(a),
                    fmt_ms(b),
                ),
                q,
                "x",
            ));
        }
        if rate == 5000.0 {
            let (gw, base) = (up.gateway_cpu(), br.gateway_cpu());
            let q = gw / base.max(1e-9);
            out.push(verdict(
                gw <= 1.5 * base,
                format!(
                    "{name_up} gateway CPU (mosquitto + hearthlink) <= 1.5x bridge's mosquitto-a at 5000/s: {gw:.3} vs {base:.3} s/10k ({q:.2}x)",
                ),
                q,
                "x",
            ));
        }
    }
    if let Some(down) = find("hearthlink-down", 1000.0) {
        let p99 = down.latency_us.p99;
        out.push(verdict(
            p99 < 2000 && down.lost == 0,
            format!(
                "hearthlink-down p99 < 2 ms at 1000 cmd/s: {} (lost {}, ack p99 {})",
                fmt_ms(p99),
                down.lost,
                fmt_ms(down.ack_latency_us.map_or(0, |a| a.p99))
            ),
            p99 as f64 / 1000.0,
            " ms",
        ));
    }
    if let Some(r) = revoke {
        out.push(verdict(
            r.ack_latency_us.p99 < 5000 && r.failures.is_empty() && r.ack_latency_us.count > 0,
            format!(
                "revoke-to-ack p99 < 5 ms under {}/s with {} links: p99 {} (p50 {}, {} revokes)",
                r.rate,
                r.links,
                fmt_ms(r.ack_latency_us.p99),
                fmt_ms(r.ack_latency_us.p50),
                r.ack_latency_us.count
            ),
            r.ack_latency_us.p99 as f64 / 1000.0,
            " ms",
        ));
        out.push(verdict(
            r.frames_after_ack == 0,
            format!(
                "zero link frames after the revoke ack: {}",
                r.frames_after_ack
            ),
            r.frames_after_ack as f64,
            "",
        ));
    }
    let idle = results
        .iter()
        .filter_map(|r| r.hearthlink_idle)
        .max_by_key(|m| m.hwm_kb);
    if let Some(m) = idle {
        out.push(verdict(
            m.hwm_kb < 8 * 1024,
            format!(
                "hearthlink peak RSS idle < 8 MB: {:.1} MB (anon {:.1} MB, file-backed {:.1} MB)",
                m.hwm_kb as f64 / 1024.0,
                m.rss_anon_kb as f64 / 1024.0,
                m.rss_file_kb as f64 / 1024.0
            ),
            m.hwm_kb as f64 / 1024.0,
            " MB",
        ));
    }
    let loaded = results
        .iter()
        .filter(|r| r.path == "hearthlink-links" && r.rate == 5000.0 && r.links >= 100)
        .chain(revoke.map(|r| &r.load).filter(|l| l.rate == 5000.0))
        .filter_map(|r| r.proc("hearthlink").map(|p| p.hwm_kb))
        .max();
    if let Some(kb) = loaded {
        out.push(verdict(
            kb < 16 * 1024,
            format!(
                "hearthlink peak RSS at 5000/s with 100 links < 16 MB: {:.1} MB",
                kb as f64 / 1024.0
            ),
            kb as f64 / 1024.0,
            " MB",
        ));
    }
    let sat = |p: &str| saturation.iter().find(|s| s.path == p);
    for name_up in UP_PATHS {
        if let (Some(up), Some(br)) = (sat(name_up), sat("bridge-q0")) {
            out.push(verdict(
                up.highest_clean_rate >= br.highest_clean_rate,
                format!(
                    "{name_up} saturation >= bridge-q0: {}/s vs {}/s",
                    up.highest_clean_rate, br.highest_clean_rate
                ),
                up.highest_clean_rate / br.highest_clean_rate.max(1.0),
                "x",
            ));
        }
    }
    out
}
