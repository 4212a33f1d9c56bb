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
//!    [`SCHEMA`] (the single list of keys; [`all_keys`] reads it).
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
//! which earns a warning). The file runs past the style guide's 400 lines
//! because the schema, the three passes and their tests belong together.

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::privacy::{normalize_key, Policy};
use crate::topic::validate_filter;
use config::{Map, Value, ValueKind};
use serde::Deserialize;

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

/// The value type of a key, used to check TOML values and parse env values.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// A non-empty string (also paths and URLs).
    Str,
    /// A string that may be left out; an empty env value unsets it.
    OptStr,
    /// One of the listed strings, exactly.
    OneOf(&'static [&'static str]),
    Bool,
    /// An integer in the inclusive range.
    Int(i64, i64),
    /// A number; integers are accepted.
    Num,
    /// A list of strings; comma-separated in the environment.
    List,
}

/// Every key, in documentation order. Sections are the prefixes before `.`.
const SCHEMA: &[(&str, Kind)] = &[
    ("gateway_id", Kind::Str),
    ("state_dir", Kind::Str),
    ("control_socket", Kind::OptStr),
    ("log_level", Kind::Str),
    ("mqtt.host", Kind::Str),
    ("mqtt.port", Kind::Int(1, 65535)),
    ("mqtt.client_id", Kind::OptStr),
    ("mqtt.username", Kind::OptStr),
    ("mqtt.password_file", Kind::OptStr),
    ("mqtt.subscribe", Kind::List),
    ("mqtt.qos", Kind::Int(0, 2)),
    ("mqtt.keep_alive_s", Kind::Int(5, 3600)),
    ("cloud.url", Kind::Str),
    ("cloud.token_file", Kind::Str),
    ("cloud.ca_file", Kind::OptStr),
    ("cloud.pin_sha256", Kind::List),
    ("cloud.allow_insecure", Kind::Bool),
    ("cloud.heartbeat_s", Kind::Int(1, 3600)),
    ("cloud.max_backoff_s", Kind::Int(1, 86400)),
    ("cloud.max_frame_bytes", Kind::Int(1024, 16 * MIB)),
    ("cloud.buffer_topics", Kind::Int(1, 1_000_000)),
    ("relay.command_topics", Kind::List),
    ("relay.max_payload_bytes", Kind::Int(1, 16 * MIB)),
    ("privacy.mode", Kind::OneOf(&["deny", "allow"])),
    ("privacy.strip_keys", Kind::List),
    ("privacy.allow_keys", Kind::List),
    ("limits.commands_per_second", Kind::Num),
    ("limits.command_burst", Kind::Int(1, u32::MAX as i64)),
    ("audit.retention_days", Kind::Int(1, 3650)),
    ("audit.max_file_bytes", Kind::Int(4096, 1024 * MIB)),
    ("audit.max_files", Kind::Int(1, 1000)),
    ("metrics.listen", Kind::OptStr),
];

const SECTIONS: &[&str] = &[
    "mqtt", "cloud", "relay", "privacy", "limits", "audit", "metrics",
];

/// Every dotted key a config may set, in documentation order.
pub fn all_keys() -> Vec<&'static str> {
    SCHEMA.iter().map(|(key, _)| *key).collect()
}

fn kind_of(key: &str) -> Option<(&'static str, Kind)> {
    SCHEMA.iter().find(|(k, _)| *k == key).copied()
}

/// The environment variable that overrides `key`.
fn env_name(key: &str) -> String {
    format!(
        "{ENV_PREFIX}{}",
        key.to_ascii_uppercase().replace('.', "__")
    )
}

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
    pub host: String,
    pub port: u16,
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
}

