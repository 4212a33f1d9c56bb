//! The environment layer: `HEARTHLINK__*` variables parsed by key type.

#[allow(unused_imports)]
use super::*;

// ------------------------------------------------------------------ environment

/// Overrides parsed from `HEARTHLINK__*` variables.
#[derive(Default)]
pub(super) struct EnvLayer {
    pub(super) values: Vec<(&'static str, ValueKind)>,
    /// Key -> the variable that set it, named in errors about that key.
    pub(super) origins: HashMap<&'static str, String>,
}

pub(super) fn env_layer(
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
pub(super) fn env_value(kind: Kind, raw: &str) -> Result<ValueKind, String> {
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
        Kind::Num(..) => ValueKind::Float(trimmed.parse().map_err(|_| wrong())?),
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
pub(super) fn merge(
    text: &str,
    origin: &Path,
    env: &EnvLayer,
) -> Result<Map<String, Value>, ConfigError> {
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
