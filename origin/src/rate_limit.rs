//! Per-client rate limits on the endpoints that take credentials or mint tokens (login,
//! register, refresh): the first defence against brute force and credential stuffing.
//!
//! - **Which client.** The address comes from the configured trusted source (`client_ip`): the
//!   TCP peer, Cloudflare's `CF-Connecting-IP`, or `X-Forwarded-For` read from the right past a
//!   set number of trusted proxies. Anything a client could write further left is ignored, so a
//!   made-up header does not buy a fresh budget. IPv6 clients are limited per /64, the block one
//!   subscriber gets.
//! - **How much.** GCRA (the generic cell rate algorithm): a limit of `count` per `per_seconds`
//!   allows a burst of `count`, then one request every `per_seconds / count`. One timestamp per
//!   client, no window boundary to game.
//! - **Where.** Redis when the deny-list is in Redis (the same connection: both are security
//!   state every instance must share), as one Lua script, so the read and the write are atomic
//!   and Redis's clock is the only clock; in-process in the embedded mode.
//! - **When the store is down** login is refused (503): it is where passwords are guessed, and a
//!   slow Redis must not switch brute-force protection off. Register and refresh go through and
//!   the failure is logged, so an outage of the limiter logs no one out.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv6Addr},
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    extract::{Request, State},
    http::HeaderMap,
    middleware::Next,
    response::{IntoResponse, Response},
};
use serde::Deserialize;

use crate::{
    error::ApiError,
    store::{redis_connection::RedisConnection, StoreError},
};

/// A budget: `count` requests per `per_seconds`, per client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    /// Requests allowed in a burst, and per period.
    pub count: u32,
    /// The period.
    pub per_seconds: u32,
}

impl Limit {
    /// Milliseconds between two requests at the sustained rate.
    fn interval_ms(self) -> i64 {
        i64::from(self.per_seconds) * 1000 / i64::from(self.count.max(1))
    }

    fn period_ms(self) -> i64 {
        i64::from(self.per_seconds) * 1000
    }
}

/// The limits of each endpoint. Defaults: login 10 a minute (the figure OWASP's guidance and most
/// identity providers use), register 20 an hour, refresh 300 a minute (a refresh token is a 256-bit
/// secret that cannot be guessed; the limit only stops a runaway client).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimits {
    /// `POST /v1/login`.
    #[serde(default = "default_login")]
    pub login: Limit,
    /// `POST /v1/register`.
    #[serde(default = "default_register")]
    pub register: Limit,
    /// `POST /v1/token/refresh`.
    #[serde(default = "default_refresh")]
    pub refresh: Limit,
    /// `GET /v1/revocations`: each read is a consistent query of up to 1,000 items, and anyone
    /// may ask. An edge polls once every few seconds; this leaves room for a few behind one
    /// address.
    #[serde(default = "default_feed")]
    pub feed: Limit,
    /// The endpoints that mail a link or take one (`/v1/email/*`, `/v1/password/*`): per client.
    #[serde(default = "default_mail")]
    pub mail: Limit,
    /// Mail to one address, whoever asks for it: so that nobody can flood an inbox.
    #[serde(default = "default_mail_per_address")]
    pub mail_per_address: Limit,
}

fn default_mail() -> Limit {
    Limit {
        count: 10,
        per_seconds: 3600,
    }
}
fn default_mail_per_address() -> Limit {
    Limit {
        count: 3,
        per_seconds: 3600,
    }
}

fn default_login() -> Limit {
    Limit {
        count: 10,
        per_seconds: 60,
    }
}
fn default_register() -> Limit {
    Limit {
        count: 20,
        per_seconds: 3600,
    }
}
fn default_feed() -> Limit {
    Limit {
        count: 600,
        per_seconds: 60,
    }
}
fn default_refresh() -> Limit {
    Limit {
        count: 300,
        per_seconds: 60,
    }
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            login: default_login(),
            register: default_register(),
            refresh: default_refresh(),
            feed: default_feed(),
            mail: default_mail(),
            mail_per_address: default_mail_per_address(),
        }
    }
}

impl RateLimits {
    /// Every limit allows at least one request in a period of a second to a day.
    pub fn validate(&self) -> Result<(), String> {
        for (name, limit) in [
            ("login", self.login),
            ("register", self.register),
            ("refresh", self.refresh),
            ("feed", self.feed),
            ("mail", self.mail),
            ("mail_per_address", self.mail_per_address),
        ] {
            if limit.count == 0 || limit.count > 1_000_000 {
                return Err(format!("{name}.count must be between 1 and 1000000"));
            }
            if !(1..=86_400).contains(&limit.per_seconds) {
                return Err(format!("{name}.per_seconds must be between 1 and 86400"));
            }
        }
        Ok(())
    }
}

