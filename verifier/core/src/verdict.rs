//! The answer for a request, and the one place a deny reason becomes an HTTP status,
//! a `WWW-Authenticate` value (RFC 6750 §3) and a JSON body. Every host calls these, so a token
//! gets the same answer from the Worker, the Envoy filter and the CLI.

use alloc::{
    format,
    string::{String, ToString},
    sync::Arc,
    vec::Vec,
};

use crate::{config::Policy, cors::refusal_headers, extract::Headers, token::VerifiedToken};

/// Why a request was refused. One variant per failure; [`DenyReason::code`] is the stable name
/// used in metrics, logs and response bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DenyReason {
    /// No token in any configured location (RFC 6750 §3.1: no error attribute).
    TokenMissing,
    /// The request itself is malformed: two `Authorization` headers, a path that could route
    /// elsewhere upstream (dot segments, encoded slashes), a header that is not text.
    InvalidRequest,
    /// Longer than `max_token_bytes`; refused before decoding.
    TokenTooLarge,
    /// Not three canonical base64url segments of JSON.
    MalformedToken,
    /// `alg` is `none`, unknown, or not in the policy.
    AlgorithmNotAllowed,
    /// A `crit` header, or `b64: false` (RFC 7515 §4.1.11, RFC 7797).
    UnsupportedHeader,
    /// `typ` is not on the allow-list.
    TokenTypeNotAllowed,
    /// No key with this `kid` (or no unique key when `kid` is absent).
    UnknownKey,
    /// The key named by `kid` is not for this `alg`.
    KeyAlgorithmMismatch,
    /// The signature does not verify.
    BadSignature,
    /// A registered claim has the wrong type, or a value unsafe for a header.
    InvalidClaim,
    /// A required claim is absent.
    MissingClaim,
    /// `exp` has passed (with leeway).
    Expired,
    /// `nbf` is in the future (with leeway).
    NotYetValid,
    /// `iat` is in the future (with leeway).
    IssuedInFuture,
    /// `exp - iat` or `exp - now` is over `max_lifetime_seconds`.
    LifetimeTooLong,
    /// `iss` is not an accepted issuer.
    IssuerNotAllowed,
    /// `aud` does not intersect the accepted audiences.
    AudienceNotAllowed,
    /// The route needs scopes the token lacks.
    InsufficientScope,
    /// The route needs MFA (`amr` with `mfa` or `otp`) and the token lacks it.
    MfaRequired,
    /// The token's `jti` is on the deny-list.
    TokenRevoked,
    /// The token was issued before its user's revoke-all watermark.
    UserTokensRevoked,
    /// No key set has been loaded yet: a server condition, not the client's fault.
    KeysUnavailable,
    /// The deny-list could not answer and the policy fails closed.
    RevocationUnavailable,
}

impl DenyReason {
    /// Every reason, for hosts that define one counter per reason up front.
    pub const ALL: [DenyReason; 24] = [
        Self::TokenMissing,
        Self::InvalidRequest,
        Self::TokenTooLarge,
        Self::MalformedToken,
        Self::AlgorithmNotAllowed,
        Self::UnsupportedHeader,
        Self::TokenTypeNotAllowed,
        Self::UnknownKey,
        Self::KeyAlgorithmMismatch,
        Self::BadSignature,
        Self::InvalidClaim,
        Self::MissingClaim,
        Self::Expired,
        Self::NotYetValid,
        Self::IssuedInFuture,
        Self::LifetimeTooLong,
        Self::IssuerNotAllowed,
        Self::AudienceNotAllowed,
        Self::InsufficientScope,
        Self::MfaRequired,
        Self::TokenRevoked,
        Self::UserTokensRevoked,
        Self::KeysUnavailable,
        Self::RevocationUnavailable,
    ];

