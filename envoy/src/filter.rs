//! The proxy-wasm glue: a [`Root`] per VM that owns the configuration, the fetcher election and
//! the calls to the origin, and an [`Exchange`] per request that asks the core for a verdict and
//! applies it. Every decision is `edgeauth-core`'s.
//!
//! Host calls go through `proxy_wasm::hostcalls`, whose `Result`s are handled here, never through
//! the SDK's trait helpers, which `unwrap` (a trap takes the VM, and every request on that worker
//! thread with it).

use std::{
    cell::RefCell,
    collections::HashMap,
    rc::Rc,
    time::{Duration, UNIX_EPOCH},
};

use base64ct::{Base64UrlUnpadded, Encoding as _};
use edgeauth_core::{
    authorize_deferred, freshness_seconds, verify_revocation, Algorithm, Allowed, Deferred, Denial,
    DenyReason, FeedPage, KeyCache, KeyRing, Policy, Request, RevocationAnswer, RevocationError,
    SignatureCheck, Step, Thumbprint, TokenCache, Verdict,
};
use proxy_wasm::{
    hostcalls,
    traits::{Context, HttpContext, RootContext},
    types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType},
};

use crate::{
    deny_list::{DenyList, SharedData},
    host_crypto::{
        host_hash, host_signature, spki_der, verify_arguments, verify_result, SELF_TEST,
    },
    settings::{OriginRoute, Settings},
    shared::{self, decode_version, KeysRecord, Lease, LEASE_SECONDS},
};

/// How often every VM wakes: to sync keys and revocations from shared data, and (the fetcher)
/// to fetch. Half a second: a fresh Envoy has its first keys within a second, and a revocation
/// read by the fetcher reaches every VM within half a second more.
const TICK: Duration = Duration::from_millis(500);
/// Largest JWKS read.
const MAX_JWKS_BYTES: usize = 64 * 1024;
/// Largest feed page read.
const MAX_FEED_BYTES: usize = 1024 * 1024;
/// Feed entries asked for per call; a full page is followed by the next one at once.
const FEED_PAGE: usize = 100;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::new()) });
}}

/// Seconds since the epoch from the host, or `None`: without a clock no token can be judged,
/// and guessing one would fail open.
fn now() -> Option<i64> {
    let time = hostcalls::get_current_time().ok()?;
    let seconds = time.duration_since(UNIX_EPOCH).ok()?.as_secs();
    i64::try_from(seconds).ok()
}

fn log(level: LogLevel, line: serde_json::Value) {
    let _ = hostcalls::log(level, &line.to_string());
}

fn counter(name: &str) -> Option<u32> {
    hostcalls::define_metric(MetricType::Counter, name).ok()
}

fn gauge(name: &str) -> Option<u32> {
    hostcalls::define_metric(MetricType::Gauge, name).ok()
}

fn bump(metric: Option<u32>, by: u64) {
    if let (Some(id), Ok(by)) = (metric, i64::try_from(by)) {
        if by > 0 {
            let _ = hostcalls::increment_metric(id, by);
        }
    }
}

fn record(metric: Option<u32>, value: i64) {
    if let Some(id) = metric {
        let _ = hostcalls::record_metric(id, u64::try_from(value).unwrap_or(0));
    }
}

/// The filter's metrics. Envoy exposes them as `wasmcustom.edgeauth.*`; every VM defines the
/// same names, so counters add up across worker threads. Per-request counts are kept in the VM
/// and added to Envoy's counters on each tick: a host call per counter per request cost more
/// than a cache hit's own work (`bench-results/envoy.md`), and Envoy reads its stats every few
/// seconds anyway.
#[derive(Debug)]
struct Metrics {
    pending: RequestCounts,
    allowed: Option<u32>,
    denied: Option<u32>,
    denied_by_reason: HashMap<&'static str, Option<u32>>,
    token_cache_hits: Option<u32>,
    token_cache_misses: Option<u32>,
    jwks_fetch_success: Option<u32>,
    jwks_fetch_failure: Option<u32>,
    feed_read_success: Option<u32>,
    feed_read_failure: Option<u32>,
    feed_lag_seconds: Option<u32>,
    revoked_tokens: Option<u32>,
}

