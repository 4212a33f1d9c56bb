//! hearthlink: a home-automation gateway bridge.
//!
//! # Layout
//! - [`config`]: file + environment into a validated [`config::Config`].
//! - [`protocol`]: the frames of `docs/protocol.md`, decoded and encoded.
//! - [`cloud`]: the task owning the outbound TLS websocket.
//! - [`mqtt`]: the task owning the broker connection.
//! - [`relay`]: the task routing between the two; its sub-modules are the
//!   pure decision core (command checks, idempotency, coalescing).
//! - [`privacy`]: the pure filter applied to every frame for an assistant.
//! - [`links`]: the link registry (lock-free snapshot) and its persistence;
//!   [`tombstones`]: the revoked ids' append-only log.
//! - [`audit`]: the task owning the audit trail, and its export.
//! - [`control`]: the local control socket and its command-line client.
//! - [`statefile`]: every open of a file in `state_dir`, never through a link.
//! - [`limits`], [`topic`], [`backoff`], [`clock`], [`durable`], [`slots`],
//!   [`stats`], [`gate`]:
//!   small helpers.
//!
//! [`run`] wires the tasks together; `main.rs` only parses arguments.
//!
//! # Tasks and channels
//! ```text
//!  broker ──mqtt task──(Incoming, bounded, waits)──► relay task ══(OutFrame: priority + state, bounded, try_send)══► cloud task ── websocket
//!                ▲                                       ▲   ▲                                       │
//!                └──────── MqttHandle (publish) ─────────┘   └──────── CloudEvent (bounded) ─────────┘
//!  control socket task ── ControlRequest ──► relay         link store task ◄── persist ── relay
//!  audit task ◄── records ── relay, cloud
//! ```
//! One [`CancellationToken`] stops them all; [`run`] joins them under a
//! deadline.

pub mod admit;
pub mod audit;
pub mod backoff;
pub mod broker_log;
pub mod clock;
pub mod cloud;
pub mod config;
pub mod control;
pub mod durable;
pub mod gate;
pub mod init;
pub mod limits;
pub mod links;
pub mod metrics;
pub mod mqtt;
pub mod notify;
pub mod privacy;
pub mod probe;
pub mod protocol;
pub mod relay;
pub mod reload;
pub mod slots;
pub mod statefile;
pub mod stats;
pub mod tombstones;
pub mod topic;

#[cfg(feature = "demo")]
pub mod demo;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
pub use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// How long [`run`] waits for its tasks after the token is cancelled.
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(4);

