//! Token text before and after verification.
//!
//! [`UntrustedHeader`] is what may be read before the signature is checked: only what is needed
//! to pick a key. [`VerifiedToken`] can only be built by `verifier.rs`, which requires a proof
//! that the signature verified; [`crate::verdict::Allowed`] holds one.

use alloc::{boxed::Box, string::String, sync::Arc, vec::Vec};

use serde::{de::IgnoredAny, Deserialize, Serialize};

use crate::{alg::Algorithm, key_ring::Thumbprint, verdict::DenyReason};

/// The header members the core reads. Derived deserialisation refuses a member given twice
/// (RFC 7515 §5.2 lets a parser refuse duplicates; taking the last one would let `alg`
/// say one thing to a logging proxy and another here).
#[derive(Debug, Deserialize)]
pub(crate) struct UntrustedHeader {
    pub alg: String,
    #[serde(default)]
    pub kid: Option<String>,
    #[serde(default)]
    pub typ: Option<String>,
    /// Critical extensions (RFC 7515 §4.1.11): none is understood, so its mere presence
    /// (even as `null`) refuses the token.
    #[serde(default, deserialize_with = "present")]
    pub crit: bool,
    /// RFC 7797 unencoded payloads change what is signed; anything but `true` refuses.
    #[serde(default, deserialize_with = "some_value")]
    pub b64: Option<serde_json::Value>,
    /// Content type: nested JWTs are not access tokens; present at all refuses.
    #[serde(default, deserialize_with = "present")]
    pub cty: bool,
}

/// `true` for a member that is present, whatever its value: `Option` would read `null` as absent.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    IgnoredAny::deserialize(d).map(|_| true)
}

/// `Some` for a member that is present, `null` included.
fn some_value<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<serde_json::Value>, D::Error> {
    serde_json::Value::deserialize(d).map(Some)
}

/// Checks the compact serialisation before any decoding: exactly three segments of canonical
/// unpadded base64url. Non-canonical encodings (set trailing bits, a length of 4n+1) decode to
/// the same bytes as the canonical text, so two strings would name one token and a cache or
/// deny-list keyed on the text could be sidestepped.
pub(crate) fn check_compact_form(token: &str) -> Result<[&str; 3], DenyReason> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(DenyReason::MalformedToken);
    };
    for segment in [header, payload, signature] {
        if !is_canonical_base64url(segment) {
            return Err(DenyReason::MalformedToken);
        }
    }
    Ok([header, payload, signature])
}

fn sextet(b: u8) -> Option<u8> {
    Some(match b {
        b'A'..=b'Z' => b - b'A',
        b'a'..=b'z' => b - b'a' + 26,
        b'0'..=b'9' => b - b'0' + 52,
        b'-' => 62,
        b'_' => 63,
        _ => return None,
    })
}

fn is_canonical_base64url(segment: &str) -> bool {
    let bytes = segment.as_bytes();
    if bytes.is_empty() || bytes.len() % 4 == 1 {
        return false;
    }
    let mut last = 0;
    for &b in bytes {
        match sextet(b) {
            Some(v) => last = v,
            None => return false,
        }
    }
    match bytes.len() % 4 {
        2 => last & 0x0f == 0,
        3 => last & 0x03 == 0,
        _ => true,
    }
}

/// `aud` as a single string or an array (RFC 7519 §4.1.3).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// `scope` as a space-delimited string (RFC 9068 §2.2.3) or an array.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ScopeClaim {
    Text(String),
    List(Vec<String>),
}

/// The non-time claims read from the payload; the time claims come from jwt-compact's `Claims`.
#[derive(Debug, Deserialize)]
pub(crate) struct RawClaims {
    #[serde(default)]
    iss: Option<String>,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    aud: Option<OneOrMany>,
    #[serde(default)]
    jti: Option<String>,
    /// Any JSON value, so that a malformed `sid` is refused by name rather than as a malformed
    /// payload.
    #[serde(default)]
    sid: Option<serde_json::Value>,
    #[serde(default)]
    scope: Option<ScopeClaim>,
    #[serde(default)]
    amr: Option<Vec<String>>,
}

/// The claims the core understands, as plain data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Claims {
    /// `iss`
    pub iss: Option<String>,
    /// `sub`: the user id forwarded upstream.
    pub sub: Option<String>,
    /// `aud`, always as a list.
    pub aud: Vec<String>,
    /// `jti`: the deny-list key.
    pub jti: Option<String>,
    /// `sid` (OpenID Connect Front-Channel Logout §3): the session the token belongs to, the
    /// deny-list key of a logout. A `sid` that is not a string is kept as `Some("")`, which
    /// validation refuses.
    pub sid: Option<String>,
    /// Scopes, from a space-delimited `scope` or an array.
    pub scope: Vec<String>,
    /// Whether `scope` was present at all.
    #[serde(skip)]
    pub has_scope: bool,
    /// `amr` (RFC 8176).
    pub amr: Vec<String>,
    /// `exp`, seconds since the epoch.
    pub exp: Option<i64>,
    /// `nbf`
    pub nbf: Option<i64>,
    /// `iat`
    pub iat: Option<i64>,
}

