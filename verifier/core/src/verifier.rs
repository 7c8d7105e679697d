//! Signature, then claims. The only module that can mint a [`VerifiedToken`].

use alloc::{borrow::ToOwned, sync::Arc};

use base64ct::{Base64UrlUnpadded, Encoding};
use jwt_compact::{
    alg::{Es256, Hs256, Rsa},
    Algorithm as JwtAlgorithm, AlgorithmSignature, Claims as JwtClaims,
};
use serde_json::Value;

use crate::{
    alg::Algorithm,
    config::{media_type_is, Policy, RequiredClaim},
    key_ring::{KeyMaterial, KeyRing, SelectError},
    token::{
        check_compact_form, Claims, ForwardedIdentity, RawClaims, SignatureChecked, TokenHeader,
        UntrustedHeader, VerifiedToken,
    },
    verdict::{Denial, DenyReason},
};

/// Proof that claims were validated after a signature check; its field is private to this
/// module, so no other code can build a [`VerifiedToken`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClaimsValid(());

/// Verifies one signature with jwt-compact's algorithm implementation.
///
/// jwt-compact's own `Validator` deserialises the claims *before* it checks the signature
/// (it assumes parsing is the cheaper step). Here the signature comes first, so a forged token's
/// payload is never parsed and a forgery always reads `bad_signature`, whatever its payload.
fn signature_verifies<A: JwtAlgorithm>(
    alg: &A,
    key: &A::VerifyingKey,
    signature: &[u8],
    signing_input: &[u8],
) -> bool {
    if A::Signature::LENGTH.is_some_and(|len| len.get() != signature.len()) {
        return false;
    }
    match A::Signature::try_from_slice(signature) {
        Ok(signature) => alg.verify_signature(&signature, key, signing_input),
        Err(_) => false,
    }
}

/// Half the order of P-256, rounded down (SEC 1 §2.4; the curve order `n` is FIPS 186-4 D.1.2.3).
const P256_HALF_ORDER: [u8; 32] = [
    0x7f, 0xff, 0xff, 0xff, 0x80, 0x00, 0x00, 0x00, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xde, 0x73, 0x7d, 0x56, 0xd3, 0x8b, 0xcf, 0x42, 0x79, 0xdc, 0xe5, 0x61, 0x7e, 0x31, 0x92, 0xa8,
];

/// Whether an ES256 signature (`r || s`, RFC 7518 §3.4) has `s` above half the order. ECDSA
/// verifies `(r, s)` and `(r, n - s)` alike, so anyone can turn one signed token into a second
/// text of it, which a cache, a log or a deny-list keyed on the text would take for another
/// token. Only the low half is accepted, as Bitcoin (BIP 62) and Ethereum (EIP-2) do. A signature
/// of the wrong length is left to the signature check, which refuses it.
fn is_high_s(signature: &[u8]) -> bool {
    signature.len() == 64 && signature[32..] > P256_HALF_ORDER[..]
}

/// Longest `sub` or `jti` accepted. Both travel in headers and deny-list keys.
pub const MAX_IDENTIFIER_BYTES: usize = 255;

/// Which `typ` a signed object must carry.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Expected {
    /// An access token: `typ` on the policy's allow-list (or absent, if the policy allows).
    AccessToken,
    /// Another kind of object signed with the same keys: exactly this `typ`, never absent.
    Type(&'static str),
}

