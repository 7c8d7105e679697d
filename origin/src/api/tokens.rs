//! Tokens: login, and the refresh that rotates a session's refresh token.

use axum::{
    body::Bytes,
    extract::State,
    http::{header, HeaderMap, HeaderValue},
    response::{IntoResponse, Response},
    Json,
};
use base64ct::{Base64UrlUnpadded, Encoding};
use edgeauth_core::Revocation;
use rand_core::{OsRng, RngCore};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::{
    accounts::{check_password, normalise_email, Credentials},
    feed::revoke_everywhere,
    ApiJson,
};
use crate::{
    audit::{email_subject, RequestFacts},
    clock::now,
    error::ApiError,
    keys::AccessClaims,
    mail::Notice,
    mfa,
    password::Verification,
    state::AppState,
    store::{Exchange, RefreshRecord, User},
};

/// Path the refresh cookie is scoped to: the browser sends it nowhere else.
pub const REFRESH_COOKIE_PATH: &str = "/v1/token/refresh";
/// Name of the refresh cookie. The `__Host-` prefix would forbid a `Path`, so a plain name.
pub const REFRESH_COOKIE: &str = "refresh_token";

/// A new opaque refresh token: 256 random bits, base64url. Only its SHA-256 is stored.
fn new_refresh_token() -> (String, [u8; 32]) {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    let token = Base64UrlUnpadded::encode_string(&bytes);
    let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    (token, hash)
}

pub(crate) fn refresh_cookie(token: &str, max_age: u32) -> Result<HeaderValue, ApiError> {
    HeaderValue::from_str(&format!(
        "{REFRESH_COOKIE}={token}; Path={REFRESH_COOKIE_PATH}; Max-Age={max_age}; HttpOnly; Secure; SameSite=Strict"
    ))
    .map_err(|e| ApiError::Internal(e.to_string()))
}

/// `POST /v1/login`: 200 with the access token; the refresh token as a cookie (and in the body
/// when asked). An unknown email and a wrong password cost the same and read the same.
pub async fn login(
    State(state): State<AppState>,
    facts: RequestFacts,
    ApiJson(body): ApiJson<Credentials>,
) -> Result<Response, ApiError> {
    let email = normalise_email(&body.email)?;
    // Before any store is read: past the hashing queue a flood costs a counter, not the reads
    // that refresh traffic needs. Said for every email alike, so it tells nothing of accounts.
    let hashing = state.passwords.reserve()?;
    let account = state.pseudonyms.of(&email);
    // Looked up first so that every event, the soft lock's included, names the account.
    let user = state.users.find_by_email(&email).await?;
    let subject = user
        .as_ref()
        .map_or_else(|| email_subject(&account), |u| u.id.to_string());
    let audit = |event: &'static str| state.audit.record(event, &subject, &facts);
    state
        .login_guard
        .admit(
            &account,
            body.captcha_token.as_deref(),
            facts.client_ip,
            &audit,
        )
        .await?;
    // The attempt was counted by `admit`; only a login clears it.
    let failed = || async {
        audit("login_failed");
        ApiError::InvalidCredentials
    };
    if check_password(&body.password).is_err() {
        return Err(failed().await);
    }
    let Some(user) = user else {
        hashing.verify_unknown(body.password).await?;
        // Counted like a wrong password, so a soft lock never tells which emails exist.
        return Err(failed().await);
    };
    match hashing
        .verify(body.password, user.password_hash.clone())
        .await?
    {
        Verification::Mismatch => return Err(failed().await),
        Verification::Match => {}
        Verification::MatchRehashed(new_hash) => {
            // Upgrading is best effort: the login stands even if the write fails.
            if let Err(e) = state.users.update_password_hash(user.id, &new_hash).await {
                tracing::warn!(user_id = %user.id, error = %e, "password rehash not stored");
            }
        }
    }
    if state.mailer.enabled()
        && !state.config.email_verification.login_unverified
        && !user.email_verified
    {
        // The password was right: the attempt is no failure, and the lock is not cleared.
        audit("login_unverified_email");
        return Err(ApiError::EmailNotVerified);
    }
    let now = now();
    let codes = (body.otp.as_deref(), body.recovery_code.as_deref());
    let mfa = second_factor(&state, &user, codes, now, &audit).await?;
    state.login_guard.succeeded(&account).await;
    let session = Session {
        family_id: uuid::Uuid::new_v4(),
        started_at: now,
        mfa,
    };
    let (refresh_token, record) = new_refresh_record(&state, &user, &session, now);
    state.refresh.insert(&record).await?;
    audit("login");
    token_response(
        &state,
        &user,
        &record,
        Some(&refresh_token),
        now,
        body.refresh_token_in_body,
    )
}

