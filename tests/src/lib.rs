//! # edgeauth-e2e
//!
//! Starts the real parts on loopback and drives them over HTTP, as a client would:
//! - the origin binary on its embedded default store (dynoxide in-process);
//! - the Worker in workerd, through `wrangler dev --local` (local Workers KV, Cron Triggers
//!   fired through `/__scheduled`);
//! - a sample upstream that answers with what it received;
//! - a relay in front of the origin's JWKS, feed and the Worker's push route, which a test can
//!   switch off to play an outage or a lost push.
//!
//! `scripts/test` builds the origin and the Worker first and says where they are
//! (`EDGEAUTH_E2E_ORIGIN_BIN`, `EDGEAUTH_E2E_WORKER_MAIN`, `EDGEAUTH_E2E_WRANGLER`). Stacks are
//! started one at a time (a process-wide lock), so parallel test threads never race for the
//! machine's two cores.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use axum::{
    body::Bytes,
    extract::{Request, State},
    http::{HeaderMap, Method, StatusCode},
    response::{IntoResponse, Response},
    Router,
};
use base64ct::{Base64UrlUnpadded, Encoding as _};
use edgeauth_origin::keys::{AccessClaims, KeySet};
use nix::{
    sys::signal::{killpg, Signal},
    unistd::Pid,
};
use serde_json::{json, Value};
use tokio::process::{Child, Command};

/// The issuer and audience every stack uses.
pub const ISSUER: &str = "https://auth.e2e.test";
pub const AUDIENCE: &str = "api.e2e.test";
/// The Worker's deny-list memory in tests: short, so the revocation bound is quick to observe.
pub const DENY_CACHE_SECONDS: u64 = 1;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the repository")
        .to_path_buf()
}

fn artefact(var: &str, default: PathBuf) -> PathBuf {
    let path = std::env::var_os(var).map_or(default, PathBuf::from);
    assert!(
        path.exists(),
        "{} not found ({var}): run ./scripts/test, which builds the origin and the Worker first",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

async fn wait_until_listening(port: u16, child: &mut Child, what: &str, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            let output = std::fs::read_to_string(log).unwrap_or_default();
            panic!("{what} exited with {status} before listening:\n{output}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let output = std::fs::read_to_string(log).unwrap_or_default();
    panic!("{what} did not listen on {port} within 60 s:\n{output}");
}

/// Serialises stacks across test threads.
static ONE_STACK_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Switches shared by the relay and the test.
#[derive(Debug, Default)]
pub struct Switches {
    /// The origin's JWKS answers 503.
    pub jwks_down: AtomicBool,
    /// Pushes from the origin to the Worker are dropped (answered 200, never delivered).
    pub drop_pushes: AtomicBool,
}

#[derive(Clone)]
struct RelayState {
    switches: Arc<Switches>,
    origin: String,
    worker: Arc<std::sync::Mutex<Option<String>>>,
    client: reqwest::Client,
}

/// Forwards to the origin (JWKS, feed) or to the Worker (pushes), unless switched off.
async fn relay(State(state): State<RelayState>, request: Request) -> Response {
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let target = if path.starts_with("/push") {
        if state.switches.drop_pushes.load(Ordering::SeqCst) {
            return StatusCode::OK.into_response();
        }
        let worker = state.worker.lock().expect("not poisoned").clone();
        match worker {
            Some(worker) => format!("{worker}/.edgeauth/revocations"),
            None => return StatusCode::SERVICE_UNAVAILABLE.into_response(),
        }
    } else {
        if path.starts_with("/.well-known/jwks.json")
            && state.switches.jwks_down.load(Ordering::SeqCst)
        {
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
        format!("{}{path}", state.origin)
    };
    let method = request.method().clone();
    let headers = request.headers().clone();
    let body = axum::body::to_bytes(request.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    let mut forwarded = state.client.request(method, target).body(body);
    for name in ["content-type", "authorization"] {
        if let Some(value) = headers.get(name) {
            forwarded = forwarded.header(name, value);
        }
    }
    match forwarded.send().await {
        Ok(answer) => {
            let status = answer.status();
            let mut headers = HeaderMap::new();
            for name in ["content-type", "cache-control"] {
                if let Some(value) = answer.headers().get(name) {
                    headers.insert(name, value.clone());
                }
            }
            let body = answer.bytes().await.unwrap_or_default();
            (status, headers, body).into_response()
        }
        Err(_) => StatusCode::BAD_GATEWAY.into_response(),
    }
}

/// The sample upstream: answers 200 with the method, path, headers and body it received.
async fn echo(method: Method, headers: HeaderMap, request: Request) -> Response {
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let body: Bytes = axum::body::to_bytes(request.into_body(), 16 << 20)
        .await
        .unwrap_or_default();
    let headers: serde_json::Map<String, Value> = headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                json!(v.to_str().unwrap_or("<binary>")),
            )
        })
        .collect();
    axum::Json(json!({
        "method": method.as_str(),
        "path": path,
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    }))
    .into_response()
}

async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, router).await });
    address
}

