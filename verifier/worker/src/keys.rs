//! The origin's keys: fetched from its JWKS, shared between isolates through a Cache API copy,
//! and refetched when due (expiry) or forced (an unknown `kid`, rate limited by the core's
//! [`edgeauth_core::KeyCache`]).

use std::{rc::Rc, sync::Arc};

use edgeauth_core::{forced_fetch_claimable, freshness_seconds, KeyRing};
use serde_json::json;
use worker::{
    console_error, Cache, Context, Date, Env, Headers, Method, Request, RequestInit, Response,
};

use crate::{fetch_with_deadline, log, settings::Settings, with_isolate};

/// Largest JWKS read.
const MAX_JWKS_BYTES: usize = 64 * 1024;
/// Marks a Cache API copy of the JWKS with when it was fetched, so an isolate that reads it
/// counts freshness (and the feed reader's proof of a missing key) from the origin's answer,
/// not from its own read.
const FETCHED_AT_HEADER: &str = "x-edgeauth-fetched-at";
/// Marks the location's forced-refetch claim with when it was claimed.
const CLAIMED_AT_HEADER: &str = "x-edgeauth-claimed-at";

/// Keys fetched from the origin or its shared copy.
struct Fetched {
    ring: Arc<KeyRing>,
    /// When the origin answered with them.
    fetched_at: i64,
    fresh_until: i64,
}

