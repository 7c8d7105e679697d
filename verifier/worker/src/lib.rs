//! # edgeauth-worker
//!
//! The edge verifier as a Cloudflare Worker. Every decision is `edgeauth-core`'s; this crate only
//! translates: the request into [`edgeauth_core::authorize`], the JWKS into a key ring (isolate
//! memory, shared between isolates through the Cache API), the deny-list question into a Workers
//! KV read, and the verdict into a proxied request or the core's RFC 6750 answer.
//!
//! Revocations reach KV two ways: the origin pushes each one to [`PUSH_PATH`] as its signed feed
//! entry (checked with the keys the Worker already holds; no shared secret), and a Cron Trigger
//! pulls the origin's feed from the last cursor, which repairs any lost push.
//!
//! This file holds the entry points and a request's flow; each concern has its own module:
//! `keys` (JWKS fetch, the Cache API copy, refetch), `deny_list` (KV keys, reads, writes, the
//! isolate's memory), `proxy` (forwarding), `push` (the push route), `feed` (the cron pull),
//! `response` (the answers the Worker makes itself).
//!
//! Failure is closed: a bad configuration, a KV outage (per the policy's
//! `revocation.on_unavailable`) or an internal error answers with a JSON 5xx and a log line, and
//! the Worker never calls `pass_through_on_exception`.

use std::{
    cell::RefCell,
    future::Future as _,
    rc::Rc,
    task::{Poll, Waker},
};

use edgeauth_core::{
    authorize_deferred, Deferred, Denial, DenyReason, KeyCache, KeyRing, SignatureCheck, Step,
    TokenCache, Verdict,
};
use serde_json::json;
use worker::{
    console_error, console_log, event, js_sys, wasm_bindgen::prelude::*, web_sys, AbortSignal,
    Context, Date, Env, Fetch, Headers, Request, Response, ScheduleContext, ScheduledEvent,
};

mod deny_list;
mod feed;
mod keys;
mod kv_read;
mod proxy;
mod push;
mod response;
pub mod settings;
mod webcrypto;

use deny_list::DenyCache;
use kv_read::KvNamespace;
pub use push::PUSH_PATH;
use response::{deny_response, internal_error};
use settings::Settings;

/// What an isolate keeps between requests.
struct Isolate {
    settings: Result<Rc<Settings>, String>,
    keys: KeyCache,
    /// When (Unix milliseconds) a request of this isolate began the key fetch under way, if any:
    /// a fetch under way is not a failed one, and holds no request without keys back.
    keys_fetch_started_ms: Option<u64>,
    tokens: TokenCache,
    denied: DenyCache,
    web_crypto: webcrypto::WebCrypto,
    /// The `DENYLIST` binding as the hot path reads it, looked up once.
    deny_list: Result<KvNamespace, String>,
    /// The one rejection handler every forwarded request's promise gets (`upstream_failed()`).
    upstream_failed: Closure<dyn FnMut(JsValue) -> Result<JsValue, JsError>>,
}

thread_local! {
    static ISOLATE: RefCell<Option<Isolate>> = const { RefCell::new(None) };
}

/// Runs `f` on the isolate's state, creating it from `env` on first use. Never held across an
/// await: the state is borrowed, changed and released in one synchronous step.
fn with_isolate<T>(env: &Env, f: impl FnOnce(&mut Isolate) -> T) -> T {
    ISOLATE.with(|cell| {
        let mut slot = cell.borrow_mut();
        let isolate = slot.get_or_insert_with(|| {
            let settings = Settings::from_vars(|name| env.var(name).ok().map(|v| v.to_string()))
                .map(Rc::new)
                .map_err(|e| e.to_string());
            let tokens = settings.as_ref().map_or_else(
                |_| TokenCache::new(0, 0),
                |s| TokenCache::for_policy(&s.policy),
            );
            Isolate {
                settings,
                keys: KeyCache::default(),
                keys_fetch_started_ms: None,
                tokens,
                denied: DenyCache::default(),
                web_crypto: webcrypto::WebCrypto::default(),
                deny_list: KvNamespace::from_env(env, deny_list::DENYLIST_BINDING),
                upstream_failed: proxy::upstream_failed(),
            }
        });
        f(isolate)
    })
}

/// A JavaScript exception's message, for logs.
fn describe(error: JsValue) -> String {
    error
        .as_string()
        .or_else(|| {
            js_sys::Reflect::get(&error, &"message".into())
                .ok()
                .and_then(|m| m.as_string())
        })
        .unwrap_or_else(|| "a JavaScript exception".to_string())
}

fn now_seconds() -> i64 {
    (Date::now().as_millis() / 1000) as i64
}

/// One JSON log line; never token contents.
fn log(line: impl serde::Serialize) {
    match serde_json::to_string(&line) {
        Ok(line) => console_log!("{line}"),
        Err(e) => console_error!(
            "{}",
            json!({"event": "log_unwritable", "error": e.to_string()})
        ),
    }
}

