//! A throwaway CA and a server certificate for `localhost` / 127.0.0.1,
//! generated with rcgen for each run: mosquitto B's TLS listener and the
//! bench's cloud sink use the server pair, mosquitto A's bridge and
//! hearthlink trust the CA.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// PEM files on disk and the DER forms for rustls.
pub struct Certs {
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    cert_der: CertificateDer<'static>,
    key_der: Vec<u8>,
}

impl Certs {
    /// Generates the CA and server pair and writes the PEM files to `dir`.
    pub fn generate(dir: &Path) -> Result<Certs, String> {
        let err = |e: rcgen::Error| format!("generating certificates: {e}");
        let ca_key = KeyPair::generate().map_err(err)?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "hearthlink bench CA");
        let ca = ca_params.self_signed(&ca_key).map_err(err)?;
        let key = KeyPair::generate().map_err(err)?;
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .map_err(err)?;
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let cert = params.signed_by(&key, &ca, &ca_key).map_err(err)?;
        let certs = Certs {
            ca_file: dir.join("ca.pem"),
            cert_file: dir.join("server.pem"),
            key_file: dir.join("server.key"),
            cert_der: cert.der().clone(),
            key_der: key.serialize_der(),
        };
        for (path, pem) in [
            (&certs.ca_file, ca.pem()),
            (&certs.cert_file, cert.pem()),
            (&certs.key_file, key.serialize_pem()),
        ] {
            std::fs::write(path, pem).map_err(|e| format!("writing {}: {e}", path.display()))?;
        }
        Ok(certs)
    }

    /// A rustls acceptor serving the server certificate.
    pub fn acceptor(&self) -> Result<tokio_rustls::TlsAcceptor, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS versions: {e}"))?
            .with_no_client_auth()
            .with_single_cert(
                vec![self.cert_der.clone()],
                PrivateKeyDer::Pkcs8(self.key_der.clone().into()),
            )
            .map_err(|e| format!("server TLS config: {e}"))?;
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
    }
}
