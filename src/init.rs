//! `hearthlink init`: write a first configuration and the cloud token file.
//!
//! The config is the sample `config/hearthlink.toml` (compiled in, so the
//! comments an installer reads are the ones the project tests) with
//! `gateway_id`, `cloud.url` and `cloud.token_file` filled in, and
//! `mqtt.subscribe` and `relay.command_topics` when given. Before
//! anything is written, the text is run through [`crate::config`]'s own
//! validation, so init accepts exactly what `check-config` accepts.
//!
//! Files are written as the durable store does (temp file, fsync, rename,
//! fsync the directory), with explicit modes: the config 0644 (it holds no
//! secret, and the systemd unit's transient user must read it), the token
//! 0600. An existing config or token is kept unless `force` is set; the
//! one exception is a config byte-identical to the sample, which is what
//! the Debian package installs and carries nothing of the operator's.
//! Without `force`, the new file is put in place with `link(2)`, which
//! fails rather than replace a file that appeared meanwhile.
//!
//! Error types carry their cause in the message rather than as a
//! `source`, so `main`'s `{e:#}` prints each cause once. Nothing here runs
//! async: init runs before any daemon exists.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::config::{self, ConfigError, Secret};

/// The sample configuration, the template init fills in.
pub const SAMPLE_CONFIG: &str = include_str!("../config/hearthlink.toml");
/// Where the token goes when `--token-file` is not given.
pub const DEFAULT_TOKEN_FILE: &str = "/etc/hearthlink/token";
/// Mode of the written config: readable by the daemon's (transient) user.
pub const CONFIG_MODE: u32 = 0o644;
/// Mode of the written token file.
pub const TOKEN_MODE: u32 = 0o600;
/// A token read from standard input longer than this is the wrong input.
const TOKEN_MAX_BYTES: u64 = 64 * 1024;

/// What to write. Built by [`InitArgs::into_options`] or directly (tests).
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// 1 to 64 characters of `A-Za-z0-9._-`.
    pub gateway_id: String,
    /// `wss://...` (config's `cloud.url` rules).
    pub cloud_url: String,
    /// Absolute path the config names as `cloud.token_file`.
    pub token_file: PathBuf,
    /// The config file to write.
    pub config: PathBuf,
    /// The token to write to `token_file`; `None` leaves that file alone.
    pub token: Option<Secret>,
    /// Replace an existing config and token file.
    pub force: bool,
    /// `mqtt.subscribe`; empty keeps the sample's.
    pub subscribe: Vec<String>,
    /// `relay.command_topics`; empty keeps the sample's.
    pub command_topics: Vec<String>,
}

