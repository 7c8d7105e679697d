//! Request bodies and the account handlers: extract, call the service, answer.

use axum::{
    body::Bytes,
    extract::{rejection::JsonRejection, FromRequest, Path, Request, State},
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use base64ct::{Base64UrlUnpadded, Encoding};
use edgeauth_core::Revocation;
use rand_core::{OsRng, RngCore};
use serde::{de::DeserializeOwned, Deserialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::{
    app::AppState,
    audit::{email_subject, RequestFacts},
    auth::{Caller, LoggingOut, RevokingAll},
    clock::now,
    error::ApiError,
    keys::{AccessClaims, REVOCATION_TYPE},
    mfa,
    password::Verification,
    store::{profile_cache::Profile, Exchange, RefreshRecord, StoreError, User, UserId},
};

/// Path the refresh cookie is scoped to: the browser sends it nowhere else.
pub const REFRESH_COOKIE_PATH: &str = "/v1/token/refresh";
/// Name of the refresh cookie. The `__Host-` prefix would forbid a `Path`, so a plain name.
pub const REFRESH_COOKIE: &str = "refresh_token";
/// NIST SP 800-63B §5.1.1.2: at least 8 characters; long passphrases welcome, up to a bound that
/// keeps hashing cost predictable.
pub const PASSWORD_CHARS: std::ops::RangeInclusive<usize> = 8..=1024;
/// RFC 5321's practical limit for an address.
pub const MAX_EMAIL_BYTES: usize = 254;
/// Scopes a new account starts with.
pub const DEFAULT_SCOPES: [&str; 1] = ["profile"];

/// `Json<T>` whose rejections are [`ApiError`]s: 415 without a JSON content type, 413 over the
/// body limit, 400 naming the field otherwise.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(Self(value)),
            Err(JsonRejection::MissingJsonContentType(_)) => Err(ApiError::UnsupportedMediaType),
            Err(JsonRejection::BytesRejection(r))
                if r.status() == StatusCode::PAYLOAD_TOO_LARGE =>
            {
                Err(ApiError::PayloadTooLarge)
            }
            Err(JsonRejection::JsonDataError(e)) => Err(ApiError::InvalidBody(e.body_text())),
            Err(other) => Err(ApiError::InvalidBody(other.body_text())),
        }
    }
}

/// 204 to a caller's change: nothing to store on the way either.
fn no_content() -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A JSON answer about one caller: never stored by a cache on the way.
fn private_json(body: impl serde::Serialize) -> Response {
    let mut response = Json(body).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `POST /v1/register` and `POST /v1/login` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// Trimmed and case-folded before use.
    pub email: String,
    /// Checked for length only (NIST SP 800-63B: no composition rules).
    pub password: String,
    /// Login only: also return the refresh token in the body (non-browser clients).
    #[serde(default)]
    pub refresh_token_in_body: bool,
    /// Login only: a solved CAPTCHA's token, needed once the email is soft-locked.
    #[serde(default)]
    pub captcha_token: Option<String>,
    /// Login only: the TOTP code, for an account with a second factor.
    #[serde(default)]
    pub otp: Option<String>,
    /// Login only: a recovery code instead of the TOTP code (each works once).
    #[serde(default)]
    pub recovery_code: Option<String>,
}

/// Trims and case-folds an email and checks it looks like one. Deliverability is the
/// verification mail's job, not this check's.
pub fn normalise_email(raw: &str) -> Result<String, ApiError> {
    use unicode_normalization::UnicodeNormalization as _;
    // NFKC, case folded, NFKC again (the UAX #31 recipe for identifiers): full-width, ligature
    // and compatibility spellings of an address become one, so they cannot be two accounts.
    let folded: String = raw.trim().nfkc().collect::<String>().to_lowercase();
    let email: String = folded.nfkc().collect();
    let invalid = |message: &str| ApiError::InvalidField {
        field: "email".into(),
        message: message.into(),
    };
    if email.len() > MAX_EMAIL_BYTES {
        return Err(invalid("is too long"));
    }
    let Some((local, domain)) = email.rsplit_once('@') else {
        return Err(invalid("is not an email address"));
    };
    if local.is_empty()
        || domain.is_empty()
        || !domain.contains('.')
        || domain.starts_with('.')
        || domain.ends_with('.')
    {
        return Err(invalid("is not an email address"));
    }
    if email.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid("must not contain spaces or control characters"));
    }
    if email.chars().any(is_invisible) {
        return Err(invalid("must not contain invisible characters"));
    }
    Ok(email)
}

