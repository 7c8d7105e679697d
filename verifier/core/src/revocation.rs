//! Signed revocation messages: the origin's feed entries, checked with the keys the edge already
//! holds for access tokens, so pushing a revocation to an edge needs no shared secret.
//!
//! A message is a compact JWS with `typ: edgeauth-revocation+jwt` (RFC 8725 §3.11: its own type,
//! so a message can never pass as an access token, nor an access token as a message). Two kinds:
//! - `{"iss", "seq", "jti", "exp", "iat"}`: the access token `jti` is revoked until `exp`, the
//!   revoked token's own expiry, after which the entry is of no use;
//! - `{"iss", "seq", "sid", "exp", "iat"}` without `jti` (logout, a session ended, refresh-token
//!   reuse): every access token of session `sid` is revoked until `exp`, when the last one the
//!   session was issued has expired. The session can mint no more (its refresh tokens are
//!   refused in the same step), so one entry covers the tokens a thief refreshed too;
//! - `{"iss", "seq", "sub", "iat", "exp"}` without `jti` or `sid` (revoke-all): every access token
//!   of `sub` issued at or before `iat` is revoked; the entry matters until `exp`, when the last
//!   of them has expired.

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

/// A revocation the origin signed. Serialised (tagged by `kind`) for hosts that hand checked
/// revocations between their own threads or VMs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Revocation {
    /// One access token.
    Token {
        /// Its `jti`.
        jti: String,
        /// Until when it must be refused (the token's `exp`), seconds since the epoch.
        expires_at: i64,
    },
    /// Every access token of one session.
    Session {
        /// The tokens' `sid`.
        sid: String,
        /// When the last token of the session has expired.
        expires_at: i64,
    },
    /// Every access token of one user issued at or before a moment: the answer to
    /// [`crate::WatermarkStatus::RevokedThrough`].
    User {
        /// The user's `sub`.
        subject: String,
        /// Tokens with `iat` up to this (seconds) are revoked.
        revoked_through: i64,
        /// When the last such token has expired: the entry matters until then.
        expires_at: i64,
    },
}

impl Revocation {
    /// Until when the entry matters, seconds since the epoch (before leeway).
    pub fn expires_at(&self) -> i64 {
        match self {
            Self::Token { expires_at, .. }
            | Self::Session { expires_at, .. }
            | Self::User { expires_at, .. } => *expires_at,
        }
    }

    /// Until when a deny-list must keep it: as long as a token it revokes can still pass, that
    /// is its expiry plus the verifier's leeway (RFC 7519 §4.1.4). Kept any shorter, a revoked
    /// token would work again in the last `leeway` seconds of its life.
    pub fn holds_until(&self, leeway: i64) -> i64 {
        self.expires_at().saturating_add(leeway)
    }
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
    let Some(expires_at) = claims.exp else {
        return Err(invalid(DenyReason::MissingClaim, "exp"));
    };
    let revocation = match (claims.jti, claims.sid, claims.sub, claims.iat) {
        (Some(jti), _, _, _) if is_header_safe(&jti) => Revocation::Token { jti, expires_at },
        (Some(_), _, _, _) => return Err(invalid(DenyReason::InvalidClaim, "jti")),
        (None, Some(sid), _, _) if is_header_safe(&sid) => Revocation::Session { sid, expires_at },
        (None, Some(_), _, _) => return Err(invalid(DenyReason::InvalidClaim, "sid")),
        (None, None, Some(subject), Some(revoked_through)) if is_header_safe(&subject) => {
            Revocation::User {
                subject,
                revoked_through,
                expires_at,
            }
        }
        (None, None, Some(_), Some(_)) => return Err(invalid(DenyReason::InvalidClaim, "sub")),
        (None, None, _, _) => return Err(invalid(DenyReason::MissingClaim, "jti")),
    };
    // What it revokes is refused by its own `exp` from here on (leeway included).
    if expires_at.saturating_add(policy.leeway) <= now {
        return Err(RevocationError::Expired);
    }
    Ok(revocation)
}