/// The header rules that depend on the policy: `alg` accepted, `typ` as expected.
/// Run on every request, cache hits included, so a policy change applies at once.
fn check_header_policy(
    alg: Algorithm,
    typ: Option<&str>,
    policy: &Policy,
    expected: Expected,
) -> Result<(), Denial> {
    // RFC 8725 §3.1: the algorithm comes from the policy and the key, never from the token alone.
    if !policy.algorithms.contains(&alg) {
        return Err(DenyReason::AlgorithmNotAllowed.into());
    }
    // RFC 8725 §3.11 explicit typing: objects of other kinds signed with the same keys (such as
    // the origin's signed revocation messages) must not pass as access tokens, nor the reverse.
    let allowed = match (typ, expected) {
        (None, Expected::AccessToken) => policy.allow_missing_type,
        (Some(typ), Expected::AccessToken) => {
            policy.token_types.iter().any(|t| media_type_is(typ, t))
        }
        (None, Expected::Type(_)) => false,
        (Some(typ), Expected::Type(wanted)) => media_type_is(typ, wanted),
    };
    if allowed {
        Ok(())
    } else {
        Err(DenyReason::TokenTypeNotAllowed.into())
    }
}

/// Checks everything but the claims: size, form, header rules, key selection, signature.
/// Used alone by `edge-verify --signature-only`.
pub fn check_signature(
    token: &str,
    keys: &KeyRing,
    policy: &Policy,
) -> Result<SignatureChecked, Denial> {
    check_signature_as(token, keys, policy, Expected::AccessToken)
}

/// [`check_signature`] for a signed object of the `expected` kind.
pub(crate) fn check_signature_as(
    token: &str,
    keys: &KeyRing,
    policy: &Policy,
    expected: Expected,
) -> Result<SignatureChecked, Denial> {
    let prepared = prepare_signature(token, keys, policy, expected)?;
    let valid = prepared.verify_here(keys);
    prepared.complete(valid)
}

/// A token that passed every check up to its signature; the signature itself is checked by the
/// core ([`Prepared::verify_here`]) or by the host's own crypto, then [`Prepared::complete`].
/// Owns what it needs (the token text, not a borrow), so a host may await in between.
#[derive(Debug, Clone)]
pub(crate) struct Prepared {
    pub(crate) alg: Algorithm,
    header: TokenHeader,
    pub(crate) key_thumbprint: crate::key_ring::Thumbprint,
    pub(crate) signature: alloc::vec::Vec<u8>,
    token: alloc::string::String,
    /// `header.payload` is `token[..signing_input_len]`: the bytes the signature covers.
    signing_input_len: usize,
    /// Where the payload's base64url text starts in the token.
    payload_start: usize,
}