/// Characters that render as nothing: the Unicode format characters (general category Cf: zero
/// width spaces and joiners, bidirectional controls, tags), variation selectors and the Hangul
/// fillers. `a\u{200B}lice@` would otherwise register beside `alice@` and look the same.
fn is_invisible(c: char) -> bool {
    matches!(
        u32::from(c),
        0x00AD
            | 0x034F
            | 0x061C
            | 0x115F..=0x1160
            | 0x17B4..=0x17B5
            | 0x180B..=0x180F
            | 0x200B..=0x200F
            | 0x202A..=0x202E
            | 0x2060..=0x206F
            | 0x3164
            | 0xFE00..=0xFE0F
            | 0xFEFF
            | 0xFFA0
            | 0xFFF0..=0xFFFB
            | 0x1BCA0..=0x1BCA3
            | 0x1D173..=0x1D17A
            | 0xE0000..=0xE0FFF
    )
}

fn check_password(password: &str) -> Result<(), ApiError> {
    let chars = password.chars().count();
    if PASSWORD_CHARS.contains(&chars) {
        Ok(())
    } else {
        Err(ApiError::InvalidField {
            field: "password".into(),
            message: format!(
                "must be {} to {} characters",
                PASSWORD_CHARS.start(),
                PASSWORD_CHARS.end()
            ),
        })
    }
}

/// `POST /v1/register`: 201 with the new user's id.
pub async fn register(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<Credentials>,
) -> Result<Response, ApiError> {
    let email = normalise_email(&body.email)?;
    check_password(&body.password)?;
    let password_hash = state.passwords.hash(body.password).await?;
    let user = User {
        id: UserId(uuid::Uuid::new_v4()),
        email,
        password_hash,
        scopes: DEFAULT_SCOPES.iter().map(|s| (*s).to_owned()).collect(),
        display_name: None,
        totp: None,
        sessions_revoked_at: None,
        created_at: now(),
    };
    state.users.create_user(&user).await?;
    tracing::info!(event = "register", user_id = %user.id, "account created");
    Ok((
        StatusCode::CREATED,
        Json(json!({"user_id": user.id.to_string()})),
    )
        .into_response())
}

/// A new opaque refresh token: 256 random bits, base64url. Only its SHA-256 is stored.
fn new_refresh_token() -> (String, [u8; 32]) {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    let token = Base64UrlUnpadded::encode_string(&bytes);
    let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    (token, hash)
}

