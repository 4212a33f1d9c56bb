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
        c.mqtt.broker,
        BrokerAddr::Tcp {
            host: "127.0.0.1".into(),
            port: 1883
        }
    );
    assert_eq!(c.mqtt.qos, 1);
    assert_eq!(c.mqtt.client_id, "hearthlink-gw-1");
    assert_eq!(c.mqtt.subscribe, ["ampio/from/#"]);
    assert_eq!(c.mqtt.keep_alive_s, 30);
    assert!(c.mqtt.password.is_none());
    assert_eq!((c.cloud.heartbeat_s, c.cloud.max_backoff_s), (20, 60));
    assert_eq!(
        (
            c.cloud.max_frame_bytes,
            c.cloud.buffer_topics,
            c.cloud.buffer_bytes
        ),
        (262_144, 10_000, 8 << 20)
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
            Kind::Num(..) => ValueKind::Float(1.5),
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
    assert!(
        matches!(c.mqtt.broker, BrokerAddr::Tcp { port: 1884, .. }),
        "{:?}",
        c.mqtt.broker
    );
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
    assert!(loaded.warnings[0].contains("\"Name\" is a strip key"));
    let e = load_err(&format!("{toml}[privacy]\nstrip_keys = [\"--\"]\n"), &[]);
    assert_eq!(e.key(), Some("privacy.strip_keys"));
}

#[test]
fn limits_and_metrics() {
    let (_dir, toml) = setup();
    for bad in ["0", "-1", "nan", "inf", "1e-9", "0.0009", "1e7"] {
        let e = load_err(&toml, &[("HEARTHLINK__LIMITS__COMMANDS_PER_SECOND", bad)]);
        assert_eq!(e.key(), Some("limits.commands_per_second"), "{bad}");
        assert!(e.to_string().contains("0.001"), "the range is named: {e}");
    }
    for bad in ["0", "1000001", "4294967295"] {
        let e = load_err(&toml, &[("HEARTHLINK__LIMITS__COMMAND_BURST", bad)]);
        assert_eq!(e.key(), Some("limits.command_burst"), "{bad}");
    }
    for good in ["0.001", "1000000"] {
        load_ok(&toml, &[("HEARTHLINK__LIMITS__COMMANDS_PER_SECOND", good)]);
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

#[test]
fn mqtt_socket_replaces_host_and_port() {
    let (_dir, toml) = setup();
    let c = load_ok(&toml, &[]).config;
    assert_eq!(c.mqtt.broker.to_string(), "127.0.0.1:1883");

    let sock = "/run/mosquitto/mosquitto.sock";
    let unix = BrokerAddr::Unix(PathBuf::from(sock));
    let c = load_ok(&format!("{toml}[mqtt]\nsocket = {sock:?}\n"), &[]).config;
    assert_eq!(c.mqtt.broker, unix);
    assert_eq!(c.mqtt.broker.to_string(), format!("unix:{sock}"));
    // From the environment too; an empty value unsets it.
    let c = load_ok(&toml, &[("HEARTHLINK__MQTT__SOCKET", sock)]).config;
    assert_eq!(c.mqtt.broker, unix);
    let c = load_ok(&toml, &[("HEARTHLINK__MQTT__SOCKET", "")]).config;
    assert_eq!(c.mqtt.broker.to_string(), "127.0.0.1:1883");

    // Exclusive with host and port, wherever each is set.
    let e = load_err(
        &format!("{toml}[mqtt]\nsocket = {sock:?}\n"),
        &[("HEARTHLINK__MQTT__HOST", "10.0.0.2")],
    );
    assert_eq!(e.key(), Some("mqtt.socket"));
    assert!(e.to_string().contains("together with mqtt.host"), "{e}");
    let e = load_err(
        &format!("{toml}[mqtt]\nport = 1884\n"),
        &[("HEARTHLINK__MQTT__SOCKET", sock)],
    );
    assert!(e.to_string().contains("together with mqtt.port"), "{e}");
    assert!(e.to_string().contains("HEARTHLINK__MQTT__SOCKET"), "{e}");

    // A relative path loads with a warning; a socket path in `host` is
    // refused with a pointer to `socket`.
    let loaded = load_ok(&format!("{toml}[mqtt]\nsocket = \"m.sock\"\n"), &[]);
    assert!(
        loaded.warnings.iter().any(|w| w.contains("mqtt.socket")),
        "{:?}",
        loaded.warnings
    );
    let e = load_err(&format!("{toml}[mqtt]\nhost = {sock:?}\n"), &[]);
    assert_eq!(e.key(), Some("mqtt.host"));
    assert!(e.to_string().contains("mqtt.socket"), "{e}");
}
