//! Pass 3: meaning. Raw values into the validated [`Config`](super::Config).

#[allow(unused_imports)]
use super::*;

// ------------------------------------------------------------- pass 3: meaning

pub(super) fn validate(raw: RawConfig, w: &mut Vec<String>) -> Result<Config, ConfigError> {
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
            flush_s: raw.audit.flush_s,
        },
        metrics: metrics(raw.metrics, w)?,
    })
}

pub(super) fn required<T>(value: Option<T>, key: &str) -> Result<T, ConfigError> {
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

pub(super) fn control_socket(
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

/// `mqtt.host`: an IP address or a host name, without scheme or port.
fn mqtt_host(host: String) -> Result<String, ConfigError> {
    if host.parse::<std::net::IpAddr>().is_ok() {
        return Ok(host);
    }
    if host.contains("://") {
        return Err(invalid(
            "mqtt.host",
            format!("expected a host name or IP address without a scheme, got {host:?}"),
        ));
    }
    if host.contains(':') {
        return Err(invalid(
            "mqtt.host",
            format!("expected a host name or IP address, got {host:?}; put the port in mqtt.port"),
        ));
    }
    if host.chars().any(|c| c.is_whitespace() || c == '/') {
        let hint = if host.starts_with('/') {
            "; a Unix socket goes in mqtt.socket"
        } else {
            ""
        };
        return Err(invalid(
            "mqtt.host",
            format!("expected a host name or IP address, got {host:?}{hint}"),
        ));
    }
    Ok(host)
}

pub(super) fn mqtt(
    raw: RawMqtt,
    gateway_id: &str,
    w: &mut Vec<String>,
) -> Result<MqttConfig, ConfigError> {
    let broker = match raw.socket {
        Some(path) => {
            let tcp_key = match (&raw.host, raw.port) {
                (Some(_), _) => Some("mqtt.host"),
                (None, Some(_)) => Some("mqtt.port"),
                (None, None) => None,
            };
            if let Some(both) = tcp_key {
                return Err(invalid(
                    "mqtt.socket",
                    format!(
                        "is set together with {both}; the broker is reached either over TCP (mqtt.host, mqtt.port) or through a Unix socket (mqtt.socket): remove one"
                    ),
                ));
            }
            let len = path.as_os_str().len();
            if len > MAX_SOCKET_PATH {
                return Err(invalid(
                    "mqtt.socket",
                    format!(
                        "{} is {len} bytes, but a Unix socket path may have at most {MAX_SOCKET_PATH}",
                        path.display()
                    ),
                ));
            }
            warn_relative("mqtt.socket", &path, w);
            BrokerAddr::Unix(path)
        }
        None => BrokerAddr::Tcp {
            host: mqtt_host(raw.host.unwrap_or_else(|| "127.0.0.1".to_owned()))?,
            port: raw.port.unwrap_or(1883),
        },
    };
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
        broker,
        client_id,
        username: raw.username,
        password,
        password_file: raw.password_file,
        subscribe: raw.subscribe,
        qos: raw.qos,
        keep_alive_s: raw.keep_alive_s,
    })
}

pub(super) fn check_filters(key: &str, filters: &[String]) -> Result<(), ConfigError> {
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

pub(super) fn cloud(raw: RawCloud, w: &mut Vec<String>) -> Result<CloudConfig, ConfigError> {
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
        buffer_bytes: raw.buffer_bytes,
    })
}

pub(super) fn cloud_url(
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

pub(super) fn check_token(path: &Path, w: &mut Vec<String>) -> Result<(), ConfigError> {
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

pub(super) fn check_ca_file(path: &Path, w: &mut Vec<String>) -> Result<(), ConfigError> {
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

pub(super) fn decode_pin(pin: &str) -> Result<[u8; 32], String> {
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
pub(super) fn read_secret_file(
    key: &str,
    path: &Path,
    w: &mut Vec<String>,
) -> Result<String, ConfigError> {
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

pub(super) fn read_limited(key: &str, path: &Path, limit: u64) -> Result<Vec<u8>, ConfigError> {
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

pub(super) fn warn_relative(key: &str, path: &Path, w: &mut Vec<String>) {
    if path.is_relative() {
        w.push(format!(
            "{key} = {:?} is a relative path, resolved against the daemon's working directory; prefer an absolute path",
            path.display().to_string()
        ));
    }
}

pub(super) fn relay(raw: RawRelay, w: &mut Vec<String>) -> Result<RelayConfig, ConfigError> {
    check_filters("relay.command_topics", &raw.command_topics)?;
    if raw.command_topics.is_empty() {
        w.push("relay.command_topics is empty: the cloud app can send no command".into());
    }
    Ok(RelayConfig {
        command_topics: raw.command_topics,
        max_payload_bytes: raw.max_payload_bytes,
    })
}

pub(super) fn privacy(raw: RawPrivacy, w: &mut Vec<String>) -> Result<PrivacyConfig, ConfigError> {
    for (key, list) in [
        ("privacy.strip_keys", &raw.strip_keys),
        ("privacy.allow_keys", &raw.allow_keys),
    ] {
        if let Some((i, item)) = list
            .iter()
            .enumerate()
            .find(|(_, k)| key_forms(k).iter().all(String::is_empty))
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
            "privacy.allow_keys: {key:?} is a strip key or has one as a word (built in or in privacy.strip_keys), so it is stripped anyway"
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

pub(super) fn limits(raw: RawLimits) -> Result<LimitsConfig, ConfigError> {
    // The range is checked with the tree (schema.rs, edge rule 24).
    Ok(LimitsConfig {
        commands_per_second: raw.commands_per_second,
        command_burst: raw.command_burst,
        max_connections: raw.max_connections,
    })
}

pub(super) fn metrics(raw: RawMetrics, w: &mut Vec<String>) -> Result<MetricsConfig, ConfigError> {
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