#[derive(Debug, Clone, PartialEq)]
pub struct AuditConfig {
    pub retention_days: u32,
    /// The audit file is rotated once it grows past this.
    pub max_file_bytes: u64,
    /// Rotated files kept.
    pub max_files: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MetricsConfig {
    /// `None`: no metrics endpoint.
    pub listen: Option<SocketAddr>,
}

// ------------------------------------------------------------- raw (serde) form

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    gateway_id: Option<String>,
    state_dir: PathBuf,
    log_level: String,
    control_socket: Option<PathBuf>,
    mqtt: RawMqtt,
    cloud: RawCloud,
    relay: RawRelay,
    privacy: RawPrivacy,
    limits: RawLimits,
    audit: RawAudit,
    metrics: RawMetrics,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawMqtt {
    host: String,
    port: u16,
    client_id: Option<String>,
    username: Option<String>,
    password_file: Option<PathBuf>,
    subscribe: Vec<String>,
    qos: u8,
    keep_alive_s: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawCloud {
    url: Option<String>,
    token_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    pin_sha256: Vec<String>,
    allow_insecure: bool,
    heartbeat_s: u64,
    max_backoff_s: u64,
    max_frame_bytes: usize,
    buffer_topics: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawRelay {
    command_topics: Vec<String>,
    max_payload_bytes: usize,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawPrivacy {
    mode: PrivacyMode,
    strip_keys: Vec<String>,
    allow_keys: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLimits {
    commands_per_second: f64,
    command_burst: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAudit {
    retention_days: u32,
    max_file_bytes: u64,
    max_files: u32,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawMetrics {
    listen: Option<String>,
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/hearthlink")
}

impl Default for RawConfig {
    fn default() -> Self {
        Self {
            gateway_id: None,
            state_dir: default_state_dir(),
            log_level: "info".to_owned(),
            control_socket: None,
            mqtt: RawMqtt::default(),
            cloud: RawCloud::default(),
            relay: RawRelay::default(),
            privacy: RawPrivacy::default(),
            limits: RawLimits::default(),
            audit: RawAudit::default(),
            metrics: RawMetrics::default(),
        }
    }
}

impl Default for RawMqtt {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 1883,
            client_id: None,
            username: None,
            password_file: None,
            subscribe: vec!["ampio/from/#".into()],
            qos: 1,
            keep_alive_s: 30,
        }
    }
}

impl Default for RawCloud {
    fn default() -> Self {
        Self {
            url: None,
            token_file: None,
            ca_file: None,
            pin_sha256: Vec::new(),
            allow_insecure: false,
            heartbeat_s: 20,
            max_backoff_s: 60,
            max_frame_bytes: 262_144,
            buffer_topics: 10_000,
        }
    }
}

impl Default for RawRelay {
    fn default() -> Self {
        Self {
            command_topics: vec!["ampio/to/#".into()],
            max_payload_bytes: 65_536,
        }
    }
}

impl Default for RawLimits {
    fn default() -> Self {
        Self {
            commands_per_second: 10.0,
            command_burst: 20,
        }
    }
}

impl Default for RawAudit {
    fn default() -> Self {
        Self {
            retention_days: 30,
            max_file_bytes: 1024 * 1024,
            max_files: 10,
        }
    }
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

// ------------------------------------------------------------------ environment

/// Overrides parsed from `HEARTHLINK__*` variables.
#[derive(Default)]
struct EnvLayer {
    values: Vec<(&'static str, ValueKind)>,
    /// Key -> the variable that set it, named in errors about that key.
    origins: HashMap<&'static str, String>,
}

fn env_layer(
    env: impl IntoIterator<Item = (String, String)>,
    warnings: &mut Vec<String>,
) -> Result<EnvLayer, ConfigError> {
    let mut vars: Vec<(String, String)> = env.into_iter().collect();
    vars.sort(); // the same environment always gives the same error
    let mut layer = EnvLayer::default();
    for (name, raw) in vars {
        let upper = name.to_ascii_uppercase();
        let Some(rest) = upper.strip_prefix(ENV_PREFIX) else {
            if upper.starts_with("HEARTHLINK_") && upper.contains("__") {
                warnings.push(format!(
                    "environment variable `{name}` is ignored: config overrides start with `{ENV_PREFIX}` (two underscores)"
                ));
            }
            continue;
        };
        let dotted = rest.to_ascii_lowercase().replace("__", ".");
        let found = if rest.contains('.') {
            None
        } else {
            kind_of(&dotted)
        };
        let Some((key, kind)) = found else {
            return Err(unknown_key(&dotted, Some(&name)));
        };
        if let Some(first) = layer.origins.get(key) {
            return Err(invalid(
                key,
                format!("set by both environment variables `{first}` and `{name}`; keep one"),
            ));
        }
        let value = env_value(kind, &raw).map_err(|message| {
            invalid(
                key,
                format!("{message} (set by environment variable `{name}`)"),
            )
        })?;
        layer.values.push((key, value));
        layer.origins.insert(key, name);
    }
    Ok(layer)
}

/// Turns an env value into the type `kind` wants; strings stay strings.
fn env_value(kind: Kind, raw: &str) -> Result<ValueKind, String> {
    let trimmed = raw.trim();
    let wrong = || format!("expected {}, got {raw:?}", expected(kind));
    Ok(match kind {
        Kind::OptStr if trimmed.is_empty() => ValueKind::Nil,
        Kind::Str | Kind::OptStr | Kind::OneOf(_) => ValueKind::String(raw.to_owned()),
        Kind::Bool => match trimmed.to_ascii_lowercase().as_str() {
            "true" => ValueKind::Boolean(true),
            "false" => ValueKind::Boolean(false),
            _ => return Err(wrong()),
        },
        Kind::Int(..) => ValueKind::I64(trimmed.parse().map_err(|_| wrong())?),
        Kind::Num => ValueKind::Float(trimmed.parse().map_err(|_| wrong())?),
        Kind::List => ValueKind::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .map(|item| Value::new(None, item))
                .collect(),
        ),
    })
}

/// File then overrides, merged by the `config` crate (which lower-cases keys).
fn merge(text: &str, origin: &Path, env: &EnvLayer) -> Result<Map<String, Value>, ConfigError> {
    let parse_error = |e: config::ConfigError| ConfigError::Parse {
        path: origin.to_owned(),
        message: match e {
            config::ConfigError::FileParse { cause, .. } => cause.to_string().trim_end().to_owned(),
            other => other.to_string(),
        },
    };
    let mut builder = config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Toml));
    for (key, value) in &env.values {
        builder = builder
            .set_override(*key, Value::new(None, value.clone()))
            .map_err(parse_error)?;
    }
    builder
        .build()
        .and_then(|c| c.try_deserialize())
        .map_err(parse_error)
}

// ------------------------------------------------------------ pass 1: the tree

/// Unknown keys (sorted, so the same file gives the same error), then each
/// known key's type and range in schema order.
fn check_tree(root: &Map<String, Value>) -> Result<(), ConfigError> {
    let mut names: Vec<&String> = root.keys().collect();
    names.sort();
    for name in names {
        let value = &root[name];
        if SECTIONS.contains(&name.as_str()) {
            let ValueKind::Table(table) = &value.kind else {
                return Err(invalid(
                    name,
                    format!("expected a table (a [{name}] section), got {}", show(value)),
                ));
            };
            let mut keys: Vec<&String> = table.keys().collect();
            keys.sort();
            if let Some(key) = keys
                .iter()
                .find(|k| kind_of(&format!("{name}.{k}")).is_none())
            {
                return Err(unknown_key(&format!("{name}.{}", quote_segment(key)), None));
            }
        } else if kind_of(name).is_none() {
            let err = unknown_key(&quote_segment(name), None);
            return Err(match (&value.kind, err) {
                (ValueKind::Table(_), ConfigError::Invalid { key, message }) => {
                    ConfigError::Invalid {
                        message: message.replacen("unknown key", "unknown section", 1),
                        key,
                    }
                }
                (_, err) => err,
            });
        }
    }
    for (key, kind) in SCHEMA {
        if let Some(value) = lookup(root, key) {
            check_value(*kind, value).map_err(|message| invalid(key, message))?;
        }
    }
    Ok(())
}

fn lookup<'a>(root: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    match key.split_once('.') {
        None => root.get(key),
        Some((section, leaf)) => match &root.get(section)?.kind {
            ValueKind::Table(table) => table.get(leaf),
            _ => None,
        },
    }
}

fn check_value(kind: Kind, value: &Value) -> Result<(), String> {
    let ok = match (kind, &value.kind) {
        (Kind::OptStr, ValueKind::Nil) => true, // unset by an empty env value
        (Kind::Str | Kind::OptStr, ValueKind::String(s)) if s.is_empty() => {
            return Err(match kind {
                Kind::OptStr => "must not be empty; leave the key out instead".into(),
                _ => "must not be empty".into(),
            })
        }
        (Kind::Str | Kind::OptStr, ValueKind::String(_)) => true,
        (Kind::OneOf(choices), ValueKind::String(s)) => choices.contains(&s.as_str()),
        (Kind::Bool, ValueKind::Boolean(_)) => true,
        (Kind::Int(lo, hi), ValueKind::I64(n)) => (lo..=hi).contains(n),
        (Kind::Int(lo, hi), ValueKind::U64(n)) => {
            i64::try_from(*n).is_ok_and(|n| (lo..=hi).contains(&n))
        }
        (Kind::Num, ValueKind::I64(_) | ValueKind::U64(_) | ValueKind::Float(_)) => true,
        (Kind::List, ValueKind::Array(items)) => {
            if let Some((i, item)) = items
                .iter()
                .enumerate()
                .find(|(_, v)| !matches!(v.kind, ValueKind::String(_)))
            {
                return Err(format!(
                    "item {} is {}, expected a string",
                    i + 1,
                    show(item)
                ));
            }
            true
        }
        _ => false,
    };
    if ok {
        return Ok(());
    }
    let mut message = format!("expected {}, got {}", expected(kind), show(value));
    if let ValueKind::String(s) = &value.kind {
        if matches!(kind, Kind::Int(..) | Kind::Num | Kind::Bool) && env_value(kind, s).is_ok() {
            message.push_str(" (a string: remove the quotes)");
        } else if matches!(kind, Kind::List) {
            message.push_str(&format!(" (write a list: [{s:?}])"));
        }
    }
    Err(message)
}

fn expected(kind: Kind) -> String {
    match kind {
        Kind::Str | Kind::OptStr => "a string".into(),
        Kind::OneOf(choices) => {
            let quoted: Vec<String> = choices.iter().map(|c| format!("{c:?}")).collect();
            quoted.join(" or ")
        }
        Kind::Bool => "true or false".into(),
        Kind::Int(lo, hi) => format!("an integer {lo}..={hi}"),
        Kind::Num => "a number".into(),
        Kind::List => "a list of strings".into(),
    }
}

/// A value as the operator would write it, shortened.
fn show(value: &Value) -> String {
    match &value.kind {
        ValueKind::Nil => "nothing".into(),
        ValueKind::Boolean(b) => b.to_string(),
        ValueKind::I64(n) => n.to_string(),
        ValueKind::I128(n) => n.to_string(),
        ValueKind::U64(n) => n.to_string(),
        ValueKind::U128(n) => n.to_string(),
        ValueKind::Float(f) => format!("{f:?}"),
        ValueKind::String(s) if s.chars().count() > 80 => {
            format!("{:?}...", s.chars().take(77).collect::<String>())
        }
        ValueKind::String(s) => format!("{s:?}"),
        ValueKind::Array(_) => "a list".into(),
        ValueKind::Table(_) => "a table".into(),
    }
}

/// A key segment as TOML would need it written (quoted if it holds a dot etc.).
fn quote_segment(segment: &str) -> String {
    let bare = !segment.is_empty()
        && segment
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        segment.to_owned()
    } else {
        format!("{segment:?}")
    }
}

fn unknown_key(key: &str, var: Option<&str>) -> ConfigError {
    if SECTIONS.contains(&key) {
        let example = SCHEMA
            .iter()
            .find(|(k, _)| k.starts_with(&format!("{key}.")));
        let example = example.map_or_else(String::new, |(k, _)| env_name(k));
        return invalid(
            key,
            format!(
                "is a section, not a key (environment variable `{}`); set one of its keys, e.g. `{example}`",
                var.unwrap_or(key)
            ),
        );
    }
    let mut message = String::from("unknown key");
    if let Some(var) = var {
        message.push_str(&format!(" (set by environment variable `{var}`)"));
    }
    match (suggestion(key), var) {
        (Some(near), Some(_)) => message.push_str(&format!("; did you mean `{}`?", env_name(near))),
        (Some(near), None) => {
            message.push_str(&format!("; did you mean `{near}`?"));
            match near.split_once('.') {
                None if key.contains('.') => {
                    message.push_str(" Top-level keys must come before the first [section] header.")
                }
                Some((section, _)) if !key.contains('.') => {
                    message.push_str(&format!(" It belongs in the [{section}] section."))
                }
                _ => {}
            }
        }
        (None, _) => message.push_str("; docs/config.md lists every key"),
    }
    invalid(key, message)
}

/// The known key the operator most likely meant: the same name in another
/// section, else the nearest by edit distance (a swap counts as one edit).
fn suggestion(key: &str) -> Option<&'static str> {
    let leaf = key.rsplit('.').next().unwrap_or(key);
    if let Some((k, _)) = SCHEMA
        .iter()
        .find(|(k, _)| k.rsplit('.').next() == Some(leaf))
    {
        return Some(k);
    }
    SCHEMA
        .iter()
        .map(|(k, _)| *k)
        .chain(SECTIONS.iter().copied())
        .map(|k| (edit_distance(key, k), k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 5))
        .min()
        .map(|(_, k)| k)
}

