//! End-to-end load bench: hearthlink against a Mosquitto TLS bridge and a
//! plain broker, under identical open-loop load.
//!
//! `cargo bench --bench relay_load -- [--quick] [--rate N[,N..]]
//! [--duration S] [--warmup S] [--paths a,b] [--saturate] [--links N]
//! [--payload BYTES] [--quiet-topics N] [--revokes N] [--broker-nodelay] [--bin PATH]
//! [--rounds N]`
//!
//! Paths (`--paths`, default all): `direct` (publisher -> mosquitto ->
//! subscriber), `bridge-q0` / `bridge-q1` (`bridge` = both: mosquitto A ->
//! TLS bridge -> mosquitto B), `hearthlink-up` (mosquitto -> hearthlink ->
//! TLS websocket sink; hearthlink reaches the broker through its Unix
//! socket, as on all hearthlink paths), `hearthlink-up-tcp` (the same over
//! loopback TCP), `hearthlink-down` (sink `command` -> hearthlink ->
//! mosquitto -> subscriber), `hearthlink-links` (up with N links exposing
//! the topic), `naive-relay` (the up path with the reference, a
//! naive rumqttc-into-tungstenite relay, in hearthlink's place: see
//! [`naive`]), `floor-relay` (the least a separate relay process can cost:
//! one blocking thread, through the broker's socket, no checks: see
//! [`floor`]), plus `revoke` (revoke-to-ack under a flood with N links).
//!
//! Everything runs on free loopback ports and is stopped afterwards. The
//! daemon is the release binary cargo built for this bench
//! (`CARGO_BIN_EXE_hearthlink`, the `bench` profile inherits `release`),
//! unless `--bin` names another. Results: a table on stdout and
//! `target/bench/relay_load.json`. Figures are shown, never asserted.
//!
//! `--rounds N` measures every path (and the revocation) N times in turn,
//! round after round, and adds to each budget's verdict in how many rounds
//! it passed and the median of its figure: on a shared 2-vCPU machine one
//! run's CPU ratio varies by +-15 %, so a verdict near a line needs several.
//!
//! # Layout
//! - [`procs`]: child processes, their configs, `/proc` readings.
//! - [`certs`]: the generated CA and server certificate.
//! - [`client`]: how the bench's own relays reach the sink.
//! - [`load`]: schedule (timerfd ticks), payloads, MQTT clients.
//! - [`sink`]: the TLS websocket cloud end.
//! - [`naive`]: the naive relay, run as a child of this binary.
//! - [`floor`]: the floor relay, likewise.
//! - [`record`]: what the receiving end saw.
//! - [`rig`]: one path set up, one step measured.
//! - [`scenarios`]: the revocation test and saturation search.
//! - [`report`]: tables, ratios, budgets, JSON.

mod certs;
mod client;
mod floor;
mod load;
mod naive;
mod procs;
mod record;
mod report;
mod rig;
mod scenarios;
mod sink;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use rig::{PathKind, Rig, RigOpts};

/// Parsed command line.
#[derive(Debug, Clone)]
struct Args {
    quick: bool,
    rates: Vec<f64>,
    duration: Duration,
    warmup: Duration,
    paths: Vec<PathKind>,
    revoke: bool,
    saturate: bool,
    links: usize,
    payload: usize,
    quiet_topics: u64,
    revokes: usize,
    broker_nodelay: bool,
    bin: Option<PathBuf>,
    rounds: usize,
}

const USAGE: &str = "usage: relay_load [--quick] [--rate N[,N..]] [--duration S] [--warmup S] \
[--paths direct,bridge,bridge-q0,bridge-q1,hearthlink-up,hearthlink-up-tcp,hearthlink-down,hearthlink-links,naive-relay,floor-relay,revoke] \
[--saturate] [--links N] [--payload BYTES] [--quiet-topics N] [--revokes N] [--broker-nodelay] [--bin PATH] [--rounds N]";

