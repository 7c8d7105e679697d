//! Sessions: logout, the caller's sessions, ending one or all of them.

use axum::{
    extract::{Path, State},
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use edgeauth_core::Revocation;
use serde_json::{json, Value};

use super::{
    caller_account, feed::revoke_everywhere, no_content, private_json, tokens::refresh_cookie,
};
use crate::{
    api::caller::{Caller, LoggingOut, RevokingAll},
    audit::RequestFacts,
    clock::now,
    error::ApiError,
    state::AppState,
    store::UserId,
};

/// `POST /v1/logout`: ends the caller's session at once, everywhere. In this order, each step
/// durable before the next: the session's refresh tokens are revoked (DynamoDB), so it mints no
/// more access tokens; a signed feed entry revokes every access token of the session (`sid`),
/// those a thief refreshed from it included, at the edges; the origin's deny-list holds it too.
/// A token without a session has only its own `jti` revoked. Success is reported only when all
/// are recorded; otherwise 503, and the client retries with the same token, which logout accepts
/// though the first attempt may have revoked it.
pub async fn logout(
    State(state): State<AppState>,
    facts: RequestFacts,
    LoggingOut(caller): LoggingOut,
) -> Result<Response, ApiError> {
    let now = now();
    let claims = caller.token.claims();
    let revocation = match caller.session {
        Some(sid) => {
            state.refresh.revoke_family(sid).await?;
            // Every access token the session was issued expires by then (the caller's own too,
            // even one issued a second ahead after a revoke-all).
            let last_issued = now + i64::from(state.config.access_token_ttl_seconds);
            Revocation::Session {
                sid: sid.to_string(),
                expires_at: claims.exp.map_or(last_issued, |exp| exp.max(last_issued)),
            }
        }
        None => {
            let (Some(jti), Some(exp)) = (claims.jti.clone(), claims.exp) else {
                return Err(ApiError::InvalidCredentials);
            };
            Revocation::Token {
                jti,
                expires_at: exp,
            }
        }
    };
    let entry = revoke_everywhere(&state, &revocation, now).await?;
    tracing::info!(event = "logout", user_id = %caller.user_id, seq = entry.seq, "logged out");
    state
        .audit
        .record("logout", &caller.user_id.to_string(), &facts);
    let mut response = StatusCode::NO_CONTENT.into_response();
    let headers = response.headers_mut();
    headers.insert(header::SET_COOKIE, refresh_cookie("", 0)?);
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// `GET /v1/sessions`: the caller's live sessions (one per login, kept by its refresh tokens),
/// most recently active first, with the one the caller's token belongs to marked `current`.
pub async fn sessions(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    let sessions = state.refresh.sessions(caller.user_id, now()).await?;
    let sessions: Vec<Value> = sessions
        .iter()
        .map(|s| {
            json!({
                "id": s.family_id,
                "last_active_at": s.issued_at,
                "expires_at": s.expires_at,
                "mfa": s.mfa,
                "current": caller.session == Some(s.family_id),
            })
        })
        .collect();
    Ok(private_json(json!({ "sessions": sessions })))
}

/// `DELETE /v1/sessions/{id}`: ends one of the caller's sessions at once, everywhere, as logout
/// ends the caller's own: a signed feed entry revokes its access tokens at the edges, the
/// origin's deny-list holds it, and its refresh tokens stop working. In that order: until the
/// last step the session is still the caller's to end, so a retry after a partial failure (503)
/// finds it and finishes; meanwhile any token it mints is refused for its `sid`.
pub async fn revoke_session(
    State(state): State<AppState>,
    facts: RequestFacts,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let family = uuid::Uuid::parse_str(&id).map_err(|_| ApiError::SessionNotFound)?;
    let now = now();
    // Only the caller's own sessions: the id alone proves nothing.
    let owned = state
        .refresh
        .sessions(caller.user_id, now)
        .await?
        .iter()
        .any(|s| s.family_id == family);
    if !owned {
        return Err(ApiError::SessionNotFound);
    }
    end_session(&state, family, now).await?;
    state
        .audit
        .record("session_revoked", &caller.user_id.to_string(), &facts);
    Ok(no_content())
}

/// Ends session `family` everywhere: a signed feed entry revokes its access tokens at the edges
/// and in the origin's deny-list, then its refresh tokens stop working. Until the last step a
/// retry finds the session still live and finishes.
pub(crate) async fn end_session(
    state: &AppState,
    family: uuid::Uuid,
    now: i64,
) -> Result<(), ApiError> {
    let revocation = Revocation::Session {
        sid: family.to_string(),
        expires_at: now + i64::from(state.config.access_token_ttl_seconds),
    };
    revoke_everywhere(state, &revocation, now).await?;
    state.refresh.revoke_family(family).await?;
    Ok(())
}

/// `POST /v1/sessions/revoke-all`: ends every session of the caller at once, everywhere: their
/// refresh tokens stop working, and every access token issued until now is refused by the
/// origin (the deny-list's watermark) and by the edges (a signed feed entry without `jti`,
/// pushed and pulled like a logout). Tokens from later logins are unaffected. The watermark is
/// stored first (DynamoDB), then published, then held by the deny-list; after a partial failure
/// (503) the client retries with the same token, which that watermark covers: the retry
/// re-applies the stored watermark, never a new one, so a revoked token cannot end the sessions
/// started since.
pub async fn revoke_all(
    State(state): State<AppState>,
    facts: RequestFacts,
    RevokingAll(caller): RevokingAll,
) -> Result<Response, ApiError> {
    let now = now();
    let user = caller_account(&state, &caller).await?;
    let issued_at = caller.token.claims().iat;
    // A retry (the caller's token is one the stored watermark revoked) re-applies that
    // watermark and writes nothing: raising it would end the sessions started since.
    let at = match user.sessions_revoked_at {
        Some(stored) if issued_at.is_none_or(|iat| iat <= stored) => stored,
        _ => state.users.revoke_sessions(caller.user_id, now).await?,
    };
    end_all_sessions(&state, caller.user_id, at, now).await?;
    state
        .audit
        .record("revoke_all", &caller.user_id.to_string(), &facts);
    Ok(no_content())
}

/// Publishes the revoke-all of `user` stored at `revoked_through` (the feed, pushed to the
/// edges) and holds it in the origin's deny-list.
pub(crate) async fn end_all_sessions(
    state: &AppState,
    user: UserId,
    revoked_through: i64,
    now: i64,
) -> Result<(), ApiError> {
    // Every token issued through `revoked_through` expires by then: the entry matters no longer.
    let revocation = Revocation::User {
        subject: user.to_string(),
        revoked_through,
        expires_at: revoked_through + i64::from(state.config.access_token_ttl_seconds),
    };
    revoke_everywhere(state, &revocation, now).await.map(drop)
}
