//! The router: `fn app(AppState) -> Router`, so tests drive it without a socket.

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
    api::{accounts, email, feed, mfa, password, sessions, tokens},
    audit,
    error::ApiError,
    rate_limit::{self, Endpoint, RouteBudget},
    state::AppState,
};

/// The origin's routes.
pub fn app(state: AppState) -> Router {
    let body_limit = state.config.max_body_bytes;
    // The budget is taken before the body is read or a password hashed.
    let limited = |endpoint: Endpoint| {
        let budget = RouteBudget::new(
            state.rate_limiter.clone(),
            endpoint,
            &state.config.rate_limits,
        );
        from_fn_with_state(budget, rate_limit::limit)
    };
    let router = Router::new()
        .route(
            "/v1/register",
            post(accounts::register).route_layer(limited(Endpoint::Register)),
        )
        .route(
            "/v1/login",
            post(tokens::login).route_layer(limited(Endpoint::Login)),
        )
        .route(
            "/v1/token/refresh",
            post(tokens::refresh).route_layer(limited(Endpoint::Refresh)),
        )
        .route(
            "/v1/email/verify",
            post(email::verify).route_layer(limited(Endpoint::Mail)),
        )
        .route(
            "/v1/email/verify/resend",
            post(email::resend).route_layer(limited(Endpoint::Mail)),
        )
        .route(
            "/v1/password/forgot",
            post(password::forgot).route_layer(limited(Endpoint::Mail)),
        )
        .route(
            "/v1/password/reset",
            post(password::reset).route_layer(limited(Endpoint::Mail)),
        )
        .route("/v1/me", get(accounts::me).patch(accounts::update_me))
        // The actions that check a password again spend the login budget.
        .route(
            "/v1/me",
            axum::routing::delete(accounts::delete_me).route_layer(limited(Endpoint::Login)),
        )
        .route("/v1/me/export", get(accounts::export_me))
        .route(
            "/v1/me/password",
            post(password::change).route_layer(limited(Endpoint::Login)),
        )
        .route("/v1/me/audit", get(accounts::my_audit))
        .route(
            "/v1/me/mfa/totp",
            post(mfa::start_totp)
                .delete(mfa::remove_totp)
                .route_layer(limited(Endpoint::Login)),
        )
        .route(
            "/v1/me/mfa/recovery-codes",
            post(mfa::replace_recovery_codes).route_layer(limited(Endpoint::Login)),
        )
        .route("/v1/me/mfa/totp/confirm", post(mfa::confirm_totp))
        .route("/v1/logout", post(sessions::logout))
        .route("/v1/sessions", get(sessions::sessions))
        .route("/v1/sessions/revoke-all", post(sessions::revoke_all))
        .route(
            "/v1/sessions/{id}",
            axum::routing::delete(sessions::revoke_session),
        )
        .route(
            "/v1/revocations",
            get(feed::revocations).route_layer(limited(Endpoint::Feed)),
        )
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/.well-known/jwks.json", get(jwks))
        .route("/openapi.json", get(openapi))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(body_limit))
        // Each route's own answers, with its template (`MatchedPath`) as the label.
        .layer(axum::middleware::from_fn(observe))
        // The request id and client address every other layer and handler reads.
        .layer(from_fn_with_state(
            state.config.client_ip,
            audit::request_context,
        ));
    // Outermost, so that every answer (a 429, a 503) carries CORS headers a page can read, and a
    // preflight is answered before anything else runs.
    let router = if state.config.cors.allowed_origins.is_empty() {
        router
    } else {
        let settings = std::sync::Arc::new(state.config.cors.clone());
        router.layer(from_fn_with_state(settings, crate::cors::cors))
    };
    router.with_state(state)
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
