//! Process-wide TLS setup: rustls with the ring provider for every client (kube, registry).

/// Installs ring as rustls' default crypto provider; later calls are no-ops.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
