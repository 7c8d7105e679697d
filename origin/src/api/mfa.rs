//! The caller's second factor: TOTP enrolment and its confirmation.

use axum::{extract::State, response::Response};
use serde::Deserialize;
use serde_json::json;

use super::{caller_account, private_json, ApiJson};
use crate::{
    api::caller::Caller, audit::RequestFacts, clock::now, error::ApiError, mfa, state::AppState,
    store::StoreError,
};

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
