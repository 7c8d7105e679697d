//! Pushes each revocation to the edges as soon as it is recorded, so a logged-out token is refused
//! there within the edge's own cache bound instead of waiting for the next feed pull.
//!
//! The body is the feed entry itself, the signed JWS: an edge checks it with the keys it already
//! holds, so the push needs no shared secret. Pushes are best effort and never retried here: the
//! edges also pull the feed from their last cursor, which repairs any push that is lost.

use std::{sync::Arc, time::Duration};

use http_body_util::Full;
use hyper::{body::Bytes, header, Method, Request, Uri};

use crate::{
    outbound::{self, OutboundClient, OutboundError},
    store::FeedEntry,
};

/// How long one push may take before it is abandoned (the pull repairs it).
const PUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Media type of a pushed entry: a compact JWS (RFC 7515 §9.2.1).
pub const PUSH_CONTENT_TYPE: &str = "application/jose";

/// Why the push configuration was refused at start-up.
#[derive(Debug, thiserror::Error)]
#[error("edge_push_urls: {0}")]
pub struct EdgePushError(#[from] OutboundError);

/// The edges' push endpoints and one pooled HTTPS client for them.
#[derive(Clone, Debug)]
pub struct EdgePush {
    urls: Arc<Vec<Uri>>,
    /// Built only when there is somewhere to push: loading the system's root certificates is
    /// start-up work (and a start-up failure) an origin without edges should not have.
    client: Option<OutboundClient>,
}

impl EdgePush {
    /// A pusher to `urls` (none: pushing is off and only the pull delivers revocations).
    pub fn new(urls: &[String]) -> Result<Self, EdgePushError> {
        let urls = urls
            .iter()
            .map(|url| {
                url.parse::<Uri>()
                    .ok()
                    .filter(|uri| matches!(uri.scheme_str(), Some("http" | "https")))
                    .filter(|uri| uri.host().is_some())
                    .ok_or_else(|| OutboundError::InvalidUrl(url.clone()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let client = if urls.is_empty() {
            None
        } else {
            Some(outbound::client()?)
        };
        Ok(Self {
            urls: Arc::new(urls),
            client,
        })
    }

    /// Sends `entry` to every edge in the background; outcomes are logged, never awaited.
    pub fn push(&self, entry: &FeedEntry) {
        let Some(client) = &self.client else {
            return;
        };
        for url in self.urls.iter() {
            let request = Request::builder()
                .method(Method::POST)
                .uri(url.clone())
                .header(header::CONTENT_TYPE, PUSH_CONTENT_TYPE)
                .body(Full::new(Bytes::from(entry.jws.clone())));
            let Ok(request) = request else {
                continue;
            };
            let (client, url, seq) = (client.clone(), url.clone(), entry.seq);
            tokio::spawn(async move {
                match tokio::time::timeout(PUSH_TIMEOUT, client.request(request)).await {
                    Ok(Ok(response)) if response.status().is_success() => {
                        tracing::debug!(event = "edge_push", %url, seq, "pushed");
                    }
                    Ok(Ok(response)) => {
                        tracing::warn!(event = "edge_push_failed", %url, seq, status = response.status().as_u16(), "edge refused the revocation; its feed pull will repair it");
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(event = "edge_push_failed", %url, seq, error = %e, "edge unreachable; its feed pull will repair it");
                    }
                    Err(_) => {
                        tracing::warn!(event = "edge_push_failed", %url, seq, "edge push timed out; its feed pull will repair it");
                    }
                }
            });
        }
    }
}