/// Everything but the signature: size, form, header rules, key selection.
pub(crate) fn prepare_signature(
    token: &str,
    keys: &KeyRing,
    policy: &Policy,
    expected: Expected,
) -> Result<Prepared, Denial> {
    // Size first: nothing is decoded for an oversized token (RFC 8725 §3.5 spirit, DoS bound).
    if token.len() > policy.max_token_bytes {
        return Err(DenyReason::TokenTooLarge.into());
    }
    let [header_b64, payload_b64, signature_b64] = check_compact_form(token)?;
    let header_json =
        Base64UrlUnpadded::decode_vec(header_b64).map_err(|_| DenyReason::MalformedToken)?;
    // RFC 7515 §4: the header is a JSON object. Derived deserialisation would also read an array
    // positionally (`["EdDSA"]` as `alg`), a second spelling of one header.
    if header_json.trim_ascii_start().first() != Some(&b'{') {
        return Err(DenyReason::MalformedToken.into());
    }
    let header: UntrustedHeader =
        serde_json::from_slice(&header_json).map_err(|_| DenyReason::MalformedToken)?;

    // Exact spelling only, so `none`, `NONE` and `nOnE` are unknown names.
    let alg = Algorithm::from_name(&header.alg).ok_or(DenyReason::AlgorithmNotAllowed)?;
    // `crit` (RFC 7515 §4.1.11): no extension is understood, so any `crit`, even null, refuses.
    // `b64` (RFC 7797): anything but `true` changes what was signed. `cty`: nested JWTs and
    // other content types are not access tokens (RFC 7519 §5.2).
    if header.crit || header.cty || header.b64.as_ref().is_some_and(|b| b != &Value::Bool(true)) {
        return Err(DenyReason::UnsupportedHeader.into());
    }
    check_header_policy(alg, header.typ.as_deref(), policy, expected)?;

    let key = keys
        .select(header.kid.as_deref(), alg)
        .map_err(|e| match e {
            SelectError::UnknownKid => DenyReason::UnknownKey,
            SelectError::AlgorithmMismatch => DenyReason::KeyAlgorithmMismatch,
        })?;
    // The typed key fixes the algorithm: a P-256 key can only ever run ES256, whatever `alg` says.
    let pairs = matches!(
        (&key.material, alg),
        (KeyMaterial::Ed25519(_), Algorithm::EdDsa)
            | (KeyMaterial::P256(_), Algorithm::Es256)
            | (KeyMaterial::Rsa(_), Algorithm::Rs256 | Algorithm::Ps256)
            | (KeyMaterial::Hmac(_), Algorithm::Hs256)
    );
    if !pairs {
        return Err(DenyReason::KeyAlgorithmMismatch.into());
    }
    let signature =
        Base64UrlUnpadded::decode_vec(signature_b64).map_err(|_| DenyReason::MalformedToken)?;
    // Checked here, not in the signature primitive, because the Worker's WebCrypto and Envoy's
    // BoringSSL accept both halves: every host must refuse the same texts.
    if alg == Algorithm::Es256 && is_high_s(&signature) {
        return Err(DenyReason::BadSignature.into());
    }
    Ok(Prepared {
        alg,
        header: TokenHeader {
            alg,
            kid: header.kid,
            typ: header.typ,
        },
        key_thumbprint: key.thumbprint().to_owned(),
        signature,
        token: token.to_owned(),
        // The signing input is the header and payload text exactly as received.
        signing_input_len: header_b64.len() + 1 + payload_b64.len(),
        payload_start: header_b64.len() + 1,
    })
}

impl Prepared {
    /// Verifies the signature with the core's own implementations, against the key in `keys`
    /// with the thumbprint chosen at preparation (none: invalid).
    pub(crate) fn verify_here(&self, keys: &KeyRing) -> bool {
        self.ring_key(keys).is_some_and(|key| self.verify_with(key))
    }

    /// The key chosen at preparation, if `keys` still holds it.
    pub(crate) fn ring_key<'k>(&self, keys: &'k KeyRing) -> Option<&'k crate::key_ring::RingKey> {
        keys.keys()
            .iter()
            .find(|k| k.thumbprint() == &self.key_thumbprint)
    }

    /// The bytes the signature covers.
    pub(crate) fn signing_input(&self) -> &[u8] {
        &self.token.as_bytes()[..self.signing_input_len]
    }

    fn verify_with(&self, key: &crate::key_ring::RingKey) -> bool {
        let signature = &self.signature;
        let input = self.signing_input();
        match (&key.material, self.alg) {
            (KeyMaterial::Ed25519(k), Algorithm::EdDsa) => k.verifies(input, signature),
            (KeyMaterial::P256(k), Algorithm::Es256) => {
                signature_verifies(&Es256, k, signature, input)
            }
            (KeyMaterial::Rsa(k), Algorithm::Rs256) => {
                signature_verifies(&Rsa::rs256(), k, signature, input)
            }
            (KeyMaterial::Rsa(k), Algorithm::Ps256) => {
                signature_verifies(&Rsa::ps256(), k, signature, input)
            }
            (KeyMaterial::Hmac(k), Algorithm::Hs256) => {
                signature_verifies(&Hs256, k, signature, input)
            }
            _ => false,
        }
    }

    /// Turns the signature's verdict into the checked token: only now is the payload decoded and
    /// parsed. The signer produced these bytes, so a bad payload is a bad claim. jwt-compact's
    /// `Claims` reads the registered time claims.
    pub(crate) fn complete(self, valid: bool) -> Result<SignatureChecked, Denial> {
        if !valid {
            return Err(DenyReason::BadSignature.into());
        }
        let payload_b64 = &self.token[self.payload_start..self.signing_input_len];
        let payload =
            Base64UrlUnpadded::decode_vec(payload_b64).map_err(|_| DenyReason::MalformedToken)?;
        let claims: JwtClaims<RawClaims> = serde_json::from_slice(&payload)
            .map_err(|_| Denial::claim(DenyReason::InvalidClaim, "payload"))?;
        let claims = Claims::from_parts(
            claims.custom,
            claims.expiration.map(|t| t.timestamp()),
            claims.not_before.map(|t| t.timestamp()),
            claims.issued_at.map(|t| t.timestamp()),
        );
        Ok(SignatureChecked {
            header: self.header,
            forwarded: ForwardedIdentity::of(&claims),
            claims,
            key_thumbprint: self.key_thumbprint,
        })
    }
}