/// How a stack differs from the default one.
#[derive(Debug, Clone)]
pub struct StackOptions {
    /// The Worker policy's extra fields (JSON object members, with a leading comma).
    pub policy_extra: String,
    /// Extra Worker `[vars]`.
    pub vars: Vec<(String, String)>,
    /// The origin's JWKS `max-age`.
    pub jwks_max_age: u32,
    /// The origin's JWKS is down before the Worker's first fetch.
    pub jwks_down_at_start: bool,
}

impl Default for StackOptions {
    fn default() -> Self {
        Self {
            policy_extra: r#","routes":[{"prefix":"/admin/","scopes":["admin"]}]"#.to_string(),
            vars: Vec::new(),
            jwks_max_age: 300,
            jwks_down_at_start: false,
        }
    }
}

/// One origin, relay, upstream and Worker, stopped when dropped.
#[derive(Debug)]
pub struct Stack {
    _turn: tokio::sync::MutexGuard<'static, ()>,
    dir: PathBuf,
    origin_settings: OriginSettings,
    origin_child: Child,
    worker_child: Child,
    /// The Worker's URL (requests to the API go here).
    pub worker: String,
    /// The origin's URL (log in, log out here).
    pub origin: String,
    /// Outage and lost-push switches.
    pub switches: Arc<Switches>,
    /// For requests.
    pub client: reqwest::Client,
}

impl Stack {
    /// Starts everything with the default options.
    pub async fn start() -> Self {
        Self::start_with(StackOptions::default()).await
    }

