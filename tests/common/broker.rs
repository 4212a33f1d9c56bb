//! A private mosquitto broker per test.
//!
//! The port is found by binding 127.0.0.1:0 and dropping the listener; if
//! another process takes it before mosquitto binds, mosquitto exits and a
//! new port is tried. Port 1883 (the shared broker) is never used.
//! [`Broker::kill`] and [`Broker::restart`] stop and start the process on
//! the same port; `Drop` kills it. [`Broker::start_with_socket`] adds a
//! Unix socket listener in the broker's own directory.

use std::fs::File;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const MOSQUITTO: &str = "/usr/sbin/mosquitto";

pub struct Broker {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    starts: u32,
    /// Also listen on `dir/mqtt.sock`.
    socket: bool,
}

impl Broker {
    /// Starts mosquitto on a free loopback port and waits until it accepts.
    pub fn start() -> Broker {
        Self::start_inner(false)
    }

    /// Like [`Broker::start`], with a Unix socket listener too
    /// ([`Broker::socket_path`]) beside the TCP one.
    pub fn start_with_socket() -> Broker {
        Self::start_inner(true)
    }

    fn start_inner(socket: bool) -> Broker {
        let mut dir = tempfile::Builder::new()
            .prefix("hl-broker")
            .tempdir()
            .expect("broker tempdir");
        let mut last_err = String::new();
        for _ in 0..5 {
            let port = free_port();
            let mut b = Broker {
                port,
                dir,
                child: None,
                starts: 0,
                socket,
            };
            match b.spawn_and_wait(Duration::from_secs(10)) {
                Ok(()) => return b,
                Err(e) => {
                    last_err = e;
                    dir =
                        std::mem::replace(&mut b.dir, tempfile::tempdir().expect("broker tempdir"));
                }
            }
        }
        panic!("could not start mosquitto: {last_err}");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The Unix socket of a broker from [`Broker::start_with_socket`].
    pub fn socket_path(&self) -> PathBuf {
        self.dir.path().join("mqtt.sock")
    }

    /// The broker's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Kills the broker (SIGKILL) and waits for the process to end.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the broker (SIGSTOP): connections stay open, nothing is
    /// read or answered. [`Broker::kill`] still works on a frozen broker.
    pub fn pause(&self) {
        if let Some(child) = &self.child {
            let ok = Command::new("kill")
                .arg("-STOP")
                .arg(child.id().to_string())
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "kill -STOP mosquitto");
        }
    }

    /// Thaws a broker frozen by [`Broker::pause`] (SIGCONT).
    pub fn resume(&self) {
        if let Some(child) = &self.child {
            let ok = Command::new("kill")
                .arg("-CONT")
                .arg(child.id().to_string())
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "kill -CONT mosquitto");
        }
    }

    /// Bytes clients sent that the broker has not read yet (the receive
    /// queues of its established connections, from /proc/net/tcp).
    pub fn unread_bytes(&self) -> u64 {
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
        let port = format!(":{:04X}", self.port);
        table
            .lines()
            .skip(1)
            .filter_map(|line| {
                let cols: Vec<&str> = line.split_whitespace().collect();
                let (local, state, queues) = (cols.get(1)?, cols.get(3)?, cols.get(4)?);
                let rx = queues.split(':').nth(1)?;
                (local.ends_with(&port) && *state == "01")
                    .then(|| u64::from_str_radix(rx, 16).ok())
                    .flatten()
            })
            .sum()
    }

    /// Starts the broker again on the same port (no persistence: it comes
    /// back empty) and waits until it accepts connections.
    pub fn restart(&mut self) {
        self.kill();
        // The port was ours a moment ago; retry briefly in case the kernel
        // still holds it.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.spawn_and_wait(Duration::from_secs(10)) {
                Ok(()) => return,
                Err(e) if Instant::now() >= deadline => {
                    panic!("restarting mosquitto on port {}: {e}", self.port)
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("mosquitto.log")
    }

    fn spawn_and_wait(&mut self, timeout: Duration) -> Result<(), String> {
        let conf = self.dir.path().join("mosquitto.conf");
        let mut text = format!(
            "listener {} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 100000\n",
            self.port
        );
        if self.socket {
            // Run as root, mosquitto would switch to its own user, which
            // cannot create a socket in this root-owned directory; `user
            // root` keeps it (and means nothing when not run as root).
            text.push_str(&format!(
                "user root\nlistener 0 {}\n",
                self.socket_path().display()
            ));
        }
        std::fs::write(&conf, text).map_err(|e| format!("writing {conf:?}: {e}"))?;
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|e| format!("opening the broker log: {e}"))?;
        let err = log.try_clone().map_err(|e| e.to_string())?;
        self.starts += 1;
        let mut child = Command::new(MOSQUITTO)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("spawning {MOSQUITTO}: {e}"))?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "mosquitto exited with {status} on port {}: {}",
                    self.port,
                    self.log()
                ));
            }
            let addr = ([127, 0, 0, 1], self.port).into();
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("mosquitto did not accept on port {}", self.port));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A loopback port nobody listened on a moment ago (never 1883).
pub fn free_port() -> u16 {
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = l.local_addr().expect("local addr").port();
        if port != 1883 {
            return port;
        }
    }
}
