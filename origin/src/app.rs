//! The router: `fn app(AppState) -> Router`, so tests drive it without a socket.

use std::sync::Arc;

use axum::{
    extract::{DefaultBodyLimit, State},
    http::{header, HeaderValue},
    middleware::from_fn_with_state,
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use serde_json::json;

use crate::{
    audit::{self, Audit},
    auth::SelfVerifier,
    config::Config,
    deny_list::DenyListKeeper,
    edge_push::EdgePush,
    error::ApiError,
    http,
    key_rotation::SigningKeys,
    password::PasswordHasher,
    rate_limit::{self, Endpoint, RateLimiter},
    soft_lock::{EmailPseudonyms, LoginGuard, SecondFactorGuard},
    store::{profile_cache::ProfileCache, RefreshStore, RevocationFeed, UserStore},
};

/// What every handler may use. Stores are trait objects so one router serves every backend.
#[derive(Clone)]
#[allow(missing_debug_implementations)] // the store trait objects have no Debug
pub struct AppState {
    /// Validated configuration.
    pub config: Arc<Config>,
    /// Signing keys, reread from the table in the background.
    pub keys: SigningKeys,
    /// Users.
    pub users: Arc<dyn UserStore>,
    /// Refresh tokens.
    pub refresh: Arc<dyn RefreshStore>,
    /// Password hashing on a bounded pool.
    pub passwords: PasswordHasher,
    /// Revoked access tokens, sessions and users, kept complete from the feed.
    pub deny_list: DenyListKeeper,
    /// The signed revocation feed.
    pub feed: Arc<dyn RevocationFeed>,
    /// Profiles, cache-aside in front of DynamoDB.
    pub profile_cache: Arc<dyn ProfileCache>,
    /// Verifies callers' access tokens with the edges' core.
    pub verifier: Arc<SelfVerifier>,
    /// Sends each revocation to the edges at once.
    pub edge_push: EdgePush,
    /// Per-client budgets of the credential endpoints.
    pub rate_limiter: Arc<dyn RateLimiter>,
    /// Soft lock of emails under attack.
    pub login_guard: LoginGuard,
    /// Second-factor guessing per account.
    pub second_factor_guard: SecondFactorGuard,
    /// Keyed pseudonyms of emails (soft-lock counters, audit subjects of unknown emails).
    pub pseudonyms: EmailPseudonyms,
    /// Security events.
    pub audit: Audit,
}

/// The origin's routes.
pub fn app(state: AppState) -> Router {
    let body_limit = state.config.max_body_bytes;
    // The budget is taken before the body is read or a password hashed.
    let limited =
        |endpoint: Endpoint| from_fn_with_state((state.clone(), endpoint), rate_limit::limit);
    Router::new()
        .route(
            "/v1/register",
            post(http::register).route_layer(limited(Endpoint::Register)),
        )
        .route(
            "/v1/login",
            post(http::login).route_layer(limited(Endpoint::Login)),
        )
        .route(
            "/v1/token/refresh",
            post(http::refresh).route_layer(limited(Endpoint::Refresh)),
        )
        .route("/v1/me", get(http::me).patch(http::update_me))
        .route("/v1/me/audit", get(http::my_audit))
        .route("/v1/me/mfa/totp", post(http::start_totp))
        .route("/v1/me/mfa/totp/confirm", post(http::confirm_totp))
        .route("/v1/logout", post(http::logout))
        .route("/v1/sessions", get(http::sessions))
        .route("/v1/sessions/revoke-all", post(http::revoke_all))
        .route(
            "/v1/sessions/{id}",
            axum::routing::delete(http::revoke_session),
        )
        .route(
            "/v1/revocations",
            get(http::revocations).route_layer(limited(Endpoint::Feed)),
        )
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/.well-known/jwks.json", get(jwks))
        .route("/openapi.json", get(openapi))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(body_limit))
        // Each route's own answers, with its template (`MatchedPath`) as the label.
        .layer(axum::middleware::from_fn(observe))
        // Outermost: the request id and client address every other layer and handler reads.
        .layer(from_fn_with_state(state.clone(), audit::request_context))
        .with_state(state)
}

/// Records every answer in the metrics: its route template (never the raw path, so a session
/// id never becomes a series), method, status and latency to the response headers.
async fn observe(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let started = std::time::Instant::now();
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|path| path.as_str().to_owned());
    let method = request.method().clone();
    let response = next.run(request).await;
    crate::metrics::METRICS.request(
        route.as_deref(),
        method.as_str(),
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// Prometheus scrapes this (`ops/metrics.md`). It holds no user data: counts and latencies by
/// route, and store health.
async fn metrics() -> Result<Response, ApiError> {
    let text = crate::metrics::METRICS
        .encode(crate::clock::now())
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response())
}

/// The API description, written by hand and checked against the router by the tests.
pub const OPENAPI: &str = include_str!("../openapi.json");

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// Liveness: the process answers.
async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// Readiness: the signing keys are loaded, DynamoDB answers, and the deny-list answers and is
/// complete (not rebuilding from the feed); a load balancer takes the instance out otherwise.
async fn readyz(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    if state.keys.snapshot().is_none() {
        return Err(ApiError::Unavailable("signing keys".into()));
    }
    state.users.ping().await?;
    state.deny_list.ready().await?;
    Ok(Json(json!({"status": "ready"})))
}

/// The public keys, current first. Cacheable: edges and clients refetch after `max-age`, and
/// keys are published well before they sign, so a cached set is never missing a signing key.
async fn jwks(State(state): State<AppState>) -> Result<Response, ApiError> {
    let keys = state
        .keys
        .snapshot()
        .ok_or_else(|| ApiError::Unavailable("signing keys".into()))?;
    let mut response = Json(keys.set.jwks(crate::clock::now())).into_response();
    let max_age = format!("public, max-age={}", state.config.jwks_max_age_seconds);
    if let Ok(value) = HeaderValue::from_str(&max_age) {
        response.headers_mut().insert(header::CACHE_CONTROL, value);
    }
    Ok(response)
}
