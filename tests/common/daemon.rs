//! The daemon under test: configured from TOML the harness writes, run
//! in-process with `hearthlink::run(config, token)` or as the real binary.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hearthlink::CancellationToken;
use serde_json::{json, Value};

use super::broker::Broker;
use super::cloud::CloudServer;
use super::toml_str;

/// Settings a test may change; `Default` is what most tests want.
#[derive(Debug, Clone)]
pub struct Opts {
    pub gateway_id: String,
    /// `None`: the cloud server's URL.
    pub url: Option<String>,
    /// `None`: the cloud server's CA file; `Some(None)`: no ca_file.
    pub ca_file: Option<Option<PathBuf>>,
    pub pin_sha256: Vec<String>,
    pub allow_insecure: bool,
    pub heartbeat_s: u64,
    /// `mqtt.socket` instead of the broker's TCP port.
    pub mqtt_socket: Option<PathBuf>,
    /// `mqtt.keep_alive_s` (5: a dead broker is noticed quickly).
    pub mqtt_keep_alive_s: u64,
    pub max_backoff_s: u64,
    pub max_frame_bytes: Option<u64>,
    pub buffer_topics: Option<u64>,
    pub buffer_bytes: Option<u64>,
    pub command_topics: Vec<String>,
    pub max_payload_bytes: Option<u64>,
    pub commands_per_second: Option<f64>,
    pub command_burst: Option<u32>,
    /// Raw TOML lines added at the top level (before any section).
    pub extra_top: String,
    /// Raw TOML added at the end (whole sections, e.g. `[audit]`).
    pub extra_sections: String,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            gateway_id: "gw-test".into(),
            url: None,
            ca_file: None,
            pin_sha256: Vec::new(),
            allow_insecure: false,
            heartbeat_s: 20,
            mqtt_socket: None,
            mqtt_keep_alive_s: 5,
            max_backoff_s: 1,
            max_frame_bytes: None,
            buffer_topics: None,
            buffer_bytes: None,
            command_topics: vec!["ampio/to/#".into()],
            max_payload_bytes: None,
            commands_per_second: None,
            command_burst: None,
            extra_top: String::new(),
            extra_sections: String::new(),
        }
    }
}

/// A directory with the token file, the state dir and the config file.
pub struct Files {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub toml: String,
}

impl Files {
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn control_socket(&self) -> PathBuf {
        self.state_dir().join("control.sock")
    }
}

/// Writes the token file and the config file for a daemon talking to
/// `broker_port` and `cloud`.
pub fn write_files(opts: &Opts, broker_port: u16, cloud: &CloudServer) -> Files {
    let dir = tempfile::Builder::new()
        .prefix("hl-gw")
        .tempdir()
        .expect("daemon tempdir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{}\n", cloud.token)).expect("write token");
    set_mode_600(&token_file);
    let toml = render(opts, dir.path(), &token_file, broker_port, cloud);
    let config_path = dir.path().join("hearthlink.toml");
    std::fs::write(&config_path, &toml).expect("write config");
    Files {
        dir,
        config_path,
        toml,
    }
}

fn set_mode_600(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod 600");
}

fn render(
    opts: &Opts,
    dir: &Path,
    token_file: &Path,
    broker_port: u16,
    cloud: &CloudServer,
) -> String {
    let path = |p: &Path| toml_str(&p.display().to_string());
    let list = |items: &[String]| {
        let quoted: Vec<String> = items.iter().map(|s| toml_str(s)).collect();
        format!("[{}]", quoted.join(", "))
    };
    let mut t = String::new();
    t.push_str(&format!("gateway_id = {}\n", toml_str(&opts.gateway_id)));
    t.push_str(&format!("state_dir = {}\n", path(&dir.join("state"))));
    t.push_str(&opts.extra_top);
    t.push_str("\n[mqtt]\n");
    match &opts.mqtt_socket {
        Some(socket) => t.push_str(&format!("socket = {}\n", path(socket))),
        None => t.push_str(&format!("host = \"127.0.0.1\"\nport = {broker_port}\n")),
    }
    t.push_str(&format!("keep_alive_s = {}\n", opts.mqtt_keep_alive_s));
    t.push_str("subscribe = [\"ampio/from/#\"]\n");
    t.push_str("\n[cloud]\n");
    let url = opts.url.clone().unwrap_or_else(|| cloud.url());
    t.push_str(&format!("url = {}\n", toml_str(&url)));
    t.push_str(&format!("token_file = {}\n", path(token_file)));
    match &opts.ca_file {
        None => t.push_str(&format!("ca_file = {}\n", path(&cloud.ca_file))),
        Some(Some(p)) => t.push_str(&format!("ca_file = {}\n", path(p))),
        Some(None) => {}
    }
    if !opts.pin_sha256.is_empty() {
        t.push_str(&format!("pin_sha256 = {}\n", list(&opts.pin_sha256)));
    }
    if opts.allow_insecure {
        t.push_str("allow_insecure = true\n");
    }
    t.push_str(&format!("heartbeat_s = {}\n", opts.heartbeat_s));
    t.push_str(&format!("max_backoff_s = {}\n", opts.max_backoff_s));
    if let Some(n) = opts.max_frame_bytes {
        t.push_str(&format!("max_frame_bytes = {n}\n"));
    }
    if let Some(n) = opts.buffer_topics {
        t.push_str(&format!("buffer_topics = {n}\n"));
    }
    if let Some(n) = opts.buffer_bytes {
        t.push_str(&format!("buffer_bytes = {n}\n"));
    }
    t.push_str("\n[relay]\n");
    t.push_str(&format!(
        "command_topics = {}\n",
        list(&opts.command_topics)
    ));
    if let Some(n) = opts.max_payload_bytes {
        t.push_str(&format!("max_payload_bytes = {n}\n"));
    }
    t.push_str("\n[limits]\n");
    if let Some(r) = opts.commands_per_second {
        t.push_str(&format!("commands_per_second = {r:?}\n"));
    }
    if let Some(b) = opts.command_burst {
        t.push_str(&format!("command_burst = {b}\n"));
    }
    t.push_str(&opts.extra_sections);
    t
}

