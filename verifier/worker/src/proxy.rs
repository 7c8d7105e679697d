//! Forwarding an allowed request to the upstream: client-supplied identity removed, verified
//! identity set, the body streamed through untouched, the upstream's answer returned as it is.

use edgeauth_core::{Allowed, HeaderEdit};
use serde_json::json;
use worker::{
    console_error, js_sys,
    wasm_bindgen::{intern, prelude::*},
    web_sys, Env,
};

use crate::{
    describe,
    response::{json_response, unreachable_response},
    settings::Settings,
    with_isolate, Answer,
};

/// Hop-by-hop headers (RFC 9110 §7.6.1), never forwarded.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
];

/// Proxies an allowed request; the upstream's answer is handed to the runtime unawaited.
pub fn forward(
    env: &Env,
    request: web_sys::Request,
    method: &str,
    allowed: &Allowed,
    settings: &Settings,
    path: &str,
) -> worker::Result<Answer> {
    // A copy made by the runtime in one call; only the few changes cross from Wasm, their names
    // interned (sent once, then reused).
    let headers = web_sys::Headers::new_with_headers(&request.headers())?;
    for name in HOP_BY_HOP {
        headers.delete(intern(name))?;
    }
    // The runtime's set replaces every value of the name, whatever its case.
    for edit in allowed.edits(&settings.policy) {
        match edit {
            HeaderEdit::Remove(name) => headers.delete(intern(name))?,
            HeaderEdit::Replace(name, value) | HeaderEdit::Add(name, value) => {
                headers.set(intern(name), value)?
            }
        }
    }
    let init = web_sys::RequestInit::new();
    init.set_method(intern(method));
    init.set_headers(&headers);
    init.set_redirect(web_sys::RequestRedirect::Manual);
    if method != "GET" && method != "HEAD" {
        if let Some(body) = request.body() {
            init.set_body(&body);
        }
    }
    // `fetch(url, init)`, not `fetch(new Request(url, init))`: the runtime builds one request
    // and copies the headers once.
    let sent = js_sys::global()
        .unchecked_into::<web_sys::WorkerGlobalScope>()
        .fetch_with_str_and_init(&format!("{}{path}", settings.upstream_url), &init);
    Ok(Answer::Upstream(with_isolate(env, |i| {
        sent.catch_map(&i.upstream_failed)
    })))
}

/// The answer when the upstream could not be reached, made once per isolate.
pub fn upstream_failed() -> Closure<dyn FnMut(JsValue) -> Result<JsValue, JsError>> {
    Closure::new(|error: JsValue| {
        console_error!(
            "{}",
            json!({"event": "upstream_error", "error": describe(error)})
        );
        let body =
            json!({"error": "bad_gateway", "error_description": "The upstream did not answer"});
        let response = json_response(502, &body).unwrap_or_else(|_| unreachable_response());
        Ok(web_sys::Response::from(response).into())
    })
}
