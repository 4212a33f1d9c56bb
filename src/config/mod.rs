//! Configuration: TOML file + `HEARTHLINK__*` environment -> validated [`Config`].
//!
//! Layers, lowest first: built-in defaults (the `Raw*` structs' `Default`
//! impls), the TOML file, environment overrides (protocol 8.14). The
//! `config` crate merges file and overrides. Environment variables are
//! parsed here rather than by `config::Environment`, because that source
//! guesses types ("007" becomes the number 7) and cannot name an unknown
//! variable; each known variable becomes one `set_override`.
//!
//! Loading runs three passes, and every error names the dotted key:
//! 1. `check_tree`: unknown keys, value types and integer ranges, against
//!    `schema::SCHEMA` (the single list of keys; [`all_keys`] reads it).
//! 2. serde into the `Raw*` structs (`deny_unknown_fields`, named
//!    defaults). Pass 1 makes this infallible; it stays strict as a backstop.
//! 3. `validate`: meaning (URL, topic filters, files named by the config)
//!    into [`Config`]. The `Option`s left in `Config` mean "feature off",
//!    never "not validated yet".
//!
//! Nothing here logs: warnings go back in [`Loaded`] for the caller
//! (`run` logs them, `check-config` prints them). The only I/O is reading
//! the config file and the token, password and CA files it names. Paths are
//! used as given (relative ones resolve against the working directory,
//! which earns a warning).
//!
//! Files: `schema` (the key table and pass 1), `env` (the environment
//! layer), `raw` (the serde form and its defaults), `validate` (pass 3).

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::privacy::{key_forms, Policy};
use crate::topic::validate_filter;
use config::{Map, Value, ValueKind};
use serde::Deserialize;

mod env;
mod raw;
mod schema;
#[cfg(test)]
mod tests;
mod validate;

use env::*;
use raw::*;
pub use schema::all_keys;
use schema::*;
use validate::*;

/// Where `hearthlink` looks when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/hearthlink/hearthlink.toml";

const ENV_PREFIX: &str = "HEARTHLINK__";
const MIB: i64 = 1024 * 1024;
/// Upper bound for token and password files: a bigger file is the wrong file.
const SECRET_FILE_MAX: u64 = 64 * 1024;
/// Upper bound for a CA bundle.
const CA_FILE_MAX: u64 = 16 * 1024 * 1024;
/// `sun_path` holds 108 bytes including the terminating NUL (protocol 8.16).
const MAX_SOCKET_PATH: usize = 107;

// ---------------------------------------------------------------- public types

/// A loaded config plus what the operator should hear about.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    /// Suspicious but workable settings, one sentence each, naming the key.
    pub warnings: Vec<String>,
}

/// Why a config cannot be used. `run` and `check-config` exit 2 on any.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A key is missing, unknown, of the wrong type or out of range.
    #[error("config key `{key}`: {message}")]
    Invalid { key: String, message: String },
    /// The config file itself cannot be read.
    #[error("reading config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("parsing config file {}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
}

impl ConfigError {
    /// The dotted key at fault, when one is.
    pub fn key(&self) -> Option<&str> {
        match self {
            Self::Invalid { key, .. } => Some(key),
            Self::Read { .. } | Self::Parse { .. } => None,
        }
    }
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        message: message.into(),
    }
}

/// A secret string; `Debug` and `Display` print `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// The validated configuration. See docs/config.md for every key.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// 1 to 64 characters of `A-Za-z0-9._-`; sent in `hello`.
    pub gateway_id: String,
    /// Where links and audit files are persisted.
    pub state_dir: PathBuf,
    /// Log filter (`info`, `debug`, `hearthlink=debug,info`); `RUST_LOG`
    /// wins when set. Applied again on reload.
    pub log_level: String,
    /// Local control socket; at most 107 bytes.
    pub control_socket: PathBuf,
    pub mqtt: MqttConfig,
    pub cloud: CloudConfig,
    pub relay: RelayConfig,
    pub privacy: PrivacyConfig,
    pub limits: LimitsConfig,
    pub audit: AuditConfig,
    pub metrics: MetricsConfig,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MqttConfig {
    pub broker: BrokerAddr,
    pub client_id: String,
    pub username: Option<String>,
    /// Read from `password_file` at load, line ending removed.
    pub password: Option<Secret>,
    pub password_file: Option<PathBuf>,
    /// Valid topic filters, at least one.
    pub subscribe: Vec<String>,
    pub qos: u8,
    pub keep_alive_s: u64,
}

/// Where the local broker listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerAddr {
    /// `mqtt.host` and `mqtt.port` (default `127.0.0.1:1883`).
    Tcp { host: String, port: u16 },
    /// `mqtt.socket` (Mosquitto: `listener 0 PATH`), exclusive with
    /// `mqtt.host` and `mqtt.port`.
    Unix(PathBuf),
}