/// Where the client's address comes from. Only a source the deployment controls may be named:
/// a header is trusted only if every request passes a proxy that sets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(tag = "source", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientIpSource {
    /// The TCP peer: the origin faces clients directly.
    #[default]
    Peer,
    /// `CF-Connecting-IP`: the origin is reachable only through Cloudflare.
    CfConnectingIp,
    /// `X-Forwarded-For`, skipping the `trusted_proxies` addresses appended by the proxies in
    /// front of the origin (counted from the right).
    XForwardedFor {
        /// How many proxies of the deployment's own append to the header (at least 1).
        trusted_proxies: u8,
    },
}

/// The address a request is counted against, or `None` when the source does not say (a header
/// missing or not an address: then the TCP peer counts).
pub fn client_ip(source: ClientIpSource, headers: &HeaderMap) -> Option<IpAddr> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    match source {
        ClientIpSource::Peer => None,
        ClientIpSource::CfConnectingIp => header("cf-connecting-ip")?.trim().parse().ok(),
        ClientIpSource::XForwardedFor { trusted_proxies } => {
            let hops: Vec<&str> = forwarded_for_hops(headers).collect();
            let index = hops.len().checked_sub(usize::from(trusted_proxies))?;
            hops.get(index)?.parse().ok()
        }
    }
}

/// Every value of every `X-Forwarded-For` line, in order: the last is the one the nearest proxy
/// appended.
pub fn forwarded_for_hops(headers: &HeaderMap) -> impl DoubleEndedIterator<Item = &str> {
    headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// The bucket of an address: itself for IPv4, its /64 for IPv6.
pub fn bucket(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                let prefix = Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0);
                format!("{prefix}/64")
            }
        },
    }
}

/// A limiter's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Within budget.
    Allowed,
    /// Over budget until this much later.
    Limited {
        /// When the next request would be allowed.
        retry_after: Duration,
    },
}

/// GCRA for one request at `now_ms`, given the stored theoretical arrival time: the decision and
/// the arrival time to store (none when refused, which changes nothing).
pub fn gcra(tat_ms: Option<i64>, now_ms: i64, limit: Limit) -> (Decision, Option<i64>) {
    let tat = tat_ms.unwrap_or(now_ms).max(now_ms);
    let new_tat = tat + limit.interval_ms();
    let allow_at = new_tat - limit.period_ms();
    if now_ms < allow_at {
        let wait = u64::try_from(allow_at - now_ms).unwrap_or(0);
        return (
            Decision::Limited {
                retry_after: Duration::from_millis(wait),
            },
            None,
        );
    }
    (Decision::Allowed, Some(new_tat))
}

/// Counts requests per key.
#[async_trait::async_trait]
pub trait RateLimiter: Send + Sync {
    /// Takes one request from `key`'s budget.
    async fn acquire(&self, key: &str, limit: Limit) -> Result<Decision, StoreError>;
}

/// Past this many entries an in-process map is swept of the ones that no longer matter.
const MEMORY_SWEEP_AT: usize = 10_000;

/// Drops the entries `keep` refuses, once `map` has grown past [`MEMORY_SWEEP_AT`] and again
/// each time it doubles from what survived: sweeping costs O(n), so it must not run on every
/// request of a map full of live entries.
pub(crate) fn sweep_when_large<V>(
    map: &mut HashMap<String, V>,
    sweep_at: &mut usize,
    keep: impl FnMut(&String, &mut V) -> bool,
) {
    if map.len() < (*sweep_at).max(MEMORY_SWEEP_AT) {
        return;
    }
    map.retain(keep);
    *sweep_at = map.len().saturating_mul(2);
}

/// One instance's limiter (the embedded mode).
#[derive(Debug, Default)]
pub struct MemoryRateLimiter {
    /// key → theoretical arrival time (ms), and the size that triggers the next sweep.
    arrivals: Mutex<(HashMap<String, i64>, usize)>,
}

#[async_trait::async_trait]
impl RateLimiter for MemoryRateLimiter {
    async fn acquire(&self, key: &str, limit: Limit) -> Result<Decision, StoreError> {
        let now_ms = crate::clock::now_millis();
        let mut guard = crate::store::lock(&self.arrivals, "rate-limit")?;
        let (arrivals, sweep_at) = &mut *guard;
        // An arrival time in the past is a full budget: the same as no entry.
        sweep_when_large(arrivals, sweep_at, |_, tat| *tat > now_ms);
        let (decision, store) = gcra(arrivals.get(key).copied(), now_ms, limit);
        if let Some(tat) = store {
            arrivals.insert(key.to_owned(), tat);
        }
        Ok(decision)
    }
}

