//! The caller's identity on the origin's own endpoints: the access token verified by
//! `edgeauth-core`, the same code the edges run, against the origin's own key set.

use axum::{extract::FromRequestParts, http::request::Parts};
use edgeauth_core::{
    authorize, Request, RevocationAnswer, Step, TokenCache, Verdict, VerifiedToken, WatermarkStatus,
};

use crate::{clock::now, error::ApiError, state::AppState, store::UserId};

/// A request whose bearer token verified and is not revoked. The user id comes only from its
/// `sub`.
#[derive(Debug)]
pub struct Caller {
    /// The verified token.
    pub token: VerifiedToken,
    /// Its `sub` as a user id.
    pub user_id: UserId,
    /// Its session (`sid`, verified by the core), when it carries one.
    pub session: Option<uuid::Uuid>,
}

/// A caller of logout: its token verified (signature, `iss`, `aud`, `exp`), revoked or not. A
/// logout that failed part-way has revoked the token already, and its retry must still finish
/// ending the session; ending a session again does nothing more.
#[derive(Debug)]
pub struct LoggingOut(pub Caller);

/// A caller of revoke-all or of an account's deletion: its token verified and neither it nor
/// its session revoked; whether a revoke-all covers it is for the handler to judge (a retry
/// re-applies the stored watermark; a deletion revokes everything first and is retried with the
/// same token, re-authenticated by the password again).
#[derive(Debug)]
pub struct RevokingAll(pub Caller);

/// How much of the deny-list's answer a caller's token must pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Honoured {
    /// Everything: any revocation refuses the token.
    All,
    /// The token's and its session's revocations, not the user's watermark.
    TokenAndSession,
    /// None: the deny-list is not asked.
    Nothing,
}

/// Verifies the request's bearer token with the edges' core and asks the deny-list as much as
/// `honoured` says.
async fn verify(parts: &Parts, state: &AppState, honoured: Honoured) -> Result<Caller, ApiError> {
    let verifier = &state.verifier;
    let headers: Vec<(&str, &[u8])> = parts
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_bytes()))
        .collect();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let method = parts.method.as_str();
    let request = Request {
        method,
        path,
        headers: headers.as_slice(),
    };
    // The cache is off in this policy, so a throwaway one costs nothing.
    let mut cache = TokenCache::new(0, 0);
    let now = now();
    // Before the first keys are read the core answers 503, as an edge without keys does.
    let keys = state.keys.snapshot();
    let verdict = match authorize(
        &request,
        now,
        keys.as_ref().map(|k| &k.ring),
        verifier.policy(),
        &mut cache,
    ) {
        Step::Done(verdict) => verdict,
        Step::CheckRevocation(check) => {
            let answer = match honoured {
                Honoured::All => state.deny_list.answer(&check, now).await,
                Honoured::TokenAndSession => RevocationAnswer {
                    user: WatermarkStatus::None,
                    ..state.deny_list.answer(&check, now).await
                },
                Honoured::Nothing => RevocationAnswer::CLEAR,
            };
            check.finish(answer, verifier.policy())
        }
    };
    match verdict {
        Verdict::Allow(allowed) => {
            let token = allowed
                .token
                .ok_or_else(|| ApiError::Internal("allowed without a token".into()))?;
            let claims = token.claims();
            let user_id = claims
                .sub
                .as_deref()
                .and_then(|s| uuid::Uuid::parse_str(s).ok())
                .map(UserId)
                .ok_or(ApiError::InvalidCredentials)?;
            let session = claims
                .sid
                .as_deref()
                .and_then(|s| uuid::Uuid::parse_str(s).ok());
            Ok(Caller {
                token,
                user_id,
                session,
            })
        }
        Verdict::Deny(denial) => Err(ApiError::Token {
            status: denial.status(),
            www_authenticate: denial.www_authenticate(verifier.policy()),
            body: denial.body(),
        }),
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        verify(parts, state, Honoured::All).await
    }
}

impl FromRequestParts<AppState> for LoggingOut {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        verify(parts, state, Honoured::Nothing).await.map(Self)
    }
}

impl FromRequestParts<AppState> for RevokingAll {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        verify(parts, state, Honoured::TokenAndSession)
            .await
            .map(Self)
    }
}
