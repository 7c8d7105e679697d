//! The example web client (`examples/web/`) in a real browser: headless Chromium over WebDriver,
//! against the real origin (mailing a real SMTP server), the Worker in workerd and Envoy with the
//! filter. The whole walkthrough through the page's UI, and what a browser must keep of the
//! refresh cookie: stored HttpOnly for the refresh path only, never readable by the page's
//! scripts, sent with refreshes only, and not spendable by a page on another origin of the same
//! site that the origin does not list.
//!
//! The page reaches the origin through an observer (`edgeauth_e2e::browser::Observer`), a
//! transparent proxy that records which requests carried the cookie: the server side's view.

use std::time::Duration;

use edgeauth_e2e::{
    browser::{Browser, Observer, WebPage},
    free_port,
    mail::MailServer,
    Edge, Stack, StackOptions,
};
use serde_json::json;

const PASSWORD: &str = "a first passphrase";
const NEW_PASSWORD: &str = "a second passphrase";

#[tokio::test]
async fn the_example_web_client_walks_through_every_flow_in_a_real_browser() {
    let started = std::time::Instant::now();
    let dir = std::env::temp_dir().join(format!("edgeauth-browser-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("scratch directory");
    // Two pages on 127.0.0.1, the origin's host: the same site as the origin (ports do not
    // count), so the SameSite=Strict cookie goes with both pages' requests, like a sibling
    // subdomain's. Only the first is listed.
    let page_port = free_port();
    let page_origin = format!("http://127.0.0.1:{page_port}");
    let mail = MailServer::start(&dir).await;
    let stack = Stack::start_with(StackOptions {
        envoys_beside: vec![Edge::Envoy],
        page_origins: vec![page_origin.clone()],
        origin_env: vec![(
            "EDGEAUTH_MAIL".to_string(),
            mail.origin_settings(&page_origin),
        )],
        // The shortest access token the origin issues, and no leeway at the edges, so the page
        // meets an expired token within the test.
        access_ttl: 60,
        policy_extra: r#","leeway_seconds":0"#.to_string(),
        ..StackOptions::default()
    })
    .await;
    let envoy = stack.envoys[0].url.clone();
    let observer = Observer::start(&stack.origin).await;
    let config = json!({"origin": observer.url, "worker": stack.edge, "envoy": envoy});
    let page = WebPage::serve(&dir, "page", page_port, &config).await;
    assert_eq!(page.url, page_origin);
    let sibling = WebPage::serve(&dir, "sibling", free_port(), &config).await;
    let browser = Browser::start(&dir).await;
    println!("stack, pages and browser up in {:?}", started.elapsed());

    // Register; the mailed link opens the page, which posts the token from the fragment.
    browser.goto(&page.url).await;
    browser
        .wait_for_data("session", "state", "signed-out")
        .await;
    let email = format!("browser-{}@example.com", uuid::Uuid::new_v4().simple());
    browser.fill("register-email", &email).await;
    browser.fill("register-password", PASSWORD).await;
    browser.click("register-button").await;
    browser
        .wait_for_data("register-result", "status", "202")
        .await;
    let link = mail
        .wait_for_link(&email, &format!("{}/verify-email#token=", page.url))
        .await;
    browser.goto(&link).await;
    browser
        .wait_for_data("link-result", "state", "verified")
        .await;
    assert_eq!(
        browser.url().await,
        format!("{}/", page.url),
        "the token left the address bar"
    );

    // Log in; the API through both edges.
    browser.fill("login-email", &email).await;
    browser.fill("login-password", PASSWORD).await;
    browser.click("login-button").await;
    browser.wait_for_data("login-result", "status", "200").await;
    browser.wait_for_data("session", "state", "signed-in").await;
    for edge in ["worker", "envoy"] {
        browser.click(&format!("call-{edge}")).await;
        let result = format!("{edge}-result");
        browser.wait_for_data(&result, "status", "200").await;
        // The upstream echoes what it received: the identity the edge verified.
        let shown = browser.text(&result).await;
        assert!(shown.contains("\"x-user-id\""), "{shown}");
    }
    browser.click("list-sessions").await;
    browser.wait_for_data("sessions", "count", "1").await;
    assert!(browser.text("sessions").await.contains("(this session)"));

    // The cookie: stored HttpOnly, Secure, SameSite=Strict, for the refresh path only; no script
    // reads it, not even on a document at that path, where only HttpOnly hides it.
    let page_cookies = browser.execute("return document.cookie;", json!([])).await;
    assert!(!page_cookies.to_string().contains("refresh_token"));
    // A document at the cookie's path on the cookie's host (any port: cookies ignore ports). The
    // origin answers that GET 405 with no body, which Chromium replaces with an error page of
    // no origin; the page server's 404 has a body, so the document is at that address.
    let page_tab = browser.open_tab().await;
    browser
        .goto(&format!("{}/v1/token/refresh", page.url))
        .await;
    let cookies = browser.cookies().await;
    let cookie = cookies
        .iter()
        .find(|c| c["name"] == "refresh_token")
        .unwrap_or_else(|| panic!("no refresh_token cookie in {cookies:?}"));
    assert_eq!(cookie["path"], "/v1/token/refresh");
    assert_eq!(cookie["httpOnly"], true);
    assert_eq!(cookie["secure"], true);
    assert_eq!(cookie["sameSite"], "Strict");
    let script_sees = browser.execute("return document.cookie;", json!([])).await;
    assert!(
        !script_sees.to_string().contains("refresh_token"),
        "{script_sees}"
    );

    // A page on another origin of the same site, not on the allow-list, tries to spend the
    // cookie: a plain POST (no preflight) reaches the origin with the cookie and is refused by
    // the CSRF check; with X-Requested-With its preflight is refused and the POST never leaves.
    browser.goto(&sibling.url).await;
    let attempt = r#"
        const done = arguments[arguments.length - 1];
        fetch(arguments[0] + "/v1/token/refresh", {method: "POST", credentials: "include", headers: arguments[1]})
            .then(r => done("read " + r.status), e => done("blocked: " + e.name));"#;
    let plain = browser
        .execute_async(attempt, json!([observer.url, {}]))
        .await;
    let with_header = browser
        .execute_async(attempt, json!([observer.url, {"x-requested-with": "x"}]))
        .await;
    assert!(plain.to_string().contains("blocked"), "{plain}");
    assert!(with_header.to_string().contains("blocked"), "{with_header}");
    browser.close_tab(&page_tab).await;
    let from_sibling: Vec<_> = observer
        .seen()
        .into_iter()
        .filter(|s| s.origin.as_deref() == Some(sibling.url.as_str()))
        .collect();
    let posts: Vec<_> = from_sibling.iter().filter(|s| s.method == "POST").collect();
    assert_eq!(posts.len(), 1, "{from_sibling:?}");
    assert!(posts[0].cookie, "the cookie went with it (same site)");
    assert_eq!(
        (posts[0].status, posts[0].error.as_deref()),
        (403, Some("cross_site_refresh")),
        "{from_sibling:?}"
    );
    assert!(
        from_sibling
            .iter()
            .any(|s| s.method == "OPTIONS" && s.status == 403),
        "{from_sibling:?}"
    );

    // The access token expires: the Worker refuses it as expired, the page can read why (the
    // edge's CORS) and refreshes silently with the cookie, which the sibling did not rotate.
    let exp: u64 = browser
        .data("session", "exp")
        .await
        .parse()
        .expect("the page shows the token's expiry");
    let now = edgeauth_origin::clock::now() as u64;
    // A deadline the token's own `exp` sets, not a guess: nothing to poll until then.
    tokio::time::sleep(Duration::from_secs(exp.saturating_sub(now) + 1)).await;
    let refreshes = browser.data("refreshes", "count").await;
    browser.click("call-worker").await;
    browser
        .wait_for_data("worker-result", "status", "200")
        .await;
    let after: u32 = browser
        .data("refreshes", "count")
        .await
        .parse()
        .expect("count");
    assert_eq!(after, refreshes.parse::<u32>().expect("count") + 1);
    assert!(
        browser
            .text("log")
            .await
            .contains("the Worker answered 401 token_expired"),
        "{}",
        browser.text("log").await
    );
    browser.click("call-envoy").await;
    browser.wait_for_data("envoy-result", "status", "200").await;

    // Change the password, log out, and both edges refuse the old token, as the page shows.
    browser.fill("current-password", PASSWORD).await;
    browser.fill("new-password", NEW_PASSWORD).await;
    browser.click("password-button").await;
    browser
        .wait_for_data("password-result", "status", "204")
        .await;
    browser.click("logout").await;
    browser
        .wait_for_data("logout-result", "state", "refused")
        .await;
    for edge in ["worker", "envoy"] {
        let result = format!("{edge}-result");
        assert_eq!(browser.data(&result, "status").await, "401");
        assert_eq!(browser.data(&result, "reason").await, "token_revoked");
    }
    browser
        .wait_for_data("session", "state", "signed-out")
        .await;

    // Server side: the cookie went with refreshes only, never to another path of the origin,
    // and the page's refreshes carried X-Requested-With.
    let seen = observer.seen();
    for path in ["/v1/login", "/v1/sessions", "/v1/me/password", "/v1/logout"] {
        assert!(seen.iter().any(|s| s.path == path), "{path}: {seen:?}");
    }
    for request in &seen {
        if request.path != "/v1/token/refresh" {
            assert!(!request.cookie, "the cookie went to {request:?}");
        }
    }
    assert!(seen.iter().any(|s| s.path == "/v1/token/refresh"
        && s.method == "POST"
        && s.cookie
        && s.requested_with
        && s.origin.as_deref() == Some(page.url.as_str())
        && s.status == 200));
    browser.quit().await;
    println!("browser walkthrough done in {:?}", started.elapsed());
    let _ = std::fs::remove_dir_all(&dir);
}
