//! What only Envoy has: several VMs sharing one fetcher, the host's raw header bytes, and Envoy's
//! native `jwt_authn` beside the filter for a differential test. The scenarios every edge shares
//! are in `edge.rs`.

use std::{
    future::Future,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use base64ct::{Base64UrlUnpadded, Encoding as _};
use edgeauth_e2e::{
    envoy_binary, origin_counter, previous_envoy_binary, send, validate_native_example, Answer,
    Edge, Stack, StackOptions, AUDIENCE, ISSUER, LDS_DRAIN,
};
use edgeauth_origin::keys::{SigningAlgorithm, SigningKey};
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::{json, Value};

/// Access-token claims at `now`, changed by `changes` (a `null` removes a claim).
fn claims(changes: Value) -> Value {
    let now = edgeauth_origin::clock::now();
    let mut claims = json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": uuid::Uuid::new_v4().to_string(),
        "scope": "profile", "iat": now, "exp": now + 600,
        "jti": uuid::Uuid::new_v4().to_string(),
    });
    for (k, v) in changes.as_object().expect("an object of claim changes") {
        if v.is_null() {
            claims
                .as_object_mut()
                .expect("an object")
                .remove(k.as_str());
        } else {
            claims[k] = v.clone();
        }
    }
    claims
}

/// Signed with the origin's current key, with any `typ` and any claims.
fn signed(stack: &Stack, typ: &str, changes: Value) -> String {
    stack
        .origin_keys()
        .current(0)
        .sign_jws(typ, &claims(changes))
        .expect("signed")
}

fn bearer(token: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {token}")).expect("a header value"),
    );
    headers
}

async fn through(stack: &Stack, base: &str, headers: &HeaderMap) -> Answer {
    send(
        stack
            .client
            .get(format!("{base}/orders"))
            .headers(headers.clone()),
    )
    .await
}

/// `GET /orders` through the filter on a connection of its own, so that successive calls land
/// on different worker threads (different VMs).
async fn on_a_new_connection(stack: &Stack, token: &str) -> Answer {
    send(
        reqwest::Client::new()
            .get(format!("{}/orders", stack.edge))
            .bearer_auth(token),
    )
    .await
}

/// The same tokens through the filter and through `jwt_authn`, configured alike (issuer,
/// audience, 30 s leeway, `exp` required, lifetime at most an hour, the origin's JWKS through the
/// same relay): the same accept or reject for every case both support. The cases where they
/// differ are listed with the reason; each is the filter being stricter, on purpose.
#[tokio::test]
async fn the_filter_and_jwt_authn_agree_on_every_case_both_support() {
    the_filter_and_jwt_authn_agree(Edge::Envoy).await;
}

/// The same cases, with the filter as a native dynamic module: the same verdicts.
#[tokio::test]
async fn the_native_module_and_jwt_authn_agree_on_every_case_both_support() {
    the_filter_and_jwt_authn_agree(Edge::EnvoyNative).await;
}

