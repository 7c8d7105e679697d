//! When a host fetches the origin's JWKS, and which keys it verifies with meanwhile. Pure
//! bookkeeping over `now`: the host does the fetching (Workers `fetch`, Envoy
//! `dispatch_http_call`).
//!
//! Keys are fresh for the time the JWKS answer's `Cache-Control` allows. Past that, a fetch is
//! due; if it fails, the last good keys keep serving for up to a configured maximum staleness, so
//! an origin outage does not become an API outage, and the fetch is retried once per refetch
//! interval. A token with an unknown `kid` forces a refetch, so a key rotation at
//! the origin is picked up at once rather than when the cache expires (Envoy's jwt_authn waits
//! for expiry); forced refetches too happen at most once per interval, counted on their own, so a
//! flood of made-up `kid`s cannot turn an edge into a load generator against the origin.

use alloc::{string::ToString, sync::Arc};

use crate::key_ring::KeyRing;

/// A host's keys and the bookkeeping that decides when to fetch again. The ring is behind an
/// `Arc` so that a native host can hand one key set to every worker thread; a clone is cheap.
#[derive(Debug, Clone, Default)]
pub struct KeyCache {
    ring: Option<Arc<KeyRing>>,
    fetched_at: i64,
    fresh_until: i64,
    last_attempt: Option<i64>,
    last_forced: Option<i64>,
}

fn interval_passed(since: Option<i64>, now: i64, interval: u32) -> bool {
    since.is_none_or(|at| now.saturating_sub(at) >= i64::from(interval))
}

/// Whether a refetch forced by an unknown `kid` may be claimed at `now` by one of the instances
/// that share `last_claim` (the time the last one was claimed), so that however many VMs or
/// isolates a flood of made-up `kid`s is spread over, together they refetch once per `interval`.
pub fn forced_fetch_claimable(last_claim: Option<i64>, now: i64, interval: u32) -> bool {
    interval_passed(last_claim, now, interval)
}

impl KeyCache {
    /// The keys to verify with at `now`: fresh ones, or the last good ones within `max_stale`.
    /// Borrowed: a host whose key set is shared between threads would otherwise write its
    /// reference count on every request.
    pub fn usable(&self, now: i64, max_stale: u32) -> Option<&Arc<KeyRing>> {
        self.ring
            .as_ref()
            .filter(|_| now < self.fresh_until.saturating_add(i64::from(max_stale)))
    }

    /// Whether a refetch for an unknown `kid` may start now.
    pub fn may_force(&self, now: i64, interval: u32) -> bool {
        interval_passed(self.last_forced, now, interval)
    }

    /// Whether the keys are missing or past freshness, and a fetch may start now.
    pub fn fetch_due(&self, now: i64, interval: u32) -> bool {
        let expired = self.ring.is_none() || now >= self.fresh_until;
        // After a failure the keys stay expired: retry only once per interval.
        expired && interval_passed(self.last_attempt, now, interval)
    }

    /// A fetch starts at `now`; `forced` when an unknown `kid` asked for it.
    pub fn attempted(&mut self, now: i64, forced: bool) {
        self.last_attempt = Some(now);
        if forced {
            self.last_forced = Some(now);
        }
    }

    /// A fetch made at `fetched_at` succeeded: these keys are fresh until `fresh_until`. An
    /// older answer than the keys held (a slow call overtaken by a later one) is ignored.
    pub fn store(&mut self, ring: Arc<KeyRing>, fetched_at: i64, fresh_until: i64) {
        if self.ring.is_some() && fetched_at < self.fetched_at {
            return;
        }
        self.ring = Some(ring);
        self.fetched_at = fetched_at;
        self.fresh_until = fresh_until;
    }

    /// When the keys held were fetched (0: none yet): the feed reader's proof that a key it
    /// waits for is not coming ([`crate::FeedReader`]).
    pub fn fetched_at(&self) -> i64 {
        self.fetched_at
    }
}