/// The second factor, for accounts that confirmed one: whether the login passed it. Asked only
/// after the password was right, so `mfa_required` says nothing to someone without it. A wrong
/// code leaves the login's attempt counted toward the soft lock, and each one-time code is
/// counted, before it is checked, toward the factor's own lock.
/// `codes`: the request's `otp` and `recovery_code`.
pub(crate) async fn second_factor(
    state: &AppState,
    user: &User,
    codes: (Option<&str>, Option<&str>),
    now: i64,
    audit: &(dyn Fn(&'static str) + Sync),
) -> Result<bool, ApiError> {
    let Some(totp) = user.totp.as_ref().filter(|t| t.confirmed) else {
        return Ok(false);
    };
    let user_id = user.id.to_string();
    let passed = match codes {
        (Some(code), _) => {
            // The owner hears of the lock: whoever set it off knows their password.
            let audit_and_tell = |event: &'static str| {
                audit(event);
                if event == "mfa_locked" {
                    state.mailer.send(
                        &user.email,
                        Notice::SecondFactorLocked {
                            minutes: state.config.second_factor_lock.window_seconds / 60,
                        },
                    );
                }
            };
            state
                .second_factor_guard
                .attempt(&user_id, &audit_and_tell)
                .await?;
            let passed = match mfa::matching_step(&totp.secret, code, now) {
                Some(step) => state.users.use_totp_step(user.id, step).await?,
                None => false,
            };
            if passed {
                state.second_factor_guard.passed(&user_id).await;
            }
            passed
        }
        (None, Some(code)) => {
            let hash = mfa::recovery_code_hash(code);
            let used = state.users.use_recovery_code(user.id, &hash).await?;
            if used {
                audit("recovery_code_used");
            }
            used
        }
        (None, None) => return Err(ApiError::MfaRequired),
    };
    if !passed {
        audit("mfa_failed");
        return Err(ApiError::InvalidOtp);
    }
    Ok(true)
}

/// When a token for `user` is issued at `now`: never in the second of the user's last
/// revoke-all, which revokes everything issued through that second. At most a second later
/// than the clock, well within any edge's leeway.
fn issue_time(user: &User, now: i64) -> i64 {
    user.sessions_revoked_at.map_or(now, |at| now.max(at + 1))
}

/// What every refresh token of one login shares.
struct Session {
    family_id: uuid::Uuid,
    /// When the login happened: the start of the absolute lifetime.
    started_at: i64,
    /// Whether the login passed a second factor.
    mfa: bool,
}

/// When a session that started at `started_at` must end, however actively it is used.
fn session_end(state: &AppState, started_at: i64) -> i64 {
    started_at.saturating_add(i64::from(state.config.session_max_seconds))
}

/// A new refresh token of `session`: it expires after the idle time or at the session's end,
/// whichever comes first, so a stolen session cannot be kept alive forever by refreshing it.
fn new_refresh_record(
    state: &AppState,
    user: &User,
    session: &Session,
    now: i64,
) -> (String, RefreshRecord) {
    let (token, token_hash) = new_refresh_token();
    let idle_end = now + i64::from(state.config.refresh_token_ttl_seconds);
    let record = RefreshRecord {
        token_hash,
        user_id: user.id,
        family_id: session.family_id,
        expires_at: idle_end.min(session_end(state, session.started_at)),
        consumed_at: None,
        replaced_by: None,
        mfa: session.mfa,
        issued_at: issue_time(user, now),
        session_started_at: session.started_at,
    };
    (token, record)
}

/// The answer of login and refresh: a fresh access token in the body; the refresh token, if a
/// new one was issued, as a cookie, and in the body too for clients that asked.
fn token_response(
    state: &AppState,
    user: &User,
    session: &RefreshRecord,
    refresh_token: Option<&str>,
    now: i64,
    refresh_in_body: bool,
) -> Result<Response, ApiError> {
    let config = &state.config;
    let now = issue_time(user, now);
    let claims = AccessClaims {
        iss: config.issuer.clone(),
        aud: config.audience.clone(),
        sub: user.id.to_string(),
        // Scopes that need a second factor only in sessions that passed one, and those that
        // need a verified address only once it is.
        scope: user
            .scopes
            .iter()
            .filter(|scope| session.mfa || !config.mfa_scopes.contains(scope))
            .filter(|scope| {
                user.email_verified || !config.email_verification.verified_scopes.contains(scope)
            })
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(" "),
        iat: now,
        exp: now + i64::from(config.access_token_ttl_seconds),
        jti: uuid::Uuid::new_v4().to_string(),
        sid: session.family_id.to_string(),
        amr: if session.mfa {
            vec!["pwd".into(), "otp".into()]
        } else {
            vec!["pwd".into()]
        },
    };
    let access_token = state
        .keys
        .snapshot()
        .ok_or_else(|| ApiError::Unavailable("signing keys".into()))?
        .set
        .mint_access_token(&claims, now)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut body = json!({
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": config.access_token_ttl_seconds,
    });
    if let (Some(token), true) = (refresh_token, refresh_in_body) {
        body["refresh_token"] = json!(token);
    }
    let mut response = Json(body).into_response();
    let headers = response.headers_mut();
    if let Some(token) = refresh_token {
        // As long as the token itself lives: the idle time, or less near the session's end.
        let lives = u32::try_from(session.expires_at.saturating_sub(now).max(0))
            .unwrap_or(config.refresh_token_ttl_seconds);
        headers.insert(header::SET_COOKIE, refresh_cookie(token, lives)?);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// `POST /v1/token/refresh` body, for clients that do not use the cookie.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefreshBody {
    /// The refresh token.
    pub refresh_token: String,
}

fn cookie_value<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|line| line.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            (k.trim() == name).then(|| v.trim())
        })
}

