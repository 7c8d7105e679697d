//! Browsers: CORS for the allow-listed web apps, and the refresh cookie spent only by them.

use super::*;

const APP: &str = "https://app.example.test";
/// A sibling subdomain: the same site as the app and the origin, so the cookie goes with its
/// requests, but not on the allow-list.
const SIBLING: &str = "https://evil.example.test";

async fn browser_origin() -> Origin {
    origin_with(&[(
        "EDGEAUTH_CORS",
        r#"{"allowed_origins":["https://app.example.test"],"max_age_seconds":300}"#,
    )])
    .await
}

fn preflight(from: &str, method: &str, headers: &str) -> Request<Body> {
    Request::builder()
        .method("OPTIONS")
        .uri("/v1/login")
        .header(header::ORIGIN, from)
        .header(header::ACCESS_CONTROL_REQUEST_METHOD, method)
        .header(header::ACCESS_CONTROL_REQUEST_HEADERS, headers)
        .body(Body::empty())
        .expect("request")
}

fn values(reply: &Reply, name: header::HeaderName) -> String {
    reply
        .headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(", ")
        .to_ascii_lowercase()
}

#[tokio::test]
async fn an_allowed_app_passes_the_preflight_with_credentials_and_others_get_no_cors_headers() {
    let o = browser_origin().await;
    let r = o
        .send(preflight(APP, "POST", "content-type,x-requested-with"))
        .await;
    assert!(r.status.is_success(), "{}", r.status);
    assert_eq!(r.headers[header::ACCESS_CONTROL_ALLOW_ORIGIN], APP);
    assert_eq!(r.headers[header::ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
    assert_eq!(r.headers[header::ACCESS_CONTROL_MAX_AGE], "300");
    assert!(values(&r, header::ACCESS_CONTROL_ALLOW_METHODS).contains("post"));
    let allowed = values(&r, header::ACCESS_CONTROL_ALLOW_HEADERS);
    for name in ["content-type", "authorization", "x-requested-with"] {
        assert!(allowed.contains(name), "{allowed}");
    }
    assert!(values(&r, header::VARY).contains("origin"));

    let r = o
        .send(preflight(SIBLING, "POST", "content-type,x-requested-with"))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let cors_headers: Vec<&str> = r
        .headers
        .keys()
        .map(|name| name.as_str())
        .filter(|name| name.starts_with("access-control-"))
        .collect();
    assert!(cors_headers.is_empty(), "{cors_headers:?}");

    // The answers themselves: readable by the app's page, not by the sibling's.
    o.register("cora@example.com", "cora's passphrase").await;
    let login = |from: &str| {
        Request::post("/v1/login")
            .header(header::ORIGIN, from)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(
                json!({"email": "cora@example.com", "password": "wrong"}).to_string(),
            ))
            .expect("request")
    };
    let r = o.send(login(APP)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.headers[header::ACCESS_CONTROL_ALLOW_ORIGIN], APP);
    assert!(values(&r, header::ACCESS_CONTROL_EXPOSE_HEADERS).contains("retry-after"));
    let r = o.send(login(SIBLING)).await;
    assert_eq!(r.headers.get(header::ACCESS_CONTROL_ALLOW_ORIGIN), None);
}

#[tokio::test]
async fn without_an_allow_list_there_are_no_cors_headers() {
    let o = origin().await;
    let r = o.send(preflight(APP, "POST", "content-type")).await;
    assert_eq!(r.headers.get(header::ACCESS_CONTROL_ALLOW_ORIGIN), None);
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn a_sibling_subdomain_cannot_spend_the_refresh_cookie_and_loses_the_user_nothing() {
    let o = browser_origin().await;
    let token = o.logged_in("rudy@example.com").await;
    let from = |origin: Option<&str>, requested_with: bool, token: &str| {
        let mut request = Request::post("/v1/token/refresh")
            .header(header::COOKIE, format!("refresh_token={token}"));
        if let Some(origin) = origin {
            request = request.header(header::ORIGIN, origin);
        }
        if requested_with {
            request = request.header("x-requested-with", "fetch");
        }
        request.body(Body::empty()).expect("request")
    };
    // The sibling's page (a simple POST, no preflight), and a bare request with the cookie.
    for (origin, what) in [(Some(SIBLING), "a sibling's page"), (None, "no origin")] {
        let r = o.send(from(origin, false, &token)).await;
        assert_eq!(
            (r.status, r.body["error"].as_str()),
            (StatusCode::FORBIDDEN, Some("cross_site_refresh")),
            "{what}: {}",
            r.body
        );
        assert_eq!(r.headers.get(header::SET_COOKIE), None, "{what}");
    }
    // Nothing was rotated: the app's own page spends the same cookie once, by its origin.
    let r = o.send(from(Some(APP), false, &token)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let rotated = cookie_token(&r);
    // A script that sets X-Requested-With passed a preflight, so it is the app's too.
    let r = o.send(from(None, true, &rotated)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
}