/// For messages: `host:port`, or `unix:PATH`.
impl fmt::Display for BrokerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BrokerAddr::Tcp { host, port } => write!(f, "{host}:{port}"),
            BrokerAddr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct CloudConfig {
    /// `wss://`, or `ws://` only with `allow_insecure`.
    pub url: url::Url,
    /// Readable and non-empty at load; read again at each connect.
    pub token_file: PathBuf,
    /// Readable and holding at least one PEM certificate.
    pub ca_file: Option<PathBuf>,
    /// SHA-256 hashes of the server's SubjectPublicKeyInfo.
    pub pin_sha256: Vec<[u8; 32]>,
    pub allow_insecure: bool,
    pub heartbeat_s: u64,
    pub max_backoff_s: u64,
    pub max_frame_bytes: usize,
    /// Offline buffer capacity, in (audience, topic) entries.
    pub buffer_topics: usize,
    /// Bytes the offline buffer, and apart from it the `sync` memory, may
    /// hold.
    pub buffer_bytes: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RelayConfig {
    /// Valid topic filters; empty means the app may send no command.
    pub command_topics: Vec<String>,
    pub max_payload_bytes: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PrivacyConfig {
    pub mode: PrivacyMode,
    /// The configured keys, as written. They extend
    /// [`crate::privacy::DEFAULT_STRIP_KEYS`], which [`Policy::new`] adds.
    pub strip_keys: Vec<String>,
    /// As written; [`Policy::new`] normalises both lists.
    pub allow_keys: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrivacyMode {
    #[default]
    Deny,
    Allow,
}

/// Per-source command rate limit (protocol 8.7).
#[derive(Debug, Clone, PartialEq)]
pub struct LimitsConfig {
    /// Positive and finite.
    pub commands_per_second: f64,
    pub command_burst: u32,
    /// Connections the metrics endpoint and the control socket each serve
    /// at once (edge rule 22).
    pub max_connections: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AuditConfig {
    pub retention_days: u32,
    /// The audit file is rotated once it grows past this.
    pub max_file_bytes: u64,
    /// Rotated files kept.
    pub max_files: u32,
    /// Disclosure counts are written at least this often (seconds).
    pub flush_s: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MetricsConfig {
    /// `None`: no metrics endpoint.
    pub listen: Option<SocketAddr>,
}

// ------------------------------------------------------------------- entry points

/// Loads defaults < TOML file < environment (`HEARTHLINK__SECTION__KEY`),
/// validates. Warnings (e.g. token file readable by others, key both
/// allowed and stripped) are returned, not logged.
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    load_with_env(path, process_env()?)
}

/// Same, with an explicit environment (tests pass their own).
pub fn load_with_env(
    path: &Path,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Loaded, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    build(&text, path, env)
}

/// Same, from TOML text (no file): the built-in demo and tests.
pub fn from_toml_str(
    toml: &str,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Loaded, ConfigError> {
    build(toml, Path::new("(inline TOML)"), env)
}

fn build(
    text: &str,
    origin: &Path,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Loaded, ConfigError> {
    let mut warnings = Vec::new();
    let env = env_layer(env, &mut warnings)?;
    let name_env_var = |e: ConfigError| match e {
        ConfigError::Invalid { key, message } => match env.origins.get(key.as_str()) {
            Some(var) => ConfigError::Invalid {
                message: format!("{message} (set by environment variable `{var}`)"),
                key,
            },
            None => ConfigError::Invalid { key, message },
        },
        other => other,
    };
    let tree = merge(text, origin, &env)?;
    check_tree(&tree).map_err(name_env_var)?;
    let raw = Value::new(None, ValueKind::Table(tree))
        .try_deserialize::<RawConfig>()
        .map_err(serde_backstop)?;
    let config = validate(raw, &mut warnings).map_err(name_env_var)?;
    Ok(Loaded { config, warnings })
}

/// The control socket a config names, read without the checks that need
/// other files (the token): `status` finds a running daemon even when the
/// config would not load for a new start. `None` when even that fails.
pub fn control_socket_of(path: &Path) -> Option<PathBuf> {
    let text = std::fs::read_to_string(path).ok()?;
    let env = env_layer(process_env().ok()?, &mut Vec::new()).ok()?;
    let tree = merge(&text, path, &env).ok()?;
    let raw = Value::new(None, ValueKind::Table(tree))
        .try_deserialize::<RawConfig>()
        .ok()?;
    Some(
        raw.control_socket
            .unwrap_or_else(|| raw.state_dir.join("control.sock")),
    )
}

/// Unreachable while `SCHEMA` and the `Raw*` structs agree (a unit test
/// holds them to it); still an error naming what it can, never a panic.
fn serde_backstop(e: config::ConfigError) -> ConfigError {
    let key = match &e {
        config::ConfigError::Type { key: Some(key), .. } => key.clone(),
        _ => "(root)".to_owned(),
    };
    invalid(
        &key,
        format!("{e} (the key table and the parser disagree: please report this)"),
    )
}

/// The process environment, refusing our own variables when not UTF-8
/// (`std::env::vars` would panic on them).
fn process_env() -> Result<Vec<(String, String)>, ConfigError> {
    let mut out = Vec::new();
    for (name, value) in std::env::vars_os() {
        let lossy = name.to_string_lossy().to_ascii_uppercase();
        let ours = lossy.starts_with(ENV_PREFIX);
        match (name.into_string(), value.into_string()) {
            (Ok(name), Ok(value)) => out.push((name, value)),
            _ if ours => {
                let key = lossy[ENV_PREFIX.len()..]
                    .to_ascii_lowercase()
                    .replace("__", ".");
                return Err(invalid(
                    &key,
                    format!("environment variable `{lossy}` is not valid UTF-8"),
                ));
            }
            _ => {}
        }
    }
    Ok(out)
}