/// Per-request counts since the last tick.
#[derive(Debug, Default)]
struct RequestCounts {
    allowed: u64,
    denied: HashMap<&'static str, u64>,
    token_cache_hits: u64,
    token_cache_misses: u64,
}

impl Metrics {
    fn define() -> Self {
        Self {
            pending: RequestCounts::default(),
            allowed: counter("edgeauth.allowed"),
            denied: counter("edgeauth.denied"),
            denied_by_reason: HashMap::new(),
            token_cache_hits: counter("edgeauth.token_cache.hits"),
            token_cache_misses: counter("edgeauth.token_cache.misses"),
            jwks_fetch_success: counter("edgeauth.jwks_fetch.success"),
            jwks_fetch_failure: counter("edgeauth.jwks_fetch.failure"),
            feed_read_success: counter("edgeauth.revocation_feed.success"),
            feed_read_failure: counter("edgeauth.revocation_feed.failure"),
            feed_lag_seconds: gauge("edgeauth.revocation_feed.lag_seconds"),
            revoked_tokens: gauge("edgeauth.revocation_feed.revoked_tokens"),
        }
    }

    /// Adds the counts since the last tick to Envoy's counters.
    fn flush(&mut self) {
        let counts = std::mem::take(&mut self.pending);
        bump(self.allowed, counts.allowed);
        bump(self.token_cache_hits, counts.token_cache_hits);
        bump(self.token_cache_misses, counts.token_cache_misses);
        bump(self.denied, counts.denied.values().sum());
        for (code, n) in counts.denied {
            let id = *self
                .denied_by_reason
                .entry(code)
                .or_insert_with(|| counter(&format!("edgeauth.denied.{code}")));
            bump(id, n);
        }
    }
}

/// What one VM keeps: configuration, its copies of the shared keys and deny-list, its
/// verified-token cache. Shared by the VM's root context and its requests (one thread).
#[derive(Debug)]
struct Vm {
    settings: Settings,
    shared: shared::Keys,
    keys: KeyCache,
    keys_version: u64,
    deny_list: DenyList,
    tokens: TokenCache,
    metrics: Metrics,
    /// Algorithms Envoy's BoringSSL verifies for this VM (its self-test passed).
    host_algorithms: Vec<Algorithm>,
    /// Ring keys as DER, for the host; a rotation's worth at most.
    host_keys: HashMap<Thumbprint, Rc<Vec<u8>>>,
}

impl Vm {
    /// Checks a signature: by the host's BoringSSL where it passed its self-test for the
    /// algorithm, else (or if the host call fails) by the core.
    fn verify(&mut self, check: &SignatureCheck, keys: &KeyRing) -> bool {
        if self.host_algorithms.contains(&check.algorithm()) {
            if let Some(valid) = self.verify_on_host(check, keys) {
                return valid;
            }
        }
        check.verify_here(keys)
    }

    fn verify_on_host(&mut self, check: &SignatureCheck, keys: &KeyRing) -> Option<bool> {
        let hash = host_hash(check.algorithm())?;
        let signature = host_signature(check.algorithm(), check.signature())?;
        let spki = match self.host_keys.get(check.key_thumbprint()) {
            Some(spki) => spki.clone(),
            None => {
                let spki = Rc::new(spki_der(&check.public_key(keys)?));
                if self.host_keys.len() >= 16 {
                    self.host_keys.clear();
                }
                self.host_keys.insert(*check.key_thumbprint(), spki.clone());
                spki
            }
        };
        host_verify(hash, &spki, &signature, check.signing_input())
    }

