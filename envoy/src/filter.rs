//! The proxy-wasm entry: a [`Root`] per VM that owns the configuration, the fetcher election and
//! the calls to the origin, and an [`Exchange`] per request that asks the core for a verdict and
//! applies it. Every decision is `edgeauth-core`'s; the key set is handled in [`crate::keys`],
//! the revocation feed in [`crate::feed`], host calls in [`crate::host`].

use std::{cell::RefCell, collections::HashMap, rc::Rc, sync::Arc};

use crate::{
    abi::{self, Action, BufferType, LogLevel, MapType},
    call_answer::CallAnswer,
    deny_list::DenyList,
    feed::MAX_FEED_BYTES,
    host::{host_self_test, host_verify, log, now, Host},
    host_crypto::{host_hash, host_signature, spki_der},
    keys::{call_jwks, MAX_JWKS_BYTES},
    metrics::Metrics,
    settings::Settings,
    shared::{self, Lease, SharedData, LEASE_SECONDS},
    wire::{self, Pair},
};
use edgeauth_core::{
    authorize_deferred, Algorithm, Allowed, Deferred, Denial, DenyReason, HeaderEdit, KeyCache,
    KeyRing, Policy, Request, SignatureCheck, Step, Thumbprint, TokenCache, Verdict,
};

/// How often every VM wakes: to sync keys and revocations from shared data, and (the fetcher)
/// to fetch. Half a second: a fresh Envoy has its first keys within a second, and a revocation
/// read by the fetcher reaches every VM within half a second more.
const TICK_MS: u32 = 500;

/// What one VM keeps: configuration, its copies of the shared keys and deny-list, its
/// verified-token cache. Shared by the VM's root context and its requests (one thread).
#[derive(Debug)]
pub(crate) struct Vm {
    pub(crate) settings: Settings,
    pub(crate) shared: shared::Keys,
    pub(crate) keys: KeyCache,
    /// The version of the shared key set this VM last copied.
    pub(crate) keys_version: u64,
    pub(crate) deny_list: DenyList,
    tokens: TokenCache,
    pub(crate) metrics: Metrics,
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
        self.sync_keys();
        self.deny_list.sync(&Host, &self.shared, now);
    }

    pub(crate) fn usable_keys(&self, now: i64) -> Option<Arc<KeyRing>> {
        self.keys.usable(now, self.settings.keys_max_stale).cloned()
    }
}

/// A call to the origin in flight, and when it was dispatched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Call {
    /// The JWKS.
    Keys { started_at: i64 },
    /// A feed page after cursor `after`.
    Feed { after: u64 },
}

/// One per VM: configuration, the fetcher election, the scheduled calls.
pub(crate) struct Root {
    vm: Option<Rc<RefCell<Vm>>>,
    /// This VM's identity in the election.
    pub(crate) me: u64,
    pub(crate) calls: HashMap<u32, Call>,
    pub(crate) last_feed_call: Option<i64>,
    /// The feed's validator: this VM's own, as it is the fetcher's transport state (a VM that
    /// takes the lease over polls once without it).
    pub(crate) feed_tag: crate::call_answer::FeedTag,
    /// Whether this VM held the lease at its last tick.
    fetching: bool,
}

impl Root {
    fn new() -> Self {
        let mut bytes = [0u8; 8];
        // Without randomness two VMs could share an identity and both fetch; that costs the
        // origin a duplicate call, never a wrong verdict (the deny-list ring repairs a race),
        // so a failure is not fatal.
        let _ = getrandom::fill(&mut bytes);
        Self {
            vm: None,
            me: u64::from_le_bytes(bytes),
            calls: HashMap::new(),
            last_feed_call: None,
            feed_tag: crate::call_answer::FeedTag::default(),
            fetching: false,
        }
    }

    /// Takes or renews the fetcher lease. Two VMs that find the key absent may both write it
    /// (Envoy does not check CAS on a missing key); the later write wins and the other steps down
    /// at its next tick.
    fn is_fetcher(&self, keys: &shared::Keys, now: i64) -> bool {
        let (current, cas) = match Host.get(&keys.fetcher) {
            Some((current, cas)) => (Some(current), cas),
            None => (None, None),
        };
        if !Lease::may_take(current.as_deref(), self.me, now) {
            return false;
        }
        let lease = Lease {
            owner: self.me,
            until: now + LEASE_SECONDS,
        };
        Host.set(&keys.fetcher, &lease.encode(), cas)
    }

