//! The HTTP API as a client sees it, on the embedded default (dynoxide in-process on a file).

use std::collections::HashMap;

use axum::{
    body::Body,
    http::{header, Request, StatusCode},
    Router,
};
use base64ct::Encoding as _;
use edgeauth_core::{verify_token, KeyRing, Policy, Revocation};
use edgeauth_origin::{
    app::app,
    bootstrap::{build_state, create_tables_command},
    config::{Config, RedisTarget, Storage},
    store::{
        deny::{key as deny_key, Held},
        DenyList as _, StoreError,
    },
};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

mod browser;
mod email;
mod lifecycle;
mod redis_cluster;
mod redis_tls;

struct Origin {
    router: Router,
    state: edgeauth_origin::state::AppState,
    data_dir: std::path::PathBuf,
}

/// `signing_keys` with `fields` and, on shared storage, the test KEK every instance must hold.
fn signing_keys(mut fields: Value) -> String {
    if std::env::var("EDGEAUTH_TEST_DYNAMODB_ENDPOINT").is_ok() {
        fields["encryption"] = json!({
            "backend": "local",
            "key": "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
        });
    }
    fields.to_string()
}

/// The run's shared Redis, if any: one server (`EDGEAUTH_TEST_REDIS_URL`) or a Redis Cluster
/// (`EDGEAUTH_TEST_REDIS_CLUSTER`, a JSON list of its seed nodes' URLs).
fn test_redis() -> Option<RedisTarget> {
    if let Ok(seeds) = std::env::var("EDGEAUTH_TEST_REDIS_CLUSTER") {
        let seeds = serde_json::from_str(&seeds).expect("EDGEAUTH_TEST_REDIS_CLUSTER: a JSON list");
        return Some(RedisTarget::Cluster(seeds));
    }
    std::env::var("EDGEAUTH_TEST_REDIS_URL")
        .ok()
        .map(RedisTarget::Server)
}

/// The origin's settings for `redis`: deny-list and profile cache.
fn redis_settings(redis: &RedisTarget) -> [(String, String); 2] {
    let (field, value) = match redis {
        RedisTarget::Server(url) => ("URL", url.clone()),
        RedisTarget::Cluster(seeds) => ("CLUSTER", json!(seeds).to_string()),
    };
    ["DENYLIST", "CACHE"].map(|role| (format!("EDGEAUTH_REDIS_{role}_{field}"), value.clone()))
}

/// Runs `cmd` on `redis`, routed by its key in a cluster.
async fn redis_query<T: redis::FromRedisValue>(redis: &RedisTarget, cmd: &redis::Cmd) -> T {
    match redis {
        RedisTarget::Server(url) => {
            let mut connection = redis::Client::open(url.as_str())
                .expect("client")
                .get_multiplexed_async_connection()
                .await
                .expect("connection");
            cmd.query_async(&mut connection)
                .await
                .expect("redis command")
        }
        RedisTarget::Cluster(seeds) => {
            let mut connection = redis::cluster::ClusterClient::new(seeds.clone())
                .expect("client")
                .get_async_connection()
                .await
                .expect("connection");
            cmd.query_async(&mut connection)
                .await
                .expect("redis command")
        }
    }
}

/// The backend under test: the embedded default, or, when `EDGEAUTH_TEST_DYNAMODB_ENDPOINT` is
/// set (scripts/test sets it), a separate dynoxide server through the same SDK path, each test in
/// its own tables; likewise [`test_redis`] puts the deny-list in a real Redis (one server, then a
/// cluster) instead of the in-process map. The same tests run against each.
fn test_env(data_dir: &std::path::Path, extra: &[(&str, &str)]) -> HashMap<String, String> {
    let mut env: HashMap<String, String> = [
        ("EDGEAUTH_DATA_DIR", data_dir.to_string_lossy().to_string()),
        ("EDGEAUTH_ISSUER", "https://auth.example.test".to_string()),
        ("EDGEAUTH_AUDIENCE", "api.example.test".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    if let Ok(endpoint) = std::env::var("EDGEAUTH_TEST_DYNAMODB_ENDPOINT") {
        let prefix = data_dir
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().to_string());
        env.insert("EDGEAUTH_STORAGE".into(), "dynamodb".into());
        env.insert("EDGEAUTH_DYNAMODB_ENDPOINT".into(), endpoint);
        env.insert("EDGEAUTH_TABLE_PREFIX".into(), format!("{prefix}-"));
        env.insert("EDGEAUTH_SIGNING_KEYS".into(), signing_keys(json!({})));
    }
    if let Some(redis) = test_redis() {
        // Two separately configured connections, here to one server or cluster.
        env.extend(redis_settings(&redis));
    }
    for (k, v) in extra {
        // A test's own Redis for a role replaces the run's, server or cluster.
        for (mine, twin) in [("_URL", "_CLUSTER"), ("_CLUSTER", "_URL")] {
            if let Some(role) = k
                .strip_prefix("EDGEAUTH_REDIS_")
                .and_then(|r| r.strip_suffix(mine))
            {
                env.remove(&format!("EDGEAUTH_REDIS_{role}{twin}"));
            }
        }
        env.insert((*k).to_string(), (*v).to_string());
    }
    env
}

async fn start(data_dir: std::path::PathBuf, extra: &[(&str, &str)]) -> Origin {
    let env = test_env(&data_dir, extra);
    let config = Config::from_sources(None, |k| env.get(k).cloned()).expect("test configuration");
    if config.storage == Storage::Dynamodb {
        // What an operator does once before starting instances.
        create_tables_command(&config).await.expect("tables");
    }
    let state = build_state(config).await.expect("origin starts");
    Origin {
        router: app(state.clone()),
        state,
        data_dir,
    }
}

fn fresh_dir() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("edgeauth-origin-{}", uuid::Uuid::new_v4().simple()))
}

async fn origin_at(data_dir: std::path::PathBuf) -> Origin {
    start(data_dir, &[]).await
}

async fn origin() -> Origin {
    start(fresh_dir(), &[]).await
}

async fn origin_with(extra: &[(&str, &str)]) -> Origin {
    start(fresh_dir(), extra).await
}

struct Reply {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Value,
    /// The body as text, for the answers that are not JSON.
    text: String,
}

impl Reply {
    /// The access token of a login or refresh answer.
    fn access_token(&self) -> String {
        self.body["access_token"]
            .as_str()
            .expect("an access token")
            .to_owned()
    }
}

impl Origin {
    async fn send(&self, request: Request<Body>) -> Reply {
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("infallible");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            body,
            text: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    async fn post(&self, path: &str, body: Value) -> Reply {
        self.send(
            Request::post(path)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body.to_string()))
                .expect("request"),
        )
        .await
    }

    async fn get(&self, path: &str) -> Reply {
        self.send(Request::get(path).body(Body::empty()).expect("request"))
            .await
    }

    async fn register(&self, email: &str, password: &str) -> Reply {
        self.post(
            "/v1/register",
            json!({"email": email, "password": password}),
        )
        .await
    }

    async fn login(&self, email: &str, password: &str) -> Reply {
        self.post("/v1/login", json!({"email": email, "password": password}))
            .await
    }
}

fn edge_policy() -> Policy {
    Policy::from_json(
        r#"{"issuers":["https://auth.example.test"],"audiences":["api.example.test"]}"#,
    )
    .expect("policy")
}

#[tokio::test]
async fn register_then_login_gives_a_token_the_edge_accepts() {
    let o = origin().await;
    let r = o
        .register(" Alice@Example.com ", "correct horse battery")
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let user_id = r.body["user_id"].as_str().expect("id").to_string();

    let r = o.login("alice@example.com", "correct horse battery").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["token_type"], "Bearer");
    assert_eq!(r.body["expires_in"], 900);
    assert!(
        r.body.get("refresh_token").is_none(),
        "browsers get the refresh token only as a cookie"
    );
    let cookie = r.headers[header::SET_COOKIE].to_str().expect("ascii");
    for part in [
        "refresh_token=",
        "HttpOnly",
        "Secure",
        "SameSite=Strict",
        "Path=/v1/token/refresh",
    ] {
        assert!(cookie.contains(part), "{cookie}");
    }
    let token = r.body["access_token"].as_str().expect("token");

    let jwks = o.get("/.well-known/jwks.json").await;
    assert_eq!(jwks.status, StatusCode::OK);
    assert_eq!(jwks.headers[header::CACHE_CONTROL], "public, max-age=300");
    let (ring, skipped) =
        KeyRing::from_jwks(jwks.body.to_string().as_bytes(), &edge_policy()).expect("jwks");
    assert!(skipped.is_empty());
    let now = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs(),
    )
    .expect("i64");
    let verified = verify_token(token, now, &ring, &edge_policy())
        .expect("the edge accepts the origin's token");
    let claims = verified.claims();
    assert_eq!(claims.sub.as_deref(), Some(user_id.as_str()));
    assert_eq!(claims.scope, ["profile"]);
    assert_eq!(claims.amr, ["pwd"]);
    assert_eq!(claims.exp.zip(claims.iat).map(|(e, i)| e - i), Some(900));
    // No PII in the token: the payload names no email.
    let payload = token.split('.').nth(1).expect("payload");
    let payload = String::from_utf8(base64ct::Base64UrlUnpadded::decode_vec(payload).expect("b64"))
        .expect("utf8");
    assert!(!payload.contains("alice"), "{payload}");
}

#[tokio::test]
async fn non_browser_clients_can_ask_for_the_refresh_token_in_the_body() {
    let o = origin().await;
    o.register("bob@example.com", "a long enough password")
        .await;
    let r = o
        .post("/v1/login", json!({"email": "bob@example.com", "password": "a long enough password", "refresh_token_in_body": true}))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let in_body = r.body["refresh_token"].as_str().expect("refresh token");
    let cookie = r.headers[header::SET_COOKIE].to_str().expect("ascii");
    assert!(
        cookie.starts_with(&format!("refresh_token={in_body};")),
        "{cookie}"
    );
}

#[tokio::test]
async fn wrong_password_and_unknown_email_read_the_same() {
    let o = origin().await;
    o.register("carol@example.com", "carol's passphrase").await;
    let wrong = o.login("carol@example.com", "not carol's passphrase").await;
    let unknown = o.login("nobody@example.com", "carol's passphrase").await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert_eq!((unknown.status, &unknown.body), (wrong.status, &wrong.body));
    assert_eq!(wrong.headers.get(header::SET_COOKIE), None);
}

