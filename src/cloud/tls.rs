//! TLS for the cloud link: rustls with the ring provider, platform roots
//! plus `cloud.ca_file`, and optional SPKI pinning (`cloud.pin_sha256`).
//!
//! Pinning is checked after normal verification succeeded: a pin narrows
//! trust, it never replaces it.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// Errors building the TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading cloud.ca_file {path}: {source}")]
    CaFile {
        path: String,
        source: std::io::Error,
    },
    #[error("cloud.ca_file {0} holds no usable certificate")]
    CaEmpty(String),
    #[error(
        "no trusted root certificate: the platform store is empty and cloud.ca_file is not set"
    )]
    NoRoots,
    #[error("building the TLS configuration: {0}")]
    Rustls(String),
}

/// The platform's root certificates, loaded once at start-up.
pub fn platform_roots() -> Vec<CertificateDer<'static>> {
    let loaded = rustls_native_certs::load_native_certs();
    for e in &loaded.errors {
        tracing::warn!(error = %e, "some platform root certificates could not be loaded");
    }
    loaded.certs
}

/// Builds a client configuration. `ca_file` is read on every call, so a
/// rotated CA takes effect at the next connect.
pub fn client_config(
    platform: &[CertificateDer<'static>],
    ca_file: Option<&Path>,
    pins: &[[u8; 32]],
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    let (_added, _ignored) = roots.add_parsable_certificates(platform.iter().cloned());
    if let Some(path) = ca_file {
        let name = path.display().to_string();
        let pem = std::fs::read(path).map_err(|source| TlsError::CaFile {
            path: name.clone(),
            source,
        })?;
        let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
            .flatten()
            .collect();
        let (added, _) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(TlsError::CaEmpty(name));
        }
    }
    if roots.is_empty() {
        return Err(TlsError::NoRoots);
    }
    let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let verifier: Arc<dyn ServerCertVerifier> = if pins.is_empty() {
        webpki
    } else {
        Arc::new(PinningVerifier {
            inner: webpki,
            pins: pins.to_vec(),
        })
    };
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[derive(Debug)]
struct PinningVerifier {
    inner: Arc<WebPkiServerVerifier>,
    pins: Vec<[u8; 32]>,
}

impl ServerCertVerifier for PinningVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ok = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        let spki = spki_of(end_entity).ok_or_else(|| {
            rustls::Error::General("server certificate: cannot find its public key".into())
        })?;
        let hash = ring::digest::digest(&ring::digest::SHA256, spki);
        if self.pins.iter().any(|p| p.as_slice() == hash.as_ref()) {
            Ok(ok)
        } else {
            Err(rustls::Error::General(
                "server public key does not match cloud.pin_sha256".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Reads one DER TLV at the start of `der`: (tag, whole TLV, contents).
fn tlv(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *der.first()?;
    let first = *der.get(1)?;
    let (len, hdr) = if first < 0x80 {
        (first as usize, 2)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for b in der.get(2..2 + n)? {
            len = (len << 8) | *b as usize;
        }
        (len, 2 + n)
    };
    let end = hdr.checked_add(len)?;
    Some((tag, der.get(..end)?, der.get(hdr..end)?))
}

/// The DER SubjectPublicKeyInfo of an X.509 certificate.
pub fn spki_of(cert: &[u8]) -> Option<&[u8]> {
    let (0x30, _, cert_body) = tlv(cert)? else {
        return None;
    };
    let (0x30, _, mut tbs) = tlv(cert_body)? else {
        return None;
    };
    // [0] version (optional), serial, signature, issuer, validity, subject, spki
    let mut skip = 5;
    if tbs.first() == Some(&0xa0) {
        skip += 1;
    }
    for _ in 0..skip {
        let (_, whole, _) = tlv(tbs)?;
        tbs = &tbs[whole.len()..];
    }
    match tlv(tbs)? {
        (0x30, whole, _) => Some(whole),
        _ => None,
    }
}

/// The base64 pin of a certificate, as `cloud.pin_sha256` wants it.
pub fn pin_of(cert: &[u8]) -> Option<String> {
    use base64::Engine as _;
    let hash = ring::digest::digest(&ring::digest::SHA256, spki_of(cert)?);
    Some(base64::engine::general_purpose::STANDARD.encode(hash.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spki_matches_the_key_pair() {
        let key = rcgen::KeyPair::generate().expect("key");
        let params = rcgen::CertificateParams::new(vec!["localhost".into()]).expect("params");
        let cert = params.self_signed(&key).expect("cert");
        assert_eq!(spki_of(cert.der()), Some(key.public_key_der().as_slice()));
        assert!(pin_of(cert.der()).is_some());
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        assert_eq!(spki_of(b""), None);
        assert_eq!(spki_of(&[0x30, 0x82, 0xff]), None);
        assert_eq!(spki_of(&[0x30, 0x03, 0x02, 0x01, 0x00]), None);
    }
}
