//! The caller's identity on the origin's own endpoints: the access token verified by
//! `edgeauth-core`, the same code the edges run, against the origin's own key set.

use axum::{extract::FromRequestParts, http::request::Parts};
use edgeauth_core::{
    authorize, DenyListStatus, Policy, Request, RevocationAnswer, Step, TokenCache, Verdict,
    VerifiedToken, WatermarkStatus,
};

use crate::{app::AppState, clock::now, error::ApiError, store::UserId};

/// The edge policy the origin applies to itself: its own issuer and audience, defaults
/// otherwise. The keys are the origin's own published ones ([`crate::key_rotation`]).
#[derive(Debug)]
pub struct SelfVerifier {
    policy: Policy,
}

impl SelfVerifier {
    /// Built once at start-up from the configuration.
    pub fn new(issuer: &str, audience: &str) -> Result<Self, anyhow::Error> {
        let policy = Policy::from_json(
            &serde_json::json!({"issuers": [issuer], "audiences": [audience], "cache": {"max_entries": 0}}).to_string(),
        )?;
        Ok(Self { policy })
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }
}

/// A request whose bearer token verified and is not revoked. The user id comes only from its
/// `sub`.
#[derive(Debug)]
pub struct Caller {
    /// The verified token.
    pub token: VerifiedToken,
    /// Its `sub` as a user id.
    pub user_id: UserId,
    /// Its session (`sid`), when it carries one.
    pub session: Option<uuid::Uuid>,
}

/// The `sid` claim of a token that has already verified. The core reads only the claims every
/// edge needs, so the origin reads its own claim from the authenticated payload.
fn session_of(headers: &axum::http::HeaderMap) -> Option<uuid::Uuid> {
    use base64ct::{Base64UrlUnpadded, Encoding};
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (_, token) = value.split_once(' ')?;
    let payload = Base64UrlUnpadded::decode_vec(token.trim().split('.').nth(1)?).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&payload).ok()?;
    uuid::Uuid::parse_str(claims.get("sid")?.as_str()?).ok()
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
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
        let mut cache = TokenCache::new(0);
        let now = now();
        // Before the first keys are read the core answers 503, as an edge without keys does.
        let keys = state.keys.snapshot();
        let verdict = match authorize(
            &request,
            now,
            keys.as_ref().map(|k| &k.ring),
            &verifier.policy,
            &mut cache,
        ) {
            Step::Done(verdict) => verdict,
            Step::CheckRevocation(check) => {
                let jti = match check.jti() {
                    None => DenyListStatus::NotListed,
                    Some(jti) => match state.deny_list.is_revoked(jti, now).await {
                        Ok(true) => DenyListStatus::Listed,
                        Ok(false) => DenyListStatus::NotListed,
                        Err(e) => {
                            tracing::warn!(error = %e, "deny-list unavailable");
                            DenyListStatus::Unavailable
                        }
                    },
                };
                let user = match check.subject() {
                    None => WatermarkStatus::None,
                    Some(sub) => match state.deny_list.user_watermark(sub, now).await {
                        Ok(Some(through)) => WatermarkStatus::RevokedThrough(through),
                        Ok(None) => WatermarkStatus::None,
                        Err(e) => {
                            tracing::warn!(error = %e, "deny-list unavailable");
                            WatermarkStatus::Unavailable
                        }
                    },
                };
                let answer = RevocationAnswer { jti, user };
                check.finish(answer, &verifier.policy)
            }
        };
        match verdict {
            Verdict::Allow(allowed) => {
                let token = allowed
                    .token
                    .ok_or_else(|| ApiError::Internal("allowed without a token".into()))?;
                let user_id = token
                    .claims()
                    .sub
                    .as_deref()
                    .and_then(|s| uuid::Uuid::parse_str(s).ok())
                    .map(UserId)
                    .ok_or(ApiError::InvalidCredentials)?;
                Ok(Self {
                    token,
                    user_id,
                    session: session_of(&parts.headers),
                })
            }
            Verdict::Deny(denial) => Err(ApiError::Token {
                status: denial.status(),
                www_authenticate: denial.www_authenticate(&verifier.policy),
                body: denial.body(),
            }),
        }
    }
}