/// Why init wrote nothing (or, for `Write`, stopped part way).
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// The filled-in config fails the config module's validation.
    #[error("checking the new configuration: {0}")]
    Invalid(ConfigError),
    /// A file is there and `force` was not given.
    #[error("{} already exists; pass --force to overwrite it", path.display())]
    Exists { path: PathBuf },
    /// The daemon runs from `/`: a relative token path would point elsewhere.
    #[error("--token-file must be an absolute path, got {}", path.display())]
    RelativeTokenFile { path: PathBuf },
    /// Paths are written into TOML, which holds only UTF-8.
    #[error("{} is not valid UTF-8 and cannot be written into the config", path.display())]
    NonUtf8Path { path: PathBuf },
    /// The token given is unusable.
    #[error("the token {why}")]
    BadToken { why: &'static str },
    /// Standard input could not be read.
    #[error("reading the token from standard input: {0}")]
    Stdin(io::Error),
    /// A directory could not be created.
    #[error("creating directory {}: {error}", path.display())]
    CreateDir { path: PathBuf, error: io::Error },
    /// A file could not be written.
    #[error("writing {}: {error}", path.display())]
    Write { path: PathBuf, error: io::Error },
    /// The compiled-in sample lost a line init fills in.
    #[error("the sample config has no line {line:?} to fill in (please report this)")]
    Template { line: &'static str },
}

/// `hearthlink init` arguments.
#[derive(clap::Args, Debug)]
pub struct InitArgs {
    /// This gateway's id: 1 to 64 characters of A-Z a-z 0-9 . _ -
    #[arg(long)]
    pub gateway_id: String,
    /// The cloud endpoint, e.g. wss://cloud.example.com/v1/gateway
    #[arg(long)]
    pub cloud_url: String,
    /// Where the daemon reads its cloud token (absolute path).
    #[arg(long, default_value = DEFAULT_TOKEN_FILE)]
    pub token_file: PathBuf,
    /// The token itself. Other users can see it in the process list: prefer
    /// piping it on standard input, which is read when it is a file or pipe.
    #[arg(long)]
    pub token: Option<String>,
    /// The configuration file to write.
    #[arg(long, default_value = config::DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
    /// Overwrite an existing configuration and token file.
    #[arg(long)]
    pub force: bool,
    /// MQTT filters to relay (`mqtt.subscribe`), repeated or comma-separated,
    /// e.g. `zigbee2mqtt/#` (default: the sample's `ampio/from/#`).
    #[arg(long, value_delimiter = ',')]
    pub subscribe: Vec<String>,
    /// Topics the cloud may command (`relay.command_topics`), repeated or
    /// comma-separated, e.g. `zigbee2mqtt/+/set` (default: `ampio/to/#`).
    #[arg(long, value_delimiter = ',')]
    pub command_topics: Vec<String>,
}

impl InitArgs {
    /// Options for [`init`]. Without `--token`, the token is read from
    /// standard input when that is a file or a pipe; empty input means no
    /// token (a terminal or /dev/null is never read).
    pub fn into_options(self) -> Result<InitOptions, InitError> {
        let token = match self.token {
            Some(t) => Some(Secret::new(t)),
            None if stdin_is_file_or_pipe() => read_token(io::stdin().lock())?,
            None => None,
        };
        Ok(InitOptions {
            gateway_id: self.gateway_id,
            cloud_url: self.cloud_url,
            token_file: self.token_file,
            config: self.config,
            token,
            force: self.force,
            subscribe: self.subscribe,
            command_topics: self.command_topics,
        })
    }
}

/// `hearthlink init`: writes the files, says what it wrote and what is next.
pub fn run(args: InitArgs) -> Result<(), InitError> {
    let opts = args.into_options()?;
    for path in init(&opts)? {
        println!("wrote {}", path.display());
    }
    // The same check `run` will do, with the real environment.
    match config::load(&opts.config) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                println!("warning: {w}");
            }
            println!(
                "{}: configuration is valid; start with: systemctl enable --now hearthlink",
                opts.config.display()
            );
        }
        Err(e) if e.key() == Some("cloud.token_file") && opts.token.is_none() => {
            let (token, config) = (opts.token_file.display(), opts.config.display());
            println!("no token given ({e})");
            println!("next: write the cloud token to {token} (mode 0600), e.g. `install -m 600 /dev/stdin {token}`, then `hearthlink check-config --config {config}`");
        }
        Err(e) => println!("warning: the written configuration does not load yet: {e}"),
    }
    Ok(())
}

/// Writes the token file (when a token is given) and the config; returns
/// the files written, token first. Nothing is written when a check fails.
pub fn init(opts: &InitOptions) -> Result<Vec<PathBuf>, InitError> {
    let text = render(opts)?;
    let token = opts.token.as_ref().map(check_token).transpose()?;
    let replace_config = opts.force || is_pristine_sample(&opts.config);
    if !replace_config && exists(&opts.config) {
        return Err(InitError::Exists {
            path: opts.config.clone(),
        });
    }
    if token.is_some() && !opts.force && exists(&opts.token_file) {
        return Err(InitError::Exists {
            path: opts.token_file.clone(),
        });
    }
    let mut written = Vec::with_capacity(2);
    if let Some(token) = token {
        let line = format!("{token}\n");
        install(&opts.token_file, line.as_bytes(), TOKEN_MODE, opts.force)?;
        written.push(opts.token_file.clone());
    }
    install(&opts.config, text.as_bytes(), CONFIG_MODE, replace_config)?;
    written.push(opts.config.clone());
    Ok(written)
}

