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
    authorize_deferred, freshness_seconds, verify_revocation, Allowed, Deferred, Denial,
    DenyListStatus, DenyReason, FeedPage, KeyCache, KeyRing, Revocation, RevocationAnswer,
    RevocationCheck, RevocationError, SignatureCheck, Step, TokenCache, Verdict, WatermarkStatus,
};
use serde_json::json;
use worker::{
    console_error, console_log, event, js_sys,
    wasm_bindgen::{intern, prelude::*},
    web_sys, AbortSignal, Cache, Context, Date, Env, Fetch, Headers, KvStore, Method, Request,
    RequestInit, Response, ScheduleContext, ScheduledEvent,
};

pub mod deny_cache;
mod kv_read;
pub mod settings;
mod webcrypto;

use deny_cache::DenyCache;
use kv_read::KvNamespace;
use settings::Settings;

/// Where the origin pushes signed revocations. Reachable from anywhere: only a message signed
/// with the origin's keys is accepted.
pub const PUSH_PATH: &str = "/.edgeauth/revocations";
/// The Workers KV binding of the deny-list.
const DENYLIST_BINDING: &str = "DENYLIST";
/// KV key of a revoked `jti`.
fn jti_key(jti: &str) -> String {
    format!("jti:{jti}")
}
/// KV key of a user's revoke-all watermark.
fn user_key(subject: &str) -> String {
    format!("user:{subject}")
}
/// KV key of the feed cursor the Cron Trigger resumes from.
const CURSOR_KEY: &str = "feed:cursor";
/// KV's shortest `expirationTtl`.
const KV_MIN_TTL: i64 = 60;
/// Largest pushed message read; a revocation JWS is a few hundred bytes.
const MAX_PUSH_BYTES: usize = 8 * 1024;
/// Largest JWKS read.
const MAX_JWKS_BYTES: usize = 64 * 1024;
/// Feed entries asked for per page, and pages read per cron run.
const FEED_PAGE: u32 = 100;
const FEED_PAGES_PER_RUN: u32 = 20;
/// Marks a Cache API copy of the JWKS with when it was fetched, so an isolate that reads it
/// counts freshness from the origin's answer, not from its own read.
const FETCHED_AT_HEADER: &str = "x-edgeauth-fetched-at";
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

/// What an isolate keeps between requests.
struct Isolate {
    settings: Result<Rc<Settings>, String>,
    keys: KeyCache,
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
            let cache_entries = settings
                .as_ref()
                .map(|s| s.policy.cache_entries())
                .unwrap_or(0);
            Isolate {
                settings,
                keys: KeyCache::default(),
                tokens: TokenCache::new(cache_entries),
                denied: DenyCache::default(),
                web_crypto: webcrypto::WebCrypto::default(),
                deny_list: KvNamespace::from_env(env, DENYLIST_BINDING),
                upstream_failed: upstream_failed(),
            }
        });
        f(isolate)
    })
}

