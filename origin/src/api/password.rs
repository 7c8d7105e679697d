//! Passwords: a forgotten one (a mailed link that sets a new one and ends every session), and a
//! change by a signed-in user (who gives the current one; the other sessions end).

use axum::{extract::State, response::Response};
use serde::Deserialize;

use super::{
    accounts::check_password,
    email::{accept_link_request, parse_link, AddressBody},
    no_content,
    reauthentication::{confirm, Asks, Proof},
    sessions::{end_all_sessions, end_session},
    ApiJson,
};
use crate::{
    api::caller::Caller,
    audit::RequestFacts,
    clock::now,
    error::ApiError,
    mail::Notice,
    state::AppState,
    store::{LinkPurpose, StoreError},
};

/// `POST /v1/password/forgot`: mails a reset link, which replaces the last, to the account with
/// this address. Always 202 with the same body, before any store is read, so neither content nor
/// timing tells whether the address has an account.
pub async fn forgot(
    State(state): State<AppState>,
    facts: RequestFacts,
    ApiJson(body): ApiJson<AddressBody>,
) -> Result<Response, ApiError> {
    accept_link_request(state, facts, &body, LinkPurpose::ResetPassword)
}

/// `POST /v1/password/reset` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResetBody {
    /// The `token` of the link's fragment.
    pub token: String,
    /// The new password.
    pub password: String,
}

/// `POST /v1/password/reset`: the link's token sets a new password and ends every session of
/// the account, everywhere (a revoke-all: refresh tokens stop working, and every access token
/// issued until now is refused by the origin and the edges). 204, and the owner is mailed a
/// notice; 400 `invalid_link` for a token that is wrong, expired, used, or replaced by a newer
/// link. In this order, each durable before the next: the password and the revoke-all's
/// watermark in one conditional write, the revocation published, the link ended. After a 503
/// the same link and password finish the reset; once it has answered 204, the link is spent.
pub async fn reset(
    State(state): State<AppState>,
    facts: RequestFacts,
    ApiJson(body): ApiJson<ResetBody>,
) -> Result<Response, ApiError> {
    check_password(&body.password)?;
    let (user, hash) = parse_link(&body.token).ok_or(ApiError::InvalidLink)?;
    let password_hash = state.passwords.hash(body.password).await?;
    let now = now();
    let Some(revoked_through) = state
        .users
        .reset_password(user, &hash, now, &password_hash)
        .await?
    else {
        return Err(ApiError::InvalidLink);
    };
    end_all_sessions(&state, user, revoked_through, now).await?;
    state
        .users
        .end_link(user, LinkPurpose::ResetPassword, &hash)
        .await?;
    state
        .audit
        .record("password_reset", &user.to_string(), &facts);
    if let Some(account) = state.users.get_user(user).await? {
        state.mailer.send(&account.email, Notice::PasswordChanged);
    }
    Ok(no_content())
}

/// `POST /v1/me/password` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangeBody {
    /// The password now: a stolen access token alone changes nothing. It may be left out in a
    /// session that logged in within `reauthentication_max_age_seconds`.
    #[serde(default)]
    pub current_password: Option<String>,
    /// The new password.
    pub new_password: String,
}

/// `POST /v1/me/password`: a signed-in user sets a new password, giving the current one (or
/// within a few minutes of logging in). Every other session of the account ends at once,
/// everywhere (as `DELETE /v1/sessions/{id}` ends one); the caller's stays. 204, and the owner
/// is mailed a notice; 401 `invalid_credentials` for a wrong current password, which changes
/// nothing. The other sessions end before the password is replaced, so a retry after a 503
/// still gives the current password it knows.
pub async fn change(
    State(state): State<AppState>,
    facts: RequestFacts,
    caller: Caller,
    ApiJson(body): ApiJson<ChangeBody>,
) -> Result<Response, ApiError> {
    check_password(&body.new_password)?;
    let proof = Proof {
        password: body.current_password,
        ..Proof::default()
    };
    let user = confirm(
        &state,
        &facts,
        &caller,
        proof,
        Asks::Password,
        "password_change_failed",
    )
    .await?;
    let password_hash = state.passwords.hash(body.new_password).await?;
    let now = now();
    for session in state.refresh.sessions(user.id, now).await? {
        if caller.session != Some(session.family_id) {
            end_session(&state, session.family_id, now).await?;
        }
    }
    match state
        .users
        .update_password_hash(user.id, &password_hash)
        .await
    {
        Err(StoreError::NotFound) => return Err(ApiError::InvalidCredentials),
        other => other?,
    }
    state
        .audit
        .record("password_changed", &user.id.to_string(), &facts);
    state.mailer.send(&user.email, Notice::PasswordChanged);
    Ok(no_content())
}
