//! What one filter configuration holds, shared by Envoy's main thread and every worker thread,
//! and the decisions over it. Pure: no Envoy call happens here, so all of it runs in unit tests.
//!
//! - **Requests read a [`View`] without a lock**: the key set and the deny state, behind
//!   `ArcSwap`. A worker thread loads it (an atomic read), never decodes or copies shared state.
//! - **One writer at a time replaces it whole**: the main thread with the scheduled JWKS and feed
//!   answers, a worker with a refetch for an unknown `kid`. They serialise on the [`Fetcher`]
//!   lock, which no request takes. A revocation is in every worker's next load once stored.
//! - The rules (when keys are due, how the feed is read, what a deny state answers) are the
//!   core's; this module only keeps them in one place for every thread.

use std::sync::{
    atomic::{AtomicI64, Ordering},
    Arc, Mutex, MutexGuard,
};

use arc_swap::ArcSwap;
use edgeauth_core::{
    authorize_deferred, forced_fetch_claimable, freshness_seconds, Allowed, Deferred, Denial,
    DenyReason, DenyState, FeedNext, FeedPage, FeedReader, KeyCache, KeyRing, Request, Step,
    TokenCache, Verdict,
};

use crate::{feed::MAX_FEED_BYTES, keys::MAX_JWKS_BYTES, settings::Settings};

/// What requests read: replaced whole, never changed in place.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// The key set and its freshness.
    pub keys: KeyCache,
    /// Revocations read from the feed.
    pub deny: Arc<DenyState>,
    /// When the feed was last read whole (0: never): what the deny state can vouch for.
    pub feed_read_at: i64,
}

/// A call to the origin that the configuration makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// The JWKS, started at this time.
    Keys {
        /// When it was started: the key set's `fetched_at` if it is taken.
        started_at: i64,
    },
    /// The feed page after this cursor.
    Feed {
        /// The cursor asked from.
        after: u64,
    },
}

/// An answer from the origin, as Envoy handed it over.
#[derive(Debug, Clone, Default)]
pub struct Answer {
    /// `:status`; `None` if the call failed (no connection, reset, timeout).
    pub status: Option<u16>,
    /// `cache-control`.
    pub cache_control: Option<String>,
    /// The body.
    pub body: Vec<u8>,
}

impl Answer {
    fn body_if_ok(&self, max: usize) -> Result<&[u8], String> {
        match self.status {
            Some(200) => {}
            Some(status) => return Err(format!("the origin answered {status}")),
            None => return Err("the call failed".to_string()),
        }
        if self.body.len() > max {
            return Err(format!("the answer is over {max} bytes"));
        }
        Ok(&self.body)
    }
}

/// The writers' side: the master copy of the view and what is in flight.
#[derive(Debug, Default)]
struct Fetcher {
    view: View,
    reader: FeedReader,
    keys_in_flight: bool,
    feed_in_flight: bool,
    last_feed_call: Option<i64>,
}

/// One filter configuration: settings, the view requests read, the fetcher state.
#[derive(Debug)]
pub struct Edge {
    /// The validated plugin configuration (the same JSON as the Wasm filter's).
    pub settings: Settings,
    view: ArcSwap<View>,
    fetcher: Mutex<Fetcher>,
    /// When a refetch for an unknown `kid` was last claimed, by any thread (`i64::MIN`: never).
    last_forced: AtomicI64,
}

/// What to do with a request.
#[derive(Debug)]
pub enum Outcome {
    /// Forward it after these header changes.
    Allow(Allowed),
    /// Answer it with this refusal and these headers (the core's, CORS included).
    Deny(Denial, Vec<(&'static str, String)>),
    /// Its token names a `kid` this edge does not hold and this request won the refetch claim:
    /// fetch the JWKS, then decide again.
    FetchKeys,
}

impl Edge {
    /// An edge with no keys and no feed read yet.
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            view: ArcSwap::from_pointee(View::default()),
            fetcher: Mutex::new(Fetcher::default()),
            last_forced: AtomicI64::new(i64::MIN),
        }
    }