/// The keys for this request. Keys past freshness but still usable answer at once while their
/// refresh runs after the response (`waitUntil`), so key expiry never adds a JWKS round trip to a
/// request; only an isolate with no usable keys waits for the fetch.
pub async fn keys_for_request(
    env: &Env,
    settings: &Rc<Settings>,
    now: i64,
    ctx: &Context,
) -> Option<Arc<KeyRing>> {
    let keys = usable(env, settings, now);
    if keys.is_none() {
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
    keys
}

/// Whether this isolate may force a refetch now (an unknown `kid`).
pub fn may_force(env: &Env, settings: &Settings, now: i64) -> bool {
    with_isolate(env, |i| {
        i.keys.may_force(now, settings.keys_refetch_interval)
    })
}

/// The keys to verify with at `now`, fetching first when they are due (or, with `force`, when an
/// unknown `kid` asked for it: see [`forced_keys`]).
///
/// A request that finds no usable keys while another request's fetch is under way fetches too,
/// rather than answer 503 for a fetch that has not failed: a cold isolate's first burst costs the
/// origin one JWKS fetch per concurrent request, and none of them is refused. (Waiting for the
/// other request's fetch instead, on a timer, made workerd cancel the waiting requests as hung.)
/// After a failed fetch the interval still holds everyone back.
pub async fn current_keys(
    env: &Env,
    settings: &Settings,
    now: i64,
    force: bool,
) -> Option<Arc<KeyRing>> {
    if force {
        return forced_keys(env, settings, now).await;
    }
    let interval = settings.keys_refetch_interval;
    let deadline_ms = u64::from(settings.fetch_timeout_ms);
    let started_ms = Date::now().as_millis();
    let due = with_isolate(env, |i| {
        let in_flight = i.keys_fetch_started_ms.is_some_and(|at| {
            // A mark older than the deadline is a fetch whose request was cancelled.
            started_ms.saturating_sub(at) < deadline_ms
        });
        let due = i.keys.fetch_due(now, interval)
            || (in_flight && i.keys.usable(now, settings.keys_max_stale).is_none());
        if due {
            i.keys.attempted(now, false);
            i.keys_fetch_started_ms = Some(started_ms);
        }
        due
    });
    if due {
        let fetched = fetch_keys(settings, now, true).await;
        with_isolate(env, |i| {
            if i.keys_fetch_started_ms == Some(started_ms) {
                i.keys_fetch_started_ms = None;
            }
        });
        store(env, settings, fetched);
    }
    usable(env, settings, now)
}

/// The keys after a token with an unknown `kid`: refetched from the origin, at most once per
/// `KEYS_REFETCH_INTERVAL` for all the isolates of a location.
///
/// Every isolate has its own limit, and a location shares a claim besides: a Cache API entry
/// saying when an isolate last went to the origin for an unknown `kid`. An isolate that finds the
/// claim taken reads the claimant's answer from the shared copy instead. Until that answer is
/// there (the claimant's fetch is under way, or failed) the isolate keeps its own right to
/// refetch, so it looks again on its next unknown `kid` and picks up a rotated key as soon as the
/// claimant has it. Two isolates that read the claim in the same instant both fetch: the Cache
/// API has no compare-and-swap, so the bound is one fetch per interval and per such race.
async fn forced_keys(env: &Env, settings: &Settings, now: i64) -> Option<Arc<KeyRing>> {
    if !may_force(env, settings, now) {
        return usable(env, settings, now);
    }
    let cache = Cache::default();
    match claim_forced_fetch(&cache, settings, now).await {
        None => {
            with_isolate(env, |i| i.keys.attempted(now, true));
            // The shared copy is what lacks the new `kid`: this fetch must reach the origin.
            let fetched = fetch_keys(settings, now, false).await;
            store(env, settings, fetched);
        }
        Some(claimed_at) => {
            if let Some(theirs) = shared_copy(&cache, settings, now)
                .await
                .filter(|copy| copy.fetched_at >= claimed_at)
            {
                with_isolate(env, |i| i.keys.attempted(now, true));
                store(env, settings, Ok(theirs));
            }
        }
    }
    usable(env, settings, now)
}

/// Claims the location's forced refetch at `now`. `None`: claimed, go to the origin. `Some(at)`:
/// another isolate claimed it at `at`, within the interval. A Cache API that fails to answer
/// leaves each isolate its own limit, as before there was a claim.
async fn claim_forced_fetch(cache: &Cache, settings: &Settings, now: i64) -> Option<i64> {
    let interval = settings.keys_refetch_interval;
    let url = forced_fetch_claim_url(&settings.jwks_url);
    if let Ok(Some(claim)) = cache.get(url.as_str(), true).await {
        let claimed_at = claim
            .headers()
            .get(CLAIMED_AT_HEADER)
            .ok()
            .flatten()
            .and_then(|v| v.parse::<i64>().ok());
        if !forced_fetch_claimable(claimed_at, now, interval) {
            return claimed_at;
        }
    }
    let headers = Headers::new();
    let claim = headers
        .set("cache-control", &format!("max-age={interval}"))
        .and_then(|()| headers.set(CLAIMED_AT_HEADER, &now.to_string()))
        .and_then(|()| Response::empty());
    if let Ok(claim) = claim {
        let _ = cache.put(url.as_str(), claim.with_headers(headers)).await;
    }
    None
}

/// The Cache API key of the forced-refetch claim: the JWKS URL with a query of its own, so it
/// never answers a request for the JWKS itself.
fn forced_fetch_claim_url(jwks_url: &str) -> String {
    let separator = if jwks_url.contains('?') { '&' } else { '?' };
    format!("{jwks_url}{separator}edgeauth-forced-refetch")
}

fn store(env: &Env, settings: &Settings, fetched: Result<Fetched, String>) {
    match fetched {
        Ok(keys) => with_isolate(env, |i| {
            i.keys.store(keys.ring, keys.fetched_at, keys.fresh_until);
        }),
        Err(error) => console_error!(
            "{}",
            json!({"event": "jwks_fetch_failed", "error": error, "url": settings.jwks_url})
        ),
    }
}

fn usable(env: &Env, settings: &Settings, now: i64) -> Option<Arc<KeyRing>> {
    with_isolate(env, |i| {
        i.keys.usable(now, settings.keys_max_stale).cloned()
    })
}

/// The Cache API copy another isolate stored, if it is still fresh at `now`.
async fn shared_copy(cache: &Cache, settings: &Settings, now: i64) -> Option<Fetched> {
    let mut copy = cache.get(settings.jwks_url.as_str(), true).await.ok()??;
    let fetched_at = copy
        .headers()
        .get(FETCHED_AT_HEADER)
        .ok()
        .flatten()
        .and_then(|v| v.parse::<i64>().ok())?;
    let max_age = freshness_seconds(
        copy.headers()
            .get("cache-control")
            .ok()
            .flatten()
            .as_deref(),
    );
    let body = copy.bytes().await.ok()?;
    let fresh_until = fetched_at + i64::from(max_age.unwrap_or(settings.keys_default_max_age));
    if fresh_until <= now {
        return None;
    }
    let ring = parse_jwks(&body, settings).ok()?;
    Some(Fetched {
        ring,
        fetched_at,
        fresh_until,
    })
}

/// The origin's keys: from the Cache API copy another isolate stored, when allowed and fresh,
/// else from the origin (then stored there for the others).
async fn fetch_keys(settings: &Settings, now: i64, shared: bool) -> Result<Fetched, String> {
    let cache = Cache::default();
    if shared {
        if let Some(copy) = shared_copy(&cache, settings, now).await {
            return Ok(copy);
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
    Ok(Fetched {
        ring,
        fetched_at: now,
        fresh_until: now + i64::from(max_age),
    })
}

fn parse_jwks(body: &[u8], settings: &Settings) -> Result<Arc<KeyRing>, String> {
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
    Ok(Arc::new(ring))
}