    pub(crate) fn calling(&self, call: fn(&Call) -> bool) -> bool {
        self.calls.values().any(call)
    }

    fn fetch(&mut self, vm: &mut Vm, now: i64) {
        let settings = &vm.settings;
        let calling_keys = self.calling(|c| matches!(c, Call::Keys { .. }));
        if !calling_keys && vm.keys.fetch_due(now, settings.keys_refetch_interval) {
            if let Some(token) = call_jwks(settings) {
                self.calls.insert(token, Call::Keys { started_at: now });
            }
            vm.keys.attempted(now, false);
        }
        let feed_due = self
            .last_feed_call
            .is_none_or(|at| now.saturating_sub(at) >= i64::from(settings.feed_poll));
        let calling_feed = self.calling(|c| matches!(c, Call::Feed { .. }));
        if feed_due && !calling_feed && vm.usable_keys(now).is_some() {
            self.poll_feed(vm, now);
        }
        vm.record_feed_metrics(now);
    }
    fn on_http_call_response(&mut self, token_id: u32, body_size: usize) {
        let Some(call) = self.calls.remove(&token_id) else {
            return;
        };
        let (Some(vm), Some(now)) = (self.vm.clone(), now()) else {
            return;
        };
        let mut vm = vm.borrow_mut();
        match call {
            Call::Keys { started_at } => {
                let answer = CallAnswer::read(body_size, MAX_JWKS_BYTES);
                let accepted = vm.accept_keys(&answer, started_at, now).is_ok();
                let calling_feed = self.calling(|c| matches!(c, Call::Feed { .. }));
                if accepted && !calling_feed && vm.deny_list.reader().waiting().is_some() {
                    // The feed waits for keys: read it again with these.
                    self.poll_feed(&vm, now);
                }
            }
            Call::Feed { after } => {
                let answer = CallAnswer::read(body_size, MAX_FEED_BYTES);
                self.on_feed_answer(&mut vm, &answer, after, now);
            }
        }
    }

    fn on_configure(&mut self, plugin_configuration_size: usize) -> bool {
        let configuration = match abi::buffer(
            BufferType::PluginConfiguration,
            0,
            plugin_configuration_size,
        ) {
            Ok(bytes) if !bytes.is_empty() => bytes,
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
            tokens: TokenCache::for_policy(&settings.policy),
            shared: shared::Keys::for_configuration(&configuration),
            settings,
            keys: KeyCache::default(),
            keys_version: 0,
            deny_list: DenyList::default(),
            metrics: Metrics::define(),
        };
        vm.sync(now().unwrap_or(0));
        self.vm = Some(Rc::new(RefCell::new(vm)));
        abi::set_tick_period_ms(TICK_MS).is_ok()
    }

    fn on_tick(&mut self) {
        let (Some(vm), Some(now)) = (self.vm.clone(), now()) else {
            return;
        };
        let mut vm = vm.borrow_mut();
        vm.metrics.flush();
        vm.sync(now);
        let fetching = self.is_fetcher(&vm.shared, now);
        if fetching && !self.fetching {
            // The last fetcher may have stopped halfway through a write.
            vm.deny_list.check_every_slot();
        }
        self.fetching = fetching;
        if fetching {
            self.fetch(&mut vm, now);
        }
    }

    /// A request's context; `None` before the plugin is configured.
    fn exchange(&self) -> Option<Exchange> {
        let vm = self.vm.clone()?;
        Some(Exchange {
            vm,
            keys_call: None,
        })
    }
}

/// One request.
struct Exchange {
    vm: Rc<RefCell<Vm>>,
    /// The JWKS refetch this request waits for (an unknown `kid`), and when it was dispatched.
    keys_call: Option<(u32, i64)>,
}

