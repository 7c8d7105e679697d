//! The filter's metrics, as Envoy counters and gauges (`wasmcustom.edgeauth.*`).

use std::collections::HashMap;

use crate::abi::{self, MetricType};

pub(crate) fn counter(name: &str) -> Option<u32> {
    abi::define_metric(MetricType::Counter, name).ok()
}

pub(crate) fn gauge(name: &str) -> Option<u32> {
    abi::define_metric(MetricType::Gauge, name).ok()
}

pub(crate) fn bump(metric: Option<u32>, by: u64) {
    if let (Some(id), Ok(by)) = (metric, i64::try_from(by)) {
        if by > 0 {
            let _ = abi::increment_metric(id, by);
        }
    }
}

pub(crate) fn record(metric: Option<u32>, value: i64) {
    if let Some(id) = metric {
        let _ = abi::record_metric(id, u64::try_from(value).unwrap_or(0));
    }
}

/// The filter's metrics. Envoy exposes them as `wasmcustom.edgeauth.*`; every VM defines the
/// same names, so counters add up across worker threads. Per-request counts are kept in the VM
/// and added to Envoy's counters on each tick: a host call per counter per request cost more
/// than a cache hit's own work (`bench-results/envoy.md`), and Envoy reads its stats every few
/// seconds anyway.
#[derive(Debug)]
pub(crate) struct Metrics {
    pub(crate) pending: RequestCounts,
    pub(crate) allowed: Option<u32>,
    pub(crate) denied: Option<u32>,
    pub(crate) denied_by_reason: HashMap<&'static str, Option<u32>>,
    pub(crate) token_cache_hits: Option<u32>,
    pub(crate) token_cache_misses: Option<u32>,
    pub(crate) jwks_fetch_success: Option<u32>,
    pub(crate) jwks_fetch_failure: Option<u32>,
    pub(crate) feed_read_success: Option<u32>,
    pub(crate) feed_read_failure: Option<u32>,
    pub(crate) feed_lag_seconds: Option<u32>,
    pub(crate) revoked_tokens: Option<u32>,
}

/// Per-request counts since the last tick.
#[derive(Debug, Default)]
pub(crate) struct RequestCounts {
    pub(crate) allowed: u64,
    pub(crate) denied: HashMap<&'static str, u64>,
    pub(crate) token_cache_hits: u64,
    pub(crate) token_cache_misses: u64,
}

impl Metrics {
    pub(crate) fn define() -> Self {
        Self {
            pending: RequestCounts::default(),
            allowed: counter("edgeauth.allowed"),
            denied: counter("edgeauth.denied"),
            denied_by_reason: HashMap::new(),
            token_cache_hits: counter("edgeauth.token_cache.hits"),
            token_cache_misses: counter("edgeauth.token_cache.misses"),
            jwks_fetch_success: counter("edgeauth.jwks_fetch.success"),
            jwks_fetch_failure: counter("edgeauth.jwks_fetch.failure"),
            feed_read_success: counter("edgeauth.revocation_feed.success"),
            feed_read_failure: counter("edgeauth.revocation_feed.failure"),
            feed_lag_seconds: gauge("edgeauth.revocation_feed.lag_seconds"),
            revoked_tokens: gauge("edgeauth.revocation_feed.revoked_tokens"),
        }
    }

    /// Adds the counts since the last tick to Envoy's counters.
    pub(crate) fn flush(&mut self) {
        let counts = std::mem::take(&mut self.pending);
        bump(self.allowed, counts.allowed);
        bump(self.token_cache_hits, counts.token_cache_hits);
        bump(self.token_cache_misses, counts.token_cache_misses);
        bump(self.denied, counts.denied.values().sum());
        for (code, n) in counts.denied {
            let id = *self
                .denied_by_reason
                .entry(code)
                .or_insert_with(|| counter(&format!("edgeauth.denied.{code}")));
            bump(id, n);
        }
    }
}
