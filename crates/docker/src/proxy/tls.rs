//! TLS with client certificates for a proxy listening beyond loopback, as Docker's own TCP
//! socket does it (`--tlsverify`): only clients whose certificate the given CA signed get in.
//!
//! The directory holds what Docker's tools name these files: `ca.pem` (the CA clients'
//! certificates must be signed by), `cert.pem` and `key.pem` (the proxy's own).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

use super::ProxyError;

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, ProxyError> {
    let bad = |reason: String| ProxyError::Tls {
        path: path.display().to_string(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("it holds no PEM certificate".into()));
    }
    Ok(certs)
}

/// The acceptor for certificates in `dir`.
pub fn acceptor(dir: &Path) -> Result<TlsAcceptor, ProxyError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for ca in certificates(&dir.join("ca.pem"))? {
        roots.add(ca).map_err(|e| ProxyError::Tls {
            path: dir.join("ca.pem").display().to_string(),
            reason: e.to_string(),
        })?;
    }
    let certs = certificates(&dir.join("cert.pem"))?;
    let key_path = dir.join("key.pem");
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| ProxyError::Tls {
        path: key_path.display().to_string(),
        reason: e.to_string(),
    })?;
    let tls = |reason: String| ProxyError::Tls {
        path: dir.display().to_string(),
        reason,
    };
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| tls(e.to_string()))?;
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| tls(e.to_string()))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