impl Claims {
    pub(crate) fn from_parts(
        raw: RawClaims,
        exp: Option<i64>,
        nbf: Option<i64>,
        iat: Option<i64>,
    ) -> Self {
        let has_scope = raw.scope.is_some();
        let scope = match raw.scope {
            Some(ScopeClaim::Text(text)) => text
                .split(' ')
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
            Some(ScopeClaim::List(list)) => list,
            None => Vec::new(),
        };
        let aud = match raw.aud {
            Some(OneOrMany::One(a)) => alloc::vec![a],
            Some(OneOrMany::Many(list)) => list,
            None => Vec::new(),
        };
        Self {
            iss: raw.iss,
            sub: raw.sub,
            aud,
            jti: raw.jti,
            sid: raw.sid.map(|sid| match sid {
                serde_json::Value::String(sid) => sid,
                _ => String::new(),
            }),
            scope,
            has_scope,
            amr: raw.amr.unwrap_or_default(),
            exp,
            nbf,
            iat,
        }
    }
}

/// Header facts of a token whose signature verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenHeader {
    /// `alg`
    pub alg: Algorithm,
    /// `kid`
    pub kid: Option<String>,
    /// `typ`
    pub typ: Option<String>,
}

/// A token whose signature verified under a ring key, claims not yet validated.
/// It cannot become an [`crate::verdict::Allowed`]; only [`VerifiedToken`] can.
#[derive(Debug, Clone)]
pub struct SignatureChecked {
    /// Header facts.
    pub header: TokenHeader,
    /// Claims as signed.
    pub claims: Claims,
    /// Thumbprint of the key that verified it.
    pub key_thumbprint: Thumbprint,
    /// What an allowed request forwards from the claims (`sub`, and the scopes joined by
    /// spaces), made once here so that a cache hit shares them instead of copying them.
    pub(crate) forwarded: ForwardedIdentity,
}

/// The identity header values an allowed request carries upstream: made once per verified
/// token, then borrowed by every request it allows ([`crate::Allowed::edits`]).
#[derive(Debug, Clone)]
pub(crate) struct ForwardedIdentity {
    pub(crate) user_id: Option<Box<str>>,
    pub(crate) scope: Box<str>,
}

impl ForwardedIdentity {
    pub(crate) fn of(claims: &Claims) -> Self {
        Self {
            user_id: claims.sub.as_deref().map(Box::from),
            scope: claims.scope.join(" ").into(),
        }
    }
}

/// A token that passed signature and claim checks at some `now`. Built only in `verifier.rs`.
#[derive(Debug, Clone)]
pub struct VerifiedToken {
    // Shared so a cache hit hands out the token without copying its claims.
    pub(crate) checked: Arc<SignatureChecked>,
    pub(crate) _proof: crate::verifier::ClaimsValid,
}

impl VerifiedToken {
    /// Header facts.
    pub fn header(&self) -> &TokenHeader {
        &self.checked.header
    }

    /// The verified claims.
    pub fn claims(&self) -> &Claims {
        &self.checked.claims
    }

    /// Thumbprint of the key that verified the signature.
    pub fn key_thumbprint(&self) -> &Thumbprint {
        &self.checked.key_thumbprint
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_form_needs_exactly_three_segments() {
        assert!(check_compact_form("eyJh.eyJh.c2ln").is_ok());
        for bad in [
            "eyJh.eyJh",
            "eyJh.eyJh.c2ln.eA",
            "",
            "..",
            "eyJh..c2ln",
            "eyJh.eyJh.",
        ] {
            assert_eq!(
                check_compact_form(bad),
                Err(DenyReason::MalformedToken),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn base64url_must_be_canonical_and_unpadded() {
        // "QQ" is canonical for b"A"; "QR" decodes to the same byte with stray trailing bits.
        assert!(is_canonical_base64url("QQ"));
        assert!(!is_canonical_base64url("QR"));
        // "QUI" is canonical for b"AB"; "QUJ" sets trailing bits.
        assert!(is_canonical_base64url("QUI"));
        assert!(!is_canonical_base64url("QUJ"));
        assert!(!is_canonical_base64url("QQ=="));
        assert!(!is_canonical_base64url("Q"));
        assert!(!is_canonical_base64url("a+b/"));
        assert!(!is_canonical_base64url("ab c"));
    }

    #[test]
    fn scope_reads_as_string_or_array() {
        let text: RawClaims = serde_json::from_str(r#"{"scope":"a  b c"}"#).expect("json");
        assert_eq!(
            Claims::from_parts(text, None, None, None).scope,
            ["a", "b", "c"]
        );
        let list: RawClaims = serde_json::from_str(r#"{"scope":["a","b"]}"#).expect("json");
        assert_eq!(Claims::from_parts(list, None, None, None).scope, ["a", "b"]);
    }

    #[test]
    fn audience_reads_as_string_or_array() {
        let one: RawClaims = serde_json::from_str(r#"{"aud":"api"}"#).expect("json");
        assert_eq!(Claims::from_parts(one, None, None, None).aud, ["api"]);
        let many: RawClaims = serde_json::from_str(r#"{"aud":["x","api"]}"#).expect("json");
        assert_eq!(Claims::from_parts(many, None, None, None).aud, ["x", "api"]);
    }

    #[test]
    fn duplicate_header_members_are_refused() {
        let dup = serde_json::from_str::<UntrustedHeader>(r#"{"alg":"EdDSA","alg":"none"}"#);
        assert!(dup.is_err());
    }
}