/// Seconds a JWKS answer stays fresh, from its `Cache-Control`: `s-maxage` (the directive for
/// shared caches, which an edge is) over `max-age`; `no-store` and `no-cache` mean zero. `None`
/// when it says nothing, and the host's default applies. Capped at a day: a typo at the origin
/// must not pin keys for a year.
pub fn freshness_seconds(cache_control: Option<&str>) -> Option<u32> {
    const CAP: u32 = 86_400;
    let mut max_age = None;
    let mut s_maxage = None;
    for directive in cache_control?.split(',') {
        let directive = directive.trim().to_ascii_lowercase();
        let (name, value) = match directive.split_once('=') {
            Some((name, value)) => (
                name.trim().to_string(),
                Some(value.trim().trim_matches('"')),
            ),
            None => (directive.clone(), None),
        };
        let seconds = value
            .and_then(|v| v.parse::<u64>().ok())
            .map(|v| v.min(u64::from(CAP)) as u32);
        match name.as_str() {
            "no-store" | "no-cache" => return Some(0),
            "max-age" => max_age = seconds.or(max_age),
            "s-maxage" => s_maxage = seconds.or(s_maxage),
            _ => {}
        }
    }
    s_maxage.or(max_age)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Policy;

    fn ring() -> Arc<KeyRing> {
        let policy = Policy::from_json(r#"{"issuers":["https://a.example"],"audiences":["api"]}"#)
            .expect("policy");
        let jwks = br#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"k","alg":"EdDSA",
            "x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;
        Arc::new(KeyRing::from_jwks(jwks, &policy).expect("jwks").0)
    }

    #[test]
    fn a_fresh_worker_fetches_then_serves_until_expiry() {
        let mut keys = KeyCache::default();
        assert!(keys.fetch_due(1000, 30));
        assert!(keys.usable(1000, 600).is_none());
        keys.attempted(1000, false);
        keys.store(ring(), 1000, 1300);
        assert!(!keys.fetch_due(1299, 30));
        assert!(keys.fetch_due(1300, 30));
    }

    #[test]
    fn stale_keys_serve_within_the_bound_while_fetches_fail() {
        let mut keys = KeyCache::default();
        keys.attempted(1000, false);
        keys.store(ring(), 1000, 1300);
        // Expired; the fetch fails.
        keys.attempted(1300, false);
        assert!(keys.usable(1300, 600).is_some());
        assert!(!keys.fetch_due(1310, 30), "retries wait for the interval");
        assert!(keys.fetch_due(1330, 30));
        assert!(keys.usable(1899, 600).is_some());
        assert!(keys.usable(1900, 600).is_none(), "past the staleness bound");
    }

    #[test]
    fn refetches_for_unknown_kids_are_rate_limited_on_their_own() {
        let mut keys = KeyCache::default();
        keys.attempted(1000, false);
        keys.store(ring(), 1000, 1300);
        // A rotation right after a scheduled fetch is still picked up at once.
        assert!(keys.may_force(1001, 30));
        keys.attempted(1001, true);
        assert!(!keys.may_force(1030, 30));
        assert!(keys.may_force(1031, 30));
    }

    #[test]
    fn a_shared_claim_holds_every_instance_back_for_the_interval() {
        assert!(forced_fetch_claimable(None, 1000, 30));
        assert!(!forced_fetch_claimable(Some(1000), 1029, 30));
        assert!(forced_fetch_claimable(Some(1000), 1030, 30));
        // A claim stamped in the future (a clock step back) holds until the interval has passed.
        assert!(!forced_fetch_claimable(Some(2000), 1000, 30));
    }

    #[test]
    fn an_overtaken_answer_does_not_replace_newer_keys() {
        let mut keys = KeyCache::default();
        keys.store(ring(), 1010, 1310);
        // A call started earlier answers later: its keys are older.
        keys.store(ring(), 1005, 9999);
        assert_eq!(keys.fetched_at(), 1010);
        assert!(keys.fetch_due(1310, 30));
        keys.store(ring(), 1320, 1620);
        assert_eq!(keys.fetched_at(), 1320);
    }

    #[test]
    fn cache_control_sets_freshness() {
        assert_eq!(freshness_seconds(Some("public, max-age=300")), Some(300));
        assert_eq!(
            freshness_seconds(Some("max-age=300, s-maxage=60")),
            Some(60)
        );
        assert_eq!(freshness_seconds(Some("no-store")), Some(0));
        assert_eq!(freshness_seconds(Some("max-age=\"120\"")), Some(120));
        assert_eq!(freshness_seconds(Some("max-age=99999999999")), Some(86_400));
        assert_eq!(freshness_seconds(Some("public")), None);
        assert_eq!(freshness_seconds(Some("max-age=soon")), None);
        assert_eq!(freshness_seconds(None), None);
    }
}
