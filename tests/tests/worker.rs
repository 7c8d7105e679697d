//! What only the Worker has: the push route for revocations and the Cron Trigger that repairs a
//! lost push. The scenarios every edge shares are in `edge.rs`.

use std::{
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use edgeauth_e2e::{send, Stack, StackOptions, DENY_CACHE_SECONDS};

#[tokio::test]
async fn a_lost_push_is_repaired_by_the_cron_pull() {
    let stack = Stack::start().await;
    let token = stack.login().await;
    assert_eq!(stack.get("/orders", Some(&token)).await.status, 200);
    stack.switches.drop_pushes.store(true, Ordering::SeqCst);
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
        stack.edge_log()
    );
    // The cursor moved: a second pull stores nothing again.
    stack.run_cron().await;
    stack.expect_edge_log("\"stored\":0").await;
}

/// A cold isolate hit by many requests at once: none may get 503 `keys_unavailable` because a
/// neighbour's key fetch was under way (the old behaviour), and once one fetch has answered, the
/// next requests are served from the keys it stored.
#[tokio::test]
async fn concurrent_first_requests_are_not_refused_while_the_keys_arrive() {
    let stack = Stack::start().await;
    let token = stack.login().await;
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let request = stack
            .client
            .get(format!("{}/orders", stack.edge))
            .bearer_auth(&token);
        requests.spawn(send(request));
    }
    while let Some(answer) = requests.join_next().await {
        let answer = answer.expect("the request task");
        assert_eq!(answer.status, 200, "{:?}", answer.json);
    }
    let fetches = stack
        .switches
        .jwks_served
        .lock()
        .expect("not poisoned")
        .len();
    assert!((1..=20).contains(&fetches), "{fetches} JWKS fetches");
    for _ in 0..5 {
        assert_eq!(stack.get("/orders", Some(&token)).await.status, 200);
    }
    let after = stack
        .switches
        .jwks_served
        .lock()
        .expect("not poisoned")
        .len();
    assert_eq!(after, fetches, "keys held were fetched again");
}

#[tokio::test]
async fn pushes_must_be_signed_by_the_origin() {
    let stack = Stack::start().await;
    let token = stack.login().await;
    let push = format!("{}/.edgeauth/revocations", stack.edge);
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

/// The Worker hands the upstream's answer to the runtime unawaited; when there is none, the
/// client still gets the Worker's JSON answer, not the runtime's exception page.
#[tokio::test]
async fn an_unreachable_upstream_gets_a_json_502() {
    let stack = Stack::start_with(StackOptions {
        // The discard port: nothing listens there.
        vars: vec![("UPSTREAM_URL".to_string(), "http://127.0.0.1:9".to_string())],
        ..StackOptions::default()
    })
    .await;
    let token = stack.login().await;
    let answer = stack.get("/orders", Some(&token)).await;
    assert_eq!(
        (answer.status, answer.json["error"].as_str()),
        (502, Some("bad_gateway")),
        "{}",
        stack.edge_log()
    );
    assert_eq!(answer.header("content-type"), Some("application/json"));
    stack.expect_edge_log("\"event\":\"upstream_error\"").await;
    // The isolate's one handler serves every failure, and the Worker keeps answering.
    assert_eq!(stack.get("/orders", Some(&token)).await.status, 502);
    assert_eq!(stack.get("/orders", None).await.status, 401);
}

/// A JWKS fetch that gets no answer is given up at `FETCH_TIMEOUT_MS`: a fresh Worker answers
/// 503 with `Retry-After` then, instead of holding the client until the origin answers.
#[tokio::test]
async fn a_hung_jwks_fetch_is_given_up_at_the_deadline() {
    let stack = Stack::start_with(StackOptions {
        jwks_down_at_start: true,
        vars: vec![("FETCH_TIMEOUT_MS".to_string(), "1000".to_string())],
        ..StackOptions::default()
    })
    .await;
    let token = stack.login().await;
    stack.switches.jwks_hangs.store(true, Ordering::SeqCst);
    stack.switches.jwks_down.store(false, Ordering::SeqCst);
    let started = Instant::now();
    let answer = stack.get("/orders", Some(&token)).await;
    let waited = started.elapsed();
    assert_eq!(
        (answer.status, answer.json["reason"].as_str()),
        (503, Some("keys_unavailable")),
        "{}",
        stack.edge_log()
    );
    assert!(answer.header("retry-after").is_some());
    // The deadline, not the origin's minute; generous above it for a loaded machine.
    assert!(
        waited < Duration::from_secs(20),
        "answered after {waited:?}"
    );
    stack.expect_edge_log("no answer within 1000 ms").await;
}