/// The deny-list's KV namespace, for writes and the cron's cursor.
fn deny_list(env: &Env) -> Result<KvStore, String> {
    env.kv(DENYLIST_BINDING).map_err(|e| e.to_string())
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

fn json_response(status: u16, body: &serde_json::Value) -> worker::Result<Response> {
    let headers = Headers::new();
    headers.set("content-type", "application/json")?;
    headers.set("cache-control", "no-store")?;
    Ok(Response::from_bytes(body.to_string().into_bytes())?
        .with_status(status)
        .with_headers(headers))
}

/// The answer when something inside the Worker failed: closed, generic, logged.
fn internal_error(what: &str, error: &dyn std::fmt::Display) -> Response {
    console_error!(
        "{}",
        json!({"event": "internal_error", "what": what, "error": error.to_string()})
    );
    let body = json!({"error": "internal_error", "error_description": "The edge could not process the request"});
    json_response(500, &body)
        .unwrap_or_else(|_| Response::empty().unwrap_or_else(|_| unreachable_response()))
}

/// A last resort that cannot fail: workers-rs builds an empty body without touching JS.
fn unreachable_response() -> Response {
    Response::builder().with_status(500).empty()
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
        return receive_push(Request::from(request), env, &settings)
            .await
            .map(Into::into);
    }
    let now = now_seconds();
    let mut keys = keys_for_request(env, &settings, now, ctx).await;
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
        if with_isolate(env, |i| {
            i.keys.may_force(now, settings.keys_refetch_interval)
        }) {
            keys = current_keys(env, &settings, now, true).await;
            step = decide(env, &settings, &core_request, now, keys.as_deref()).await;
        }
    }
    let verdict = match step {
        Step::Done(verdict) => verdict,
        Step::CheckRevocation(check) => {
            let answer = revocation_answer(env, &settings, &check, now).await;
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
            deny_response(&denial, &settings).map(Into::into)
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
            forward(env, request, &method, &allowed, &settings, &path)
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
/// configured cookie) cross from the runtime into Wasm. The runtime joins repeated headers with
/// ", ", which the core refuses as a malformed credential, as it refuses two values.
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

fn deny_response(denial: &Denial, settings: &Settings) -> worker::Result<Response> {
    let headers = Headers::new();
    for (name, value) in denial.response_headers(&settings.policy) {
        headers.set(name, &value)?;
    }
    Ok(Response::from_bytes(denial.body().into_bytes())?
        .with_status(denial.status())
        .with_headers(headers))
}

/// Proxies an allowed request: client-supplied identity removed, verified identity set, the body
/// streamed through untouched, the upstream's answer returned as it is.
fn forward(
    env: &Env,
    request: web_sys::Request,
    method: &str,
    allowed: &Allowed,
    settings: &Settings,
    path: &str,
) -> worker::Result<Answer> {
    let changes = &allowed.header_changes;
    // A copy made by the runtime in one call; only the few changes cross from Wasm, their names
    // interned (sent once, then reused).
    let headers = web_sys::Headers::new_with_headers(&request.headers())?;
    for name in HOP_BY_HOP
        .iter()
        .copied()
        .chain(changes.remove.iter().map(String::as_str))
    {
        headers.delete(intern(name))?;
    }
    for (name, value) in &changes.set {
        headers.set(intern(name), value)?;
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
fn upstream_failed() -> Closure<dyn FnMut(JsValue) -> Result<JsValue, JsError>> {
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

/// The deny-list's answer for a valid token: the isolate's memory, else Workers KV.
async fn revocation_answer(
    env: &Env,
    settings: &Settings,
    check: &RevocationCheck,
    now: i64,
) -> RevocationAnswer {
    let jti = check.jti().map(jti_key);
    let user = check.subject().map(user_key);
    // A listed token stays listed until it expires; the rest is trusted for the cache time.
    let token_exp = check.token().claims().exp.unwrap_or(now);
    let [jti, user] = deny_list_entries(
        env,
        settings,
        [(jti.as_deref(), token_exp), (user.as_deref(), now)],
        now,
    )
    .await;
    RevocationAnswer {
        jti: match jti {
            Ok(None) => DenyListStatus::NotListed,
            Ok(Some(_)) => DenyListStatus::Listed,
            Err(()) => DenyListStatus::Unavailable,
        },
        user: match user {
            Ok(None) => WatermarkStatus::None,
            Ok(Some(through)) => WatermarkStatus::RevokedThrough(through),
            Err(()) => WatermarkStatus::Unavailable,
        },
    }
}

/// The deny-list's values under `keys` (none: nothing listed), each with the time a listed value
/// is remembered until if that is later than the cache time. A `jti:` entry reads as `Some(0)`, a
/// `user:` entry as its watermark. What the isolate does not remember comes from one KV bulk read:
/// one round trip, billed per key like single reads.
async fn deny_list_entries<const N: usize>(
    env: &Env,
    settings: &Settings,
    keys: [(Option<&str>, i64); N],
    now: i64,
) -> [Result<Option<i64>, ()>; N] {
    let mut values = keys.map(|(key, _)| match key {
        None => Some(Ok(None)),
        Some(key) => with_isolate(env, |i| i.denied.get(key, now)).map(Ok),
    });
    let missing: Vec<&str> = keys
        .iter()
        .zip(&values)
        .filter(|(_, value)| value.is_none())
        .filter_map(|((key, _), _)| *key)
        .collect();
    if missing.is_empty() {
        return values.map(|value| value.unwrap_or(Err(())));
    }
    let read = match with_isolate(env, |i| i.deny_list.clone()) {
        Ok(kv) => kv.read(&missing).await,
        Err(e) => Err(e),
    };
    let read = match read {
        Ok(read) => read,
        Err(error) => {
            console_error!(
                "{}",
                json!({"event": "denylist_unavailable", "error": error})
            );
            return values.map(|value| value.unwrap_or(Err(())));
        }
    };
    let cached_until = now + i64::from(settings.deny_cache_seconds);
    let mut read = read.into_iter();
    for ((key, listed_until), value) in keys.iter().zip(values.iter_mut()) {
        let (Some(key), None) = (key, value.as_ref()) else {
            continue;
        };
        let entry = deny_list_value(key, read.next().flatten());
        if let Ok(entry) = entry {
            let until = if entry.is_some() {
                (*listed_until).max(cached_until)
            } else {
                cached_until
            };
            // With no cache time (DENY_CACHE_SECONDS = 0) only a revoked jti is remembered.
            if until > now {
                with_isolate(env, |i| i.denied.insert(key, entry, until, now));
            }
        }
        *value = Some(entry);
    }
    values.map(|value| value.unwrap_or(Err(())))
}

/// What a deny-list entry's stored text means: a revoked `jti` is stored as "1", a watermark as
/// its time.
fn deny_list_value(key: &str, text: Option<String>) -> Result<Option<i64>, ()> {
    match text {
        None => Ok(None),
        Some(_) if key.starts_with("jti:") => Ok(Some(0)),
        Some(text) => text.trim().parse::<i64>().map(Some).map_err(|_| {
            console_error!("{}", json!({"event": "denylist_unreadable", "key": key}));
        }),
    }
}

/// The keys for this request. Keys past freshness but still usable answer at once while their
/// refresh runs after the response (`waitUntil`), so key expiry never adds a JWKS round trip to a
/// request; only an isolate with no usable keys waits for the fetch.
async fn keys_for_request(
    env: &Env,
    settings: &Rc<Settings>,
    now: i64,
    ctx: &Context,
) -> Option<Rc<KeyRing>> {
    let usable = with_isolate(env, |i| i.keys.usable(now, settings.keys_max_stale));
    if usable.is_none() {
        return current_keys(env, settings, now, false).await;
    }
    if with_isolate(env, |i| {
        i.keys.fetch_due(now, settings.keys_refetch_interval)
    }) {
        let (env, settings) = (env.clone(), settings.clone());
        ctx.wait_until(async move {
            current_keys(&env, &settings, now, false).await;
        });
    }
    usable
}

/// The keys to verify with at `now`, fetching first when they are due (or, with `force`, when an
/// unknown `kid` asked for it).
async fn current_keys(
    env: &Env,
    settings: &Settings,
    now: i64,
    force: bool,
) -> Option<Rc<KeyRing>> {
    let interval = settings.keys_refetch_interval;
    let due = with_isolate(env, |i| {
        let due = if force {
            i.keys.may_force(now, interval)
        } else {
            i.keys.fetch_due(now, interval)
        };
        if due {
            i.keys.attempted(now, force);
        }
        due
    });
    if due {
        // A forced fetch must reach the origin: the shared copy is what lacks the new `kid`.
        match fetch_keys(settings, now, !force).await {
            Ok((ring, fresh_until)) => with_isolate(env, |i| i.keys.store(ring, fresh_until)),
            Err(error) => console_error!(
                "{}",
                json!({"event": "jwks_fetch_failed", "error": error, "url": settings.jwks_url})
            ),
        }
    }
    with_isolate(env, |i| i.keys.usable(now, settings.keys_max_stale))
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

/// The origin's keys: from the Cache API copy another isolate stored, when allowed and fresh,
/// else from the origin (then stored there for the others).
async fn fetch_keys(
    settings: &Settings,
    now: i64,
    shared_copy: bool,
) -> Result<(Rc<KeyRing>, i64), String> {
    let cache = Cache::default();
    if shared_copy {
        if let Ok(Some(mut copy)) = cache.get(settings.jwks_url.as_str(), true).await {
            let fetched_at = copy
                .headers()
                .get(FETCHED_AT_HEADER)
                .ok()
                .flatten()
                .and_then(|v| v.parse::<i64>().ok());
            let max_age = freshness_seconds(
                copy.headers()
                    .get("cache-control")
                    .ok()
                    .flatten()
                    .as_deref(),
            );
            if let (Some(fetched_at), Ok(body)) = (fetched_at, copy.bytes().await) {
                let fresh_until =
                    fetched_at + i64::from(max_age.unwrap_or(settings.keys_default_max_age));
                if fresh_until > now {
                    if let Ok(ring) = parse_jwks(&body, settings) {
                        return Ok((ring, fresh_until));
                    }
                }
            }
        }
    }
    let mut init = RequestInit::new();
    init.with_method(Method::Get);
    let request = Request::new_with_init(&settings.jwks_url, &init).map_err(|e| e.to_string())?;
    let mut response = fetch_with_deadline(request, settings).await?;
    if response.status_code() != 200 {
        return Err(format!("the JWKS answered {}", response.status_code()));
    }
    let max_age = freshness_seconds(
        response
            .headers()
            .get("cache-control")
            .ok()
            .flatten()
            .as_deref(),
    )
    .unwrap_or(settings.keys_default_max_age);
    let body = response.bytes().await.map_err(|e| e.to_string())?;
    let ring = parse_jwks(&body, settings)?;
    // Shared with the isolate's neighbours; losing this copy costs only an extra fetch.
    if max_age > 0 {
        let headers = Headers::new();
        let stored = headers
            .set("cache-control", &format!("max-age={max_age}"))
            .and_then(|()| headers.set(FETCHED_AT_HEADER, &now.to_string()))
            .and_then(|()| Response::from_bytes(body));
        if let Ok(copy) = stored {
            let _ = cache
                .put(settings.jwks_url.as_str(), copy.with_headers(headers))
                .await;
        }
    }
    Ok((ring, now + i64::from(max_age)))
}

fn parse_jwks(body: &[u8], settings: &Settings) -> Result<Rc<KeyRing>, String> {
    if body.len() > MAX_JWKS_BYTES {
        return Err(format!("the JWKS is over {MAX_JWKS_BYTES} bytes"));
    }
    let (ring, skipped) =
        KeyRing::from_jwks(body, &settings.policy).map_err(|e| format!("unusable JWKS: {e}"))?;
    for key in skipped {
        log(
            json!({"event": "jwks_key_skipped", "kid": key.kid, "reason": format!("{:?}", key.reason)}),
        );
    }
    Ok(Rc::new(ring))
}

/// Checks a signed revocation and stores it in KV (and in this isolate's memory).
async fn store_revocation(
    env: &Env,
    settings: &Settings,
    message: &str,
    now: i64,
) -> Result<StoreOutcome, String> {
    let mut keys = current_keys(env, settings, now, false).await;
    let mut verified = match &keys {
        Some(ring) => verify_revocation(message, now, ring, &settings.policy),
        None => return Ok(StoreOutcome::NoKeys),
    };
    if matches!(&verified, Err(RevocationError::Invalid(d)) if d.reason == DenyReason::UnknownKey)
        && with_isolate(env, |i| {
            i.keys.may_force(now, settings.keys_refetch_interval)
        })
    {
        keys = current_keys(env, settings, now, true).await;
        if let Some(ring) = &keys {
            verified = verify_revocation(message, now, ring, &settings.policy);
        }
    }
    let revocation = match verified {
        Ok(revocation) => revocation,
        Err(RevocationError::Expired) => return Ok(StoreOutcome::Expired),
        Err(RevocationError::Invalid(denial)) => return Ok(StoreOutcome::Invalid(denial.reason)),
    };
    let kv = deny_list(env)?;
    // Kept in KV for as long as what it revokes could still pass, leeway included.
    let ttl = (revocation.expires_at() + settings.policy.leeway_seconds() - now).max(KV_MIN_TTL);
    let (key, value, remembered) = match &revocation {
        Revocation::Token { jti, .. } => (jti_key(jti), "1".to_string(), 0),
        Revocation::User {
            subject,
            revoked_through,
            ..
        } => (
            user_key(subject),
            revoked_through.to_string(),
            *revoked_through,
        ),
    };
    kv.put(&key, value)
        .map_err(|e| e.to_string())?
        .expiration_ttl(ttl as u64)
        .execute()
        .await
        .map_err(|e| e.to_string())?;
    with_isolate(env, |i| {
        i.denied.insert(&key, Some(remembered), now + ttl, now)
    });
    Ok(StoreOutcome::Stored)
}

enum StoreOutcome {
    Stored,
    Expired,
    Invalid(DenyReason),
    NoKeys,
}

/// `POST /.edgeauth/revocations`: one signed revocation from the origin.
async fn receive_push(
    mut request: Request,
    env: &Env,
    settings: &Settings,
) -> worker::Result<Response> {
    if request.method() != Method::Post {
        let mut response = json_response(
            405,
            &json!({"error": "method_not_allowed", "error_description": "POST a signed revocation"}),
        )?;
        response.headers_mut().set("allow", "POST")?;
        return Ok(response);
    }
    let too_large =
        json!({"error": "invalid_request", "error_description": "The message is too large"});
    let declared = request
        .headers()
        .get("content-length")?
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_PUSH_BYTES) {
        return json_response(413, &too_large);
    }
    let body = request.bytes().await?;
    if body.len() > MAX_PUSH_BYTES {
        return json_response(413, &too_large);
    }
    let message = String::from_utf8_lossy(&body);
    let now = now_seconds();
    match store_revocation(env, settings, message.trim(), now).await {
        Ok(StoreOutcome::Stored) => {
            log(json!({"event": "revocation_pushed"}));
            Ok(Response::empty()?.with_status(204))
        }
        Ok(StoreOutcome::Expired) => Ok(Response::empty()?.with_status(204)),
        Ok(StoreOutcome::Invalid(reason)) => {
            log(json!({"event": "revocation_push_rejected", "reason": reason.code()}));
            json_response(
                400,
                &json!({"error": "invalid_request", "error_description": "Not a revocation signed by the origin", "reason": reason.code()}),
            )
        }
        Ok(StoreOutcome::NoKeys) => unavailable("no key set to check the message with"),
        Err(error) => {
            console_error!(
                "{}",
                json!({"event": "denylist_write_failed", "error": error})
            );
            unavailable("the deny-list could not be written")
        }
    }
}

fn unavailable(description: &str) -> worker::Result<Response> {
    let mut response = json_response(
        503,
        &json!({"error": "temporarily_unavailable", "error_description": description}),
    )?;
    response.headers_mut().set("retry-after", "5")?;
    Ok(response)
}

#[event(scheduled)]
async fn scheduled(_event: ScheduledEvent, env: Env, _ctx: ScheduleContext) {
    match pull_feed(&env).await {
        Ok(summary) => log(summary),
        Err(error) => console_error!("{}", json!({"event": "feed_pull_failed", "error": error})),
    }
}

/// Reads the origin's feed from the stored cursor and stores every revocation in it. The cursor
/// advances only past entries that were stored (or are of no use), so a failed run repeats.
async fn pull_feed(env: &Env) -> Result<serde_json::Value, String> {
    let settings = with_isolate(env, |i| i.settings.clone())?;
    let kv = deny_list(env)?;
    let mut cursor: u64 = kv
        .get(CURSOR_KEY)
        .text()
        .await
        .map_err(|e| e.to_string())?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let (mut stored, mut rejected) = (0u32, 0u32);
    for _ in 0..FEED_PAGES_PER_RUN {
        let separator = if settings.feed_url.contains('?') {
            '&'
        } else {
            '?'
        };
        let url = format!(
            "{}{separator}after={cursor}&limit={FEED_PAGE}",
            settings.feed_url
        );
        let mut init = RequestInit::new();
        init.with_method(Method::Get);
        let request = Request::new_with_init(&url, &init).map_err(|e| e.to_string())?;
        let mut response = fetch_with_deadline(request, &settings).await?;
        if response.status_code() != 200 {
            return Err(format!("the feed answered {}", response.status_code()));
        }
        let page: FeedPage = response.json().await.map_err(|e| e.to_string())?;
        let now = now_seconds();
        let count = page.entries.len();
        for entry in page.entries {
            match store_revocation(env, &settings, &entry.jws, now).await? {
                StoreOutcome::Stored => stored += 1,
                StoreOutcome::Expired => {}
                StoreOutcome::NoKeys => return Err("no key set to check the feed with".into()),
                StoreOutcome::Invalid(reason) => {
                    // Not the origin's signature even with fresh keys: skipping it is all an
                    // edge can do, and it is logged for the operator.
                    rejected += 1;
                    console_error!(
                        "{}",
                        json!({"event": "feed_entry_rejected", "seq": entry.seq, "reason": reason.code()})
                    );
                }
            }
            cursor = cursor.max(entry.seq);
        }
        cursor = cursor.max(page.next);
        kv.put(CURSOR_KEY, cursor.to_string())
            .map_err(|e| e.to_string())?
            .execute()
            .await
            .map_err(|e| e.to_string())?;
        if count < FEED_PAGE as usize {
            break;
        }
    }
    Ok(json!({"event": "feed_pull", "stored": stored, "rejected": rejected, "cursor": cursor}))
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
