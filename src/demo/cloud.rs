//! The demo's cloud: a real TLS websocket server on loopback, with a
//! certificate chain generated at start (rcgen), speaking the protocol from
//! the cloud's side. It checks the bearer token and the subprotocol, sends
//! `welcome`, and hands the demo script every frame it receives.

use std::net::SocketAddr;
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// A generated CA and a server certificate for `localhost`/127.0.0.1.
pub struct Certs {
    pub ca_pem: String,
    server_der: CertificateDer<'static>,
    server_key: Vec<u8>,
}

/// Generates the chain.
pub fn generate() -> anyhow::Result<Certs> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "hearthlink demo CA");
    let ca = ca_params.self_signed(&ca_key)?;
    let key = KeyPair::generate()?;
    let params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
    let cert = params.signed_by(&key, &ca, &ca_key)?;
    Ok(Certs {
        ca_pem: ca.pem(),
        server_der: cert.der().clone(),
        server_key: key.serialize_der(),
    })
}

/// The cloud as the demo script sees it.
pub struct Cloud {
    pub addr: SocketAddr,
    /// Frames from the gateway, parsed.
    pub frames: mpsc::Receiver<Value>,
    /// Frames to the gateway.
    pub send: mpsc::Sender<Value>,
}

/// Starts the server; it serves one gateway connection at a time until
/// `token` is cancelled.
pub async fn start(
    certs: &Certs,
    token_value: String,
    cancel: CancellationToken,
) -> anyhow::Result<Cloud> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(
            vec![certs.server_der.clone()],
            PrivateKeyDer::Pkcs8(certs.server_key.clone().into()),
        )?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (frames_tx, frames) = mpsc::channel(1024);
    let (send, mut send_rx) = mpsc::channel::<Value>(64);
    tokio::spawn(async move {
        loop {
            let (tcp, _) = tokio::select! {
                _ = cancel.cancelled() => return,
                c = listener.accept() => match c { Ok(c) => c, Err(_) => continue },
            };
            let Ok(stream) = acceptor.accept(tcp).await else {
                continue;
            };
            let expected = format!("Bearer {token_value}");
            #[allow(clippy::result_large_err)] // the shape tungstenite's callback requires
            let check = |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
                let auth = req
                    .headers()
                    .get("Authorization")
                    .and_then(|v| v.to_str().ok());
                if auth != Some(expected.as_str()) {
                    let mut e = ErrorResponse::new(Some("bad token".into()));
                    *e.status_mut() = StatusCode::UNAUTHORIZED;
                    return Err(e);
                }
                resp.headers_mut().insert(
                    "Sec-WebSocket-Protocol",
                    HeaderValue::from_static("hearthlink.v1"),
                );
                Ok(resp)
            };
            let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, check).await else {
                continue;
            };
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => { let _ = ws.close(None).await; return }
                    out = send_rx.recv() => match out {
                        Some(v) => if ws.send(Message::Text(v.to_string())).await.is_err() { break },
                        None => return,
                    },
                    msg = ws.next() => match msg {
                        Some(Ok(Message::Text(t))) => {
                            let Ok(v) = serde_json::from_str::<Value>(&t) else { continue };
                            if v["type"] == "hello" {
                                let welcome = serde_json::json!({
                                    "type": "welcome",
                                    "server_time": crate::clock::local_ms(),
                                    "heartbeat_s": 20,
                                });
                                if ws.send(Message::Text(welcome.to_string())).await.is_err() { break }
                            }
                            if frames_tx.send(v).await.is_err() { return }
                        }
                        Some(Ok(_)) => {}
                        Some(Err(_)) | None => break,
                    },
                }
            }
        }
    });
    Ok(Cloud { addr, frames, send })
}