/// The line every request leaves in the Workers log (ops/metrics.md), written straight from
/// borrowed fields: the hot path builds no JSON tree for it.
#[derive(Debug, serde::Serialize)]
struct RequestLine<'a> {
    event: &'static str,
    verdict: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kid: Option<&'a str>,
    method: &'a str,
    path: &'a str,
}

/// What the fetch handler answers: a response made here, or the upstream's, still on its way.
#[derive(Debug)]
enum Answer {
    Here(web_sys::Response),
    /// Handed to the runtime as a promise, which it follows, instead of awaited in Rust: one trip
    /// fewer through wasm-bindgen's executor per request (bench-results/worker.md).
    Upstream(js_sys::Promise),
}

impl From<Response> for Answer {
    fn from(response: Response) -> Self {
        Answer::Here(response.into())
    }
}

impl From<Answer> for JsValue {
    fn from(answer: Answer) -> Self {
        match answer {
            Answer::Here(response) => response.into(),
            Answer::Upstream(promise) => promise.into(),
        }
    }
}

// The fetch export `#[event(fetch)]` would generate, written out so that it can answer at once.
// The runtime's own Request and Response types, not workers-rs's wrappers: the hot path never
// converts a request or re-wraps the upstream's response (each a walk over headers across the
// Rust/JS boundary). Local answers are built with workers-rs and converted once.
//
// The request runs in this call: when nothing in it has to wait (the deployed hot path: keys
// fresh, the token's verification and deny-list answers remembered), its answer, a response or
// the upstream's promise, is returned as it is, with no trip through wasm-bindgen's executor.
// Otherwise the started request goes to the executor, which polls it again with a real waker;
// every future in it is a `JsFuture` (or a workers-rs call awaiting one), which keeps the waker
// of its latest poll as `Future` requires, so the first poll's no-op waker is never the one woken.
#[wasm_bindgen(
    wasm_bindgen = worker::wasm_bindgen,
    wasm_bindgen_futures = worker::wasm_bindgen_futures,
    js_sys = worker::js_sys
)]
pub fn fetch(request: web_sys::Request, env: Env, ctx: worker::worker_sys::Context) -> JsValue {
    let mut answer = Box::pin(async move {
        let ctx = Context::new(ctx);
        match handle(request, &env, &ctx).await {
            Ok(answer) => JsValue::from(answer),
            Err(e) => Answer::from(internal_error("fetch", &e)).into(),
        }
    });
    match answer
        .as_mut()
        .poll(&mut std::task::Context::from_waker(Waker::noop()))
    {
        Poll::Ready(answer) => answer,
        Poll::Pending => {
            worker::wasm_bindgen_futures::future_to_promise(async move { Ok(answer.await) }).into()
        }
    }
}

async fn handle(request: web_sys::Request, env: &Env, ctx: &Context) -> worker::Result<Answer> {
    let settings = match with_isolate(env, |i| i.settings.clone()) {
        Ok(settings) => settings,
        Err(problem) => return Ok(internal_error("configuration", &problem).into()),
    };
    // The URL as workerd serialised it, read without the `url` crate's parser (and its Unicode
    // tables, a sixth of the bundle).
    let path = path_and_query(&request.url()).to_string();
    let path_only = path.split('?').next().unwrap_or_default().to_string();
    if path_only == PUSH_PATH {
        return push::receive(request, env, &settings).await.map(Into::into);
    }
    let now = now_seconds();
    let mut keys = keys::keys_for_request(env, &settings, now, ctx).await;
    let request_headers = Headers(request.headers());
    let headers = RequestHeaders(&request_headers);
    let method = request.method();
    let core_request = edgeauth_core::Request {
        method: &method,
        path: &path,
        headers: &headers,
    };
    let mut step = decide(env, &settings, &core_request, now, keys.as_deref()).await;
    // An unknown `kid` may be a key the origin just rotated in: refetch once, then decide again.
    if let Step::Done(Verdict::Deny(Denial {
        reason: DenyReason::UnknownKey,
        ..
    })) = step
    {
        if keys::may_force(env, &settings, now) {
            keys = keys::current_keys(env, &settings, now, true).await;
            step = decide(env, &settings, &core_request, now, keys.as_deref()).await;
        }
    }
    let verdict = match step {
        Step::Done(verdict) => verdict,
        Step::CheckRevocation(check) => {
            let answer = deny_list::revocation_answer(env, &settings, &check, now).await;
            check.finish(answer, &settings.policy)
        }
    };
    match verdict {
        Verdict::Deny(denial) => {
            log(RequestLine {
                event: "request",
                verdict: "deny",
                reason: Some(denial.reason.code()),
                status: Some(denial.status()),
                kid: None,
                method: &method,
                path: &path_only,
            });
            deny_response(&denial, &settings, &headers).map(Into::into)
        }
        Verdict::Allow(allowed) => {
            log(RequestLine {
                event: "request",
                verdict: "allow",
                reason: None,
                status: None,
                kid: allowed
                    .token
                    .as_ref()
                    .and_then(|t| t.header().kid.as_deref()),
                method: &method,
                path: &path_only,
            });
            proxy::forward(env, request, &method, &allowed, &settings, &path)
        }
    }
}