/// Optimal string alignment distance.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    d[0] = (0..=b.len()).collect();
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            d[i][j] = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d[i][j] = d[i][j].min(d[i - 2][j - 2] + 1);
            }
        }
    }
    d[a.len()][b.len()]
}

// ------------------------------------------------------------- pass 3: meaning

fn validate(raw: RawConfig, w: &mut Vec<String>) -> Result<Config, ConfigError> {
    let gateway_id = required(raw.gateway_id, "gateway_id")?;
    let id_ok = gateway_id.len() <= 64
        && gateway_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !id_ok {
        return Err(invalid(
            "gateway_id",
            format!("must be 1 to 64 characters of A-Z a-z 0-9 . _ -, got {gateway_id:?}"),
        ));
    }
    warn_relative("state_dir", &raw.state_dir, w);
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&raw.log_level) {
        return Err(invalid(
            "log_level",
            format!("not a log filter ({e}); use e.g. \"info\" or \"hearthlink=debug,info\""),
        ));
    }
    let control_socket = control_socket(&raw.state_dir, raw.control_socket, w)?;
    let mqtt = mqtt(raw.mqtt, &gateway_id, w)?;
    let cloud = cloud(raw.cloud, w)?;
    let relay = relay(raw.relay, w)?;
    if relay.max_payload_bytes > cloud.max_frame_bytes {
        w.push(format!(
            "relay.max_payload_bytes ({}) is larger than cloud.max_frame_bytes ({}): a command frame that large is refused before its payload is checked",
            relay.max_payload_bytes, cloud.max_frame_bytes
        ));
    }
    Ok(Config {
        gateway_id,
        state_dir: raw.state_dir,
        log_level: raw.log_level,
        control_socket,
        mqtt,
        cloud,
        relay,
        privacy: privacy(raw.privacy, w)?,
        limits: limits(raw.limits)?,
        audit: AuditConfig {
            retention_days: raw.audit.retention_days,
            max_file_bytes: raw.audit.max_file_bytes,
            max_files: raw.audit.max_files,
        },
        metrics: metrics(raw.metrics, w)?,
    })
}