/// Re-checks a token verified earlier against the policy and ring in force now: the header
/// policy, then every claim rule that the policy or the clock decides; the signature and what the
/// token's text alone decides are not recomputed. `None` when the token's
/// `kid` no longer selects the very key that verified it (a retired key, a re-pointed `kid`, a
/// narrowed JWK `alg`): the caller must verify afresh, so a cache never changes an answer.
pub(crate) fn revalidate(
    cached: VerifiedToken,
    now: i64,
    keys: &KeyRing,
    policy: &Policy,
) -> Option<Result<VerifiedToken, Denial>> {
    let checked = cached.checked;
    let same_key = keys
        .select(checked.header.kid.as_deref(), checked.header.alg)
        .is_ok_and(|key| key.thumbprint() == &checked.key_thumbprint);
    if !same_key {
        return None;
    }
    Some(
        check_header_policy(
            checked.header.alg,
            checked.header.typ.as_deref(),
            policy,
            Expected::AccessToken,
        )
        .and_then(|()| {
            // The checks of the text alone (`check_identifiers`) passed when the token was
            // cached under its exact text and cannot change; the rest run in the full check's
            // order, so a hit refuses for the same reason as a miss.
            check_required(&checked.claims, policy)?;
            valid_at(checked, now, policy)
        }),
    )
}

/// Header values must be visible ASCII: a `sub` with CR/LF would inject headers upstream, and
/// one host rejecting a byte another accepts would break "same verdict everywhere".
pub(crate) fn is_header_safe(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= MAX_IDENTIFIER_BYTES
        && value.bytes().all(|b| (0x21..0x7f).contains(&b))
}

/// RFC 6749 §3.3 scope-token: %x21 / %x23-5B / %x5D-7E.
fn is_scope_token(value: &str) -> bool {
    !value.is_empty()
        && value
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
}

/// Time rules, shared by the full check and the cache-hit path.
/// RFC 7519 §4.1.4: reject on or after `exp`; §4.1.5: before `nbf`; leeway on each side.
fn check_time(claims: &Claims, now: i64, policy: &Policy) -> Result<(), Denial> {
    let exp = claims
        .exp
        .ok_or(Denial::claim(DenyReason::MissingClaim, "exp"))?;
    if now >= exp.saturating_add(policy.leeway) {
        return Err(DenyReason::Expired.into());
    }
    if let Some(nbf) = claims.nbf {
        if now.saturating_add(policy.leeway) < nbf {
            return Err(DenyReason::NotYetValid.into());
        }
    }
    if let Some(iat) = claims.iat {
        if iat > now.saturating_add(policy.leeway) {
            return Err(DenyReason::IssuedInFuture.into());
        }
        if exp.saturating_sub(iat) > policy.max_lifetime {
            return Err(DenyReason::LifetimeTooLong.into());
        }
    }
    // Without `iat` the lifetime is unknown, but no token may outlive the bound from now on.
    if exp.saturating_sub(now) > policy.max_lifetime.saturating_add(policy.leeway) {
        return Err(DenyReason::LifetimeTooLong.into());
    }
    Ok(())
}

