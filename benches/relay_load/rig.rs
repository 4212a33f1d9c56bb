//! One path under test, set up from nothing and torn down on drop, and the
//! measured step run on it.
//!
//! A [`Rig`] owns the path's child processes, its tempdir (configs,
//! certificates, logs, hearthlink's state_dir), the load generator and the
//! receiving end. [`Rig::step`] runs one schedule and turns what the
//! [`Recorder`] saw and what `/proc` says into a [`StepResult`].

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, QoS};
use tempfile::TempDir;

use crate::certs::Certs;
use crate::load::{self, now_ns, Gen, Schedule, Sent};
use crate::procs::{self, Proc};
use crate::record::{Percentiles, Recorder, Window};
use crate::report::{IdleMem, ProcStat, StepResult};
use crate::sink::Sink;

/// The paths the bench knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    Direct,
    Bridge {
        qos: u8,
    },
    /// hearthlink through the broker's Unix socket (`mqtt.socket`, the
    /// recommended setup when the broker runs on the gateway).
    Up,
    /// The same over loopback TCP (`mqtt.host`, `mqtt.port`).
    UpTcp,
    Down,
    Links,
    /// The naive relay (see [`crate::naive`]) in hearthlink's place.
    Naive,
    /// The floor relay (see [`crate::floor`]) in hearthlink's place.
    Floor,
}

impl PathKind {
    pub const ALL: [PathKind; 9] = [
        PathKind::Direct,
        PathKind::Bridge { qos: 0 },
        PathKind::Bridge { qos: 1 },
        PathKind::Up,
        PathKind::UpTcp,
        PathKind::Down,
        PathKind::Links,
        PathKind::Naive,
        PathKind::Floor,
    ];

    pub fn name(self) -> &'static str {
        match self {
            PathKind::Direct => "direct",
            PathKind::Bridge { qos: 0 } => "bridge-q0",
            PathKind::Bridge { .. } => "bridge-q1",
            PathKind::Up => "hearthlink-up",
            PathKind::UpTcp => "hearthlink-up-tcp",
            PathKind::Down => "hearthlink-down",
            PathKind::Links => "hearthlink-links",
            PathKind::Naive => "naive-relay",
            PathKind::Floor => "floor-relay",
        }
    }
}

/// What every rig needs from the command line.
#[derive(Debug, Clone)]
pub struct RigOpts {
    pub bin: PathBuf,
    pub payload: usize,
    /// Quiet topics beside the 100 busy ones (`load::topic`).
    pub quiet_topics: u64,
    pub links: usize,
    pub clk_tck: u64,
}

pub struct Rig {
    pub kind: PathKind,
    procs: Vec<Proc>,
    rec: Arc<Mutex<Recorder>>,
    pub gen: Gen,
    pub sink: Option<Sink>,
    _clients: Vec<AsyncClient>,
    next_seq: u64,
    idle: Option<IdleMem>,
    opts: RigOpts,
    _dir: TempDir,
}

/// The window of a step in progress.
pub struct Begun {
    pub s: Schedule,
    pub seq0: u64,
    measure: Duration,
    cpu0: tokio::task::JoinHandle<Vec<u64>>,
}

const STARTUP: Duration = Duration::from_secs(20);