/// Errors that stop the daemon.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("creating state_dir {path}: {source}")]
    StateDir {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Links(#[from] links::LinksError),
    #[error(transparent)]
    Control(#[from] control::ControlError),
    #[error(transparent)]
    Metrics(#[from] metrics::MetricsError),
}

/// How the daemon is embedded: what `run` may do beyond relaying.
#[derive(Clone, Default)]
pub struct Options {
    /// Reads the configuration again on reload; `None` refuses reloads.
    pub reload: Option<reload::Loader>,
    /// Applies `log_level` (at start and on reload).
    pub set_log_level: Option<reload::LogSetter>,
    /// Listen for SIGHUP (the binary does; embedded tests use the socket).
    pub sighup: bool,
}

/// Runs the daemon until `token` is cancelled.
pub async fn run(config: Config, token: CancellationToken) -> Result<(), Error> {
    run_with(config, Options::default(), token).await
}

/// [`run`] with reload and logging hooks.
pub async fn run_with(
    config: Config,
    opts: Options,
    token: CancellationToken,
) -> Result<(), Error> {
    let state_dir = config.state_dir.clone();
    create_state_dir(&state_dir)?;
    let _lock = links::StateLock::try_acquire(&state_dir)?;
    let (links_store, links_file) = links::Store::open(&state_dir)?;
    let registry = Arc::new(links::Registry::from_file(links_file)?);
    let clock = Arc::new(clock::Clock::default());
    let stats = Arc::new(stats::Stats::default());
    let started = std::time::Instant::now();
    let notifier = notify::Notifier::from_env();
    notifier.status("configuration valid; connecting to the broker");

    // Tasks that others feed stop last, on their own token.
    let sinks = CancellationToken::new();
    let mut sink_tasks = JoinSet::new();
    let (audit, audit_task) = audit::spawn(&state_dir, &config.audit, sinks.clone());
    sink_tasks.spawn(audit_task);
    let (store, store_task) = relay::spawn_store(links_store, registry.clone(), sinks.clone());
    sink_tasks.spawn(store_task);

    let (mqtt_tx, mqtt_rx) = mpsc::channel(1024);
    let (cloud_tx, cloud_rx) = mpsc::channel(256);
    let (control_tx, control_rx) = mpsc::channel(64);
    let (reload_tx, reload_rx) = mpsc::channel(4);
    let (out_tx, out_rx) = mpsc::channel(relay::OUTBOX_CAPACITY);
    let (prio_tx, prio_rx) = mpsc::channel(relay::PRIORITY_CAPACITY);
    let (settings_tx, settings_rx) = watch::channel(relay_settings(&config));
    let (cloud_cfg_tx, cloud_cfg_rx) = watch::channel(config.cloud.clone());
    let (mqtt_cfg_tx, mqtt_cfg_rx) = watch::channel(config.mqtt.clone());
    let progress = Arc::new(notify::Progress::default());

    let (mqtt, mqtt_task) = mqtt::spawn(
        mqtt::Wiring {
            cfg: mqtt_cfg_rx,
            status: Some(mqtt::StatusTopic {
                topic: format!("hearthlink/{}/status", config.gateway_id),
            }),
            clock: clock.clone(),
            stats: stats.clone(),
            notifier: notifier.clone(),
            to_relay: mqtt_tx,
        },
        token.clone(),
    );
    let listener = control::bind(&config.control_socket)?;
    let metrics_listener = match config.metrics.listen {
        Some(addr) => Some(metrics::bind(addr).await?),
        None => None,
    };

    let mut tasks = JoinSet::new();
    tasks.spawn(mqtt_task);
    tasks.spawn(cloud::run(
        cloud::Wiring {
            gateway_id: config.gateway_id.clone(),
            cfg: config.cloud.clone(),
            cfg_rx: cloud_cfg_rx,
            notifier: notifier.clone(),
            registry: registry.clone(),
            clock: clock.clone(),
            stats: stats.clone(),
            audit: audit.clone(),
            audit_every: Duration::from_secs(config.audit.flush_s),
            audit_max_bytes: config.audit.max_file_bytes,
            to_relay: cloud_tx,
            priority: prio_rx,
            outbox: out_rx,
        },
        token.clone(),
    ));
    tasks.spawn(relay::run(
        relay::Wiring {
            settings: settings_rx,
            progress: progress.clone(),
            registry: registry.clone(),
            clock: clock.clone(),
            stats: stats.clone(),
            mqtt,
            outbox: out_tx,
            priority: prio_tx,
            from_mqtt: mqtt_rx,
            from_cloud: cloud_rx,
            from_control: control_rx,
            store,
            audit,
        },
        token.clone(),
    ));
    if let Some(l) = metrics_listener {
        tasks.spawn(metrics::serve(
            l,
            admit::Admit::new("metrics", config.limits.max_connections),
            stats.clone(),
            registry.clone(),
            token.clone(),
        ));
    }
    tasks.spawn(control::serve(
        listener,
        admit::Admit::new("control socket", config.limits.max_connections),
        control::Shared {
            registry,
            stats,
            clock,
            started,
            gateway_id: config.gateway_id.clone(),
            relay: control_tx,
            reload: reload_tx,
        },
        token.clone(),
    ));
    if let Some(interval) = notify::watchdog_interval() {
        tasks.spawn(notify::watchdog(
            notifier.clone(),
            interval,
            progress,
            token.clone(),
        ));
    }
    if let (Some(set), None) = (&opts.set_log_level, std::env::var_os("RUST_LOG")) {
        if let Err(e) = set(&config.log_level) {
            tracing::warn!(error = %e, "log_level not applied");
        }
    }
    raise_descriptor_limit();
    let control_socket = config.control_socket.clone();
    tracing::info!(gateway_id = %config.gateway_id, state_dir = %state_dir.display(), "hearthlink running");
    tasks.spawn(reload::run(
        reload::Reloader {
            loader: opts.reload,
            log: opts.set_log_level,
            current: config,
            targets: reload::Targets {
                settings: settings_tx,
                cloud: cloud_cfg_tx,
                mqtt: mqtt_cfg_tx,
            },
        },
        reload_rx,
        opts.sighup,
        token.clone(),
    ));

    token.cancelled().await;
    notifier.notify("STOPPING=1");
    let deadline = tokio::time::Instant::now() + SHUTDOWN_DEADLINE;
    join_until(&mut tasks, deadline).await;
    sinks.cancel();
    join_until(&mut sink_tasks, deadline + Duration::from_millis(500)).await;
    let _ = std::fs::remove_file(&control_socket);
    tracing::info!("hearthlink stopped");
    Ok(())
}

/// The relay's per-message settings from the configuration.
pub fn relay_settings(config: &Config) -> relay::Settings {
    let p = &config.privacy;
    relay::Settings {
        command_topics: topic::FilterSet::new(config.relay.command_topics.iter().cloned())
            .unwrap_or_default(),
        max_payload_bytes: config.relay.max_payload_bytes,
        buffer_topics: config.cloud.buffer_topics,
        buffer_bytes: config.cloud.buffer_bytes,
        policy: Arc::new(privacy::Policy::new(
            to_mode(p.mode),
            &p.strip_keys,
            &p.allow_keys,
        )),
        commands_per_second: config.limits.commands_per_second,
        command_burst: config.limits.command_burst,
    }
}

fn to_mode(m: config::PrivacyMode) -> privacy::Mode {
    match m {
        config::PrivacyMode::Deny => privacy::Mode::Deny,
        config::PrivacyMode::Allow => privacy::Mode::Allow,
    }
}

async fn join_until(tasks: &mut JoinSet<()>, deadline: tokio::time::Instant) {
    loop {
        match tokio::time::timeout_at(deadline, tasks.join_next()).await {
            Ok(Some(Err(e))) if e.is_panic() => tracing::error!(error = %e, "a task panicked"),
            Ok(Some(_)) => {}
            Ok(None) => return,
            Err(_) => {
                tracing::warn!(
                    left = tasks.len(),
                    "tasks did not stop in time; aborting them"
                );
                tasks.abort_all();
                return;
            }
        }
    }
}

fn create_state_dir(dir: &std::path::Path) -> Result<(), Error> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| Error::StateDir {
            path: dir.display().to_string(),
            source,
        })
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (edge rule 22): the
/// default soft limit of 1024 is what systemd and most shells give.
fn raise_descriptor_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    let raised = unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max && {
            let soft = lim.rlim_cur;
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 || {
                lim.rlim_cur = soft;
                false
            }
        }
    };
    tracing::debug!(
        soft = lim.rlim_cur,
        hard = lim.rlim_max,
        raised,
        "descriptor limit"
    );
}
