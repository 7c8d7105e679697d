//! # edgeauth-envoy
//!
//! The edge verifier as an Envoy HTTP filter (proxy-wasm ABI 0.2.1, built for `wasm32-wasip1`),
//! for a sidecar in a service mesh; built for the host instead, the same filter is a native Envoy
//! dynamic module (the `native` module). Every decision is `edgeauth-core`'s, so a token gets the
//! same verdict here as in the Worker and the CLI; this crate only translates Envoy's host calls.
//!
//! - **Keys.** One VM is elected fetcher through shared data with compare-and-swap (Envoy runs a
//!   VM per worker thread, and every VM ticks). It fetches the JWKS with `dispatch_http_call` when
//!   its `Cache-Control` freshness runs out and publishes it; every VM parses it into its own
//!   ring. A token with an unknown `kid` refetches at once, at most once per interval across all
//!   VMs, so a rotation is picked up without waiting for the cache to expire (jwt_authn waits).
//!   Before the first key set, requests get 503 with `Retry-After`, not 401.
//! - **Deny-list.** The fetcher polls the origin's revocation feed with the core's `FeedReader`,
//!   checks each entry's signature with the keys it holds, and publishes the live entries to a
//!   fixed ring in shared data; each VM keeps a copy in memory (the core's `DenyState`), so a
//!   lookup on the request path is a map read.
//! - **Failure is closed.** A bad configuration makes Envoy refuse the plugin; a host call that
//!   fails on the request path answers a JSON 500; nothing traps the VM. The ABI binding is this
//!   crate's own, because the SDK's wrappers panic on statuses they do not expect.
//!
//! Where to look: `abi` (the proxy-wasm ABI: host calls and entry points, the only `unsafe`),
//! `filter` (`Root` and `Exchange`, and the table of contexts), [`keys`] (JWKS fetch,
//! publication, copy, forced refetch), [`feed`] (feed polling and publishing), [`deny_list`] (the
//! shared ring), [`shared`] (shared-data records and names), [`wire`] (the ABI's header maps),
//! [`call_answer`] (an answer from the origin, for both builds), `host` (host calls), `metrics`, [`host_crypto`] and [`settings`]. The pure parts run natively in tests, over a map with
//! Envoy's shared-data semantics; the proxy-wasm glue is compiled for Wasm only.

pub mod call_answer;
pub mod deny_list;
pub mod feed;
pub mod host_crypto;
pub mod keys;
pub mod settings;
pub mod shared;
pub mod wire;

#[cfg(not(target_family = "wasm"))]
pub mod native;
#[cfg(test)]
mod testing;

#[cfg(target_family = "wasm")]
mod abi;
#[cfg(target_family = "wasm")]
mod filter;
#[cfg(target_family = "wasm")]
mod host;
#[cfg(target_family = "wasm")]
mod metrics;
