//! What the bench's own relays (the naive and the floor relay) need to
//! reach the sink as hearthlink does: the TLS client configuration trusting
//! the bench's CA, and the websocket upgrade request with the bearer token
//! and the `hearthlink.v1` subprotocol.

use std::sync::Arc;

use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::http::HeaderValue;

/// TLS 1.2/1.3 client (ring) trusting only the PEM certificates in `ca`.
pub fn tls_config(ca: &[u8]) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut &ca[..]) {
        let cert = cert.map_err(|e| format!("CA file: {e}"))?;
        roots.add(cert).map_err(|e| format!("CA file: {e}"))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("TLS: {e}"))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The sink's server name in its certificate.
pub fn server_name() -> Result<rustls::pki_types::ServerName<'static>, String> {
    rustls::pki_types::ServerName::try_from("localhost").map_err(|e| e.to_string())
}

/// The upgrade request to the sink on `port`.
pub fn request(port: u16, token: &str) -> Result<Request, String> {
    let mut req = format!("wss://localhost:{port}/v1/gateway")
        .into_client_request()
        .map_err(|e| e.to_string())?;
    let headers = req.headers_mut();
    let bearer = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|e| e.to_string())?;
    headers.insert("Authorization", bearer);
    headers.insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static(crate::sink::SUBPROTOCOL),
    );
    Ok(req)
}
