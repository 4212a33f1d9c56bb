//! The key table (every key, its type and range) and pass 1: the merged
//! tree checked against it, with errors naming the key.

#[allow(unused_imports)]
use super::*;

/// The value type of a key, used to check TOML values and parse env values.
#[derive(Debug, Clone, Copy)]
pub(super) enum Kind {
    /// A non-empty string (also paths and URLs).
    Str,
    /// A string that may be left out; an empty env value unsets it.
    OptStr,
    /// One of the listed strings, exactly.
    OneOf(&'static [&'static str]),
    Bool,
    /// An integer in the inclusive range.
    Int(i64, i64),
    /// A finite number in the inclusive range; integers are accepted.
    Num(f64, f64),
    /// A list of strings; comma-separated in the environment.
    List,
}

/// Every key, in documentation order. Sections are the prefixes before `.`.
pub(super) const SCHEMA: &[(&str, Kind)] = &[
    ("gateway_id", Kind::Str),
    ("state_dir", Kind::Str),
    ("control_socket", Kind::OptStr),
    ("log_level", Kind::Str),
    ("mqtt.host", Kind::Str),
    ("mqtt.port", Kind::Int(1, 65535)),
    ("mqtt.socket", Kind::OptStr),
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
    ("cloud.buffer_bytes", Kind::Int(65_536, 1024 * MIB)),
    ("relay.command_topics", Kind::List),
    ("relay.max_payload_bytes", Kind::Int(1, 16 * MIB)),
    ("privacy.mode", Kind::OneOf(&["deny", "allow"])),
    ("privacy.strip_keys", Kind::List),
    ("privacy.allow_keys", Kind::List),
    // The rate limiter's period times the burst must fit its clock
    // (edge rule 24): 1000 s per command times 10^6 is 10^18 ns.
    ("limits.commands_per_second", Kind::Num(0.001, 1_000_000.0)),
    ("limits.command_burst", Kind::Int(1, 1_000_000)),
    ("limits.max_connections", Kind::Int(1, 4096)),
    ("audit.retention_days", Kind::Int(1, 3650)),
    ("audit.max_file_bytes", Kind::Int(4096, 1024 * MIB)),
    ("audit.max_files", Kind::Int(1, 1000)),
    ("audit.flush_s", Kind::Int(1, 3600)),
    ("metrics.listen", Kind::OptStr),
];

pub(super) const SECTIONS: &[&str] = &[
    "mqtt", "cloud", "relay", "privacy", "limits", "audit", "metrics",
];

/// Every dotted key a config may set, in documentation order.
pub fn all_keys() -> Vec<&'static str> {
    SCHEMA.iter().map(|(key, _)| *key).collect()
}

pub(super) fn kind_of(key: &str) -> Option<(&'static str, Kind)> {
    SCHEMA.iter().find(|(k, _)| *k == key).copied()
}

/// The environment variable that overrides `key`.
pub(super) fn env_name(key: &str) -> String {
    format!(
        "{ENV_PREFIX}{}",
        key.to_ascii_uppercase().replace('.', "__")
    )
}

// ------------------------------------------------------------ pass 1: the tree

/// Unknown keys (sorted, so the same file gives the same error), then each
/// known key's type and range in schema order.
pub(super) fn check_tree(root: &Map<String, Value>) -> Result<(), ConfigError> {
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

pub(super) fn lookup<'a>(root: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    match key.split_once('.') {
        None => root.get(key),
        Some((section, leaf)) => match &root.get(section)?.kind {
            ValueKind::Table(table) => table.get(leaf),
            _ => None,
        },
    }
}

pub(super) fn check_value(kind: Kind, value: &Value) -> Result<(), String> {
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
        (Kind::Num(lo, hi), ValueKind::I64(n)) => (lo..=hi).contains(&(*n as f64)),
        (Kind::Num(lo, hi), ValueKind::U64(n)) => (lo..=hi).contains(&(*n as f64)),
        (Kind::Num(lo, hi), ValueKind::Float(f)) => f.is_finite() && (lo..=hi).contains(f),
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
        if matches!(kind, Kind::Int(..) | Kind::Num(..) | Kind::Bool) && env_value(kind, s).is_ok()
        {
            message.push_str(" (a string: remove the quotes)");
        } else if matches!(kind, Kind::List) {
            message.push_str(&format!(" (write a list: [{s:?}])"));
        }
    }
    Err(message)
}

pub(super) fn expected(kind: Kind) -> String {
    match kind {
        Kind::Str | Kind::OptStr => "a string".into(),
        Kind::OneOf(choices) => {
            let quoted: Vec<String> = choices.iter().map(|c| format!("{c:?}")).collect();
            quoted.join(" or ")
        }
        Kind::Bool => "true or false".into(),
        Kind::Int(lo, hi) => format!("an integer {lo}..={hi}"),
        Kind::Num(lo, hi) => format!("a number {lo}..={hi}"),
        Kind::List => "a list of strings".into(),
    }
}

/// A value as the operator would write it, shortened.
pub(super) fn show(value: &Value) -> String {
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
pub(super) fn quote_segment(segment: &str) -> String {
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

pub(super) fn unknown_key(key: &str, var: Option<&str>) -> ConfigError {
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
pub(super) fn suggestion(key: &str) -> Option<&'static str> {
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
pub(super) fn edit_distance(a: &str, b: &str) -> usize {
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
