//! The caller's second factor: TOTP enrolment and its confirmation, turning it off, and new
//! recovery codes. Each but the confirmation asks for re-authentication ([`confirm`]).

use axum::{extract::State, response::Response};
use serde::Deserialize;
use serde_json::json;

use super::{
    caller_account, no_content, private_json,
    reauthentication::{confirm, Asks, OptionalJson, Proof},
    ApiJson,
};
use crate::{
    api::caller::Caller, audit::RequestFacts, clock::now, error::ApiError, mail::Notice, mfa,
    state::AppState, store::StoreError,
};

/// `POST /v1/me/mfa/totp`: starts TOTP enrolment: a new secret, shown once as an `otpauth://`
/// URI (and in base32 for manual entry). Login does not ask for it until it is confirmed. Needs
/// a recent login or the password (`{"password": …}`): whoever enrols the factor can lock the
/// owner out of admin scopes.
pub async fn start_totp(
    State(state): State<AppState>,
    facts: RequestFacts,
    caller: Caller,
    OptionalJson(proof): OptionalJson<Proof>,
) -> Result<Response, ApiError> {
    let user = confirm(
        &state,
        &facts,
        &caller,
        proof,
        Asks::Password,
        "reauthentication_failed",
    )
    .await?;
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

/// `DELETE /v1/me/mfa/totp`: turns the second factor off (a pending enrolment too), with its
/// recovery codes; login then asks for the password only. Needs the password and a code (or a
/// recovery code), or a recent login that passed the factor. 204; the owner is mailed a notice.
pub async fn remove_totp(
    State(state): State<AppState>,
    facts: RequestFacts,
    caller: Caller,
    ApiJson(proof): ApiJson<Proof>,
) -> Result<Response, ApiError> {
    let user = confirm(
        &state,
        &facts,
        &caller,
        proof,
        Asks::PasswordAndSecondFactor,
        "reauthentication_failed",
    )
    .await?;
    state.users.remove_totp(user.id).await?;
    state
        .audit
        .record("mfa_disabled", &user.id.to_string(), &facts);
    if user.totp.as_ref().is_some_and(|t| t.confirmed) {
        state.mailer.send(&user.email, Notice::SecondFactorRemoved);
    }
    Ok(no_content())
}

/// `POST /v1/me/mfa/recovery-codes`: ten new recovery codes, shown this once; the old ones stop
/// working. Needs the password and a code (a recovery code too, which it spends), or a recent
/// login that passed the factor; 409 `mfa_not_enabled` without a confirmed factor.
pub async fn replace_recovery_codes(
    State(state): State<AppState>,
    facts: RequestFacts,
    caller: Caller,
    ApiJson(proof): ApiJson<Proof>,
) -> Result<Response, ApiError> {
    let user = confirm(
        &state,
        &facts,
        &caller,
        proof,
        Asks::PasswordAndSecondFactor,
        "reauthentication_failed",
    )
    .await?;
    let (codes, hashes) = mfa::new_recovery_codes();
    if !state.users.replace_recovery_codes(user.id, &hashes).await? {
        return Err(ApiError::MfaNotEnabled);
    }
    state
        .audit
        .record("recovery_codes_replaced", &user.id.to_string(), &facts);
    Ok(private_json(json!({ "recovery_codes": codes })))
}
