//! Re-authentication ("sudo mode"): the actions that end an account, weaken its second factor or
//! hand it to someone else (deleting it, turning TOTP off, new recovery codes, enrolling a factor,
//! a new password) need more than an access token, which a page's script or a stolen laptop may
//! hold. The caller gives the password again (and, where asked, a one-time code), or its session
//! logged in within `reauthentication_max_age_seconds`.

use axum::{
    body::Bytes,
    extract::{FromRequest, Request},
    http::header,
};
use serde::{de::DeserializeOwned, Deserialize};

use super::{caller_account, tokens::second_factor};
use crate::{
    api::caller::Caller, audit::RequestFacts, clock::now, error::ApiError, password::Verification,
    state::AppState, store::User,
};

/// What the caller offers as proof, in the body of an action that asks for it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Proof {
    /// The account's password.
    #[serde(default)]
    pub password: Option<String>,
    /// The authenticator's current code, for an account with a second factor.
    #[serde(default)]
    pub otp: Option<String>,
    /// A recovery code instead of `otp` (each works once).
    #[serde(default)]
    pub recovery_code: Option<String>,
}

/// How much an action asks of the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asks {
    /// The password, or a recent login.
    Password,
    /// The password and, on an account with a confirmed second factor, a one-time code; or a
    /// recent login that passed that factor.
    PasswordAndSecondFactor,
}

/// Checks the caller's proof for an action that `asks` it; `failed` names the audit event of a
/// wrong password. Answers the caller's account. A password, once given, is always checked,
/// recent login or not; it counts toward the hashing queue like a login's.
pub async fn confirm(
    state: &AppState,
    facts: &RequestFacts,
    caller: &Caller,
    proof: Proof,
    asks: Asks,
    failed: &'static str,
) -> Result<User, ApiError> {
    let Some(password) = proof.password else {
        let user = caller_account(state, caller).await?;
        if logged_in_recently(state, caller, &user, asks).await? {
            return Ok(user);
        }
        return Err(ApiError::ReauthenticationRequired {
            max_age_seconds: state.config.reauthentication_max_age_seconds,
        });
    };
    // Before any store read, as a login takes it: a flood is refused without reading.
    let hashing = state.passwords.reserve()?;
    let user = caller_account(state, caller).await?;
    let subject = user.id.to_string();
    if hashing.verify(password, user.password_hash.clone()).await? == Verification::Mismatch {
        state.audit.record(failed, &subject, facts);
        return Err(ApiError::InvalidCredentials);
    }
    if asks == Asks::PasswordAndSecondFactor {
        let audit = |event: &'static str| state.audit.record(event, &subject, facts);
        let codes = (proof.otp.as_deref(), proof.recovery_code.as_deref());
        second_factor(state, &user, codes, now(), &audit).await?;
    }
    Ok(user)
}

/// Whether the caller's session logged in within `reauthentication_max_age_seconds` (passing
/// the account's second factor, if the action asks it and the account has one). The session's
/// start is the origin's record, carried through every refresh; the token says nothing of it.
async fn logged_in_recently(
    state: &AppState,
    caller: &Caller,
    user: &User,
    asks: Asks,
) -> Result<bool, ApiError> {
    let max_age = i64::from(state.config.reauthentication_max_age_seconds);
    let Some(family) = caller.session else {
        return Ok(false);
    };
    if max_age == 0 {
        return Ok(false);
    }
    let now = now();
    let needs_factor = asks == Asks::PasswordAndSecondFactor
        && user.totp.as_ref().is_some_and(|totp| totp.confirmed);
    Ok(state
        .refresh
        .sessions(user.id, now)
        .await?
        .iter()
        .find(|session| session.family_id == family)
        .is_some_and(|session| {
            session.session_started_at != 0
                && now - session.session_started_at <= max_age
                && (session.mfa || !needs_factor)
        }))
}

/// A JSON body that may be left out: no body is `T::default()`. For actions whose proof a
/// recent login can stand in for.
#[derive(Debug)]
pub struct OptionalJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Default> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        let body = Bytes::from_request(req, state).await.map_err(|r| {
            if r.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge
            } else {
                ApiError::InvalidBody(r.body_text())
            }
        })?;
        if body.is_empty() {
            return Ok(Self(T::default()));
        }
        if !is_json {
            return Err(ApiError::UnsupportedMediaType);
        }
        serde_json::from_slice(&body)
            .map(Self)
            .map_err(|e| ApiError::InvalidBody(e.to_string()))
    }
}
