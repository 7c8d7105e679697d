//! The origin's keys: fetched from its JWKS, shared between isolates through a Cache API copy,
//! and refetched when due (expiry) or forced (an unknown `kid`, rate limited by the core's
//! [`edgeauth_core::KeyCache`]).

use std::rc::Rc;

use edgeauth_core::{freshness_seconds, KeyRing};
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

/// Keys fetched from the origin or its shared copy.
struct Fetched {
    ring: Rc<KeyRing>,
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

/// Whether this isolate may force a refetch now (an unknown `kid`).
pub fn may_force(env: &Env, settings: &Settings, now: i64) -> bool {
    with_isolate(env, |i| {
        i.keys.may_force(now, settings.keys_refetch_interval)
    })
}

/// The keys to verify with at `now`, fetching first when they are due (or, with `force`, when an
/// unknown `kid` asked for it).
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
) -> Option<Rc<KeyRing>> {
    let interval = settings.keys_refetch_interval;
    let deadline_ms = u64::from(settings.fetch_timeout_ms);
    let started_ms = Date::now().as_millis();
    let due = with_isolate(env, |i| {
        let due = if force {
            i.keys.may_force(now, interval)
        } else {
            let in_flight = i.keys_fetch_started_ms.is_some_and(|at| {
                // A mark older than the deadline is a fetch whose request was cancelled.
                started_ms.saturating_sub(at) < deadline_ms
            });
            i.keys.fetch_due(now, interval)
                || (in_flight && i.keys.usable(now, settings.keys_max_stale).is_none())
        };
        if due {
            i.keys.attempted(now, force);
            i.keys_fetch_started_ms = Some(started_ms);
        }
        due
    });
    if due {
        // A forced fetch must reach the origin: the shared copy is what lacks the new `kid`.
        let fetched = fetch_keys(settings, now, !force).await;
        with_isolate(env, |i| {
            if i.keys_fetch_started_ms == Some(started_ms) {
                i.keys_fetch_started_ms = None;
            }
            if let Ok(keys) = fetched.as_ref() {
                i.keys
                    .store(keys.ring.clone(), keys.fetched_at, keys.fresh_until);
            }
        });
        if let Err(error) = fetched {
            console_error!(
                "{}",
                json!({"event": "jwks_fetch_failed", "error": error, "url": settings.jwks_url})
            );
        }
    }
    with_isolate(env, |i| i.keys.usable(now, settings.keys_max_stale))
}

/// The origin's keys: from the Cache API copy another isolate stored, when allowed and fresh,
/// else from the origin (then stored there for the others).
async fn fetch_keys(settings: &Settings, now: i64, shared_copy: bool) -> Result<Fetched, String> {
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
                        return Ok(Fetched {
                            ring,
                            fetched_at,
                            fresh_until,
                        });
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
    Ok(Fetched {
        ring,
        fetched_at: now,
        fresh_until: now + i64::from(max_age),
    })
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