/// Validates the claims of a signature-checked token at `now`.
pub fn validate_claims(
    checked: SignatureChecked,
    now: i64,
    policy: &Policy,
) -> Result<VerifiedToken, Denial> {
    validate_shared(Arc::new(checked), now, policy)
}

fn validate_shared(
    checked: Arc<SignatureChecked>,
    now: i64,
    policy: &Policy,
) -> Result<VerifiedToken, Denial> {
    check_required(&checked.claims, policy)?;
    check_identifiers(&checked.claims)?;
    valid_at(checked, now, policy)
}

/// The last checks of a full validation and of a cache hit's: the clock's, the issuer's and the
/// audience's; the verified token if they pass.
fn valid_at(
    checked: Arc<SignatureChecked>,
    now: i64,
    policy: &Policy,
) -> Result<VerifiedToken, Denial> {
    check_time_and_audience(&checked.claims, now, policy)?;
    Ok(VerifiedToken {
        checked,
        _proof: ClaimsValid(()),
    })
}

/// The claims the policy requires.
fn check_required(claims: &Claims, policy: &Policy) -> Result<(), Denial> {
    for required in &policy.required_claims {
        let present = match required {
            RequiredClaim::Sub => claims.sub.is_some(),
            RequiredClaim::Jti => claims.jti.is_some(),
            RequiredClaim::Iat => claims.iat.is_some(),
            RequiredClaim::Nbf => claims.nbf.is_some(),
            RequiredClaim::Iss => claims.iss.is_some(),
            RequiredClaim::Aud => !claims.aud.is_empty(),
            RequiredClaim::Scope => claims.has_scope,
        };
        if !present {
            return Err(Denial::claim(DenyReason::MissingClaim, required.name()));
        }
    }
    Ok(())
}

/// What the token's text alone decides, whatever the policy and the time: identifiers safe to
/// forward and to key the deny-list, scopes that are scope tokens.
fn check_identifiers(claims: &Claims) -> Result<(), Denial> {
    if let Some(sub) = &claims.sub {
        if !is_header_safe(sub) {
            return Err(Denial::claim(DenyReason::InvalidClaim, "sub"));
        }
    }
    if let Some(jti) = &claims.jti {
        if !is_header_safe(jti) {
            return Err(Denial::claim(DenyReason::InvalidClaim, "jti"));
        }
    }
    if let Some(sid) = &claims.sid {
        if !is_header_safe(sid) {
            return Err(Denial::claim(DenyReason::InvalidClaim, "sid"));
        }
    }
    if !claims.scope.iter().all(|s| is_scope_token(s)) {
        return Err(Denial::claim(DenyReason::InvalidClaim, "scope"));
    }
    Ok(())
}

/// The clock, the issuer and the audience.
fn check_time_and_audience(claims: &Claims, now: i64, policy: &Policy) -> Result<(), Denial> {
    check_time(claims, now, policy)?;
    // RFC 7519 §4.1.1 / RFC 8725 §3.8: exact issuer match.
    match &claims.iss {
        Some(iss) if policy.issuers.iter().any(|i| i == iss) => {}
        Some(_) => return Err(DenyReason::IssuerNotAllowed.into()),
        None => return Err(Denial::claim(DenyReason::MissingClaim, "iss")),
    }
    // RFC 7519 §4.1.3 / RFC 8725 §3.9: a token for another service must not be replayed here.
    if claims.aud.is_empty() {
        return Err(Denial::claim(DenyReason::MissingClaim, "aud"));
    }
    if !claims.aud.iter().any(|a| policy.audiences.contains(a)) {
        return Err(DenyReason::AudienceNotAllowed.into());
    }
    Ok(())
}

/// Signature and claims in one call.
pub fn verify_token(
    token: &str,
    now: i64,
    keys: &KeyRing,
    policy: &Policy,
) -> Result<VerifiedToken, Denial> {
    let checked = check_signature(token, keys, policy)?;
    validate_claims(checked, now, policy)
}
