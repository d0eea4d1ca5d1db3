//! HTTP clients share one TLS configuration per process, built on the first
//! client that talks to an `https://` peer; a client for `http://` peers
//! only (a loopback simulator, a local OpenBao) sets up no TLS at all.
//! Loading the platform's root certificates costs milliseconds of CPU each
//! time, so it is done at most once.

use std::sync::{Arc, OnceLock};

/// The shared TLS configuration (`None`: it could not be built; each client
/// then sets up its own, and reports the error when it is built).
fn shared_tls() -> Option<&'static rustls::ClientConfig> {
    static TLS: OnceLock<Option<rustls::ClientConfig>> = OnceLock::new();
    TLS.get_or_init(|| {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier = match rustls_platform_verifier::Verifier::new(provider.clone()) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "Cannot set up the platform certificate verifier; each HTTP client sets up its own.");
                return None;
            }
        };
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .ok()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Some(config)
    })
    .as_ref()
}

/// A client builder for talking to `urls`: no TLS when they are all
/// `http://`, else the shared TLS configuration.
pub(crate) fn builder<'a>(urls: impl IntoIterator<Item = &'a str>) -> reqwest::ClientBuilder {
    let b = reqwest::Client::builder();
    if urls.into_iter().all(|u| u.starts_with("http://")) {
        return b.tls_certs_only(Vec::new());
    }
    match shared_tls() {
        Some(tls) => b.tls_backend_preconfigured(tls.clone()),
        None => b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_clients_share_one_tls_configuration() {
        builder(["http://127.0.0.1:1/api/app"]).build().unwrap();
        builder(["https://mixpanel.com/api/app"]).build().unwrap();
        let first = shared_tls().map(|c| c as *const _);
        builder(["https://eu.mixpanel.com/api/app", "http://x"])
            .build()
            .unwrap();
        assert_eq!(first, shared_tls().map(|c| c as *const _));
        assert!(first.is_some(), "the platform verifier is available here");
    }
}
