//! The Worker in workerd (`wrangler dev --local`) in front of a sample upstream, against the real
//! origin: what an API client sees.

use std::time::{Duration, Instant};

use edgeauth_e2e::{send, Stack, StackOptions, DENY_CACHE_SECONDS};
use serde_json::json;

#[tokio::test]
async fn a_valid_token_reaches_the_upstream_with_verified_identity_only() {
    let stack = Stack::start().await;
    let token = stack.login().await;
    let sub = Stack::claims_of(&token)["sub"]
        .as_str()
        .expect("sub")
        .to_string();
    // A client-supplied identity must never reach the upstream.
    let answer = send(
        stack
            .client
            .get(format!("{}/orders?page=2", stack.worker))
            .bearer_auth(&token)
            .header("x-user-id", "admin")
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
            .post(format!("{}/upload", stack.worker))
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

#[tokio::test]
async fn bad_tokens_get_rfc_6750_answers() {
    let stack = Stack::start().await;
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

    // Nothing a client sends makes the Worker fail: every answer is a clear 4xx with JSON.
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
                .get(format!("{}/orders", stack.worker))
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
    assert!(!stack.worker_log().contains("internal_error"));
}

#[tokio::test]
async fn logout_is_refused_at_the_edge_within_the_bound() {
    let stack = Stack::start().await;
    let token = stack.login().await;
    // Warm the isolate's deny-list memory with "not revoked": the worst case for the bound.
    assert_eq!(stack.get("/orders", Some(&token)).await.status, 200);
    stack.logout(&token).await;
    let logged_out = Instant::now();
    let bound = Duration::from_secs(DENY_CACHE_SECONDS + 5);
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
        "revoked at the edge {} ms after logout returned (push, deny cache {DENY_CACHE_SECONDS} s)",
        logged_out.elapsed().as_millis()
    );
    // Another token of another session is untouched.
    let other = stack.login().await;
    assert_eq!(stack.get("/orders", Some(&other)).await.status, 200);
}

#[tokio::test]
async fn a_lost_push_is_repaired_by_the_cron_pull() {
    let stack = Stack::start().await;
    let token = stack.login().await;
    assert_eq!(stack.get("/orders", Some(&token)).await.status, 200);
    stack
        .switches
        .drop_pushes
        .store(true, std::sync::atomic::Ordering::SeqCst);
    stack.logout(&token).await;
    tokio::time::sleep(Duration::from_secs(DENY_CACHE_SECONDS + 1)).await;
    // The push was lost: nothing told the edge yet.
    assert_eq!(stack.get("/orders", Some(&token)).await.status, 200);

    stack.run_cron().await;
    tokio::time::sleep(Duration::from_secs(DENY_CACHE_SECONDS + 1)).await;
    let answer = stack.get("/orders", Some(&token)).await;
    assert_eq!(
        (answer.status, answer.json["reason"].as_str()),
        (401, Some("token_revoked")),
        "{}",
        stack.worker_log()
    );
    // The cursor moved: a second pull stores nothing again.
    stack.run_cron().await;
    stack.expect_worker_log("\"stored\":0").await;
}

#[tokio::test]
async fn pushes_must_be_signed_by_the_origin() {
    let stack = Stack::start().await;
    let token = stack.login().await;
    let push = format!("{}/.edgeauth/revocations", stack.worker);
    // An access token is not a revocation, however well signed (RFC 8725 §3.11).
    let answer = send(stack.client.post(&push).body(token.clone())).await;
    assert_eq!(
        (answer.status, answer.json["reason"].as_str()),
        (400, Some("token_type_not_allowed"))
    );
    for garbage in ["", "not a jws", "a.b.c"] {
        let answer = send(stack.client.post(&push).body(garbage)).await;
        assert_eq!(answer.status, 400, "{garbage}");
    }
    let answer = send(stack.client.post(&push).body(vec![b'a'; 64 * 1024])).await;
    assert_eq!(answer.status, 413);
    let answer = send(stack.client.get(&push)).await;
    assert_eq!((answer.status, answer.header("allow")), (405, Some("POST")));
    // None of that revoked anything.
    assert_eq!(stack.get("/orders", Some(&token)).await.status, 200);
}

#[tokio::test]
async fn a_key_rotation_is_picked_up_without_restarting_the_worker() {
    let mut stack = Stack::start().await;
    let before = stack.login().await;
    assert_eq!(stack.get("/orders", Some(&before)).await.status, 200);
    let new_kid = stack.rotate_origin_key().await;
    let after = stack.login().await;
    assert!(after.len() > 10);
    // The new kid is unknown to the Worker's cached keys: one refetch, then accepted.
    let answer = stack.get("/orders", Some(&after)).await;
    assert_eq!(answer.status, 200, "{:?}", answer.json);
    stack.expect_worker_log(&new_kid).await;
    // Tokens signed with the previous key still pass.
    assert_eq!(stack.get("/orders", Some(&before)).await.status, 200);
}

#[tokio::test]
async fn cached_keys_outlive_a_jwks_outage() {
    // Keys fresh for one second only, so the outage below outlasts their freshness.
    let stack = Stack::start_with(StackOptions {
        jwks_max_age: 1,
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
    stack.expect_worker_log("jwks_fetch_failed").await;
}

#[tokio::test]
async fn a_fresh_worker_without_keys_answers_503() {
    let stack = Stack::start_with(StackOptions {
        jwks_down_at_start: true,
        ..StackOptions::default()
    })
    .await;
    let token = stack.login().await;
    let answer = stack.get("/orders", Some(&token)).await;
    assert_eq!(answer.status, 503, "{:?}", answer.json);
    assert!(answer.header("retry-after").is_some());
    assert_eq!(answer.json["reason"], "keys_unavailable");
    // Once the JWKS answers again, the same token passes (after the refetch interval).
    stack
        .switches
        .jwks_down
        .store(false, std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(stack.get("/orders", Some(&token)).await.status, 200);
}
