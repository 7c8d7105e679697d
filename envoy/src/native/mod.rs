//! The native build: the same filter as an Envoy dynamic module (`libedgeauth_envoy.so`, loaded
//! by `envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter`). Same plugin
//! configuration, same core, same verdicts as the Wasm build; what differs is where state lives:
//!
//! - **One process, one copy.** A filter configuration is one [`Edge`] shared by every worker
//!   thread: the key set and the deny state are read without a lock or a copy, and a revocation
//!   reaches every worker at once. (The Wasm build keeps a copy per VM, synced through shared
//!   data.)
//! - **The main thread fetches.** A small thread wakes the configuration's scheduler every half
//!   second; on the main thread, the configuration starts the JWKS and feed callouts that are
//!   due, and takes their answers ([`Edge::take_keys`], [`Edge::take_feed`]).
//! - **An unknown `kid`** makes the request that wins the refetch claim (once per
//!   `keys_refetch_interval_seconds`, across threads) fetch the JWKS itself and wait for it, as
//!   in the Wasm build.
//! - **Signatures are checked natively** with ring ([`crypto`]), through the core's
//!   `authorize_deferred`.
//! - **Verified tokens are cached per worker thread** (the core's `TokenCache`), so no lock is
//!   taken on the request path.
//!
//! `abi` is the only `unsafe` of this build: the binding of Envoy's dynamic-module ABI.

mod abi;
pub mod crypto;
pub mod edge;

