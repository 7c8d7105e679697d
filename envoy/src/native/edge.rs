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

use arc_swap::{ArcSwap, Guard};
use edgeauth_core::{
    authorize_deferred, forced_fetch_claimable, freshness_seconds, Allowed, Deferred, Denial,
    DenyReason, DenyState, FeedNext, FeedPage, FeedReader, KeyCache, KeyRing, Request,
    SignatureCheck, Step, TokenCache, Verdict,
};

use crate::{
    call_answer::{CallAnswer, FeedTag},
    feed::MAX_FEED_BYTES,
    keys::MAX_JWKS_BYTES,
    settings::Settings,
    wire::{self, Pair},
};

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

/// The writers' side: the master copy of the view and what is in flight.
#[derive(Debug, Default)]
struct Fetcher {
    view: View,
    reader: FeedReader,
    /// The feed's validator, sent back while the reader is where it was given.
    tag: FeedTag,
    /// When the JWKS call in flight started.
    keys_in_flight: Option<i64>,
    /// When the feed call in flight started.
    feed_in_flight: Option<i64>,
    last_feed_call: Option<i64>,
}

/// Whether a call started at `started` is still awaited at `now`. Envoy answers every callout
/// (its timeout is `fetch_timeout_ms`), but an answer it gives inline, before the callout's id is
/// known, would be lost: past twice the timeout a call counts as lost, so fetching can never stop
/// for good.
fn awaited(started: Option<i64>, now: i64, timeout_ms: u32) -> bool {
    let patience = 2 * i64::from(timeout_ms.div_ceil(1000));
    started.is_some_and(|at| now.saturating_sub(at) <= patience)
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

    /// What requests read now. A guard rather than a clone: arc-swap keeps its bookkeeping in
    /// per-thread slots, so a request writes no counter that the other worker threads write.
    pub fn view(&self) -> Guard<Arc<View>> {
        self.view.load()
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
        let timeout = settings.fetch_timeout_ms;
        if !awaited(fetcher.keys_in_flight, now, timeout) && keys_wanted {
            fetcher.view.keys.attempted(now, false);
            fetcher.keys_in_flight = Some(now);
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
        if usable && poll_due && !awaited(fetcher.feed_in_flight, now, timeout) {
            fetcher.feed_in_flight = Some(now);
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
            Call::Keys { .. } => fetcher.keys_in_flight = None,
            Call::Feed { .. } => fetcher.feed_in_flight = None,
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
        answer: &CallAnswer,
        started_at: i64,
        now: i64,
        scheduled: bool,
    ) -> Result<usize, String> {
        let mut fetcher = self.fetcher();
        if scheduled {
            fetcher.keys_in_flight = None;
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
    pub fn take_feed(&self, answer: &CallAnswer, after: u64, now: i64) -> Result<FeedNext, String> {
        let mut fetcher = self.fetcher();
        fetcher.feed_in_flight = None;
        let body = answer.feed_page(after, MAX_FEED_BYTES)?;
        let page: FeedPage =
            serde_json::from_slice(&body).map_err(|e| format!("not a feed page: {e}"))?;
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
            keys,
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
        let cursor = fetcher.reader.cursor();
        fetcher.tag.update(answer, read.next, cursor);
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

    /// The next feed poll's `If-None-Match`, if the reader is still where its tag was given.
    pub fn feed_if_none_match(&self) -> Option<String> {
        let fetcher = self.fetcher();
        fetcher
            .tag
            .for_cursor(fetcher.reader.cursor())
            .map(str::to_string)
    }

    /// Decides a request from its headers as Envoy hands them over: names and values are bytes
    /// nobody checked, pseudo-headers (`:method`, `:path`) included. What is not text where text
    /// is needed is a 400, never a panic.
    pub fn decide_headers(
        &self,
        view: &View,
        raw: &[Pair],
        now: i64,
        tokens: &mut TokenCache,
        verify: impl FnOnce(&SignatureCheck, &KeyRing) -> bool,
        may_refetch: bool,
    ) -> Outcome {
        if !wire::names_are_text(raw) {
            // A header that cannot be read names no origin: a refusal without CORS.
            return self.invalid_request::<[Pair]>(&[]);
        }
        let Some((method, path)) = wire::method_and_path(raw) else {
            return self.invalid_request(raw);
        };
        let request = Request {
            method,
            path,
            headers: raw,
        };
        self.decide(view, &request, now, tokens, verify, may_refetch)
    }

    fn invalid_request<H: edgeauth_core::Headers + ?Sized>(&self, headers: &H) -> Outcome {
        let denial: Denial = DenyReason::InvalidRequest.into();
        let headers = denial.response_headers(&self.settings.policy, headers);
        Outcome::Deny(denial, headers)
    }

    /// Decides a request at `now` from what `view` holds. `verify` checks a signature the core
    /// hands over; `may_refetch` is false once the request has waited for a refetch.
    pub fn decide<H: edgeauth_core::Headers + ?Sized>(
        &self,
        view: &View,
        request: &Request<'_, H>,
        now: i64,
        tokens: &mut TokenCache,
        verify: impl FnOnce(&SignatureCheck, &KeyRing) -> bool,
        may_refetch: bool,
    ) -> Outcome {
        let settings = &self.settings;
        let keys = view
            .keys
            .usable(now, settings.keys_max_stale)
            .map(|ring| &**ring);
        let step = match authorize_deferred(request, now, keys, &settings.policy, tokens) {
            Deferred::Decided(step) => step,
            Deferred::VerifySignature(check) => match keys {
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

#[cfg(test)]
mod tests {
    use edgeauth_core::FEED_PAGE_LIMIT;
    use serde_json::json;

    use super::*;
    use crate::{
        native::crypto,
        testing::{access_token, entry, jwks, policy_json, NOW},
    };

    fn edge() -> Edge {
        let configuration = json!({
            "policy": serde_json::from_str::<serde_json::Value>(&policy_json()).expect("JSON"),
            "jwks": {"cluster": "origin", "path": "/.well-known/jwks.json"},
            "revocation_feed": {"cluster": "origin", "path": "/v1/revocations"},
        });
        Edge::new(Settings::from_json(configuration.to_string().as_bytes()).expect("settings"))
    }

    fn ok(body: String) -> CallAnswer {
        CallAnswer {
            status: Some(200),
            cache_control: Some("max-age=300".into()),
            etag: None,
            body: Ok(body.into_bytes()),
        }
    }

    fn page(entries: Vec<serde_json::Value>, next: u64) -> CallAnswer {
        ok(json!({"entries": entries, "next": next}).to_string())
    }

    /// The reason the edge gives a request carrying `token`, as Envoy would hand it over.
    fn reason(edge: &Edge, token: &str, now: i64) -> &'static str {
        let bearer = format!("Bearer {token}");
        let headers: [(&[u8], &[u8]); 3] = [
            (b":method", b"GET"),
            (b":path", b"/orders"),
            (b"authorization", bearer.as_bytes()),
        ];
        let mut tokens = TokenCache::for_policy(&edge.settings.policy);
        let view = edge.view();
        match edge.decide_headers(&view, &headers, now, &mut tokens, crypto::verify, false) {
            Outcome::Allow(_) => "allowed",
            Outcome::Deny(denial, _) => denial.reason.code(),
            Outcome::FetchKeys => "fetch_keys",
        }
    }

    fn fetched(edge: &Edge, keys: &[(u8, &str)], now: i64) {
        assert_eq!(edge.due(now).first(), Some(&Call::Keys { started_at: now }));
        edge.take_keys(&ok(jwks(keys)), now, now, true)
            .expect("keys taken");
    }

    /// A revocation stored by the thread that read the feed is what every other thread's next
    /// request sees: there is one view, not a copy per thread to sync.
    #[test]
    fn a_stored_revocation_is_refused_on_every_thread_at_once() {
        let edge = Arc::new(edge());
        fetched(&edge, &[(1, "k1")], NOW);
        let token = access_token("jti-1", 1, "k1");
        let calls = edge.due(NOW);
        assert_eq!(calls, vec![Call::Feed { after: 0 }]);
        edge.take_feed(&page(vec![], 0), 0, NOW).expect("read");
        assert_eq!(reason(&edge, &token, NOW), "allowed");

        assert_eq!(edge.due(NOW + 1), vec![Call::Feed { after: 0 }]);
        let next = edge
            .take_feed(&page(vec![entry(1, "jti-1", 1, "k1")], 1), 0, NOW + 1)
            .expect("read");
        assert_eq!(next, FeedNext::CaughtUp);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (edge, token) = (edge.clone(), token.clone());
                std::thread::spawn(move || reason(&edge, &token, NOW + 1))
            })
            .collect();
        for thread in threads {
            assert_eq!(thread.join().expect("no panic"), "token_revoked");
        }
    }

    /// A caught-up page's tag is sent back from that cursor; the origin's 304 then counts as a
    /// read (the deny state still vouches on a quiet feed), and the next page with entries is
    /// taken as ever.
    #[test]
    fn a_not_modified_poll_is_a_read_that_changes_nothing() {
        let edge = edge();
        fetched(&edge, &[(1, "k1")], NOW);
        assert_eq!(edge.feed_if_none_match(), None, "no tag before a page");
        let mut tagged = page(vec![entry(1, "a", 1, "k1")], 1);
        tagged.etag = Some("\"1\"".into());
        assert_eq!(edge.take_feed(&tagged, 0, NOW), Ok(FeedNext::CaughtUp));
        assert_eq!(edge.feed_if_none_match().as_deref(), Some("\"1\""));
        let not_modified = CallAnswer {
            status: Some(304),
            ..CallAnswer::failed()
        };
        assert_eq!(
            edge.take_feed(&not_modified, 1, NOW + 30),
            Ok(FeedNext::CaughtUp)
        );
        assert_eq!(edge.feed_reader().cursor(), 1);
        assert_eq!(edge.view().feed_read_at, NOW + 30);
        assert_eq!(edge.feed_if_none_match().as_deref(), Some("\"1\""));
        let revoked = access_token("a", 1, "k1");
        assert_eq!(reason(&edge, &revoked, NOW + 30), "token_revoked");
        edge.take_feed(&page(vec![entry(2, "b", 1, "k1")], 2), 1, NOW + 31)
            .expect("read");
        assert_eq!(edge.feed_reader().cursor(), 2);
        assert_eq!(
            edge.feed_if_none_match(),
            None,
            "an untagged page drops the tag"
        );
    }

    /// A page that fails, or answers a cursor that has moved, stores nothing and moves nothing:
    /// the same entries are asked for again.
    #[test]
    fn the_cursor_moves_only_past_stored_revocations() {
        let edge = edge();
        fetched(&edge, &[(1, "k1")], NOW);
        assert_eq!(edge.due(NOW), vec![Call::Feed { after: 0 }]);
        let failed = CallAnswer {
            status: Some(503),
            ..CallAnswer::failed()
        };
        assert!(edge.take_feed(&failed, 0, NOW).is_err());
        assert_eq!(edge.feed_reader().cursor(), 0);
        assert_eq!(edge.view().feed_read_at, 0, "nothing vouched for");
        assert_eq!(edge.due(NOW + 1), vec![Call::Feed { after: 0 }]);
        edge.take_feed(&page(vec![entry(1, "a", 1, "k1")], 1), 0, NOW + 1)
            .expect("read");
        assert_eq!(edge.feed_reader().cursor(), 1);
        // A late answer to the old cursor is not applied over the newer state.
        assert_eq!(
            edge.take_feed(&page(vec![], 0), 0, NOW + 2),
            Ok(FeedNext::ReadMore)
        );
        assert_eq!(edge.feed_reader().cursor(), 1);
        // A full page is followed by the next one at once.
        let full: Vec<_> = (2..2 + FEED_PAGE_LIMIT as u64)
            .map(|seq| entry(seq, &format!("jti-{seq}"), 1, "k1"))
            .collect();
        assert_eq!(edge.due(NOW + 3), vec![Call::Feed { after: 1 }]);
        let last = 1 + FEED_PAGE_LIMIT as u64;
        assert_eq!(
            edge.take_feed(&page(full, last), 1, NOW + 3),
            Ok(FeedNext::ReadMore)
        );
        assert_eq!(edge.due(NOW + 3), vec![Call::Feed { after: last }]);
    }

    /// After a rotation the feed carries an entry signed by a key this edge has not fetched.
    /// The reader stops before it, the keys are fetched, and the entry is applied: never
    /// skipped.
    #[test]
    fn an_entry_signed_by_a_key_not_yet_fetched_waits_for_the_keys() {
        let edge = edge();
        fetched(&edge, &[(1, "k1")], NOW);
        assert_eq!(edge.due(NOW), vec![Call::Feed { after: 0 }]);
        let rotated = page(vec![entry(1, "a", 1, "k1"), entry(2, "b", 2, "k2")], 2);
        assert_eq!(edge.take_feed(&rotated, 0, NOW), Ok(FeedNext::NeedKeys));
        assert_eq!(edge.feed_reader().cursor(), 1, "stopped before entry 2");
        // The refetch is claimed for the feed; the poll waits for its answer.
        assert_eq!(
            edge.due(NOW + 1),
            vec![
                Call::Keys {
                    started_at: NOW + 1
                },
                Call::Feed { after: 1 }
            ]
        );
        edge.call_failed(Call::Feed { after: 1 });
        edge.take_keys(&ok(jwks(&[(1, "k1"), (2, "k2")])), NOW + 1, NOW + 1, true)
            .expect("keys");
        assert_eq!(
            edge.due(NOW + 1),
            vec![Call::Feed { after: 1 }],
            "read again at once"
        );
        edge.take_feed(&rotated, 1, NOW + 1).expect("read");
        assert_eq!(edge.feed_reader().cursor(), 2);
        assert_eq!(
            reason(&edge, &access_token("b", 2, "k2"), NOW + 1),
            "token_revoked"
        );
    }

    /// A feed call whose answer never comes (Envoy gave it inline, say) holds the next poll back
    /// only for twice the fetch timeout; then the feed is asked again.
    #[test]
    fn a_call_never_answered_is_started_again_after_twice_the_timeout() {
        let edge = edge();
        fetched(&edge, &[(1, "k1")], NOW);
        assert_eq!(edge.due(NOW), vec![Call::Feed { after: 0 }]);
        // The default fetch timeout is 3 s: six seconds of patience.
        assert_eq!(edge.due(NOW + 6), vec![], "still awaited");
        assert_eq!(edge.due(NOW + 7), vec![Call::Feed { after: 0 }]);
    }

    /// Made-up `kid`s on every worker thread at once win one refetch per interval between them.
    #[test]
    fn one_refetch_per_interval_is_claimed_across_threads() {
        let edge = Arc::new(edge());
        let won: usize = (0..8)
            .map(|_| {
                let edge = edge.clone();
                std::thread::spawn(move || usize::from(edge.claim_forced_fetch(NOW)))
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().expect("no panic"))
            .sum();
        assert_eq!(won, 1);
        let interval = i64::from(edge.settings.keys_refetch_interval);
        assert!(!edge.claim_forced_fetch(NOW + interval - 1));
        assert!(edge.claim_forced_fetch(NOW + interval));
    }

    /// An unknown `kid` makes the winning request fetch keys; with the keys it passes.
    #[test]
    fn an_unknown_kid_fetches_keys_once_then_decides_with_them() {
        let edge = edge();
        fetched(&edge, &[(1, "k1")], NOW);
        edge.take_feed(&page(vec![], 0), 0, NOW).expect("read");
        let rotated = access_token("c", 2, "k2");
        let bearer = format!("Bearer {rotated}");
        let headers: [(&[u8], &[u8]); 3] = [
            (b":method", b"GET"),
            (b":path", b"/orders"),
            (b"authorization", bearer.as_bytes()),
        ];
        let mut tokens = TokenCache::for_policy(&edge.settings.policy);
        let decide = |may_refetch, tokens: &mut TokenCache| {
            edge.decide_headers(
                &edge.view(),
                &headers,
                NOW,
                tokens,
                crypto::verify,
                may_refetch,
            )
        };
        assert!(matches!(decide(true, &mut tokens), Outcome::FetchKeys));
        // The next request within the interval is refused without another fetch.
        assert!(
            matches!(decide(true, &mut tokens), Outcome::Deny(d, _) if d.reason == DenyReason::UnknownKey)
        );
        edge.take_keys(&ok(jwks(&[(1, "k1"), (2, "k2")])), NOW, NOW, false)
            .expect("keys");
        assert!(matches!(decide(false, &mut tokens), Outcome::Allow(_)));
    }

    /// Bytes Envoy passes through unchecked: a header name or a path that is not text is a 400,
    /// and nothing panics.
    #[test]
    fn header_bytes_that_are_not_text_are_refused() {
        let edge = edge();
        fetched(&edge, &[(1, "k1")], NOW);
        let mut tokens = TokenCache::for_policy(&edge.settings.policy);
        let cases: [&[(&[u8], &[u8])]; 4] = [
            &[
                (b":method", b"GET"),
                (b":path", b"/\xff"),
                (b"authorization", b"Bearer x"),
            ],
            &[(b":method", b"GET"), (b":path", b"/a"), (b"x-\xfe", b"v")],
            &[(b":path", b"/a")],
            &[],
        ];
        for headers in cases {
            let outcome = edge.decide_headers(
                &edge.view(),
                headers,
                NOW,
                &mut tokens,
                crypto::verify,
                true,
            );
            assert!(
                matches!(&outcome, Outcome::Deny(d, _) if d.reason == DenyReason::InvalidRequest),
                "{outcome:?}"
            );
        }
    }
}
