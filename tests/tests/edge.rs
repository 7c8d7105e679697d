//! What an API client sees through either edge, the Worker in workerd or Envoy with the filter,
//! against the real origin. Every scenario runs on both (`edge::worker::*`, `edge::envoy::*`):
//! the same token must get the same answer everywhere.

use std::time::{Duration, Instant};

use edgeauth_e2e::{send, Edge, Stack, StackOptions};
use serde_json::json;

on_every_edge!(
    a_valid_token_reaches_the_upstream_with_verified_identity_only,
    bad_tokens_get_rfc_6750_answers,
    logout_is_refused_at_the_edge_within_the_bound,
    a_key_rotation_across_origins_under_traffic_refuses_no_valid_token,
    cached_keys_outlive_a_jwks_outage,
    a_fresh_edge_without_keys_answers_503,
    revoke_all_is_refused_at_the_edge_for_every_session,
    what_upstreams_read_differently_gets_the_same_rule_and_the_same_verdict,
    a_refusal_is_readable_by_a_listed_page_and_by_no_other,
);

async fn a_valid_token_reaches_the_upstream_with_verified_identity_only(edge: Edge) {
    let stack = Stack::start_on(edge).await;
    let token = stack.login().await;
    let sub = Stack::claims_of(&token)["sub"]
        .as_str()
        .expect("sub")
        .to_string();
    // A client-supplied identity must never reach the upstream.
    let answer = send(
        stack
            .client
            .get(format!("{}/orders?page=2", stack.edge))
            .bearer_auth(&token)
            .header("x-user-id", "admin")
            .header("X-User-Id", "root")
            .header("x-user-scope", "admin")
            // CGI and WSGI upstreams read these as X-User-Id and X-User-Scope.
            .header("x_user_id", "admin")
            .header("x-user_id", "admin")
            .header("X_User_Scope", "admin"),
    )
    .await;
    assert_eq!(answer.status, 200, "{:?}", answer.json);
    assert_eq!(answer.json["path"], "/orders?page=2");
    assert_eq!(answer.json["headers"]["x-user-id"], sub.as_str());
    assert_eq!(answer.json["headers"]["x-user-scope"], "profile");
    let forwarded = answer.json["headers"].as_object().expect("headers");
    for alias in ["x_user_id", "x-user_id", "x_user_scope"] {
        assert!(
            !forwarded.contains_key(alias),
            "{alias} reached the upstream"
        );
    }

    // The same behind forty other headers: the native module reads a long header list into
    // another buffer than a short one, and the spoofed names come last.
    let mut padded = stack
        .client
        .get(format!("{}/orders", stack.edge))
        .bearer_auth(&token);
    for i in 0..40 {
        padded = padded.header(format!("x-padding-{i}"), "-");
    }
    let answer = send(
        padded
            .header("X-User-Id", "root")
            .header("x_user_id", "admin"),
    )
    .await;
    assert_eq!(answer.status, 200, "{:?}", answer.json);
    assert_eq!(answer.json["headers"]["x-user-id"], sub.as_str());
    assert_eq!(answer.json["headers"]["x-padding-39"], "-");
    assert!(!answer.json["headers"]
        .as_object()
        .expect("headers")
        .contains_key("x_user_id"));

    // Bodies stream through unchanged, whatever their bytes.
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let answer = send(
        stack
            .client
            .post(format!("{}/upload", stack.edge))
            .bearer_auth(&token)
            .header("content-type", "application/octet-stream")
            .body(payload.clone()),
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json["method"], "POST");
    assert_eq!(
        answer.json["body"],
        String::from_utf8_lossy(&payload).into_owned()
    );
}