fn refresh_cookie(token: &str, max_age: u32) -> Result<HeaderValue, ApiError> {
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
async fn second_factor(
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
            state.second_factor_guard.attempt(&user_id, audit).await?;
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

/// A new refresh token for `user` in session `family_id`, and the record that stores its hash.
/// `mfa`: the session's login passed a second factor.
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
        // Scopes that need a second factor only in sessions that passed one.
        scope: user
            .scopes
            .iter()
            .filter(|scope| session.mfa || !config.mfa_scopes.contains(scope))
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
    let presented = from_body
        .or_else(|| cookie_value(&headers, REFRESH_COOKIE).map(str::to_owned))
        .ok_or(ApiError::InvalidGrant)?;
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
pub async fn revocations(
    State(state): State<AppState>,
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
    let (entries, next) = state
        .feed
        .read_after(query.after, query.limit, now())
        .await?;
    let entries: Vec<_> = entries
        .iter()
        .map(|e| json!({"seq": e.seq, "jws": e.jws, "expires_at": e.expires_at}))
        .collect();
    Ok(private_json(json!({"entries": entries, "next": next})))
}

/// Longest display name, in characters.
pub const MAX_DISPLAY_NAME_CHARS: usize = 100;

/// `GET /v1/me`: the caller's profile. The id comes only from the verified token's `sub`.
/// Cache-aside: a cache error is logged and the answer comes from DynamoDB.
pub async fn me(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    let now = now();
    // Read before DynamoDB is: a change after this makes the fill below a no-op.
    let cached = match state.profile_cache.get(caller.user_id, now).await {
        Ok(read) => Some(read),
        Err(e) => {
            tracing::warn!(error = %e, "profile cache unavailable");
            None
        }
    };
    let generation = cached.as_ref().map(|read| read.generation);
    let profile = match cached.and_then(|read| read.profile) {
        Some(profile) => profile,
        None => {
            let user = state
                .users
                .get_user(caller.user_id)
                .await?
                .ok_or(ApiError::InvalidCredentials)?;
            let profile = Profile::from(&user);
            let expires_at = now + i64::from(state.config.profile_cache_ttl_seconds);
            // Without a generation (the cache did not answer) nothing is filled.
            if let Some(generation) = generation {
                if let Err(e) = state
                    .profile_cache
                    .put(caller.user_id, &profile, expires_at, now, generation)
                    .await
                {
                    tracing::warn!(error = %e, "profile not cached");
                }
            }
            profile
        }
    };
    Ok(private_json(profile))
}

/// `PATCH /v1/me` body: only what a user may change about themselves.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileUpdate {
    /// A new display name, or `null` to clear it.
    pub display_name: Option<String>,
}

/// `PATCH /v1/me`: updates the caller's own profile.
pub async fn update_me(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(update): ApiJson<ProfileUpdate>,
) -> Result<Response, ApiError> {
    let name = update.display_name.map(|n| n.trim().to_owned());
    if let Some(name) = &name {
        let chars = name.chars().count();
        if chars == 0 || chars > MAX_DISPLAY_NAME_CHARS || name.chars().any(char::is_control) {
            return Err(ApiError::InvalidField {
                field: "display_name".into(),
                message: format!(
                    "must be 1 to {MAX_DISPLAY_NAME_CHARS} characters without control characters"
                ),
            });
        }
    }
    match state
        .users
        .update_display_name(caller.user_id, name.as_deref())
        .await
    {
        Err(StoreError::NotFound) => return Err(ApiError::InvalidCredentials),
        other => other?,
    }
    // A failed invalidation leaves the old profile for at most profile_cache_ttl_seconds.
    if let Err(e) = state.profile_cache.invalidate(caller.user_id).await {
        tracing::warn!(user_id = %caller.user_id, error = %e, "profile cache not invalidated");
    }
    me(State(state), caller).await
}

/// Most events `GET /v1/me/audit` returns.
const AUDIT_PAGE: u32 = 50;

/// `GET /v1/me/audit`: the caller's own security events, newest first (logins, failed logins,
/// soft locks, CAPTCHAs, refresh-token reuse, logouts), with the address and request id of each.
pub async fn my_audit(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    let events = state
        .audit
        .for_user(&caller.user_id.to_string(), AUDIT_PAGE)
        .await?;
    Ok(private_json(json!({ "events": events })))
}

/// The caller's account; a token for an account that no longer exists is refused.
async fn caller_account(state: &AppState, caller: &Caller) -> Result<User, ApiError> {
    state
        .users
        .get_user(caller.user_id)
        .await?
        .ok_or(ApiError::InvalidCredentials)
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
    let revocation = Revocation::Session {
        sid: family.to_string(),
        expires_at: now + i64::from(state.config.access_token_ttl_seconds),
    };
    revoke_everywhere(&state, &revocation, now).await?;
    state.refresh.revoke_family(family).await?;
    state
        .audit
        .record("session_revoked", &caller.user_id.to_string(), &facts);
    Ok(no_content())
}

/// Publishes a revocation in the feed (the durable record, and the edges', pushed to them too),
/// then holds it in the origin's own deny-list.
async fn revoke_everywhere(
    state: &AppState,
    revocation: &Revocation,
    now: i64,
) -> Result<crate::store::FeedEntry, ApiError> {
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
) -> Result<crate::store::FeedEntry, ApiError> {
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
    let entry = state.feed.append(&make, expires_at).await?;
    state.edge_push.push(&entry);
    Ok(entry)
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
    // Every token issued through `at` expires by then: the entry matters no longer.
    let revocation = Revocation::User {
        subject: caller.user_id.to_string(),
        revoked_through: at,
        expires_at: at + i64::from(state.config.access_token_ttl_seconds),
    };
    revoke_everywhere(&state, &revocation, now).await?;
    state
        .audit
        .record("revoke_all", &caller.user_id.to_string(), &facts);
    Ok(no_content())
}

/// `POST /v1/me/mfa/totp`: starts TOTP enrolment: a new secret, shown once as an `otpauth://`
/// URI (and in base32 for manual entry). Login does not ask for it until it is confirmed.
pub async fn start_totp(
    State(state): State<AppState>,
    facts: RequestFacts,
    caller: Caller,
) -> Result<Response, ApiError> {
    let user = caller_account(&state, &caller).await?;
    let secret = mfa::new_secret();
    match state.users.start_totp(user.id, &secret).await {
        Ok(()) => {}
        Err(StoreError::Conflict) => return Err(ApiError::MfaAlreadyEnabled),
        Err(e) => return Err(e.into()),
    }
    state
        .audit
        .record("mfa_enrolment_started", &user.id.to_string(), &facts);
    Ok(private_json(json!({
        "secret": mfa::base32(&secret),
        "otpauth_uri": mfa::key_uri(&state.config.issuer, &user.email, &secret),
    })))
}

/// `POST /v1/me/mfa/totp/confirm` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfirmTotp {
    /// The authenticator's current code.
    pub code: String,
}