    /// Stable snake_case name for metrics and logs.
    pub fn code(self) -> &'static str {
        match self {
            Self::TokenMissing => "token_missing",
            Self::InvalidRequest => "invalid_request",
            Self::TokenTooLarge => "token_too_large",
            Self::MalformedToken => "malformed_token",
            Self::AlgorithmNotAllowed => "algorithm_not_allowed",
            Self::UnsupportedHeader => "unsupported_header",
            Self::TokenTypeNotAllowed => "token_type_not_allowed",
            Self::UnknownKey => "unknown_key",
            Self::KeyAlgorithmMismatch => "key_algorithm_mismatch",
            Self::BadSignature => "bad_signature",
            Self::InvalidClaim => "invalid_claim",
            Self::MissingClaim => "missing_claim",
            Self::Expired => "token_expired",
            Self::NotYetValid => "token_not_yet_valid",
            Self::IssuedInFuture => "issued_in_future",
            Self::LifetimeTooLong => "lifetime_too_long",
            Self::IssuerNotAllowed => "issuer_not_allowed",
            Self::AudienceNotAllowed => "audience_not_allowed",
            Self::InsufficientScope => "insufficient_scope",
            Self::MfaRequired => "mfa_required",
            Self::TokenRevoked => "token_revoked",
            Self::UserTokensRevoked => "user_tokens_revoked",
            Self::KeysUnavailable => "keys_unavailable",
            Self::RevocationUnavailable => "revocation_unavailable",
        }
    }

    /// HTTP status: 400 for a malformed request, 403 for a valid token without the rights,
    /// 503 for the verifier's own missing state, 401 for every token problem.
    pub fn status(self) -> u16 {
        match self {
            Self::InvalidRequest => 400,
            Self::InsufficientScope => 403,
            Self::KeysUnavailable | Self::RevocationUnavailable => 503,
            _ => 401,
        }
    }

    /// The RFC 6750 §3.1 (or RFC 9470 §3) error code, if the challenge carries one.
    pub fn bearer_error(self) -> Option<&'static str> {
        match self {
            Self::TokenMissing | Self::KeysUnavailable | Self::RevocationUnavailable => None,
            Self::InvalidRequest => Some("invalid_request"),
            Self::InsufficientScope => Some("insufficient_scope"),
            // RFC 9470: the token is fine, the authentication behind it is not strong enough.
            Self::MfaRequired => Some("insufficient_user_authentication"),
            _ => Some("invalid_token"),
        }
    }

    /// Human-readable `error_description`: says what failed, never echoes token contents.
    pub fn description(self) -> &'static str {
        match self {
            Self::TokenMissing => "No access token was presented",
            Self::InvalidRequest => "The request is malformed",
            Self::TokenTooLarge => "The access token is too large",
            Self::MalformedToken => "The access token is malformed",
            Self::AlgorithmNotAllowed => "The token's signing algorithm is not accepted",
            Self::UnsupportedHeader => "The token uses an unsupported header",
            Self::TokenTypeNotAllowed => "The token type is not accepted",
            Self::UnknownKey => "The token was signed with an unknown key",
            Self::KeyAlgorithmMismatch => "The token's algorithm does not match its key",
            Self::BadSignature => "The token signature is invalid",
            Self::InvalidClaim => "The token has an invalid claim",
            Self::MissingClaim => "The token lacks a required claim",
            Self::Expired => "The access token expired",
            Self::NotYetValid => "The access token is not yet valid",
            Self::IssuedInFuture => "The access token was issued in the future",
            Self::LifetimeTooLong => "The access token lifetime is too long",
            Self::IssuerNotAllowed => "The token issuer is not accepted",
            Self::AudienceNotAllowed => "The token audience is not accepted",
            Self::InsufficientScope => "The access token lacks a required scope",
            Self::MfaRequired => "Multi-factor authentication is required",
            Self::TokenRevoked => "The access token has been revoked",
            Self::UserTokensRevoked => "The access token has been revoked",
            Self::KeysUnavailable => "The verifier has no signing keys yet",
            Self::RevocationUnavailable => "Token revocation status is unavailable",
        }
    }
}

/// A refusal, with what the answer needs beyond the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// Why.
    pub reason: DenyReason,
    /// For [`DenyReason::InsufficientScope`]: the scopes the route needs (RFC 6750 §3 `scope`).
    pub required_scope: Option<String>,
    /// For [`DenyReason::MissingClaim`]/[`DenyReason::InvalidClaim`]: which claim, for logs.
    pub claim: Option<&'static str>,
}

impl From<DenyReason> for Denial {
    fn from(reason: DenyReason) -> Self {
        Self {
            reason,
            required_scope: None,
            claim: None,
        }
    }
}

impl Denial {
    pub(crate) fn claim(reason: DenyReason, claim: &'static str) -> Self {
        Self {
            reason,
            required_scope: None,
            claim: Some(claim),
        }
    }

    /// HTTP status.
    pub fn status(&self) -> u16 {
        self.reason.status()
    }

