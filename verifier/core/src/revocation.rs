//! Signed revocation messages: the origin's feed entries, checked with the keys the edge already
//! holds for access tokens, so pushing a revocation to an edge needs no shared secret.
//!
//! A message is a compact JWS with `typ: edgeauth-revocation+jwt` (RFC 8725 §3.11: its own type,
//! so a message can never pass as an access token, nor an access token as a message) and the
//! payload `{"iss", "seq", "jti", "exp", "iat"}`: the access token `jti` is revoked until `exp`,
//! the revoked token's own expiry, after which the entry is of no use.

use alloc::{string::String, vec::Vec};

use crate::{
    config::Policy,
    key_ring::KeyRing,
    verdict::{Denial, DenyReason},
    verifier::{check_signature_as, is_header_safe, Expected},
};

/// The `typ` of a revocation message.
pub const REVOCATION_TYPE: &str = "edgeauth-revocation+jwt";

/// One page of the origin's revocation feed (`GET /v1/revocations?after=<cursor>&limit=<n>`), as
/// every edge reads it: the entries after the cursor, oldest first, and the cursor to ask from
/// next. Each entry's message is checked with [`verify_revocation`] before it is believed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct FeedPage {
    /// The entries, in `seq` order.
    pub entries: Vec<FeedEntry>,
    /// The cursor after this page.
    pub next: u64,
}

/// One entry of the feed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct FeedEntry {
    /// Its position in the feed.
    pub seq: u64,
    /// The signed revocation message.
    pub jws: String,
}

/// A revocation the origin signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// The revoked access token's `jti`.
    pub jti: String,
    /// Until when it must be refused (the token's `exp`), seconds since the epoch.
    pub expires_at: i64,
}

/// Why a message was not accepted. The [`Denial`] says what failed, in the same terms as an
/// access token's verdict.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RevocationError {
    /// Not a message the origin signed for this policy (form, type, key, signature, issuer,
    /// `jti`).
    #[error("revocation message rejected: {}", .0.reason.code())]
    Invalid(Denial),
    /// Signed and well formed, but what it revokes has expired: nothing to store.
    #[error("revocation message has expired")]
    Expired,
}

/// Checks a revocation message at `now`: its signature against `keys`, its `typ`, and its `iss`
/// against the policy's issuers.
pub fn verify_revocation(
    message: &str,
    now: i64,
    keys: &KeyRing,
    policy: &Policy,
) -> Result<Revocation, RevocationError> {
    let invalid = |reason: DenyReason, claim: &'static str| {
        RevocationError::Invalid(Denial::claim(reason, claim))
    };
    let checked = check_signature_as(message, keys, policy, Expected::Type(REVOCATION_TYPE))
        .map_err(RevocationError::Invalid)?;
    let claims = checked.claims;
    if !claims
        .iss
        .as_ref()
        .is_some_and(|iss| policy.issuers.contains(iss))
    {
        return Err(invalid(DenyReason::IssuerNotAllowed, "iss"));
    }
    let Some(jti) = claims.jti.filter(|jti| is_header_safe(jti)) else {
        return Err(invalid(DenyReason::InvalidClaim, "jti"));
    };
    let Some(expires_at) = claims.exp else {
        return Err(invalid(DenyReason::MissingClaim, "exp"));
    };
    // The token it revokes is refused by its own `exp` from here on (leeway included).
    if expires_at.saturating_add(policy.leeway) <= now {
        return Err(RevocationError::Expired);
    }
    Ok(Revocation { jti, expires_at })
}
