//! Process-wide TLS setup: rustls with the ring provider for every client (kube, registry),
//! and the registry clients' certificate verification.
//!
//! The system's trust store (every file under `/etc/ssl/certs`) is read at the first TLS
//! handshake, once per process, not each time a client is built: a controller builds a
//! registry client per check, and a plain-HTTP pull never needs it at all.

use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_platform_verifier::Verifier;

/// Installs ring as rustls' default crypto provider; later calls are no-ops.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The certificates of a PEM bundle; an error when it is not PEM or holds none.
pub fn parse_pem_bundle(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| "CA bundle is not valid PEM".to_string())?;
    if certs.is_empty() {
        return Err("CA bundle holds no certificate".into());
    }
    Ok(certs)
}

/// A client configuration that trusts the system's roots plus `extra_roots`, loaded at the
/// first handshake. HTTP/1.1 only, as the registry clients speak.
pub fn client_config(extra_roots: Vec<CertificateDer<'static>>) -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = LazyVerifier {
        algorithms: provider.signature_verification_algorithms,
        provider: provider.clone(),
        extra_roots,
        own: OnceLock::new(),
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        // ring supports every default version: this cannot fail, but stay total
        .unwrap_or_else(|_| rustls::ClientConfig::builder())
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

/// The platform verifier, built on first use: one shared by every client that trusts only
/// the system's roots, or one per client with extra roots.
#[derive(Debug)]
struct LazyVerifier {
    provider: Arc<CryptoProvider>,
    algorithms: WebPkiSupportedAlgorithms,
    extra_roots: Vec<CertificateDer<'static>>,
    own: OnceLock<Result<Arc<Verifier>, String>>,
}

static SYSTEM: OnceLock<Result<Arc<Verifier>, String>> = OnceLock::new();

impl LazyVerifier {
    fn get(&self) -> Result<&Arc<Verifier>, rustls::Error> {
        let built = if self.extra_roots.is_empty() {
            SYSTEM.get_or_init(|| {
                Verifier::new(self.provider.clone())
                    .map(Arc::new)
                    .map_err(|e| e.to_string())
            })
        } else {
            self.own.get_or_init(|| {
                Verifier::new_with_extra_roots(self.extra_roots.clone(), self.provider.clone())
                    .map(Arc::new)
                    .map_err(|e| e.to_string())
            })
        };
        built
            .as_ref()
            .map_err(|e| rustls::Error::General(format!("system trust store: {e}")))
    }
}

impl ServerCertVerifier for LazyVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.get()?
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_bundles_are_checked() {
        assert!(parse_pem_bundle(b"not pem").is_err());
        assert!(parse_pem_bundle(b"").is_err());
        let broken = b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        assert!(parse_pem_bundle(broken).is_err());
    }

    #[test]
    fn building_a_config_reads_no_trust_store() {
        let config = client_config(Vec::new());
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
        assert!(SYSTEM.get().is_none(), "loaded before any handshake");
    }
}