/// The sample with the operator's values, checked by the config module.
/// A missing or empty token file is not an error here: init is about to
/// write it, or the operator will.
pub fn render(opts: &InitOptions) -> Result<String, InitError> {
    if !opts.token_file.is_absolute() {
        return Err(InitError::RelativeTokenFile {
            path: opts.token_file.clone(),
        });
    }
    let token_file = opts
        .token_file
        .to_str()
        .ok_or_else(|| InitError::NonUtf8Path {
            path: opts.token_file.clone(),
        })?;
    let fills = [
        (
            "gateway_id = \"gw-1\"",
            "gateway_id",
            opts.gateway_id.as_str(),
        ),
        (
            "# client_id = \"hearthlink-gw-1\"",
            "# client_id",
            &format!("hearthlink-{}", opts.gateway_id),
        ),
        (
            "url = \"wss://cloud.example.com/v1/gateway\"",
            "url",
            opts.cloud_url.as_str(),
        ),
        (
            "token_file = \"/etc/hearthlink/token\"",
            "token_file",
            token_file,
        ),
    ];
    let mut text = SAMPLE_CONFIG.replacen(
        "# hearthlink sample configuration.",
        "# hearthlink configuration, written by `hearthlink init` from the sample.",
        1,
    );
    for (line, key, value) in fills {
        text = replace_line(&text, line, &format!("{key} = {}", toml_string(value)))?;
    }
    let lists = [
        (
            "subscribe = [\"ampio/from/#\"]",
            "subscribe",
            &opts.subscribe,
        ),
        (
            "command_topics = [\"ampio/to/#\"]",
            "command_topics",
            &opts.command_topics,
        ),
    ];
    for (line, key, items) in lists.into_iter().filter(|(_, _, items)| !items.is_empty()) {
        let array: Vec<String> = items.iter().map(|i| toml_string(i)).collect();
        text = replace_line(&text, line, &format!("{key} = [{}]", array.join(", ")))?;
    }
    match config::from_toml_str(&text, std::iter::empty()) {
        Ok(_) => Ok(text),
        Err(e) if e.key() == Some("cloud.token_file") => Ok(text),
        Err(e) => Err(InitError::Invalid(e)),
    }
}

/// Replaces the one line equal to `line`.
fn replace_line(text: &str, line: &'static str, new: &str) -> Result<String, InitError> {
    if text.lines().filter(|l| *l == line).count() != 1 {
        return Err(InitError::Template { line });
    }
    let lines: Vec<&str> = text
        .lines()
        .map(|l| if l == line { new } else { l })
        .collect();
    Ok(lines.join("\n") + "\n")
}

/// A TOML basic string. JSON's string escapes (`\"`, `\\`, `\n`, `\u00XX`)
/// are all valid TOML escapes, and serde_json never emits `\/`.
fn toml_string(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// The token as it will be written, checked as `cloud.token_file` is.
fn check_token(token: &Secret) -> Result<String, InitError> {
    let t = token.expose().trim();
    if t.is_empty() {
        return Err(InitError::BadToken { why: "is empty" });
    }
    if t.chars().any(char::is_control) {
        return Err(InitError::BadToken {
            why: "holds more than one line or control characters",
        });
    }
    Ok(t.to_owned())
}

/// Reads a token from `input`: `None` when it is empty, an error when it
/// holds only white space or is implausibly long.
fn read_token(input: impl Read) -> Result<Option<Secret>, InitError> {
    let mut bytes = Vec::new();
    input
        .take(TOKEN_MAX_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(InitError::Stdin)?;
    if bytes.is_empty() {
        return Ok(None);
    }
    if bytes.len() as u64 > TOKEN_MAX_BYTES {
        return Err(InitError::BadToken {
            why: "read from standard input is over 64 KiB",
        });
    }
    let text = String::from_utf8(bytes).map_err(|_| InitError::BadToken {
        why: "read from standard input is not UTF-8 text",
    })?;
    Ok(Some(Secret::new(text)))
}

fn stdin_is_file_or_pipe() -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::FileTypeExt;
    let Ok(fd) = io::stdin().as_fd().try_clone_to_owned() else {
        return false;
    };
    File::from(fd)
        .metadata()
        .map(|m| m.file_type().is_file() || m.file_type().is_fifo())
        .unwrap_or(false)
}

/// Anything at `path`, a dangling symlink included.
fn exists(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok()
}

/// The config is the untouched sample (as the Debian package installs it).
fn is_pristine_sample(path: &Path) -> bool {
    fs::read(path).is_ok_and(|bytes| bytes == SAMPLE_CONFIG.as_bytes())
}

/// Puts `bytes` at `path` with `mode`: temp file, fsync, then rename
/// (`replace`) or link (fails if `path` exists), fsync the directory.
fn install(path: &Path, bytes: &[u8], mode: u32, replace: bool) -> Result<(), InitError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(|error| InitError::CreateDir {
            path: dir.to_owned(),
            error,
        })?;
    let name = path.file_name().map_or_else(
        || "hearthlink".to_owned(),
        |n| n.to_string_lossy().into_owned(),
    );
    let tmp = dir.join(format!(".{name}.init.{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let result = write_new(&tmp, bytes, mode).and_then(|()| {
        if replace {
            fs::rename(&tmp, path)
        } else {
            let linked = fs::hard_link(&tmp, path);
            let _ = fs::remove_file(&tmp);
            linked
        }
    });
    let _ = fs::remove_file(&tmp);
    match result {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(InitError::Exists {
            path: path.to_owned(),
        }),
        Err(error) => Err(InitError::Write {
            path: path.to_owned(),
            error,
        }),
        Ok(()) => File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|error| InitError::Write {
                path: dir.to_owned(),
                error,
            }),
    }
}