impl Rig {
    /// Starts every process of `kind` and waits until a probe message
    /// goes all the way through.
    pub async fn start(kind: PathKind, opts: &RigOpts) -> Result<Rig, String> {
        let dir = tempfile::Builder::new()
            .prefix("hl-bench")
            .tempdir()
            .map_err(|e| format!("tempdir: {e}"))?;
        let d = dir.path();
        let rec = Arc::new(Mutex::new(Recorder::default()));
        let probes = Arc::new(AtomicU64::new(0));
        let mut procs = Vec::new();
        let mut clients = Vec::new();
        let mut sink = None;
        let mut idle = None;
        let id = |role: &str| format!("bench-{role}-{}", now_ns() % 1_000_000_007);
        let gen = match kind {
            PathKind::Direct | PathKind::Bridge { .. } => {
                let (pub_port, sub_port, qos) = if let PathKind::Bridge { qos } = kind {
                    let certs = Certs::generate(d)?;
                    let port = || procs::free_port().map_err(io);
                    let (a, b_plain, b_tls) = (port()?, port()?, port()?);
                    let conf_b =
                        procs::tls_broker_conf(b_plain, b_tls, &certs.cert_file, &certs.key_file);
                    procs.push(procs::mosquitto(d, "mosquitto-b", b_tls, &conf_b)?);
                    let conf_a = procs::bridging_broker_conf(a, b_tls, &certs.ca_file, qos);
                    procs.push(procs::mosquitto(d, "mosquitto-a", a, &conf_a)?);
                    (a, b_plain, qos)
                } else {
                    let p = procs::free_port().map_err(io)?;
                    procs.push(procs::mosquitto(
                        d,
                        "mosquitto",
                        p,
                        &procs::plain_broker_conf(p),
                    )?);
                    (p, p, 0)
                };
                let q = to_qos(qos);
                let sub = load::subscriber(
                    &id("sub"),
                    sub_port,
                    "bench/#",
                    q,
                    rec.clone(),
                    probes.clone(),
                )
                .await?;
                clients.push(sub);
                let client = load::publisher(&id("pub"), pub_port);
                load::probe(&client, &probes, STARTUP).await?;
                Gen::Mqtt {
                    client,
                    qos: q,
                    size: opts.payload,
                    quiet: opts.quiet_topics,
                }
            }
            PathKind::Up
            | PathKind::UpTcp
            | PathKind::Down
            | PathKind::Links
            | PathKind::Naive
            | PathKind::Floor => {
                let certs = Certs::generate(d)?;
                let p = procs::free_port().map_err(io)?;
                // hearthlink and the floor relay reach the broker through
                // its Unix socket, except on the TCP path; the publisher,
                // the subscriber and the naive relay always use TCP.
                let socket = match kind {
                    PathKind::UpTcp | PathKind::Naive => None,
                    _ => Some(d.join("mqtt.sock")),
                };
                let mut conf = procs::plain_broker_conf(p);
                if let Some(path) = &socket {
                    conf.push_str(&procs::socket_listener_conf(path));
                }
                procs.push(procs::mosquitto(d, "mosquitto", p, &conf)?);
                let s = Sink::start(certs.acceptor()?, rec.clone(), probes.clone()).await?;
                let setup = procs::HearthlinkSetup {
                    dir: d,
                    mqtt_port: p,
                    mqtt_socket: socket.as_deref(),
                    cloud_port: s.port,
                    ca_file: &certs.ca_file,
                    token: &s.token,
                };
                procs.push(match kind {
                    PathKind::Naive => procs::naive_relay(&setup)?,
                    PathKind::Floor => procs::floor_relay(&setup)?,
                    _ => procs::hearthlink(&opts.bin, &setup)?,
                });
                if let Err(e) = s.wait_hello(STARTUP).await {
                    return Err(hearthlink_failed(&mut procs, e));
                }
                let gen = if kind == PathKind::Down {
                    let sub = load::subscriber(
                        &id("sub"),
                        p,
                        "ampio/to/#",
                        QoS::AtLeastOnce,
                        rec.clone(),
                        probes.clone(),
                    )
                    .await?;
                    clients.push(sub);
                    s.command_probe(STARTUP)
                        .await
                        .map_err(|e| hearthlink_failed(&mut procs, e))?;
                    Gen::Commands { tx: s.writer()? }
                } else {
                    let client = load::publisher(&id("pub"), p);
                    load::probe(&client, &probes, STARTUP)
                        .await
                        .map_err(|e| hearthlink_failed(&mut procs, e))?;
                    Gen::Mqtt {
                        client,
                        qos: QoS::AtMostOnce,
                        size: opts.payload,
                        quiet: opts.quiet_topics,
                    }
                };
                tokio::time::sleep(Duration::from_millis(300)).await;
                if !matches!(kind, PathKind::Naive | PathKind::Floor) {
                    idle = procs.last().map(Proc::idle_mem);
                }
                if kind == PathKind::Links {
                    s.add_links(opts.links).await?;
                    if let Ok(mut r) = rec.lock() {
                        r.expect_links = opts.links.min(127) as u8;
                    }
                }
                sink = Some(s);
                gen
            }
        };
        Ok(Rig {
            kind,
            procs,
            rec,
            gen,
            sink,
            _clients: clients,
            next_seq: 1,
            idle,
            opts: opts.clone(),
            _dir: dir,
        })
    }

    fn pids(&self) -> Vec<u32> {
        let mut p: Vec<u32> = self.procs.iter().map(Proc::pid).collect();
        p.push(std::process::id());
        p
    }