fn required<T>(value: Option<T>, key: &str) -> Result<T, ConfigError> {
    value.ok_or_else(|| {
        let place = match key.split_once('.') {
            Some((section, leaf)) => format!("`{leaf}` in the [{section}] section"),
            None => format!("`{key}` at the top of the file (before any [section])"),
        };
        invalid(
            key,
            format!(
                "is required: set {place}, or the environment variable {}",
                env_name(key)
            ),
        )
    })
}

fn control_socket(
    state_dir: &Path,
    configured: Option<PathBuf>,
    w: &mut Vec<String>,
) -> Result<PathBuf, ConfigError> {
    let derived = configured.is_none();
    let path = configured.unwrap_or_else(|| state_dir.join("control.sock"));
    let len = path.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        let why = if derived {
            " (it defaults to <state_dir>/control.sock)"
        } else {
            ""
        };
        return Err(invalid(
            "control_socket",
            format!(
                "{} is {len} bytes{why}, but a Unix socket path may have at most {MAX_SOCKET_PATH}; set control_socket to a shorter path such as /run/hearthlink/control.sock",
                path.display()
            ),
        ));
    }
    if !derived {
        warn_relative("control_socket", &path, w);
    }
    Ok(path)
}

fn mqtt(raw: RawMqtt, gateway_id: &str, w: &mut Vec<String>) -> Result<MqttConfig, ConfigError> {
    if raw.host.parse::<std::net::IpAddr>().is_err() {
        if raw.host.contains("://") {
            return Err(invalid(
                "mqtt.host",
                format!(
                    "expected a host name or IP address without a scheme, got {:?}",
                    raw.host
                ),
            ));
        }
        if raw.host.contains(':') {
            return Err(invalid(
                "mqtt.host",
                format!(
                    "expected a host name or IP address, got {:?}; put the port in mqtt.port",
                    raw.host
                ),
            ));
        }
        if raw.host.chars().any(|c| c.is_whitespace() || c == '/') {
            return Err(invalid(
                "mqtt.host",
                format!("expected a host name or IP address, got {:?}", raw.host),
            ));
        }
    }
    let client_id = raw
        .client_id
        .unwrap_or_else(|| format!("hearthlink-{gateway_id}"));
    if client_id.len() > 65535 || client_id.contains('\0') {
        return Err(invalid(
            "mqtt.client_id",
            "must be at most 65535 bytes, without NUL characters",
        ));
    }
    let password = match &raw.password_file {
        None => None,
        Some(path) => {
            if raw.username.is_none() {
                return Err(invalid("mqtt.username", "is required when mqtt.password_file is set: MQTT sends a password only together with a user name"));
            }
            let text = read_secret_file("mqtt.password_file", path, w)?;
            let password = text.trim_end_matches(['\r', '\n']);
            if password.is_empty() {
                return Err(invalid(
                    "mqtt.password_file",
                    format!("{} is empty; put the broker password in it", path.display()),
                ));
            }
            Some(Secret::new(password))
        }
    };
    if raw.subscribe.is_empty() {
        return Err(invalid(
            "mqtt.subscribe",
            "must list at least one topic filter, e.g. [\"ampio/from/#\"]",
        ));
    }
    check_filters("mqtt.subscribe", &raw.subscribe)?;
    Ok(MqttConfig {
        host: raw.host,
        port: raw.port,
        client_id,
        username: raw.username,
        password,
        password_file: raw.password_file,
        subscribe: raw.subscribe,
        qos: raw.qos,
        keep_alive_s: raw.keep_alive_s,
    })
}

fn check_filters(key: &str, filters: &[String]) -> Result<(), ConfigError> {
    for (i, filter) in filters.iter().enumerate() {
        validate_filter(filter).map_err(|e| {
            invalid(
                key,
                format!(
                    "item {} ({filter:?}) is not a valid MQTT topic filter: {e}",
                    i + 1
                ),
            )
        })?;
    }
    Ok(())
}

fn cloud(raw: RawCloud, w: &mut Vec<String>) -> Result<CloudConfig, ConfigError> {
    let url = cloud_url(&required(raw.url, "cloud.url")?, raw.allow_insecure, w)?;
    let token_file = required(raw.token_file, "cloud.token_file")?;
    check_token(&token_file, w)?;
    if let Some(ca_file) = &raw.ca_file {
        check_ca_file(ca_file, w)?;
    }
    let mut pins = Vec::with_capacity(raw.pin_sha256.len());
    for (i, pin) in raw.pin_sha256.iter().enumerate() {
        pins.push(decode_pin(pin).map_err(|why| {
            invalid(
                "cloud.pin_sha256",
                format!("item {} ({pin:?}) {why}", i + 1),
            )
        })?);
    }
    let tls = url.scheme() == "wss";
    if !tls && (raw.ca_file.is_some() || !pins.is_empty()) {
        w.push("cloud.ca_file and cloud.pin_sha256 have no effect with a ws:// cloud.url".into());
    }
    Ok(CloudConfig {
        url,
        token_file,
        ca_file: raw.ca_file,
        pin_sha256: pins,
        allow_insecure: raw.allow_insecure,
        heartbeat_s: raw.heartbeat_s,
        max_backoff_s: raw.max_backoff_s,
        max_frame_bytes: raw.max_frame_bytes,
        buffer_topics: raw.buffer_topics,
    })
}

fn cloud_url(
    text: &str,
    allow_insecure: bool,
    w: &mut Vec<String>,
) -> Result<url::Url, ConfigError> {
    let bad = |why: String| invalid("cloud.url", why);
    let url = url::Url::parse(text).map_err(|e| {
        bad(format!(
            "{text:?} is not a URL ({e}); expected e.g. wss://cloud.example.com/v1/gateway"
        ))
    })?;
    match (url.scheme(), allow_insecure) {
        ("wss", true) => w.push("cloud.allow_insecure = true only permits ws:// URLs; with wss:// it has no effect".into()),
        ("wss", false) => {}
        ("ws", true) => w.push(format!("cloud.url {url} is not encrypted (ws://); the token and all traffic travel in clear text: use it for testing only")),
        ("ws", false) => return Err(bad(format!("{text:?} uses ws:// (no TLS); use wss://, or set cloud.allow_insecure = true for testing"))),
        (scheme, _) => return Err(bad(format!("{text:?} has scheme {scheme}://; expected wss://"))),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad(
            "must not contain a user name or password; the token comes from cloud.token_file"
                .into(),
        ));
    }
    if url.fragment().is_some() {
        return Err(bad(format!(
            "{text:?} has a #fragment, which a websocket URL may not have"
        )));
    }
    Ok(url)
}