/// GCRA in one round trip, on Redis's clock (so instances with skewed clocks share one budget):
/// returns the milliseconds to wait, 0 when allowed. The key expires when its budget is whole.
const GCRA_SCRIPT: &str = r"
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000 + math.floor(tonumber(now_parts[2]) / 1000)
local interval = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - period
if now < allow_at then return allow_at - now end
-- A budget finer than a millisecond makes the interval 0: the key still needs a positive expiry.
redis.call('SET', KEYS[1], new_tat, 'PX', math.max(new_tat - now, 1))
return 0
";

/// The limiter shared by every instance, in Redis.
#[derive(Debug, Clone)]
pub struct RedisRateLimiter {
    redis: RedisConnection,
    script: std::sync::Arc<redis::Script>,
    key_prefix: String,
}

impl RedisRateLimiter {
    /// A limiter on this connection (the deny-list's). Keys are
    /// `edgeauth:rate:<namespace><endpoint>:<client>`; the namespace is the deployment's table
    /// prefix, so two deployments sharing a Redis never share budgets.
    pub fn new(redis: RedisConnection, namespace: &str) -> Self {
        Self {
            redis,
            script: std::sync::Arc::new(redis::Script::new(GCRA_SCRIPT)),
            key_prefix: format!("edgeauth:rate:{namespace}"),
        }
    }
}

#[async_trait::async_trait]
impl RateLimiter for RedisRateLimiter {
    async fn acquire(&self, key: &str, limit: Limit) -> Result<Decision, StoreError> {
        let mut invocation = self.script.key(format!("{}{key}", self.key_prefix));
        invocation.arg(limit.interval_ms()).arg(limit.period_ms());
        let wait_ms: i64 = self.redis.run_script(&invocation).await?;
        Ok(match u64::try_from(wait_ms) {
            Ok(0) | Err(_) => Decision::Allowed,
            Ok(ms) => Decision::Limited {
                retry_after: Duration::from_millis(ms),
            },
        })
    }
}

/// The endpoints with a budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /v1/login`
    Login,
    /// `POST /v1/register`
    Register,
    /// `POST /v1/token/refresh`
    Refresh,
    /// `GET /v1/revocations`
    Feed,
    /// The endpoints that mail a link or take one.
    Mail,
}

impl Endpoint {
    fn name(self) -> &'static str {
        match self {
            Self::Login => "login",
            Self::Register => "register",
            Self::Refresh => "refresh",
            Self::Feed => "feed",
            Self::Mail => "mail",
        }
    }

    fn limit(self, limits: &RateLimits) -> Limit {
        match self {
            Self::Login => limits.login,
            Self::Register => limits.register,
            Self::Refresh => limits.refresh,
            Self::Feed => limits.feed,
            Self::Mail => limits.mail,
        }
    }
}

/// The client's address as the trusted source gave it, for handlers (a request extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddress(pub Option<IpAddr>);

/// What [`limit`] needs for one route: the shared limiter and that endpoint's budget.
#[derive(Clone)]
#[allow(missing_debug_implementations)] // the limiter is a trait object without Debug
pub struct RouteBudget {
    limiter: Arc<dyn RateLimiter>,
    endpoint: Endpoint,
    limit: Limit,
}

impl RouteBudget {
    /// `endpoint`'s budget from `limits`, taken from `limiter`.
    pub fn new(limiter: Arc<dyn RateLimiter>, endpoint: Endpoint, limits: &RateLimits) -> Self {
        Self {
            limiter,
            endpoint,
            limit: endpoint.limit(limits),
        }
    }
}

