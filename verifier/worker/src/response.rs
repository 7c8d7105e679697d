//! The answers the Worker makes itself: JSON bodies, the core's RFC 6750 denial, and the closed
//! 5xx answers when something inside the Worker or behind it failed.

use edgeauth_core::Denial;
use serde_json::json;
use worker::{console_error, Headers, Response};

use crate::{settings::Settings, RequestHeaders};

/// A JSON answer that no cache keeps.
pub fn json_response(status: u16, body: &serde_json::Value) -> worker::Result<Response> {
    let headers = Headers::new();
    headers.set("content-type", "application/json")?;
    headers.set("cache-control", "no-store")?;
    Ok(Response::from_bytes(body.to_string().into_bytes())?
        .with_status(status)
        .with_headers(headers))
}

/// The answer when something inside the Worker failed: closed, generic, logged.
pub fn internal_error(what: &str, error: &dyn std::fmt::Display) -> Response {
    console_error!(
        "{}",
        json!({"event": "internal_error", "what": what, "error": error.to_string()})
    );
    let body = json!({"error": "internal_error", "error_description": "The edge could not process the request"});
    json_response(500, &body)
        .unwrap_or_else(|_| Response::empty().unwrap_or_else(|_| unreachable_response()))
}

/// A last resort that cannot fail: workers-rs builds an empty body without touching JS.
pub fn unreachable_response() -> Response {
    Response::builder().with_status(500).empty()
}

/// The core's answer for a refused request: its status, `WWW-Authenticate`, CORS for a page on
/// the policy's `cors` origins, and body.
pub fn deny_response(
    denial: &Denial,
    settings: &Settings,
    request_headers: &RequestHeaders<'_>,
) -> worker::Result<Response> {
    let headers = Headers::new();
    for (name, value) in denial.response_headers(&settings.policy, request_headers) {
        headers.set(name, &value)?;
    }
    Ok(Response::from_bytes(denial.body().into_bytes())?
        .with_status(denial.status())
        .with_headers(headers))
}

/// 503 with `Retry-After: retry_after` seconds: try again, nothing was decided.
pub fn unavailable(description: &str, retry_after: u32) -> worker::Result<Response> {
    let mut response = json_response(
        503,
        &json!({"error": "temporarily_unavailable", "error_description": description}),
    )?;
    response
        .headers_mut()
        .set("retry-after", &retry_after.to_string())?;
    Ok(response)
}
