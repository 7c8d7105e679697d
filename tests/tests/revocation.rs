//! Revocation against an attacker: a thief who keeps refreshing, an old revoke-all replayed to
//! the push endpoint, revoke-alls reaching the Worker through different isolates, a revocation
//! signed by a key the edge does not hold yet, Redis losing the origin's deny-list, and a
//! logged-out token probed until the very end of its life. Each case is one a review found
//! accepted; each runs against the real origin, edges, dynoxide and redis-server.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use base64ct::{Base64UrlUnpadded, Encoding as _};
use edgeauth_e2e::{send, DenyListRedis, Edge, Stack, StackOptions, DENY_CACHE_SECONDS};
use serde_json::{json, Value};

on_every_edge!(
    a_thief_refreshing_in_a_loop_is_cut_off_by_the_owners_logout,
    a_revocation_signed_by_a_key_not_yet_fetched_is_applied_once_keys_arrive,
    a_logged_out_token_is_refused_every_second_until_it_expires,
);

/// A JWS's payload, read without verification.
fn payload(jws: &str) -> Value {
    let part = jws.split('.').nth(1).expect("a compact JWS");
    serde_json::from_slice(&Base64UrlUnpadded::decode_vec(part).expect("base64url")).expect("JSON")
}

fn kid(jws: &str) -> String {
    let part = jws.split('.').next().expect("a compact JWS");
    let header: Value =
        serde_json::from_slice(&Base64UrlUnpadded::decode_vec(part).expect("base64url"))
            .expect("JSON");
    header["kid"].as_str().expect("kid").to_string()
}

/// Polls until `token` is refused at the edge with `reason`, within `bound`; how long it took.
async fn refused_within(stack: &Stack, token: &str, reason: &str, bound: Duration) -> Duration {
    refused_at(stack, &stack.edge, token, reason, bound).await
}