fn parse_args() -> Result<Args, String> {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let quick = raw.iter().any(|a| a == "--quick");
    let mut a = Args {
        quick,
        rates: if quick {
            vec![500.0]
        } else {
            vec![1000.0, 5000.0]
        },
        duration: Duration::from_secs_f64(if quick { 1.0 } else { 10.0 }),
        warmup: Duration::from_secs_f64(if quick { 0.5 } else { 2.0 }),
        paths: PathKind::ALL.to_vec(),
        revoke: true,
        saturate: false,
        links: 100,
        payload: 200,
        quiet_topics: 0,
        revokes: if quick { 3 } else { 10 },
        broker_nodelay: false,
        bin: None,
        rounds: 1,
    };
    let mut it = raw.into_iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))
        };
        let num = |v: String| {
            v.parse::<f64>()
                .map_err(|_| format!("{flag}: not a number: {v}"))
        };
        match flag.as_str() {
            "--quick" | "--bench" => {} // cargo passes --bench to harness = false targets
            "--saturate" => a.saturate = true,
            "--broker-nodelay" => a.broker_nodelay = true,
            "--rate" => {
                a.rates = value()?
                    .split(',')
                    .map(|v| num(v.to_owned()))
                    .collect::<Result<_, _>>()?;
            }
            "--duration" => a.duration = Duration::from_secs_f64(num(value()?)?),
            "--warmup" => a.warmup = Duration::from_secs_f64(num(value()?)?),
            "--links" => a.links = num(value()?)? as usize,
            "--payload" => a.payload = num(value()?)? as usize,
            "--quiet-topics" => a.quiet_topics = num(value()?)? as u64,
            "--revokes" => a.revokes = num(value()?)? as usize,
            "--rounds" => a.rounds = num(value()?)? as usize,
            "--bin" => a.bin = Some(PathBuf::from(value()?)),
            "--paths" => {
                let list = value()?;
                a.paths.clear();
                a.revoke = false;
                for name in list.split(',') {
                    match name {
                        "revoke" => a.revoke = true,
                        "bridge" => a
                            .paths
                            .extend([PathKind::Bridge { qos: 0 }, PathKind::Bridge { qos: 1 }]),
                        _ => a.paths.push(
                            PathKind::ALL
                                .into_iter()
                                .find(|k| k.name() == name)
                                .ok_or_else(|| format!("unknown path {name:?}\n{USAGE}"))?,
                        ),
                    }
                }
            }
            "--help" | "-h" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    if a.rates.iter().any(|r| *r <= 0.0) || a.duration.is_zero() || a.rounds == 0 {
        return Err("--rate, --duration and --rounds must be positive".into());
    }
    if a.links > 127 {
        return Err("--links: at most 127 (the fan-out counter is 7 bits)".into());
    }
    Ok(a)
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some(naive::FLAG) {
        // The child process of the `naive-relay` path.
        if let Err(e) = naive::main(&argv[2..]) {
            eprintln!("naive relay: {e}");
            std::process::exit(1);
        }
        return;
    }
    if argv.get(1).map(String::as_str) == Some(floor::FLAG) {
        // The child process of the `floor-relay` path.
        if let Err(e) = floor::main(&argv[2..]) {
            eprintln!("floor relay: {e}");
            std::process::exit(1);
        }
        return;
    }
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let started = Instant::now();
    let code = match runtime.block_on(run(&args)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("relay_load: {e}");
            1
        }
    };
    println!(
        "relay_load: wall time {:.1} s",
        started.elapsed().as_secs_f64()
    );
    runtime.shutdown_timeout(Duration::from_secs(2));
    std::process::exit(code);
}