    /// What requests read now.
    pub fn view(&self) -> Arc<View> {
        self.view.load_full()
    }

    fn fetcher(&self) -> MutexGuard<'_, Fetcher> {
        // A writer that panicked left a whole view behind (views are replaced, not edited).
        self.fetcher.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish(&self, fetcher: &Fetcher) {
        self.view.store(Arc::new(fetcher.view.clone()));
    }

    /// The calls to start at `now` (a tick, or right after an answer); each is marked in flight
    /// until [`Edge::take_keys`], [`Edge::take_feed`] or [`Edge::call_failed`] ends it.
    pub fn due(&self, now: i64) -> Vec<Call> {
        let settings = &self.settings;
        let mut fetcher = self.fetcher();
        let mut calls = Vec::new();
        // The feed stopped at an entry signed by a key this edge lacks: a refetch, under the
        // same claim as an unknown `kid`'s. If the claim is held, the entry is read again later.
        let keys_wanted = fetcher
            .view
            .keys
            .fetch_due(now, settings.keys_refetch_interval)
            || (fetcher.reader.waiting().is_some() && self.claim_forced_fetch(now));
        if !fetcher.keys_in_flight && keys_wanted {
            fetcher.view.keys.attempted(now, false);
            fetcher.keys_in_flight = true;
            calls.push(Call::Keys { started_at: now });
        }
        let usable = fetcher
            .view
            .keys
            .usable(now, settings.keys_max_stale)
            .is_some();
        let poll_due = fetcher
            .last_feed_call
            .is_none_or(|at| now.saturating_sub(at) >= i64::from(settings.feed_poll));
        if usable && poll_due && !fetcher.feed_in_flight {
            fetcher.feed_in_flight = true;
            fetcher.last_feed_call = Some(now);
            calls.push(Call::Feed {
                after: fetcher.reader.cursor(),
            });
        }
        calls
    }

    /// A call that could not be started (an unknown cluster, say): no longer in flight.
    pub fn call_failed(&self, call: Call) {
        let mut fetcher = self.fetcher();
        match call {
            Call::Keys { .. } => fetcher.keys_in_flight = false,
            Call::Feed { .. } => fetcher.feed_in_flight = false,
        }
    }

    /// Claims the refetch for an unknown `kid`: once per `keys_refetch_interval_seconds` across
    /// every worker thread, so made-up `kid`s cannot turn the edge against the origin.
    pub fn claim_forced_fetch(&self, now: i64) -> bool {
        let interval = self.settings.keys_refetch_interval;
        let mut last = self.last_forced.load(Ordering::Acquire);
        loop {
            let since = (last != i64::MIN).then_some(last);
            if !forced_fetch_claimable(since, now, interval) {
                return false;
            }
            match self.last_forced.compare_exchange_weak(
                last,
                now,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(seen) => last = seen,
            }
        }
    }

    /// Takes a JWKS answer to a call started at `started_at` (scheduled when `scheduled`, else a
    /// refetch for an unknown `kid`). Returns how many keys the set holds.
    pub fn take_keys(
        &self,
        answer: &Answer,
        started_at: i64,
        now: i64,
        scheduled: bool,
    ) -> Result<usize, String> {
        let mut fetcher = self.fetcher();
        if scheduled {
            fetcher.keys_in_flight = false;
        }
        let body = answer.body_if_ok(MAX_JWKS_BYTES)?;
        let (ring, _skipped) = KeyRing::from_jwks(body, &self.settings.policy)
            .map_err(|e| format!("unusable JWKS: {e}"))?;
        let max_age = freshness_seconds(answer.cache_control.as_deref())
            .unwrap_or(self.settings.keys_default_max_age);
        let count = ring.keys().len();
        let fresh_until = now.saturating_add(i64::from(max_age));
        // An answer to an older call than the set held is ignored by the cache.
        fetcher
            .view
            .keys
            .store(Arc::new(ring), started_at, fresh_until);
        if fetcher.reader.waiting().is_some() {
            // The feed waits for keys: read it again with these at once.
            fetcher.last_feed_call = None;
        }
        self.publish(&fetcher);
        Ok(count)
    }

