//! Request-level behaviour: sources, routes, identity headers, the deny-list step, the cache.

use edgeauth_core::{
    authorize, authorize_deferred, Algorithm, Allowed, Deferred, DenyListStatus, DenyReason,
    DenyState, HeaderEdit, KeyRing, Policy, PublicKey, Request, Revocation, RevocationAnswer,
    SignatureCheck, Step, TokenCache, Verdict, WatermarkStatus,
};
use serde_json::json;

use crate::shared::*;

const ROUTES: &str = r#","routes":[
    {"prefix":"/public/","public":true},
    {"prefix":"/admin/","scopes":["admin"],"mfa":true},
    {"path":"/orders","methods":["POST"],"scopes":["orders:write"]}
]"#;

struct Edge {
    policy: Policy,
    ring: Option<KeyRing>,
    cache: TokenCache,
}

impl Edge {
    fn new(extra: &str) -> Self {
        let policy = policy(extra);
        let ring = Some(standard_ring(&policy));
        let cache = TokenCache::for_policy(&policy);
        Self {
            policy,
            ring,
            cache,
        }
    }

    fn step(&mut self, method: &str, path: &str, headers: &[(&str, &str)], now: i64) -> Step {
        let request = Request {
            method,
            path,
            headers,
        };
        authorize(
            &request,
            now,
            self.ring.as_ref(),
            &self.policy,
            &mut self.cache,
        )
    }

    /// Runs a request through, answering the deny-list with `answer`.
    fn run(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        now: i64,
        answer: RevocationAnswer,
    ) -> Verdict {
        match self.step(method, path, headers, now) {
            Step::Done(v) => v,
            Step::CheckRevocation(check) => check.finish(answer, &self.policy),
        }
    }

    fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Verdict {
        self.run("GET", path, headers, NOW, RevocationAnswer::CLEAR)
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn denied(v: &Verdict) -> DenyReason {
    v.denial()
        .unwrap_or_else(|| panic!("expected a denial, got {v:?}"))
        .reason
}

/// What the default policy allows for a valid token on `/orders`, sent with `spoofed` headers.
fn allowed_with(spoofed: &[(&str, &str)]) -> Allowed {
    let mut edge = Edge::new("");
    let auth = bearer(&good_token(&Signer::ed25519(1), "current"));
    let mut headers = vec![("authorization", auth.as_str())];
    headers.extend_from_slice(spoofed);
    match edge.get("/orders", &headers) {
        Verdict::Allow(allowed) => allowed,
        v => panic!("expected allow: {v:?}"),
    }
}

/// The names an allowed request loses.
fn removed(allowed: &Allowed) -> Vec<&str> {
    allowed.remove_headers.iter().map(|n| &**n).collect()
}

/// The headers an allowed request is forwarded with, set (replaced or added) under `policy`.
fn set_by<'a>(allowed: &'a Allowed, policy: &'a Policy) -> Vec<(&'a str, &'a str)> {
    allowed
        .edits(policy)
        .filter_map(|edit| match edit {
            HeaderEdit::Replace(name, value) | HeaderEdit::Add(name, value) => Some((name, value)),
            HeaderEdit::Remove(_) => None,
        })
        .collect()
}

#[test]
fn valid_token_sets_identity_and_strips_spoofed_headers() {
    let allowed = allowed_with(&[("X-User-Id", "admin"), ("x-user-scope", "admin")]);
    assert!(removed(&allowed).contains(&"x-user-id"));
    assert!(removed(&allowed).contains(&"x-user-scope"));
    assert!(!removed(&allowed).contains(&"authorization"));
    assert_eq!(
        set_by(&allowed, &policy("")),
        [
            ("x-user-id", "3f1c2a9e-7b4d-4c1a-9e2f-0a1b2c3d4e5f"),
            ("x-user-scope", "profile orders:read"),
        ]
    );
    assert!(allowed.token.is_some());
}

#[test]
fn identity_headers_the_request_carries_are_replaced_and_the_others_added() {
    let allowed = allowed_with(&[("X-User-Id", "admin"), ("x_user_id", "admin")]);
    // The spoofed x-user-id is replaced (every value, whatever its case), not removed and then
    // added; x-user-scope, which the request lacks, is added without a search for it.
    assert_eq!(
        allowed.edits(&policy("")).collect::<Vec<_>>(),
        [
            HeaderEdit::Remove("x_user_id"),
            HeaderEdit::Replace("x-user-id", "3f1c2a9e-7b4d-4c1a-9e2f-0a1b2c3d4e5f"),
            HeaderEdit::Add("x-user-scope", "profile orders:read"),
        ]
    );
}

#[test]
fn authorization_can_be_stripped_and_extra_headers_removed() {
    let mut edge = Edge::new(r#","headers":{"strip":["x-user-email"],"strip_authorization":true}"#);
    let auth = bearer(&good_token(&Signer::ed25519(1), "current"));
    let Verdict::Allow(allowed) = edge.get(
        "/",
        &[
            ("authorization", &auth),
            ("X-User-Email", "admin@example.com"),
            ("x-user-id", "admin"),
        ],
    ) else {
        panic!("allow")
    };
    // Only what the request carries is listed: each removal is a call into the host.
    assert_eq!(
        removed(&allowed),
        ["x-user-id", "x-user-email", "authorization"]
    );
    let Verdict::Allow(plain) = edge.get("/", &[("authorization", &auth)]) else {
        panic!("allow")
    };
    assert_eq!(removed(&plain), ["authorization"]);
}

#[test]
fn underscore_spellings_of_identity_headers_are_removed_too() {
    let strip = r#","headers":{"strip":["x-user-email"]}"#;
    let mut edge = Edge::new(strip);
    let mut public = Edge::new(&format!(
        r#"{strip},"routes":[{{"prefix":"/","public":true}}]"#
    ));
    let auth = bearer(&good_token(&Signer::ed25519(1), "current"));
    // CGI and WSGI read each of these as X-User-Id (or X-User-Email): a client that sends them
    // must not reach the upstream as someone else, whatever the case.
    let spoofed = [
        ("x_user_id", "admin"),
        ("X_User-Id", "admin"),
        ("x-user_id", "admin"),
        ("x_user_scope", "admin"),
        ("X_USER_EMAIL", "admin@example.com"),
    ];
    let mut with_token = vec![("authorization", auth.as_str())];
    with_token.extend(spoofed);
    for verdict in [edge.get("/", &with_token), public.get("/", &spoofed)] {
        let Verdict::Allow(allowed) = verdict else {
            panic!("allow")
        };
        let remove = &allowed.remove_headers;
        for (alias, _) in spoofed {
            assert!(
                remove.iter().any(|r| r.eq_ignore_ascii_case(alias)),
                "{alias} in {remove:?}"
            );
        }
    }
}

/// Headers a host cannot list (as the Worker's runtime): the core asks for each name instead.
struct Unlisted<'a>(&'a [(&'a str, &'a str)]);

impl edgeauth_core::Headers for Unlisted<'_> {
    fn values(&self, name: &str, each: &mut dyn FnMut(&[u8])) {
        self.0.values(name, each);
    }
}

