//! One rustls crypto provider for the whole process.
//!
//! goose (for `kybctl loadtest`) brings reqwest 0.13 with its default TLS, which compiles rustls with
//! aws-lc-rs, while kube uses ring. With both compiled in, rustls cannot choose a provider by itself and a
//! `ClientConfig::builder()` without one panics; kube's client is built that way. Installing ring, the
//! provider the rest of the crate was built for, before any TLS client fixes that.

/// Installs ring as the process default, unless a default is already installed.
pub fn ensure_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race with another installer is fine: a default exists either way.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_provider_is_installed() {
        super::ensure_crypto_provider();
        assert!(rustls::crypto::CryptoProvider::get_default().is_some());
    }
}