/// `POST /v1/token/refresh`: exchanges a refresh token (cookie, or JSON body) for a new access
/// token and a new refresh token. Every exchange rotates: the old token is consumed in the same
/// transaction that stores the new one, and that transaction also checks that the session has
/// not ended (logout, session revoked, revoke-all), so ending a session cannot be outrun. A
/// consumed token presented again is theft, and the whole session (family) is revoked, except
/// once within `refresh_grace_seconds` of its rotation, so two tabs refreshing together do not
/// log the user out: that once gets an access token only, never a second refresh token.
pub async fn refresh(
    State(state): State<AppState>,
    facts: RequestFacts,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let from_body = if body.is_empty() {
        None
    } else {
        let is_json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if !is_json {
            return Err(ApiError::UnsupportedMediaType);
        }
        let parsed: RefreshBody =
            serde_json::from_slice(&body).map_err(|e| ApiError::InvalidBody(e.to_string()))?;
        Some(parsed.refresh_token)
    };
    let refresh_in_body = from_body.is_some();
    let presented = match from_body {
        Some(token) => token,
        None => {
            let token = cookie_value(&headers, REFRESH_COOKIE).ok_or(ApiError::InvalidGrant)?;
            // A cookie goes with every request to this path, a forged one's too (see `cors`).
            if !state.config.cors.cookie_may_be_spent(&headers) {
                return Err(ApiError::CrossSiteRefresh);
            }
            token.to_owned()
        }
    };
    let hash: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
    let now = now();
    let Some(record) = state.refresh.get(&hash, now).await? else {
        return Err(ApiError::InvalidGrant);
    };
    let Some(user) = state.users.get_user(record.user_id).await? else {
        state.refresh.revoke_family(record.family_id).await?;
        return Err(ApiError::InvalidGrant);
    };
    // A session issued before the user's last revoke-all has ended.
    if user
        .sessions_revoked_at
        .is_some_and(|at| record.issued_at <= at)
    {
        state.refresh.revoke_family(record.family_id).await?;
        return Err(ApiError::InvalidGrant);
    }
    // Past its absolute lifetime the session has ended, whatever its tokens' idle expiry says.
    if record.session_started_at != 0 && now >= session_end(&state, record.session_started_at) {
        state.refresh.revoke_family(record.family_id).await?;
        return Err(ApiError::InvalidGrant);
    }
    if record.consumed_at.is_none() {
        let session = Session {
            family_id: record.family_id,
            // A session stored before its start was recorded starts its absolute clock now.
            started_at: if record.session_started_at == 0 {
                now
            } else {
                record.session_started_at
            },
            mfa: record.mfa,
        };
        let (new_token, new_record) = new_refresh_record(&state, &user, &session, now);
        match state.refresh.rotate(&record, &new_record, now).await? {
            Exchange::Done => {
                return token_response(
                    &state,
                    &user,
                    &new_record,
                    Some(&new_token),
                    now,
                    refresh_in_body,
                )
            }
            Exchange::SessionEnded => return Err(ApiError::InvalidGrant),
            // Consumed since it was read: another tab's refresh won the race.
            Exchange::Spent => {}
        }
    }
    let grace_start = now - i64::from(state.config.refresh_grace_seconds);
    match state.refresh.use_grace(&record, grace_start).await? {
        Exchange::Done => {
            tracing::info!(event = "refresh_grace", user_id = %user.id, "rotated token reused within grace");
            // An access token only: the tab that rotated set the new cookie, which this browser
            // holds too. A second refresh token would fork the session.
            token_response(&state, &user, &record, None, now, false)
        }
        Exchange::SessionEnded => Err(ApiError::InvalidGrant),
        Exchange::Spent => Err(refresh_reused(&state, &facts, &record, now).await),
    }
}

