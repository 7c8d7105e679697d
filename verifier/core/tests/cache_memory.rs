//! The verified-token cache's byte estimate against what it really holds on the heap, measured
//! with a counting allocator. A binary of its own: the allocator counts every thread's blocks,
//! so nothing else may run beside it.

use std::alloc::System;

use edgeauth_core::{verify_token, TokenCache};
use serde_json::json;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[path = "shared/mod.rs"]
mod shared;
use shared::*;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

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