use std::{
    cell::RefCell,
    collections::HashMap,
    sync::{mpsc, Arc, Mutex, Weak},
    thread::JoinHandle,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use edgeauth_core::{DenyReason, HeaderEdit, TokenCache};
use serde_json::json;

use self::{
    abi::{ConfigHandle, ConfigRef, Filter, HeadersStatus, LogLevel, Scheduler},
    edge::{Call, Edge, Outcome},
};
use crate::{call_answer::CallAnswer, settings::Settings};

/// How often the configuration looks for due fetches, as the Wasm build's tick.
const TICK: Duration = Duration::from_millis(500);

/// Seconds since the epoch.
fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn log(level: LogLevel, line: serde_json::Value) {
    abi::log(level, &line.to_string());
}

/// The module's counters, named as the Wasm build's (Envoy shows them under the module's
/// `metrics_namespace`, default `dynamicmodulescustom`, instead of `wasmcustom`).
#[derive(Debug, Default)]
struct Metrics {
    allowed: Option<usize>,
    denied: Option<usize>,
    denied_by: Vec<(DenyReason, Option<usize>)>,
    jwks_fetch_success: Option<usize>,
    jwks_fetch_failure: Option<usize>,
    feed_read_success: Option<usize>,
    feed_read_failure: Option<usize>,
}

impl Metrics {
    /// Defines every counter: Envoy takes definitions only while the configuration is made.
    fn define(envoy: &ConfigHandle) -> Self {
        let counter = |name: &str| envoy.define_counter(name);
        Self {
            allowed: counter("edgeauth.allowed"),
            denied: counter("edgeauth.denied"),
            denied_by: DenyReason::ALL
                .iter()
                .map(|reason| {
                    (
                        *reason,
                        counter(&format!("edgeauth.denied.{}", reason.code())),
                    )
                })
                .collect(),
            jwks_fetch_success: counter("edgeauth.jwks_fetch.success"),
            jwks_fetch_failure: counter("edgeauth.jwks_fetch.failure"),
            feed_read_success: counter("edgeauth.revocation_feed.success"),
            feed_read_failure: counter("edgeauth.revocation_feed.failure"),
        }
    }

    fn denied_by(&self, reason: DenyReason) -> Option<usize> {
        self.denied_by
            .iter()
            .find(|(r, _)| *r == reason)
            .and_then(|(_, id)| *id)
    }

    fn keys_fetched(&self, result: &Result<usize, String>) -> Option<usize> {
        match result {
            Ok(_) => self.jwks_fetch_success,
            Err(_) => self.jwks_fetch_failure,
        }
    }
}

/// A filter configuration: what Envoy holds between `config_new` and `config_destroy`.
#[derive(Debug)]
pub struct FilterConfig {
    edge: Arc<Edge>,
    metrics: Metrics,
    envoy: ConfigHandle,
    /// Callouts in flight, by id (main thread only; the lock is never contended).
    calls: Mutex<HashMap<u64, Call>>,
    /// Wakes the main thread every tick.
    ticker: Option<Ticker>,
    /// The ticker's scheduler, deleted here once the ticker has stopped (not on its thread).
    scheduler: Option<Arc<Scheduler>>,
}

#[derive(Debug)]
struct Ticker {
    stop: mpsc::Sender<()>,
    thread: JoinHandle<()>,
}

impl Drop for FilterConfig {
    fn drop(&mut self) {
        if let Some(ticker) = self.ticker.take() {
            drop(ticker.stop);
            let _ = ticker.thread.join();
        }
        drop(self.scheduler.take());
    }
}

/// One request.
#[derive(Debug)]
pub struct Stream {
    config: ConfigRef,
    /// The JWKS refetch this request waits for, and when it started.
    keys_call: Option<(u64, i64)>,
}

fn config_new(
    envoy: ConfigHandle,
    _name: &[u8],
    configuration: &[u8],
) -> Option<Box<FilterConfig>> {
    let settings = match Settings::from_json(configuration) {
        Ok(settings) => settings,
        Err(error) => {
            // Envoy refuses the filter: no filter rather than one that lets requests through.
            log(
                LogLevel::Error,
                json!({"event": "configuration_invalid", "error": error.to_string()}),
            );
            return None;
        }
    };
    let metrics = Metrics::define(&envoy);
    let scheduler = Arc::new(envoy.scheduler()?);
    let (stop, stopped) = mpsc::channel::<()>();
    let waker = scheduler.clone();
    let thread = std::thread::Builder::new()
        .name("edgeauth-tick".into())
        .spawn(move || {
            waker.commit(0);
            while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(TICK) {
                waker.commit(0);
            }
        })
        .ok()?;
    Some(Box::new(FilterConfig {
        edge: Arc::new(Edge::new(settings)),
        metrics,
        envoy,
        calls: Mutex::new(HashMap::new()),
        ticker: Some(Ticker { stop, thread }),
        scheduler: Some(scheduler),
    }))
}

/// A tick on the main thread: starts the calls that are due.
fn config_tick(config: &FilterConfig) {
    let edge = &config.edge;
    let now = now();
    for call in edge.due(now) {
        let settings = &edge.settings;
        let started = match call {
            Call::Keys { .. } => {
                let route = &settings.jwks;
                config.envoy.callout(
                    &route.cluster,
                    &route.get_headers(&route.path, None),
                    settings.fetch_timeout_ms,
                )
            }
            Call::Feed { .. } => {
                let route = &settings.revocation_feed;
                let path = edge.feed_reader().url(&route.path);
                let tag = edge.feed_if_none_match();
                config.envoy.callout(
                    &route.cluster,
                    &route.get_headers(&path, tag.as_deref()),
                    settings.fetch_timeout_ms,
                )
            }
        };
        match started {
            Ok(id) => {
                config
                    .calls
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(id, call);
            }
            Err(refused) => {
                edge.call_failed(call);
                log(
                    LogLevel::Error,
                    json!({"event": "call_refused", "code": refused.0}),
                );
            }
        }
    }
}

/// A configuration callout's answer, on the main thread; what it makes due starts at once.
fn config_answered(config: &FilterConfig, id: u64, answer: &CallAnswer) {
    let call = config
        .calls
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&id);
    let now = now();
    match call {
        Some(Call::Keys { started_at }) => {
            let taken = config.edge.take_keys(answer, started_at, now, true);
            config.envoy.count(config.metrics.keys_fetched(&taken), 1);
            match taken {
                Ok(count) => log(
                    LogLevel::Info,
                    json!({"event": "jwks_loaded", "keys": count}),
                ),
                Err(error) => log(
                    LogLevel::Warn,
                    json!({"event": "jwks_fetch_failed", "error": error}),
                ),
            }
        }
        Some(Call::Feed { after }) => match config.edge.take_feed(answer, after, now) {
            Ok(_) => config.envoy.count(config.metrics.feed_read_success, 1),
            Err(error) => {
                config.envoy.count(config.metrics.feed_read_failure, 1);
                log(
                    LogLevel::Warn,
                    json!({"event": "feed_read_failed", "error": error}),
                );
            }
        },
        None => return,
    }
    config_tick(config);
}

fn stream_new(config: ConfigRef) -> Stream {
    Stream {
        config,
        keys_call: None,
    }
}

