//! Live reload (SIGHUP and `hearthlink reload`).
//!
//! The new configuration is loaded and validated first; an invalid one is
//! refused with the bad key named and the running one is kept. A valid one
//! is handed out through `watch` channels: the relay takes its settings
//! (privacy, limits, command topics, sizes) at the next message without
//! touching either link; the cloud and broker tasks reconnect only when
//! their own settings changed. The log filter is swapped in place. Token
//! and CA files need no reload: they are read again at every connect.

/// Caps the libraries that print secrets at their most verbose levels
/// (edge rule 23): tungstenite logs the whole upgrade request, with the
/// `Authorization: Bearer` header, at trace. This filter sits beside the
/// `log_level` / `RUST_LOG` one and is not reloaded, so no setting can
/// lift it.
pub fn secret_safe_levels() -> tracing_subscriber::filter::Targets {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    Targets::new()
        .with_default(LevelFilter::TRACE)
        .with_target("tungstenite", LevelFilter::DEBUG)
        .with_target("tokio_tungstenite", LevelFilter::DEBUG)
}

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::config::{CloudConfig, Config, ConfigError, Loaded, MqttConfig};
use crate::relay::Settings;

/// Reads the configuration again (from the file `run` was started with).
pub type Loader = Arc<dyn Fn() -> Result<Loaded, ConfigError> + Send + Sync>;
/// Applies a log filter.
pub type LogSetter = Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>;
/// Answer to one reload: the warnings of the new config, or why it was refused.
pub type Reply = oneshot::Sender<Result<Vec<String>, String>>;

/// Where reloaded settings go.
pub struct Targets {
    pub settings: watch::Sender<Settings>,
    pub cloud: watch::Sender<CloudConfig>,
    pub mqtt: watch::Sender<MqttConfig>,
}

/// The reload task's state.
pub struct Reloader {
    pub loader: Option<Loader>,
    pub log: Option<LogSetter>,
    pub current: Config,
    pub targets: Targets,
}

impl Reloader {
    /// Loads, validates and applies the configuration once.
    pub fn reload(&mut self) -> Result<Vec<String>, String> {
        let Some(loader) = &self.loader else {
            return Err("this daemon was started without a configuration file to reload".into());
        };
        let Loaded {
            config: new,
            mut warnings,
        } = loader().map_err(|e| {
            tracing::error!(error = %e, "reload refused; keeping the running configuration");
            e.to_string()
        })?;
        let fixed = [
            ("gateway_id", new.gateway_id != self.current.gateway_id),
            ("state_dir", new.state_dir != self.current.state_dir),
            (
                "control_socket",
                new.control_socket != self.current.control_socket,
            ),
            ("audit", new.audit != self.current.audit),
            ("metrics", new.metrics != self.current.metrics),
            (
                "limits.max_connections",
                new.limits.max_connections != self.current.limits.max_connections,
            ),
        ];
        for (key, changed) in fixed {
            if changed {
                warnings.push(format!(
                    "{key} changed: it takes effect at the next restart"
                ));
            }
        }
        self.targets
            .settings
            .send_replace(crate::relay_settings(&new));
        self.targets
            .cloud
            .send_if_modified(|c| replace_if_changed(c, &new.cloud));
        self.targets
            .mqtt
            .send_if_modified(|m| replace_if_changed(m, &new.mqtt));
        if new.log_level != self.current.log_level && std::env::var_os("RUST_LOG").is_none() {
            if let Some(set) = &self.log {
                if let Err(e) = set(&new.log_level) {
                    warnings.push(format!("log_level not applied: {e}"));
                }
            }
        }
        for w in &warnings {
            tracing::warn!("{w}");
        }
        tracing::info!("configuration reloaded");
        self.current = new;
        Ok(warnings)
    }
}

fn replace_if_changed<T: PartialEq + Clone>(slot: &mut T, new: &T) -> bool {
    if slot == new {
        return false;
    }
    *slot = new.clone();
    true
}

/// Serves reload requests (control socket) and, when `sighup`, SIGHUP.
pub async fn run(
    mut r: Reloader,
    mut requests: mpsc::Receiver<Reply>,
    sighup: bool,
    token: CancellationToken,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = if sighup {
        match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP; use `hearthlink reload`");
                None
            }
        }
    } else {
        None
    };
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            Some(reply) = requests.recv() => {
                let _ = reply.send(r.reload());
            }
            Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                tracing::info!("SIGHUP: reloading the configuration");
                let _ = r.reload();
            }
        }
    }
}
