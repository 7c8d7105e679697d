//! What only the Worker has: the push route for revocations and the Cron Trigger that repairs a
//! lost push. The scenarios every edge shares are in `edge.rs`.

use std::{
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use base64ct::{Base64UrlUnpadded, Encoding};
use edgeauth_e2e::{send, Stack, StackOptions, DENY_CACHE_SECONDS};
use serde_json::json;

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

/// Isolates in one location share one forced refetch per interval. A key the origin has just
/// published reaches every isolate for one JWKS fetch (the others read the claimant's answer),
/// and made-up `kid`s sent to every isolate cost the origin nothing more: a per-isolate limit
/// alone lets a flood spread over Cloudflare's many isolates multiply the origin's load.
#[tokio::test]
async fn isolates_of_one_location_share_one_forced_jwks_refetch() {
    let stack = Stack::start_with(StackOptions {
        second_worker: true,
        // Longer than the test, so every forced refetch falls in one interval.
        vars: vec![("KEYS_REFETCH_INTERVAL".to_string(), "300".to_string())],
        ..StackOptions::default()
    })
    .await;
    let edges = [
        stack.edge.clone(),
        stack.second_edge.clone().expect("a second Worker"),
    ];
    let at = |edge: &str, token: &str| {
        send(
            stack
                .client
                .get(format!("{edge}/orders"))
                .bearer_auth(token),
        )
    };
    let token = stack.login().await;
    for edge in &edges {
        assert_eq!(at(edge, &token).await.status, 200);
    }
    let served = || {
        stack
            .switches
            .jwks_served
            .lock()
            .expect("not poisoned")
            .len()
    };
    let before = served();
    // Tokens with a made-up signature under `kid`: a key known to the edge makes that a
    // `bad_signature`, one it does not know an `unknown_key`.
    let forged = |kid: &str| {
        let header = Base64UrlUnpadded::encode_string(
            json!({"alg": "EdDSA", "kid": kid, "typ": "at+jwt"})
                .to_string()
                .as_bytes(),
        );
        let payload = Base64UrlUnpadded::encode_string(b"{}");
        format!(
            "{header}.{payload}.{}",
            Base64UrlUnpadded::encode_string(&[0; 64])
        )
    };
    // The origin publishes a key; both isolates hold keys fresh for minutes without it.
    let (new_kid, _) = stack.rotate_origin_key().await;
    let published = Instant::now();
    while !stack
        .client
        .get(format!("{}/.well-known/jwks.json", stack.origin))
        .send()
        .await
        .expect("the origin answers")
        .text()
        .await
        .expect("a body")
        .contains(&new_kid)
    {
        assert!(
            published.elapsed() < Duration::from_secs(10),
            "never published"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for edge in &edges {
        let answer = at(edge, &forged(&new_kid)).await;
        assert_eq!(
            (answer.status, answer.json["reason"].as_str()),
            (401, Some("bad_signature")),
            "{edge} does not know {new_kid}"
        );
    }
    let after_publication = served();
    assert_eq!(
        after_publication,
        before + 1,
        "the isolates fetched the published key from the origin each"
    );
    for n in 0..40 {
        let answer = at(&edges[n % 2], &forged(&format!("made-up-{n}"))).await;
        assert_eq!(
            (answer.status, answer.json["reason"].as_str()),
            (401, Some("unknown_key"))
        );
    }
    assert_eq!(
        served(),
        after_publication,
        "made-up kids through two isolates fetched the JWKS again:\n{}",
        stack.edge_log()
    );
    for edge in &edges {
        assert_eq!(at(edge, &token).await.status, 200);
    }
}
