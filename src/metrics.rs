//! Optional Prometheus endpoint (`[metrics] listen`), off by default.
//!
//! Serves `GET /metrics` in the OpenMetrics text format (prometheus-client)
//! with the same counters as `hearthlink status`. The registry is built at
//! each scrape from the live atomics: scrapes are rare, the hot path pays
//! nothing for metrics.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::links;
use crate::protocol::Reason;
use crate::stats::Stats;

/// Errors of the metrics endpoint.
#[derive(Debug, thiserror::Error)]
#[error("metrics.listen {addr}: {source}")]
pub struct MetricsError {
    pub addr: String,
    pub source: std::io::Error,
}

/// Binds the listener (at start-up, so a taken port fails loudly).
pub async fn bind(addr: std::net::SocketAddr) -> Result<TcpListener, MetricsError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError {
            addr: addr.to_string(),
            source,
        })
}

fn counter(reg: &mut Registry, name: &str, help: &str, v: u64) {
    let c: Counter<u64> = Counter::default();
    c.inc_by(v);
    reg.register(name, help, c);
}

fn gauge(reg: &mut Registry, name: &str, help: &str, v: i64) {
    let g: Gauge<i64> = Gauge::default();
    g.set(v);
    reg.register(name, help, g);
}

/// The scrape body.
pub fn render(stats: &Stats, links: &links::Snapshot) -> String {
    let mut reg = Registry::with_prefix("hearthlink");
    let s = stats;
    gauge(
        &mut reg,
        "broker_connected",
        "1 when the broker link is up",
        s.broker.is_up() as i64,
    );
    gauge(
        &mut reg,
        "cloud_connected",
        "1 when the cloud session is up (welcome received, heartbeat alive)",
        s.cloud.is_up() as i64,
    );
    counter(
        &mut reg,
        "broker_reconnects",
        "Broker connections lost",
        s.broker.view().reconnects,
    );
    counter(
        &mut reg,
        "cloud_reconnects",
        "Cloud sessions lost",
        s.cloud.view().reconnects,
    );
    counter(
        &mut reg,
        "states_in",
        "MQTT messages received",
        Stats::get(&s.states_in),
    );
    counter(
        &mut reg,
        "mqtt_oversized",
        "MQTT messages over 16 MiB, skipped",
        Stats::get(&s.mqtt_oversized),
    );
    counter(
        &mut reg,
        "link_dropped_not_json",
        "Messages not sent to links: they look like JSON but are not strict JSON",
        Stats::get(&s.link_dropped_not_json),
    );
    counter(
        &mut reg,
        "frames_up",
        "App-audience state frames written",
        Stats::get(&s.frames_up),
    );
    counter(
        &mut reg,
        "link_frames_up",
        "Link-audience state frames written",
        Stats::get(&s.link_frames_up),
    );
    counter(
        &mut reg,
        "bytes_up",
        "Bytes written to the cloud",
        Stats::get(&s.bytes_up),
    );
    counter(
        &mut reg,
        "bytes_down",
        "Bytes read from the cloud",
        Stats::get(&s.bytes_down),
    );
    counter(
        &mut reg,
        "buffer_dropped",
        "State entries dropped from the full offline buffer",
        Stats::get(&s.buffer_dropped),
    );
    counter(
        &mut reg,
        "errors_sent",
        "Error frames sent",
        Stats::get(&s.errors_sent),
    );
    counter(
        &mut reg,
        "errors_dropped",
        "Error frames over the rate limit",
        Stats::get(&s.errors_dropped),
    );
    counter(
        &mut reg,
        "commands_ok",
        "Commands published and acknowledged",
        Stats::get(&s.commands_ok),
    );
    let rejected = Family::<Vec<(String, String)>, Counter<u64>>::default();
    for r in Reason::ALL {
        rejected
            .get_or_create(&vec![("reason".to_owned(), r.as_str().to_owned())])
            .inc_by(s.rejected(r));
    }
    reg.register(
        "commands_rejected",
        "Commands rejected, by reason",
        rejected,
    );
    gauge(
        &mut reg,
        "links_active",
        "Active assistant links",
        links.active().len() as i64,
    );
    gauge(
        &mut reg,
        "links_revoked",
        "Revoked assistant links (tombstones)",
        links.revoked_count() as i64,
    );
    let mut out = String::new();
    if encode(&mut out, &reg).is_err() {
        out.clear();
    }
    out
}

/// Serves scrapes until `token` is cancelled.
pub async fn serve(
    listener: TcpListener,
    mut admit: crate::admit::Admit,
    stats: Arc<Stats>,
    registry: Arc<links::Registry>,
    token: CancellationToken,
) {
    loop {
        let conn = tokio::select! {
            _ = token.cancelled() => return,
            c = listener.accept() => c,
        };
        let Ok((stream, _)) = conn else {
            tokio::time::sleep(crate::admit::ACCEPT_BACKOFF).await;
            continue;
        };
        let Some(permit) = admit.admit() else {
            continue; // dropped: closed at once
        };
        let (stats, registry) = (stats.clone(), registry.clone());
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), answer(stream, &stats, &registry))
                .await;
            drop(permit);
        });
    }
}

async fn answer(
    mut stream: TcpStream,
    stats: &Stats,
    registry: &links::Registry,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let first = buf.split(|b| *b == b'\n').next().unwrap_or_default();
    let ok = first.starts_with(b"GET /metrics ") || first.starts_with(b"GET / ");
    let (status, ctype, body) = if ok {
        (
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            render(stats, &registry.load()),
        )
    } else {
        (
            "404 Not Found",
            "text/plain",
            "try GET /metrics\n".to_owned(),
        )
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn scrape_over_http() {
        let stats = Arc::new(Stats::default());
        Stats::add(&stats.frames_up, 42);
        stats.command_rejected(Reason::Forbidden);
        let reg =
            Arc::new(links::Registry::from_file(links::LinksFile::default()).expect("registry"));
        let listener = bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let token = CancellationToken::new();
        let admit = crate::admit::Admit::new("metrics", 4);
        tokio::spawn(serve(listener, admit, stats, reg, token.clone()));
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let mut body = String::new();
        s.read_to_string(&mut body).await.expect("read");
        assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
        assert!(body.contains("hearthlink_frames_up_total 42"), "{body}");
        assert!(
            body.contains("hearthlink_commands_rejected_total{reason=\"forbidden\"} 1"),
            "{body}"
        );
        assert!(body.contains("hearthlink_cloud_connected 0"), "{body}");
        token.cancel();
    }
}
