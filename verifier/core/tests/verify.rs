//! Token-level rules: keys, header, signature, claims. Each test names the rule it pins.

use edgeauth_core::{check_signature, verify_token, DenyReason, JwksError, KeyRing, SkipReason};
use serde_json::json;

use crate::shared::*;

fn reason(result: Result<impl std::fmt::Debug, edgeauth_core::Denial>) -> DenyReason {
    result.expect_err("token should be refused").reason
}

#[test]
fn every_supported_algorithm_verifies() {
    let p = policy("");
    let r = standard_ring(&p);
    for (signer, kid) in [
        (Signer::ed25519(1), "current"),
        (Signer::es256(7), "ec"),
        (Signer::rs256(), "rsa"),
        (Signer::ps256(), "rsa"),
    ] {
        let t = good_token(&signer, kid);
        let v = verify_token(&t, NOW, &r, &p).unwrap_or_else(|d| panic!("{}: {d:?}", signer.alg()));
        assert_eq!(v.header().alg.name(), signer.alg());
        assert_eq!(
            v.claims().sub.as_deref(),
            Some("3f1c2a9e-7b4d-4c1a-9e2f-0a1b2c3d4e5f")
        );
        assert_eq!(v.claims().scope, ["profile", "orders:read"]);
    }
}

#[test]
fn previous_key_verifies_and_retired_key_does_not() {
    let p = policy("");
    let r = standard_ring(&p);
    assert!(verify_token(&good_token(&Signer::ed25519(2), "previous"), NOW, &r, &p).is_ok());
    // The retired key is no longer in the set: its kid is unknown...
    let retired = good_token(&Signer::ed25519(3), "retired");
    assert_eq!(
        reason(verify_token(&retired, NOW, &r, &p)),
        DenyReason::UnknownKey
    );
    // ...and naming a current kid does not help it.
    let forged = good_token(&Signer::ed25519(3), "current");
    assert_eq!(
        reason(verify_token(&forged, NOW, &r, &p)),
        DenyReason::BadSignature
    );
}

#[test]
fn alg_none_is_refused_in_any_casing() {
    let p = policy("");
    let r = standard_ring(&p);
    for alg in ["none", "None", "NONE", "nOnE"] {
        let header = json!({"alg": alg, "kid": "current"}).to_string();
        let t = format!(
            "{}.{}.{}",
            b64(header.as_bytes()),
            b64(good_claims().to_string().as_bytes()),
            b64(b"sig")
        );
        assert_eq!(
            reason(verify_token(&t, NOW, &r, &p)),
            DenyReason::AlgorithmNotAllowed,
            "{alg}"
        );
        // The textbook form has an empty signature segment.
        let bare = format!(
            "{}.{}.",
            b64(header.as_bytes()),
            b64(good_claims().to_string().as_bytes())
        );
        assert_eq!(
            reason(verify_token(&bare, NOW, &r, &p)),
            DenyReason::MalformedToken,
            "{alg}"
        );
    }
}

