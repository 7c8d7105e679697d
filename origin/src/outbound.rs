//! The one HTTP client the origin calls out with (edge pushes, the CAPTCHA service): pooled,
//! HTTPS with the system's root certificates, or plain HTTP for local endpoints.

use http_body_util::Full;
use hyper::body::Bytes;
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};

/// A pooled client for outbound calls.
pub type OutboundClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Why an outbound client or endpoint was refused at start-up.
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    /// Not an absolute http(s) URL.
    #[error("`{0}` is not an http:// or https:// URL")]
    InvalidUrl(String),
    /// The system's root certificates could not be loaded.
    #[error("cannot load the system's root certificates: {0}")]
    Roots(std::io::Error),
}

/// A new client. Loading the root certificates is start-up work, so only parts that call out
/// build one.
pub fn client() -> Result<OutboundClient, OutboundError> {
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(rustls::crypto::ring::default_provider())
        .map_err(OutboundError::Roots)?
        .https_or_http()
        .enable_http1()
        .build();
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}