#[tokio::test]
async fn an_email_registers_once_even_under_concurrency() {
    let o = origin().await;
    assert_eq!(
        o.register("dave@example.com", "dave's passphrase")
            .await
            .status,
        StatusCode::CREATED
    );
    let again = o.register("DAVE@example.com", "another passphrase").await;
    assert_eq!(
        (again.status, again.body["error"].as_str()),
        (StatusCode::CONFLICT, Some("email_taken"))
    );

    let o = std::sync::Arc::new(o);
    let attempts = (0..8).map(|i| {
        let o = o.clone();
        tokio::spawn(async move {
            o.register("erin@example.com", &format!("passphrase number {i}"))
                .await
                .status
        })
    });
    let mut created = 0;
    for attempt in attempts {
        match attempt.await.expect("task") {
            StatusCode::CREATED => created += 1,
            StatusCode::CONFLICT => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(created, 1);
}

#[tokio::test]
async fn bad_input_gets_a_json_error_naming_the_problem() {
    let o = origin().await;
    let r = o.register("not-an-email", "long enough password").await;
    assert_eq!(
        (r.status, r.body["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("email"))
    );
    let r = o.register("frank@example.com", "short").await;
    assert_eq!(
        (r.status, r.body["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("password"))
    );
    let r = o.post("/v1/register", json!({"email": "frank@example.com", "password": "long enough password", "admin": true})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(
        r.body["message"]
            .as_str()
            .expect("message")
            .contains("admin"),
        "{}",
        r.body
    );
    let r = o
        .post("/v1/register", json!({"email": "frank@example.com"}))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(
        r.body["message"]
            .as_str()
            .expect("message")
            .contains("password"),
        "{}",
        r.body
    );

    let no_type = Request::post("/v1/register")
        .body(Body::from("{}"))
        .expect("request");
    assert_eq!(
        o.send(no_type).await.status,
        StatusCode::UNSUPPORTED_MEDIA_TYPE
    );
    let huge = json!({"email": "frank@example.com", "password": "x".repeat(100_000)});
    let r = o.post("/v1/register", huge).await;
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("payload_too_large"))
    );
    let not_json = Request::post("/v1/register")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{not json"))
        .expect("request");
    assert_eq!(o.send(not_json).await.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn accounts_and_keys_survive_a_restart() {
    let first = origin().await;
    first
        .register("grace@example.com", "grace's passphrase")
        .await;
    let kid_before = first.get("/.well-known/jwks.json").await.body["keys"][0]["kid"].clone();
    let second = origin_at(first.data_dir.clone()).await;
    assert_eq!(
        second
            .login("grace@example.com", "grace's passphrase")
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        second.get("/.well-known/jwks.json").await.body["keys"][0]["kid"],
        kid_before
    );
}

#[tokio::test]
async fn health_and_readiness() {
    let o = origin().await;
    assert_eq!(o.get("/healthz").await.status, StatusCode::OK);
    let r = o.get("/readyz").await;
    assert_eq!(
        (r.status, r.body["status"].as_str()),
        (StatusCode::OK, Some("ready"))
    );
}

fn cookie_token(reply: &Reply) -> String {
    let cookie = reply.headers[header::SET_COOKIE].to_str().expect("ascii");
    cookie
        .strip_prefix("refresh_token=")
        .and_then(|rest| rest.split(';').next())
        .expect("refresh cookie")
        .to_string()
}

impl Origin {
    /// A browser's refresh: the cookie, no body.
    async fn refresh_with_cookie(&self, token: &str) -> Reply {
        self.send(
            Request::post("/v1/token/refresh")
                .header(header::COOKIE, format!("theme=dark; refresh_token={token}"))
                .header("x-requested-with", "fetch")
                .body(Body::empty())
                .expect("request"),
        )
        .await
    }

    async fn logged_in(&self, email: &str) -> String {
        self.register(email, "a fine passphrase").await;
        let r = self.login(email, "a fine passphrase").await;
        assert_eq!(r.status, StatusCode::OK);
        cookie_token(&r)
    }
}

#[tokio::test]
async fn refresh_rotates_and_a_replayed_token_revokes_the_session() {
    let o = origin_with(&[("EDGEAUTH_REFRESH_GRACE_SECONDS", "0")]).await;
    let first = o.logged_in("heidi@example.com").await;
    let r = o.refresh_with_cookie(&first).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.body["access_token"].is_string());
    let second = cookie_token(&r);
    assert_ne!(first, second, "every refresh rotates");

    // The first token again: theft. The whole family goes, the thief's and the owner's.
    let replay = o.refresh_with_cookie(&first).await;
    assert_eq!(
        (replay.status, replay.body["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_grant"))
    );
    assert_eq!(
        o.refresh_with_cookie(&second).await.status,
        StatusCode::UNAUTHORIZED
    );
    // A new login starts a new session.
    let again = o.login("heidi@example.com", "a fine passphrase").await;
    assert_eq!(
        o.refresh_with_cookie(&cookie_token(&again)).await.status,
        StatusCode::OK
    );
}

/// The feed's first entry, checked as an edge checks it: with the origin's JWKS.
async fn first_feed_revocation(o: &Origin) -> edgeauth_core::Revocation {
    let feed = o.get("/v1/revocations").await;
    let jws = feed.body["entries"][0]["jws"].as_str().expect("an entry");
    let jwks = o.get("/.well-known/jwks.json").await.body.to_string();
    let (ring, _) = KeyRing::from_jwks(jwks.as_bytes(), &edge_policy()).expect("ring");
    edgeauth_core::verify_revocation(jws, edgeauth_origin::clock::now(), &ring, &edge_policy())
        .expect("signed by the origin")
}

#[tokio::test]
async fn two_tabs_refreshing_together_stay_logged_in_once_without_forking_the_session() {
    let o = origin().await; // default grace: 10 s
    let shared = o.logged_in("ivan@example.com").await;
    let tab_a = o.refresh_with_cookie(&shared).await;
    let tab_b = o.refresh_with_cookie(&shared).await;
    assert_eq!(
        (tab_a.status, tab_b.status),
        (StatusCode::OK, StatusCode::OK),
        "{}",
        tab_b.body
    );
    // The second tab gets an access token only: the browser already holds tab A's new cookie,
    // and a second refresh token would be a second session.
    let a = cookie_token(&tab_a);
    assert_eq!(tab_b.headers.get(header::SET_COOKIE), None);
    assert!(tab_b.body.get("refresh_token").is_none(), "{}", tab_b.body);
    let b_access = tab_b.body["access_token"].as_str().expect("access token");
    let a_access = tab_a.body["access_token"].as_str().expect("access token");
    assert_eq!(claims_of(b_access)["sid"], claims_of(a_access)["sid"]);
    assert_eq!(
        o.with_bearer("GET", "/v1/me", b_access, None).await.status,
        StatusCode::OK
    );
    // The grace is single-use: a third exchange of the same token is reuse, which ends the
    // session: its refresh tokens, and its access tokens at the edges (a session entry in the
    // signed feed).
    let third = o.refresh_with_cookie(&shared).await;
    assert_eq!(
        (third.status, third.body["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_grant"))
    );
    assert_eq!(
        o.refresh_with_cookie(&a).await.status,
        StatusCode::UNAUTHORIZED,
        "the family is revoked"
    );
    let revocation = first_feed_revocation(&o).await;
    let edgeauth_core::Revocation::Session { sid, expires_at } = revocation else {
        panic!("a session entry: {revocation:?}");
    };
    assert_eq!(Some(sid.as_str()), claims_of(a_access)["sid"].as_str());
    let exp = claims_of(b_access)["exp"].as_i64().expect("exp");
    assert!(expires_at >= exp, "outlives the session's access tokens");
    // The origin holds it too: the session's access tokens are refused there as well.
    for access in [a_access, b_access] {
        assert_eq!(
            o.with_bearer("GET", "/v1/me", access, None).await.status,
            StatusCode::UNAUTHORIZED
        );
    }
}

#[tokio::test]
async fn the_grace_gives_a_body_client_no_second_refresh_token_either() {
    let o = origin().await;
    o.register("ivy@example.com", "a fine passphrase").await;
    let login = o
        .post("/v1/login", json!({"email": "ivy@example.com", "password": "a fine passphrase", "refresh_token_in_body": true}))
        .await;
    let shared = json!({"refresh_token": login.body["refresh_token"]});
    let first = o.post("/v1/token/refresh", shared.clone()).await;
    assert!(first.body["refresh_token"].is_string(), "{}", first.body);
    let second = o.post("/v1/token/refresh", shared).await;
    assert_eq!(second.status, StatusCode::OK, "{}", second.body);
    assert!(second.body["access_token"].is_string());
    assert!(
        second.body.get("refresh_token").is_none(),
        "{}",
        second.body
    );
    assert_eq!(second.headers.get(header::SET_COOKIE), None);
    // The session goes on with the one new refresh token.
    let next = o
        .post(
            "/v1/token/refresh",
            json!({"refresh_token": first.body["refresh_token"]}),
        )
        .await;
    assert_eq!(next.status, StatusCode::OK, "{}", next.body);
}

#[tokio::test]
async fn non_browser_clients_refresh_with_the_body() {
    let o = origin().await;
    let token = o.logged_in("judy@example.com").await;
    let r = o
        .post("/v1/token/refresh", json!({"refresh_token": token}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let next = r.body["refresh_token"]
        .as_str()
        .expect("in the body, as it came");
    assert_eq!(next, cookie_token(&r));
    assert_eq!(
        o.post(
            "/v1/token/refresh",
            json!({"refresh_token": next, "extra": 1})
        )
        .await
        .status,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn missing_or_unknown_refresh_tokens_are_invalid_grant() {
    let o = origin().await;
    let none = o
        .send(
            Request::post("/v1/token/refresh")
                .body(Body::empty())
                .expect("request"),
        )
        .await;
    assert_eq!(
        (none.status, none.body["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_grant"))
    );
    let forged = o
        .refresh_with_cookie("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
        .await;
    assert_eq!(forged.status, StatusCode::UNAUTHORIZED);
}

/// Shared storage that cannot be reached: nothing listens on port 1, so every call fails to
/// connect.
fn dead_dynamodb_config(dir: &std::path::Path) -> Config {
    let mut env = test_env(
        dir,
        &[
            ("EDGEAUTH_STORAGE", "dynamodb"),
            ("EDGEAUTH_DYNAMODB_ENDPOINT", "http://127.0.0.1:1"),
            (
                "EDGEAUTH_SIGNING_KEYS",
                r#"{"encryption":{"backend":"local","key":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="}}"#,
            ),
        ],
    );
    // Shared storage needs a shared deny-list: the run's Redis, or one as dead as the store.
    if test_redis().is_none() {
        env.insert(
            "EDGEAUTH_REDIS_DENYLIST_URL".into(),
            "redis://127.0.0.1:1".into(),
        );
    }
    Config::from_sources(None, |k| env.get(k).cloned()).expect("configuration")
}

#[tokio::test]
async fn dynamodb_down_is_503_with_retry_after_never_500() {
    // Nothing listens on port 1: every call fails to connect. (No create-tables: it would fail.)
    let dir = fresh_dir();
    let config = dead_dynamodb_config(&dir);
    let state = build_state(config)
        .await
        .expect("starts without touching the store");
    let o = Origin {
        router: app(state.clone()),
        state,
        data_dir: dir,
    };
    let started = std::time::Instant::now();
    for reply in [
        o.get("/readyz").await,
        o.register("kim@example.com", "kim's passphrase").await,
        o.login("kim@example.com", "kim's passphrase").await,
    ] {
        assert_eq!(
            reply.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            reply.body
        );
        assert_eq!(reply.headers[header::RETRY_AFTER], "5");
        assert_eq!(reply.body["error"], "temporarily_unavailable");
        assert!(
            !reply.body.to_string().contains("127.0.0.1"),
            "internals leaked: {}",
            reply.body
        );
    }
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(
        o.get("/healthz").await.status,
        StatusCode::OK,
        "liveness does not depend on the store"
    );
}

impl Origin {
    async fn patch_me(&self, token: &str, body: Value) -> Reply {
        self.with_bearer("PATCH", "/v1/me", token, Some(body)).await
    }

    async fn with_bearer(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> Reply {
        let builder = Request::builder()
            .method(method)
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {token}"));
        let request = match body {
            Some(b) => builder
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(b.to_string())),
            None => builder.body(Body::empty()),
        };
        self.send(request.expect("request")).await
    }
}

#[tokio::test]
async fn me_reads_and_updates_only_the_callers_own_profile() {
    let o = origin().await;
    o.register("leo@example.com", "leo's passphrase").await;
    let login = o.login("leo@example.com", "leo's passphrase").await;
    let token = login.body["access_token"]
        .as_str()
        .expect("token")
        .to_string();

    let r = o.with_bearer("GET", "/v1/me", &token, None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["email"], "leo@example.com");
    assert_eq!(r.body["display_name"], Value::Null);

    let r = o.patch_me(&token, json!({"display_name": "  Leo  "})).await;
    assert_eq!(
        (r.status, r.body["display_name"].as_str()),
        (StatusCode::OK, Some("Leo"))
    );
    assert_eq!(
        o.with_bearer("GET", "/v1/me", &token, None).await.body["display_name"],
        "Leo"
    );
    let r = o.patch_me(&token, json!({"display_name": null})).await;
    assert_eq!(r.body["display_name"], Value::Null);

    // The id comes from the token alone: a body naming another user is refused, not obeyed.
    let r = o
        .patch_me(
            &token,
            json!({"display_name": "x", "user_id": uuid::Uuid::new_v4()}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = o.patch_me(&token, json!({"display_name": "a\u{0}b"})).await;
    assert_eq!(
        (r.status, r.body["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("display_name"))
    );
}

#[tokio::test]
async fn me_answers_like_the_edge_for_bad_tokens() {
    let o = origin().await;
    let missing = o.get("/v1/me").await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    assert_eq!(missing.headers[header::WWW_AUTHENTICATE], "Bearer");
    let garbage = o.with_bearer("GET", "/v1/me", "not.a.token", None).await;
    assert_eq!(garbage.status, StatusCode::UNAUTHORIZED);
    let challenge = garbage.headers[header::WWW_AUTHENTICATE]
        .to_str()
        .expect("ascii");
    assert!(
        challenge.contains(r#"error="invalid_token""#),
        "{challenge}"
    );
    assert_eq!(garbage.body["reason"], "malformed_token");
    // A token from another origin's keys is refused.
    let other = origin().await;
    other.register("mia@example.com", "mia's passphrase").await;
    let foreign = other.login("mia@example.com", "mia's passphrase").await;
    let foreign = foreign.body["access_token"].as_str().expect("token");
    let r = o.with_bearer("GET", "/v1/me", foreign, None).await;
    assert_eq!(
        (r.status, r.body["reason"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("unknown_key"))
    );
}

#[tokio::test]
async fn logout_revokes_the_access_token_and_its_session_at_once() {
    let o = origin().await;
    o.register("nina@example.com", "nina's passphrase").await;
    let laptop = o.login("nina@example.com", "nina's passphrase").await;
    let phone = o.login("nina@example.com", "nina's passphrase").await;
    let laptop_access = laptop.body["access_token"]
        .as_str()
        .expect("token")
        .to_string();
    let phone_access = phone.body["access_token"]
        .as_str()
        .expect("token")
        .to_string();
    assert_eq!(
        o.with_bearer("GET", "/v1/me", &laptop_access, None)
            .await
            .status,
        StatusCode::OK
    );
    // A thief with the laptop's refresh token mints an access token of the same session.
    let stolen = o.refresh_with_cookie(&cookie_token(&laptop)).await;
    assert_eq!(stolen.status, StatusCode::OK);
    let stolen_access = stolen.body["access_token"]
        .as_str()
        .expect("token")
        .to_string();

    let out = o
        .with_bearer("POST", "/v1/logout", &laptop_access, None)
        .await;
    assert_eq!(out.status, StatusCode::NO_CONTENT);
    let cleared = out.headers[header::SET_COOKIE].to_str().expect("ascii");
    assert!(
        cleared.starts_with("refresh_token=;") && cleared.contains("Max-Age=0"),
        "{cleared}"
    );

    // At once: the access token is refused, and the session's refresh token is gone.
    let me = o.with_bearer("GET", "/v1/me", &laptop_access, None).await;
    assert_eq!(
        (me.status, me.body["reason"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("token_revoked"))
    );
    assert_eq!(
        o.refresh_with_cookie(&cookie_token(&stolen)).await.status,
        StatusCode::UNAUTHORIZED
    );
    // The whole session is revoked, so the access token the thief refreshed too.
    let thief = o.with_bearer("GET", "/v1/me", &stolen_access, None).await;
    assert_eq!(
        (thief.status, thief.body["reason"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("token_revoked"))
    );
    // Logging out again (a client retrying) is accepted and changes nothing.
    assert_eq!(
        o.with_bearer("POST", "/v1/logout", &laptop_access, None)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    // The other session is untouched.
    assert_eq!(
        o.with_bearer("GET", "/v1/me", &phone_access, None)
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        o.refresh_with_cookie(&cookie_token(&phone)).await.status,
        StatusCode::OK
    );
}

/// The router behind the real server on a loopback port, with short timeouts.
async fn served(
    o: &Origin,
    timeouts: edgeauth_origin::server::ServerTimeouts,
) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let router = o.router.clone();
    tokio::spawn(edgeauth_origin::server::serve(
        listener,
        router,
        timeouts,
        std::future::pending(),
    ));
    address
}

/// What the server sends on `stream` within `within`, until it closes; `None` if it neither
/// answers nor closes in time.
async fn heard_within(
    stream: &mut tokio::net::TcpStream,
    within: std::time::Duration,
) -> Option<String> {
    use tokio::io::AsyncReadExt as _;
    let mut heard = Vec::new();
    tokio::time::timeout(within, stream.read_to_end(&mut heard))
        .await
        .ok()?
        .ok()?;
    Some(String::from_utf8_lossy(&heard).into_owned())
}

#[tokio::test]
async fn slow_clients_cannot_hold_a_connection_open() {
    use tokio::io::AsyncWriteExt as _;
    let o = origin().await;
    let timeouts = edgeauth_origin::server::ServerTimeouts {
        header_read_seconds: 1,
        request_seconds: 2,
    };
    let address = served(&o, timeouts).await;
    // A normal request is answered.
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: origin\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let heard = heard_within(&mut stream, std::time::Duration::from_secs(5)).await;
    assert!(
        heard
            .as_deref()
            .is_some_and(|h| h.starts_with("HTTP/1.1 200")),
        "{heard:?}"
    );
    // Headers that never end (slowloris): the connection is closed after the header timeout.
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: origin\r\nX-Slow: a")
        .await
        .expect("write");
    let closed = heard_within(&mut stream, std::time::Duration::from_secs(4)).await;
    assert!(closed.is_some(), "still open after 4 s");
    // A keep-alive connection left idle is closed the same way.
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: origin\r\n\r\n")
        .await
        .expect("write");
    let idle = heard_within(&mut stream, std::time::Duration::from_secs(4)).await;
    assert!(
        idle.as_deref()
            .is_some_and(|h| h.starts_with("HTTP/1.1 200")),
        "{idle:?}"
    );
    // A body that stops arriving: 408 with a JSON error after the request timeout.
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    stream
        .write_all(
            b"POST /v1/login HTTP/1.1\r\nHost: origin\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"email\":",
        )
        .await
        .expect("write");
    let heard = heard_within(&mut stream, std::time::Duration::from_secs(5)).await;
    assert!(
        heard
            .as_deref()
            .is_some_and(|h| h.starts_with("HTTP/1.1 408") && h.contains("request_timeout")),
        "{heard:?}"
    );
}

/// A `GET /v1/me` that read the profile before a change cannot cache it after the change, in
/// the cache the run configures (Redis in the redis-server pass, in-process otherwise).
#[tokio::test]
async fn a_profile_read_before_a_change_is_not_cached_after_it() {
    let o = origin().await;
    let user_id = o.register("liv@example.com", "liv's passphrase").await.body["user_id"]
        .as_str()
        .expect("id")
        .to_string();
    let id = edgeauth_origin::store::UserId(uuid::Uuid::parse_str(&user_id).expect("uuid"));
    let token = o.login("liv@example.com", "liv's passphrase").await.body["access_token"]
        .as_str()
        .expect("token")
        .to_string();
    let now = edgeauth_origin::clock::now();
    // A reader's cache miss and its read of the old profile...
    let read = o
        .state
        .profile_cache
        .get(id, now)
        .await
        .expect("cache read");
    let old = o.with_bearer("GET", "/v1/me", &token, None).await.body;
    o.state
        .profile_cache
        .invalidate(id)
        .await
        .expect("invalidated");
    let old: edgeauth_origin::store::profile_cache::Profile =
        serde_json::from_value(old).expect("a profile");
    // ...then the owner renames, and the slow reader fills with what it read.
    let renamed = o
        .with_bearer(
            "PATCH",
            "/v1/me",
            &token,
            Some(json!({"display_name": "Liv"})),
        )
        .await;
    assert_eq!(renamed.body["display_name"], "Liv");
    o.state
        .profile_cache
        .put(id, &old, now + 3600, now, read.generation)
        .await
        .expect("put");
    let me = o.with_bearer("GET", "/v1/me", &token, None).await;
    assert_eq!(
        me.body["display_name"], "Liv",
        "the old profile came back from the cache"
    );
}

/// The largest budget the configuration accepts (a million a second) makes the GCRA interval
/// round to 0 ms; Redis refused the script's zero expiry, and since login fails closed that
/// refused every login (the redis-server pass runs this against the Redis limiter).
#[tokio::test]
async fn the_widest_budget_the_configuration_accepts_lets_logins_through() {
    let o = origin_with(&[(
        "EDGEAUTH_RATE_LIMITS",
        r#"{"login":{"count":1000000,"per_seconds":1}}"#,
    )])
    .await;
    o.register("una@example.com", "una's passphrase").await;
    for _ in 0..3 {
        let r = o.login("una@example.com", "una's passphrase").await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    }
}

#[tokio::test]
async fn the_feed_is_read_within_a_per_client_budget() {
    let o = origin_with(&[
        BEHIND_ONE_PROXY,
        (
            "EDGEAUTH_RATE_LIMITS",
            r#"{"feed":{"count":3,"per_seconds":60}}"#,
        ),
    ])
    .await;
    let read = |client: &str| {
        let request = Request::get("/v1/revocations?after=0")
            .header("x-forwarded-for", client)
            .body(Body::empty())
            .expect("request");
        o.send(request)
    };
    for _ in 0..3 {
        assert_eq!(read("203.0.113.9").await.status, StatusCode::OK);
    }
    let limited = read("203.0.113.9").await;
    assert_eq!(
        (limited.status, limited.body["error"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("rate_limited"))
    );
    assert!(limited.headers.contains_key(header::RETRY_AFTER));
    // Another edge has its own budget.
    assert_eq!(read("198.51.100.20").await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_look_alike_address_is_the_same_account_and_an_invisible_one_is_refused() {
    let o = origin().await;
    let first = o
        .register("\u{ff4b}im@example.com", "kim's passphrase")
        .await;
    assert_eq!(first.status, StatusCode::CREATED, "{:?}", first.body);
    let twin = o.register("kim@example.com", "another passphrase").await;
    assert_eq!(
        (twin.status, twin.body["error"].as_str()),
        (StatusCode::CONFLICT, Some("email_taken"))
    );
    assert_eq!(
        o.login("KIM@example.com", "kim's passphrase").await.status,
        StatusCode::OK
    );
    let hidden = o
        .register("k\u{200b}im@example.com", "kim's passphrase")
        .await;
    assert_eq!(
        (hidden.status, hidden.body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_request"))
    );
}

#[tokio::test]
async fn a_dead_deny_list_fails_closed_and_logout_never_claims_success() {
    let o = origin_with(&[("EDGEAUTH_REDIS_DENYLIST_URL", "redis://127.0.0.1:1")]).await;
    o.register("omar@example.com", "omar's passphrase").await;
    // The login's rate limit lives in that Redis too, and login fails closed without it.
    let refused = o.login("omar@example.com", "omar's passphrase").await;
    assert_eq!(
        refused.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        refused.body
    );
    // The session comes from an instance whose limiter still answers.
    let limiter_up = with_memory_rate_limiter(&o);
    let login = limiter_up
        .login("omar@example.com", "omar's passphrase")
        .await;
    let access = login.body["access_token"]
        .as_str()
        .expect("token")
        .to_string();
    let out = o.with_bearer("POST", "/v1/logout", &access, None).await;
    assert_eq!(out.status, StatusCode::SERVICE_UNAVAILABLE, "{}", out.body);
    assert_eq!(out.headers[header::RETRY_AFTER], "5");
    let ready = o.get("/readyz").await;
    assert_eq!(
        ready.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "readiness covers the deny-list"
    );
    // The feed recorded the logout before Redis failed, and this instance holds it in process:
    // the token is refused as revoked.
    let me = o.with_bearer("GET", "/v1/me", &access, None).await;
    assert_eq!(
        (me.status, me.body["reason"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("token_revoked"))
    );
    // Revocation status unknown: a token nobody revoked is not honoured (the policy fails
    // closed).
    let unknown = limiter_up
        .login("omar@example.com", "omar's passphrase")
        .await;
    let unknown = unknown.body["access_token"].as_str().expect("token");
    let me = o.with_bearer("GET", "/v1/me", unknown, None).await;
    assert_eq!(
        (me.status, me.body["reason"].as_str()),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Some("revocation_unavailable")
        )
    );
    // The 503 logout still ended the session where it is durable, first: no more refreshes.
    assert_eq!(
        o.refresh_with_cookie(&cookie_token(&login)).await.status,
        StatusCode::UNAUTHORIZED
    );
    // Refresh does not need the deny-list's Redis (its rate limit fails open).
    let again = limiter_up
        .login("omar@example.com", "omar's passphrase")
        .await;
    assert_eq!(
        o.refresh_with_cookie(&cookie_token(&again)).await.status,
        StatusCode::OK
    );
}

/// The same state (store, keys, deny-list) behind a router whose rate limiter is in-process.
fn with_memory_rate_limiter(o: &Origin) -> Origin {
    let mut state = o.state.clone();
    state.rate_limiter =
        std::sync::Arc::new(edgeauth_origin::rate_limit::MemoryRateLimiter::default());
    Origin {
        router: app(state.clone()),
        state,
        data_dir: o.data_dir.clone(),
    }
}

/// A user with a confirmed TOTP factor: the TOTP secret and the ten recovery codes.
async fn enrolled(o: &Origin, email: &str, password: &str) -> (Vec<u8>, Vec<String>) {
    o.register(email, password).await;
    let login = o.login(email, password).await;
    let token = login.body["access_token"]
        .as_str()
        .expect("token")
        .to_string();
    o.enrol_totp(&token, None).await
}

impl Origin {
    /// Enrols and confirms a TOTP factor with `token` (and `proof`, if the session is not
    /// recent): the secret and the ten recovery codes. The confirming code is the current step's.
    async fn enrol_totp(&self, token: &str, proof: Option<Value>) -> (Vec<u8>, Vec<String>) {
        let started = self
            .with_bearer("POST", "/v1/me/mfa/totp", token, proof)
            .await;
        assert_eq!(started.status, StatusCode::OK, "{:?}", started.body);
        let secret = base32::decode(
            base32::Alphabet::Rfc4648 { padding: false },
            started.body["secret"].as_str().expect("secret"),
        )
        .expect("base32");
        let now = u64::try_from(edgeauth_origin::clock::now()).expect("time");
        let code = edgeauth_origin::mfa::code_at(&secret, now);
        let confirmed = self
            .with_bearer(
                "POST",
                "/v1/me/mfa/totp/confirm",
                token,
                Some(json!({"code": code})),
            )
            .await;
        assert_eq!(confirmed.status, StatusCode::OK, "{:?}", confirmed.body);
        let recovery = confirmed.body["recovery_codes"]
            .as_array()
            .expect("codes")
            .iter()
            .map(|c| c.as_str().expect("text").to_string())
            .collect();
        (secret, recovery)
    }
}

/// Every file under `dir`, read whole.
fn files_under(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files_under(&path));
        } else if let Ok(bytes) = std::fs::read(&path) {
            found.push((path, bytes));
        }
    }
    found
}

#[tokio::test]
async fn a_database_dump_does_not_hold_the_totp_secrets() {
    if std::env::var("EDGEAUTH_TEST_DYNAMODB_ENDPOINT").is_ok() {
        // The store is elsewhere; the embedded pass reads its files.
        return;
    }
    let o = origin_with(&[WIDE_BUDGETS]).await;
    let (secret, _) = enrolled(&o, "max@example.com", "max's passphrase").await;
    let forms = [
        base64ct::Base64UrlUnpadded::encode_string(&secret).into_bytes(),
        base64ct::Base64::encode_string(&secret).into_bytes(),
        base32::encode(base32::Alphabet::Rfc4648 { padding: false }, &secret).into_bytes(),
        secret.clone(),
    ];
    let files = files_under(&o.data_dir);
    assert!(
        files.iter().any(|(_, bytes)| bytes.len() > 4096),
        "no database files found"
    );
    for (path, bytes) in &files {
        for form in &forms {
            assert!(
                !bytes.windows(form.len()).any(|w| w == form.as_slice()),
                "{} holds the secret",
                path.display()
            );
        }
    }
    // And the factor still works from what is stored.
    let now = u64::try_from(edgeauth_origin::clock::now()).expect("time");
    let r = o
        .post(
            "/v1/login",
            json!({"email": "max@example.com", "password": "max's passphrase",
                   "otp": edgeauth_origin::mfa::code_at(&secret, now + 30)}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
}

/// Budgets wide enough that only the locks under test refuse.
const WIDE_BUDGETS: (&str, &str) = (
    "EDGEAUTH_RATE_LIMITS",
    r#"{"login":{"count":1000,"per_seconds":60}}"#,
);

/// A code no authenticator shows now: a six-digit code for another secret.
fn wrong_code(secret: &[u8]) -> String {
    let now = u64::try_from(edgeauth_origin::clock::now()).expect("time");
    let right: Vec<String> = (0..3)
        .map(|i| edgeauth_origin::mfa::code_at(secret, now + i * 30 - 30))
        .collect();
    (0..1_000_000u32)
        .map(|n| format!("{n:06}"))
        .find(|c| !right.contains(c))
        .expect("a wrong code")
}

#[tokio::test]
async fn one_time_codes_lock_the_factor_after_a_few_guesses_without_any_captcha() {
    // The default configuration: no CAPTCHA service, so no soft lock of the password.
    let o = origin_with(&[WIDE_BUDGETS]).await;
    let (secret, recovery) = enrolled(&o, "gus@example.com", "gus's passphrase").await;
    let with_code = |otp: String| {
        o.post(
            "/v1/login",
            json!({"email": "gus@example.com", "password": "gus's passphrase", "otp": otp}),
        )
    };
    for _ in 0..5 {
        let r = with_code(wrong_code(&secret)).await;
        assert_eq!(r.body["error"], "invalid_otp", "{:?}", r.body);
    }
    // The sixth code is refused unread, the right one too: the factor is locked for a while.
    let now = u64::try_from(edgeauth_origin::clock::now()).expect("time");
    let right = edgeauth_origin::mfa::code_at(&secret, now + 30);
    let r = with_code(right).await;
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("mfa_locked")),
        "{:?}",
        r.body
    );
    assert_eq!(r.headers[header::RETRY_AFTER], "900");
    // The password login is not locked: a recovery code still lets the owner in.
    let r = o
        .post(
            "/v1/login",
            json!({"email": "gus@example.com", "password": "gus's passphrase",
                   "recovery_code": recovery[0]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let token = r.body["access_token"].as_str().expect("token").to_string();
    let mut names = Vec::new();
    for _ in 0..50 {
        let events = o.with_bearer("GET", "/v1/me/audit", &token, None).await;
        names = events.body["events"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e["event"].as_str())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        if names.iter().any(|n| n == "mfa_locked") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(40)).await;
    }
    assert!(names.iter().any(|n| n == "mfa_locked"), "{names:?}");
}

/// How many of a burst's answers (each an `error` code) say the guess was checked, the others
/// having to say it was refused unread; any third answer fails the test.
async fn checked_in(
    burst: impl Iterator<Item = tokio::task::JoinHandle<String>>,
    checked: &str,
    refused: &str,
) -> usize {
    let mut count = 0;
    for answer in burst {
        match answer.await.expect("joined") {
            code if code == checked => count += 1,
            code if code == refused => {}
            other => panic!("{other}"),
        }
    }
    count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_guesses_is_counted_before_any_is_checked() {
    let o = std::sync::Arc::new(origin_with(&[WIDE_BUDGETS]).await);
    let (secret, _) = enrolled(&o, "ivy@example.com", "ivy's passphrase").await;
    let guess = wrong_code(&secret);
    let burst = (0..24).map(|_| {
        let o = o.clone();
        let guess = guess.clone();
        tokio::spawn(async move {
            o.post(
                "/v1/login",
                json!({"email": "ivy@example.com", "password": "ivy's passphrase", "otp": guess}),
            )
            .await
            .body["error"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
    });
    let checked = checked_in(burst, "invalid_otp", "mfa_locked").await;
    assert_eq!(checked, 5, "codes checked out of a burst of 24");

    // The password's soft lock counts first too.
    let (url, _) = captcha_service().await;
    let captcha = captcha_config(&url);
    let o = std::sync::Arc::new(
        origin_with(&[
            WIDE_BUDGETS,
            ("EDGEAUTH_CAPTCHA", &captcha),
            ("EDGEAUTH_SOFT_LOCK", r#"{"failures":3}"#),
        ])
        .await,
    );
    o.register("jay@example.com", "jay's passphrase").await;
    let burst = (0..16).map(|n| {
        let o = o.clone();
        tokio::spawn(async move {
            o.login("jay@example.com", &format!("guess {n}")).await.body["error"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
    });
    let hashed = checked_in(burst, "invalid_credentials", "captcha_required").await;
    assert_eq!(hashed, 3, "passwords checked out of a burst of 16");
}

#[tokio::test]
async fn the_served_openapi_document_matches_the_router() {
    let o = origin().await;
    let r = o.get("/openapi.json").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["openapi"], "3.1.0");
    let paths = r.body["paths"].as_object().expect("paths");
    // Every documented operation exists: the router answers it with something other than
    // 404 (no such path) or 405 (no such method).
    for (path, operations) in paths {
        for method in operations.as_object().expect("operations").keys() {
            let request = Request::builder()
                .method(method.to_uppercase().as_str())
                .uri(path)
                .body(Body::empty())
                .expect("request");
            let status = o.send(request).await.status;
            assert!(
                status != StatusCode::NOT_FOUND && status != StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path} is documented but answers {status}"
            );
        }
    }
    // And every route is documented.
    for route in [
        "/v1/register",
        "/v1/login",
        "/v1/token/refresh",
        "/v1/logout",
        "/v1/revocations",
        "/v1/me",
        "/v1/email/verify",
        "/v1/email/verify/resend",
        "/v1/password/forgot",
        "/v1/password/reset",
        "/v1/me/password",
        "/v1/me/export",
        "/v1/me/mfa/totp",
        "/v1/me/mfa/recovery-codes",
        "/.well-known/jwks.json",
        "/healthz",
        "/readyz",
    ] {
        assert!(paths.contains_key(route), "{route} is not documented");
    }
    assert!(paths["/v1/me"].get("patch").is_some());
    assert!(paths["/v1/me"].get("delete").is_some());
    assert!(paths["/v1/me/mfa/totp"].get("delete").is_some());
}

#[tokio::test]
async fn profiles_are_cached_aside_and_invalidated_by_patch() {
    let o = origin().await;
    o.register("pia@example.com", "pia's passphrase").await;
    let token = o.login("pia@example.com", "pia's passphrase").await.body["access_token"]
        .as_str()
        .expect("token")
        .to_string();
    let me = o.with_bearer("GET", "/v1/me", &token, None).await;
    let user_id = edgeauth_origin::store::UserId(
        uuid::Uuid::parse_str(me.body["user_id"].as_str().expect("id")).expect("uuid"),
    );
    // Changed behind the API's back: the cache still answers with what it holds.
    o.state
        .users
        .update_display_name(user_id, Some("Behind"))
        .await
        .expect("store");
    let cached = o.with_bearer("GET", "/v1/me", &token, None).await;
    assert_eq!(
        cached.body["display_name"],
        Value::Null,
        "served from the cache"
    );
    // A PATCH through the API invalidates, so the next read is fresh.
    let r = o.patch_me(&token, json!({"display_name": "Pia"})).await;
    assert_eq!(r.body["display_name"], "Pia");
    let fresh = o.with_bearer("GET", "/v1/me", &token, None).await;
    assert_eq!(fresh.body["display_name"], "Pia");
}

#[tokio::test]
async fn a_dead_profile_cache_never_fails_a_request() {
    let o = origin_with(&[("EDGEAUTH_REDIS_CACHE_URL", "redis://127.0.0.1:1")]).await;
    o.register("quinn@example.com", "quinn's passphrase").await;
    let token = o
        .login("quinn@example.com", "quinn's passphrase")
        .await
        .body["access_token"]
        .as_str()
        .expect("token")
        .to_string();
    assert_eq!(
        o.with_bearer("GET", "/v1/me", &token, None).await.status,
        StatusCode::OK
    );
    let r = o.patch_me(&token, json!({"display_name": "Quinn"})).await;
    assert_eq!(
        (r.status, r.body["display_name"].as_str()),
        (StatusCode::OK, Some("Quinn"))
    );
    let again = o.with_bearer("GET", "/v1/me", &token, None).await;
    assert_eq!(again.body["display_name"], "Quinn");
}

#[tokio::test]
async fn logout_is_published_in_the_signed_revocation_feed() {
    let o = origin().await;
    o.register("rae@example.com", "rae's passphrase").await;
    let access = o.login("rae@example.com", "rae's passphrase").await.body["access_token"]
        .as_str()
        .expect("token")
        .to_string();
    assert_eq!(o.get("/v1/revocations").await.body["entries"], json!([]));
    assert_eq!(
        o.with_bearer("POST", "/v1/logout", &access, None)
            .await
            .status,
        StatusCode::NO_CONTENT
    );

    let feed = o.get("/v1/revocations?after=0").await;
    assert_eq!(feed.status, StatusCode::OK, "{}", feed.body);
    assert_eq!(feed.body["next"], 1);
    let entry = &feed.body["entries"][0];
    assert_eq!(entry["seq"], 1);
    let jws = entry["jws"].as_str().expect("jws");

    // The edge checks it with the keys and policy it already holds for access tokens.
    let jwks = o.get("/.well-known/jwks.json").await.body.to_string();
    let (ring, _) = KeyRing::from_jwks(jwks.as_bytes(), &edge_policy()).expect("ring");
    let now = edgeauth_origin::clock::now();
    let revocation = edgeauth_core::verify_revocation(jws, now, &ring, &edge_policy())
        .expect("signed by the origin");
    let revoked =
        edgeauth_core::check_signature(&access, &ring, &edge_policy()).expect("access token");
    let edgeauth_core::Revocation::Session { sid, expires_at } = revocation else {
        panic!("a logout revokes its session: {revocation:?}");
    };
    assert_eq!(Some(sid), revoked.claims.sid);
    assert!(revoked.claims.exp.is_some_and(|exp| exp <= expires_at));
    assert_eq!(entry["expires_at"], expires_at);
    // Explicitly typed: an edge never takes a feed entry for an access token.
    let refused = edgeauth_core::check_signature(jws, &ring, &edge_policy())
        .expect_err("not an access token");
    assert_eq!(
        refused.reason,
        edgeauth_core::DenyReason::TokenTypeNotAllowed
    );
}

/// The `seq` of every entry of a feed page, in the order served.
fn feed_seqs(page: &Reply) -> Vec<u64> {
    page.body["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["seq"].as_u64().expect("seq"))
        .collect()
}

#[tokio::test]
async fn the_feed_has_no_gaps_under_concurrent_logouts() {
    let o = std::sync::Arc::new(origin().await);
    o.register("sam@example.com", "sam's passphrase").await;
    let mut tokens = Vec::new();
    for _ in 0..6 {
        let r = o.login("sam@example.com", "sam's passphrase").await;
        tokens.push(r.body["access_token"].as_str().expect("token").to_string());
    }
    let logouts = tokens.into_iter().map(|t| {
        let o = o.clone();
        tokio::spawn(async move { o.with_bearer("POST", "/v1/logout", &t, None).await.status })
    });
    for logout in logouts {
        assert_eq!(logout.await.expect("task"), StatusCode::NO_CONTENT);
    }
    let all = o.get("/v1/revocations").await;
    let seqs: Vec<u64> = feed_seqs(&all);
    assert_eq!(seqs, [1, 2, 3, 4, 5, 6]);
    // Reading from a cursor, a page at a time.
    let page = o.get("/v1/revocations?after=2&limit=3").await;
    let seqs: Vec<u64> = feed_seqs(&page);
    assert_eq!((seqs, page.body["next"].as_u64()), (vec![3, 4, 5], Some(5)));
    for bad in [
        "/v1/revocations?limit=0",
        "/v1/revocations?after=-1",
        "/v1/revocations?after=9223372036854775808",
        "/v1/revocations?after=18446744073709551615",
        "/v1/revocations?after=18446744073709551616",
        "/v1/revocations?cursor=3",
    ] {
        assert_eq!(o.get(bad).await.status, StatusCode::BAD_REQUEST, "{bad}");
    }
}

#[tokio::test]
async fn the_feed_is_served_from_memory_with_an_etag_only_its_head_matches() {
    let o = origin().await;
    o.register("tia@example.com", "tia's passphrase").await;
    let access = o.login("tia@example.com", "tia's passphrase").await.body["access_token"]
        .as_str()
        .expect("token")
        .to_string();
    let poll = |after: u64, tag: Option<&str>| {
        let mut request = Request::get(format!("/v1/revocations?after={after}"));
        if let Some(tag) = tag {
            request = request.header(header::IF_NONE_MATCH, tag);
        }
        o.send(request.body(Body::empty()).expect("request"))
    };
    // The instance's tail is read at start; until then the store answers, without a tag.
    let started = std::time::Instant::now();
    while !poll(0, None).await.headers.contains_key(header::ETAG) {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "no tail"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let empty = poll(0, None).await;
    assert_eq!(empty.headers[header::ETAG], "\"0\"");
    assert_eq!(
        poll(0, Some("\"0\"")).await.status,
        StatusCode::NOT_MODIFIED
    );
    assert_eq!(
        o.with_bearer("POST", "/v1/logout", &access, None)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    // The instance that appended it serves it at once, under a new tag.
    let fresh = poll(0, Some("\"0\"")).await;
    assert_eq!(fresh.status, StatusCode::OK);
    assert_eq!(fresh.headers[header::ETAG], "\"1\"");
    assert_eq!(fresh.body["entries"][0]["seq"], 1);
    assert_eq!(fresh.body["next"], 1);
    assert_eq!(
        poll(1, Some("\"1\"")).await.status,
        StatusCode::NOT_MODIFIED
    );
    assert_eq!(
        poll(1, Some("W/\"1\", \"7\"")).await.status,
        StatusCode::NOT_MODIFIED
    );
    // A tag names the head, not a page: a cursor behind it gets the entries whatever the tag
    // says, and a tag the origin never gave gets a full answer.
    let behind = poll(0, Some("\"1\"")).await;
    assert_eq!(behind.status, StatusCode::OK);
    assert_eq!(behind.body["entries"][0]["seq"], 1);
    for forged in ["\"2\"", "\"1", "1"] {
        let reply = poll(1, Some(forged)).await;
        assert_eq!(reply.status, StatusCode::OK, "{forged}");
        assert_eq!(reply.body, json!({"entries": [], "next": 1}));
    }
}

/// Instances racing for the feed's next number each get one, or a 503-class error after losing
/// every attempt: never the same number, never an internal error.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_feed_appends_get_distinct_numbers_or_unavailable() {
    let o = origin().await;
    let make = |seq: u64| -> Result<String, StoreError> { Ok(format!("entry-{seq}")) };
    let appends = (0..48).map(|_| {
        let feed = o.state.feed.clone();
        tokio::spawn(async move { feed.append(&make, i64::MAX).await })
    });
    let mut seqs = Vec::new();
    for append in appends {
        match append.await.expect("joined") {
            Ok(entry) => seqs.push(entry.seq),
            Err(StoreError::Unavailable(_)) => {}
            Err(other) => panic!("{other:?}"),
        }
    }
    let count = seqs.len();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), count, "two appends got one number");
    assert!(count > 0);
}

/// A fleet raising `feed_partitions` one instance at a time: an instance still on one key and one
/// already on four append to the same feed in turn, and each reads every entry, in order. Before
/// the counter recorded the count, the one-key instance read `revocations` alone, and the edges
/// polling it moved past every entry the other had written under another key.
#[tokio::test]
async fn instances_configured_with_different_feed_partitions_each_read_the_whole_feed() {
    if std::env::var("EDGEAUTH_TEST_DYNAMODB_ENDPOINT").is_err() {
        // The spread over partition keys is DynamoDB's layout; the embedded store has one list.
        return;
    }
    let dir = fresh_dir();
    let one = start(dir.clone(), &[("EDGEAUTH_FEED_PARTITIONS", "1")]).await;
    let four = start(dir, &[("EDGEAUTH_FEED_PARTITIONS", "4")]).await;
    let make = |seq: u64| -> Result<String, StoreError> { Ok(format!("entry-{seq}")) };
    let mut appended = Vec::new();
    for (by, count) in [(&one, 3), (&four, 10), (&one, 5)] {
        for _ in 0..count {
            let entry = by.state.feed.append(&make, i64::MAX).await.expect("append");
            appended.push(entry.seq);
        }
    }
    for (name, o) in [("one key", &one), ("four keys", &four)] {
        let (mut cursor, mut seen) = (0, Vec::new());
        loop {
            let now = edgeauth_origin::clock::now();
            let (page, next) = o.state.feed.read_after(cursor, 3, now).await.expect("read");
            if page.is_empty() && next == cursor {
                break;
            }
            seen.extend(page.iter().map(|e| e.seq));
            cursor = next;
        }
        assert_eq!(seen, appended, "read by the instance on {name}");
    }
}

/// The feed spread over four partition keys, appends racing as from several instances while a
/// reader follows in small pages: the reader gets every entry once, in order, and the cursor
/// never passes one that commits later (read over several keys, a page that served past what it
/// knew of one key would skip that key's next entries for good).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_feed_over_partitions_is_read_whole_and_in_order_while_appends_race() {
    let o = origin_with(&[("EDGEAUTH_FEED_PARTITIONS", "4")]).await;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (feed, done) = (o.state.feed.clone(), done.clone());
        tokio::spawn(async move {
            let (mut cursor, mut seen) = (0, Vec::new());
            loop {
                let finished = done.load(std::sync::atomic::Ordering::SeqCst);
                let now = edgeauth_origin::clock::now();
                let (page, next) = feed.read_after(cursor, 7, now).await.expect("read");
                assert!(
                    next >= cursor,
                    "the cursor went back from {cursor} to {next}"
                );
                let read = page.len();
                for entry in page {
                    assert!(
                        entry.seq > cursor && entry.seq <= next,
                        "{} at {cursor}",
                        entry.seq
                    );
                    assert!(seen.last().is_none_or(|&last| entry.seq > last));
                    seen.push(entry.seq);
                }
                cursor = next;
                if finished && read == 0 {
                    return seen;
                }
            }
        })
    };
    let make = |seq: u64| -> Result<String, StoreError> { Ok(format!("entry-{seq}")) };
    let appends: Vec<_> = (0..40)
        .map(|_| {
            let feed = o.state.feed.clone();
            tokio::spawn(async move { feed.append(&make, i64::MAX).await })
        })
        .collect();
    let mut appended = Vec::new();
    for append in appends {
        match append.await.expect("joined") {
            Ok(entry) => appended.push(entry.seq),
            Err(StoreError::Unavailable(_)) => {}
            Err(other) => panic!("{other:?}"),
        }
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    appended.sort_unstable();
    assert!(appended.len() > 10, "{appended:?}");
    assert_eq!(reader.await.expect("the reader ran"), appended);
    // Edges read the same through the endpoint, from the instance's tail.
    let started = std::time::Instant::now();
    loop {
        let page = o.get("/v1/revocations?after=0&limit=1000").await;
        let served: Vec<u64> = feed_seqs(&page);
        if served == appended {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "served {served:?}, appended {appended:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn imported_bcrypt_accounts_log_in_and_are_upgraded_to_argon2id() {
    let o = origin().await;
    // An account as the previous Node.js system left it: a bcrypt hash.
    let user = edgeauth_origin::store::User {
        id: edgeauth_origin::store::UserId(uuid::Uuid::new_v4()),
        email: "tess@example.com".into(),
        password_hash: bcrypt::hash("tess's old passphrase", 4).expect("bcrypt"),
        scopes: vec!["profile".into()],
        display_name: None,
        created_at: 0,
        totp: None,
        sessions_revoked_at: None,
        email_verified: false,
    };
    o.state
        .users
        .create_user(&user, None)
        .await
        .expect("imported");
    assert_eq!(
        o.login("tess@example.com", "wrong passphrase").await.status,
        StatusCode::UNAUTHORIZED
    );
    let first = o.login("tess@example.com", "tess's old passphrase").await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    let stored = o
        .state
        .users
        .get_user(user.id)
        .await
        .expect("store")
        .expect("user");
    assert!(
        stored.password_hash.starts_with("$argon2id$"),
        "{}",
        stored.password_hash
    );
    assert_eq!(
        o.login("tess@example.com", "tess's old passphrase")
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_rotation_is_published_before_it_signs_and_audited() {
    // Keys reach the edges within 1 s (JWKS max-age) + 1 s (reread); a 5 s window leaves room
    // for a loaded machine.
    let keys = signing_keys(json!({"propagation_seconds": 5, "refresh_seconds": 1}));
    let o = start(
        fresh_dir(),
        &[
            ("EDGEAUTH_JWKS_MAX_AGE_SECONDS", "1"),
            ("EDGEAUTH_SIGNING_KEYS", keys.as_str()),
        ],
    )
    .await;
    let kid_of = |token: &str| {
        use base64ct::{Base64UrlUnpadded, Encoding};
        let header =
            Base64UrlUnpadded::decode_vec(token.split('.').next().unwrap_or("")).expect("b64");
        serde_json::from_slice::<Value>(&header).expect("json")["kid"].clone()
    };
    o.register("rosa@example.com", "rosa's passphrase").await;
    let before = o.login("rosa@example.com", "rosa's passphrase").await;
    let old_kid = kid_of(before.body["access_token"].as_str().expect("token"));

    let added = o
        .state
        .keys
        .rotate(edgeauth_origin::clock::now())
        .await
        .expect("rotated");
    // The background reread publishes it, after the current key, well before it signs.
    let mut kids = Vec::new();
    for _ in 0..30 {
        let jwks = o.get("/.well-known/jwks.json").await.body;
        kids = jwks["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .map(|k| k["kid"].clone())
            .collect();
        if kids.len() == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        edgeauth_origin::clock::now() < added.signs_from,
        "published too late"
    );
    assert_eq!(
        kids,
        [old_kid.clone(), json!(added.kid)],
        "current first, then next"
    );
    let during = o.login("rosa@example.com", "rosa's passphrase").await;
    if edgeauth_origin::clock::now() < added.signs_from {
        assert_eq!(
            kid_of(during.body["access_token"].as_str().expect("token")),
            old_kid
        );
    }

    while edgeauth_origin::clock::now() < added.signs_from {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let after = o.login("rosa@example.com", "rosa's passphrase").await;
    let token = after.body["access_token"].as_str().expect("token");
    assert_eq!(kid_of(token), json!(added.kid));
    // The origin's own endpoints take tokens of both keys.
    for token in [&before, &after] {
        let token = token.body["access_token"].as_str().expect("token");
        let me = o.with_bearer("GET", "/v1/me", token, None).await;
        assert_eq!(me.status, StatusCode::OK);
    }
    let events: Vec<String> = o
        .state
        .audit
        .for_user("system:signing-keys", 10)
        .await
        .expect("audit")
        .into_iter()
        .map(|e| e.event)
        .collect();
    assert!(
        events.contains(&"signing_key_rotated".to_string()),
        "{events:?}"
    );
    assert!(
        events.contains(&"signing_key_created".to_string()),
        "{events:?}"
    );
}

#[tokio::test]
async fn logout_pushes_the_signed_entry_to_every_edge() {
    use axum::{body::Bytes, http::HeaderMap, routing::post};
    // Two edges that record what they are sent; the second answers 500 and must not fail logout.
    let (sent, mut received) = tokio::sync::mpsc::unbounded_channel::<(String, String)>();
    let mut urls = Vec::new();
    for status in [StatusCode::OK, StatusCode::INTERNAL_SERVER_ERROR] {
        let sent = sent.clone();
        let edge = Router::new().route(
            "/revocations",
            post(move |headers: HeaderMap, body: Bytes| async move {
                let content_type = headers[header::CONTENT_TYPE]
                    .to_str()
                    .unwrap_or("")
                    .to_string();
                let _ = sent.send((content_type, String::from_utf8_lossy(&body).into_owned()));
                status
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        urls.push(format!(
            "\"http://{}/revocations\"",
            listener.local_addr().expect("address")
        ));
        tokio::spawn(async move { axum::serve(listener, edge).await });
    }
    let urls = format!("[{}]", urls.join(","));
    let o = origin_with(&[("EDGEAUTH_EDGE_PUSH_URLS", urls.as_str())]).await;
    o.register("una@example.com", "una's passphrase").await;
    let access = o.login("una@example.com", "una's passphrase").await.body["access_token"]
        .as_str()
        .expect("token")
        .to_string();
    let r = o.with_bearer("POST", "/v1/logout", &access, None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);

    let jwks = o.get("/.well-known/jwks.json").await.body.to_string();
    let (ring, _) = KeyRing::from_jwks(jwks.as_bytes(), &edge_policy()).expect("ring");
    let revoked = edgeauth_core::check_signature(&access, &ring, &edge_policy()).expect("token");
    for _ in 0..2 {
        let (content_type, body) =
            tokio::time::timeout(std::time::Duration::from_secs(5), received.recv())
                .await
                .expect("pushed within 5 s")
                .expect("edge alive");
        assert_eq!(content_type, "application/jose");
        let revocation = edgeauth_core::verify_revocation(
            &body,
            edgeauth_origin::clock::now(),
            &ring,
            &edge_policy(),
        )
        .expect("a signed revocation");
        assert!(
            matches!(&revocation, edgeauth_core::Revocation::Session { sid, .. } if Some(sid) == revoked.claims.sid.as_ref()),
            "{revocation:?}"
        );
    }
    // The pushed entry is the feed entry.
    let feed = o.get("/v1/revocations").await;
    assert_eq!(feed.body["entries"].as_array().map(Vec::len), Some(1));
}

#[test]
fn push_urls_must_be_http_urls() {
    let dir = fresh_dir();
    for bad in [
        r#"["ftp://edge.example/x"]"#,
        r#"["not a url"]"#,
        r#""http://one.example""#,
    ] {
        let env = test_env(&dir, &[("EDGEAUTH_EDGE_PUSH_URLS", bad)]);
        let config = Config::from_sources(None, |k| env.get(k).cloned());
        let refused = match config {
            Err(_) => true,
            Ok(config) => {
                edgeauth_origin::edge_push::EdgePush::new(&config.edge_push_urls).is_err()
            }
        };
        assert!(refused, "{bad} accepted");
    }
}

/// A request from a client behind the one trusted proxy of these tests' configuration.
fn from_client(path: &str, body: Value, forwarded_for: &str) -> Request<Body> {
    Request::post(path)
        .header(header::CONTENT_TYPE, "application/json")
        .header("x-forwarded-for", forwarded_for)
        .body(Body::from(body.to_string()))
        .expect("request")
}

const BEHIND_ONE_PROXY: (&str, &str) = (
    "EDGEAUTH_CLIENT_IP",
    r#"{"source":"x_forwarded_for","trusted_proxies":1}"#,
);

#[tokio::test]
async fn logins_past_the_budget_are_refused_with_retry_after() {
    let o = origin_with(&[
        BEHIND_ONE_PROXY,
        (
            "EDGEAUTH_RATE_LIMITS",
            r#"{"login":{"count":3,"per_seconds":60}}"#,
        ),
    ])
    .await;
    let guess =
        |n: u32| json!({"email": "victim@example.com", "password": format!("guess number {n}")});
    for n in 0..3 {
        let r = o
            .send(from_client(
                "/v1/login",
                guess(n),
                "198.51.100.9, 203.0.113.7",
            ))
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    let r = o
        .send(from_client(
            "/v1/login",
            guess(3),
            "198.51.100.9, 203.0.113.7",
        ))
        .await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.body["error"], "rate_limited");
    // Three a minute: the next one is 20 s away.
    let retry_after: u64 = r.headers[header::RETRY_AFTER]
        .to_str()
        .expect("text")
        .parse()
        .expect("seconds");
    assert!((19..=20).contains(&retry_after), "{retry_after}");

    // What the client writes left of the trusted proxy's entry buys nothing.
    let r = o
        .send(from_client("/v1/login", guess(4), "10.9.9.9, 203.0.113.7"))
        .await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    // Another client, and another endpoint of the same client, have budgets of their own.
    let r = o
        .send(from_client("/v1/login", guess(5), "203.0.113.8"))
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = o
        .send(from_client(
            "/v1/register",
            json!({"email": "new@example.com", "password": "a fine passphrase"}),
            "203.0.113.7",
        ))
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
}

#[tokio::test]
async fn register_and_refresh_have_budgets_of_their_own() {
    let o = origin_with(&[
        BEHIND_ONE_PROXY,
        (
            "EDGEAUTH_RATE_LIMITS",
            r#"{"register":{"count":2,"per_seconds":3600},"refresh":{"count":1,"per_seconds":60}}"#,
        ),
    ])
    .await;
    for (n, expected) in [
        (0, StatusCode::CREATED),
        (1, StatusCode::CREATED),
        (2, StatusCode::TOO_MANY_REQUESTS),
    ] {
        let r = o
            .send(from_client(
                "/v1/register",
                json!({"email": format!("user{n}@example.com"), "password": "a fine passphrase"}),
                "203.0.113.7",
            ))
            .await;
        assert_eq!(r.status, expected, "registration {n}");
    }
    let refresh = json!({"refresh_token": "not a token"});
    let r = o
        .send(from_client(
            "/v1/token/refresh",
            refresh.clone(),
            "203.0.113.7",
        ))
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = o
        .send(from_client("/v1/token/refresh", refresh, "203.0.113.7"))
        .await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers.contains_key(header::RETRY_AFTER));
}

#[tokio::test]
async fn without_a_trusted_proxy_the_peer_address_counts_and_headers_do_not() {
    let o = origin_with(&[(
        "EDGEAUTH_RATE_LIMITS",
        r#"{"login":{"count":1,"per_seconds":60}}"#,
    )])
    .await;
    let peer = |last: u8| {
        o.router
            .clone()
            .layer(axum::extract::connect_info::MockConnectInfo(
                std::net::SocketAddr::from(([192, 0, 2, last], 40_000)),
            ))
    };
    let login = |forwarded_for: &str| {
        from_client(
            "/v1/login",
            json!({"email": "victim@example.com", "password": "a wrong guess"}),
            forwarded_for,
        )
    };
    let status = |router: Router, request: Request<Body>| async move {
        router.oneshot(request).await.expect("infallible").status()
    };
    assert_eq!(
        status(peer(1), login("203.0.113.1")).await,
        StatusCode::UNAUTHORIZED
    );
    // A new X-Forwarded-For value each time changes nothing: the header is not trusted.
    assert_eq!(
        status(peer(1), login("203.0.113.2")).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        status(peer(2), login("203.0.113.2")).await,
        StatusCode::UNAUTHORIZED
    );
}

/// A stand-in for Turnstile's siteverify (an outside SaaS): `solved` is the one good token for
/// the secret `test-secret`. Returns its URL and every request it received.
async fn captcha_service() -> (String, std::sync::Arc<std::sync::Mutex<Vec<Value>>>) {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    let router = Router::new().route(
        "/siteverify",
        axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
            let log = log.clone();
            async move {
                let success = body["secret"] == "test-secret" && body["response"] == "solved";
                log.lock().expect("not poisoned").push(body);
                axum::Json(json!({"success": success, "error-codes": []}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, router).await });
    (format!("http://{address}/siteverify"), seen)
}

fn captcha_config(verify_url: &str) -> String {
    json!({"verify_url": verify_url, "secret": "test-secret"}).to_string()
}

#[tokio::test]
async fn failed_logins_soft_lock_an_email_until_a_captcha_is_solved() {
    let (url, seen) = captcha_service().await;
    let captcha = captcha_config(&url);
    let o = origin_with(&[
        BEHIND_ONE_PROXY,
        ("EDGEAUTH_CAPTCHA", &captcha),
        ("EDGEAUTH_SOFT_LOCK", r#"{"failures":3}"#),
    ])
    .await;
    o.register("quinn@example.com", "quinn's passphrase").await;
    let login = |password: &str, captcha: Option<&str>| {
        let mut body = json!({"email": "quinn@example.com", "password": password});
        if let Some(token) = captcha {
            body["captcha_token"] = json!(token);
        }
        from_client("/v1/login", body, "203.0.113.7")
    };
    for n in 0..3 {
        let r = o.send(login(&format!("guess number {n}"), None)).await;
        assert_eq!(r.body["error"], "invalid_credentials");
    }
    // Locked: even the right password needs a solved CAPTCHA now, and a bad token is no help.
    let r = o.send(login("quinn's passphrase", None)).await;
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("captcha_required"))
    );
    let r = o.send(login("quinn's passphrase", Some("made up"))).await;
    assert_eq!(r.body["error"], "captcha_required");
    let r = o.send(login("quinn's passphrase", Some("solved"))).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    // The service was asked with the site's secret and the client's address.
    let last = seen
        .lock()
        .expect("not poisoned")
        .last()
        .cloned()
        .expect("a call");
    assert_eq!(
        (last["secret"].as_str(), last["remoteip"].as_str()),
        (Some("test-secret"), Some("203.0.113.7"))
    );
    // A successful login clears the count: no CAPTCHA next time.
    let r = o.send(login("quinn's passphrase", None)).await;
    assert_eq!(r.status, StatusCode::OK);
    // The lock and both CAPTCHA answers are in the user's security events.
    let token = r.body["access_token"].as_str().expect("token").to_string();
    let mut names: Vec<String> = Vec::new();
    for _ in 0..50 {
        let events = o.with_bearer("GET", "/v1/me/audit", &token, None).await;
        names = events.body["events"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e["event"].as_str())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        if names.len() >= 8 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(40)).await;
    }
    for expected in [
        "soft_locked",
        "captcha_failed",
        "captcha_solved",
        "login_failed",
        "login",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} in {names:?}"
        );
    }

    // An email no account has locks the same way, so the answers never tell which exist;
    // another email is untouched.
    let stranger = |email: &str| {
        from_client(
            "/v1/login",
            json!({"email": email, "password": "some guess"}),
            "198.51.100.4",
        )
    };
    for _ in 0..3 {
        let r = o.send(stranger("nobody@example.com")).await;
        assert_eq!(r.body["error"], "invalid_credentials");
    }
    let r = o.send(stranger("nobody@example.com")).await;
    assert_eq!(r.body["error"], "captcha_required");
    let r = o.send(stranger("somebody@example.com")).await;
    assert_eq!(r.body["error"], "invalid_credentials");
}

#[tokio::test]
async fn a_soft_lock_needs_a_captcha_service_to_exist() {
    // Without one there would be nothing to unlock with: no soft lock, only the rate limits.
    let o = origin_with(&[("EDGEAUTH_SOFT_LOCK", r#"{"failures":2}"#)]).await;
    o.register("ruth@example.com", "ruth's passphrase").await;
    for _ in 0..4 {
        let r = o.login("ruth@example.com", "a wrong guess").await;
        assert_eq!(r.body["error"], "invalid_credentials");
    }
    let r = o.login("ruth@example.com", "ruth's passphrase").await;
    assert_eq!(r.status, StatusCode::OK);

    // A CAPTCHA service that cannot be reached is the origin's problem, not the user's: 503.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("address")
    };
    let captcha = captcha_config(&format!("http://{closed}/siteverify"));
    let o = origin_with(&[
        ("EDGEAUTH_CAPTCHA", &captcha),
        ("EDGEAUTH_SOFT_LOCK", r#"{"failures":1}"#),
    ])
    .await;
    o.login("sam@example.com", "a wrong guess").await;
    let r = o
        .post(
            "/v1/login",
            json!({"email": "sam@example.com", "password": "a wrong guess", "captcha_token": "solved"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.headers.contains_key(header::RETRY_AFTER));
}

#[tokio::test]
async fn security_events_are_recorded_and_readable_by_their_user() {
    let o = origin_with(&[BEHIND_ONE_PROXY]).await;
    o.register("tara@example.com", "tara's passphrase").await;
    let login = |password: &str, request_id: &str| {
        let mut request = from_client(
            "/v1/login",
            json!({"email": "tara@example.com", "password": password, "refresh_token_in_body": true}),
            "203.0.113.7",
        );
        request
            .headers_mut()
            .insert("x-request-id", request_id.parse().expect("header"));
        request
    };
    let r = o.send(login("not tara's passphrase", "req-failed-1")).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // The caller's request id comes back, and a made-up one with spaces is replaced.
    assert_eq!(r.headers["x-request-id"], "req-failed-1");
    let r = o.send(login("tara's passphrase", "req-login-2")).await;
    assert_eq!(r.status, StatusCode::OK);
    let token = r.body["access_token"].as_str().expect("token").to_string();
    let mut logout = Request::post("/v1/logout")
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header("x-forwarded-for", "198.51.100.3")
        .body(Body::empty())
        .expect("request");
    logout
        .headers_mut()
        .insert("x-request-id", "not a plain id".parse().expect("header"));
    let r = o.send(logout).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let generated = r.headers["x-request-id"]
        .to_str()
        .expect("text")
        .to_string();
    assert_ne!(generated, "not a plain id");

    // Read back with a fresh token (the first one is revoked); stored after the response, so
    // poll briefly.
    let r = o.send(login("tara's passphrase", "req-login-3")).await;
    let token = r.body["access_token"].as_str().expect("token").to_string();
    let mut events = Vec::new();
    for _ in 0..50 {
        let r = o
            .send(
                Request::get("/v1/me/audit")
                    .header(header::AUTHORIZATION, format!("Bearer {token}"))
                    .body(Body::empty())
                    .expect("request"),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK);
        events = r.body["events"].as_array().cloned().unwrap_or_default();
        if events.len() >= 5 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(40)).await;
    }
    let seen: Vec<(&str, &str, &str)> = events
        .iter()
        .map(|e| {
            (
                e["event"].as_str().unwrap_or(""),
                e["request_id"].as_str().unwrap_or(""),
                e["client_ip"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        seen[..seen.len().min(4)],
        [
            ("login", "req-login-3", "203.0.113.7"),
            ("logout", generated.as_str(), "198.51.100.3"),
            ("login", "req-login-2", "203.0.113.7"),
            ("login_failed", "req-failed-1", "203.0.113.7"),
        ],
        "newest first"
    );
    // The oldest: the account's creation (no proxy header, so no address).
    assert_eq!(
        seen.get(4).map(|(event, _, ip)| (*event, *ip)),
        Some(("register", ""))
    );
    assert_eq!(seen.len(), 5, "{seen:?}");
    // Another user sees none of them.
    o.register("uma@example.com", "uma's passphrase").await;
    let other = o.login("uma@example.com", "uma's passphrase").await;
    let other_token = other.body["access_token"]
        .as_str()
        .expect("token")
        .to_string();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let r = o
        .send(
            Request::get("/v1/me/audit")
                .header(header::AUTHORIZATION, format!("Bearer {other_token}"))
                .body(Body::empty())
                .expect("request"),
        )
        .await;
    let theirs = r.body["events"].as_array().cloned().unwrap_or_default();
    assert!(
        theirs
            .iter()
            .all(|e| e["event"] == "login" || e["event"] == "register"),
        "{theirs:?}"
    );
}

/// A token's claims, read without verification (the test trusts its own origin).
fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("a compact JWS");
    let bytes = base64ct::Base64UrlUnpadded::decode_vec(payload).expect("base64url");
    serde_json::from_slice(&bytes).expect("JSON claims")
}

#[tokio::test]
async fn admin_scopes_need_a_second_factor_and_codes_work_once() {
    let o = origin().await;
    o.register("vic@example.com", "vic's passphrase").await;
    let user = o
        .state
        .users
        .find_by_email("vic@example.com")
        .await
        .expect("store")
        .expect("account");
    o.state
        .users
        .set_scopes(user.id, &["profile".to_string(), "admin".to_string()])
        .await
        .expect("scopes");
    let login = |extra: Value| {
        let mut body = json!({"email": "vic@example.com", "password": "vic's passphrase", "refresh_token_in_body": true});
        for (k, v) in extra.as_object().expect("object") {
            body[k] = v.clone();
        }
        o.post("/v1/login", body)
    };

    // No second factor yet: a token, without the admin scope.
    let r = login(json!({})).await;
    let token = r.body["access_token"].as_str().expect("token").to_string();
    let claims = claims_of(&token);
    assert_eq!(
        (claims["scope"].as_str(), claims["amr"].clone()),
        (Some("profile"), json!(["pwd"]))
    );

    // Enrolment: a secret as a key URI, confirmed by a first code; ten recovery codes.
    let started = o.with_bearer("POST", "/v1/me/mfa/totp", &token, None).await;
    assert_eq!(started.status, StatusCode::OK);
    let uri = started.body["otpauth_uri"].as_str().expect("uri");
    assert!(uri.starts_with("otpauth://totp/"), "{uri}");
    let secret = base32::decode(
        base32::Alphabet::Rfc4648 { padding: false },
        started.body["secret"].as_str().expect("secret"),
    )
    .expect("base32");
    let now = u64::try_from(edgeauth_origin::clock::now()).expect("time");
    let code = |offset: u64| edgeauth_origin::mfa::code_at(&secret, now + offset);
    let confirmed = o
        .with_bearer(
            "POST",
            "/v1/me/mfa/totp/confirm",
            &token,
            Some(json!({"code": code(0)})),
        )
        .await;
    assert_eq!(confirmed.status, StatusCode::OK, "{:?}", confirmed.body);
    let recovery: Vec<String> = confirmed.body["recovery_codes"]
        .as_array()
        .expect("codes")
        .iter()
        .map(|c| c.as_str().expect("text").to_string())
        .collect();
    assert_eq!(recovery.len(), 10);
    // A confirmed factor is not replaced by whoever holds an access token.
    let again = o.with_bearer("POST", "/v1/me/mfa/totp", &token, None).await;
    assert_eq!(again.status, StatusCode::CONFLICT);

    // Login now needs the second factor; a wrong one is refused.
    let r = login(json!({})).await;
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("mfa_required"))
    );
    let r = login(json!({"otp": "000000"})).await;
    assert_eq!(r.body["error"], "invalid_otp");
    // The code of the next step (within the one-step skew) passes: admin scope, amr otp.
    let r = login(json!({"otp": code(30)})).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let claims = claims_of(r.body["access_token"].as_str().expect("token"));
    assert_eq!(claims["scope"], "profile admin");
    assert_eq!(claims["amr"], json!(["pwd", "otp"]));
    // The session keeps its second factor across refreshes.
    let refreshed = o
        .post(
            "/v1/token/refresh",
            json!({"refresh_token": r.body["refresh_token"]}),
        )
        .await;
    assert_eq!(refreshed.status, StatusCode::OK, "{:?}", refreshed.body);
    let claims = claims_of(refreshed.body["access_token"].as_str().expect("token"));
    assert_eq!(
        (claims["scope"].as_str(), claims["amr"].clone()),
        (Some("profile admin"), json!(["pwd", "otp"]))
    );
    // The same code again is a replay, and so is the confirming one.
    for replay in [code(30), code(0)] {
        let r = login(json!({ "otp": replay })).await;
        assert_eq!(r.body["error"], "invalid_otp");
    }
    // A recovery code works once, in any case and with spaces.
    let spaced = recovery[0].to_uppercase().replace('-', " ");
    let r = login(json!({ "recovery_code": spaced })).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(
        claims_of(r.body["access_token"].as_str().expect("token"))["amr"],
        json!(["pwd", "otp"])
    );
    let r = login(json!({ "recovery_code": recovery[0] })).await;
    assert_eq!(r.body["error"], "invalid_otp");
}

#[tokio::test]
async fn revoke_all_ends_every_session_everywhere_and_later_logins_work() {
    let o = origin().await;
    o.register("wes@example.com", "wes's passphrase").await;
    let login = || {
        o.post(
            "/v1/login",
            json!({"email": "wes@example.com", "password": "wes's passphrase", "refresh_token_in_body": true}),
        )
    };
    let laptop = login().await;
    let phone = login().await;
    let token = |r: &Reply| r.body["access_token"].as_str().expect("token").to_string();
    let r = o
        .with_bearer("POST", "/v1/sessions/revoke-all", &token(&phone), None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);

    // Both sessions' access tokens are refused by the origin, and their refresh tokens too.
    for session in [&laptop, &phone] {
        let me = o.with_bearer("GET", "/v1/me", &token(session), None).await;
        assert_eq!(me.status, StatusCode::UNAUTHORIZED, "{:?}", me.body);
        assert_eq!(me.body["reason"], "user_tokens_revoked");
        let refreshed = o
            .post(
                "/v1/token/refresh",
                json!({"refresh_token": session.body["refresh_token"]}),
            )
            .await;
        assert_eq!(refreshed.body["error"], "invalid_grant");
    }
    // The edges hear of it through the feed: a signed entry for the user, without a jti.
    let revocation = first_feed_revocation(&o).await;
    let edgeauth_core::Revocation::User { subject, .. } = revocation else {
        panic!("a user-wide entry: {revocation:?}");
    };
    assert_eq!(
        Some(subject.as_str()),
        claims_of(&token(&laptop))["sub"].as_str()
    );

    // A login after it, even within the same second, is a new session that works.
    let later = login().await;
    assert_eq!(later.status, StatusCode::OK);
    let me = o.with_bearer("GET", "/v1/me", &token(&later), None).await;
    assert_eq!(me.status, StatusCode::OK, "{:?}", me.body);
    let refreshed = o
        .post(
            "/v1/token/refresh",
            json!({"refresh_token": later.body["refresh_token"]}),
        )
        .await;
    assert_eq!(refreshed.status, StatusCode::OK);
}

#[tokio::test]
async fn a_user_lists_their_sessions_and_ends_one() {
    let o = origin().await;
    o.register("xia@example.com", "xia's passphrase").await;
    let login = || {
        o.post(
            "/v1/login",
            json!({"email": "xia@example.com", "password": "xia's passphrase", "refresh_token_in_body": true}),
        )
    };
    let laptop = login().await;
    let phone = login().await;
    let token = |r: &Reply| r.body["access_token"].as_str().expect("token").to_string();
    let sid = |r: &Reply| {
        claims_of(&token(r))["sid"]
            .as_str()
            .expect("sid")
            .to_string()
    };

    let listed = o
        .with_bearer("GET", "/v1/sessions", &token(&laptop), None)
        .await;
    assert_eq!(listed.status, StatusCode::OK);
    let sessions = listed.body["sessions"]
        .as_array()
        .cloned()
        .expect("sessions");
    assert_eq!(sessions.len(), 2, "{sessions:?}");
    let current: Vec<&str> = sessions
        .iter()
        .filter(|s| s["current"] == true)
        .filter_map(|s| s["id"].as_str())
        .collect();
    assert_eq!(current, vec![sid(&laptop).as_str()]);

    // A rotation keeps the session one session.
    let rotated = o
        .post(
            "/v1/token/refresh",
            json!({"refresh_token": phone.body["refresh_token"]}),
        )
        .await;
    assert_eq!(rotated.status, StatusCode::OK);
    let listed = o
        .with_bearer("GET", "/v1/sessions", &token(&laptop), None)
        .await;
    assert_eq!(listed.body["sessions"].as_array().map(Vec::len), Some(2));

    // The laptop ends the phone's session: its refresh token stops working.
    let path = format!("/v1/sessions/{}", sid(&phone));
    let r = o.with_bearer("DELETE", &path, &token(&laptop), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    // And its access tokens at once, the one the rotation minted too.
    for access in [token(&phone), token(&rotated)] {
        let me = o.with_bearer("GET", "/v1/me", &access, None).await;
        assert_eq!(
            (me.status, me.body["reason"].as_str()),
            (StatusCode::UNAUTHORIZED, Some("token_revoked"))
        );
    }
    let refreshed = o
        .post(
            "/v1/token/refresh",
            json!({"refresh_token": rotated.body["refresh_token"]}),
        )
        .await;
    assert_eq!(refreshed.body["error"], "invalid_grant");
    let listed = o
        .with_bearer("GET", "/v1/sessions", &token(&laptop), None)
        .await;
    assert_eq!(listed.body["sessions"].as_array().map(Vec::len), Some(1));
    // Ended, unknown or someone else's: all the same 404.
    let r = o.with_bearer("DELETE", &path, &token(&laptop), None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    o.register("yan@example.com", "yan's passphrase").await;
    let other = o.login("yan@example.com", "yan's passphrase").await;
    let laptop_path = format!("/v1/sessions/{}", sid(&laptop));
    let r = o
        .with_bearer("DELETE", &laptop_path, &token(&other), None)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = o
        .with_bearer("DELETE", "/v1/sessions/not-a-uuid", &token(&laptop), None)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

/// The value of the sample `series` (name and labels, exactly as exposed), if exposed.
fn sample(exposition: &str, series: &str) -> Option<f64> {
    exposition
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.split(' ').next()?.parse().ok())
}

#[tokio::test]
async fn metrics_count_requests_by_route_template_and_time_the_stores() {
    let o = origin().await;
    o.register("mo@example.com", "mo's passphrase").await;
    let login = o.login("mo@example.com", "mo's passphrase").await;
    let token = login.body["access_token"].as_str().expect("token");
    let gone = o
        .with_bearer(
            "DELETE",
            &format!("/v1/sessions/{}", uuid::Uuid::new_v4()),
            token,
            None,
        )
        .await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    o.get("/no/such/route").await;

    let scrape = o.get("/metrics").await;
    assert_eq!(scrape.status, StatusCode::OK);
    assert!(scrape.headers[header::CONTENT_TYPE]
        .to_str()
        .expect("ascii")
        .starts_with("application/openmetrics-text"));
    let text = &scrape.text;
    // Other tests share the process's registry: counts are at least this test's own.
    let at_least_one = |series: &str| {
        let value = sample(text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"));
        assert!(value >= 1.0, "{series} = {value}");
    };
    at_least_one(r#"edgeauth_http_requests_total{route="/v1/login",method="POST",status="200"}"#);
    at_least_one(
        r#"edgeauth_http_requests_total{route="/v1/sessions/{id}",method="DELETE",status="404"}"#,
    );
    at_least_one(r#"edgeauth_http_requests_total{route="unmatched",method="GET",status="404"}"#);
    at_least_one(
        r#"edgeauth_http_request_duration_seconds_bucket{le="0.8",route="/v1/login",method="POST"}"#,
    );
    at_least_one(r#"edgeauth_dynamodb_request_duration_seconds_count{operation="PutItem"}"#);
    at_least_one(r#"edgeauth_dynamodb_request_duration_seconds_count{operation="Query"}"#);
    assert!(!text.contains(
        &gone.headers["x-request-id"]
            .to_str()
            .expect("ascii")
            .to_string()
    ));
    assert!(sample(text, "edgeauth_password_hash_queue_depth").is_some());
    assert!(sample(text, "edgeauth_deny_list_entries").is_some());
    let age = sample(text, "edgeauth_signing_key_age_seconds").expect("key age");
    assert!((0.0..86_400.0).contains(&age), "{age}");
    if test_redis().is_some() {
        at_least_one(r#"edgeauth_redis_request_duration_seconds_count{connection="rate_limit"}"#);
    }
    // Every metric of the contract the rules and the dashboard read is exposed, with its type.
    let contract = std::fs::read_to_string(
        std::path::Path::new(&std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo test"))
            .join("../ops/metrics.md"),
    )
    .expect("ops/metrics.md");
    let mut named = 0;
    for row in contract.lines().filter(|l| l.starts_with("| `edgeauth_")) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let (name, kind) = (cells[1].trim_matches('`'), cells[2]);
        // OpenMetrics names a counter's family without `_total`.
        let family = name
            .strip_suffix("_total")
            .filter(|_| kind == "counter")
            .unwrap_or(name);
        assert!(
            text.lines().any(|l| l == format!("# TYPE {family} {kind}")),
            "{name} ({kind}) is not exposed:\n{text}"
        );
        named += 1;
    }
    assert_eq!(named, 13, "the contract's table was not read");
    // No raw path, user or address is ever a label.
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        assert!(
            !line.contains("mo@example.com") && !line.contains("/v1/sessions/0"),
            "{line}"
        );
    }
}

#[tokio::test]
async fn logout_ends_the_session_of_the_verified_token_whatever_the_header_spacing() {
    let o = origin().await;
    let refresh = o.logged_in("zoe@example.com").await;
    let login = o.login("zoe@example.com", "a fine passphrase").await;
    let access = login.body["access_token"].as_str().expect("token");
    // A tab between scheme and token is valid (RFC 7235 whitespace); the core accepts it.
    let out = o
        .send(
            Request::post("/v1/logout")
                .header(header::AUTHORIZATION, format!("Bearer\t{access}"))
                .body(Body::empty())
                .expect("request"),
        )
        .await;
    assert_eq!(out.status, StatusCode::NO_CONTENT);
    assert_eq!(
        o.refresh_with_cookie(&cookie_token(&login)).await.status,
        StatusCode::UNAUTHORIZED,
        "the session the token names is ended"
    );
    assert_eq!(
        o.refresh_with_cookie(&refresh).await.status,
        StatusCode::OK,
        "the other session is not"
    );
}

#[tokio::test]
async fn a_logged_out_token_is_refused_every_second_until_its_exp_plus_leeway() {
    let o = origin().await;
    let user_id = o.register("abe@example.com", "abe's passphrase").await.body["user_id"]
        .as_str()
        .expect("id")
        .to_string();
    // A token of the origin's own keys that expires in a second (the configuration's shortest
    // lifetime is a minute), without a session: logout revokes its `jti` alone.
    let now = edgeauth_origin::clock::now();
    let exp = now + 1;
    let claims = json!({
        "iss": "https://auth.example.test", "aud": "api.example.test", "sub": user_id,
        "scope": "profile", "iat": now, "exp": exp, "jti": uuid::Uuid::new_v4().to_string(),
    });
    let token = o
        .state
        .keys
        .snapshot()
        .expect("keys")
        .set
        .current(now)
        .sign_jws(edgeauth_origin::keys::ACCESS_TOKEN_TYPE, &claims)
        .expect("signed");
    let leeway = o.state.verifier.policy().leeway_seconds();
    assert_eq!(
        o.with_bearer("GET", "/v1/me", &token, None).await.status,
        StatusCode::OK
    );
    assert_eq!(
        o.with_bearer("POST", "/v1/logout", &token, None)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    // Through exp + leeway, when the token stops passing by its own exp: revoked every time.
    loop {
        let now = edgeauth_origin::clock::now();
        let me = o.with_bearer("GET", "/v1/me", &token, None).await;
        let expected = if now < exp + leeway {
            "token_revoked"
        } else {
            "token_expired"
        };
        assert_eq!(
            (me.status, me.body["reason"].as_str()),
            (StatusCode::UNAUTHORIZED, Some(expected)),
            "{} s after exp",
            now - exp
        );
        if now > exp + leeway {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

#[tokio::test]
async fn revoke_all_can_be_retried_and_a_revoked_token_ends_no_later_session() {
    let o = origin().await;
    o.register("bea@example.com", "bea's passphrase").await;
    let login = || {
        o.post(
            "/v1/login",
            json!({"email": "bea@example.com", "password": "bea's passphrase", "refresh_token_in_body": true}),
        )
    };
    let token = |r: &Reply| r.body["access_token"].as_str().expect("token").to_string();
    let laptop = login().await;
    let o = &o;
    let revoke_all = |access: String| async move {
        o.with_bearer("POST", "/v1/sessions/revoke-all", &access, None)
            .await
            .status
    };
    assert_eq!(revoke_all(token(&laptop)).await, StatusCode::NO_CONTENT);
    // The retry comes in a later second than the first call: it must not move the watermark to
    // its own clock.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let later = login().await;
    // The same call again, as a client does after a 503: accepted, with the watermark stored
    // the first time, so the session started since lives on.
    assert_eq!(revoke_all(token(&laptop)).await, StatusCode::NO_CONTENT);
    let me = o.with_bearer("GET", "/v1/me", &token(&later), None).await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.body);
    let refreshed = o
        .post(
            "/v1/token/refresh",
            json!({"refresh_token": later.body["refresh_token"]}),
        )
        .await;
    assert_eq!(refreshed.status, StatusCode::OK);
    let feed = o.get("/v1/revocations").await;
    let watermarks: Vec<Value> = feed.body["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| claims_of(e["jws"].as_str().expect("jws"))["iat"].clone())
        .collect();
    assert_eq!(watermarks.len(), 2);
    assert_eq!(
        watermarks[0], watermarks[1],
        "the stored watermark, re-applied"
    );
    assert!(claims_of(&token(&later))["iat"].as_i64() > watermarks[0].as_i64());
}

/// A redis-server of the test's own, for what acts on a whole server (a flush, a pause, its
/// eviction policy) and would disturb the tests sharing the run's one. `None` when the run has
/// no Redis (`EDGEAUTH_TEST_REDIS_URL` unset), and those tests skip.
struct OwnRedis {
    url: String,
    process: std::process::Child,
}

impl OwnRedis {
    async fn start() -> Option<Self> {
        std::env::var_os("EDGEAUTH_TEST_REDIS_URL")?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let process = std::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server, installed with the run's Redis");
        let redis = Self {
            url: format!("redis://127.0.0.1:{port}"),
            process,
        };
        for _ in 0..100 {
            if redis.try_command(&["PING"]).await.is_ok() {
                return Some(redis);
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("redis-server did not start on port {port}");
    }

    async fn try_command(&self, args: &[&str]) -> redis::RedisResult<redis::Value> {
        let mut connection = redis::Client::open(self.url.as_str())?
            .get_multiplexed_async_connection()
            .await?;
        redis::cmd(args[0])
            .arg(&args[1..])
            .query_async(&mut connection)
            .await
    }

    async fn command(&self, args: &[&str]) {
        self.try_command(args).await.expect("redis command");
    }

    /// The origin's settings for this Redis: deny-list and cache.
    fn settings(&self) -> [(&'static str, &str); 2] {
        [
            ("EDGEAUTH_REDIS_DENYLIST_URL", self.url.as_str()),
            ("EDGEAUTH_REDIS_CACHE_URL", self.url.as_str()),
        ]
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

#[tokio::test]
async fn a_logout_that_failed_part_way_is_retried_and_ends_the_session() {
    let Some(redis) = OwnRedis::start().await else {
        return;
    };
    let o = origin_with(&redis.settings()).await;
    let refresh = o.logged_in("cy@example.com").await;
    let login = o.login("cy@example.com", "a fine passphrase").await;
    let access = login.body["access_token"].as_str().expect("token");
    // Writes wait 1.5 s, past the deny-list's timeout; reads go on.
    redis.command(&["CLIENT", "PAUSE", "1500", "WRITE"]).await;
    let paused = std::time::Instant::now();
    let out = o.with_bearer("POST", "/v1/logout", access, None).await;
    assert_eq!(out.status, StatusCode::SERVICE_UNAVAILABLE, "{}", out.body);
    tokio::time::sleep(std::time::Duration::from_millis(1600).saturating_sub(paused.elapsed()))
        .await;
    let retry = o.with_bearer("POST", "/v1/logout", access, None).await;
    assert_eq!(retry.status, StatusCode::NO_CONTENT, "{}", retry.body);
    assert_eq!(
        o.refresh_with_cookie(&cookie_token(&login)).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        o.with_bearer("GET", "/v1/me", access, None).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(o.refresh_with_cookie(&refresh).await.status, StatusCode::OK);
}

/// Redis stops answering: a token this instance revoked is still refused as revoked (401, what
/// the instance holds in process is a definite answer), a live one as unverifiable (503).
#[tokio::test]
async fn a_token_revoked_here_is_refused_as_revoked_while_redis_does_not_answer() {
    let Some(redis) = OwnRedis::start().await else {
        return;
    };
    let o = origin_with(&redis.settings()).await;
    o.register("ed@example.com", "ed's passphrase").await;
    let revoked = o
        .login("ed@example.com", "ed's passphrase")
        .await
        .access_token();
    let live = o
        .login("ed@example.com", "ed's passphrase")
        .await
        .access_token();
    let out = o.with_bearer("POST", "/v1/logout", &revoked, None).await;
    assert_eq!(out.status, StatusCode::NO_CONTENT);
    // Every command waits 6 s, past the deny-list's bound of twice its 1 s timeout.
    redis.command(&["CLIENT", "PAUSE", "6000", "ALL"]).await;
    let (revoked, live) = tokio::join!(
        o.with_bearer("GET", "/v1/me", &revoked, None),
        o.with_bearer("GET", "/v1/me", &live, None)
    );
    assert_eq!(
        (revoked.status, &revoked.body["reason"]),
        (StatusCode::UNAUTHORIZED, &json!("token_revoked"))
    );
    assert_eq!(
        (live.status, &live.body["reason"]),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            &json!("revocation_unavailable")
        )
    );
}

#[tokio::test]
async fn a_flushed_deny_list_is_rebuilt_from_the_feed_and_never_lets_a_revoked_token_pass() {
    let Some(redis) = OwnRedis::start().await else {
        return;
    };
    let o = origin_with(&redis.settings()).await;
    o.register("di@example.com", "di's passphrase").await;
    let access = o
        .login("di@example.com", "di's passphrase")
        .await
        .access_token();
    assert_eq!(
        o.with_bearer("POST", "/v1/logout", &access, None)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    redis.command(&["FLUSHALL"]).await;
    let started = std::time::Instant::now();
    loop {
        let me = o.with_bearer("GET", "/v1/me", &access, None).await;
        match me.status {
            StatusCode::UNAUTHORIZED => {
                assert_eq!(me.body["reason"], "token_revoked");
                break;
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(me.body["reason"], "revocation_unavailable");
            }
            other => panic!("a revoked token answered {other}: {}", me.body),
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "not rebuilt"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // The instance held the revocation in process meanwhile; the shared list is rebuilt too.
    while o.get("/readyz").await.status != StatusCode::OK {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "not rebuilt"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_restarted_origin_rebuilds_an_empty_deny_list_before_it_answers() {
    // Embedded: a new process's in-process list; with Redis: one emptied by a restart.
    let redis = OwnRedis::start().await;
    let settings = redis.as_ref().map(OwnRedis::settings);
    let settings: &[(&str, &str)] = settings.as_ref().map_or(&[], |s| s.as_slice());
    let first = start(fresh_dir(), settings).await;
    first.register("ed@example.com", "ed's passphrase").await;
    let access = first.login("ed@example.com", "ed's passphrase").await.body["access_token"]
        .as_str()
        .expect("token")
        .to_string();
    assert_eq!(
        first
            .with_bearer("POST", "/v1/logout", &access, None)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    let data_dir = first.data_dir.clone();
    drop(first);
    if let Some(redis) = &redis {
        redis.command(&["FLUSHALL"]).await;
    }
    let second = start(data_dir, settings).await;
    let me = second.with_bearer("GET", "/v1/me", &access, None).await;
    assert_eq!(
        (me.status, me.body["reason"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("token_revoked"))
    );
}

#[tokio::test]
async fn a_deny_list_redis_that_may_evict_is_refused_at_start() {
    let Some(redis) = OwnRedis::start().await else {
        return;
    };
    let dir = fresh_dir();
    let env = test_env(&dir, &redis.settings());
    let config = || Config::from_sources(None, |k| env.get(k).cloned()).expect("configuration");
    redis
        .command(&["CONFIG", "SET", "maxmemory-policy", "allkeys-lru"])
        .await;
    let refused = match build_state(config()).await {
        Ok(_) => panic!("started on an evicting Redis"),
        Err(e) => e.to_string(),
    };
    assert!(
        refused.contains("redis_denylist_url") && refused.contains("noeviction"),
        "{refused}"
    );
    redis
        .command(&["CONFIG", "SET", "maxmemory-policy", "noeviction"])
        .await;
    if config().storage == Storage::Dynamodb {
        create_tables_command(&config()).await.expect("tables");
    }
    assert!(build_state(config()).await.is_ok());
}

#[tokio::test]
async fn redis_holds_never_shorten_and_watermarks_never_fall() {
    let Some(redis) = test_redis() else {
        return;
    };
    let list = edgeauth_origin::store::deny::RedisDenyList::new(&redis).expect("client");
    let now = edgeauth_origin::clock::now();
    let subject = uuid::Uuid::new_v4().to_string();
    let user = |through: i64, exp: i64| Revocation::User {
        subject: subject.clone(),
        revoked_through: through,
        expires_at: exp,
    };
    list.apply(&user(now, now + 900), 30, now)
        .await
        .expect("applied");
    // An older revoke-all, replayed or delivered late, lowers nothing.
    list.apply(&user(now - 500, now + 400), 30, now)
        .await
        .expect("applied");
    let key = deny_key(Held::User, &subject);
    let through: i64 = redis_query(&redis, redis::cmd("GET").arg(&key)).await;
    let ttl: i64 = redis_query(&redis, redis::cmd("TTL").arg(&key)).await;
    assert_eq!(through, now);
    assert!(
        (929..=930).contains(&ttl),
        "held through exp + leeway: {ttl}"
    );
    let jti = uuid::Uuid::new_v4().to_string();
    let token = |exp: i64| Revocation::Token {
        jti: jti.clone(),
        expires_at: exp,
    };
    list.apply(&token(now + 60), 30, now)
        .await
        .expect("applied");
    list.apply(&token(now + 10), 30, now)
        .await
        .expect("applied");
    let ttl: i64 = redis_query(&redis, redis::cmd("TTL").arg(deny_key(Held::Token, &jti))).await;
    assert!((89..=90).contains(&ttl), "{ttl}");
}

/// Refreshes without a rate limit in the way: the races below send hundreds a second.
const UNLIMITED_REFRESH: (&str, &str) = (
    "EDGEAUTH_RATE_LIMITS",
    r#"{"refresh":{"count":1000000,"per_seconds":60}}"#,
);

/// How the owner ends the session a thief holds a copy of.
#[derive(Debug, Clone, Copy)]
enum Ending {
    Logout,
    RevokeAll,
    DeleteSession,
}

impl Ending {
    /// The owner's request, with the access token of the session, and the event it audits.
    async fn run(self, o: &Origin, access: &str) -> (StatusCode, &'static str) {
        let (method, path, event) = match self {
            Self::Logout => ("POST", "/v1/logout".to_string(), "logout"),
            Self::RevokeAll => ("POST", "/v1/sessions/revoke-all".to_string(), "revoke_all"),
            Self::DeleteSession => {
                let sid = claims_of(access)["sid"].as_str().expect("sid").to_string();
                ("DELETE", format!("/v1/sessions/{sid}"), "session_revoked")
            }
        };
        let status = o.with_bearer(method, &path, access, None).await.status;
        (status, event)
    }
}

/// A thief with a copy of the owner's refresh token refreshes in a tight loop, always with the
/// newest token of the chain, while the owner ends the session. Once the owner's request has
/// returned, no refresh the thief sends succeeds, for the 2 s the loop keeps going; and the
/// refusals are not taken for reuse (an ended session is not theft to report).
async fn thief_cannot_outrun(ending: Ending) {
    use std::sync::{
        atomic::{AtomicBool, AtomicU32, Ordering},
        Arc, OnceLock,
    };
    let o = Arc::new(origin_with(&[UNLIMITED_REFRESH]).await);
    let email = format!("owner-{ending:?}@example.com").to_lowercase();
    o.register(&email, "a fine passphrase").await;
    let owner = o.login(&email, "a fine passphrase").await;
    let access = owner.body["access_token"]
        .as_str()
        .expect("token")
        .to_string();
    let stolen = cookie_token(&owner);

    let ended_at = Arc::new(OnceLock::<std::time::Instant>::new());
    let stop = Arc::new(AtomicBool::new(false));
    let before = Arc::new(AtomicU32::new(0));
    let thief = {
        let (o, ended_at, stop, before) =
            (o.clone(), ended_at.clone(), stop.clone(), before.clone());
        tokio::spawn(async move {
            let (mut token, mut after) = (stolen, 0u32);
            while !stop.load(Ordering::Relaxed) {
                let sent = std::time::Instant::now();
                let r = o.refresh_with_cookie(&token).await;
                match r.status {
                    StatusCode::OK => {
                        token = cookie_token(&r);
                        if ended_at.get().is_some_and(|ended| sent > *ended) {
                            after += 1;
                        } else {
                            before.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    StatusCode::UNAUTHORIZED => {}
                    other => panic!("the thief's refresh answered {other}: {}", r.body),
                }
            }
            after
        })
    };
    for _ in 0..100 {
        if before.load(Ordering::Relaxed) >= 20 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let (status, event) = ending.run(&o, &access).await;
    ended_at.set(std::time::Instant::now()).expect("set once");
    assert_eq!(status, StatusCode::NO_CONTENT, "{ending:?}");
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let after = thief.await.expect("thief task");
    let before = before.load(Ordering::Relaxed);
    assert!(
        before > 0,
        "the thief never got going: the test shows nothing"
    );
    assert_eq!(
        after, 0,
        "{ending:?}: {after} refreshes succeeded after the session ended ({before} before)"
    );

    // The audit has the ending and no reuse: the thief's refusals were an ended session.
    let user = claims_of(&access)["sub"].as_str().expect("sub").to_string();
    let mut events = Vec::new();
    for _ in 0..50 {
        events = o
            .state
            .audit
            .for_user(&user, 50)
            .await
            .expect("audit")
            .into_iter()
            .map(|e| e.event)
            .collect();
        if events.iter().any(|e| e == event) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(40)).await;
    }
    assert!(events.iter().any(|e| e == event), "{events:?}");
    assert!(!events.iter().any(|e| e == "refresh_reuse"), "{events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thief_refreshing_in_a_loop_cannot_outrun_logout() {
    thief_cannot_outrun(Ending::Logout).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thief_refreshing_in_a_loop_cannot_outrun_revoke_all() {
    thief_cannot_outrun(Ending::RevokeAll).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thief_refreshing_in_a_loop_cannot_outrun_ending_the_session() {
    thief_cannot_outrun(Ending::DeleteSession).await;
}

#[tokio::test]
async fn a_revoke_all_ends_sessions_rotated_after_the_moment_it_names() {
    // The handler reads the clock, then publishes and lists before the epoch is written: a
    // rotation committed in between, in the next second, must end too.
    let o = origin().await;
    let token = o.logged_in("una@example.com").await;
    let rotated = o.refresh_with_cookie(&token).await;
    let access = rotated.body["access_token"].as_str().expect("access token");
    let user = edgeauth_origin::store::UserId(
        uuid::Uuid::parse_str(claims_of(access)["sub"].as_str().expect("sub")).expect("uuid"),
    );
    let issued = claims_of(access)["iat"].as_i64().expect("iat");
    o.state
        .users
        .revoke_sessions(user, issued - 5)
        .await
        .expect("revoke-all");
    let r = o.refresh_with_cookie(&cookie_token(&rotated)).await;
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_grant"))
    );
}

/// `n` refreshes of one token at once.
async fn refresh_together(o: &std::sync::Arc<Origin>, token: &str, n: usize) -> Vec<Reply> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (o, token) = (o.clone(), token.to_string());
            tokio::spawn(async move { o.refresh_with_cookie(&token).await })
        })
        .collect();
    let mut replies = Vec::new();
    for task in tasks {
        replies.push(task.await.expect("task"));
    }
    replies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_refreshes_of_one_token_issue_one_refresh_token() {
    let o = std::sync::Arc::new(origin_with(&[UNLIMITED_REFRESH]).await);
    let token = o.logged_in("vic@example.com").await;
    let replies = refresh_together(&o, &token, 8).await;
    for r in &replies {
        assert!(
            r.status == StatusCode::OK
                || (r.status == StatusCode::UNAUTHORIZED && r.body["error"] == "invalid_grant"),
            "{} {}",
            r.status,
            r.body
        );
        if r.status == StatusCode::OK {
            assert!(r.body["access_token"].is_string(), "{}", r.body);
        }
    }
    let issued = replies
        .iter()
        .filter(|r| r.headers.contains_key(header::SET_COOKIE))
        .count();
    assert_eq!(issued, 1, "one rotation wins; the session never forks");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tabs_racing_again_and_again_are_never_taken_for_reuse() {
    let o = std::sync::Arc::new(origin_with(&[UNLIMITED_REFRESH]).await);
    let mut token = o.logged_in("wyn@example.com").await;
    // Both answered, one new refresh token each time, and the session goes on with it.
    for round in 0..20 {
        let pair = refresh_together(&o, &token, 2).await;
        for r in &pair {
            assert_eq!(r.status, StatusCode::OK, "round {round}: {}", r.body);
        }
        let winners: Vec<&Reply> = pair
            .iter()
            .filter(|r| r.headers.contains_key(header::SET_COOKIE))
            .collect();
        assert_eq!(winners.len(), 1, "round {round}");
        token = cookie_token(winners[0]);
    }
    let access = o.refresh_with_cookie(&token).await;
    assert_eq!(access.status, StatusCode::OK, "{}", access.body);
}

#[tokio::test]
async fn a_session_ends_at_its_absolute_lifetime_however_often_it_is_refreshed() {
    let o = origin_with(&[("EDGEAUTH_SESSION_MAX_SECONDS", "7200")]).await;
    o.register("ada@example.com", "ada's passphrase").await;
    let login = o.login("ada@example.com", "ada's passphrase").await;
    // Each rotation's cookie lives until the session's end, not a fresh idle period.
    let refreshed = o.refresh_with_cookie(&cookie_token(&login)).await;
    assert_eq!(refreshed.status, StatusCode::OK);
    let cookie = refreshed.headers[header::SET_COOKIE]
        .to_str()
        .expect("text");
    let max_age: i64 = cookie
        .split(';')
        .find_map(|p| p.trim().strip_prefix("Max-Age="))
        .and_then(|v| v.parse().ok())
        .expect("Max-Age");
    assert!((7100..=7200).contains(&max_age), "{cookie}");
    // A session that started longer ago than that is over, though its token's idle expiry is
    // a day away: a thief refreshing it every few minutes cannot keep it forever.
    let claims = claims_of(login.body["access_token"].as_str().expect("token"));
    let user = edgeauth_origin::store::UserId(
        uuid::Uuid::parse_str(claims["sub"].as_str().expect("sub")).expect("uuid"),
    );
    let now = edgeauth_origin::clock::now();
    let (token, hash) = fresh_refresh_token();
    let old = edgeauth_origin::store::RefreshRecord {
        token_hash: hash,
        user_id: user,
        family_id: uuid::Uuid::new_v4(),
        expires_at: now + 86_400,
        consumed_at: None,
        replaced_by: None,
        mfa: false,
        issued_at: now - 60,
        session_started_at: now - 7201,
    };
    o.state.refresh.insert(&old).await.expect("stored");
    assert_eq!(
        o.refresh_with_cookie(&token).await.status,
        StatusCode::UNAUTHORIZED
    );
}

/// A refresh token and the hash the store keys it by.
fn fresh_refresh_token() -> (String, [u8; 32]) {
    use sha2::Digest as _;
    let token = base64ct::Base64UrlUnpadded::encode_string(uuid::Uuid::new_v4().as_bytes());
    let hash: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
    (token, hash)
}

#[tokio::test]
async fn an_ended_session_is_not_listed_even_if_a_token_of_it_escaped_deletion() {
    let o = origin().await;
    o.register("zoe@example.com", "zoe's passphrase").await;
    let login = o.login("zoe@example.com", "zoe's passphrase").await;
    let access = login.body["access_token"].as_str().expect("token");
    let claims = claims_of(access);
    let family = uuid::Uuid::parse_str(claims["sid"].as_str().expect("sid")).expect("uuid");
    let user = edgeauth_origin::store::UserId(
        uuid::Uuid::parse_str(claims["sub"].as_str().expect("sub")).expect("uuid"),
    );
    o.state.refresh.revoke_family(family).await.expect("ended");
    // A rotation that committed after the family index was read for deletion left this.
    let now = edgeauth_origin::clock::now();
    let escaped = edgeauth_origin::store::RefreshRecord {
        token_hash: [7; 32],
        user_id: user,
        family_id: family,
        expires_at: now + 3600,
        consumed_at: None,
        replaced_by: None,
        mfa: false,
        issued_at: now,
        session_started_at: now,
    };
    o.state.refresh.insert(&escaped).await.expect("stored");
    let other = o.login("zoe@example.com", "zoe's passphrase").await;
    let other_access = other.body["access_token"].as_str().expect("token");
    let listed = o
        .with_bearer("GET", "/v1/sessions", other_access, None)
        .await;
    let ids: Vec<&str> = listed.body["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .filter_map(|s| s["id"].as_str())
        .collect();
    assert_eq!(ids, [claims_of(other_access)["sid"].as_str().expect("sid")]);
}