/// What to do with a request.
enum Outcome {
    Allow(Allowed),
    /// Refuse, with the reply's headers (the core's, for this request).
    Deny(Vec<(&'static str, String)>, Denial),
    /// Wait for keys: a refetch for an unknown `kid` started at this time.
    WaitForKeys(u32, i64),
    /// The host could not give what a verdict needs; fail closed.
    Internal(&'static str),
}

impl Exchange {
    fn decide(&mut self, may_refetch: bool) -> Outcome {
        let Some(now) = now() else {
            return Outcome::Internal("no clock");
        };
        let Ok(map) = abi::header_map(MapType::HttpRequestHeaders) else {
            return Outcome::Internal("request headers unreadable");
        };
        let Ok(pairs) = wire::decode_pairs(&map) else {
            return Outcome::Internal("request headers unreadable");
        };
        if !wire::names_are_text(&pairs) {
            // Headers that cannot be read name no origin: a refusal without CORS.
            return self.refuse(DenyReason::InvalidRequest.into(), &[]);
        }
        let headers = pairs.as_slice();
        let Some((method, path)) = wire::method_and_path(headers) else {
            return self.refuse(DenyReason::InvalidRequest.into(), headers);
        };
        let request = Request {
            method,
            path,
            headers,
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
                let answer = vm.deny_list.answer(&check, now, vm.settings.feed_max_stale);
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
                    Some(token) => Outcome::WaitForKeys(token, now),
                    None => refuse(vm, denial, headers),
                }
            }
            Verdict::Deny(denial) => refuse(vm, denial, headers),
        }
    }

    /// A refusal of a request with these headers, before the VM is borrowed.
    fn refuse(&self, denial: Denial, headers: &[Pair]) -> Outcome {
        refuse(&self.vm.borrow(), denial, headers)
    }

    /// Carries out an outcome; the action for the request-headers callback.
    fn act(&mut self, outcome: Outcome) -> Action {
        match outcome {
            Outcome::Allow(allowed) => {
                // Borrowed for the edits alone: the count below borrows the VM mutably.
                let applied = apply(&allowed, &self.vm.borrow().settings.policy);
                match applied {
                    Ok(()) => {
                        self.vm.borrow_mut().metrics.pending.allowed += 1;
                        Action::Continue
                    }
                    Err(()) => fail("request headers could not be changed"),
                }
            }
            Outcome::Deny(headers, denial) => {
                *self
                    .vm
                    .borrow_mut()
                    .metrics
                    .pending
                    .denied
                    .entry(denial.reason.code())
                    .or_default() += 1;
                let headers: Vec<(&str, &[u8])> =
                    headers.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
                answer(
                    u32::from(denial.status()),
                    &headers,
                    denial.body().as_bytes(),
                )
            }
            Outcome::WaitForKeys(token, started_at) => {
                self.keys_call = Some((token, started_at));
                Action::Pause
            }
            Outcome::Internal(what) => fail(what),
        }
    }
}

/// A refusal of a request with `headers`: the core's reply headers, CORS for a page on the
/// policy's `cors` origins included.
fn refuse(vm: &Vm, denial: Denial, headers: &[Pair]) -> Outcome {
    Outcome::Deny(
        denial.response_headers(&vm.settings.policy, headers),
        denial,
    )
}

/// An internal error: a JSON 500 and a log line, never a pass.
fn fail(what: &str) -> Action {
    log(
        LogLevel::Error,
        serde_json::json!({"event": "internal_error", "error": what}),
    );
    answer(
        500,
        &[
            ("content-type", b"application/json"),
            ("cache-control", b"no-store"),
        ],
        br#"{"error":"server_error","error_description":"The request could not be checked"}"#,
    )
}

/// Answers the request from the filter, or resets it if even that fails: it never goes on.
fn answer(status: u32, headers: &[(&str, &[u8])], body: &[u8]) -> Action {
    if abi::send_local_response(status, headers, body).is_err() {
        let _ = abi::close_request();
    }
    Action::Pause
}

/// Removes client-supplied identity headers and sets the verified ones. Any failure fails the
/// request: forwarding with a spoofed header left in place would be worse than refusing.
///
/// Envoy's replace (`setCopy`) drops every existing value of the name, whatever its case, before
/// adding the new one (the end-to-end suite sends spoofed duplicates); each host call costs about
/// 0.4 µs.
fn apply(allowed: &Allowed, policy: &Policy) -> Result<(), ()> {
    let map = MapType::HttpRequestHeaders;
    for edit in allowed.edits(policy) {
        match edit {
            HeaderEdit::Remove(name) => abi::remove_header(map, name),
            HeaderEdit::Replace(name, value) => abi::replace_header(map, name, value),
            HeaderEdit::Add(name, value) => abi::add_header(map, name, value),
        }
        .map_err(|_| ())?;
    }
    Ok(())
}

impl Exchange {
    fn on_http_call_response(&mut self, token_id: u32, body_size: usize) {
        let Some((_, started_at)) = self.keys_call.filter(|(token, _)| *token == token_id) else {
            return;
        };
        self.keys_call = None;
        if let Some(now) = now() {
            let answer = CallAnswer::read(body_size, MAX_JWKS_BYTES);
            let _ = self.vm.borrow_mut().accept_keys(&answer, started_at, now);
        }
        // Decided again with whatever keys there are now; no second refetch.
        let outcome = self.decide(false);
        if let Action::Continue = self.act(outcome) {
            let _ = abi::continue_request();
        }
    }

