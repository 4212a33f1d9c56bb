//! Child processes of the load bench (private mosquitto brokers and the
//! release `hearthlink` binary) and what `/proc` says about them.
//!
//! Every child is started by the bench on a free loopback port, with its
//! config in a tempdir, and killed (by its own pid, through `Child::kill`)
//! when its [`Proc`] is dropped. Port 1883 is never used: a shared broker
//! runs there.

use std::fs;
use std::io;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where mosquitto lives on Debian/Ubuntu.
pub const MOSQUITTO: &str = "/usr/sbin/mosquitto";

/// A running child process, killed on drop.
pub struct Proc {
    pub name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command, log: PathBuf) -> io::Result<Proc> {
        let out = fs::File::create(&log)?;
        let err = out.try_clone()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()?;
        Ok(Proc {
            name: name.to_owned(),
            child,
            log,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails with the tail of the child's log when it has exited.
    pub fn check_alive(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!(
                "{} exited ({status}); log tail:\n{}",
                self.name,
                self.log_tail(20)
            )),
            Err(e) => Err(format!("{}: {e}", self.name)),
        }
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    pub fn hwm_kb(&self) -> u64 {
        status_kb(self.pid(), "VmHWM:").unwrap_or(0)
    }

    pub fn idle_mem(&self) -> crate::report::IdleMem {
        let kb = |key| status_kb(self.pid(), key).unwrap_or(0);
        crate::report::IdleMem {
            hwm_kb: kb("VmHWM:"),
            rss_anon_kb: kb("RssAnon:"),
            rss_file_kb: kb("RssFile:"),
        }
    }
}

impl Drop for Proc {
    /// SIGTERM first (so a profiler wrapping the child can write its
    /// output, and the daemon closes its links cleanly), SIGKILL after 10 s.
    fn drop(&mut self) {
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: signalling our own child, which has not been reaped yet.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The 1-minute load average (`/proc/loadavg`), to judge how quiet the
/// machine was.
pub fn loadavg() -> f64 {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split(' ').next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

/// A free loopback port (bound, then released). Never 1883.
pub fn free_port() -> io::Result<u16> {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        if port != 1883 {
            return Ok(port);
        }
    }
}

/// Waits until something accepts TCP connections on `port`.
pub fn wait_port(proc: &mut Proc, port: u16, within: Duration) -> Result<(), String> {
    let deadline = Instant::now() + within;
    loop {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        proc.check_alive()?;
        if Instant::now() > deadline {
            return Err(format!(
                "{} did not listen on {port} in {within:?}",
                proc.name
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts mosquitto with `conf` (written to `dir/<name>.conf`) and waits
/// for it to listen on `port`.
pub fn mosquitto(dir: &Path, name: &str, port: u16, conf: &str) -> Result<Proc, String> {
    let path = dir.join(format!("{name}.conf"));
    fs::write(&path, conf).map_err(|e| format!("writing {}: {e}", path.display()))?;
    let mut p = Proc::spawn(
        name,
        Command::new(MOSQUITTO).arg("-c").arg(&path),
        dir.join(format!("{name}.log")),
    )
    .map_err(|e| format!("starting {MOSQUITTO}: {e}"))?;
    wait_port(&mut p, port, Duration::from_secs(10))?;
    Ok(p)
}

/// Set by `--broker-nodelay`: every broker gets `set_tcp_nodelay true`
/// (mosquitto's default leaves Nagle on, which holds small packets such as
/// a PUBACK until the previous segment is acknowledged).
pub static BROKER_NODELAY: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Plain listener, anonymous clients, nothing persisted.
pub fn plain_broker_conf(port: u16) -> String {
    let nodelay = BROKER_NODELAY.load(std::sync::atomic::Ordering::Relaxed);
    format!(
        "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
         max_queued_messages 100000\n{}",
        if nodelay {
            "set_tcp_nodelay true\n"
        } else {
            ""
        }
    )
}

/// A Unix socket listener at `path`, added to a broker's config. Run as
/// root, mosquitto would switch to its own user, which cannot create the
/// socket in the bench's root-owned tempdir: `user root` keeps it (and
/// means nothing when not run as root).
pub fn socket_listener_conf(path: &Path) -> String {
    format!("user root\nlistener 0 {}\n", path.display())
}

/// Broker B of the bridge path: a plain listener on `plain` for the
/// local subscriber and a TLS listener on `tls` for the bridge.
pub fn tls_broker_conf(plain: u16, tls: u16, cert: &Path, key: &Path) -> String {
    format!(
        "{}listener {tls} 127.0.0.1\ncertfile {}\nkeyfile {}\n",
        plain_broker_conf(plain),
        cert.display(),
        key.display()
    )
}

/// Broker A of the bridge path: a plain listener and a TLS bridge to B
/// carrying `bench/#` out at `qos`, verifying B against `ca`.
pub fn bridging_broker_conf(port: u16, remote: u16, ca: &Path, qos: u8) -> String {
    format!(
        "{}connection bench-bridge\naddress 127.0.0.1:{remote}\ntopic bench/# out {qos}\n\
         bridge_cafile {}\nbridge_insecure false\nbridge_protocol_version mqttv311\n\
         cleansession true\nremote_clientid bench-bridge-a\nnotifications false\n\
         start_type automatic\nrestart_timeout 1\nmax_inflight_messages 1000\n",
        plain_broker_conf(port),
        ca.display()
    )
}

/// What the hearthlink config needs to know.
pub struct HearthlinkSetup<'a> {
    pub dir: &'a Path,
    pub mqtt_port: u16,
    /// The broker's Unix socket, used instead of `mqtt_port` when set.
    pub mqtt_socket: Option<&'a Path>,
    pub cloud_port: u16,
    pub ca_file: &'a Path,
    pub token: &'a str,
}

impl HearthlinkSetup<'_> {
    /// Writes the bearer token to `dir/token` (mode 0600); returns its path.
    fn write_token(&self) -> Result<PathBuf, String> {
        let path = self.dir.join("token");
        write_private(&path, self.token)?;
        Ok(path)
    }
}

/// Writes config + token and starts `bin run --config FILE`.
pub fn hearthlink(bin: &Path, s: &HearthlinkSetup<'_>) -> Result<Proc, String> {
    let token_file = s.write_token()?;
    let state = s.dir.join("state");
    let config = format!(
        r#"gateway_id = "bench"
state_dir = "{state}"

[mqtt]
{broker}
subscribe = ["bench/#"]

[cloud]
url = "wss://localhost:{cloud}/v1/gateway"
token_file = "{token}"
ca_file = "{ca}"

[relay]
command_topics = ["ampio/to/#"]

[limits]
# The bench sends up to tens of thousands of commands per second from one
# source; the default (10/s) would reject almost all of them.
commands_per_second = 1000000
command_burst = 1000000
"#,
        state = state.display(),
        broker = match s.mqtt_socket {
            Some(path) => format!("socket = {:?}", path.display().to_string()),
            None => format!("host = \"127.0.0.1\"\nport = {}", s.mqtt_port),
        },
        cloud = s.cloud_port,
        token = token_file.display(),
        ca = s.ca_file.display(),
    );
    let path = s.dir.join("hearthlink.toml");
    fs::write(&path, config).map_err(|e| format!("writing {}: {e}", path.display()))?;
    Proc::spawn(
        "hearthlink",
        Command::new(bin)
            .arg("run")
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", "info"),
        s.dir.join("hearthlink.log"),
    )
    .map_err(|e| format!("starting {}: {e}", bin.display()))
}

/// Starts the naive relay: this bench binary again, with [`crate::naive::FLAG`].
pub fn naive_relay(s: &HearthlinkSetup<'_>) -> Result<Proc, String> {
    let token_file = s.write_token()?;
    let exe = std::env::current_exe().map_err(|e| format!("the bench's own path: {e}"))?;
    Proc::spawn(
        "naive",
        Command::new(exe)
            .arg(crate::naive::FLAG)
            .arg(s.mqtt_port.to_string())
            .arg(s.cloud_port.to_string())
            .arg(s.ca_file)
            .arg(&token_file),
        s.dir.join("naive.log"),
    )
    .map_err(|e| format!("starting the naive relay: {e}"))
}

/// Starts the floor relay: this bench binary again, with
/// [`crate::floor::FLAG`], on the broker's Unix socket.
pub fn floor_relay(s: &HearthlinkSetup<'_>) -> Result<Proc, String> {
    let token_file = s.write_token()?;
    let socket = s
        .mqtt_socket
        .ok_or("the floor relay needs the broker's Unix socket")?;
    let exe = std::env::current_exe().map_err(|e| format!("the bench's own path: {e}"))?;
    Proc::spawn(
        "floor",
        Command::new(exe)
            .arg(crate::floor::FLAG)
            .arg(socket)
            .arg(s.cloud_port.to_string())
            .arg(s.ca_file)
            .arg(&token_file),
        s.dir.join("floor.log"),
    )
    .map_err(|e| format!("starting the floor relay: {e}"))
}

fn write_private(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("writing {}: {e}", path.display()))?;
    f.write_all(text.as_bytes())
        .map_err(|e| format!("writing {}: {e}", path.display()))
}

/// utime + stime of `pid` (all threads), in clock ticks.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split(' ');
    // rest starts at field 3 (state); utime is field 14, stime field 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// A `kB` line of `/proc/<pid>/status` (`VmHWM:`, `VmRSS:`).
pub fn status_kb(pid: u32, key: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    line[key.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Clock ticks per second (`getconf CLK_TCK`), 100 when it cannot be read.
pub fn clk_tck() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}