/// A consumed refresh token presented again, past its grace: theft. Ends the session (no token
/// of it is exchanged again) and revokes its access tokens at the edges and at the origin (a
/// session entry in the feed and the deny-list, until the last of them has expired), then
/// audits. The answer is `invalid_grant`, or 503
/// if the session could not be ended or published.
async fn refresh_reused(
    state: &AppState,
    facts: &RequestFacts,
    record: &RefreshRecord,
    now: i64,
) -> ApiError {
    let user = record.user_id;
    let family_id = record.family_id;
    let revoked = match state.refresh.revoke_family(family_id).await {
        Ok(revoked) => revoked,
        Err(e) => return e.into(),
    };
    let revocation = Revocation::Session {
        sid: family_id.to_string(),
        expires_at: now + i64::from(state.config.access_token_ttl_seconds),
    };
    let published = revoke_everywhere(state, &revocation, now).await;
    tracing::warn!(event = "refresh_reuse", user_id = %user, %family_id, revoked, published = published.is_ok(), "refresh token reused: session revoked");
    state
        .audit
        .record("refresh_reuse", &user.to_string(), facts);
    match published {
        Ok(_) => ApiError::InvalidGrant,
        Err(e) => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_tokens_are_256_bits_and_stored_hashed() {
        let (a, hash_a) = new_refresh_token();
        let (b, _) = new_refresh_token();
        assert_ne!(a, b);
        assert_eq!(Base64UrlUnpadded::decode_vec(&a).expect("b64").len(), 32);
        assert_eq!(hash_a, <[u8; 32]>::from(Sha256::digest(a.as_bytes())));
    }
}