/// `hearthlink::run_with` spawned on the test's runtime, stopped on drop.
pub struct Running {
    pub config: hearthlink::config::Config,
    token: CancellationToken,
    task: Option<tokio::task::JoinHandle<Result<(), hearthlink::Error>>>,
}

impl Running {
    pub fn spawn(config: hearthlink::config::Config, opts: hearthlink::Options) -> Running {
        super::init_tracing();
        let token = CancellationToken::new();
        let task = tokio::spawn(hearthlink::run_with(config.clone(), opts, token.clone()));
        Running {
            config,
            token,
            task: Some(task),
        }
    }

    /// Cancels the token and waits for `run_with` to return Ok (the state
    /// lock is released then).
    pub async fn stop(mut self) {
        self.token.cancel();
        if let Some(task) = self.task.take() {
            let r = tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("hearthlink::run did not return within 10 s of cancel")
                .expect("hearthlink::run panicked");
            if let Err(e) = r {
                panic!("hearthlink::run failed: {e}");
            }
        }
    }

    /// Whether `run` has returned (it should not, until stopped).
    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(|t| t.is_finished())
    }

    /// The `status` answer of the control socket.
    pub async fn status(&self) -> Value {
        let v =
            hearthlink::control::request(&self.config.control_socket, &json!({"cmd": "status"}))
                .await
                .unwrap_or_else(|e| panic!("control socket status: {e}"));
        v["status"].clone()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

/// The daemon running in-process on the test's runtime.
pub struct Daemon {
    pub files: Files,
    pub config: hearthlink::config::Config,
    running: Running,
}

impl Daemon {
    /// Loads the config (panicking on an error) and spawns `hearthlink::run`.
    pub fn start(opts: &Opts, broker: &Broker, cloud: &CloudServer) -> Daemon {
        let files = write_files(opts, broker.port(), cloud);
        let loaded = hearthlink::config::from_toml_str(&files.toml, std::iter::empty())
            .unwrap_or_else(|e| panic!("test config refused: {e}\n{}", files.toml));
        let config = loaded.config;
        Daemon {
            files,
            running: Running::spawn(config.clone(), hearthlink::Options::default()),
            config,
        }
    }

    /// Cancels the token and waits for `run` to return Ok.
    pub async fn stop(self) {
        self.running.stop().await;
    }

    /// Whether `run` has returned (it should not, until stopped).
    pub fn is_finished(&self) -> bool {
        self.running.is_finished()
    }

    /// The `status` answer of the control socket.
    pub async fn status(&self) -> Value {
        self.running.status().await
    }

    /// A status counter, e.g. `states_in`.
    pub async fn counter(&self, name: &str) -> u64 {
        self.status().await["counters"][name]
            .as_u64()
            .unwrap_or_else(|| panic!("status has no counter {name}"))
    }
}

/// The real binary as a child process.
pub struct Binary {
    pub child: Child,
    stderr_path: PathBuf,
}

impl Binary {
    /// Runs `hearthlink <args...>` with stderr to a file in `dir`.
    pub fn spawn(args: &[&str], dir: &Path) -> Binary {
        Self::spawn_with_env(args, dir, &[])
    }

    /// Like [`Binary::spawn`], with `env` added to an environment cleaned of
    /// inherited systemd variables (`NOTIFY_SOCKET`, `WATCHDOG_*`); an empty
    /// value removes the variable (`("RUST_LOG", "")`: `log_level` applies).
    pub fn spawn_with_env(args: &[&str], dir: &Path, env: &[(&str, &str)]) -> Binary {
        Self::spawn_under(&[], args, dir, env)
    }

    /// Like [`Binary::spawn_with_env`], run by `wrapper` (a command and
    /// its arguments, e.g. `["prlimit", "--nofile=128:128"]`).
    pub fn spawn_under(
        wrapper: &[&str],
        args: &[&str],
        dir: &Path,
        env: &[(&str, &str)],
    ) -> Binary {
        let stderr_path = dir.join(format!("{}.stderr", super::unique("bin")));
        let err = std::fs::File::create(&stderr_path).expect("stderr file");
        let bin = env!("CARGO_BIN_EXE_hearthlink");
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        cmd.args(args)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err);
        for (k, v) in env {
            if v.is_empty() {
                cmd.env_remove(k);
            } else {
                cmd.env(k, v);
            }
        }
        let child = cmd.spawn().expect("spawn hearthlink binary");
        Binary { child, stderr_path }
    }

    /// Whether the child is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Sends a signal by name (`TERM`, `INT`) with kill(1).
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -{name} {} failed", self.pid());
    }

    /// The exit code, waiting up to `timeout` (polling, no blocking wait).
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `hearthlink <args...>` to completion: (exit code, stdout, stderr).
pub fn run_binary(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_hearthlink"))
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run hearthlink binary");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