async fn the_filter_and_jwt_authn_agree(edge: Edge) {
    let stack = Stack::start_on(edge).await;
    let native = stack.native.clone().expect("a jwt_authn listener");
    let now = edgeauth_origin::clock::now();

    let valid = stack.login().await;
    let (header, payload, signature) = {
        let mut parts = valid.split('.');
        let mut next = || parts.next().expect("three parts").to_string();
        (next(), next(), next())
    };
    let mut flipped = signature.into_bytes();
    flipped[10] = if flipped[10] == b'A' { b'B' } else { b'A' };
    let bad_signature = format!("{header}.{payload}.{}", String::from_utf8_lossy(&flipped));
    let alg_none = format!(
        "{}.{payload}.",
        Base64UrlUnpadded::encode_string(br#"{"alg":"none","typ":"at+jwt"}"#)
    );
    let stranger = SigningKey::generate(SigningAlgorithm::EdDsa)
        .expect("a key")
        .sign_jws("at+jwt", &claims(json!({})))
        .expect("signed");
    let revoked = stack.login().await;
    stack.logout(&revoked).await;
    let mut two_headers = bearer(&valid);
    two_headers.append(
        "authorization",
        HeaderValue::from_static("Bearer not-a-token"),
    );

    // (case, request headers, filter accepts, jwt_authn accepts, why they differ)
    let cases: Vec<(&str, HeaderMap, bool, bool, &str)> = vec![
        ("valid token from a login", bearer(&valid), true, true, ""),
        (
            "typ JWT",
            bearer(&signed(&stack, "JWT", json!({}))),
            false,
            true,
            "RFC 9068 §4: the default policy takes at+jwt only, as the origin issues",
        ),
        (
            "aud is an array holding ours",
            bearer(&signed(&stack, "at+jwt", json!({"aud": ["other", AUDIENCE]}))),
            true,
            true,
            "",
        ),
        (
            "expired within the leeway",
            bearer(&signed(&stack, "at+jwt", json!({"iat": now - 700, "exp": now - 10}))),
            true,
            true,
            "",
        ),
        (
            "expired",
            bearer(&signed(&stack, "at+jwt", json!({"iat": now - 1200, "exp": now - 600}))),
            false,
            false,
            "",
        ),
        (
            "not yet valid",
            bearer(&signed(&stack, "at+jwt", json!({"nbf": now + 300}))),
            false,
            false,
            "",
        ),
        ("no exp", bearer(&signed(&stack, "at+jwt", json!({"exp": null}))), false, false, ""),
        (
            "lifetime over an hour",
            bearer(&signed(&stack, "at+jwt", json!({"exp": now + 7200}))),
            false,
            false,
            "",
        ),
        (
            "another audience",
            bearer(&signed(&stack, "at+jwt", json!({"aud": "another-api"}))),
            false,
            false,
            "",
        ),
        (
            "another issuer",
            bearer(&signed(&stack, "at+jwt", json!({"iss": "https://evil.example"}))),
            false,
            false,
            "",
        ),
        ("bad signature", bearer(&bad_signature), false, false, ""),
        ("alg none", bearer(&alg_none), false, false, ""),
        ("a key not in the JWKS", bearer(&stranger), false, false, ""),
        ("no token", HeaderMap::new(), false, false, ""),
        ("not a JWT", bearer("abc.def"), false, false, ""),
        // Both refuse; the filter says 400 invalid_request (ambiguous), jwt_authn 401.
        ("two Authorization headers", two_headers, false, false, ""),
        (
            "typ of another kind of JWT",
            bearer(&signed(&stack, "edgeauth-revocation+jwt", json!({}))),
            false,
            true,
            "RFC 8725 §3.11 / RFC 9068 §4: only access-token types pass; jwt_authn has no typ check",
        ),
        (
            "no jti",
            bearer(&signed(&stack, "at+jwt", json!({"jti": null}))),
            false,
            true,
            "the policy requires sub and jti (revocation needs jti); jwt_authn cannot require claims",
        ),
        (
            "no sub",
            bearer(&signed(&stack, "at+jwt", json!({"sub": null}))),
            false,
            true,
            "the policy requires sub, the user id forwarded upstream",
        ),
        (
            "issued in the future",
            bearer(&signed(&stack, "at+jwt", json!({"iat": now + 600, "exp": now + 900}))),
            false,
            true,
            "RFC 7519 §4.1.6: an iat past the leeway means a wrong clock or a forged token; jwt_authn ignores iat",
        ),
        (
            "logged out",
            bearer(&revoked),
            false,
            true,
            "revocation: the filter reads the origin's feed; jwt_authn has no deny-list",
        ),
    ];

    // The logout above must have reached the filter before its case is judged.
    tokio::time::sleep(edge.revocation_bound()).await;
    let mut report = Vec::new();
    let mut disagreements = Vec::new();
    for (case, headers, filter_accepts, native_accepts, why) in &cases {
        let filter = through(&stack, &stack.edge, headers).await;
        let jwt_authn = through(&stack, &native, headers).await;
        // A rejection is a 4xx with the filter's JSON body, never a 5xx or a pass.
        assert!(
            filter.status == 200 || (400..500).contains(&filter.status),
            "{case}: {} {:?}",
            filter.status,
            filter.json
        );
        report.push(format!(
            "{case:32} filter {} ({})  jwt_authn {}{}",
            filter.status,
            filter.json["reason"].as_str().unwrap_or("-"),
            jwt_authn.status,
            if why.is_empty() {
                String::new()
            } else {
                format!("  differs on purpose: {why}")
            }
        ));
        let seen = (filter.status == 200, jwt_authn.status == 200);
        if seen != (*filter_accepts, *native_accepts) {
            disagreements.push(format!(
                "{case}: expected filter {filter_accepts} / jwt_authn {native_accepts}, saw filter {} {:?} / jwt_authn {}",
                filter.status, filter.json, jwt_authn.status
            ));
        }
    }
    println!("{}", report.join("\n"));
    assert!(disagreements.is_empty(), "{disagreements:#?}");
}

/// Envoy runs a VM per worker thread plus one on the main thread; only the elected one calls
/// the origin, and the keys and revocations it reads reach every VM.
#[tokio::test]
async fn one_vm_fetches_for_all_and_every_vm_decides_alike() {
    one_fetch_serves_every_worker(Edge::Envoy).await;
}

/// The native module: one configuration shared by every worker thread, fetching on the main
/// thread; a revocation reaches every worker at once.
#[tokio::test]
async fn the_native_modules_one_fetch_serves_every_worker_thread() {
    one_fetch_serves_every_worker(Edge::EnvoyNative).await;
}

async fn one_fetch_serves_every_worker(edge: Edge) {
    let stack = Stack::start_on(edge).await;
    let token = stack.login().await;
    // New connections land on both worker threads.
    for _ in 0..12 {
        let answer = on_a_new_connection(&stack, &token).await;
        assert_eq!(answer.status, 200, "{:?}", answer.json);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Three VMs, one key fetch (keys stay fresh for 300 s): the election held.
    assert_eq!(stack.metric("edgeauth.jwks_fetch.success").await, Some(1));
    assert_eq!(stack.metric("edgeauth.jwks_fetch.failure").await, Some(0));
    assert_eq!(stack.metric("edgeauth.allowed").await, Some(12));
    // The feed is read about once a second, not once a second per VM.
    let reads = stack
        .metric("edgeauth.revocation_feed.success")
        .await
        .expect("feed reads");
    assert!(reads <= 8, "{reads} feed reads in about three seconds");
    // Caught up, the fetcher sends the page's tag back, and the origin answers 304.
    let quiet = more_not_modified(&stack, 0).await;

    stack.logout(&token).await;
    tokio::time::sleep(edge.revocation_bound()).await;
    for _ in 0..12 {
        let answer = on_a_new_connection(&stack, &token).await;
        assert_eq!(answer.json["reason"], "token_revoked");
    }
    // The entry came through the tagged polls, and the new head's tag is sent back in turn.
    more_not_modified(&stack, quiet).await;
    // Request counters reach Envoy's stats on the VMs' next tick.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        stack.metric("edgeauth.denied.token_revoked").await,
        Some(12)
    );
    if edge == Edge::EnvoyNative {
        // The module has counters only.
        return;
    }
    assert_eq!(
        stack
            .metric("edgeauth.revocation_feed.revoked_tokens")
            .await,
        Some(1)
    );
}

/// Waits until the origin has answered more than `seen` feed polls with 304 Not Modified
/// (`edgeauth_http_requests_total`); returns how many it has.
async fn more_not_modified(stack: &Stack, seen: u64) -> u64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let count = origin_counter(
            &stack.client,
            &stack.origin,
            "edgeauth_http_requests_total",
            &[r#"route="/v1/revocations""#, r#"status="304""#],
        )
        .await;
        if count > seen {
            return count;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no feed poll answered 304 beyond {seen} in 10 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Header bytes Envoy passes through as they came: binary, repeated, huge. Each is a 4xx from
/// the filter, and the VM keeps serving.
#[tokio::test]
async fn hostile_header_bytes_are_refused_and_never_trap_the_vm() {
    hostile_header_bytes_are_refused(Edge::Envoy).await;
}

/// The same bytes through the native module: refused, and Envoy keeps serving.
#[tokio::test]
async fn hostile_header_bytes_are_refused_and_never_crash_the_native_module() {
    hostile_header_bytes_are_refused(Edge::EnvoyNative).await;
}

async fn hostile_header_bytes_are_refused(edge: Edge) {
    let stack = Stack::start_on(edge).await;
    let token = stack.login().await;
    let binary = HeaderValue::from_bytes(b"Bearer \xff\xfe\x80abc.def.ghi").expect("obs-text");
    let huge = format!("Bearer {}", "A".repeat(50_000));
    let mut cases: Vec<HeaderMap> = Vec::new();
    let mut headers = HeaderMap::new();
    headers.insert("authorization", binary.clone());
    cases.push(headers);
    let mut headers = HeaderMap::new();
    headers.insert(
        "authorization",
        HeaderValue::from_str(&huge).expect("ascii"),
    );
    cases.push(headers);
    let mut headers = bearer(&token);
    headers.append("authorization", binary);
    cases.push(headers);
    let mut headers = HeaderMap::new();
    headers.insert(
        "authorization",
        HeaderValue::from_str(&format!("Basic {token}")).expect("ascii"),
    );
    cases.push(headers);
    for headers in &cases {
        for _ in 0..3 {
            let answer = through(&stack, &stack.edge, headers).await;
            assert!(
                (400..500).contains(&answer.status) && answer.json["error"].is_string(),
                "{} {:?}",
                answer.status,
                answer.json
            );
        }
    }
    // Every worker thread's VM still answers, and none of them failed or trapped.
    for _ in 0..8 {
        assert_eq!(on_a_new_connection(&stack, &token).await.status, 200);
    }
    let log = stack.edge_log();
    for sign in ["panicked", "Wasm VM failed", "wasm trap", "internal_error"] {
        assert!(!log.contains(sign), "{sign} in:\n{log}");
    }
}

/// Envoy only warns when a module's ABI version differs from its own, and Envoy 1.39 (ABI
/// `v0.1.0`) exports every callback the module calls under the same names. The module must see
/// that it was not written for that ABI and refuse to load, so that Envoy refuses the
/// configuration instead of running it. The same configuration loads in Envoy 1.40.
#[test]
fn the_native_module_refuses_to_load_in_an_envoy_of_another_abi() {
    let (accepted, output) = validate_native_example(&envoy_binary());
    assert!(accepted, "Envoy 1.40 refused the module:\n{output}");
    assert!(
        output.contains("Dynamic module ABI version v0.2.0 matched"),
        "{output}"
    );

    let (accepted, output) = validate_native_example(&previous_envoy_binary());
    assert!(!accepted, "Envoy 1.39 accepted the module:\n{output}");
    assert!(
        output.contains("does not offer the dynamic-module ABI v0.2.0")
            && output.contains("Failed to initialize dynamic module"),
        "{output}"
    );
}

/// An operator replaces the filter's configuration (a new listener through LDS) while requests
/// on the old one wait for a JWKS refetch. A request whose keys come within Envoy's drain is
/// answered by the old configuration; one still waiting when the drain ends goes with its
/// connection. New requests get the new configuration, Envoy serves on, and an old
/// configuration is gone once drained.
#[tokio::test]
async fn a_configuration_replaced_under_waiting_requests_drains_cleanly() {
    configuration_replaced_under_waiting_requests(Edge::Envoy).await;
}

/// The same for the native module, whose requests borrow their configuration from Envoy
/// (`native::abi::ConfigRef`) and whose configuration runs a tick thread.
#[tokio::test]
async fn the_native_modules_configuration_replaced_under_waiting_requests_drains_cleanly() {
    configuration_replaced_under_waiting_requests(Edge::EnvoyNative).await;
}

async fn configuration_replaced_under_waiting_requests(edge: Edge) {
    let mut stack = Stack::start_with(StackOptions {
        edge,
        lds: true,
        ..StackOptions::default()
    })
    .await;
    let token = stack.login().await;
    assert_eq!(guarded(&stack, &token).await.status, 200);

    // A `kid` the edge does not know: the request claims a refetch and waits for it, and the
    // origin's JWKS hangs until the test lets it answer.
    stack.switches.jwks_hangs.store(true, Ordering::SeqCst);
    let first = tokio::spawn(unknown_kid_request(&stack, "unknown-1"));
    held(&stack, 1).await;
    stack
        .replace_filter_configuration(|configuration| {
            configuration["policy"]["routes"]
                .as_array_mut()
                .expect("the stack's routes")
                .push(json!({"prefix": "/guarded/", "scopes": ["nobody"]}));
            // Past the drain: a refetch under this configuration outlives its listener.
            configuration["fetch_timeout_ms"] = json!(30_000);
        })
        .await;
    // The new configuration fetches keys of its own, and hangs as well.
    held(&stack, 2).await;
    stack.switches.jwks_release.notify_waiters();
    let answer = first
        .await
        .expect("the request ran")
        .expect("it was answered");
    assert_eq!(
        (answer.status, answer.json["reason"].as_str()),
        (401, Some("unknown_key")),
        "the old configuration decided once its refetch came back: {}",
        stack.edge_log()
    );
    until(&stack, "the new configuration's route", || async {
        let answer = guarded(&stack, &token).await;
        (answer.status, answer.json["reason"].clone()) == (403, json!("insufficient_scope"))
    })
    .await;

    // Under the new configuration, a request that waits longer than its listener lasts.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let waiting = stack.switches.jwks_held.load(Ordering::SeqCst);
    let cut = tokio::spawn(unknown_kid_request(&stack, "unknown-2"));
    held(&stack, waiting + 1).await;
    let replaced = Instant::now();
    stack
        .replace_filter_configuration(|configuration| {
            configuration["policy"]["routes"]
                .as_array_mut()
                .expect("the stack's routes")
                .pop();
            // Not the first configuration again, which Envoy's Wasm host would share with it.
            configuration["fetch_timeout_ms"] = json!(2_000);
        })
        .await;
    let outcome = tokio::time::timeout(LDS_DRAIN + Duration::from_secs(15), cut)
        .await
        .expect("the drain ended the request")
        .expect("the request ran");
    assert!(
        outcome.is_err(),
        "a request past the drain goes with its connection, not answered: {outcome:?}"
    );
    assert!(replaced.elapsed() >= LDS_DRAIN - Duration::from_millis(500));
    until(&stack, "no listener draining", || async {
        stack
            .envoy_stat("listener_manager.total_listeners_draining")
            .await
            == 0
    })
    .await;
    // The origin answers again, the third configuration's fetch under way included.
    stack.switches.jwks_hangs.store(false, Ordering::SeqCst);
    stack.switches.jwks_release.notify_waiters();
    until(&stack, "the third configuration serving", || async {
        guarded(&stack, &token).await.status == 200
    })
    .await;
    assert_eq!(on_a_new_connection(&stack, &token).await.status, 200);
    if edge == Edge::EnvoyNative {
        until(
            &stack,
            "one tick thread, the live configuration's",
            || async { stack.edge_threads_named("edgeauth-tick") == 1 },
        )
        .await;
    }
}

/// `GET /guarded/orders`, a path a route of the test's second configuration guards, on a
/// connection of its own: a pooled one may be on a listener that Envoy is closing.
async fn guarded(stack: &Stack, token: &str) -> Answer {
    send(
        reqwest::Client::new()
            .get(format!("{}/guarded/orders", stack.edge))
            .bearer_auth(token),
    )
    .await
}

/// `GET /orders` with a token under `kid`, which the edge has never seen, on a connection of
/// its own; the client's error if Envoy closes it unanswered.
fn unknown_kid_request(
    stack: &Stack,
    kid: &str,
) -> impl Future<Output = Result<Answer, reqwest::Error>> + 'static {
    let header = Base64UrlUnpadded::encode_string(
        json!({"alg": "EdDSA", "kid": kid, "typ": "at+jwt"})
            .to_string()
            .as_bytes(),
    );
    let token = format!(
        "{header}.{}.{}",
        Base64UrlUnpadded::encode_string(b"{}"),
        Base64UrlUnpadded::encode_string(&[0; 64])
    );
    let request = reqwest::Client::new()
        .get(format!("{}/orders", stack.edge))
        .bearer_auth(token);
    async move {
        match request.send().await {
            Ok(response) => Ok(Answer::from(response).await),
            Err(error) => Err(error),
        }
    }
}

/// Waits until the origin's JWKS has hung `count` requests in all.
async fn held(stack: &Stack, count: usize) {
    until(stack, "a JWKS request hung", || async {
        stack.switches.jwks_held.load(Ordering::SeqCst) >= count
    })
    .await;
}

/// Waits up to 20 s for `done`.
async fn until<F: Future<Output = bool>>(stack: &Stack, what: &str, done: impl Fn() -> F) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done().await {
        assert!(
            Instant::now() < deadline,
            "never: {what}\n{}",
            stack.edge_log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
