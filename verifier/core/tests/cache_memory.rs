//! What the core holds on the heap, measured with a counting allocator: the verified-token
//! cache's byte estimate against what it really holds, and what a key ring keeps of the keys it
//! drops. A binary of its own: the allocator counts every thread's blocks, so nothing else may
//! run beside it, and its tests take turns ([`measuring`]).

use std::{
    alloc::System,
    sync::{Mutex, MutexGuard},
};

use edgeauth_core::{verify_token, KeyRing, TokenCache};
use serde_json::json;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[path = "shared/mod.rs"]
mod shared;
use shared::*;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Held while a test counts: the test harness runs tests on parallel threads.
fn measuring() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(|e| e.into_inner())
}

fn heap_held_by_entries(scope_len: usize, count: usize) -> (usize, usize) {
    let p = policy(r#","max_token_bytes":16384,"cache":{"max_entries":100000}"#);
    let r = standard_ring(&p);
    let signer = Signer::ed25519(1);
    let mut cache = TokenCache::for_policy(&p);
    let region = Region::new(GLOBAL);
    for i in 0..count {
        let mut c = good_claims();
        c["jti"] = json!(format!("jti-{i}"));
        c["scope"] = json!(format!("profile {}", "s".repeat(scope_len)));
        c["aud"] = json!([AUDIENCE, "another", "a-third"]);
        let text = token(&signer, "current", &c);
        let verified = verify_token(&text, NOW, &r, &p).expect("valid");
        cache.insert(&text, verified);
    }
    let change = region.change();
    // A `realloc` is counted in these two already, by its difference.
    let held = change
        .bytes_allocated
        .saturating_sub(change.bytes_deallocated);
    let estimate = cache.bytes();
    drop(cache);
    (held, estimate)
}

#[test]
fn the_byte_estimate_covers_what_the_entries_hold() {
    let _turn = measuring();
    for (scope_len, count) in [(0, 20_000), (300, 5_000), (6000, 1_000)] {
        let (held, estimate) = heap_held_by_entries(scope_len, count);
        eprintln!("scope of {scope_len}: {held} bytes held, {estimate} estimated");
        // Conservative, so the budget holds; and not so loose that it wastes the budget.
        assert!(
            held <= estimate && estimate <= held * 2,
            "scope of {scope_len}: {held} bytes held, {estimate} estimated"
        );
    }
}

/// Bytes allocated, in all, while a ring is read from `keys` under `policy`.
fn allocated_reading(keys: &[serde_json::Value], policy: &edgeauth_core::Policy) -> usize {
    let body = jwks(keys);
    let region = Region::new(GLOBAL);
    let ring = KeyRing::from_jwks(&body, policy).expect("a usable key");
    let allocated = region.change().bytes_allocated;
    drop(ring);
    allocated
}

/// With `eddsa-tables` an Ed25519 key gets a 30 KB table of its multiples. A key the policy
/// cannot use is dropped from the ring, and must not cost that table first: every Envoy worker's
/// VM reads the JWKS.
#[cfg(feature = "eddsa-tables")]
#[test]
fn an_ed25519_key_the_policy_cannot_use_gets_no_table() {
    let _turn = measuring();
    let es256_only = policy(r#","algorithms":["ES256"]"#);
    let ec = Signer::es256(7).jwk("ec");
    let ed = Signer::ed25519(1).jwk("current");
    let alone = allocated_reading(std::slice::from_ref(&ec), &es256_only);
    let beside = allocated_reading(&[ec.clone(), ed.clone()], &es256_only);
    // Parsing and skipping the key's JWK takes a few KB; its table alone would be 30 KB.
    assert!(
        beside - alone < 10_000,
        "{} more bytes for a key the ring drops",
        beside - alone
    );
    // The same key under a policy that keeps it does get its table: the measure sees one.
    let eddsa = policy(r#","algorithms":["ES256","EdDSA"]"#);
    let kept = allocated_reading(&[ec, ed], &eddsa);
    assert!(
        kept - alone > 30_000,
        "{} more bytes for a key the ring keeps",
        kept - alone
    );
}
