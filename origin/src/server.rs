//! The HTTP server: axum's router on hyper's HTTP/1 connections, with the timeouts
//! `axum::serve` does not offer. A client that sends its headers a byte at a time (slowloris),
//! or holds a request body open, would otherwise keep a connection, a task and its buffers for
//! as long as it likes, and a few thousand such clients exhaust the process.

use std::{convert::Infallible, future::Future, net::SocketAddr, time::Duration};

use axum::{
    extract::ConnectInfo,
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse as _, Response},
    Router,
};
use hyper::{body::Incoming, server::conn::http1};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
};
use serde::Deserialize;
use tokio::net::TcpListener;
use tower::ServiceExt as _;

/// How long a client may take (`server_timeouts`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTimeouts {
    /// From the connection's start, or the end of its previous answer, until the request's
    /// headers are in (default 10). Covers idle keep-alive connections too.
    #[serde(default = "default_header_read")]
    pub header_read_seconds: u32,
    /// From the headers until the answer is ready, the body's reading included (default 30).
    #[serde(default = "default_request")]
    pub request_seconds: u32,
}

fn default_header_read() -> u32 {
    10
}
fn default_request() -> u32 {
    30
}

impl Default for ServerTimeouts {
    fn default() -> Self {
        Self {
            header_read_seconds: default_header_read(),
            request_seconds: default_request(),
        }
    }
}

impl ServerTimeouts {
    /// Each between 1 s and 5 minutes.
    pub fn validate(&self) -> Result<(), String> {
        for (name, value) in [
            ("header_read_seconds", self.header_read_seconds),
            ("request_seconds", self.request_seconds),
        ] {
            if !(1..=300).contains(&value) {
                return Err(format!("{name} must be between 1 and 300"));
            }
        }
        Ok(())
    }
}

/// The answer when a request is not complete in time: 408 with the usual JSON error body.
fn timed_out() -> Response {
    let mut response = (
        StatusCode::REQUEST_TIMEOUT,
        axum::Json(serde_json::json!({
            "error": "request_timeout",
            "message": "the request took too long to arrive or to answer"
        })),
    )
        .into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Serves `router` until `shutdown` resolves, then lets the open requests finish (at most the
/// request timeout). Each request carries its peer address as axum's `ConnectInfo`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    timeouts: ServerTimeouts,
    shutdown: impl Future<Output = ()>,
) {
    let request_timeout = Duration::from_secs(u64::from(timeouts.request_seconds));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(u64::from(timeouts.header_read_seconds)));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, say: wait a moment rather than spin.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request
                .extensions_mut()
                .insert(ConnectInfo::<SocketAddr>(peer));
            let answer = router.clone().oneshot(request);
            async move {
                Ok::<_, Infallible>(match tokio::time::timeout(request_timeout, answer).await {
                    Ok(Ok(response)) => response,
                    Ok(Err(never)) => match never {},
                    Err(_) => {
                        tracing::info!(event = "request_timeout", %peer);
                        timed_out()
                    }
                })
            }
        });
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            // A client that went away, or one cut off by a timeout, is not the server's error.
            let _ = connection.await;
        });
    }
    if tokio::time::timeout(request_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open at shutdown were closed");
    }
}
