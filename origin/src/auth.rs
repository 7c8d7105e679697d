//! The caller's identity on the origin's own endpoints: the access token verified by
//! `edgeauth-core`, the same code the edges run, against the origin's own key set.

use axum::{extract::FromRequestParts, http::request::Parts};
use edgeauth_core::{
    authorize, KeyRing, Policy, Request, RevocationAnswer, Step, TokenCache, Verdict, VerifiedToken,
};

use crate::{app::AppState, error::ApiError, keys::KeySet, store::UserId};

/// The edge policy the origin applies to itself: its own issuer and audience, defaults otherwise.
#[derive(Debug)]
pub struct SelfVerifier {
    policy: Policy,
    ring: KeyRing,
}

impl SelfVerifier {
    /// Built once at start-up from the configuration and the key set.
    pub fn new(issuer: &str, audience: &str, keys: &KeySet) -> Result<Self, anyhow::Error> {
        let policy = Policy::from_json(
            &serde_json::json!({"issuers": [issuer], "audiences": [audience], "cache": {"max_entries": 0}}).to_string(),
        )?;
        let (ring, _) = KeyRing::from_jwks(keys.jwks().to_string().as_bytes(), &policy)?;
        Ok(Self { policy, ring })
    }
}

/// A request whose bearer token verified. The user id comes only from its `sub`.
#[derive(Debug)]
pub struct Caller {
    /// The verified token.
    pub token: VerifiedToken,
    /// Its `sub` as a user id.
    pub user_id: UserId,
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
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
        let verdict = match authorize(
            &request,
            now(),
            Some(&verifier.ring),
            &verifier.policy,
            &mut cache,
        ) {
            Step::Done(verdict) => verdict,
            // The origin's own deny-list is not built yet (issue 3 continues): it answers
            // "not revoked" until it is.
            Step::CheckRevocation(check) => check.finish(RevocationAnswer::CLEAR, &verifier.policy),
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
                Ok(Self { token, user_id })
            }
            Verdict::Deny(denial) => Err(ApiError::Token {
                status: denial.status(),
                www_authenticate: denial.www_authenticate(&verifier.policy),
                body: denial.body(),
            }),
        }
    }
}