    /// Copies the keys and the deny-list from shared data if another VM changed them.
    fn sync(&mut self, now: i64) {
        let version = shared_version(&self.shared.keys_version);
        if version != self.keys_version {
            if let Ok((Some(bytes), _)) = hostcalls::get_shared_data(&self.shared.keys) {
                if let Some(record) = KeysRecord::decode(&bytes) {
                    if let Ok((ring, _)) = KeyRing::from_jwks(&record.jwks, &self.settings.policy) {
                        self.keys.store(Rc::new(ring), record.fresh_until);
                    }
                }
            }
            self.keys_version = version;
        }
        self.deny_list.sync(&Host, &self.shared, now);
    }

    fn usable_keys(&self, now: i64) -> Option<Rc<KeyRing>> {
        self.keys.usable(now, self.settings.keys_max_stale)
    }

    /// Takes the answer to a JWKS call: on success the keys are this VM's at once and every
    /// other VM's on its next tick.
    fn accept_keys(&mut self, answer: &CallAnswer, now: i64) -> Result<usize, String> {
        let result = self.parse_keys(answer, now);
        match &result {
            Ok(_) => bump(self.metrics.jwks_fetch_success, 1),
            Err(error) => {
                bump(self.metrics.jwks_fetch_failure, 1);
                log(
                    LogLevel::Warn,
                    serde_json::json!({"event": "jwks_fetch_failed", "error": error}),
                );
            }
        }
        result
    }

    fn parse_keys(&mut self, answer: &CallAnswer, now: i64) -> Result<usize, String> {
        let body = answer.body_if_ok(MAX_JWKS_BYTES)?;
        let (ring, skipped) = KeyRing::from_jwks(body, &self.settings.policy)
            .map_err(|e| format!("unusable JWKS: {e}"))?;
        for key in skipped {
            log(
                LogLevel::Warn,
                serde_json::json!({"event": "jwks_key_skipped", "kid": key.kid, "reason": format!("{:?}", key.reason)}),
            );
        }
        let max_age = freshness_seconds(answer.cache_control.as_deref())
            .unwrap_or(self.settings.keys_default_max_age);
        let fresh_until = now.saturating_add(i64::from(max_age));
        let record = KeysRecord {
            fresh_until,
            jwks: body.to_vec(),
        };
        publish(
            &self.shared.keys,
            &self.shared.keys_version,
            &record.encode(),
            None,
        )
        .map_err(|()| "shared data refused the key set".to_string())?;
        let count = ring.keys().len();
        let kids: Vec<&str> = ring.keys().iter().filter_map(|k| k.kid()).collect();
        log(
            LogLevel::Info,
            serde_json::json!({"event": "jwks_loaded", "kids": kids, "fresh_for": max_age}),
        );
        self.keys.store(Rc::new(ring), fresh_until);
        self.keys_version = shared_version(&self.shared.keys_version);
        Ok(count)
    }

    /// Claims the shared right to refetch the JWKS for an unknown `kid`: at most once per
    /// `keys_refetch_interval` across every VM, so made-up `kid`s cannot flood the origin.
    fn claim_forced_fetch(&mut self, now: i64) -> bool {
        let Ok((last, cas)) = hostcalls::get_shared_data(&self.shared.forced_fetch) else {
            return false;
        };
        let last = decode_version(last.as_deref());
        let interval = i64::from(self.settings.keys_refetch_interval);
        if now.saturating_sub(i64::try_from(last).unwrap_or(0)) < interval {
            return false;
        }
        let claimed = hostcalls::set_shared_data(
            &self.shared.forced_fetch,
            Some(now.to_string().as_bytes()),
            cas,
        )
        .is_ok();
        if claimed {
            self.keys.attempted(now, true);
        }
        claimed
    }
}

/// Envoy's `verify_signature` foreign function: `Some(valid)`, or `None` if the host could not
/// answer (no such function, a key it cannot parse).
fn host_verify(hash: &str, spki: &[u8], signature: &[u8], text: &[u8]) -> Option<bool> {
    let arguments = verify_arguments(hash, spki, signature, text);
    match hostcalls::call_foreign_function("verify_signature", Some(&arguments)) {
        Ok(Some(result)) => verify_result(&result),
        // An empty message: `result` is false and there is no error text.
        Ok(None) => Some(false),
        Err(_) => None,
    }
}