    /// The `WWW-Authenticate` value, absent on 503 answers.
    pub fn www_authenticate(&self, policy: &Policy) -> Option<String> {
        if self.status() == 503 {
            return None;
        }
        let mut params: Vec<String> = Vec::new();
        if let Some(realm) = &policy.realm {
            params.push(format!("realm=\"{realm}\""));
        }
        if let Some(error) = self.reason.bearer_error() {
            params.push(format!("error=\"{error}\""));
            params.push(format!(
                "error_description=\"{}\"",
                self.reason.description()
            ));
        }
        if let Some(scope) = &self.required_scope {
            params.push(format!("scope=\"{scope}\""));
        }
        Some(if params.is_empty() {
            "Bearer".to_string()
        } else {
            format!("Bearer {}", params.join(", "))
        })
    }

    /// `Retry-After` seconds, on 503 answers only.
    pub fn retry_after(&self, policy: &Policy) -> Option<u32> {
        (self.status() == 503).then_some(policy.retry_after_seconds)
    }

    /// The small JSON body: `{"error": ..., "error_description": ..., "reason": ...}`.
    pub fn body(&self) -> String {
        let error = match self.reason.bearer_error() {
            Some(e) => e,
            None if self.status() == 503 => "temporarily_unavailable",
            None => "unauthorized",
        };
        let body = serde_json::json!({
            "error": error,
            "error_description": self.reason.description(),
            "reason": self.reason.code(),
        });
        body.to_string()
    }

    /// Every header of the local reply to a request with `request_headers`, ready for a host to
    /// copy: the RFC 6750 ones, and CORS for a page on one of the policy's `cors` origins (so the
    /// page can tell a refusal from an outage; see the `cors` module).
    pub fn response_headers<H: Headers + ?Sized>(
        &self,
        policy: &Policy,
        request_headers: &H,
    ) -> Vec<(&'static str, String)> {
        let mut headers = Vec::with_capacity(8);
        headers.push(("content-type", "application/json".to_string()));
        headers.push(("cache-control", "no-store".to_string()));
        if let Some(value) = self.www_authenticate(policy) {
            headers.push(("www-authenticate", value));
        }
        if let Some(seconds) = self.retry_after(policy) {
            headers.push(("retry-after", seconds.to_string()));
        }
        headers.extend(refusal_headers(
            &policy.cors_allowed_origins,
            request_headers,
        ));
        headers
    }
}

/// One edit of the forwarded request's headers ([`Allowed::edits`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderEdit<'a> {
    /// Remove every value of a header the request carries.
    Remove(&'a str),
    /// Replace every value of a header the request carries, whatever the case of each, with
    /// this one.
    Replace(&'a str, &'a str),
    /// Add a header the request does not carry.
    Add(&'a str, &'a str),
}

/// A request the policy lets through.
#[derive(Debug, Clone)]
pub struct Allowed {
    /// The verified token, absent on public routes and CORS preflight.
    pub token: Option<VerifiedToken>,
    /// Lowercase names to remove (all values): each header the policy strips that the request
    /// carries (the identity headers in every `-`/`_` spelling, the others the policy names,
    /// `authorization` if it says so), even on public routes. The names are the policy's, shared
    /// rather than copied per request.
    pub remove_headers: Vec<Arc<str>>,
}

impl Allowed {
    /// The edits that make the forwarded request, in order, under `policy` (the one that decided
    /// it): the client's identity headers go, then the token's user id and scopes are set. The
    /// values are borrowed from the token, not built per request.
    ///
    /// `remove_headers` lists every identity header the request carries, and only identity
    /// headers are set, so a name set and not removed is one the request lacks: it is added,
    /// which a host (Envoy) does without first searching the request's headers for it. A name
    /// both removed and set is only replaced.
    pub fn edits<'a>(&'a self, policy: &'a Policy) -> impl Iterator<Item = HeaderEdit<'a>> {
        let forwarded = self.token.as_ref().map(|token| &token.checked.forwarded);
        let user_id = forwarded
            .and_then(|f| f.user_id.as_deref())
            .map(|value| (&*policy.user_id_header, value));
        let scope = forwarded.map(|f| (&*policy.scope_header, &*f.scope));
        let set = move || user_id.into_iter().chain(scope);
        let removed = &self.remove_headers;
        let is_set = move |name: &str| set().any(|(set, _)| set == name);
        let carried = |name: &str| removed.iter().any(|r| **r == *name);
        let removals = removed
            .iter()
            .filter(move |name| !is_set(name))
            .map(|name| HeaderEdit::Remove(name));
        let sets = set().map(move |(name, value)| {
            if carried(name) {
                HeaderEdit::Replace(name, value)
            } else {
                HeaderEdit::Add(name, value)
            }
        });
        removals.chain(sets)
    }
}