#[test]
fn algorithm_outside_policy_is_refused() {
    let p = policy(r#","algorithms":["EdDSA"]"#);
    let r = ring(&[Signer::ed25519(1).jwk("current")], &p);
    let es = good_token(&Signer::es256(7), "current");
    assert_eq!(
        reason(verify_token(&es, NOW, &r, &p)),
        DenyReason::AlgorithmNotAllowed
    );
}

#[test]
fn public_key_as_hmac_secret_is_refused() {
    // The classic confusion attack: HS256 keyed with the server's public key bytes.
    let p = policy("");
    let r = standard_ring(&p);
    let public_bytes = Signer::ed25519(1).jwk("current")["x"]
        .as_str()
        .expect("x")
        .as_bytes()
        .to_vec();
    let t = good_token(&Signer::hs256(&public_bytes), "current");
    assert_eq!(
        reason(verify_token(&t, NOW, &r, &p)),
        DenyReason::AlgorithmNotAllowed
    );
}

#[test]
fn symmetric_policy_takes_only_long_oct_keys() {
    let p = policy(r#","algorithms":["HS256"]"#);
    let secret = [42u8; 32];
    let (r, skipped) = KeyRing::from_jwks(
        &jwks(&[
            Signer::hs256(&secret).jwk("shared"),
            Signer::hs256(&[1u8; 16]).jwk("short"),
            Signer::ed25519(1).jwk("current"),
        ]),
        &p,
    )
    .expect("one usable key");
    assert_eq!(r.keys().len(), 1);
    assert_eq!(skipped[0].reason, SkipReason::WeakSecret);
    assert_eq!(skipped[1].reason, SkipReason::AlgorithmNotAllowed);
    assert!(verify_token(&good_token(&Signer::hs256(&secret), "shared"), NOW, &r, &p).is_ok());
    let wrong = good_token(&Signer::hs256(&[43u8; 32]), "shared");
    assert_eq!(
        reason(verify_token(&wrong, NOW, &r, &p)),
        DenyReason::BadSignature
    );

    // And an asymmetric policy never takes an oct key.
    let asym = policy("");
    let err = KeyRing::from_jwks(&jwks(&[Signer::hs256(&secret).jwk("shared")]), &asym)
        .expect_err("no usable key");
    assert!(
        matches!(err, JwksError::NoUsableKey(ref s) if s[0].reason == SkipReason::AlgorithmNotAllowed)
    );
}

#[test]
fn jwk_alg_must_equal_token_alg() {
    let p = policy("");
    let mut rsa = Signer::rs256().jwk("rsa");
    rsa["alg"] = json!("RS256");
    let r = ring(&[rsa], &p);
    assert!(verify_token(&good_token(&Signer::rs256(), "rsa"), NOW, &r, &p).is_ok());
    let pss = good_token(&Signer::ps256(), "rsa");
    assert_eq!(
        reason(verify_token(&pss, NOW, &r, &p)),
        DenyReason::KeyAlgorithmMismatch
    );
    // A kid naming a key of another type is a mismatch too.
    let r = standard_ring(&p);
    let ed_as_ec = good_token(&Signer::ed25519(1), "ec");
    assert_eq!(
        reason(verify_token(&ed_as_ec, NOW, &r, &p)),
        DenyReason::KeyAlgorithmMismatch
    );
}

#[test]
fn crit_cty_and_unencoded_payload_headers_are_refused() {
    let p = policy("");
    let r = standard_ring(&p);
    let s = Signer::ed25519(1);
    let claims = good_claims().to_string();
    // Present with a null value is still present: the same bytes must mean the same thing to
    // every component that reads them.
    for extra in [
        r#""crit":["exp"],"exp":1"#,
        r#""crit":null"#,
        r#""b64":false"#,
        r#""b64":null"#,
        r#""b64":"true""#,
        r#""cty":"JWT""#,
        r#""cty":null"#,
    ] {
        let header = format!(r#"{{"alg":"EdDSA","kid":"current","typ":"at+jwt",{extra}}}"#);
        let t = sign_raw(&s, &header, &claims);
        assert_eq!(
            reason(verify_token(&t, NOW, &r, &p)),
            DenyReason::UnsupportedHeader,
            "{extra}"
        );
    }
    let b64_true = sign_raw(
        &s,
        r#"{"alg":"EdDSA","kid":"current","typ":"at+jwt","b64":true}"#,
        &claims,
    );
    assert!(
        verify_token(&b64_true, NOW, &r, &p).is_ok(),
        "b64: true is the default meaning"
    );
}

#[test]
fn embedded_keys_and_key_urls_are_never_trusted() {
    let p = policy("");
    let r = standard_ring(&p);
    let attacker = Signer::ed25519(66);
    let header = json!({
        "alg": "EdDSA", "kid": "attacker", "typ": "at+jwt",
        "jwk": attacker.jwk("attacker"),
        "jku": "https://attacker.example/jwks.json",
        "x5u": "https://attacker.example/cert.pem",
        "x5c": ["MIIB"],
    })
    .to_string();
    let t = sign_raw(&attacker, &header, &good_claims().to_string());
    assert_eq!(
        reason(verify_token(&t, NOW, &r, &p)),
        DenyReason::UnknownKey
    );
    let header = header.replace("\"kid\":\"attacker\"", "\"kid\":\"current\"");
    let t = sign_raw(&attacker, &header, &good_claims().to_string());
    assert_eq!(
        reason(verify_token(&t, NOW, &r, &p)),
        DenyReason::BadSignature
    );
}

#[test]
fn typ_allow_list() {
    // RFC 9068 §4: by default only `at+jwt`, however it is spelled as a media type.
    let p = policy("");
    let r = standard_ring(&p);
    let s = Signer::ed25519(1);
    let claims = good_claims().to_string();
    let signed = |typ: Option<&str>| {
        let header = match typ {
            Some(t) => json!({"alg":"EdDSA","kid":"current","typ":t}),
            None => json!({"alg":"EdDSA","kid":"current"}),
        };
        sign_raw(&s, &header.to_string(), &claims)
    };
    for typ in ["at+jwt", "application/at+jwt", "AT+JWT"] {
        assert!(
            verify_token(&signed(Some(typ)), NOW, &r, &p).is_ok(),
            "{typ}"
        );
    }
    // What ID tokens and other signed JWTs carry is not an access token.
    for typ in [Some("JWT"), Some("jwt"), None] {
        assert_eq!(
            reason(verify_token(&signed(typ), NOW, &r, &p)),
            DenyReason::TokenTypeNotAllowed,
            "{typ:?}"
        );
    }
    let feed = sign_raw(
        &s,
        r#"{"alg":"EdDSA","kid":"current","typ":"revocation+jwt"}"#,
        &claims,
    );
    assert_eq!(
        reason(verify_token(&feed, NOW, &r, &p)),
        DenyReason::TokenTypeNotAllowed
    );
    // A policy widens the list for issuers that type their tokens otherwise.
    let wide = policy(r#","token_types":["JWT","at+jwt"],"allow_missing_type":true"#);
    for typ in [Some("JWT"), Some("at+jwt"), None] {
        assert!(
            verify_token(&signed(typ), NOW, &r, &wide).is_ok(),
            "{typ:?}"
        );
    }
}

#[test]
fn oversized_token_is_refused_before_parsing() {
    let p = policy("");
    let r = standard_ring(&p);
    let mut claims = good_claims();
    claims["pad"] = json!("x".repeat(9000));
    let t = token(&Signer::ed25519(1), "current", &claims);
    assert_eq!(
        reason(verify_token(&t, NOW, &r, &p)),
        DenyReason::TokenTooLarge
    );
    // Size is checked first: even a non-token of that size says "too large".
    assert_eq!(
        reason(verify_token(&"%".repeat(9000), NOW, &r, &p)),
        DenyReason::TokenTooLarge
    );
}

#[test]
fn non_canonical_base64url_is_refused() {
    let p = policy("");
    let r = standard_ring(&p);
    let t = good_token(&Signer::ed25519(1), "current");
    // An Ed25519 signature is 64 bytes = 86 chars, the last carrying 2 bits of padding.
    let (head, last) = t.split_at(t.len() - 1);
    let last = last.as_bytes()[0];
    let twin = match last {
        b'A'..=b'Y' => last + 1,
        _ => b'B',
    };
    let tampered = format!("{head}{}", twin as char);
    assert_eq!(
        reason(verify_token(&tampered, NOW, &r, &p)),
        DenyReason::MalformedToken
    );
    assert_eq!(
        reason(verify_token(&format!("{t}=="), NOW, &r, &p)),
        DenyReason::MalformedToken
    );
}

#[test]
fn duplicate_members_are_refused() {
    let p = policy("");
    let r = standard_ring(&p);
    let s = Signer::ed25519(1);
    let dup_alg = sign_raw(
        &s,
        r#"{"alg":"none","alg":"EdDSA","kid":"current","typ":"at+jwt"}"#,
        &good_claims().to_string(),
    );
    assert_eq!(
        reason(verify_token(&dup_alg, NOW, &r, &p)),
        DenyReason::MalformedToken
    );
    let claims = good_claims()
        .to_string()
        .replacen('{', r#"{"sub":"admin","#, 1);
    let dup_sub = sign_raw(
        &s,
        r#"{"alg":"EdDSA","kid":"current","typ":"at+jwt"}"#,
        &claims,
    );
    assert_eq!(
        reason(verify_token(&dup_sub, NOW, &r, &p)),
        DenyReason::InvalidClaim
    );
}

#[test]
fn token_without_kid_needs_a_unique_key() {
    let p = policy("");
    let s = Signer::ed25519(1);
    let t = sign_raw(
        &s,
        r#"{"alg":"EdDSA","typ":"at+jwt"}"#,
        &good_claims().to_string(),
    );
    let single = ring(&[s.jwk("only")], &p);
    assert!(verify_token(&t, NOW, &single, &p).is_ok());
    let two = standard_ring(&p);
    assert_eq!(
        reason(verify_token(&t, NOW, &two, &p)),
        DenyReason::UnknownKey
    );
}

fn with(claims_edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let mut c = good_claims();
    claims_edit(&mut c);
    token(&Signer::ed25519(1), "current", &c)
}

#[test]
fn time_claims_with_leeway() {
    let p = policy(r#","leeway_seconds":30"#);
    let r = standard_ring(&p);
    let check = |t: &str, now: i64| {
        verify_token(t, now, &r, &p)
            .map(|_| ())
            .map_err(|d| d.reason)
    };
    let t = with(|c| c["exp"] = json!(NOW));
    assert_eq!(check(&t, NOW + 29), Ok(()), "inside leeway");
    assert_eq!(
        check(&t, NOW + 30),
        Err(DenyReason::Expired),
        "on exp+leeway"
    );
    let t = with(|c| c["nbf"] = json!(NOW + 31));
    assert_eq!(check(&t, NOW), Err(DenyReason::NotYetValid));
    let t = with(|c| c["nbf"] = json!(NOW + 30));
    assert_eq!(check(&t, NOW), Ok(()));
    let t = with(|c| c["iat"] = json!(NOW + 31));
    assert_eq!(check(&t, NOW), Err(DenyReason::IssuedInFuture));
    let t = with(|c| {
        c.as_object_mut()
            .expect("object")
            .remove("exp")
            .map(drop)
            .unwrap_or(())
    });
    assert_eq!(check(&t, NOW), Err(DenyReason::MissingClaim));
    let t = with(|c| c["exp"] = json!("tomorrow"));
    assert_eq!(check(&t, NOW), Err(DenyReason::InvalidClaim));
}

#[test]
fn lifetime_is_capped_with_or_without_iat() {
    let p = policy(r#","max_lifetime_seconds":900"#);
    let r = standard_ring(&p);
    let long = with(|c| {
        c["iat"] = json!(NOW);
        c["exp"] = json!(NOW + 901);
    });
    assert_eq!(
        reason(verify_token(&long, NOW, &r, &p)),
        DenyReason::LifetimeTooLong
    );
    let far = with(|c| {
        c.as_object_mut().expect("object").remove("iat");
        c["exp"] = json!(NOW + 86_400);
    });
    assert_eq!(
        reason(verify_token(&far, NOW, &r, &p)),
        DenyReason::LifetimeTooLong
    );
}

#[test]
fn issuer_must_match_exactly() {
    let p = Policy2::with(
        r#"{"issuers":["https://a.test","https://b.test"],"audiences":["api.example.test"]}"#,
    );
    let r = standard_ring(&p);
    for (iss, ok) in [
        ("https://a.test", true),
        ("https://b.test", true),
        ("https://a.test/", false),
        ("HTTPS://A.TEST", false),
    ] {
        let t = with(|c| c["iss"] = json!(iss));
        assert_eq!(verify_token(&t, NOW, &r, &p).is_ok(), ok, "{iss}");
        if !ok {
            assert_eq!(
                reason(verify_token(&t, NOW, &r, &p)),
                DenyReason::IssuerNotAllowed
            );
        }
    }
    let t = with(|c| {
        c.as_object_mut()
            .expect("object")
            .remove("iss")
            .map(drop)
            .unwrap_or(())
    });
    assert_eq!(
        reason(verify_token(&t, NOW, &r, &p)),
        DenyReason::MissingClaim
    );
}

struct Policy2;
impl Policy2 {
    fn with(json: &str) -> edgeauth_core::Policy {
        edgeauth_core::Policy::from_json(json).expect("valid")
    }
}

#[test]
fn audience_as_string_or_array_must_intersect() {
    let p = policy("");
    let r = standard_ring(&p);
    let arr = with(|c| c["aud"] = json!(["other", AUDIENCE]));
    assert!(verify_token(&arr, NOW, &r, &p).is_ok());
    let wrong = with(|c| c["aud"] = json!(["other", "another"]));
    assert_eq!(
        reason(verify_token(&wrong, NOW, &r, &p)),
        DenyReason::AudienceNotAllowed
    );
    let wrong = with(|c| c["aud"] = json!("other"));
    assert_eq!(
        reason(verify_token(&wrong, NOW, &r, &p)),
        DenyReason::AudienceNotAllowed
    );
    let none = with(|c| c["aud"] = json!([]));
    assert_eq!(
        reason(verify_token(&none, NOW, &r, &p)),
        DenyReason::MissingClaim
    );
}

#[test]
fn required_claims_are_configurable() {
    let strict = policy("");
    let lax = policy(r#","required_claims":["exp"]"#);
    let r = standard_ring(&strict);
    for claim in ["sub", "jti"] {
        let t = with(|c| {
            c.as_object_mut()
                .expect("object")
                .remove(claim)
                .map(drop)
                .unwrap_or(())
        });
        let d = verify_token(&t, NOW, &r, &strict).expect_err("required by default");
        assert_eq!((d.reason, d.claim), (DenyReason::MissingClaim, Some(claim)));
        assert!(
            verify_token(&t, NOW, &r, &lax).is_ok(),
            "{claim} not required"
        );
    }
    let needs_scope = policy(r#","required_claims":["scope"]"#);
    let t = with(|c| {
        c.as_object_mut()
            .expect("object")
            .remove("scope")
            .map(drop)
            .unwrap_or(())
    });
    assert_eq!(
        reason(verify_token(&t, NOW, &r, &needs_scope)),
        DenyReason::MissingClaim
    );
}

#[test]
fn values_unsafe_for_headers_are_invalid_claims() {
    let p = policy("");
    let r = standard_ring(&p);
    for (claim, value) in [
        ("sub", json!("alice\r\nx-admin: 1")),
        ("sub", json!("")),
        ("jti", json!("a b")),
        ("scope", json!(["ok", "bad\"quote"])),
        ("sub", json!(42)),
    ] {
        let t = with(|c| c[claim] = value.clone());
        assert_eq!(
            reason(verify_token(&t, NOW, &r, &p)),
            DenyReason::InvalidClaim,
            "{claim}={value}"
        );
    }
}

#[test]
fn scope_array_form_is_read() {
    let p = policy("");
    let r = standard_ring(&p);
    let t = with(|c| c["scope"] = json!(["a", "b"]));
    assert_eq!(
        verify_token(&t, NOW, &r, &p).expect("valid").claims().scope,
        ["a", "b"]
    );
}

#[test]
fn signature_only_skips_claims() {
    let p = policy("");
    let r = standard_ring(&p);
    let expired = with(|c| c["exp"] = json!(NOW - 3600));
    assert_eq!(
        reason(verify_token(&expired, NOW, &r, &p)),
        DenyReason::Expired
    );
    let checked = check_signature(&expired, &r, &p).expect("signature is fine");
    assert_eq!(checked.claims.exp, Some(NOW - 3600));
}

#[test]
fn unusable_keys_are_skipped_with_reasons() {
    let p = policy("");
    let mut enc = Signer::ed25519(1).jwk("enc");
    enc["use"] = json!("enc");
    let mut wrap = Signer::ed25519(2).jwk("wrap");
    wrap["key_ops"] = json!(["wrapKey"]);
    let mut private = Signer::ed25519(3).jwk("private");
    private["d"] = json!(b64(&[3u8; 32]));
    let mut p384 = Signer::es256(7).jwk("p384");
    p384["crv"] = json!("P-384");
    let short_rsa = {
        use rsa::pkcs8::DecodePrivateKey;
        let k = jwt_compact::alg::RsaPrivateKey::from_pkcs8_pem(RSA_1024_PEM).expect("fixture");
        let mut v = serde_json::to_value(jwt_compact::jwk::JsonWebKey::from(&k.to_public_key()))
            .expect("jwk");
        v["kid"] = json!("short");
        v
    };
    let mut bad_alg = Signer::es256(7).jwk("bad-alg");
    bad_alg["alg"] = json!("RS256");
    let keys = [
        json!({"kty":"XYZ","kid":"weird"}),
        enc,
        wrap,
        private,
        p384,
        short_rsa,
        bad_alg,
        Signer::ed25519(1).jwk("good"),
        Signer::ed25519(2).jwk("good"),
        json!({"kty":"OKP","crv":"Ed25519","kid":"garbage","x":"AAAA"}),
    ];
    let (r, skipped) = KeyRing::from_jwks(&jwks(&keys), &p).expect("one good key");
    assert_eq!(r.keys().len(), 1);
    let reasons: Vec<_> = skipped
        .iter()
        .map(|s| (s.kid.as_deref().unwrap_or("-"), s.reason.clone()))
        .collect();
    assert_eq!(
        reasons[0],
        ("weird", SkipReason::UnsupportedKeyType("XYZ".into()))
    );
    assert_eq!(
        reasons[1],
        ("enc", SkipReason::NotForSignatures("enc".into()))
    );
    assert_eq!(reasons[2], ("wrap", SkipReason::NotForVerification));
    assert_eq!(reasons[3], ("private", SkipReason::PrivateKeyPublished));
    assert_eq!(
        reasons[4],
        ("p384", SkipReason::UnsupportedCurve("P-384".into()))
    );
    assert_eq!(reasons[5], ("short", SkipReason::RsaSize(1024)));
    assert_eq!(
        reasons[6],
        (
            "bad-alg",
            SkipReason::AlgorithmDoesNotFitKey("RS256".into())
        )
    );
    assert_eq!(reasons[7], ("good", SkipReason::DuplicateKid));
    assert!(matches!(reasons[8], ("garbage", SkipReason::Invalid(_))));
}

#[test]
fn small_order_ed25519_key_is_skipped() {
    let p = policy("");
    // The identity point: every signature with S=0 "verifies" under it with non-strict checks.
    let mut identity = [0u8; 32];
    identity[0] = 1;
    let weak = json!({"kty":"OKP","crv":"Ed25519","kid":"weak","x": b64(&identity)});
    let err = KeyRing::from_jwks(&jwks(&[weak]), &p).expect_err("weak key only");
    assert!(matches!(err, JwksError::NoUsableKey(ref s) if s[0].reason == SkipReason::WeakKey));
}

#[test]
fn malformed_or_huge_key_sets_are_errors() {
    let p = policy("");
    assert!(matches!(
        KeyRing::from_jwks(b"not json", &p),
        Err(JwksError::Malformed(_))
    ));
    assert!(matches!(
        KeyRing::from_jwks(br#"{"keys":{}}"#, &p),
        Err(JwksError::Malformed(_))
    ));
    assert!(matches!(
        KeyRing::from_jwks(br#"{"keys":[]}"#, &p),
        Err(JwksError::NoUsableKey(_))
    ));
    let huge = vec![b' '; 300 * 1024];
    assert!(matches!(
        KeyRing::from_jwks(&huge, &p),
        Err(JwksError::TooLarge(_))
    ));
}

#[test]
fn forged_payload_is_a_bad_signature_never_parsed() {
    let p = policy("");
    let r = standard_ring(&p);
    // Not JSON, signed by a stranger: the answer must not reveal how the payload parses.
    let forged = sign_raw(
        &Signer::ed25519(9),
        r#"{"alg":"EdDSA","kid":"current","typ":"at+jwt"}"#,
        "not json at all",
    );
    assert_eq!(
        reason(verify_token(&forged, NOW, &r, &p)),
        DenyReason::BadSignature
    );
    // Signed by the real key, the same payload is the signer's fault: an invalid claim.
    let signed = sign_raw(
        &Signer::ed25519(1),
        r#"{"alg":"EdDSA","kid":"current","typ":"at+jwt"}"#,
        "not json at all",
    );
    assert_eq!(
        reason(verify_token(&signed, NOW, &r, &p)),
        DenyReason::InvalidClaim
    );
}

#[test]
fn es256_high_s_twin_of_a_valid_token_is_refused() {
    use jwt_compact::{alg::Es256, Algorithm as _, AlgorithmSignature as _};
    let p = policy("");
    let r = standard_ring(&p);
    let signer = Signer::es256(7);
    let Signer::Es(private) = &signer else {
        unreachable!("an ES256 signer")
    };
    let good = good_token(&signer, "ec");
    assert!(verify_token(&good, NOW, &r, &p).is_ok());
    let twin = ecdsa_twin(&good);
    // The twin is a valid ECDSA signature over the same bytes: only the rule refuses it.
    let (input, signature) = twin.rsplit_once('.').expect("three segments");
    let signature = {
        use base64ct::Encoding as _;
        base64ct::Base64UrlUnpadded::decode_vec(signature).expect("base64url")
    };
    let signature =
        <Es256 as jwt_compact::Algorithm>::Signature::try_from_slice(&signature).expect("64 bytes");
    assert!(Es256.verify_signature(&signature, private.verifying_key(), input.as_bytes()));
    assert_eq!(
        reason(verify_token(&twin, NOW, &r, &p)),
        DenyReason::BadSignature
    );
}

#[test]
fn jose_header_must_be_an_object() {
    let p = policy("");
    let r = standard_ring(&p);
    let signer = Signer::ed25519(1);
    let claims = good_claims().to_string();
    // The members of the valid header, in the order the derived reader takes them.
    for header in [
        r#"["EdDSA","current","at+jwt"]"#,
        r#" ["EdDSA"]"#,
        "null",
        r#""EdDSA""#,
    ] {
        assert_eq!(
            reason(verify_token(
                &sign_raw(&signer, header, &claims),
                NOW,
                &r,
                &p
            )),
            DenyReason::MalformedToken,
            "{header}"
        );
    }
    let object = r#" {"alg":"EdDSA","kid":"current","typ":"at+jwt"}"#;
    assert!(verify_token(&sign_raw(&signer, object, &claims), NOW, &r, &p).is_ok());
}

#[test]
fn payload_must_be_an_object() {
    let p = policy("");
    let r = standard_ring(&p);
    let signer = Signer::ed25519(1);
    let header = json!({"alg": "EdDSA", "kid": "current", "typ": "at+jwt"}).to_string();
    let claims = good_claims();
    let as_array = json!([claims["exp"], claims["iss"], claims["sub"]]).to_string();
    assert_eq!(
        reason(verify_token(
            &sign_raw(&signer, &header, &as_array),
            NOW,
            &r,
            &p
        )),
        DenyReason::InvalidClaim
    );
}
