//! What an API client sees through either edge, the Worker in workerd or Envoy with the filter,
//! against the real origin. Every scenario runs on both (`edge::worker::*`, `edge::envoy::*`):
//! the same token must get the same answer everywhere.

use std::time::{Duration, Instant};

use edgeauth_e2e::{send, Edge, Stack, StackOptions};
use serde_json::json;

/// Mounts each scenario once per edge, as rustls mounts its API tests once per provider.
macro_rules! on_every_edge {
    ($($scenario:ident),* $(,)?) => {
        mod worker {
            $(#[tokio::test]
            async fn $scenario() {
                super::$scenario(edgeauth_e2e::Edge::Worker).await
            })*
        }
        mod envoy {
            $(#[tokio::test]
            async fn $scenario() {
                super::$scenario(edgeauth_e2e::Edge::Envoy).await
            })*
        }
    };
}

on_every_edge!(
    a_valid_token_reaches_the_upstream_with_verified_identity_only,
    bad_tokens_get_rfc_6750_answers,
    logout_is_refused_at_the_edge_within_the_bound,
    a_key_rotation_is_picked_up_without_restarting_the_edge,
    cached_keys_outlive_a_jwks_outage,
    a_fresh_edge_without_keys_answers_503,
    revoke_all_is_refused_at_the_edge_for_every_session,
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
            .header("x-user-scope", "admin"),
    )
    .await;
    assert_eq!(answer.status, 200, "{:?}", answer.json);
    assert_eq!(answer.json["path"], "/orders?page=2");
    assert_eq!(answer.json["headers"]["x-user-id"], sub.as_str());
    assert_eq!(answer.json["headers"]["x-user-scope"], "profile");

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

async fn a_key_rotation_is_picked_up_without_restarting_the_edge(edge: Edge) {
    let mut stack = Stack::start_on(edge).await;
    let before = stack.login().await;
    assert_eq!(stack.get("/orders", Some(&before)).await.status, 200);
    let new_kid = stack.rotate_origin_key().await;
    let after = stack.login().await;
    assert!(after.len() > 10);
    // The new kid is unknown to the edge's cached keys: one refetch, then accepted.
    let answer = stack.get("/orders", Some(&after)).await;
    assert_eq!(answer.status, 200, "{:?}", answer.json);
    stack.expect_edge_log(&new_kid).await;
    // Tokens signed with the previous key still pass.
    assert_eq!(stack.get("/orders", Some(&before)).await.status, 200);
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