fn check_token(path: &Path, w: &mut Vec<String>) -> Result<(), ConfigError> {
    let key = "cloud.token_file";
    let text = read_secret_file(key, path, w)?;
    let token = text.trim();
    if token.is_empty() {
        return Err(invalid(
            key,
            format!(
                "{} is empty; put the gateway's cloud token in it",
                path.display()
            ),
        ));
    }
    if token.chars().any(char::is_control) {
        return Err(invalid(
            key,
            format!(
                "{} holds more than one line or control characters; it must hold only the token",
                path.display()
            ),
        ));
    }
    Ok(())
}

fn check_ca_file(path: &Path, w: &mut Vec<String>) -> Result<(), ConfigError> {
    let key = "cloud.ca_file";
    let bytes = read_limited(key, path, CA_FILE_MAX)?;
    warn_relative(key, path, w);
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut bytes.as_slice()).collect();
    match certs {
        Err(e) => Err(invalid(
            key,
            format!("{} is not valid PEM: {e}", path.display()),
        )),
        Ok(certs) if certs.is_empty() => Err(invalid(
            key,
            format!(
                "{} contains no PEM certificate (-----BEGIN CERTIFICATE-----)",
                path.display()
            ),
        )),
        Ok(_) => Ok(()),
    }
}

fn decode_pin(pin: &str) -> Result<[u8; 32], String> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(pin.trim())
        .map_err(|e| match e {
            base64::DecodeError::InvalidByte(at, byte) => format!(
                "is not standard base64: {:?} at position {} (expected A-Z a-z 0-9 + / and = padding)",
                char::from(byte),
                at + 1
            ),
            other => format!("is not standard padded base64 ({other})"),
        })?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
        format!(
            "decodes to {} bytes, but a SHA-256 pin is 32 (44 base64 characters ending in '=')",
            bytes.len()
        )
    })
}

/// Reads a token or password file, warning when others may read it.
fn read_secret_file(key: &str, path: &Path, w: &mut Vec<String>) -> Result<String, ConfigError> {
    let bytes = read_limited(key, path, SECRET_FILE_MAX)?;
    warn_relative(key, path, w);
    #[cfg(unix)]
    if let Ok(meta) = std::fs::metadata(path) {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            w.push(format!(
                "{key}: {} is accessible to group or others (mode {mode:04o}); run chmod 600 {}",
                path.display(),
                path.display()
            ));
        }
    }
    String::from_utf8(bytes)
        .map_err(|_| invalid(key, format!("{} is not UTF-8 text", path.display())))
}

fn read_limited(key: &str, path: &Path, limit: u64) -> Result<Vec<u8>, ConfigError> {
    let cannot = |e: std::io::Error| {
        let hint = match e.kind() {
            std::io::ErrorKind::NotFound => "; create it or fix the path",
            std::io::ErrorKind::PermissionDenied => "; the daemon's user must be able to read it",
            _ => "",
        };
        invalid(key, format!("cannot read {}: {e}{hint}", path.display()))
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(limit + 1).read_to_end(&mut bytes))
        .map_err(cannot)?;
    if bytes.len() as u64 > limit {
        return Err(invalid(
            key,
            format!(
                "{} is larger than {limit} bytes; is it the right file?",
                path.display()
            ),
        ));
    }
    Ok(bytes)
}

fn warn_relative(key: &str, path: &Path, w: &mut Vec<String>) {
    if path.is_relative() {
        w.push(format!(
            "{key} = {:?} is a relative path, resolved against the daemon's working directory; prefer an absolute path",
            path.display().to_string()
        ));
    }
}

fn relay(raw: RawRelay, w: &mut Vec<String>) -> Result<RelayConfig, ConfigError> {
    check_filters("relay.command_topics", &raw.command_topics)?;
    if raw.command_topics.is_empty() {
        w.push("relay.command_topics is empty: the cloud app can send no command".into());
    }
    Ok(RelayConfig {
        command_topics: raw.command_topics,
        max_payload_bytes: raw.max_payload_bytes,
    })
}

fn privacy(raw: RawPrivacy, w: &mut Vec<String>) -> Result<PrivacyConfig, ConfigError> {
    for (key, list) in [
        ("privacy.strip_keys", &raw.strip_keys),
        ("privacy.allow_keys", &raw.allow_keys),
    ] {
        if let Some((i, item)) = list
            .iter()
            .enumerate()
            .find(|(_, k)| normalize_key(k).is_empty())
        {
            return Err(invalid(
                key,
                format!(
                    "item {} ({item:?}) has no letter or digit, so it can match no key",
                    i + 1
                ),
            ));
        }
    }
    // Ask the filter itself which allowed keys it will strip, so this
    // warning cannot drift from what links actually receive.
    let policy = Policy::new(
        crate::privacy::Mode::Allow,
        &raw.strip_keys,
        &raw.allow_keys,
    );
    for key in policy.conflicting_keys() {
        w.push(format!(
            "privacy.allow_keys: {key:?} is also a strip key (built in or in privacy.strip_keys), so it is stripped anyway"
        ));
    }
    match raw.mode {
        PrivacyMode::Deny if !raw.allow_keys.is_empty() => {
            w.push("privacy.allow_keys has no effect unless privacy.mode = \"allow\"".into())
        }
        PrivacyMode::Allow if raw.allow_keys.is_empty() => w.push(
            "privacy.mode = \"allow\" with no privacy.allow_keys: links receive only empty objects"
                .into(),
        ),
        _ => {}
    }
    Ok(PrivacyConfig {
        mode: raw.mode,
        strip_keys: raw.strip_keys,
        allow_keys: raw.allow_keys,
    })
}