/// A new file with exactly `mode` (whatever the umask), synced.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    f.set_permissions(fs::Permissions::from_mode(mode))?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(dir: &Path) -> InitOptions {
        InitOptions {
            gateway_id: "gw-7".into(),
            cloud_url: "wss://cloud.example.net/v1/gateway".into(),
            token_file: dir.join("token"),
            config: dir.join("hearthlink.toml"),
            token: None,
            force: false,
            subscribe: Vec::new(),
            command_topics: Vec::new(),
        }
    }

    #[test]
    fn render_fills_the_sample_and_keeps_its_comments() {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = render(&opts(dir.path())).expect("render");
        assert!(text.contains("\ngateway_id = \"gw-7\"\n"), "{text}");
        assert!(text.contains("\n# client_id = \"hearthlink-gw-7\"\n"));
        assert!(text.contains("\nurl = \"wss://cloud.example.net/v1/gateway\"\n"));
        let token_line = format!("\ntoken_file = {:?}\n", dir.path().join("token"));
        assert!(text.contains(&token_line), "{text}");
        assert_eq!(
            text.matches("\n#").count(),
            SAMPLE_CONFIG.matches("\n#").count()
        );
    }

    #[test]
    fn render_rejects_what_config_rejects() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (id, url, key) in [
            ("gw 7", "wss://c.example/x", "gateway_id"),
            ("gw\"7", "wss://c.example/x", "gateway_id"),
            (&"g".repeat(65), "wss://c.example/x", "gateway_id"),
            ("gw-7", "https://c.example/x", "cloud.url"),
            ("gw-7", "ws://c.example/x", "cloud.url"),
            ("gw-7", "not a url", "cloud.url"),
        ] {
            let o = InitOptions {
                gateway_id: id.into(),
                cloud_url: url.into(),
                ..opts(dir.path())
            };
            match render(&o) {
                Err(InitError::Invalid(e)) => assert_eq!(e.key(), Some(key), "{id} {url}: {e}"),
                other => panic!("{id} {url}: {other:?}"),
            }
        }
        let rel = InitOptions {
            token_file: "token".into(),
            ..opts(dir.path())
        };
        assert!(matches!(
            render(&rel),
            Err(InitError::RelativeTokenFile { .. })
        ));
    }

    #[test]
    fn tokens_are_checked_and_read() {
        assert_eq!(check_token(&Secret::new(" t0k \n")).expect("ok"), "t0k");
        assert!(check_token(&Secret::new(" \n")).is_err());
        assert!(check_token(&Secret::new("a\nb")).is_err());
        assert!(read_token(&b""[..]).expect("empty").is_none());
        let t = read_token(&b"abc\n"[..]).expect("read").expect("some");
        assert_eq!(t.expose(), "abc\n");
        let big = vec![b'a'; TOKEN_MAX_BYTES as usize + 1];
        assert!(read_token(big.as_slice()).is_err());
    }

    #[test]
    fn pristine_sample_is_replaced_without_force() {
        let dir = tempfile::tempdir().expect("tempdir");
        let o = opts(dir.path());
        fs::write(&o.config, SAMPLE_CONFIG).expect("write sample");
        assert_eq!(init(&o).expect("init"), vec![o.config.clone()]);
        assert!(matches!(init(&o), Err(InitError::Exists { path }) if path == o.config));
    }
}