    /// Arms the recorder and the CPU sample at the start of the window.
    pub fn begin(&mut self, rate: f64, warmup: Duration, measure: Duration) -> Begun {
        let s = Schedule::new(rate, now_ns() + 100_000_000, warmup, measure);
        let seq0 = self.next_seq;
        self.next_seq += s.total() + 1;
        if let Ok(mut r) = self.rec.lock() {
            r.arm(Window {
                base_seq: seq0,
                slots: s.total() as usize + 1,
                from_ns: s.measure_from,
                to_ns: s.end_ns(),
            });
            if self.kind == PathKind::Down {
                r.commands = Some((s, seq0));
            }
        }
        let names: Vec<String> = self
            .procs
            .iter()
            .map(|p| format!("{}={}", p.name, p.pid()))
            .collect();
        eprintln!(
            "relay_load: {} at {rate}/s: {:.1} s warm-up, then {:.1} s measured ({})",
            self.kind.name(),
            warmup.as_secs_f64(),
            measure.as_secs_f64(),
            names.join(" ")
        );
        let pids = self.pids();
        let wait = Duration::from_nanos(s.measure_from.saturating_sub(now_ns()));
        let cpu0 = tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            pids.iter()
                .map(|p| procs::cpu_ticks(*p).unwrap_or(0))
                .collect()
        });
        Begun {
            s,
            seq0,
            measure,
            cpu0,
        }
    }

    /// Runs one whole step: schedule, drain, figures.
    pub async fn step(
        &mut self,
        rate: f64,
        warmup: Duration,
        measure: Duration,
    ) -> Result<StepResult, String> {
        let b = self.begin(rate, warmup, measure);
        let sent = self
            .gen
            .drive(&b.s, b.seq0)
            .await
            .map_err(|e| e.to_string())?;
        self.finish(b, sent, true).await
    }

    /// Waits for the stragglers (at most 3 s), then reads everything.
    pub async fn finish(
        &mut self,
        b: Begun,
        sent: Sent,
        want_fanout: bool,
    ) -> Result<StepResult, String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        let expect_links = self
            .rec
            .lock()
            .map(|r| u64::from(r.expect_links))
            .unwrap_or(0);
        while tokio::time::Instant::now() < deadline {
            let done = self.rec.lock().map(|r| {
                let links_done = !want_fanout || r.link_frames >= sent.measured * expect_links;
                let acks_done =
                    self.kind != PathKind::Down || r.acks_ok + r.acks_rejected >= sent.measured;
                r.delivered >= sent.measured && links_done && acks_done
            });
            if done.unwrap_or(true) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let window_s = (now_ns().saturating_sub(b.s.measure_from)) as f64 / 1e9;
        let cpu0 = b.cpu0.await.map_err(|e| format!("cpu sampler: {e}"))?;
        let pids = self.pids();
        let cpu1: Vec<u64> = pids
            .iter()
            .map(|p| procs::cpu_ticks(*p).unwrap_or(0))
            .collect();
        for p in &mut self.procs {
            p.check_alive()?;
        }
        let tck = self.opts.clk_tck as f64;
        let per10k = |i: usize| {
            let secs = cpu1[i].saturating_sub(cpu0[i]) as f64 / tck;
            (
                secs / (sent.measured.max(1) as f64) * 10_000.0,
                secs / window_s * 100.0,
            )
        };
        let procs = self
            .procs
            .iter()
            .enumerate()
            .map(|(i, p)| ProcStat {
                name: p.name.clone(),
                cpu_s_per_10k: per10k(i).0,
                cpu_pct: per10k(i).1,
                hwm_kb: p.hwm_kb(),
            })
            .collect();
        let bench_cpu_pct = per10k(pids.len() - 1).1;
        let mut r = self
            .rec
            .lock()
            .map_err(|_| "recorder poisoned".to_owned())?;
        let links = self.kind == PathKind::Links;
        let down = self.kind == PathKind::Down;
        let result = StepResult {
            round: 0,
            path: self.kind.name().to_owned(),
            rate: b.s.rate,
            measured_s: b.measure.as_secs_f64(),
            payload_bytes: if down { 0 } else { self.opts.payload },
            quiet_topics: if down { 0 } else { self.opts.quiet_topics },
            links: if links { self.opts.links } else { 0 },
            sent: sent.measured,
            delivered: r.delivered,
            lost: sent.measured.saturating_sub(r.delivered),
            duplicates: r.duplicates,
            latency_us: Percentiles::of(&r.lat),
            achieved_rate: r.delivered as f64 / b.measure.as_secs_f64(),
            ack_latency_us: down.then(|| Percentiles::of(&r.ack_lat)),
            acks_rejected: down.then_some(r.acks_rejected),
            fanout_latency_us: links.then(|| Percentiles::of(&r.fanout_lat)),
            link_frames: links.then_some(r.link_frames),
            link_frames_expected: (links && want_fanout).then_some(sent.measured * expect_links),
            privacy_leaks: links.then_some(r.leaks),
            procs,
            error_frames: self.sink.as_ref().map(|s| s.counts().1),
            bench_cpu_pct,
            loadavg: procs::loadavg(),
            hearthlink_idle: self.idle,
        };
        r.disarm();
        Ok(result)
    }

    /// The recorder, for the revocation test.
    pub fn recorder(&self) -> &Arc<Mutex<Recorder>> {
        &self.rec
    }
}

impl Drop for Rig {
    /// Stops the processes in reverse order of start: the daemon before
    /// its broker.
    fn drop(&mut self) {
        while let Some(p) = self.procs.pop() {
            drop(p);
        }
    }
}

fn io(e: std::io::Error) -> String {
    format!("free port: {e}")
}

fn to_qos(q: u8) -> QoS {
    if q == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    }
}

fn hearthlink_failed(procs: &mut [Proc], e: String) -> String {
    let tail = procs
        .iter_mut()
        .find(|p| p.name == "hearthlink")
        .map(|p| p.check_alive().err().unwrap_or_else(|| p.log_tail(15)))
        .unwrap_or_default();
    format!("{e}; hearthlink log tail:\n{tail}")
}