    /// Takes a feed page asked for after `after`: stores its revocations, then moves the cursor
    /// (never the other way round), and says what to do next. A page that cannot be read moves
    /// nothing, so it is read again.
    pub fn take_feed(&self, answer: &Answer, after: u64, now: i64) -> Result<FeedNext, String> {
        let mut fetcher = self.fetcher();
        fetcher.feed_in_flight = false;
        let body = answer.body_if_ok(MAX_FEED_BYTES)?;
        let page: FeedPage =
            serde_json::from_slice(body).map_err(|e| format!("not a feed page: {e}"))?;
        if after != fetcher.reader.cursor() {
            // Asked from a cursor that has moved since: read again from the current one.
            fetcher.last_feed_call = None;
            return Ok(FeedNext::ReadMore);
        }
        let policy = &self.settings.policy;
        let keys = fetcher
            .view
            .keys
            .usable(now, self.settings.keys_max_stale)
            .ok_or("no key set to check the feed with")?;
        let read = fetcher.reader.read(
            &page,
            now,
            &keys,
            fetcher.view.keys.fetched_at(),
            policy,
            usize::MAX,
        );
        let leeway = policy.leeway_seconds();
        let deny = Arc::make_mut(&mut fetcher.view.deny);
        for revocation in &read.revocations {
            deny.apply(revocation, leeway);
        }
        deny.sweep(now);
        fetcher.reader = read.reader;
        fetcher.view.feed_read_at = now;
        if read.next == FeedNext::ReadMore {
            fetcher.last_feed_call = None;
        }
        self.publish(&fetcher);
        Ok(read.next)
    }

    /// Where the feed reader stands: its cursor, and whether it waits for keys.
    pub fn feed_reader(&self) -> FeedReader {
        self.fetcher().reader
    }

    /// Decides a request at `now` from what `view` holds. `verify` checks a signature the core
    /// hands over; `may_refetch` is false once the request has waited for a refetch.
    pub fn decide<H: edgeauth_core::Headers + ?Sized>(
        &self,
        view: &View,
        request: &Request<'_, H>,
        now: i64,
        tokens: &mut TokenCache,
        verify: impl FnOnce(&edgeauth_core::SignatureCheck, &KeyRing) -> bool,
        may_refetch: bool,
    ) -> Outcome {
        let settings = &self.settings;
        let keys = view.keys.usable(now, settings.keys_max_stale);
        let step = match authorize_deferred(request, now, keys.as_deref(), &settings.policy, tokens)
        {
            Deferred::Decided(step) => step,
            Deferred::VerifySignature(check) => match keys.as_deref() {
                Some(ring) => {
                    let valid = verify(&check, ring);
                    check.finish(valid, now, &settings.policy, tokens)
                }
                // The core asks for a signature only once it has chosen a key from the ring.
                None => Step::Done(Verdict::Deny(DenyReason::KeysUnavailable.into())),
            },
        };
        let verdict = match step {
            Step::Done(verdict) => verdict,
            Step::CheckRevocation(check) => {
                let vouches = view.feed_read_at != 0
                    && now.saturating_sub(view.feed_read_at) <= i64::from(settings.feed_max_stale);
                let answer = view.deny.answer(&check, now, vouches);
                check.finish(answer, &settings.policy)
            }
        };
        match verdict {
            Verdict::Allow(allowed) => Outcome::Allow(allowed),
            Verdict::Deny(denial)
                if denial.reason == DenyReason::UnknownKey
                    && may_refetch
                    && self.claim_forced_fetch(now) =>
            {
                Outcome::FetchKeys
            }
            Verdict::Deny(denial) => {
                let headers = denial.response_headers(&settings.policy, request.headers);
                Outcome::Deny(denial, headers)
            }
        }
    }
}
