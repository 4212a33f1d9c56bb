//! A TCP fault proxy the tests own (this kernel has no `netem`): it
//! forwards a free loopback port to a target and, on request, adds latency
//! and a bandwidth cap per direction, or cuts a connection after a number
//! of bytes from the client (so in the middle of a frame): with RST when
//! the cut was armed before the connection was accepted, else with FIN.
#![allow(dead_code)]

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct Faults {
    /// One-way delay, in microseconds.
    latency_us: AtomicU64,
    /// Bytes per second each way, 0 for no cap.
    bytes_per_s: AtomicU64,
    /// Client-to-target bytes still let through before a reset (-1: none).
    reset_after: AtomicI64,
    /// Connections accepted so far.
    accepted: AtomicU64,
    /// Cancelled by [`Proxy::cut`]: every connection open at that time.
    cut: std::sync::Mutex<CancellationToken>,
}

pub struct Proxy {
    pub port: u16,
    faults: Arc<Faults>,
    stop: CancellationToken,
}

impl Proxy {
    /// Forwards `127.0.0.1:<port>` to `127.0.0.1:target`.
    pub async fn start(target: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy bind");
        let port = listener.local_addr().expect("proxy addr").port();
        let faults = Arc::new(Faults {
            reset_after: AtomicI64::new(-1),
            ..Faults::default()
        });
        let stop = CancellationToken::new();
        let (f, s) = (faults.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let conn = tokio::select! {
                    _ = s.cancelled() => return,
                    c = listener.accept() => c,
                };
                let Ok((client, _)) = conn else { continue };
                f.accepted.fetch_add(1, Ordering::Relaxed);
                let (f, s) = (f.clone(), s.clone());
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(("127.0.0.1", target)).await {
                        serve(client, server, f, s).await;
                    }
                });
            }
        });
        Proxy { port, faults, stop }
    }

    /// Adds `latency` each way and caps each direction at `bits_per_s`.
    pub fn set_link(&self, latency: Duration, bits_per_s: u64) {
        self.faults
            .latency_us
            .store(latency.as_micros() as u64, Ordering::Relaxed);
        self.faults
            .bytes_per_s
            .store(bits_per_s / 8, Ordering::Relaxed);
    }

    /// Closes every connection open now (new ones go through).
    pub fn cut(&self) {
        let mut cut = self.faults.cut.lock().expect("cut lock");
        cut.cancel();
        *cut = CancellationToken::new();
    }

    /// Resets the next client-to-target stream after `bytes` more bytes.
    pub fn reset_after(&self, bytes: i64) {
        self.faults.reset_after.store(bytes, Ordering::Relaxed);
    }

    pub fn accepted(&self) -> u64 {
        self.faults.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn serve(client: TcpStream, server: TcpStream, f: Arc<Faults>, stop: CancellationToken) {
    let conn = stop.child_token();
    let cut = f.cut.lock().expect("cut lock").clone();
    let on_cut = conn.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = cut.cancelled() => on_cut.cancel(),
            _ = on_cut.cancelled() => {}
        }
    });
    if f.reset_after.load(Ordering::Relaxed) >= 0 {
        // Closing this connection will send RST, not FIN.
        let _ = client.set_zero_linger();
        let _ = server.set_zero_linger();
    }
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let up = pump(cr, sw, f.clone(), conn.clone(), true);
    let down = pump(sr, cw, f, conn.clone(), false);
    tokio::join!(up, down);
}

/// Reads `from`, and writes each chunk to `to` after the latency, at the
/// capped rate; a reset budget reaching zero drops both sides with RST.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    f: Arc<Faults>,
    conn: CancellationToken,
    client_side: bool,
) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(8);
    let reader = {
        let (f, conn) = (f.clone(), conn.clone());
        async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let n = tokio::select! {
                    _ = conn.cancelled() => return,
                    r = from.read(&mut buf) => match r { Ok(0) | Err(_) => return, Ok(n) => n },
                };
                let mut chunk = buf[..n].to_vec();
                if client_side {
                    let left = f.reset_after.load(Ordering::Relaxed);
                    if left >= 0 {
                        if (n as i64) >= left {
                            chunk.truncate(left as usize);
                            f.reset_after.store(-1, Ordering::Relaxed);
                            let _ = tx.send((Instant::now(), chunk)).await;
                            let _ = tx.send((Instant::now(), Vec::new())).await; // reset marker
                            return;
                        }
                        f.reset_after.store(left - n as i64, Ordering::Relaxed);
                    }
                }
                let due =
                    Instant::now() + Duration::from_micros(f.latency_us.load(Ordering::Relaxed));
                if tx.send((due, chunk)).await.is_err() {
                    return;
                }
            }
        }
    };
    let writer = async move {
        while let Some((due, chunk)) = rx.recv().await {
            if chunk.is_empty() {
                // The reset: both sides dropped (zero linger: RST).
                conn.cancel();
                return;
            }
            tokio::select! {
                _ = conn.cancelled() => return,
                _ = tokio::time::sleep_until(due) => {}
            }
            let rate = f.bytes_per_s.load(Ordering::Relaxed);
            let written = tokio::select! {
                _ = conn.cancelled() => return,
                w = to.write_all(&chunk) => w,
            };
            if written.is_err() {
                conn.cancel();
                return;
            }
            if rate > 0 {
                tokio::time::sleep(Duration::from_secs_f64(chunk.len() as f64 / rate as f64)).await;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}
