//! Config files as an installer writes them: every file in
//! `tests/config/valid/` must load, every file in `tests/config/invalid/`
//! must fail naming the key of its `# expect-key:` first line; environment
//! overrides; the sample `config/hearthlink.toml` loads and, with
//! `docs/config.md`, documents every key.
//!
//! Paths inside the fixtures are relative to the crate root, which is the
//! working directory cargo gives integration tests.

use std::path::{Path, PathBuf};

use hearthlink::config::{self, BrokerAddr, ConfigError, Loaded, PrivacyMode};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn toml_files(dir: &str) -> Vec<PathBuf> {
    let dir = root().join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    files.sort();
    files
}

fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn fixture(name: &str, env: &[(&str, &str)]) -> Result<Loaded, ConfigError> {
    config::load_with_env(&root().join("tests/config/valid").join(name), vars(env))
}

#[test]
fn every_valid_fixture_loads() {
    let files = toml_files("tests/config/valid");
    assert!(files.len() >= 4, "valid fixtures missing");
    for file in files {
        if let Err(e) = config::load_with_env(&file, Vec::new()) {
            panic!("{} should load: {e}", file.display());
        }
    }
}

#[test]
fn every_invalid_fixture_fails_naming_its_key() {
    let files = toml_files("tests/config/invalid");
    assert!(files.len() >= 15, "need at least 15 invalid fixtures");
    let mut problems = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read fixture");
        let first = text.lines().next().unwrap_or_default();
        let Some(expected) = first.strip_prefix("# expect-key:").map(str::trim) else {
            problems.push(format!(
                "{}: first line must be `# expect-key: KEY`",
                file.display()
            ));
            continue;
        };
        match config::load_with_env(&file, Vec::new()) {
            Ok(_) => problems.push(format!(
                "{}: loaded, expected an error for `{expected}`",
                file.display()
            )),
            Err(e) if e.key() != Some(expected) => problems.push(format!(
                "{}: expected key `{expected}`, got: {e}",
                file.display()
            )),
            Err(e) => assert!(
                e.to_string()
                    .starts_with(&format!("config key `{expected}`: ")),
                "{e}"
            ),
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

/// `mqtt.port` of a configuration that reaches the broker over TCP.
fn port(c: &config::Config) -> u16 {
    match &c.mqtt.broker {
        BrokerAddr::Tcp { port, .. } => *port,
        other => panic!("expected a TCP broker, got {other}"),
    }
}

#[test]
fn full_fixture_sets_every_key() {
    let c = fixture("full.toml", &[]).expect("full.toml").config;
    assert_eq!(c.gateway_id, "living-room.gw_2");
    assert_eq!(
        c.control_socket,
        Path::new("/tmp/hearthlink-fixture/ctl.sock")
    );
    assert_eq!(
        (c.mqtt.broker.to_string(), c.mqtt.qos, c.mqtt.keep_alive_s),
        ("broker.lan:8883".to_owned(), 2, 60)
    );
    assert_eq!(c.mqtt.client_id, "hl-living-room");
    assert_eq!(
        c.mqtt.password.as_ref().map(|p| p.expose()),
        Some("broker-password")
    );
    assert_eq!(c.mqtt.subscribe, ["ampio/from/#", "zigbee2mqtt/+/state"]);
    assert_eq!(
        c.cloud.url.as_str(),
        "wss://cloud.example.com:8443/v1/gateway?region=eu"
    );
    assert_eq!(
        c.cloud.ca_file.as_deref(),
        Some(Path::new("tests/config/files/ca.pem"))
    );
    assert_eq!(c.cloud.pin_sha256.len(), 2);
    assert_eq!(c.cloud.pin_sha256[1], [0u8; 32]);
    assert_eq!((c.cloud.heartbeat_s, c.cloud.max_backoff_s), (15, 120));
    assert_eq!(
        (
            c.cloud.max_frame_bytes,
            c.cloud.buffer_topics,
            c.cloud.buffer_bytes
        ),
        (1 << 20, 50_000, 1 << 20)
    );
    assert_eq!(
        c.relay.command_topics,
        ["ampio/to/+/o/+/cmd", "zigbee2mqtt/+/set"]
    );
    assert_eq!(c.relay.max_payload_bytes, 4096);
    assert_eq!(c.privacy.mode, PrivacyMode::Allow);
    assert_eq!(c.privacy.strip_keys, ["iban", "gps"]);
    assert_eq!(c.privacy.allow_keys, ["value", "state", "brightness"]);
    assert_eq!(
        (c.limits.commands_per_second, c.limits.command_burst),
        (2.5, 5)
    );
    assert_eq!(
        (
            c.audit.retention_days,
            c.audit.max_file_bytes,
            c.audit.max_files
        ),
        (90, 10 << 20, 20)
    );
    assert_eq!(
        c.metrics.listen.map(|a| a.to_string()).as_deref(),
        Some("127.0.0.1:9100")
    );
}

#[test]
fn env_overrides_top_level_nested_and_lists() {
    let c = fixture(
        "minimal.toml",
        &[
            ("HEARTHLINK__GATEWAY_ID", "007"),
            ("HEARTHLINK__MQTT__PORT", "1884"),
            ("HEARTHLINK__MQTT__SUBSCRIBE", "a/#,b/+"),
            ("HEARTHLINK__PRIVACY__ALLOW_KEYS", "value, state"),
            ("Hearthlink__Cloud__Heartbeat_S", "5"),
        ],
    )
    .expect("overrides apply")
    .config;
    assert_eq!(c.gateway_id, "007");
    assert_eq!(port(&c), 1884);
    assert_eq!(c.mqtt.subscribe, ["a/#", "b/+"]);
    assert_eq!(c.privacy.allow_keys, ["value", "state"]);
    assert_eq!(c.cloud.heartbeat_s, 5);
}

#[test]
fn env_beats_file_beats_default() {
    let file = fixture("full.toml", &[]).expect("full").config;
    assert_eq!(port(&file), 8883);
    let env = fixture("full.toml", &[("HEARTHLINK__MQTT__PORT", "1")])
        .expect("env")
        .config;
    assert_eq!(port(&env), 1);
    let unset = fixture(
        "full.toml",
        &[
            ("HEARTHLINK__MQTT__CLIENT_ID", ""),
            ("HEARTHLINK__CLOUD__CA_FILE", ""),
        ],
    )
    .expect("unset")
    .config;
    assert_eq!(unset.mqtt.client_id, "hearthlink-living-room.gw_2");
    assert!(unset.cloud.ca_file.is_none());
}

#[test]
fn unknown_env_variable_is_an_error_naming_it() {
    let e =
        fixture("minimal.toml", &[("HEARTHLINK__MQTT__HOTS", "broker")]).expect_err("unknown var");
    assert_eq!(e.key(), Some("mqtt.hots"));
    let text = e.to_string();
    assert!(
        text.contains("unknown key") && text.contains("`HEARTHLINK__MQTT__HOTS`"),
        "{text}"
    );
    let e = fixture("minimal.toml", &[("HEARTHLINK__VERBOSE", "1")])
        .expect_err("unknown top-level var");
    assert_eq!(e.key(), Some("verbose"));
    let e = fixture(
        "minimal.toml",
        &[("HEARTHLINK__CLOUD__HEARTBEAT_S", "often")],
    )
    .expect_err("bad int");
    assert_eq!(e.key(), Some("cloud.heartbeat_s"));
    assert!(
        e.to_string().contains("HEARTHLINK__CLOUD__HEARTBEAT_S"),
        "{e}"
    );
}

#[test]
fn sample_config_loads_cleanly_with_paths_overridden() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("token");
    std::fs::write(&token, "sample-token\n").expect("write token");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    let loaded = config::load_with_env(
        &root().join("config/hearthlink.toml"),
        vec![
            (
                "HEARTHLINK__CLOUD__TOKEN_FILE".to_owned(),
                token.display().to_string(),
            ),
            (
                "HEARTHLINK__STATE_DIR".to_owned(),
                dir.path().display().to_string(),
            ),
        ],
    )
    .unwrap_or_else(|e| panic!("sample config: {e}"));
    assert!(
        loaded.warnings.is_empty(),
        "sample config warns: {:?}",
        loaded.warnings
    );
    let c = loaded.config;
    assert_eq!(c.cloud.url.as_str(), "wss://cloud.example.com/v1/gateway");
    assert_eq!(c.control_socket, dir.path().join("control.sock"));
}

/// Lines `key = ...` or `# key = ...` per `[section]` of the sample.
fn sample_keys(text: &str) -> Vec<String> {
    let mut section = String::new();
    let mut keys = Vec::new();
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = format!("{name}.");
            continue;
        }
        let line = line.trim_start_matches('#').trim();
        if let Some((key, _)) = line.split_once('=') {
            let key = key.trim();
            if !key.is_empty()
                && key
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            {
                keys.push(format!("{section}{key}"));
            }
        }
    }
    keys
}

#[test]
fn every_key_is_in_the_sample_and_the_docs() {
    let sample = std::fs::read_to_string(root().join("config/hearthlink.toml")).expect("sample");
    let docs = std::fs::read_to_string(root().join("docs/config.md")).expect("docs");
    let in_sample = sample_keys(&sample);
    let mut missing = Vec::new();
    for key in config::all_keys() {
        if !in_sample.iter().any(|k| k == key) {
            missing.push(format!("{key} not in config/hearthlink.toml"));
        }
        if !docs.contains(&format!("| `{key}` |")) {
            missing.push(format!("{key} has no row in docs/config.md"));
        }
        let var = format!(
            "`HEARTHLINK__{}`",
            key.to_ascii_uppercase().replace('.', "__")
        );
        if !docs.contains(&var) {
            missing.push(format!("{key}: {var} not in docs/config.md"));
        }
    }
    let known = config::all_keys();
    for key in &in_sample {
        if !known.contains(&key.as_str()) {
            missing.push(format!(
                "config/hearthlink.toml shows `{key}`, which is not a key"
            ));
        }
    }
    assert!(missing.is_empty(), "\n{}", missing.join("\n"));
}