/// The path and query of a serialised WHATWG URL (`scheme://authority/path?query#fragment`), as
/// the request line carried them. Special-scheme URLs always serialise a path, so the first `/`
/// after `//` starts it; the fragment never reaches a server but is cut all the same.
pub fn path_and_query(url: &str) -> &str {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let from_path = after_scheme
        .find('/')
        .map_or("/", |start| &after_scheme[start..]);
    from_path.split('#').next().unwrap_or("/")
}

/// The request's headers as the core reads them: only the few it asks for (`authorization`, a
/// configured cookie, `origin` for a refusal's CORS) cross from the runtime into Wasm. The
/// runtime joins repeated headers with ", ", which the core refuses as a malformed credential,
/// as it refuses two values, and splits again where it reads origins.
#[derive(Debug)]
pub struct RequestHeaders<'a>(&'a Headers);

impl edgeauth_core::Headers for RequestHeaders<'_> {
    fn values(&self, name: &str, each: &mut dyn FnMut(&[u8])) {
        if let Ok(Some(value)) = self.0.get(name) {
            each(value.as_bytes());
        }
    }
}

/// The core's decision, with the signature (on a cache miss) checked by WebCrypto.
async fn decide(
    env: &Env,
    settings: &Settings,
    request: &edgeauth_core::Request<'_, RequestHeaders<'_>>,
    now: i64,
    keys: Option<&KeyRing>,
) -> Step {
    let deferred = with_isolate(env, |i| {
        authorize_deferred(request, now, keys, &settings.policy, &mut i.tokens)
    });
    let check = match deferred {
        Deferred::Decided(step) => return step,
        Deferred::VerifySignature(check) => check,
    };
    // The core asks for a signature only once it has selected a key from `keys`.
    let Some(keys) = keys else {
        return Step::Done(Verdict::Deny(DenyReason::KeysUnavailable.into()));
    };
    // HMAC secrets never leave the core; any other key goes to WebCrypto. If WebCrypto cannot
    // take it (an import error), the core's own implementation gives the same answer, slower.
    let valid = if check.algorithm().is_symmetric() {
        check.verify_here(keys)
    } else {
        match verify_natively(env, &check, keys).await {
            Ok(valid) => valid,
            Err(error) => {
                console_error!(
                    "{}",
                    json!({"event": "webcrypto_unavailable", "error": error})
                );
                check.verify_here(keys)
            }
        }
    };
    with_isolate(env, |i| {
        check.finish(valid, now, &settings.policy, &mut i.tokens)
    })
}

async fn verify_natively(
    env: &Env,
    check: &SignatureCheck,
    keys: &KeyRing,
) -> Result<bool, String> {
    let started = match with_isolate(env, |i| i.web_crypto.start_verify(check)) {
        Some(started) => started,
        None => {
            let key = webcrypto::import(check, keys).await?;
            with_isolate(env, |i| {
                i.web_crypto.insert(check, key);
                i.web_crypto.start_verify(check)
            })
            .ok_or("the imported key is not kept")?
        }
    };
    webcrypto::verified(started?).await
}

/// Fetches with the configured deadline (`AbortSignal.timeout`, which also bounds reading the
/// body).
async fn fetch_with_deadline(request: Request, settings: &Settings) -> Result<Response, String> {
    let deadline = AbortSignal::from(web_sys::AbortSignal::timeout_with_u32(
        settings.fetch_timeout_ms,
    ));
    Fetch::Request(request)
        .send_with_signal(&deadline)
        .await
        .map_err(|e| match deadline.aborted() {
            true => format!("no answer within {} ms", settings.fetch_timeout_ms),
            false => e.to_string(),
        })
}

#[event(scheduled)]
async fn scheduled(_event: ScheduledEvent, env: Env, _ctx: ScheduleContext) {
    match feed::pull(&env).await {
        Ok(summary) => log(summary),
        Err(error) => console_error!("{}", json!({"event": "feed_pull_failed", "error": error})),
    }
}

#[cfg(test)]
mod tests {
    use super::path_and_query;

    #[test]
    fn path_and_query_come_from_the_serialised_url() {
        for (url, expected) in [
            ("https://api.example/", "/"),
            ("https://api.example/orders?page=2", "/orders?page=2"),
            ("http://127.0.0.1:8787/a%2Fb?x=/y#frag", "/a%2Fb?x=/y"),
            ("https://api.example?q", "/"),
            (
                "https://api.example/.edgeauth/revocations",
                "/.edgeauth/revocations",
            ),
        ] {
            assert_eq!(path_and_query(url), expected, "{url}");
        }
    }
}