thread_local! {
    /// Each worker thread's verified-token caches, one per live configuration.
    static TOKENS: RefCell<Vec<(Weak<Edge>, TokenCache)>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's token cache for `edge`.
fn with_tokens<T>(edge: &Arc<Edge>, f: impl FnOnce(&mut TokenCache) -> T) -> T {
    TOKENS.with(|caches| {
        let mut caches = caches.borrow_mut();
        let index = match caches
            .iter()
            .position(|(owner, _)| std::ptr::eq(owner.as_ptr(), Arc::as_ptr(edge)))
        {
            Some(index) => index,
            None => {
                // A configuration replaced since leaves its cache behind: drop those.
                caches.retain(|(owner, _)| owner.strong_count() > 0);
                caches.push((
                    Arc::downgrade(edge),
                    TokenCache::for_policy(&edge.settings.policy),
                ));
                caches.len() - 1
            }
        };
        f(&mut caches[index].1)
    })
}

/// Decides the request and acts on it.
fn request_headers(stream: &mut Stream, envoy: &mut Filter) -> HeadersStatus {
    let outcome = decide(stream, envoy, true);
    act(stream, envoy, outcome)
}

fn decide(stream: &Stream, envoy: &Filter, may_refetch: bool) -> Outcome {
    let edge = &stream.config.edge;
    let headers = envoy.request_headers();
    let view = edge.view();
    with_tokens(edge, |tokens| {
        edge.decide_headers(&view, &headers, now(), tokens, crypto::verify, may_refetch)
    })
}

fn act(stream: &mut Stream, envoy: &mut Filter, outcome: Outcome) -> HeadersStatus {
    let config = stream.config;
    match outcome {
        Outcome::Allow(allowed) => {
            let applied = allowed
                .edits(&config.edge.settings.policy)
                .all(|edit| match edit {
                    HeaderEdit::Remove(name) => envoy.set_request_header(name, b""),
                    HeaderEdit::Replace(name, value) => {
                        envoy.set_request_header(name, value.as_bytes())
                    }
                    // The ABI's add refuses an empty value; a set of one leaves the header absent.
                    HeaderEdit::Add(name, value) => {
                        value.is_empty() || envoy.add_request_header(name, value.as_bytes())
                    }
                });
            if applied {
                envoy.count(config.metrics.allowed, 1);
                HeadersStatus::Continue
            } else {
                // Forwarding with a spoofed identity header left in place would be worse.
                fail(envoy, "request headers could not be changed");
                HeadersStatus::Stop
            }
        }
        Outcome::Deny(denial, headers) => {
            envoy.count(config.metrics.denied, 1);
            envoy.count(config.metrics.denied_by(denial.reason), 1);
            let headers: Vec<(&str, &[u8])> =
                headers.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
            envoy.send_response(
                denial.status(),
                &headers,
                denial.body().as_bytes(),
                &format!("edgeauth_{}", denial.reason.code()),
            );
            HeadersStatus::Stop
        }
        Outcome::FetchKeys => {
            let settings = &config.edge.settings;
            let route = &settings.jwks;
            match envoy.callout(
                &route.cluster,
                &route.get_headers(&route.path, None),
                settings.fetch_timeout_ms,
            ) {
                Ok(id) => {
                    stream.keys_call = Some((id, now()));
                    HeadersStatus::Hold
                }
                Err(_) => {
                    // Decided with the keys there are: the unknown `kid` is refused.
                    let outcome = decide(stream, envoy, false);
                    act(stream, envoy, outcome)
                }
            }
        }
    }
}

/// The answer to a request's JWKS refetch: the keys are everyone's, then the request is
/// decided again (no second refetch) and continued or answered.
fn keys_answered(stream: &mut Stream, envoy: &mut Filter, id: u64, answer: &CallAnswer) {
    let Some((_, started_at)) = stream.keys_call.filter(|(call, _)| *call == id) else {
        return;
    };
    stream.keys_call = None;
    let config = stream.config;
    let taken = config.edge.take_keys(answer, started_at, now(), false);
    envoy.count(config.metrics.keys_fetched(&taken), 1);
    if let Err(error) = taken {
        log(
            LogLevel::Warn,
            json!({"event": "jwks_fetch_failed", "error": error}),
        );
    }
    let outcome = decide(stream, envoy, false);
    if act(stream, envoy, outcome) == HeadersStatus::Continue {
        envoy.continue_decoding();
    }
}

/// An internal error: a JSON 500 and a log line, never a pass.
fn fail(envoy: &mut Filter, what: &str) {
    log(
        LogLevel::Error,
        json!({"event": "internal_error", "error": what}),
    );
    envoy.send_response(
        500,
        &[
            ("content-type", b"application/json"),
            ("cache-control", b"no-store"),
        ],
        br#"{"error":"server_error","error_description":"The request could not be checked"}"#,
        "edgeauth_internal_error",
    );
}