/// The core's answer for one request.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// Forward, after applying the header changes.
    Allow(Allowed),
    /// Answer locally with the denial's status, headers and body.
    Deny(Denial),
}

impl Verdict {
    /// The denial, if this is one.
    pub fn denial(&self) -> Option<&Denial> {
        match self {
            Self::Deny(d) => Some(d),
            Self::Allow(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(extra: &str) -> Policy {
        Policy::from_json(&format!(r#"{{"issuers":["i"],"audiences":["a"]{extra}}}"#))
            .expect("valid")
    }

    #[test]
    fn missing_token_challenge_has_no_error_attribute() {
        let d = Denial::from(DenyReason::TokenMissing);
        assert_eq!(d.status(), 401);
        assert_eq!(d.www_authenticate(&policy("")).as_deref(), Some("Bearer"));
        let with_realm = policy(r#","realm":"api""#);
        assert_eq!(
            d.www_authenticate(&with_realm).as_deref(),
            Some(r#"Bearer realm="api""#)
        );
    }

    #[test]
    fn invalid_token_challenge_names_error_and_description() {
        let d = Denial::from(DenyReason::Expired);
        assert_eq!(d.status(), 401);
        assert_eq!(
            d.www_authenticate(&policy("")).as_deref(),
            Some(r#"Bearer error="invalid_token", error_description="The access token expired""#)
        );
        let body: serde_json::Value = serde_json::from_str(&d.body()).expect("json");
        assert_eq!(body["error"], "invalid_token");
        assert_eq!(body["reason"], "token_expired");
    }

    #[test]
    fn insufficient_scope_is_403_with_scope_attribute() {
        let d = Denial {
            reason: DenyReason::InsufficientScope,
            required_scope: Some("orders:write".into()),
            claim: None,
        };
        assert_eq!(d.status(), 403);
        let header = d.www_authenticate(&policy("")).expect("challenge");
        assert!(header.contains(r#"error="insufficient_scope""#), "{header}");
        assert!(header.contains(r#"scope="orders:write""#), "{header}");
    }

    #[test]
    fn unavailable_states_are_503_with_retry_after_and_no_challenge() {
        for reason in [
            DenyReason::KeysUnavailable,
            DenyReason::RevocationUnavailable,
        ] {
            let d = Denial::from(reason);
            let p = policy(r#","retry_after_seconds":7"#);
            assert_eq!(d.status(), 503);
            assert_eq!(d.retry_after(&p), Some(7));
            assert_eq!(d.www_authenticate(&p), None);
            let no_headers: [(&str, &str); 0] = [];
            assert!(d
                .response_headers(&p, &no_headers[..])
                .contains(&("retry-after", "7".into())));
        }
    }

    #[test]
    fn refusals_carry_cors_for_a_listed_origin_only() {
        let p = policy(r#","cors":{"allowed_origins":["https://app.example.com"]}"#);
        let d = Denial::from(DenyReason::Expired);
        let from_app = [("origin", "https://app.example.com")];
        let headers = d.response_headers(&p, &from_app[..]);
        assert!(headers.contains(&("www-authenticate", d.www_authenticate(&p).expect("401"))));
        assert!(headers.contains(&(
            "access-control-allow-origin",
            "https://app.example.com".into()
        )));
        assert!(headers.contains(&("access-control-allow-credentials", "true".into())));
        assert!(headers.contains(&("vary", "origin".into())));
        let from_elsewhere = [("origin", "https://evil.example.com")];
        let headers = d.response_headers(&p, &from_elsewhere[..]);
        assert!(!headers
            .iter()
            .any(|(n, _)| n.starts_with("access-control-")));
        assert!(headers.contains(&("vary", "origin".into())));
        // No list: the reply is what it always was.
        let plain = policy("");
        assert_eq!(
            d.response_headers(&plain, &from_app[..]).len(),
            3,
            "content-type, cache-control, www-authenticate"
        );
    }

    #[test]
    fn codes_are_unique() {
        let mut codes: Vec<_> = DenyReason::ALL.iter().map(|r| r.code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), DenyReason::ALL.len());
    }
}