async fn run(args: &Args) -> Result<(), String> {
    let bin = args
        .bin
        .clone()
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_hearthlink")));
    if !bin.exists() {
        return Err(format!(
            "{} not found (build it with cargo build --release)",
            bin.display()
        ));
    }
    if !std::path::Path::new(procs::MOSQUITTO).exists() {
        return Err(format!(
            "{} not found: apt-get install mosquitto",
            procs::MOSQUITTO
        ));
    }
    procs::BROKER_NODELAY.store(args.broker_nodelay, std::sync::atomic::Ordering::Relaxed);
    let opts = RigOpts {
        bin: bin.clone(),
        payload: args.payload,
        quiet_topics: args.quiet_topics,
        links: args.links,
        clk_tck: procs::clk_tck(),
    };
    let bin_bytes = std::fs::metadata(&bin).map(|m| m.len()).unwrap_or(0);
    println!(
        "relay_load: {} | rates {:?}/s | {:.1} s measured after {:.1} s warm-up | payload {} B | quiet topics {} | links {} | binary {} ({:.2} MB)",
        if args.quick { "quick" } else { "full" },
        args.rates,
        args.duration.as_secs_f64(),
        args.warmup.as_secs_f64(),
        args.payload,
        args.quiet_topics,
        args.links,
        bin.display(),
        bin_bytes as f64 / 1e6
    );
    let mut results = Vec::new();
    let mut revokes = Vec::new();
    let mut failures = Vec::new();
    print!("{}", report::header());
    for round in 0..args.rounds {
        let tag = if args.rounds > 1 {
            format!(" (round {})", round + 1)
        } else {
            String::new()
        };
        for &rate in &args.rates {
            for &kind in &args.paths {
                match measure_one(kind, &opts, rate, args).await {
                    Ok(mut r) => {
                        r.round = round;
                        print!("{}", report::rows(std::slice::from_ref(&r)));
                        results.push(r);
                    }
                    Err(e) => {
                        eprintln!("relay_load: {} at {rate}/s{tag} failed: {e}", kind.name());
                        failures.push(format!("{} at {rate}/s{tag}: {e}", kind.name()));
                    }
                }
            }
        }
        if args.revoke {
            let rate = if args.quick { 500.0 } else { 5000.0 };
            match scenarios::revoke(
                &opts,
                rate,
                args.warmup,
                args.duration.max(Duration::from_secs(1)),
                args.revokes,
            )
            .await
            {
                Ok(mut r) => {
                    r.load.round = round;
                    revokes.push(r);
                }
                Err(e) => failures.push(format!("revoke{tag}: {e}")),
            }
        }
    }
    let saturation = if args.saturate {
        scenarios::saturate_all(&args.paths, &opts).await
    } else {
        Vec::new()
    };
    println!("\n{}", report::table(&results));
    let mut verdicts = Vec::new();
    for round in 0..args.rounds {
        let these: Vec<_> = results
            .iter()
            .filter(|r| r.round == round)
            .cloned()
            .collect();
        let revoke = revokes.iter().find(|r| r.load.round == round);
        if args.rounds > 1 {
            println!("round {}:", round + 1);
        }
        println!("{}", report::ratios(&these));
        if let Some(r) = revoke {
            println!("{}", scenarios::describe_revoke(r));
        }
        // Saturation is searched once, after the rounds.
        let last = round + 1 == args.rounds;
        let v = report::budgets(&these, revoke, if last { &saturation } else { &[] });
        for v in &v {
            println!("{v}");
        }
        verdicts.push(v);
    }
    for s in &saturation {
        println!(
            "saturation {:<17} highest clean {:>7}/s (first failing: {})",
            s.path,
            s.highest_clean_rate,
            s.first_failing_rate
                .map_or("none reached".into(), |r| format!("{r}/s"))
        );
    }
    if args.rounds > 1 {
        println!("\n{}", report::over_rounds(&verdicts));
    }
    for f in &failures {
        println!("FAILED: {f}");
    }
    write_json(
        args,
        &bin,
        bin_bytes,
        &results,
        &revokes,
        &saturation,
        &verdicts,
        &failures,
    )
}

async fn measure_one(
    kind: PathKind,
    opts: &RigOpts,
    rate: f64,
    args: &Args,
) -> Result<report::StepResult, String> {
    let mut rig = Rig::start(kind, opts).await?;
    rig.step(rate, args.warmup, args.duration).await
}

#[allow(clippy::too_many_arguments)]
fn write_json(
    args: &Args,
    bin: &std::path::Path,
    bin_bytes: u64,
    results: &[report::StepResult],
    revokes: &[report::RevokeResult],
    saturation: &[report::Saturation],
    verdicts: &[Vec<report::Verdict>],
    failures: &[String],
) -> Result<(), String> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let path = dir.join("relay_load.json");
    let doc = serde_json::json!({
        "mode": if args.quick { "quick" } else { "full" },
        "machine": { "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0) },
        "binary": { "path": bin.display().to_string(), "bytes": bin_bytes },
        "warmup_s": args.warmup.as_secs_f64(),
        "broker_nodelay": args.broker_nodelay,
        "rounds": args.rounds,
        "results": results,
        "revoke": revokes,
        "saturation": saturation,
        "budgets": verdicts,
        "failures": failures,
    });
    let text = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?;
    std::fs::write(&path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
    println!("relay_load: wrote {}", path.display());
    if failures.is_empty() {
        Ok(())
    } else {
        Err(format!("{} part(s) failed", failures.len()))
    }
}
