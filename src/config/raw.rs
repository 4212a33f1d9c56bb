//! The serde form of the file, with the named defaults.

#[allow(unused_imports)]
use super::*;

// ------------------------------------------------------------- raw (serde) form

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawConfig {
    pub(super) gateway_id: Option<String>,
    pub(super) state_dir: PathBuf,
    pub(super) log_level: String,
    pub(super) control_socket: Option<PathBuf>,
    pub(super) mqtt: RawMqtt,
    pub(super) cloud: RawCloud,
    pub(super) relay: RawRelay,
    pub(super) privacy: RawPrivacy,
    pub(super) limits: RawLimits,
    pub(super) audit: RawAudit,
    pub(super) metrics: RawMetrics,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawMqtt {
    /// Left out: `127.0.0.1` (or unused, with `socket`).
    pub(super) host: Option<String>,
    /// Left out: 1883 (or unused, with `socket`).
    pub(super) port: Option<u16>,
    pub(super) socket: Option<PathBuf>,
    pub(super) client_id: Option<String>,
    pub(super) username: Option<String>,
    pub(super) password_file: Option<PathBuf>,
    pub(super) subscribe: Vec<String>,
    pub(super) qos: u8,
    pub(super) keep_alive_s: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawCloud {
    pub(super) url: Option<String>,
    pub(super) token_file: Option<PathBuf>,
    pub(super) ca_file: Option<PathBuf>,
    pub(super) pin_sha256: Vec<String>,
    pub(super) allow_insecure: bool,
    pub(super) heartbeat_s: u64,
    pub(super) max_backoff_s: u64,
    pub(super) max_frame_bytes: usize,
    pub(super) buffer_topics: usize,
    pub(super) buffer_bytes: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawRelay {
    pub(super) command_topics: Vec<String>,
    pub(super) max_payload_bytes: usize,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawPrivacy {
    pub(super) mode: PrivacyMode,
    pub(super) strip_keys: Vec<String>,
    pub(super) allow_keys: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawLimits {
    pub(super) commands_per_second: f64,
    pub(super) command_burst: u32,
    pub(super) max_connections: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawAudit {
    pub(super) retention_days: u32,
    pub(super) max_file_bytes: u64,
    pub(super) max_files: u32,
    pub(super) flush_s: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawMetrics {
    pub(super) listen: Option<String>,
}

pub(super) fn default_state_dir() -> PathBuf {
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
            host: None,
            port: None,
            socket: None,
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
            buffer_bytes: 8 * 1024 * 1024,
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
            max_connections: 64,
        }
    }
}

impl Default for RawAudit {
    fn default() -> Self {
        Self {
            retention_days: 30,
            max_file_bytes: 1024 * 1024,
            max_files: 10,
            flush_s: 60,
        }
    }
}