/// The host's known-answer test: for each algorithm it might take, a valid signature must pass
/// and the same signature over other bytes must fail. Returns the algorithms that passed.
fn host_self_test() -> Vec<Algorithm> {
    let Ok(vectors) = serde_json::from_str::<serde_json::Value>(SELF_TEST) else {
        return Vec::new();
    };
    let policy = Policy::from_json(
        r#"{"issuers":["self-test"],"audiences":["self-test"],"algorithms":["ES256","RS256"]}"#,
    );
    let (Ok(policy), Some(keys)) = (policy, vectors.get("jwks")) else {
        return Vec::new();
    };
    let Ok((ring, _)) = KeyRing::from_jwks(keys.to_string().as_bytes(), &policy) else {
        return Vec::new();
    };
    let mut passed = Vec::new();
    for (alg, name) in [(Algorithm::Es256, "ES256"), (Algorithm::Rs256, "RS256")] {
        let check = || -> Option<bool> {
            let token = vectors.get("tokens")?.get(name)?.as_str()?;
            let (input, signature) = token.rsplit_once('.')?;
            let signature = Base64UrlUnpadded::decode_vec(signature).ok()?;
            let kid = format!("self-test-{name}");
            let key = ring.keys().iter().find(|k| k.kid() == Some(kid.as_str()))?;
            let spki = spki_der(&key.public_key()?);
            let signature = host_signature(alg, &signature)?;
            let hash = host_hash(alg)?;
            let tampered = [input.as_bytes(), b"x"].concat();
            Some(
                host_verify(hash, &spki, &signature, input.as_bytes())?
                    && !host_verify(hash, &spki, &signature, &tampered)?,
            )
        };
        if check() == Some(true) {
            passed.push(alg);
        }
    }
    passed
}

/// Envoy's shared data, through the host calls.
struct Host;

impl SharedData for Host {
    fn get(&self, key: &str) -> Option<(Vec<u8>, Option<u32>)> {
        match hostcalls::get_shared_data(key) {
            Ok((Some(value), cas)) => Some((value, cas)),
            _ => None,
        }
    }

    fn set(&self, key: &str, value: Option<&[u8]>, cas: Option<u32>) -> bool {
        hostcalls::set_shared_data(key, value, cas).is_ok()
    }
}

/// The version stored under `key`; 0 when there is none.
fn shared_version(key: &str) -> u64 {
    match hostcalls::get_shared_data(key) {
        Ok((value, _)) => decode_version(value.as_deref()),
        Err(_) => 0,
    }
}

/// Writes a record (with `cas` if given), then bumps its version.
fn publish(key: &str, version_key: &str, value: &[u8], cas: Option<u32>) -> Result<(), ()> {
    hostcalls::set_shared_data(key, Some(value), cas).map_err(|_| ())?;
    let next = shared_version(version_key).wrapping_add(1).to_string();
    hostcalls::set_shared_data(version_key, Some(next.as_bytes()), None).map_err(|_| ())
}

/// A finished call to the origin, read from the host.
#[derive(Debug)]
struct CallAnswer {
    status: Option<u16>,
    cache_control: Option<String>,
    body: Result<Vec<u8>, String>,
}

impl CallAnswer {
    /// Reads the current call answer; a body over `max` is an error, not a truncation.
    fn read(body_size: usize, max: usize) -> Self {
        let header = |name: &str| {
            hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, name)
                .ok()
                .flatten()
                .and_then(|v| String::from_utf8(v).ok())
        };
        let body = if body_size > max {
            Err(format!("the answer is over {max} bytes"))
        } else if body_size == 0 {
            Ok(Vec::new())
        } else {
            hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
                .map(Option::unwrap_or_default)
                .map_err(|status| format!("the body could not be read: {status:?}"))
        };
        Self {
            status: header(":status").and_then(|s| s.parse().ok()),
            cache_control: header("cache-control"),
            body,
        }
    }

    fn body_if_ok(&self, max: usize) -> Result<&[u8], String> {
        match self.status {
            Some(200) => {}
            Some(status) => return Err(format!("the origin answered {status}")),
            // No `:status`: the call failed (no connection, timeout, reset).
            None => return Err("the call failed".to_string()),
        }
        let body = self.body.as_deref().map_err(Clone::clone)?;
        if body.len() > max {
            return Err(format!("the answer is over {max} bytes"));
        }
        Ok(body)
    }
}