async fn bad_tokens_get_rfc_6750_answers(edge: Edge) {
    let stack = Stack::start_on(edge).await;
    let now = edgeauth_origin::clock::now();

    let missing = stack.get("/orders", None).await;
    assert_eq!(missing.status, 401);
    // RFC 6750 §3.1: no error attribute when no token was presented.
    assert_eq!(missing.header("www-authenticate"), Some("Bearer"));

    let expired = stack.mint(&json!({"iat": now - 1200, "exp": now - 600}));
    let answer = stack.get("/orders", Some(&expired)).await;
    assert_eq!(answer.status, 401);
    assert!(
        answer
            .header("www-authenticate")
            .is_some_and(|v| v.contains("error=\"invalid_token\"")),
        "{:?}",
        answer.headers
    );
    assert_eq!(answer.json["reason"], "token_expired");

    let other_audience = stack.mint(&json!({"aud": "another-api"}));
    let answer = stack.get("/orders", Some(&other_audience)).await;
    assert_eq!(
        (answer.status, answer.json["reason"].as_str()),
        (401, Some("audience_not_allowed"))
    );

    let token = stack.login().await;
    let answer = stack.get("/admin/users", Some(&token)).await;
    assert_eq!(answer.status, 403);
    assert!(answer.header("www-authenticate").is_some_and(|v| v
        .contains("error=\"insufficient_scope\"")
        && v.contains("scope=\"admin\"")));

    // Nothing a client sends makes the edge fail: every answer is a clear 4xx with JSON.
    let long = "A".repeat(20_000);
    for hostile in [
        "",
        "a.b",
        "a.b.c",
        "....",
        "e30.e30.",
        long.as_str(),
        "€€€.€€€.€€€",
    ] {
        let answer = send(
            stack
                .client
                .get(format!("{}/orders", stack.edge))
                .header("authorization", format!("Bearer {hostile}")),
        )
        .await;
        assert!(
            (400..500).contains(&answer.status) && answer.json["error"].is_string(),
            "{hostile:.20}: {} {:?}",
            answer.status,
            answer.json
        );
    }
    assert!(!stack.edge_log().contains("internal_error"));
}

async fn a_refusal_is_readable_by_a_listed_page_and_by_no_other(edge: Edge) {
    const APP: &str = "http://app.e2e.test:8443";
    let stack = Stack::start_with(StackOptions {
        edge,
        page_origins: vec![APP.to_string()],
        ..StackOptions::default()
    })
    .await;
    let now = edgeauth_origin::clock::now();
    let expired = stack.mint(&json!({"iat": now - 1200, "exp": now - 600}));
    let refused_from = |origins: &[&str]| {
        let mut request = stack
            .client
            .get(format!("{}/orders", stack.edge))
            .bearer_auth(&expired);
        for origin in origins {
            request = request.header("origin", *origin);
        }
        send(request)
    };
    let cors_of = |answer: &edgeauth_e2e::Answer| {
        let mut names: Vec<String> = answer
            .headers
            .keys()
            .map(|name| name.as_str().to_string())
            .filter(|name| name.starts_with("access-control-"))
            .collect();
        names.sort();
        names
    };

    // A page on the listed origin reads the refusal and why: it can refresh, not report an outage.
    let answer = refused_from(&[APP]).await;
    assert_eq!(answer.status, 401);
    assert_eq!(answer.json["reason"], "token_expired");
    assert_eq!(answer.header("access-control-allow-origin"), Some(APP));
    assert_eq!(
        answer.header("access-control-allow-credentials"),
        Some("true")
    );
    let exposed = answer
        .header("access-control-expose-headers")
        .unwrap_or_default();
    assert!(
        exposed.contains("www-authenticate") && exposed.contains("retry-after"),
        "{exposed}"
    );
    assert!(answer.header("www-authenticate").is_some());
    assert_eq!(answer.header("vary"), Some("origin"));

    // Any other page, no page, or two origins that disagree: nothing a browser would let it read.
    for origins in [
        &["http://evil.e2e.test:8443"][..],
        &[],
        &[APP, "http://evil.e2e.test:8443"],
    ] {
        let answer = refused_from(origins).await;
        assert_eq!(answer.status, 401);
        assert_eq!(cors_of(&answer), Vec::<String>::new(), "{origins:?}");
        assert_eq!(answer.header("vary"), Some("origin"), "{origins:?}");
    }

    // A missing token is refused alike, and the preflight still reaches the upstream, which
    // answers it (its CORS is the upstream's job, as on its answers to valid tokens).
    let missing = send(
        stack
            .client
            .get(format!("{}/orders", stack.edge))
            .header("origin", APP),
    )
    .await;
    assert_eq!(
        (
            missing.status,
            missing.header("access-control-allow-origin")
        ),
        (401, Some(APP))
    );
    let preflight = send(
        stack
            .client
            .request(reqwest::Method::OPTIONS, format!("{}/orders", stack.edge))
            .header("origin", APP)
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "authorization"),
    )
    .await;
    assert_eq!(preflight.status, 204, "{:?}", preflight.json);
    assert_eq!(preflight.header("access-control-allow-origin"), Some(APP));
    let token = stack.login().await;
    let allowed = send(
        stack
            .client
            .get(format!("{}/orders", stack.edge))
            .bearer_auth(&token)
            .header("origin", APP),
    )
    .await;
    assert_eq!(allowed.status, 200);
    assert_eq!(allowed.header("access-control-allow-origin"), Some(APP));
}