/// `POST /v1/me/mfa/totp/confirm`: the first code proves the authenticator holds the secret;
/// from then on login asks for a code. Answers the recovery codes, shown this once.
pub async fn confirm_totp(
    State(state): State<AppState>,
    facts: RequestFacts,
    caller: Caller,
    ApiJson(body): ApiJson<ConfirmTotp>,
) -> Result<Response, ApiError> {
    let user = caller_account(&state, &caller).await?;
    let Some(totp) = user.totp.filter(|t| !t.confirmed) else {
        return Err(ApiError::InvalidField {
            field: "code".into(),
            message: "no enrolment is pending: POST /v1/me/mfa/totp first".into(),
        });
    };
    let step = mfa::matching_step(&totp.secret, &body.code, now()).ok_or(ApiError::InvalidOtp)?;
    let (codes, hashes) = mfa::new_recovery_codes();
    if !state.users.confirm_totp(user.id, step, &hashes).await? {
        return Err(ApiError::InvalidOtp);
    }
    state
        .audit
        .record("mfa_enabled", &user.id.to_string(), &facts);
    Ok(private_json(json!({ "recovery_codes": codes })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_trimmed_and_case_folded() {
        assert_eq!(
            normalise_email("  Alice@Example.COM ").expect("valid"),
            "alice@example.com"
        );
        for bad in [
            "",
            "alice",
            "@example.com",
            "alice@",
            "alice@localhost",
            "al ice@example.com",
            "alice@.com",
        ] {
            assert!(normalise_email(bad).is_err(), "{bad}");
        }
        assert!(normalise_email(&format!("{}@example.com", "a".repeat(250))).is_err());
    }

    #[test]
    fn look_alike_spellings_of_an_address_are_one_address_or_refused() {
        // Full-width letters, a ligature, the Kelvin sign for k.
        assert_eq!(
            normalise_email("\u{ff41}\u{ff4c}ice@example.com").expect("valid"),
            "alice@example.com"
        );
        assert_eq!(
            normalise_email("\u{fb03}x@example.com").expect("valid"),
            "ffix@example.com"
        );
        assert_eq!(
            normalise_email("mar\u{212a}@example.com").expect("valid"),
            "mark@example.com"
        );
        // Composed and decomposed accents are one address.
        assert_eq!(
            normalise_email("jose\u{301}@example.com").expect("valid"),
            normalise_email("jos\u{e9}@example.com").expect("valid")
        );
        for invisible in [
            "a\u{200b}lice@example.com",
            "alice\u{200d}@example.com",
            "\u{feff}alice@example.com",
            "ali\u{ad}ce@example.com",
            "alice@exam\u{2060}ple.com",
            "alice\u{e0041}@example.com",
            "a\u{202e}lice@example.com",
            "alice\u{fe0f}@example.com",
            "\u{3164}alice@example.com",
        ] {
            assert!(normalise_email(invisible).is_err(), "{invisible:?}");
        }
    }

    #[test]
    fn password_length_follows_nist() {
        assert!(check_password("1234567").is_err());
        assert!(check_password("12345678").is_ok());
        assert!(check_password(&"long passphrase ".repeat(40)).is_ok());
        assert!(check_password(&"x".repeat(1025)).is_err());
        // Characters, not bytes: eight emoji are eight characters.
        assert!(check_password("🔑🔑🔑🔑🔑🔑🔑🔑").is_ok());
    }

    #[test]
    fn refresh_tokens_are_256_bits_and_stored_hashed() {
        let (a, hash_a) = new_refresh_token();
        let (b, _) = new_refresh_token();
        assert_ne!(a, b);
        assert_eq!(Base64UrlUnpadded::decode_vec(&a).expect("b64").len(), 32);
        assert_eq!(hash_a, <[u8; 32]>::from(Sha256::digest(a.as_bytes())));
    }
}