    /// Starts everything with these options.
    pub async fn start_with(options: StackOptions) -> Self {
        let turn = ONE_STACK_AT_A_TIME.lock().await;
        let dir = std::env::temp_dir().join(format!("edgeauth-e2e-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("scratch directory");
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");

        let switches = Arc::new(Switches::default());
        switches
            .jwks_down
            .store(options.jwks_down_at_start, Ordering::SeqCst);
        let upstream = serve(Router::new().fallback(echo)).await;

        let origin_port = free_port();
        let origin = format!("http://127.0.0.1:{origin_port}");
        let worker_slot = Arc::new(std::sync::Mutex::new(None));
        let relay_address = serve(Router::new().fallback(relay).with_state(RelayState {
            switches: switches.clone(),
            origin: origin.clone(),
            worker: worker_slot.clone(),
            client: client.clone(),
        }))
        .await;
        let relay_url = format!("http://{relay_address}");

        let origin_settings = OriginSettings {
            port: origin_port,
            push_urls: format!("[\"{relay_url}/push\"]"),
            jwks_max_age: options.jwks_max_age,
        };
        let origin_child = start_origin(&dir, &origin_settings).await;

        let worker_port = free_port();
        let worker = format!("http://127.0.0.1:{worker_port}");
        let policy = format!(
            r#"{{"issuers":["{ISSUER}"],"audiences":["{AUDIENCE}"]{}}}"#,
            options.policy_extra
        );
        let mut vars = vec![
            ("POLICY".to_string(), policy),
            (
                "JWKS_URL".to_string(),
                format!("{relay_url}/.well-known/jwks.json"),
            ),
            (
                "FEED_URL".to_string(),
                format!("{relay_url}/v1/revocations"),
            ),
            ("UPSTREAM_URL".to_string(), format!("http://{upstream}")),
            (
                "DENY_CACHE_SECONDS".to_string(),
                DENY_CACHE_SECONDS.to_string(),
            ),
            ("KEYS_REFETCH_INTERVAL".to_string(), "1".to_string()),
        ];
        vars.extend(options.vars);
        let worker_child = start_worker(&dir, worker_port, &vars).await;
        *worker_slot.lock().expect("not poisoned") = Some(worker.clone());

        Self {
            _turn: turn,
            dir,
            origin_settings,
            origin_child,
            worker_child,
            worker,
            origin,
            switches,
            client,
        }
    }

    /// Restarts the origin on the same data (accounts, keys), as after `origin rotate-key`.
    pub async fn restart_origin(&mut self) {
        let _ = self.origin_child.kill().await;
        self.origin_child = start_origin(&self.dir, &self.origin_settings).await;
    }

    /// Rotates the origin's signing key the way an operator does, then restarts it.
    pub async fn rotate_origin_key(&mut self) -> String {
        let output = Command::new(origin_binary())
            .arg("rotate-key")
            .envs(origin_env(&self.dir, &self.origin_settings))
            .output()
            .await
            .expect("origin rotate-key runs");
        assert!(output.status.success(), "{output:?}");
        self.restart_origin().await;
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    /// The origin's signing keys, read from its key file.
    pub fn origin_keys(&self) -> KeySet {
        KeySet::load(&self.dir.join("data").join("signing-keys.json")).expect("origin key file")
    }

    /// Registers and logs in a fresh account; returns its access token.
    pub async fn login(&self) -> String {
        let email = format!("e2e-{}@example.com", uuid::Uuid::new_v4().simple());
        let credentials = json!({"email": email, "password": "correct horse battery staple"});
        let registered = self
            .client
            .post(format!("{}/v1/register", self.origin))
            .json(&credentials)
            .send()
            .await
            .expect("origin answers");
        assert_eq!(registered.status(), 201);
        let login: Value = self
            .client
            .post(format!("{}/v1/login", self.origin))
            .json(&credentials)
            .send()
            .await
            .expect("origin answers")
            .json()
            .await
            .expect("json");
        login["access_token"]
            .as_str()
            .expect("an access token")
            .to_string()
    }

    /// Logs the token's session out at the origin.
    pub async fn logout(&self, token: &str) {
        let answer = self
            .client
            .post(format!("{}/v1/logout", self.origin))
            .bearer_auth(token)
            .send()
            .await
            .expect("origin answers");
        assert_eq!(answer.status(), 204);
    }

    /// `GET path` through the Worker with `token` as a bearer token (if any).
    pub async fn get(&self, path: &str, token: Option<&str>) -> Answer {
        let mut request = self.client.get(format!("{}{path}", self.worker));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        send(request).await
    }

    /// Fires the Worker's Cron Trigger once (wrangler's `/__scheduled`).
    pub async fn run_cron(&self) {
        let answer = self
            .client
            .get(format!("{}/__scheduled?cron=*+*+*+*+*", self.worker))
            .send()
            .await
            .expect("the Worker answers");
        assert!(answer.status().is_success(), "{}", answer.status());
    }

    /// Mints a token with the origin's current key and these claim changes.
    pub fn mint(&self, changes: &Value) -> String {
        let now = edgeauth_origin::clock::now();
        let mut claims = json!({
            "iss": ISSUER, "aud": AUDIENCE, "sub": uuid::Uuid::new_v4().to_string(),
            "scope": "profile", "iat": now, "exp": now + 600,
            "jti": uuid::Uuid::new_v4().to_string(), "sid": uuid::Uuid::new_v4().to_string(),
            "amr": ["pwd"],
        });
        for (k, v) in changes.as_object().expect("an object of claim changes") {
            claims[k] = v.clone();
        }
        let claims: AccessClaims = serde_json::from_value(claims).expect("access claims");
        self.origin_keys()
            .mint_access_token(&claims)
            .expect("signed")
    }

    /// A token's claims, read without verification (the test already trusts its origin).
    pub fn claims_of(token: &str) -> Value {
        let payload = token.split('.').nth(1).expect("a compact JWS");
        let bytes = Base64UrlUnpadded::decode_vec(payload).expect("base64url");
        serde_json::from_slice(&bytes).expect("JSON claims")
    }

    /// Whether the Worker logs `needle` within five seconds (wrangler writes its log a little
    /// after the answer that caused the line).
    pub async fn worker_logs(&self, needle: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.worker_log().contains(needle) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// Asserts that the Worker logs `needle` within five seconds.
    pub async fn expect_worker_log(&self, needle: &str) {
        assert!(
            self.worker_logs(needle).await,
            "no {needle} in:\n{}",
            self.worker_log()
        );
    }

    /// What the Worker logged so far.
    pub fn worker_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("worker.log")).unwrap_or_default()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = self.origin_child.start_kill();
        // wrangler runs workerd as its child: the process group (led by wrangler) takes both.
        // (Never through the `kill` command: procps reads `kill -TERM -<pgid>` as "every
        // process" on this machine.)
        if let Some(pid) = self
            .worker_child
            .id()
            .and_then(|pid| i32::try_from(pid).ok())
        {
            if pid > 1 {
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn origin_binary() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| repo_root().join("target"), PathBuf::from);
    artefact(
        "EDGEAUTH_E2E_ORIGIN_BIN",
        target.join("debug").join("origin"),
    )
}

/// How the origin of a stack runs (kept for restarts).
#[derive(Debug, Clone)]
struct OriginSettings {
    port: u16,
    push_urls: String,
    jwks_max_age: u32,
}

fn origin_env(dir: &Path, settings: &OriginSettings) -> Vec<(String, String)> {
    [
        ("EDGEAUTH_LISTEN", format!("127.0.0.1:{}", settings.port)),
        ("EDGEAUTH_DATA_DIR", dir.join("data").display().to_string()),
        ("EDGEAUTH_ISSUER", ISSUER.to_string()),
        ("EDGEAUTH_AUDIENCE", AUDIENCE.to_string()),
        ("EDGEAUTH_EDGE_PUSH_URLS", settings.push_urls.clone()),
        (
            "EDGEAUTH_JWKS_MAX_AGE_SECONDS",
            settings.jwks_max_age.to_string(),
        ),
        ("RUST_LOG", "warn".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

async fn start_origin(dir: &Path, settings: &OriginSettings) -> Child {
    let log_path = dir.join("origin.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut child = Command::new(origin_binary())
        .envs(origin_env(dir, settings))
        .stdout(log.try_clone().expect("log file"))
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("the origin starts");
    wait_until_listening(settings.port, &mut child, "the origin", &log_path).await;
    child
}

async fn start_worker(dir: &Path, port: u16, vars: &[(String, String)]) -> Child {
    let main = artefact(
        "EDGEAUTH_E2E_WORKER_MAIN",
        repo_root().join("verifier/worker/build/worker/shim.mjs"),
    );
    let wrangler = artefact(
        "EDGEAUTH_E2E_WRANGLER",
        repo_root().join("node_modules/.bin/wrangler"),
    );
    // The repository's wrangler.toml minus [build] (the Worker is built already: starting from a
    // config with [build] would build it twice) and with the test's vars.
    let mut config = format!(
        "name = \"edgeauth-e2e\"\nmain = {main:?}\ncompatibility_date = \"2026-04-01\"\n\
         [[kv_namespaces]]\nbinding = \"DENYLIST\"\nid = \"e2e\"\n\
         [triggers]\ncrons = [\"* * * * *\"]\n[vars]\n"
    );
    for (name, value) in vars {
        config.push_str(&format!("{name} = {}\n", toml_string(value)));
    }
    let config_path = dir.join("wrangler.toml");
    std::fs::write(&config_path, config).expect("wrangler config");
    let log_path = dir.join("worker.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut command = Command::new(wrangler);
    command
        .args([
            "dev",
            "--local",
            "--ip",
            "127.0.0.1",
            "--port",
            &port.to_string(),
        ])
        .args(["--show-interactive-dev-session=false", "--test-scheduled"])
        .arg("--config")
        .arg(&config_path)
        .arg("--persist-to")
        .arg(dir.join("wrangler-state"))
        .envs([
            ("WRANGLER_SEND_METRICS", "false"),
            ("WRANGLER_SEND_ERROR_REPORTS", "false"),
            ("WRANGLER_HIDE_BANNER", "true"),
            ("CLOUDFLARE_CF_FETCH_ENABLED", "false"),
        ])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log file"))
        .stderr(log)
        .process_group(0)
        .kill_on_drop(true);
    let mut child = command.spawn().expect("wrangler starts");
    wait_until_listening(port, &mut child, "wrangler dev", &log_path).await;
    child
}

/// A TOML basic string.
fn toml_string(value: &str) -> String {
    serde_json::to_string(value).expect("a string serialises")
}

/// An answer, read whole.
#[derive(Debug)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// Headers, names lowercase.
    pub headers: reqwest::header::HeaderMap,
    /// Body as JSON (`Null` if it is not JSON).
    pub json: Value,
}

impl Answer {
    async fn from(response: reqwest::Response) -> Self {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.bytes().await.unwrap_or_default();
        Self {
            status,
            headers,
            json: serde_json::from_slice(&body).unwrap_or(Value::Null),
        }
    }

    /// A response header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Sends `request` through the Worker and reads the answer.
pub async fn send(request: reqwest::RequestBuilder) -> Answer {
    Answer::from(request.send().await.expect("the Worker answers")).await
}