fn limits(raw: RawLimits) -> Result<LimitsConfig, ConfigError> {
    let rate = raw.commands_per_second;
    if !(rate.is_finite() && rate > 0.0) {
        return Err(invalid(
            "limits.commands_per_second",
            format!("expected a positive number (e.g. 10 or 0.5), got {rate}"),
        ));
    }
    Ok(LimitsConfig {
        commands_per_second: rate,
        command_burst: raw.command_burst,
    })
}

fn metrics(raw: RawMetrics, w: &mut Vec<String>) -> Result<MetricsConfig, ConfigError> {
    let Some(text) = raw.listen else {
        return Ok(MetricsConfig { listen: None });
    };
    let addr: SocketAddr = text.trim().parse().map_err(|_| {
        invalid(
            "metrics.listen",
            format!("expected an IP address and port like \"127.0.0.1:9100\", got {text:?}"),
        )
    })?;
    if !addr.ip().is_loopback() {
        w.push(format!("metrics.listen = {addr} is reachable from other machines; make sure no WAN traffic can reach it, or use 127.0.0.1"));
    }
    Ok(MetricsConfig { listen: Some(addr) })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A temp dir holding a 0600 token file, and a minimal config using it.
    fn setup() -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().expect("tempdir");
        let token = dir.path().join("token");
        std::fs::write(&token, "tok-123\n").expect("write token");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let perms = std::fs::Permissions::from_mode(0o600);
            std::fs::set_permissions(&token, perms).expect("chmod");
        }
        let toml = format!(
            "gateway_id = \"gw-1\"\nstate_dir = {:?}\n[cloud]\nurl = \"wss://c.example/v1/gateway\"\ntoken_file = {:?}\n",
            dir.path().display().to_string(),
            token.display().to_string()
        );
        (dir, toml)
    }

    fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
        vars.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn load_ok(toml: &str, vars: &[(&str, &str)]) -> Loaded {
        from_toml_str(toml, env(vars)).unwrap_or_else(|e| panic!("should load: {e}"))
    }

    fn load_err(toml: &str, vars: &[(&str, &str)]) -> ConfigError {
        match from_toml_str(toml, env(vars)) {
            Ok(_) => panic!("should fail"),
            Err(e) => e,
        }
    }

    #[test]
    fn minimal_config_gets_every_default() {
        let (dir, toml) = setup();
        let loaded = load_ok(&toml, &[]);
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        let c = loaded.config;
        assert_eq!(c.control_socket, dir.path().join("control.sock"));
        assert_eq!(
            (c.mqtt.host.as_str(), c.mqtt.port, c.mqtt.qos),
            ("127.0.0.1", 1883, 1)
        );
        assert_eq!(c.mqtt.client_id, "hearthlink-gw-1");
        assert_eq!(c.mqtt.subscribe, ["ampio/from/#"]);
        assert_eq!(c.mqtt.keep_alive_s, 30);
        assert!(c.mqtt.password.is_none());
        assert_eq!((c.cloud.heartbeat_s, c.cloud.max_backoff_s), (20, 60));
        assert_eq!(
            (c.cloud.max_frame_bytes, c.cloud.buffer_topics),
            (262_144, 10_000)
        );
        assert!(!c.cloud.allow_insecure && c.cloud.pin_sha256.is_empty());
        assert_eq!(c.relay.command_topics, ["ampio/to/#"]);
        assert_eq!(c.relay.max_payload_bytes, 65_536);
        assert_eq!(c.privacy.mode, PrivacyMode::Deny);
        assert!(c.privacy.strip_keys.is_empty() && c.privacy.allow_keys.is_empty());
        assert_eq!(
            (c.limits.commands_per_second, c.limits.command_burst),
            (10.0, 20)
        );
        assert_eq!(
            (
                c.audit.retention_days,
                c.audit.max_file_bytes,
                c.audit.max_files
            ),
            (30, 1 << 20, 10)
        );
        assert!(c.metrics.listen.is_none());
    }

    #[test]
    fn schema_and_serde_structs_agree() {
        // Every schema key, set to a value of its kind, passes both passes.
        let mut root = Map::new();
        for (key, kind) in SCHEMA {
            let value = match kind {
                Kind::Str | Kind::OptStr => ValueKind::String("x".into()),
                Kind::OneOf(choices) => ValueKind::String(choices[0].into()),
                Kind::Bool => ValueKind::Boolean(true),
                Kind::Int(lo, _) => ValueKind::I64(*lo),
                Kind::Num => ValueKind::Float(1.5),
                Kind::List => ValueKind::Array(vec![Value::new(None, "a")]),
            };
            let value = Value::new(None, value);
            match key.split_once('.') {
                None => drop(root.insert((*key).to_owned(), value)),
                Some((section, leaf)) => {
                    let entry = root
                        .entry(section.to_owned())
                        .or_insert_with(|| Value::new(None, ValueKind::Table(Map::new())));
                    if let ValueKind::Table(t) = &mut entry.kind {
                        t.insert(leaf.to_owned(), value);
                    }
                }
            }
        }
        check_tree(&root).expect("tree check");
        let raw: RawConfig = Value::new(None, ValueKind::Table(root))
            .try_deserialize()
            .expect("serde");
        assert_eq!(raw.limits.commands_per_second, 1.5);
        assert_eq!(all_keys().len(), SCHEMA.len());
        assert!(SCHEMA
            .iter()
            .all(|(k, _)| k.split_once('.').is_none_or(|(s, _)| SECTIONS.contains(&s))));
    }

    #[test]
    fn type_errors_name_the_key_and_the_value() {
        let (_dir, toml) = setup();
        let e = load_err(&format!("{toml}[mqtt]\nport = \"abc\"\n"), &[]);
        assert_eq!(
            e.to_string(),
            "config key `mqtt.port`: expected an integer 1..=65535, got \"abc\""
        );
        let e = load_err(&format!("{toml}[mqtt]\nport = \"1884\"\n"), &[]);
        assert!(
            e.to_string()
                .ends_with("got \"1884\" (a string: remove the quotes)"),
            "{e}"
        );
        let e = load_err(&format!("{toml}[mqtt]\nsubscribe = \"a/#\"\n"), &[]);
        assert_eq!(e.key(), Some("mqtt.subscribe"));
        assert!(e.to_string().contains("[\"a/#\"]"), "{e}");
        let e = load_err(&format!("{toml}[privacy]\nmode = \"block\"\n"), &[]);
        assert_eq!(
            e.to_string(),
            "config key `privacy.mode`: expected \"deny\" or \"allow\", got \"block\""
        );
    }

    #[test]
    fn unknown_keys_are_named_with_a_suggestion() {
        let (_dir, toml) = setup();
        let e = load_err(&format!("{toml}[mqtt]\nhots = \"x\"\n"), &[]);
        assert_eq!(e.key(), Some("mqtt.hots"));
        assert!(
            e.to_string()
                .starts_with("config key `mqtt.hots`: unknown key; did you mean `mqtt.host`?"),
            "{e}"
        );
        // A top-level key written after a [section] header lands in that section.
        let e = load_err(&format!("{toml}gateway_id = \"x\"\n"), &[]);
        assert_eq!(e.key(), Some("cloud.gateway_id"));
        assert!(e.to_string().contains("before the first [section]"), "{e}");
        let e = load_err(&format!("{toml}[mqt]\nport = 1\n"), &[]);
        assert!(e.to_string().contains("did you mean `mqtt`"), "{e}");
        let e = load_err(&format!("\"my key\" = 1\n{toml}"), &[]);
        assert_eq!(e.key(), Some("\"my key\""));
    }

    #[test]
    fn env_overrides_every_layer_with_string_types_kept() {
        let (_dir, toml) = setup();
        let loaded = load_ok(
            &format!("{toml}[mqtt]\nport = 1000\n"),
            &[
                ("HEARTHLINK__GATEWAY_ID", "007"),
                ("hearthlink__mqtt__port", "1884"),
                ("HEARTHLINK__MQTT__SUBSCRIBE", "a/#, b/+ ,"),
                ("HEARTHLINK__CLOUD__ALLOW_INSECURE", "TRUE"),
                ("HEARTHLINK__LIMITS__COMMANDS_PER_SECOND", "2.5"),
                ("HEARTHLINK__MQTT__USERNAME", ""),
                ("PATH", "/bin"),
            ],
        );
        let c = loaded.config;
        assert_eq!(c.gateway_id, "007");
        assert_eq!(c.mqtt.client_id, "hearthlink-007");
        assert_eq!(c.mqtt.port, 1884);
        assert_eq!(c.mqtt.subscribe, ["a/#", "b/+"]);
        assert!(c.cloud.allow_insecure);
        assert_eq!(c.limits.commands_per_second, 2.5);
        assert!(c.mqtt.username.is_none());
    }

    #[test]
    fn env_errors_name_key_and_variable() {
        let (_dir, toml) = setup();
        let e = load_err(&toml, &[("HEARTHLINK__MQTT__HOTS", "x")]);
        assert_eq!(e.key(), Some("mqtt.hots"));
        assert!(e.to_string().contains("`HEARTHLINK__MQTT__HOTS`"), "{e}");
        assert!(
            e.to_string()
                .contains("did you mean `HEARTHLINK__MQTT__HOST`"),
            "{e}"
        );
        let e = load_err(&toml, &[("HEARTHLINK__MQTT__PORT", "abc")]);
        assert_eq!(
            e.to_string(),
            "config key `mqtt.port`: expected an integer 1..=65535, got \"abc\" (set by environment variable `HEARTHLINK__MQTT__PORT`)"
        );
        let e = load_err(&toml, &[("HEARTHLINK__MQTT__PORT", "0")]);
        assert!(
            e.to_string()
                .ends_with("(set by environment variable `HEARTHLINK__MQTT__PORT`)"),
            "{e}"
        );
        let e = load_err(
            &toml,
            &[
                ("HEARTHLINK__MQTT__PORT", "1"),
                ("hearthlink__mqtt__port", "2"),
            ],
        );
        assert!(e.to_string().contains("set by both"), "{e}");
        let e = load_err(&toml, &[("HEARTHLINK__MQTT", "x")]);
        assert_eq!(e.key(), Some("mqtt"));
        let e = load_err(&toml, &[("HEARTHLINK__MQTT.PORT", "1")]);
        assert_eq!(e.key(), Some("mqtt.port"));
        let loaded = load_ok(&toml, &[("HEARTHLINK_MQTT__PORT", "1")]);
        assert!(
            loaded.warnings[0].contains("two underscores"),
            "{:?}",
            loaded.warnings
        );
    }

    #[test]
    fn required_keys_say_where_to_set_them() {
        let (_dir, toml) = setup();
        let e = load_err(&toml.replace("gateway_id = \"gw-1\"\n", ""), &[]);
        assert_eq!(e.key(), Some("gateway_id"));
        assert!(e.to_string().contains("HEARTHLINK__GATEWAY_ID"), "{e}");
        let e = load_err("gateway_id = \"gw\"\n", &[]);
        assert_eq!(e.key(), Some("cloud.url"));
        assert!(
            e.to_string().contains("`url` in the [cloud] section"),
            "{e}"
        );
    }

    #[test]
    fn parse_errors_name_the_file_but_no_key() {
        let e = load_err("gateway_id = \n", &[]);
        assert!(matches!(e, ConfigError::Parse { .. }));
        assert_eq!(e.key(), None);
        assert!(
            e.to_string()
                .starts_with("parsing config file (inline TOML): "),
            "{e}"
        );
        let e = load_with_env(Path::new("/nonexistent/h.toml"), env(&[])).expect_err("missing");
        assert!(
            e.to_string()
                .starts_with("reading config file /nonexistent/h.toml: "),
            "{e}"
        );
    }

    #[test]
    fn cloud_url_token_and_pins() {
        let (dir, toml) = setup();
        let ws = toml.replace("wss://", "ws://");
        assert_eq!(load_err(&ws, &[]).key(), Some("cloud.url"));
        let loaded = load_ok(&ws, &[("HEARTHLINK__CLOUD__ALLOW_INSECURE", "true")]);
        assert!(loaded.warnings.iter().any(|w| w.contains("not encrypted")));
        let e = load_err(&toml.replace("wss://", "https://"), &[]);
        assert!(e.to_string().contains("expected wss://"), "{e}");
        let e = load_err(&toml.replace("wss://", "wss://u:p@"), &[]);
        assert_eq!(e.key(), Some("cloud.url"));

        let pin = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
        let c = load_ok(&format!("{toml}pin_sha256 = [{pin:?}]\n"), &[]).config;
        assert_eq!(c.cloud.pin_sha256, vec![[0u8; 32]]);
        let e = load_err(&format!("{toml}pin_sha256 = [{pin:?}, \"AAAA\"]\n"), &[]);
        assert!(
            e.to_string()
                .contains("item 2 (\"AAAA\") decodes to 3 bytes"),
            "{e}"
        );

        let token = dir.path().join("token");
        std::fs::write(&token, " \n").expect("write");
        assert!(load_err(&toml, &[]).to_string().contains("is empty"));
        std::fs::write(&token, "a\nb\n").expect("write");
        assert!(load_err(&toml, &[]).to_string().contains("only the token"));
        let e = load_err(
            &format!("{toml}ca_file = {:?}\n", token.display().to_string()),
            &[],
        );
        assert_eq!(e.key(), Some("cloud.token_file"));
    }

    #[cfg(unix)]
    #[test]
    fn token_readable_by_others_is_a_warning() {
        use std::os::unix::fs::PermissionsExt as _;
        let (dir, toml) = setup();
        let token = dir.path().join("token");
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let loaded = load_ok(&toml, &[]);
        assert!(loaded
            .warnings
            .iter()
            .any(|w| w.contains("mode 0644") && w.starts_with("cloud.token_file")));
    }

    #[test]
    fn ca_file_must_hold_a_certificate() {
        let (dir, toml) = setup();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "not pem\n").expect("write");
        let e = load_err(
            &format!("{toml}ca_file = {:?}\n", ca.display().to_string()),
            &[],
        );
        assert_eq!(e.key(), Some("cloud.ca_file"));
        assert!(e.to_string().contains("no PEM certificate"), "{e}");
    }

    #[test]
    fn mqtt_password_file_needs_username() {
        let (dir, toml) = setup();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, " secret pw \n").expect("write");
        let section = format!("[mqtt]\npassword_file = {:?}\n", pw.display().to_string());
        assert_eq!(
            load_err(&format!("{toml}{section}"), &[]).key(),
            Some("mqtt.username")
        );
        let c = load_ok(&format!("{toml}{section}username = \"bob\"\n"), &[]).config;
        let password = c.mqtt.password.clone().expect("password");
        assert_eq!(password.expose(), " secret pw ");
        assert_eq!(format!("{password} {password:?}"), "*** ***");
        assert!(!format!("{:?}", c.mqtt).contains("secret"));
    }

    #[test]
    fn topic_filters_and_host_are_checked() {
        let (_dir, toml) = setup();
        let e = load_err(
            &format!("{toml}[mqtt]\nsubscribe = [\"a/#\", \"a/#/b\"]\n"),
            &[],
        );
        assert!(
            e.to_string()
                .starts_with("config key `mqtt.subscribe`: item 2 (\"a/#/b\")"),
            "{e}"
        );
        assert_eq!(
            load_err(&format!("{toml}[mqtt]\nsubscribe = []\n"), &[]).key(),
            Some("mqtt.subscribe")
        );
        let e = load_err(&format!("{toml}[mqtt]\nhost = \"broker:1883\"\n"), &[]);
        assert!(e.to_string().contains("mqtt.port"), "{e}");
        load_ok(&format!("{toml}[mqtt]\nhost = \"::1\"\n"), &[]);
        let loaded = load_ok(&format!("{toml}[relay]\ncommand_topics = []\n"), &[]);
        assert_eq!(loaded.warnings.len(), 1);
    }

    #[test]
    fn control_socket_length_is_limited() {
        let (_dir, toml) = setup();
        let long = format!("/{}", "d".repeat(100));
        let e = load_err(&toml, &[("HEARTHLINK__STATE_DIR", &long)]);
        assert_eq!(e.key(), Some("control_socket"));
        assert!(
            e.to_string()
                .contains("defaults to <state_dir>/control.sock"),
            "{e}"
        );
        let short = load_ok(
            &toml,
            &[
                ("HEARTHLINK__STATE_DIR", &long),
                ("HEARTHLINK__CONTROL_SOCKET", "/run/h.sock"),
            ],
        );
        assert_eq!(short.config.control_socket, Path::new("/run/h.sock"));
        let exact = format!("/{}", "s".repeat(106));
        assert_eq!(
            load_ok(&toml, &[("HEARTHLINK__CONTROL_SOCKET", &exact)])
                .config
                .control_socket
                .as_os_str()
                .len(),
            107
        );
        let e = load_err(
            &toml,
            &[("HEARTHLINK__CONTROL_SOCKET", &format!("{exact}s"))],
        );
        assert_eq!(e.key(), Some("control_socket"));
    }

    #[test]
    fn privacy_lists_are_checked_and_conflicts_warned() {
        let (_dir, toml) = setup();
        let extra = "[privacy]\nmode = \"allow\"\nstrip_keys = [\"E-Mail\", \"iban\"]\nallow_keys = [\"value\", \"Name\"]\n";
        let loaded = load_ok(&format!("{toml}{extra}"), &[]);
        let p = &loaded.config.privacy;
        assert_eq!(p.strip_keys, ["E-Mail", "iban"]);
        assert_eq!(p.allow_keys, ["value", "Name"]);
        assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
        assert!(loaded.warnings[0].contains("\"name\" is also a strip key"));
        let e = load_err(&format!("{toml}[privacy]\nstrip_keys = [\"--\"]\n"), &[]);
        assert_eq!(e.key(), Some("privacy.strip_keys"));
    }

    #[test]
    fn limits_and_metrics() {
        let (_dir, toml) = setup();
        for bad in ["0", "-1", "nan", "inf"] {
            let e = load_err(&toml, &[("HEARTHLINK__LIMITS__COMMANDS_PER_SECOND", bad)]);
            assert_eq!(e.key(), Some("limits.commands_per_second"), "{bad}");
        }
        let e = load_err(&format!("{toml}[limits]\ncommands_per_second = nan\n"), &[]);
        assert_eq!(e.key(), Some("limits.commands_per_second"));
        let c = load_ok(
            &format!("{toml}[metrics]\nlisten = \"127.0.0.1:9100\"\n"),
            &[],
        )
        .config;
        assert_eq!(
            c.metrics.listen,
            Some(SocketAddr::from(([127, 0, 0, 1], 9100)))
        );
        let e = load_err(
            &format!("{toml}[metrics]\nlisten = \"localhost:9100\"\n"),
            &[],
        );
        assert_eq!(e.key(), Some("metrics.listen"));
        let loaded = load_ok(
            &format!("{toml}[metrics]\nlisten = \"0.0.0.0:9100\"\n"),
            &[],
        );
        assert!(loaded.warnings[0].starts_with("metrics.listen"));
    }

    #[test]
    fn edit_distance_counts_swaps_once() {
        assert_eq!(edit_distance("hots", "host"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