/// Middleware: takes one request from the client's budget for `endpoint`, or answers 429 with
/// `Retry-After`. The address is the [`ClientAddress`] that `audit::request_context` found.
pub async fn limit(
    State(RouteBudget {
        limiter,
        endpoint,
        limit,
    }): State<RouteBudget>,
    request: Request,
    next: Next,
) -> Response {
    let ip = request
        .extensions()
        .get::<ClientAddress>()
        .and_then(|ClientAddress(ip)| *ip);
    // Without an address (only in-process tests drive the router without a socket) every such
    // request shares one budget.
    let client = ip.map_or_else(|| "unknown".to_string(), bucket);
    let key = format!("{}:{client}", endpoint.name());
    match limiter.acquire(&key, limit).await {
        Ok(Decision::Allowed) => next.run(request).await,
        Ok(Decision::Limited { retry_after }) => {
            tracing::info!(event = "rate_limited", endpoint = endpoint.name(), %client);
            ApiError::RateLimited {
                retry_after_seconds: retry_after.as_millis().div_ceil(1000).max(1) as u64,
            }
            .into_response()
        }
        // Login is where passwords are guessed: without its budget it is refused (503). Refresh
        // and register go through, so an outage of the limiter logs no one out.
        Err(error) if endpoint == Endpoint::Login => {
            tracing::warn!(event = "rate_limiter_unavailable", %error, "login refused");
            ApiError::Unavailable(format!("rate limiter: {error}")).into_response()
        }
        Err(error) => {
            tracing::warn!(event = "rate_limiter_unavailable", %error, "request let through");
            next.run(request).await
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    const PER_MINUTE_3: Limit = Limit {
        count: 3,
        per_seconds: 60,
    };

    #[test]
    fn gcra_allows_the_burst_then_one_per_interval() {
        let mut tat = None;
        for _ in 0..3 {
            let (decision, next) = gcra(tat, 1_000, PER_MINUTE_3);
            assert_eq!(decision, Decision::Allowed);
            tat = next;
        }
        let (decision, next) = gcra(tat, 1_000, PER_MINUTE_3);
        assert_eq!(
            decision,
            Decision::Limited {
                retry_after: Duration::from_secs(20)
            }
        );
        assert_eq!(next, None, "a refusal spends nothing");
        // One interval later, one more.
        assert_eq!(gcra(tat, 21_000, PER_MINUTE_3).0, Decision::Allowed);
        // A whole period later, the whole burst again.
        let (_, after) = gcra(tat, 61_000, PER_MINUTE_3);
        assert_eq!(after, Some(61_000 + 20_000));
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn the_client_address_comes_only_from_the_trusted_source() {
        let xff = ClientIpSource::XForwardedFor { trusted_proxies: 1 };
        let spoofed = headers(&[("x-forwarded-for", "1.2.3.4, 203.0.113.7")]);
        assert_eq!(client_ip(xff, &spoofed), "203.0.113.7".parse().ok());
        let two_lines = headers(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-for", "198.51.100.1, 203.0.113.9"),
        ]);
        assert_eq!(
            client_ip(
                ClientIpSource::XForwardedFor { trusted_proxies: 2 },
                &two_lines
            ),
            "198.51.100.1".parse().ok()
        );
        // Fewer hops than trusted proxies, or garbage: the header says nothing.
        assert_eq!(
            client_ip(
                ClientIpSource::XForwardedFor { trusted_proxies: 4 },
                &two_lines
            ),
            None
        );
        assert_eq!(client_ip(xff, &headers(&[("x-forwarded-for", "me")])), None);
        // Headers of another source are never read.
        let cf = headers(&[("cf-connecting-ip", "2001:db8::1")]);
        assert_eq!(client_ip(ClientIpSource::Peer, &cf), None);
        assert_eq!(client_ip(xff, &cf), None);
        assert_eq!(
            client_ip(ClientIpSource::CfConnectingIp, &cf),
            "2001:db8::1".parse().ok()
        );
        assert_eq!(client_ip(ClientIpSource::CfConnectingIp, &spoofed), None);
    }

    #[test]
    fn ipv6_clients_share_their_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().expect("ip");
        let c: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert_eq!(bucket(a), bucket(b));
        assert_ne!(bucket(a), bucket(c));
        assert_eq!(bucket(a), "2001:db8:1:2::/64");
        let mapped: IpAddr = "::ffff:203.0.113.7".parse().expect("ip");
        assert_eq!(bucket(mapped), "203.0.113.7");
    }

    #[test]
    fn in_process_maps_are_swept_only_when_they_have_grown() {
        let mut map: HashMap<String, i64> = (0..MEMORY_SWEEP_AT as i64)
            .map(|i| (format!("k{i}"), i))
            .collect();
        let mut sweep_at = 0;
        // Half the entries are live: the sweep keeps them and waits for twice as many.
        sweep_when_large(&mut map, &mut sweep_at, |_, v| *v % 2 == 0);
        assert_eq!(
            (map.len(), sweep_at),
            (MEMORY_SWEEP_AT / 2, MEMORY_SWEEP_AT)
        );
        map.insert("new".into(), 1);
        let before = map.len();
        sweep_when_large(&mut map, &mut sweep_at, |_, _| false);
        assert_eq!(map.len(), before, "below the next threshold: untouched");
    }

    #[test]
    fn limits_are_bounded() {
        assert!(RateLimits::default().validate().is_ok());
        let mut limits = RateLimits::default();
        limits.login.count = 0;
        assert!(limits.validate().is_err());
        limits.login = Limit {
            count: 1,
            per_seconds: 0,
        };
        assert!(limits.validate().is_err());
    }
}