/// [`refused_within`] at the edge whose base URL is `edge`.
async fn refused_at(
    stack: &Stack,
    edge: &str,
    token: &str,
    reason: &str,
    bound: Duration,
) -> Duration {
    let started = Instant::now();
    loop {
        let answer = send(
            stack
                .client
                .get(format!("{edge}/orders"))
                .bearer_auth(token),
        )
        .await;
        if answer.status == 401 {
            assert_eq!(answer.json["reason"], reason, "{:?}", answer.json);
            return started.elapsed();
        }
        assert_eq!(answer.status, 200, "{:?}", answer.json);
        assert!(
            started.elapsed() < bound,
            "still accepted after {bound:?}:\n{}",
            stack.edge_log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What the thief's loop saw.
#[derive(Debug, Default)]
struct Loot {
    /// The newest access token it got.
    access: Option<String>,
    /// Refreshes that succeeded, each with when it was sent.
    successes: Vec<Instant>,
    /// The first refusal's status.
    refused: Option<u16>,
}

/// A thief holding a copy of the owner's refresh token refreshes every 100 ms, keeping the
/// newest access token of the session. The owner logs out. From then on the thief gets nothing:
/// no refresh sent after the logout returned succeeds, and the access token it got last (not
/// the one the owner logged out with) is refused at the origin and at the edge.
async fn a_thief_refreshing_in_a_loop_is_cut_off_by_the_owners_logout(edge: Edge) {
    let stack = Arc::new(Stack::start_on(edge).await);
    let email = stack.register().await;
    let (owner_access, stolen_refresh) = stack.login_with_refresh(&email).await;
    let loot = Arc::new(Mutex::new(Loot::default()));
    let thief = {
        let (stack, loot) = (stack.clone(), loot.clone());
        tokio::spawn(async move {
            let mut refresh = stolen_refresh;
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                let sent = Instant::now();
                match stack.refresh(&refresh).await {
                    Ok((access, next)) => {
                        let mut loot = loot.lock().expect("not poisoned");
                        loot.access = Some(access);
                        loot.successes.push(sent);
                        refresh = next;
                    }
                    Err(status) => {
                        loot.lock().expect("not poisoned").refused = Some(status);
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    // The thief is in: several rotations, each with a new access token.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let stolen_before = loot.lock().expect("not poisoned").successes.len();
    assert!(
        stolen_before >= 3,
        "the thief refreshed {stolen_before} times"
    );
    stack.logout(&owner_access).await;
    let logged_out = Instant::now();
    thief.await.expect("the thief's loop ends");
    let loot = Arc::try_unwrap(loot)
        .expect("the loop is over")
        .into_inner()
        .expect("not poisoned");
    let after: Vec<_> = loot.successes.iter().filter(|s| **s > logged_out).collect();
    assert!(after.is_empty(), "{} refreshes after logout", after.len());
    assert_eq!(
        loot.refused,
        Some(401),
        "invalid_grant, as the origin answers it"
    );
    let access = loot.access.expect("the thief's newest access token");
    assert_ne!(
        Stack::claims_of(&access)["jti"],
        Stack::claims_of(&owner_access)["jti"]
    );
    assert_eq!(stack.origin_me(&access).await, 401);
    let took = refused_within(&stack, &access, "token_revoked", edge.revocation_bound()).await;
    println!(
        "{edge:?}: the thief's access token refused {} ms after the check began",
        took.as_millis()
    );
}

/// After a rotation the origin signs its feed entries with the new key. An edge that has not
/// fetched it yet (the JWKS unreachable, and its refetch slot taken by requests with made-up
/// `kid`s) must keep the entry for later, not skip it: once the keys arrive, the logged-out
/// token is refused.
async fn a_revocation_signed_by_a_key_not_yet_fetched_is_applied_once_keys_arrive(edge: Edge) {
    let stack = Arc::new(
        Stack::start_with(StackOptions {
            edge,
            jwks_max_age: 2,
            ..StackOptions::default()
        })
        .await,
    );
    let token = stack.login().await;
    assert_eq!(stack.get("/orders", Some(&token)).await.status, 200);
    // The edge keeps its keys through the outage (they are stale, not gone).
    stack
        .switches
        .jwks_down
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let (new_kid, signs_from) = stack.rotate_origin_key().await;
    let wait = (signs_from + 1 - edgeauth_origin::clock::now()).max(0) as u64;
    tokio::time::sleep(Duration::from_secs(wait)).await;
    // Requests with made-up `kid`s take every refetch the edge may make.
    let flooding = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let flood = {
        let (stack, flooding) = (stack.clone(), flooding.clone());
        tokio::spawn(async move {
            let payload = Base64UrlUnpadded::encode_string(b"{}");
            let mut n = 0u32;
            while flooding.load(std::sync::atomic::Ordering::SeqCst) {
                let header = Base64UrlUnpadded::encode_string(
                    json!({"alg": "EdDSA", "kid": format!("made-up-{n}"), "typ": "at+jwt"})
                        .to_string()
                        .as_bytes(),
                );
                let forged = format!("{header}.{payload}.AAAA");
                let _ = stack.get("/orders", Some(&forged)).await;
                n += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    stack.logout(&token).await;
    let entry = stack.feed().await.pop().expect("the logout's entry");
    assert_eq!(kid(entry["jws"].as_str().expect("jws")), new_kid);
    // The edge meets the entry while it cannot have the key: the Worker's cron and push, the
    // filter's feed polls.
    for _ in 0..4 {
        if edge == Edge::Worker {
            stack.run_cron().await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    stack
        .switches
        .jwks_down
        .store(false, std::sync::atomic::Ordering::SeqCst);
    flooding.store(false, std::sync::atomic::Ordering::SeqCst);
    flood.await.expect("the flood ends");
    let started = Instant::now();
    loop {
        if edge == Edge::Worker {
            stack.run_cron().await;
        }
        let answer = stack.get("/orders", Some(&token)).await;
        if answer.status == 401 {
            assert_eq!(answer.json["reason"], "token_revoked");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the revocation signed by {new_kid} was lost:\n{}",
            stack.edge_log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Access tokens live 60 s here and the edges' leeway is 30 s. A logged-out token is probed
/// every second, at the edge and at the origin, until 2 s past its `exp` + leeway: it is refused
/// every time, also after the origin's Redis lost every key (a restart without persistence).
async fn a_logged_out_token_is_refused_every_second_until_it_expires(edge: Edge) {
    let stack = Stack::start_with(StackOptions {
        edge,
        access_ttl: 60,
        ..StackOptions::default()
    })
    .await;
    let token = stack.login().await;
    let exp = Stack::claims_of(&token)["exp"].as_i64().expect("exp");
    stack.logout(&token).await;
    refused_within(&stack, &token, "token_revoked", edge.revocation_bound()).await;
    let leeway = 30;
    let mut flushed: Option<Instant> = None;
    let mut probes = 0;
    while edgeauth_origin::clock::now() <= exp + leeway + 2 {
        let at = edgeauth_origin::clock::now();
        let answer = stack.get("/orders", Some(&token)).await;
        assert_eq!(
            answer.status,
            401,
            "edge at exp{:+}: {:?}",
            at - exp,
            answer.json
        );
        // Right after the flush the origin may answer 503 while it rebuilds its deny-list from
        // the feed; never 200, and not for long.
        let origin = stack.origin_me(&token).await;
        let rebuilding = flushed.is_some_and(|at| at.elapsed() < Duration::from_secs(5));
        assert!(
            origin == 401 || (rebuilding && origin == 503),
            "origin at exp{:+}: {origin}",
            at - exp
        );
        if flushed.is_none() && at >= exp - 20 {
            let DenyListRedis::Server { url, .. } = &stack.redis else {
                panic!("one redis-server")
            };
            flush_redis(url).await;
            flushed = Some(Instant::now());
        }
        probes += 1;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(flushed.is_some() && probes > 30, "{probes} probes");
}

/// `FLUSHALL` on the redis-server at `url`, over its wire protocol.
async fn flush_redis(url: &str) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let address = url.trim_start_matches("redis://");
    let mut connection = tokio::net::TcpStream::connect(address)
        .await
        .expect("redis-server answers");
    connection
        .write_all(b"*1\r\n$8\r\nFLUSHALL\r\n")
        .await
        .expect("sent");
    let mut reply = [0u8; 5];
    connection.read_exact(&mut reply).await.expect("a reply");
    assert_eq!(&reply, b"+OK\r\n");
}

/// The feed is public and the push endpoint takes any entry the origin ever signed. Replaying
/// the first of two revoke-alls must not lower the user's watermark: the tokens issued between
/// the two stay refused.
#[tokio::test]
async fn worker_an_old_revoke_all_replayed_to_the_push_endpoint_changes_nothing() {
    let stack = Stack::start_on(Edge::Worker).await;
    let email = stack.register().await;
    let first = stack.login_as(&email).await;
    stack.revoke_all(&first).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let between = stack.login_as(&email).await;
    assert_eq!(stack.get("/orders", Some(&between)).await.status, 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    stack.revoke_all(&between).await;
    refused_within(
        &stack,
        &between,
        "user_tokens_revoked",
        Edge::Worker.revocation_bound(),
    )
    .await;
    let old = stack
        .feed()
        .await
        .into_iter()
        .map(|e| e["jws"].as_str().expect("jws").to_string())
        .find(|jws| payload(jws).get("jti").is_none() && payload(jws).get("sid").is_none())
        .expect("the first revoke-all's entry");
    assert!(payload(&old)["iat"].as_i64() < Stack::claims_of(&between)["iat"].as_i64());
    let status = stack.push(&stack.edge, &old).await;
    assert!((200..300).contains(&status), "the replay answered {status}");
    // Past the isolate's memory, KV's own answer decides.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(DENY_CACHE_SECONDS * 1000 / 2 + 300)).await;
        let answer = stack.get("/orders", Some(&between)).await;
        assert_eq!(answer.status, 401, "{:?}", answer.json);
    }
}

/// Two isolates on one Workers KV. A revoke-all pushed to the first is remembered there; a later
/// one reaches KV through the second. The first must see the later one within its deny cache
/// time, not keep the older watermark it was pushed for the token's lifetime.
#[tokio::test]
async fn worker_a_later_revoke_all_through_another_isolate_is_seen_within_the_cache_time() {
    let stack = Stack::start_with(StackOptions {
        second_worker: true,
        ..StackOptions::default()
    })
    .await;
    let second = stack.second_edge.clone().expect("a second Worker");
    let email = stack.register().await;
    let first = stack.login_as(&email).await;
    stack.revoke_all(&first).await;
    refused_within(
        &stack,
        &first,
        "user_tokens_revoked",
        Edge::Worker.revocation_bound(),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let between = stack.login_as(&email).await;
    assert_eq!(stack.get("/orders", Some(&between)).await.status, 200);
    // The second revoke-all reaches KV through the other isolate only.
    stack
        .switches
        .push_to_second_worker
        .store(true, std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    stack.revoke_all(&between).await;
    // The origin pushes after it answers, so the second isolate is polled, not asked once.
    refused_at(
        &stack,
        &second,
        &between,
        "user_tokens_revoked",
        Edge::Worker.revocation_bound(),
    )
    .await;
    let took = refused_within(
        &stack,
        &between,
        "user_tokens_revoked",
        Duration::from_secs(DENY_CACHE_SECONDS + 3),
    )
    .await;
    println!(
        "the first isolate saw the later revoke-all after {} ms",
        took.as_millis()
    );
}