/// Starts a GET to the origin; `None` if the host refuses (an unknown cluster, say).
fn call_origin(route: &OriginRoute, path: &str, timeout_ms: u32) -> Option<u32> {
    let result = hostcalls::dispatch_http_call(
        &route.cluster,
        vec![
            (":method", "GET"),
            (":path", path),
            (":authority", &route.authority),
            ("accept", "application/json"),
        ],
        None,
        vec![],
        Duration::from_millis(u64::from(timeout_ms)),
    );
    match result {
        Ok(token) => Some(token),
        Err(status) => {
            log(
                LogLevel::Error,
                serde_json::json!({"event": "call_refused", "cluster": route.cluster, "status": format!("{status:?}")}),
            );
            None
        }
    }
}

/// Starts a JWKS call to the origin.
fn call_jwks(settings: &Settings) -> Option<u32> {
    call_origin(
        &settings.jwks,
        &settings.jwks.path,
        settings.fetch_timeout_ms,
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    Keys,
    Feed,
}

/// One per VM: configuration, the fetcher election, the scheduled calls.
struct Root {
    vm: Option<Rc<RefCell<Vm>>>,
    /// This VM's identity in the election.
    me: u64,
    calls: HashMap<u32, Call>,
    last_feed_call: Option<i64>,
}

impl Root {
    fn new() -> Self {
        let mut bytes = [0u8; 8];
        // Without randomness two VMs could share an identity and both fetch; that costs the
        // origin a duplicate call, never a wrong verdict, so a failure is not fatal.
        let _ = getrandom::fill(&mut bytes);
        Self {
            vm: None,
            me: u64::from_le_bytes(bytes),
            calls: HashMap::new(),
            last_feed_call: None,
        }
    }

    /// Takes or renews the fetcher lease. Two VMs that find the key absent may both write it;
    /// the later write wins and the other steps down at its next tick.
    fn is_fetcher(&self, keys: &shared::Keys, now: i64) -> bool {
        let Ok((current, cas)) = hostcalls::get_shared_data(&keys.fetcher) else {
            return false;
        };
        if !Lease::may_take(current.as_deref(), self.me, now) {
            return false;
        }
        let lease = Lease {
            owner: self.me,
            until: now + LEASE_SECONDS,
        };
        hostcalls::set_shared_data(&keys.fetcher, Some(&lease.encode()), cas).is_ok()
    }

    fn calling(&self, call: Call) -> bool {
        self.calls.values().any(|c| *c == call)
    }

    fn fetch(&mut self, vm: &mut Vm, now: i64) {
        let settings = &vm.settings;
        if !self.calling(Call::Keys) && vm.keys.fetch_due(now, settings.keys_refetch_interval) {
            if let Some(token) = call_jwks(settings) {
                self.calls.insert(token, Call::Keys);
            }
            vm.keys.attempted(now, false);
        }
        let feed_due = self
            .last_feed_call
            .is_none_or(|at| now.saturating_sub(at) >= i64::from(settings.feed_poll));
        if feed_due && !self.calling(Call::Feed) && vm.usable_keys(now).is_some() {
            self.poll_feed(vm, now);
        }
        let since = match vm.deny_list.read_at() {
            0 => 0,
            at => now.saturating_sub(at),
        };
        record(vm.metrics.feed_lag_seconds, since);
        record(
            vm.metrics.revoked_tokens,
            i64::try_from(vm.deny_list.len()).unwrap_or(i64::MAX),
        );
    }

    fn poll_feed(&mut self, vm: &Vm, now: i64) {
        let route = &vm.settings.revocation_feed;
        let separator = if route.path.contains('?') { '&' } else { '?' };
        let path = format!(
            "{}{separator}after={}&limit={FEED_PAGE}",
            route.path,
            vm.deny_list.cursor()
        );
        if let Some(token) = call_origin(route, &path, vm.settings.fetch_timeout_ms) {
            self.calls.insert(token, Call::Feed);
        }
        self.last_feed_call = Some(now);
    }

    /// Applies a feed page to the shared deny-list. Returns whether the page was full (more to
    /// read at once).
    fn apply_feed(&mut self, vm: &mut Vm, answer: &CallAnswer, now: i64) -> Result<bool, String> {
        let body = answer.body_if_ok(MAX_FEED_BYTES)?;
        let page: FeedPage =
            serde_json::from_slice(body).map_err(|e| format!("not a feed page: {e}"))?;
        let keys = vm
            .usable_keys(now)
            .ok_or_else(|| "no key set to check the feed with".to_string())?;
        vm.deny_list.sync(&Host, &vm.shared, now);
        let mut cursor = vm.deny_list.cursor();
        let mut revoked = Vec::new();
        let full = page.entries.len() >= FEED_PAGE;
        let mut finished = true;
        for entry in &page.entries {
            if entry.seq <= cursor {
                continue;
            }
            match verify_revocation(&entry.jws, now, &keys, &vm.settings.policy) {
                Ok(revocation) => revoked.push(revocation),
                Err(RevocationError::Expired) => {}
                Err(RevocationError::Invalid(denial))
                    if denial.reason == DenyReason::UnknownKey && vm.claim_forced_fetch(now) =>
                {
                    // Signed with a key this edge has not seen yet: fetch keys, read this entry
                    // again on the next poll.
                    if let Some(token) = call_jwks(&vm.settings) {
                        self.calls.insert(token, Call::Keys);
                    }
                    finished = false;
                    break;
                }
                Err(RevocationError::Invalid(denial)) => {
                    // Not the origin's signature even with fresh keys: skipping it is all an
                    // edge can do, and the operator hears of it.
                    log(
                        LogLevel::Error,
                        serde_json::json!({"event": "feed_entry_rejected", "seq": entry.seq, "reason": denial.reason.code()}),
                    );
                }
            }
            cursor = cursor.max(entry.seq);
        }
        if finished {
            cursor = cursor.max(page.next);
        }
        let leeway = vm.settings.policy.leeway_seconds();
        vm.deny_list
            .publish(&Host, &vm.shared, revoked, leeway, cursor, now)
            .map_err(|e| e.to_string())?;
        Ok(full && finished)
    }
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        let Some(call) = self.calls.remove(&token_id) else {
            return;
        };
        let (Some(vm), Some(now)) = (self.vm.clone(), now()) else {
            return;
        };
        let mut vm = vm.borrow_mut();
        match call {
            Call::Keys => {
                let answer = CallAnswer::read(body_size, MAX_JWKS_BYTES);
                let _ = vm.accept_keys(&answer, now);
            }
            Call::Feed => {
                let answer = CallAnswer::read(body_size, MAX_FEED_BYTES);
                match self.apply_feed(&mut vm, &answer, now) {
                    Ok(more) => {
                        bump(vm.metrics.feed_read_success, 1);
                        if more {
                            self.poll_feed(&vm, now);
                        }
                    }
                    Err(error) => {
                        bump(vm.metrics.feed_read_failure, 1);
                        log(
                            LogLevel::Warn,
                            serde_json::json!({"event": "feed_read_failed", "error": error}),
                        );
                    }
                }
            }
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, plugin_configuration_size: usize) -> bool {
        let configuration = match hostcalls::get_buffer(
            BufferType::PluginConfiguration,
            0,
            plugin_configuration_size,
        ) {
            Ok(Some(bytes)) => bytes,
            _ => {
                log(
                    LogLevel::Critical,
                    serde_json::json!({"event": "configuration_missing"}),
                );
                return false;
            }
        };
        let settings = match Settings::from_json(&configuration) {
            Ok(settings) => settings,
            Err(error) => {
                // Envoy refuses the plugin: no filter rather than one that lets requests through.
                log(
                    LogLevel::Critical,
                    serde_json::json!({"event": "configuration_invalid", "error": error.to_string()}),
                );
                return false;
            }
        };
        let host_algorithms = host_self_test();
        log(
            LogLevel::Info,
            serde_json::json!({"event": "host_crypto", "algorithms": host_algorithms.iter().map(|a| a.name()).collect::<Vec<_>>()}),
        );
        let mut vm = Vm {
            host_algorithms,
            host_keys: HashMap::new(),
            tokens: TokenCache::new(settings.policy.cache_entries()),
            shared: shared::Keys::for_configuration(&configuration),
            settings,
            keys: KeyCache::default(),
            keys_version: 0,
            deny_list: DenyList::default(),
            metrics: Metrics::define(),
        };
        vm.sync(now().unwrap_or(0));
        self.vm = Some(Rc::new(RefCell::new(vm)));
        hostcalls::set_tick_period(TICK).is_ok()
    }

    fn on_tick(&mut self) {
        let (Some(vm), Some(now)) = (self.vm.clone(), now()) else {
            return;
        };
        let mut vm = vm.borrow_mut();
        vm.metrics.flush();
        vm.sync(now);
        if self.is_fetcher(&vm.shared, now) {
            self.fetch(&mut vm, now);
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let vm = self.vm.clone()?;
        Some(Box::new(Exchange {
            vm,
            keys_call: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// One request.
struct Exchange {
    vm: Rc<RefCell<Vm>>,
    /// The JWKS refetch this request waits for (an unknown `kid`).
    keys_call: Option<u32>,
}

/// What to do with a request.
enum Outcome {
    Allow(Allowed),
    Deny(Denial),
    /// Wait for keys: a refetch for an unknown `kid` has started.
    WaitForKeys(u32),
    /// The host could not give what a verdict needs; fail closed.
    Internal(&'static str),
}

impl Exchange {
    fn decide(&mut self, may_refetch: bool) -> Outcome {
        let Some(now) = now() else {
            return Outcome::Internal("no clock");
        };
        let Ok(headers) = hostcalls::get_map_bytes(MapType::HttpRequestHeaders) else {
            return Outcome::Internal("request headers unreadable");
        };
        let pseudo = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| std::str::from_utf8(v))
        };
        let (Some(Ok(method)), Some(Ok(path))) = (pseudo(":method"), pseudo(":path")) else {
            // A path that is not text cannot be matched against the route rules.
            return Outcome::Deny(DenyReason::InvalidRequest.into());
        };
        let request = Request {
            method,
            path,
            headers: &headers,
        };
        let mut vm = self.vm.borrow_mut();
        let vm = &mut *vm;
        if vm.keys.usable(now, vm.settings.keys_max_stale).is_none() || vm.deny_list.read_at() == 0
        {
            // A VM that has not ticked yet still sees what the fetcher has published.
            vm.sync(now);
        }
        let keys = vm.usable_keys(now);
        let before = vm.tokens.stats();
        let deferred = authorize_deferred(
            &request,
            now,
            keys.as_deref(),
            &vm.settings.policy,
            &mut vm.tokens,
        );
        let step = match (deferred, keys.as_deref()) {
            (Deferred::Decided(step), _) => step,
            (Deferred::VerifySignature(check), Some(ring)) => {
                let valid = vm.verify(&check, ring);
                check.finish(valid, now, &vm.settings.policy, &mut vm.tokens)
            }
            // The core asks for a signature only once it has chosen a key from the ring.
            (Deferred::VerifySignature(_), None) => {
                Step::Done(Verdict::Deny(DenyReason::KeysUnavailable.into()))
            }
        };
        let after = vm.tokens.stats();
        let pending = &mut vm.metrics.pending;
        pending.token_cache_hits += after.hits - before.hits;
        pending.token_cache_misses += after.misses - before.misses;
        let verdict = match step {
            Step::Done(verdict) => verdict,
            Step::CheckRevocation(check) => {
                let max_stale = vm.settings.feed_max_stale;
                let answer = RevocationAnswer {
                    jti: vm.deny_list.status(check.jti(), now, max_stale),
                    user: vm.deny_list.watermark(check.subject(), now, max_stale),
                };
                check.finish(answer, &vm.settings.policy)
            }
        };
        match verdict {
            Verdict::Allow(allowed) => Outcome::Allow(allowed),
            Verdict::Deny(denial)
                if denial.reason == DenyReason::UnknownKey
                    && may_refetch
                    && vm.claim_forced_fetch(now) =>
            {
                match call_jwks(&vm.settings) {
                    Some(token) => Outcome::WaitForKeys(token),
                    None => Outcome::Deny(denial),
                }
            }
            Verdict::Deny(denial) => Outcome::Deny(denial),
        }
    }

    /// Carries out an outcome; the action for the request-headers callback.
    fn act(&mut self, outcome: Outcome) -> Action {
        match outcome {
            Outcome::Allow(allowed) => match apply(&allowed) {
                Ok(()) => {
                    self.vm.borrow_mut().metrics.pending.allowed += 1;
                    Action::Continue
                }
                Err(()) => self.fail("request headers could not be changed"),
            },
            Outcome::Deny(denial) => {
                let headers = {
                    let mut vm = self.vm.borrow_mut();
                    *vm.metrics
                        .pending
                        .denied
                        .entry(denial.reason.code())
                        .or_default() += 1;
                    denial.response_headers(&vm.settings.policy)
                };
                let headers: Vec<(&str, &str)> =
                    headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
                if hostcalls::send_http_response(
                    u32::from(denial.status()),
                    headers,
                    Some(denial.body().as_bytes()),
                )
                .is_err()
                {
                    let _ = hostcalls::reset_http_request();
                }
                Action::Pause
            }
            Outcome::WaitForKeys(token) => {
                self.keys_call = Some(token);
                Action::Pause
            }
            Outcome::Internal(what) => self.fail(what),
        }
    }

    /// An internal error: a JSON 500 and a log line, never a pass.
    fn fail(&self, what: &str) -> Action {
        log(
            LogLevel::Error,
            serde_json::json!({"event": "internal_error", "error": what}),
        );
        let body =
            br#"{"error":"server_error","error_description":"The request could not be checked"}"#;
        if hostcalls::send_http_response(
            500,
            vec![
                ("content-type", "application/json"),
                ("cache-control", "no-store"),
            ],
            Some(body),
        )
        .is_err()
        {
            let _ = hostcalls::reset_http_request();
        }
        Action::Pause
    }
}

/// Removes client-supplied identity headers and sets the verified ones. Any failure fails the
/// request: forwarding with a spoofed header left in place would be worse than refusing.
///
/// A header that is both removed and set is only set: Envoy's replace (`setCopy`) drops every
/// existing value of the name, whatever its case, before adding the new one (the end-to-end
/// suite sends spoofed duplicates), and each host call costs about 0.4 µs.
fn apply(allowed: &Allowed) -> Result<(), ()> {
    let changes = &allowed.header_changes;
    for name in &changes.remove {
        if changes.set.iter().any(|(set, _)| set == name) {
            continue;
        }
        hostcalls::remove_map_value(MapType::HttpRequestHeaders, name).map_err(|_| ())?;
    }
    for (name, value) in &changes.set {
        hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value)).map_err(|_| ())?;
    }
    Ok(())
}

impl Context for Exchange {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        if self.keys_call != Some(token_id) {
            return;
        }
        self.keys_call = None;
        if let Some(now) = now() {
            let answer = CallAnswer::read(body_size, MAX_JWKS_BYTES);
            let _ = self.vm.borrow_mut().accept_keys(&answer, now);
        }
        // Decided again with whatever keys there are now; no second refetch.
        let outcome = self.decide(false);
        if let Action::Continue = self.act(outcome) {
            let _ = hostcalls::resume_http_request();
        }
    }
}

impl HttpContext for Exchange {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let outcome = self.decide(true);
        self.act(outcome)
    }
}
