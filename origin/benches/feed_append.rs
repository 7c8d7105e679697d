//! The revocation feed's sustained append rate: the store's `append` itself, as every logout and
//! revoke-all calls it, against the DynamoDB at `FEED_APPEND_ENDPOINT` (dynoxide in
//! `scripts/bench feed`), in tables of a fresh prefix.
//!
//! For each number of appends in flight (`FEED_APPEND_IN_FLIGHT`, default "1 4 16 64": one
//! instance's concurrent logouts, or several instances'), closed loop for
//! `FEED_APPEND_SECONDS`: appends per second, p50/p99, and how many gave up (the store retries an
//! append that lost the race for the feed's next number, then answers unavailable). Writes a
//! Markdown table to `FEED_APPEND_OUT`. Without `FEED_APPEND_ENDPOINT` it does nothing, so `cargo
//! bench --workspace` stays usable.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use edgeauth_origin::{
    key_encryption::{LocalKek, Sealer},
    store::{
        dynamo::{client_for_endpoint, create_tables, DynamoStore, TableNames},
        RevocationFeed, StoreError,
    },
};

/// A feed entry's size: a compact JWS of a session revocation is about this long.
const ENTRY_BYTES: usize = 560;

#[tokio::main]
async fn main() {
    let Ok(endpoint) = std::env::var("FEED_APPEND_ENDPOINT") else {
        return;
    };
    let seconds: u64 = std::env::var("FEED_APPEND_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let in_flight: Vec<usize> = std::env::var("FEED_APPEND_IN_FLIGHT")
        .unwrap_or_else(|_| "1 4 16 64".into())
        .split_whitespace()
        .map(|n| n.parse().expect("a count"))
        .collect();
    let out = std::env::var("FEED_APPEND_OUT").expect("FEED_APPEND_OUT");

    let client = client_for_endpoint(&endpoint, "us-east-1").await;
    let tables = TableNames::new(&format!("append{}-", std::process::id()));
    create_tables(&client, &tables).await.expect("tables");
    let kek = LocalKek::from_base64("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").expect("kek");
    let store = Arc::new(DynamoStore::new(client, &tables, Sealer::local(&kek)));

    let mut lines = vec![
        "## Appends".to_owned(),
        String::new(),
        format!(
            "The store's `append` (what every logout and revoke-all calls), closed loop, {seconds} s per row, entries of {ENTRY_BYTES} bytes, against the same dynoxide in tables of their own. \"Gave up\": appends that lost the race for the feed's next number on every attempt (the request answers 503)."
        ),
        String::new(),
        "| appends in flight | appends/s | p50 ms | p99 ms | gave up |".to_owned(),
        "|---:|---:|---:|---:|---:|".to_owned(),
    ];
    let mut best: Option<(f64, usize)> = None;
    for n in in_flight {
        let latencies = Arc::new(Mutex::new(Vec::new()));
        let gave_up = Arc::new(Mutex::new(0u64));
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let started = Instant::now();
        let workers: Vec<_> = (0..n)
            .map(|_| {
                let (store, latencies, gave_up) =
                    (store.clone(), latencies.clone(), gave_up.clone());
                tokio::spawn(async move {
                    let entry = "x".repeat(ENTRY_BYTES);
                    let make = move |seq: u64| -> Result<String, StoreError> {
                        Ok(format!("{seq}.{entry}"))
                    };
                    while Instant::now() < deadline {
                        let at = Instant::now();
                        match store
                            .append(&make, edgeauth_origin::clock::now() + 900)
                            .await
                        {
                            Ok(_) => latencies.lock().expect("lock").push(at.elapsed()),
                            Err(_) => *gave_up.lock().expect("lock") += 1,
                        }
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.await.expect("worker");
        }
        let elapsed = started.elapsed().as_secs_f64();
        let mut latencies = latencies.lock().expect("lock").clone();
        latencies.sort();
        let at = |p: f64| {
            latencies
                .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
                .map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
        };
        let gave_up = *gave_up.lock().expect("lock");
        let rate = latencies.len() as f64 / elapsed;
        eprintln!("{n} in flight: {rate:.0}/s, {gave_up} gave up");
        if gave_up == 0 && best.is_none_or(|(most, _)| rate > most) {
            best = Some((rate, n));
        }
        lines.push(format!(
            "| {n} | {:.0} | {:.2} | {:.2} | {gave_up} |",
            latencies.len() as f64 / elapsed,
            at(0.5),
            at(0.99)
        ));
    }
    let (most, at) = best.unwrap_or((0.0, 0));
    let verdict = if most >= 2000.0 { "meets" } else { "misses" };
    lines.push(String::new());
    lines.push(format!(
        "- Goal, at least 2,000 appends a second sustained with none given up: **{verdict}** (most: {most:.0}/s, at {at} in flight)."
    ));
    std::fs::write(out, lines.join("\n") + "\n").expect("report");
}
