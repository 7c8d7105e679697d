//! The revocation feed: read by the edges, written by every revocation.

use axum::{
    extract::State,
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use edgeauth_core::Revocation;
use serde::Deserialize;
use serde_json::{json, Value};

use super::private_json;
use crate::{
    clock::now,
    error::ApiError,
    keys::REVOCATION_TYPE,
    state::AppState,
    store::{FeedEntry, StoreError},
};

/// `GET /v1/revocations` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedQuery {
    /// Entries after this sequence number (0 for the start).
    #[serde(default)]
    pub after: u64,
    /// At most this many entries (1 to 1000, default 100).
    #[serde(default = "default_feed_limit")]
    pub limit: u32,
}

fn default_feed_limit() -> u32 {
    100
}

/// `GET /v1/revocations?after=N&limit=M`: the signed revocation feed from a cursor, in order.
/// Each entry is a JWS (`typ: edgeauth-revocation+jwt`) signed with a key from the JWKS, so an
/// edge checks it with the keys it already holds. Expired entries are left out.
///
/// Answered from the instance's [`FeedTail`](crate::feed_tail::FeedTail) when it can, with
/// `ETag: "<head>"` (the last `seq` it holds); a poll sending that tag back with a cursor at the
/// head gets `304 Not Modified` and no body.
pub async fn revocations(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<axum::extract::Query<FeedQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let axum::extract::Query(query) = query.map_err(|e| ApiError::InvalidBody(e.body_text()))?;
    if !(1..=1000).contains(&query.limit) {
        return Err(ApiError::InvalidField {
            field: "limit".into(),
            message: "must be between 1 and 1000".into(),
        });
    }
    // Sequence numbers are DynamoDB numbers read as i64; a cursor past them is the client's error.
    if i64::try_from(query.after).is_err() {
        return Err(ApiError::InvalidField {
            field: "after".into(),
            message: format!("must be at most {}", i64::MAX),
        });
    }
    let now = now();
    let (entries, next, head) = match state.feed_tail.page(query.after, query.limit, now) {
        Some(page) => (page.entries, page.next, Some(page.head)),
        None => {
            let (entries, next) = state.feed.read_after(query.after, query.limit, now).await?;
            (entries, next, None)
        }
    };
    let etag = head.map(|head| format!("\"{head}\""));
    if let Some(etag) = &etag {
        let unchanged = headers
            .get_all(header::IF_NONE_MATCH)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|tag| tag.trim().trim_start_matches("W/") == etag);
        // Only "nothing after the head" is a version the client already has: a cursor behind it
        // is owed the entries whatever tag it sends.
        if unchanged && entries.is_empty() && next == query.after {
            let mut response = StatusCode::NOT_MODIFIED.into_response();
            set_etag(&mut response, etag);
            return Ok(response);
        }
    }
    let entries: Vec<_> = entries
        .iter()
        .map(|e| json!({"seq": e.seq, "jws": e.jws, "expires_at": e.expires_at}))
        .collect();
    let mut response = private_json(json!({"entries": entries, "next": next}));
    if let Some(etag) = &etag {
        set_etag(&mut response, etag);
    }
    Ok(response)
}

/// Tags an answer. It stays `no-store`: the edges poll with the tag themselves, and no shared
/// cache is to keep a page of revocations.
fn set_etag(response: &mut Response, etag: &str) {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(value) = HeaderValue::from_str(etag) {
        response.headers_mut().insert(header::ETAG, value);
    }
}

/// Publishes a revocation in the feed (the durable record, and the edges', pushed to them too),
/// then holds it in the origin's own deny-list.
pub(crate) async fn revoke_everywhere(
    state: &AppState,
    revocation: &Revocation,
    now: i64,
) -> Result<FeedEntry, ApiError> {
    let claims = match revocation {
        Revocation::Token { jti, expires_at } => json!({"jti": jti, "exp": expires_at, "iat": now}),
        Revocation::Session { sid, expires_at } => {
            json!({"sid": sid, "exp": expires_at, "iat": now})
        }
        Revocation::User {
            subject,
            revoked_through,
            expires_at,
        } => json!({"sub": subject, "iat": revoked_through, "exp": expires_at}),
    };
    let entry = publish_revocation(state, claims, revocation.expires_at()).await?;
    state.deny_list.apply(revocation, now).await?;
    Ok(entry)
}

/// Appends a revocation to the feed, signed with the current key under the feed's next `seq`
/// (`claims` gets `iss` and `seq`), and pushes it to the edges. The entry is kept until
/// `expires_at`, when what it revokes has expired.
async fn publish_revocation(
    state: &AppState,
    claims: Value,
    expires_at: i64,
) -> Result<FeedEntry, ApiError> {
    let issuer = state.config.issuer.clone();
    let keys = state
        .keys
        .snapshot()
        .ok_or_else(|| ApiError::Unavailable("signing keys".into()))?;
    let make = move |seq: u64| {
        let mut entry = claims.clone();
        entry["iss"] = json!(issuer);
        entry["seq"] = json!(seq);
        keys.set
            .current(crate::clock::now())
            .sign_jws(REVOCATION_TYPE, &entry)
            .map_err(|e| StoreError::Unavailable(e.to_string()))
    };
    let entry = state
        .feed_appender
        .append(Box::new(make), expires_at)
        .await?;
    state.feed_tail.appended(&entry);
    state.edge_push.push(&entry);
    Ok(entry)
}