async fn logout_is_refused_at_the_edge_within_the_bound(edge: Edge) {
    let stack = Stack::start_on(edge).await;
    let token = stack.login().await;
    // Warm the edge's memory with "not revoked" (the Worker's deny cache, the filter's verified
    // token cache): the worst case for the bound.
    assert_eq!(stack.get("/orders", Some(&token)).await.status, 200);
    stack.logout(&token).await;
    let logged_out = Instant::now();
    let bound = edge.revocation_bound();
    loop {
        let answer = stack.get("/orders", Some(&token)).await;
        if answer.status == 401 {
            assert_eq!(answer.json["reason"], "token_revoked");
            break;
        }
        assert!(
            logged_out.elapsed() < bound,
            "still accepted after {bound:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "{edge:?}: revoked {} ms after logout returned",
        logged_out.elapsed().as_millis()
    );
    // Another token of another session is untouched.
    let other = stack.login().await;
    assert_eq!(stack.get("/orders", Some(&other)).await.status, 200);
}

/// The `kid` in a token's header.
fn kid_of(token: &str) -> String {
    use base64ct::{Base64UrlUnpadded, Encoding};
    let header = Base64UrlUnpadded::decode_vec(token.split('.').next().unwrap_or("")).expect("b64");
    let header: serde_json::Value = serde_json::from_slice(&header).expect("JSON header");
    header["kid"].as_str().expect("a kid").to_string()
}

/// Refreshes each session at its own origin; returns the new access tokens.
async fn refresh_each(stack: &Stack, sessions: &mut [(String, String)]) -> Vec<String> {
    let mut fresh = Vec::new();
    for (origin, refresh_token) in sessions.iter_mut() {
        let answer = stack
            .post_json(
                &format!("{origin}/v1/token/refresh"),
                &json!({"refresh_token": refresh_token}),
            )
            .await;
        *refresh_token = answer["refresh_token"]
            .as_str()
            .expect("refresh token")
            .to_string();
        fresh.push(
            answer["access_token"]
                .as_str()
                .expect("access token")
                .to_string(),
        );
    }
    fresh
}

async fn a_key_rotation_across_origins_under_traffic_refuses_no_valid_token(edge: Edge) {
    // Two origin instances on one table. Tokens live 60 s and the edge allows 5 s of clock skew,
    // so a superseded key may retire 60 + 6 s after its successor starts signing.
    let stack = Stack::start_with(StackOptions {
        edge,
        origin_instances: 2,
        jwks_max_age: 1,
        access_ttl: 60,
        retire_margin: 6,
        policy_extra: r#","leeway_seconds":5"#.to_string(),
        ..StackOptions::default()
    })
    .await;
    // One session on each instance, refreshed there: each round brings a fresh token from each.
    let mut sessions = Vec::new();
    for origin in &stack.origins {
        let email = stack.register().await;
        let login = stack
            .post_json(
                &format!("{origin}/v1/login"),
                &json!({"email": email, "password": "correct horse battery staple", "refresh_token_in_body": true}),
            )
            .await;
        sessions.push((
            origin.clone(),
            login["refresh_token"]
                .as_str()
                .expect("refresh token")
                .to_string(),
        ));
    }
    let first_kid = stack.origin_keys().current(0).kid().to_string();
    let mut live: Vec<(String, i64)> = Vec::new(); // (token, exp)
    let (mut requests, mut refused) = (0u32, Vec::new());
    let mut kids_seen = std::collections::BTreeSet::new();
    let rotated_at;
    let (new_kid, signs_from) = {
        // Traffic before, during and after the rotation; every token still valid is re-sent.
        let mut rotation = None;
        let started = Instant::now();
        loop {
            let now = edgeauth_origin::clock::now();
            for token in refresh_each(&stack, &mut sessions).await {
                let exp = Stack::claims_of(&token)["exp"].as_i64().expect("exp");
                kids_seen.insert(kid_of(&token));
                live.push((token, exp));
            }
            live.retain(|(_, exp)| *exp > now + 2);
            for (token, _) in &live {
                let answer = stack.get("/orders", Some(token)).await;
                requests += 1;
                if answer.status != 200 {
                    refused.push((kid_of(token), answer.status, answer.json.clone()));
                }
            }
            if rotation.is_none() && started.elapsed() > Duration::from_secs(2) {
                rotation = Some(stack.rotate_origin_key().await);
            }
            if let Some((_, signs_from)) = &rotation {
                if now > signs_from + 3 {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        rotated_at = Instant::now();
        rotation.expect("rotated")
    };
    assert!(
        refused.is_empty(),
        "{} of {requests} refused: {refused:?}",
        refused.len()
    );
    // The edge held the new key before it signed: it never had to refetch on an unknown kid.
    let first_served = stack
        .switches
        .jwks_served
        .lock()
        .expect("not poisoned")
        .iter()
        .find(|(_, jwks)| jwks.contains(&new_kid))
        .map(|(at, _)| *at)
        .expect("the new key was served to the edge");
    assert!(
        first_served < signs_from * 1000,
        "the edge first fetched the new key {} ms after it began to sign",
        first_served - signs_from * 1000
    );
    assert!(
        kids_seen.contains(&first_kid) && kids_seen.contains(&new_kid),
        "{kids_seen:?}"
    );
    // Tokens of the old key are still in use; every token the origins now issue has the new kid.
    assert!(live.iter().any(|(t, _)| kid_of(t) == first_kid));
    let fresh = refresh_each(&stack, &mut sessions).await;
    assert!(fresh.iter().all(|t| kid_of(t) == new_kid));
    println!(
        "{edge:?}: {requests} requests through the rotation, none refused; the edge held the new key {} ms before it signed",
        signs_from * 1000 - first_served
    );

    // Until the old key retires, its tokens keep passing; after it, they are refused even when
    // they have not expired (one made with the old key, as a thief of it would).
    let retires_at = signs_from + 60 + 6;
    while edgeauth_origin::clock::now() < retires_at + 3 {
        for token in &refresh_each(&stack, &mut sessions).await {
            let answer = stack.get("/orders", Some(token)).await;
            assert_eq!(answer.status, 200, "{:?}", answer.json);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let jwks: serde_json::Value = stack
        .client
        .get(format!("{}/.well-known/jwks.json", stack.origins[1]))
        .send()
        .await
        .expect("origin answers")
        .json()
        .await
        .expect("json");
    let published: Vec<&str> = jwks["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .filter_map(|k| k["kid"].as_str())
        .collect();
    assert_eq!(published, [new_kid.as_str()]);
    let forged = stack.mint(&json!({}));
    assert_eq!(kid_of(&forged), first_kid);
    let answer = stack.get("/orders", Some(&forged)).await;
    assert_eq!(answer.status, 401, "{:?}", answer.json);
    println!(
        "{edge:?}: old key refused {} s after the rotation",
        rotated_at.elapsed().as_secs()
    );
}

async fn cached_keys_outlive_a_jwks_outage(edge: Edge) {
    // Keys fresh for one second only, so the outage below outlasts their freshness.
    let stack = Stack::start_with(StackOptions {
        jwks_max_age: 1,
        edge,
        ..StackOptions::default()
    })
    .await;
    let token = stack.login().await;
    assert_eq!(stack.get("/orders", Some(&token)).await.status, 200);
    stack
        .switches
        .jwks_down
        .store(true, std::sync::atomic::Ordering::SeqCst);
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let answer = stack.get("/orders", Some(&token)).await;
        assert_eq!(answer.status, 200, "{:?}", answer.json);
    }
    // The refetches were tried and failed: the stale keys were served on purpose.
    stack.expect_edge_log("jwks_fetch_failed").await;
}

async fn a_fresh_edge_without_keys_answers_503(edge: Edge) {
    let stack = Stack::start_with(StackOptions {
        jwks_down_at_start: true,
        edge,
        ..StackOptions::default()
    })
    .await;
    let token = stack.login().await;
    let answer = stack.get("/orders", Some(&token)).await;
    assert_eq!(answer.status, 503, "{:?}", answer.json);
    assert!(answer.header("retry-after").is_some());
    assert_eq!(answer.json["reason"], "keys_unavailable");
    // Once the JWKS answers again, the same token passes (after the refetch interval and, in
    // Envoy, the fetcher's next tick and the first feed read).
    stack
        .switches
        .jwks_down
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let answer = stack.get("/orders", Some(&token)).await;
        if answer.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} {:?}",
            answer.status,
            answer.json
        );
    }
}

async fn revoke_all_is_refused_at_the_edge_for_every_session(edge: Edge) {
    let stack = Stack::start_on(edge).await;
    let email = stack.register().await;
    let laptop = stack.login_as(&email).await;
    let phone = stack.login_as(&email).await;
    for token in [&laptop, &phone] {
        assert_eq!(stack.get("/orders", Some(token)).await.status, 200);
    }
    stack.revoke_all(&phone).await;
    let revoked = Instant::now();
    let bound = edge.revocation_bound();
    for token in [&laptop, &phone] {
        loop {
            let answer = stack.get("/orders", Some(token)).await;
            if answer.status == 401 {
                assert_eq!(answer.json["reason"], "user_tokens_revoked");
                break;
            }
            assert!(revoked.elapsed() < bound, "still accepted after {bound:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    println!(
        "{edge:?}: every session refused {} ms after revoke-all returned",
        revoked.elapsed().as_millis()
    );
    // A login after it starts a session the edge accepts.
    let later = stack.login_as(&email).await;
    assert_eq!(stack.get("/orders", Some(&later)).await.status, 200);
}

/// Requests whose path, method or cookies an upstream may read otherwise than the edge: a rule
/// must still apply to them, and both edges must give the same answer.
async fn what_upstreams_read_differently_gets_the_same_rule_and_the_same_verdict(edge: Edge) {
    let stack = Stack::start_with(StackOptions {
        edge,
        policy_extra: concat!(
            r#","sources":{"cookie":"at"},"routes":["#,
            r#"{"path":"/health","public":true},"#,
            r#"{"prefix":"/admin/","scopes":["admin"]},"#,
            r#"{"path":"/orders","methods":["POST"],"scopes":["orders:write"]}]"#
        )
        .to_string(),
        ..StackOptions::default()
    })
    .await;
    let token = stack.login().await;
    // Case-insensitive upstreams and those that drop `;` parameters read these as /admin/users.
    for path in ["/ADMIN/users", "/Admin/users", "/admin;jsessionid=1/users"] {
        let answer = stack.get(path, Some(&token)).await;
        assert_eq!(
            (answer.status, answer.json["reason"].as_str()),
            (403, Some("insufficient_scope")),
            "{path}"
        );
    }
    // A public rule waives the token for its path as written, and for nothing else.
    assert_eq!(stack.get("/health", None).await.status, 200);
    for path in ["/HEALTH", "/health;x=1"] {
        assert_eq!(stack.get(path, None).await.status, 401, "{path}");
    }
    // `..;` is `..` to Tomcat: refused, not matched against anything.
    let answer = stack.get("/health/..;/admin/users", None).await;
    assert_eq!(
        (answer.status, answer.json["reason"].as_str()),
        (400, Some("invalid_request"))
    );
    // A lower-case method never slips past a method rule. Over HTTP/1.1 both runtimes refuse
    // `post` themselves (Envoy 400, workerd 501); HTTP/2 carries it to Envoy's filter as sent.
    let post = reqwest::Method::from_bytes(b"post").expect("a method token");
    let http1 = send(
        stack
            .client
            .request(post.clone(), format!("{}/orders", stack.edge))
            .bearer_auth(&token),
    )
    .await;
    assert!(matches!(http1.status, 400 | 501), "{}", http1.status);
    if edge.is_envoy() {
        let http2 = reqwest::Client::builder()
            .http2_prior_knowledge()
            .build()
            .expect("an HTTP/2 client");
        let answer = send(
            http2
                .request(post, format!("{}/orders", stack.edge))
                .bearer_auth(&token),
        )
        .await;
        assert_eq!(
            (answer.status, answer.json["reason"].as_str()),
            (400, Some("invalid_request")),
            "{:?}",
            answer.json
        );
    }
    // Two token cookies are ambiguous on both edges, whether the runtime joins the headers
    // (workerd, with ", ") or passes them apart (Envoy); one is read alike.
    let twice = send(
        stack
            .client
            .get(format!("{}/orders", stack.edge))
            .header("cookie", format!("at={token}"))
            .header("cookie", format!("theme=dark; at={token}")),
    )
    .await;
    assert_eq!(
        (twice.status, twice.json["reason"].as_str()),
        (400, Some("invalid_request")),
        "{:?}",
        twice.json
    );
    let once = send(
        stack
            .client
            .get(format!("{}/orders", stack.edge))
            .header("cookie", "theme=dark")
            .header("cookie", format!("at={token}")),
    )
    .await;
    assert_eq!(once.status, 200, "{:?}", once.json);
    assert!(!stack.edge_log().contains("internal_error"));
}