#[test]
fn identity_headers_are_found_alike_whether_or_not_the_host_lists_its_headers() {
    let long = format!("x-{}", "a".repeat(70));
    let spelled_out =
        format!(r#","headers":{{"strip":["x-user-email","{long}"],"strip_authorization":true}}"#);
    // Two names with five separators each: 64 spellings more, past what one pass tracks.
    let many = r#","headers":{"strip":["a-b-c-d-e-f","g-h-i-j-k-l"]}"#;
    let auth = bearer(&good_token(&Signer::ed25519(1), "current"));
    let long_upper = long.to_uppercase();
    let requests: [Vec<(&str, &str)>; 3] = [
        vec![("authorization", &auth)],
        vec![
            ("X_USER-ID", "admin"),
            ("authorization", &auth),
            ("x-request-id", "1"),
            ("x-user-scope", "admin"),
            ("x-user-scope", "admin"),
            (&long_upper, "admin"),
            (":path", "/"),
        ],
        vec![
            ("A_b-C_d-E_f", "admin"),
            ("x_user_scope", "admin"),
            ("g-h-i-j-k-l", "admin"),
            ("authorization", &auth),
            ("a-b-c-d-e-g", "not an identity header"),
        ],
    ];
    for extra in ["", spelled_out.as_str(), many] {
        let policy = policy(extra);
        let ring = standard_ring(&policy);
        for headers in &requests {
            let removed_by = |listed: bool| {
                let mut cache = TokenCache::for_policy(&policy);
                let unlisted = Unlisted(headers);
                let step = if listed {
                    let request = Request {
                        method: "GET",
                        path: "/",
                        headers: &headers[..],
                    };
                    authorize(&request, NOW, Some(&ring), &policy, &mut cache)
                } else {
                    let request = Request {
                        method: "GET",
                        path: "/",
                        headers: &unlisted,
                    };
                    authorize(&request, NOW, Some(&ring), &policy, &mut cache)
                };
                let Step::CheckRevocation(check) = step else {
                    panic!("{extra}: a valid token reaches the deny-list: {step:?}")
                };
                let Verdict::Allow(allowed) = check.finish(RevocationAnswer::CLEAR, &policy) else {
                    panic!("allow")
                };
                allowed.remove_headers
            };
            let (listed, asked) = (removed_by(true), removed_by(false));
            assert_eq!(listed, asked, "{extra} {headers:?}");
            for (name, _) in headers {
                // Every `-`/`_` spelling of a configured name, in any case.
                let spelling = name.to_ascii_lowercase().replace('_', "-");
                let identity = ["x-user-id", "x-user-scope"].contains(&spelling.as_str())
                    || (extra == spelled_out
                        && ["x-user-email", "authorization", long.as_str()]
                            .contains(&spelling.as_str()))
                    || (extra == many
                        && ["a-b-c-d-e-f", "g-h-i-j-k-l"].contains(&spelling.as_str()));
                assert_eq!(
                    listed.iter().any(|r| r.eq_ignore_ascii_case(name)),
                    identity,
                    "{extra}: {name} in {listed:?}"
                );
            }
        }
    }
}

#[test]
fn lower_case_methods_cannot_slip_past_method_rules() {
    let mut edge = Edge::new(ROUTES);
    let plain = bearer(&good_token(&Signer::ed25519(1), "current"));
    // HTTP/2 lets a client send `post`; Envoy passes it as received.
    for method in ["post", "Post", "pOST"] {
        let v = edge.run(
            method,
            "/orders",
            &[("authorization", &plain)],
            NOW,
            RevocationAnswer::CLEAR,
        );
        let d = v.denial().expect("deny");
        assert_eq!(
            (d.reason, d.status()),
            (DenyReason::InvalidRequest, 400),
            "{method}"
        );
    }
}

#[test]
fn case_and_path_parameters_cannot_dodge_a_protected_rule() {
    let mut edge = Edge::new(ROUTES);
    let plain = bearer(&good_token(&Signer::ed25519(1), "current"));
    // Spring, Tomcat and case-insensitive upstreams read these as /admin/users.
    for path in [
        "/ADMIN/users",
        "/Admin/users",
        "/admin;jsessionid=x/users",
        "/;x/admin/users",
    ] {
        assert_eq!(
            denied(&edge.get(path, &[("authorization", &plain)])),
            DenyReason::InsufficientScope,
            "{path}"
        );
    }
    assert_eq!(
        denied(&edge.run(
            "POST",
            "/ORDERS;v=2",
            &[("authorization", &plain)],
            NOW,
            RevocationAnswer::CLEAR
        )),
        DenyReason::InsufficientScope
    );
    // A public rule waives the token only for the path as written.
    for path in ["/PUBLIC/docs", "/Public/docs"] {
        assert_eq!(
            denied(&edge.get(path, &[])),
            DenyReason::TokenMissing,
            "{path}"
        );
    }
    assert!(matches!(
        edge.get("/public/docs;v=1", &[]),
        Verdict::Allow(_)
    ));
    // ...and `..;` is a dot segment to an upstream that drops parameters.
    for path in ["/public/..;/admin/users", "/public/..;x=1/admin/users"] {
        assert_eq!(
            denied(&edge.get(path, &[])),
            DenyReason::InvalidRequest,
            "{path}"
        );
    }
}

#[test]
fn missing_token_is_401_without_error_attribute() {
    let mut edge = Edge::new("");
    let v = edge.get("/orders", &[]);
    let d = v.denial().expect("deny");
    assert_eq!((d.reason, d.status()), (DenyReason::TokenMissing, 401));
    assert_eq!(d.www_authenticate(&edge.policy).as_deref(), Some("Bearer"));
}

#[test]
fn no_key_set_yet_is_503_not_401() {
    let mut edge = Edge::new("");
    edge.ring = None;
    let auth = bearer(&good_token(&Signer::ed25519(1), "current"));
    let v = edge.get("/orders", &[("authorization", &auth)]);
    let d = v.denial().expect("deny");
    assert_eq!((d.reason, d.status()), (DenyReason::KeysUnavailable, 503));
    assert_eq!(d.retry_after(&edge.policy), Some(5));
    // Without a token the answer is still the client's problem.
    assert_eq!(denied(&edge.get("/orders", &[])), DenyReason::TokenMissing);
}

#[test]
fn route_rules_scopes_and_mfa() {
    let mut edge = Edge::new(ROUTES);
    let plain = bearer(&good_token(&Signer::ed25519(1), "current"));
    let v = edge.run(
        "POST",
        "/orders",
        &[("authorization", &plain)],
        NOW,
        RevocationAnswer::CLEAR,
    );
    let d = v.denial().expect("deny");
    assert_eq!((d.reason, d.status()), (DenyReason::InsufficientScope, 403));
    let challenge = d.www_authenticate(&edge.policy).expect("challenge");
    assert!(
        challenge.contains(r#"error="insufficient_scope""#)
            && challenge.contains(r#"scope="orders:write""#),
        "{challenge}"
    );
    // GET /orders matches no rule: any valid token.
    assert!(matches!(
        edge.get("/orders", &[("authorization", &plain)]),
        Verdict::Allow(_)
    ));

    let mut c = good_claims();
    c["scope"] = json!("admin");
    let admin_pwd = bearer(&token(&Signer::ed25519(1), "current", &c));
    assert_eq!(
        denied(&edge.get("/admin/users", &[("authorization", &admin_pwd)])),
        DenyReason::MfaRequired
    );
    c["amr"] = json!(["pwd", "otp"]);
    let admin_otp = bearer(&token(&Signer::ed25519(1), "current", &c));
    assert!(matches!(
        edge.get("/admin/users", &[("authorization", &admin_otp)]),
        Verdict::Allow(_)
    ));
}

#[test]
fn public_routes_pass_without_token_but_lose_identity_headers() {
    let mut edge = Edge::new(ROUTES);
    let Verdict::Allow(allowed) = edge.get("/public/docs", &[("x-user-id", "admin")]) else {
        panic!("allow")
    };
    assert!(allowed.token.is_none());
    assert!(removed(&allowed).contains(&"x-user-id"));
    assert!(set_by(&allowed, &edge.policy).is_empty());
}

#[test]
fn dot_segment_paths_cannot_ride_a_public_prefix() {
    let mut edge = Edge::new(ROUTES);
    for path in [
        "/public/../admin/users",
        "/public/%2e%2e/admin/users",
        "/public%2F..%2Fadmin",
    ] {
        let v = edge.get(path, &[]);
        let d = v.denial().expect("deny");
        assert_eq!(
            (d.reason, d.status()),
            (DenyReason::InvalidRequest, 400),
            "{path}"
        );
    }
}

#[test]
fn encoded_or_doubled_paths_still_meet_their_rule() {
    let mut edge = Edge::new(ROUTES);
    let plain = bearer(&good_token(&Signer::ed25519(1), "current"));
    // Upstreams read these as /admin/users: they must meet the /admin/ rule, not the default.
    for path in [
        "/%61dmin/users",
        "//admin/users",
        "/admin//users",
        "/%61%64%6d%69%6e/users",
    ] {
        assert_eq!(
            denied(&edge.get(path, &[("authorization", &plain)])),
            DenyReason::InsufficientScope,
            "{path}"
        );
    }
    for path in ["/public%2Fadmin", "/public%5c..%5cadmin", "/public/%zz"] {
        assert_eq!(
            denied(&edge.get(path, &[])),
            DenyReason::InvalidRequest,
            "{path}"
        );
    }
}

#[test]
fn cors_preflight_bypass_is_opt_in() {
    let preflight = [
        ("origin", "https://app.example"),
        ("access-control-request-method", "POST"),
    ];
    let mut off = Edge::new("");
    assert_eq!(
        denied(&off.run(
            "OPTIONS",
            "/orders",
            &preflight,
            NOW,
            RevocationAnswer::CLEAR
        )),
        DenyReason::TokenMissing
    );
    let mut on = Edge::new(r#","cors_preflight_bypass":true"#);
    assert!(matches!(
        on.run(
            "OPTIONS",
            "/orders",
            &preflight,
            NOW,
            RevocationAnswer::CLEAR
        ),
        Verdict::Allow(_)
    ));
    // A plain OPTIONS is not a preflight.
    assert_eq!(
        denied(&on.run("OPTIONS", "/orders", &[], NOW, RevocationAnswer::CLEAR)),
        DenyReason::TokenMissing
    );
}

#[test]
fn cookie_and_query_sources() {
    let t = good_token(&Signer::ed25519(1), "current");
    let mut edge = Edge::new(
        r#","sources":{"authorization_header":false,"cookie":"at","query_parameter":"access_token"}"#,
    );
    let cookie = format!("theme=dark; at={t}");
    assert!(matches!(
        edge.get("/x", &[("cookie", &cookie)]),
        Verdict::Allow(_)
    ));
    assert!(matches!(
        edge.get(&format!("/x?access_token={t}"), &[]),
        Verdict::Allow(_)
    ));
    // The disabled header source is not read at all.
    assert_eq!(
        denied(&edge.get("/x", &[("authorization", &bearer(&t))])),
        DenyReason::TokenMissing
    );
}

#[test]
fn revocation_answers() {
    let mut edge = Edge::new("");
    let auth = bearer(&good_token(&Signer::ed25519(1), "current"));
    let h = [("authorization", auth.as_str())];
    let Step::CheckRevocation(check) = edge.step("GET", "/", &h, NOW) else {
        panic!("asks the deny-list")
    };
    assert_eq!(check.jti(), Some("jti-0001"));
    assert_eq!(
        check.subject(),
        Some("3f1c2a9e-7b4d-4c1a-9e2f-0a1b2c3d4e5f")
    );

    let ask = |edge: &mut Edge, jti, user| {
        let session = DenyListStatus::NotListed;
        edge.run("GET", "/", &h, NOW, RevocationAnswer { jti, session, user })
    };
    use DenyListStatus as J;
    use WatermarkStatus as W;
    assert_eq!(
        denied(&ask(&mut edge, J::Listed, W::None)),
        DenyReason::TokenRevoked
    );
    // iat is NOW-60: a watermark at or after it revokes, one before it does not.
    assert_eq!(
        denied(&ask(&mut edge, J::NotListed, W::RevokedThrough(NOW - 60))),
        DenyReason::UserTokensRevoked
    );
    assert!(matches!(
        ask(&mut edge, J::NotListed, W::RevokedThrough(NOW - 61)),
        Verdict::Allow(_)
    ));
    // Fail closed by default, and a definite revocation beats an unavailable half.
    let v = ask(&mut edge, J::Unavailable, W::None);
    assert_eq!(
        (denied(&v), v.denial().map(|d| d.status())),
        (DenyReason::RevocationUnavailable, Some(503))
    );
    assert_eq!(
        denied(&ask(&mut edge, J::Listed, W::Unavailable)),
        DenyReason::TokenRevoked
    );
    assert_eq!(
        denied(&ask(&mut edge, J::NotListed, W::Unavailable)),
        DenyReason::RevocationUnavailable
    );

    let mut open = Edge::new(r#","revocation":{"on_unavailable":"allow"}"#);
    assert!(matches!(
        ask(&mut open, J::Unavailable, W::Unavailable),
        Verdict::Allow(_)
    ));
    assert_eq!(
        denied(&ask(&mut open, J::Listed, W::Unavailable)),
        DenyReason::TokenRevoked
    );
}

#[test]
fn a_revoked_session_refuses_every_token_of_it() {
    let mut edge = Edge::new("");
    let mut claims = good_claims();
    claims["sid"] = json!("session-1");
    let auth = bearer(&token(&Signer::ed25519(1), "current", &claims));
    let h = [("authorization", auth.as_str())];
    let Step::CheckRevocation(check) = edge.step("GET", "/", &h, NOW) else {
        panic!("asks the deny-list")
    };
    assert_eq!(check.session(), Some("session-1"));
    // The core's deny state answers for the session as for a jti.
    let mut state = DenyState::default();
    state.apply(
        &Revocation::Session {
            sid: "session-1".into(),
            expires_at: NOW + 840,
        },
        30,
    );
    let answer = state.answer(&check, NOW, true);
    assert_eq!(answer.session, DenyListStatus::Listed);
    assert_eq!(
        denied(&check.finish(answer, &edge.policy)),
        DenyReason::TokenRevoked
    );
    // Unknown to a state that cannot vouch for what it lacks: unavailable, not clear.
    let Step::CheckRevocation(check) = edge.step("GET", "/", &h, NOW) else {
        panic!("asks the deny-list")
    };
    let unread = DenyState::default().answer(&check, NOW, false);
    assert_eq!(
        (unread.jti, unread.session, unread.user),
        (
            DenyListStatus::Unavailable,
            DenyListStatus::Unavailable,
            WatermarkStatus::Unavailable
        )
    );
    // A `sid` that could not be a deny-list key refuses the token.
    claims["sid"] = json!("a b");
    let auth = bearer(&token(&Signer::ed25519(1), "current", &claims));
    assert_eq!(
        denied(&edge.get("/", &[("authorization", auth.as_str())])),
        DenyReason::InvalidClaim
    );
}

#[test]
fn cache_hit_still_checks_time_and_revocation() {
    let mut edge = Edge::new("");
    let mut c = good_claims();
    c["exp"] = json!(NOW + 100);
    let auth = bearer(&token(&Signer::ed25519(1), "current", &c));
    let h = [("authorization", auth.as_str())];
    assert!(matches!(
        edge.run("GET", "/", &h, NOW, RevocationAnswer::CLEAR),
        Verdict::Allow(_)
    ));
    assert!(matches!(
        edge.run("GET", "/", &h, NOW + 1, RevocationAnswer::CLEAR),
        Verdict::Allow(_)
    ));
    assert_eq!(edge.cache.stats().hits, 1);
    let revoked = RevocationAnswer {
        jti: DenyListStatus::Listed,
        ..RevocationAnswer::CLEAR
    };
    assert_eq!(
        denied(&edge.run("GET", "/", &h, NOW + 2, revoked)),
        DenyReason::TokenRevoked
    );
    assert_eq!(edge.cache.stats().hits, 2, "revocation was asked on a hit");
    // After exp + leeway the cached entry is no use.
    assert_eq!(
        denied(&edge.run("GET", "/", &h, NOW + 130, RevocationAnswer::CLEAR)),
        DenyReason::Expired
    );
}

#[test]
fn cache_hit_rechecks_route_rules() {
    let mut edge = Edge::new(ROUTES);
    let auth = bearer(&good_token(&Signer::ed25519(1), "current"));
    let h = [("authorization", auth.as_str())];
    assert!(matches!(edge.get("/orders", &h), Verdict::Allow(_)));
    assert_eq!(
        denied(&edge.run("POST", "/orders", &h, NOW, RevocationAnswer::CLEAR)),
        DenyReason::InsufficientScope
    );
    assert_eq!(edge.cache.stats().hits, 1);
}

#[test]
fn removing_a_key_drops_what_it_verified() {
    let mut edge = Edge::new("");
    let auth = bearer(&good_token(&Signer::ed25519(2), "previous"));
    let h = [("authorization", auth.as_str())];
    assert!(matches!(edge.get("/", &h), Verdict::Allow(_)));
    // Rotation retires "previous": the next ring no longer has it.
    edge.ring = Some(ring(
        &[
            Signer::ed25519(1).jwk("current"),
            Signer::ed25519(4).jwk("next"),
        ],
        &edge.policy,
    ));
    assert_eq!(denied(&edge.get("/", &h)), DenyReason::UnknownKey);
    assert_eq!(edge.cache.stats().hits, 0);
}

#[test]
fn cache_is_bounded() {
    let mut edge = Edge::new(r#","cache":{"max_entries":2}"#);
    for i in 0..5 {
        let mut c = good_claims();
        c["jti"] = json!(format!("jti-{i}"));
        let auth = bearer(&token(&Signer::ed25519(1), "current", &c));
        assert!(matches!(
            edge.get("/", &[("authorization", &auth)]),
            Verdict::Allow(_)
        ));
        assert!(edge.cache.len() <= 2);
    }
    assert_eq!(edge.cache.stats().evictions, 3);
}

#[test]
fn cache_is_bounded_in_bytes_whatever_the_tokens_weigh() {
    let budget = 64 * 1024;
    let mut edge = Edge::new(&format!(
        r#","max_token_bytes":16384,"cache":{{"max_entries":1000,"max_bytes":{budget}}}"#
    ));
    let mut tokens = Vec::new();
    for i in 0..40 {
        let mut c = good_claims();
        c["jti"] = json!(format!("jti-{i}"));
        // Large but valid: what a client can mint nothing of, but an issuer can.
        c["scope"] = json!(format!("profile {}", "s".repeat(6000)));
        let auth = bearer(&token(&Signer::ed25519(1), "current", &c));
        assert!(matches!(
            edge.get("/", &[("authorization", &auth)]),
            Verdict::Allow(_)
        ));
        assert!(edge.cache.bytes() <= budget, "{} bytes", edge.cache.bytes());
        tokens.push(auth);
    }
    // Fewer than the entry bound fit, the oldest went first, and the newest are hits.
    assert!(edge.cache.len() < 12, "{} entries", edge.cache.len());
    assert_eq!(edge.cache.stats().evictions, 40 - edge.cache.len() as u64);
    let hits = edge.cache.stats().hits;
    edge.get("/", &[("authorization", tokens.last().expect("a token"))]);
    assert_eq!(edge.cache.stats().hits, hits + 1);
    // A token that alone outweighs the budget is verified every time, never cached.
    let mut tiny = Edge::new(r#","cache":{"max_bytes":1024}"#);
    let auth = bearer(&good_token(&Signer::ed25519(1), "current"));
    for _ in 0..2 {
        assert!(matches!(
            tiny.get("/", &[("authorization", &auth)]),
            Verdict::Allow(_)
        ));
    }
    assert_eq!((tiny.cache.len(), tiny.cache.stats().hits), (0, 0));
}

#[test]
fn same_verdict_with_and_without_cache() {
    let mut cached = Edge::new("");
    let mut uncached = Edge::new(r#","cache":{"max_entries":0}"#);
    let mut c = good_claims();
    c["exp"] = json!(NOW + 10);
    // A hit does not re-read what the token's text alone decides (a `sub` safe to forward, scope
    // tokens): tokens that fail it must never have been cached.
    let mut unsafe_sub = good_claims();
    unsafe_sub["sub"] = json!("user-1\r\nx-user-scope: admin");
    let mut bad_scope = good_claims();
    bad_scope["scope"] = json!("read \"admin");
    let tokens = [
        good_token(&Signer::ed25519(1), "current"),
        token(&Signer::ed25519(1), "current", &c),
        good_token(&Signer::ed25519(3), "current"),
        "garbage".to_string(),
        token(&Signer::ed25519(1), "current", &unsafe_sub),
        token(&Signer::ed25519(1), "current", &bad_scope),
    ];
    for now in [NOW, NOW + 20, NOW + 45] {
        for t in &tokens {
            let auth = bearer(t);
            let h = [("authorization", auth.as_str())];
            let a = cached.run("GET", "/", &h, now, RevocationAnswer::CLEAR);
            let b = uncached.run("GET", "/", &h, now, RevocationAnswer::CLEAR);
            assert_eq!(
                a.denial().map(|d| d.reason),
                b.denial().map(|d| d.reason),
                "now={now}"
            );
        }
        for t in &tokens[4..] {
            let auth = bearer(t);
            let h = [("authorization", auth.as_str())];
            let verdict = cached.run("GET", "/", &h, now, RevocationAnswer::CLEAR);
            assert_eq!(denied(&verdict), DenyReason::InvalidClaim, "now={now}");
        }
    }
    assert!(cached.cache.stats().hits > 0);
    assert!(
        cached.cache.len() <= 2,
        "only the tokens that passed were cached"
    );
}

#[test]
fn a_token_that_shares_a_cached_token_s_signature_is_checked_afresh() {
    let mut edge = Edge::new("");
    let good = good_token(&Signer::ed25519(1), "current");
    let auth = bearer(&good);
    assert!(matches!(
        edge.get("/", &[("authorization", &auth)]),
        Verdict::Allow(_)
    ));
    // The cache hashes a token's last bytes, its signature's: these land in the cached token's
    // bucket, and only the comparison of every byte keeps them from riding on its verification.
    let (signed, signature) = good.rsplit_once('.').expect("three parts");
    let (header, _) = signed.split_once('.').expect("three parts");
    let mut admin = good_claims();
    admin["sub"] = json!("admin");
    admin["scope"] = json!("admin");
    let other_payload = format!("{header}.{}.{signature}", b64(admin.to_string().as_bytes()));
    let mut one_byte_off = good.clone().into_bytes();
    one_byte_off[header.len() + 5] ^= 0x01;
    let one_byte_off = String::from_utf8(one_byte_off).expect("still text");
    for forged in [other_payload, one_byte_off] {
        assert_ne!(forged, good);
        let verdict = edge.get("/", &[("authorization", &bearer(&forged))]);
        assert!(verdict.denial().is_some(), "{forged}: {verdict:?}");
    }
    let hits = edge.cache.stats().hits;
    assert!(matches!(
        edge.get("/", &[("authorization", &auth)]),
        Verdict::Allow(_)
    ));
    assert_eq!(
        edge.cache.stats().hits,
        hits + 1,
        "the real token still hits"
    );
}

#[test]
fn cache_hit_applies_the_policy_in_force_now() {
    let mut edge = Edge::new("");
    let auth = bearer(&good_token(&Signer::ed25519(1), "current"));
    let h = [("authorization", auth.as_str())];
    assert!(matches!(edge.get("/", &h), Verdict::Allow(_)));
    // The host swaps in a stricter policy but keeps its cache: each rule still applies.
    for (extra, reason) in [
        (
            r#","algorithms":["ES256"]"#,
            DenyReason::AlgorithmNotAllowed,
        ),
        (r#","token_types":["JWT"]"#, DenyReason::TokenTypeNotAllowed),
        (r#","required_claims":["nbf"]"#, DenyReason::MissingClaim),
        (
            r#","max_lifetime_seconds":600"#,
            DenyReason::LifetimeTooLong,
        ),
    ] {
        edge.policy = policy(extra);
        assert_eq!(denied(&edge.get("/", &h)), reason, "{extra}");
    }
    edge.policy = Policy::from_json(&format!(
        r#"{{"issuers":["https://other.test"],"audiences":["{AUDIENCE}"]}}"#
    ))
    .expect("valid");
    assert_eq!(denied(&edge.get("/", &h)), DenyReason::IssuerNotAllowed);
    edge.policy = Policy::from_json(&format!(
        r#"{{"issuers":["{ISSUER}"],"audiences":["other"]}}"#
    ))
    .expect("valid");
    assert_eq!(denied(&edge.get("/", &h)), DenyReason::AudienceNotAllowed);
    assert!(
        edge.cache.stats().hits >= 6,
        "these were answered from the cache"
    );
}

#[test]
fn cache_hit_needs_the_same_key_for_the_same_kid() {
    let mut edge = Edge::new("");
    let auth = bearer(&good_token(&Signer::ed25519(1), "current"));
    let h = [("authorization", auth.as_str())];
    assert!(matches!(edge.get("/", &h), Verdict::Allow(_)));
    // Same key material now published under another kid, and `current` names a new key: the
    // cached entry no longer applies, and the answer is what a fresh verification gives.
    edge.ring = Some(ring(
        &[
            Signer::ed25519(1).jwk("renamed"),
            Signer::ed25519(5).jwk("current"),
        ],
        &edge.policy,
    ));
    assert_eq!(denied(&edge.get("/", &h)), DenyReason::BadSignature);
    assert_eq!(
        edge.cache.stats().hits,
        1,
        "the stale entry was found, then not trusted"
    );
}

/// A host that verifies signatures itself, as the Worker does with WebCrypto: here with
/// jwt-compact's algorithms, over keys rebuilt from nothing but [`PublicKey`], so the exported
/// material is checked too.
fn host_verifies(check: &SignatureCheck, ring: &KeyRing) -> bool {
    use jwt_compact::{
        alg::{Ed25519, Es256, Rsa, RsaPublicKey, VerifyingKey as _},
        AlgorithmSignature as _,
    };
    fn with<A: jwt_compact::Algorithm>(
        alg: &A,
        key: &A::VerifyingKey,
        signature: &[u8],
        input: &[u8],
    ) -> bool {
        A::Signature::try_from_slice(signature).is_ok_and(|s| alg.verify_signature(&s, key, input))
    }
    let (sig, input) = (check.signature(), check.signing_input());
    match (check.public_key(ring).as_ref(), check.algorithm()) {
        (Some(PublicKey::Ed25519(raw)), Algorithm::EdDsa) => {
            let key = <Ed25519 as jwt_compact::Algorithm>::VerifyingKey::from_slice(raw)
                .expect("32-byte key");
            with(&Ed25519, &key, sig, input)
        }
        (Some(PublicKey::P256(point)), Algorithm::Es256) => {
            let key = <Es256 as jwt_compact::Algorithm>::VerifyingKey::from_slice(point)
                .expect("SEC1 point");
            with(&Es256, &key, sig, input)
        }
        (Some(PublicKey::Rsa { modulus, exponent }), alg) => {
            let key = RsaPublicKey::new(
                rsa::BigUint::from_bytes_be(modulus),
                rsa::BigUint::from_bytes_be(exponent),
            )
            .expect("RSA key");
            let rsa = if alg == Algorithm::Ps256 {
                Rsa::ps256()
            } else {
                Rsa::rs256()
            };
            with(&rsa, &key, sig, input)
        }
        other => panic!("no public key for {other:?}"),
    }
}

/// The Worker's path: the host checks the signature, the core decides the rest. The verdict
/// must be the one `authorize` gives, request for request.
#[test]
fn host_verified_signatures_give_the_same_verdicts() {
    let now = NOW;
    let mut expired = good_claims();
    expired["exp"] = json!(NOW - 100);
    expired["iat"] = json!(NOW - 700);
    let mut other_audience = good_claims();
    other_audience["aud"] = json!("elsewhere");
    let tampered = {
        let t = good_token(&Signer::ed25519(1), "current");
        let mut parts: Vec<&str> = t.split('.').collect();
        let payload = b64(br#"{"iss":"https://auth.example.test","aud":"api.example.test","sub":"x","jti":"j","exp":1767226440}"#);
        parts[1] = &payload;
        parts.join(".")
    };
    let tokens = [
        good_token(&Signer::ed25519(1), "current"),
        good_token(&Signer::ed25519(2), "previous"),
        good_token(&Signer::es256(7), "ec"),
        good_token(&Signer::rs256(), "rsa"),
        token(&Signer::ed25519(1), "current", &expired),
        token(&Signer::ed25519(1), "current", &other_audience),
        good_token(&Signer::ed25519(9), "current"),
        good_token(&Signer::es256(8), "ec"),
        tampered,
        "garbage".to_string(),
    ];
    for path in ["/orders", "/admin/x"] {
        for token in &tokens {
            let auth = bearer(token);
            let headers = [("authorization", auth.as_str())];
            let mut inline = Edge::new(ROUTES);
            let expected = inline.run("GET", path, &headers, now, RevocationAnswer::CLEAR);

            let mut edge = Edge::new(ROUTES);
            let request = Request {
                method: "GET",
                path,
                headers: &headers[..],
            };
            let ring = edge.ring.take().expect("ring");
            let step =
                match authorize_deferred(&request, now, Some(&ring), &edge.policy, &mut edge.cache)
                {
                    Deferred::Decided(step) => step,
                    Deferred::VerifySignature(check) => {
                        let valid = host_verifies(&check, &ring);
                        assert_eq!(valid, check.verify_here(&ring), "{token:.40}");
                        check.finish(valid, now, &edge.policy, &mut edge.cache)
                    }
                };
            let got = match step {
                Step::Done(v) => v,
                Step::CheckRevocation(c) => c.finish(RevocationAnswer::CLEAR, &edge.policy),
            };
            assert_eq!(
                format!("{:?}", got.denial().map(|d| (d.reason, d.status()))),
                format!("{:?}", expected.denial().map(|d| (d.reason, d.status()))),
                "{path} {token:.40}"
            );
            if let (Verdict::Allow(a), Verdict::Allow(b)) = (&got, &expected) {
                assert_eq!(
                    a.edits(&edge.policy).collect::<Vec<_>>(),
                    b.edits(&inline.policy).collect::<Vec<_>>()
                );
            }
            // The second time the cache answers and no signature is asked for.
            if matches!(got, Verdict::Allow(_)) {
                assert!(matches!(
                    authorize_deferred(&request, now, Some(&ring), &edge.policy, &mut edge.cache),
                    Deferred::Decided(_)
                ));
            }
        }
    }
}