    fn on_request_headers(&mut self) -> Action {
        let outcome = self.decide(true);
        self.act(outcome)
    }
}

/// The contexts Envoy created in this VM, and which request waits for which call. Envoy names
/// contexts by id in every entry point; an id this module does not know (a host bug, or an
/// entry point after a failed configuration) gets the safe answer, not a trap.
pub(crate) mod contexts {
    use std::{cell::RefCell, collections::HashMap};

    use super::{fail, Exchange, Root};
    use crate::abi::{self, Action};

    #[derive(Default)]
    struct Contexts {
        roots: HashMap<u32, Root>,
        exchanges: HashMap<u32, Exchange>,
        /// Calls that a request waits for (an unknown `kid`): the call's token, the request's
        /// context. The answer arrives at the root context; the request must act on it.
        waiting: HashMap<u32, u32>,
    }

    thread_local! {
        static CONTEXTS: RefCell<Contexts> = RefCell::new(Contexts::default());
    }

    /// Runs `f` on the table. The host does not call in while a callback runs, and a context is
    /// taken out of the table while its callback runs, so the table is never borrowed twice;
    /// were it, `f` would not run rather than panic.
    fn with<T>(f: impl FnOnce(&mut Contexts) -> T) -> Option<T> {
        CONTEXTS.with(|contexts| contexts.try_borrow_mut().ok().map(|mut c| f(&mut c)))
    }

    /// Runs a root's callback with the root out of the table; `None` if there is no such root.
    fn on_root<T>(id: u32, f: impl FnOnce(&mut Root) -> T) -> Option<T> {
        let mut root = with(|c| c.roots.remove(&id)).flatten()?;
        let result = f(&mut root);
        with(|c| c.roots.insert(id, root));
        Some(result)
    }

    fn on_exchange<T>(id: u32, f: impl FnOnce(&mut Exchange) -> T) -> Option<T> {
        let mut exchange = with(|c| c.exchanges.remove(&id)).flatten()?;
        let result = f(&mut exchange);
        with(|c| {
            if let Some((token, _)) = exchange.keys_call {
                c.waiting.insert(token, id);
            }
            c.exchanges.insert(id, exchange)
        });
        Some(result)
    }

    pub(crate) fn create(id: u32, root: u32) {
        if root == 0 {
            with(|c| c.roots.insert(id, Root::new()));
            return;
        }
        let exchange = with(|c| c.roots.get(&root).and_then(Root::exchange)).flatten();
        if let Some(exchange) = exchange {
            with(|c| c.exchanges.insert(id, exchange));
        }
    }

    pub(crate) fn configure(root: u32, configuration_size: usize) -> bool {
        on_root(root, |r| r.on_configure(configuration_size)).unwrap_or(false)
    }

    pub(crate) fn tick(root: u32) {
        on_root(root, Root::on_tick);
    }

    /// A request without a context has no configured filter behind it: refused, never passed.
    pub(crate) fn request_headers(id: u32) -> Action {
        on_exchange(id, Exchange::on_request_headers)
            .unwrap_or_else(|| fail("no context for the request"))
    }

    pub(crate) fn call_answered(token: u32, body_size: usize) {
        if let Some(id) = with(|c| c.waiting.remove(&token)).flatten() {
            // A request that has gone since has nothing to act on.
            if abi::set_effective_context(id).is_ok() {
                on_exchange(id, |e| e.on_http_call_response(token, body_size));
            }
            return;
        }
        let root = with(|c| {
            c.roots
                .iter()
                .find(|(_, root)| root.calls.contains_key(&token))
                .map(|(id, _)| *id)
        })
        .flatten();
        if let Some(root) = root {
            on_root(root, |r| r.on_http_call_response(token, body_size));
        }
    }

    pub(crate) fn delete(id: u32) {
        with(|c| match c.exchanges.remove(&id) {
            // A request that goes while it waits (its client left, or Envoy drained its
            // listener) waits no more: its refetch's answer finds no one.
            Some(exchange) => {
                if let Some((token, _)) = exchange.keys_call {
                    c.waiting.remove(&token);
                }
            }
            None => {
                c.roots.remove(&id);
            }
        });
    }
}
