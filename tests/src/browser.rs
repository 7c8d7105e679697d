//! A real browser for the end-to-end suite: Debian's headless Chromium driven over WebDriver by
//! chromedriver (both installed by `scripts/test`'s `ensure_chromium`), the example web client
//! served by `scripts/web-serve.mjs`, and an observer in front of the origin that records what
//! the browser sent it.
//!
//! The WebDriver client is this module's own, over the `reqwest` the suite already has: the test
//! needs a dozen commands of the W3C protocol (JSON over HTTP), which is less code than the
//! `fantoccini` dependency tree it would otherwise pull in (its own hyper client, `cookie`,
//! `webdriver`, TLS features) for the same calls.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    extract::{Request, State},
    http::{HeaderMap, HeaderName, StatusCode},
    response::{IntoResponse, Response},
    Router,
};
use nix::{
    sys::signal::{killpg, Signal},
    unistd::Pid,
};
use serde_json::{json, Value};
use tokio::process::{Child, Command};

/// How long a page may take to show what a test waits for.
const UI_WAIT: Duration = Duration::from_secs(20);

/// A process started in a group of its own (chromedriver and the Chromium it starts), stopped
/// with the whole group when dropped.
#[derive(Debug)]
struct Group(Child);

impl Drop for Group {
    fn drop(&mut self) {
        if let Some(pid) = self.0.id().and_then(|pid| i32::try_from(pid).ok()) {
            if pid > 1 {
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}

/// The example web client (`examples/web/`) served by `scripts/web-serve.mjs` on its own port,
/// with its settings.
#[derive(Debug)]
pub struct WebPage {
    _server: Group,
    /// The page's origin (`http://127.0.0.1:<port>`).
    pub url: String,
}

impl WebPage {
    /// Serves the page on `port` with `config` (origin, Worker and Envoy URLs) as its
    /// `config.json`.
    pub async fn serve(dir: &Path, name: &str, port: u16, config: &Value) -> Self {
        let config_path = dir.join(format!("{name}-config.json"));
        std::fs::write(&config_path, config.to_string()).expect("page config");
        let mut command = Command::new("node");
        command
            .arg(crate::repo_root().join("scripts/web-serve.mjs"))
            .args(["--port", &port.to_string(), "--config"])
            .arg(&config_path);
        let child = crate::start_listening(command, dir, name, port).await;
        Self {
            _server: Group(child),
            url: format!("http://127.0.0.1:{port}"),
        }
    }
}

/// One request the observer passed to the origin.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Method.
    pub method: String,
    /// Path, without the query.
    pub path: String,
    /// The request's `Origin`, if any.
    pub origin: Option<String>,
    /// Whether it carried a `Cookie` header, and whether that held `refresh_token`.
    pub cookie: bool,
    /// Whether it carried `X-Requested-With`.
    pub requested_with: bool,
    /// The origin's status.
    pub status: u16,
    /// The `error` of the origin's JSON answer, if any.
    pub error: Option<String>,
}

#[derive(Clone)]
struct ObserverState {
    origin: String,
    client: reqwest::Client,
    seen: Arc<Mutex<Vec<Seen>>>,
}

/// A transparent proxy in front of the origin that records every request the browser sends it:
/// the server side's view of which requests carried the refresh cookie.
#[derive(Debug, Clone)]
pub struct Observer {
    /// Its URL: the page's "origin" setting.
    pub url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

/// Headers that belong to one connection, never forwarded (RFC 9110 §7.6.1), and those the
/// client recomputes.
const NOT_FORWARDED: [&str; 6] = [
    "host",
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "upgrade",
];

async fn observe(State(state): State<ObserverState>, request: Request) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let path_and_query = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let headers = request.headers().clone();
    let body = axum::body::to_bytes(request.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    let mut forwarded = state
        .client
        .request(method.clone(), format!("{}{path_and_query}", state.origin))
        .body(body);
    for (name, value) in &headers {
        if !NOT_FORWARDED.contains(&name.as_str()) {
            forwarded = forwarded.header(name, value);
        }
    }
    let Ok(answer) = forwarded.send().await else {
        return StatusCode::BAD_GATEWAY.into_response();
    };
    let status = answer.status();
    let mut reply = HeaderMap::new();
    for (name, value) in answer.headers() {
        if !NOT_FORWARDED.contains(&name.as_str()) {
            reply.append(HeaderName::from(name), value.clone());
        }
    }
    let body = answer.bytes().await.unwrap_or_default();
    let error = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|json| json["error"].as_str().map(str::to_string));
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    state.seen.lock().expect("not poisoned").push(Seen {
        method: method.to_string(),
        path,
        origin: text("origin").map(str::to_string),
        cookie: text("cookie").is_some_and(|c| c.contains("refresh_token=")),
        requested_with: headers.contains_key("x-requested-with"),
        status: status.as_u16(),
        error,
    });
    (status, reply, body).into_response()
}

impl Observer {
    /// Starts the observer in front of `origin`.
    pub async fn start(origin: &str) -> Self {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let state = ObserverState {
            origin: origin.to_string(),
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
            seen: seen.clone(),
        };
        let address: SocketAddr =
            crate::serve(Router::new().fallback(observe).with_state(state)).await;
        Self {
            url: format!("http://{address}"),
            seen,
        }
    }

    /// Every request so far, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("not poisoned").clone()
    }
}

/// chromedriver with one headless Chromium session.
#[derive(Debug)]
pub struct Browser {
    client: reqwest::Client,
    /// `http://127.0.0.1:<port>/session/<id>`.
    session: String,
    _driver: Group,
    _profile: PathBuf,
}

/// Sends one WebDriver command; its `value`, or a failure with what the driver said.
async fn webdriver(request: reqwest::RequestBuilder, what: &str) -> Value {
    let answer: Value = request
        .send()
        .await
        .expect("chromedriver answers")
        .json()
        .await
        .expect("JSON");
    if answer["value"]["error"].is_string() {
        panic!("WebDriver {what}: {answer}");
    }
    answer["value"].clone()
}

impl Browser {
    /// Starts chromedriver and a headless Chromium (`EDGEAUTH_E2E_CHROMIUM`,
    /// `EDGEAUTH_E2E_CHROMEDRIVER`, default Debian's paths).
    pub async fn start(dir: &Path) -> Self {
        let chromium = std::env::var("EDGEAUTH_E2E_CHROMIUM").unwrap_or("/usr/bin/chromium".into());
        let driver =
            std::env::var("EDGEAUTH_E2E_CHROMEDRIVER").unwrap_or("/usr/bin/chromedriver".into());
        for path in [&chromium, &driver] {
            assert!(
                Path::new(path).exists(),
                "{path} not found: run ./scripts/test, which installs Debian's chromium and chromium-driver"
            );
        }
        let port = crate::free_port();
        let mut command = Command::new(&driver);
        command.arg(format!("--port={port}"));
        let child = crate::start_listening(command, dir, "chromedriver", port).await;
        let profile = dir.join("chromium-profile");
        let client = reqwest::Client::new();
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                // Root in a container: no sandbox. A profile of the test's own.
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--no-first-run", format!("--user-data-dir={}", profile.display())],
            },
        }}});
        let request = client
            .post(format!("http://127.0.0.1:{port}/session"))
            .json(&capabilities);
        let session = webdriver(request, "new session").await;
        let id = session["sessionId"].as_str().expect("a session id");
        Self {
            session: format!("http://127.0.0.1:{port}/session/{id}"),
            client,
            _driver: Group(child),
            _profile: profile,
        }
    }

    /// One WebDriver command: its `value`.
    async fn command(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.session));
        if let Some(body) = body {
            request = request.json(&body);
        }
        webdriver(request, path).await
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        self.command(reqwest::Method::POST, path, Some(body)).await
    }

    async fn get(&self, path: &str) -> Value {
        self.command(reqwest::Method::GET, path, None).await
    }

    /// Navigates to `url` and waits for its load.
    pub async fn goto(&self, url: &str) {
        self.post("/url", json!({ "url": url })).await;
    }

    /// The current address.
    pub async fn url(&self) -> String {
        self.get("/url")
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The element `#id`'s WebDriver reference.
    async fn element(&self, id: &str) -> String {
        let found = self
            .post(
                "/element",
                json!({"using": "css selector", "value": format!("#{id}")}),
            )
            .await;
        // W3C's element reference key.
        found["element-6066-11e4-a52e-4f735466cecf"]
            .as_str()
            .expect("an element reference")
            .to_string()
    }

    /// Clicks `#id`.
    pub async fn click(&self, id: &str) {
        let element = self.element(id).await;
        self.post(&format!("/element/{element}/click"), json!({}))
            .await;
    }

    /// Types `text` into the input `#id`, replacing what it held.
    pub async fn fill(&self, id: &str, text: &str) {
        let element = self.element(id).await;
        self.post(&format!("/element/{element}/clear"), json!({}))
            .await;
        self.post(
            &format!("/element/{element}/value"),
            json!({ "text": text }),
        )
        .await;
    }

    /// `#id`'s text as shown.
    pub async fn text(&self, id: &str) -> String {
        let element = self.element(id).await;
        let text = self.get(&format!("/element/{element}/text")).await;
        text.as_str().unwrap_or_default().to_string()
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page; its return value.
    pub async fn execute(&self, script: &str, args: Value) -> Value {
        self.post("/execute/sync", json!({ "script": script, "args": args }))
            .await
    }

    /// Runs `script`, which calls `arguments[arguments.length - 1]` with its result when done.
    pub async fn execute_async(&self, script: &str, args: Value) -> Value {
        self.post("/execute/async", json!({ "script": script, "args": args }))
            .await
    }

    /// `#id`'s `data-<name>` attribute.
    pub async fn data(&self, id: &str, name: &str) -> String {
        let value = self
            .execute(
                "const e = document.getElementById(arguments[0]); return e ? (e.dataset[arguments[1]] ?? '') : '';",
                json!([id, name]),
            )
            .await;
        value.as_str().unwrap_or_default().to_string()
    }

    /// Waits until `#id`'s `data-<name>` is `wanted` (the page sets these when an answer is in);
    /// fails with the element's text if it never is.
    pub async fn wait_for_data(&self, id: &str, name: &str, wanted: &str) {
        let deadline = Instant::now() + UI_WAIT;
        loop {
            if self.data(id, name).await == wanted {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "#{id} data-{name} never became {wanted:?}: it is {:?}, showing {:?}",
                    self.data(id, name).await,
                    self.text(id).await
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The cookies WebDriver lists for the current document (those its address would be sent).
    pub async fn cookies(&self) -> Vec<Value> {
        self.get("/cookie")
            .await
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Opens a new tab and switches to it; returns the handle of the tab left.
    pub async fn open_tab(&self) -> String {
        let previous = self.get("/window").await;
        let opened = self.post("/window/new", json!({"type": "tab"})).await;
        self.post("/window", json!({ "handle": opened["handle"] }))
            .await;
        previous.as_str().expect("a window handle").to_string()
    }

    /// Closes the current tab and switches back to `handle`.
    pub async fn close_tab(&self, handle: &str) {
        self.command(reqwest::Method::DELETE, "/window", None).await;
        self.post("/window", json!({ "handle": handle })).await;
    }

    /// Ends the session (Chromium exits; chromedriver goes with the drop).
    pub async fn quit(self) {
        let _ = self.client.delete(&self.session).send().await;
    }
}
