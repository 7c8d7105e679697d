//! The AWS Lambda Runtime API, as much of it as a function uses (`invocation/next`, `response`,
//! `error`, `init/error`), so the origin runs as a Lambda function here: the real runtime crate
//! in the real binary, polling this for API Gateway events. A stand-in for an AWS service, not
//! for one of the project's own parts.

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Router,
};
use serde_json::{json, Value};
use tokio::sync::{oneshot, Notify};

#[derive(Default)]
struct Invocations {
    /// Events not yet taken by the function, with where their answer goes.
    waiting: VecDeque<(String, Value, oneshot::Sender<Value>)>,
    /// Answers owed, by request id.
    owed: HashMap<String, oneshot::Sender<Value>>,
    /// Error reports (`init/error`, `invocation/{id}/error`).
    errors: Vec<Value>,
}

#[derive(Clone, Default)]
struct Runtime {
    invocations: Arc<Mutex<Invocations>>,
    arrived: Arc<Notify>,
}

/// A running Runtime API on a loopback port.
#[derive(Clone)]
pub struct LambdaRuntimeApi {
    runtime: Runtime,
    /// `host:port`, the value of `AWS_LAMBDA_RUNTIME_API`.
    pub address: String,
}

impl std::fmt::Debug for LambdaRuntimeApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LambdaRuntimeApi")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

async fn next(State(runtime): State<Runtime>) -> Response {
    loop {
        let notified = runtime.arrived.notified();
        let taken = {
            let mut invocations = runtime.invocations.lock().expect("not poisoned");
            invocations.waiting.pop_front().map(|(id, event, answer)| {
                invocations.owed.insert(id.clone(), answer);
                (id, event)
            })
        };
        if let Some((id, event)) = taken {
            let mut headers = HeaderMap::new();
            let deadline = edgeauth_origin::clock::now_millis() + 30_000;
            for (name, value) in [
                ("lambda-runtime-aws-request-id", id),
                ("lambda-runtime-deadline-ms", deadline.to_string()),
                (
                    "lambda-runtime-invoked-function-arn",
                    "arn:aws:lambda:us-east-1:000000000000:function:edgeauth-origin".to_string(),
                ),
                (
                    "lambda-runtime-trace-id",
                    "Root=1-00000000-000000000000000000000000".to_string(),
                ),
            ] {
                headers.insert(name, HeaderValue::from_str(&value).expect("header"));
            }
            return (StatusCode::OK, headers, event.to_string()).into_response();
        }
        notified.await;
    }
}

async fn respond(
    State(runtime): State<Runtime>,
    Path(id): Path<String>,
    body: Bytes,
) -> StatusCode {
    let answer = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let owed = runtime
        .invocations
        .lock()
        .expect("not poisoned")
        .owed
        .remove(&id);
    match owed {
        Some(sender) => {
            let _ = sender.send(answer);
            StatusCode::ACCEPTED
        }
        None => StatusCode::BAD_REQUEST,
    }
}

async fn report_error(State(runtime): State<Runtime>, body: Bytes) -> StatusCode {
    let report = serde_json::from_slice(&body).unwrap_or(Value::Null);
    runtime
        .invocations
        .lock()
        .expect("not poisoned")
        .errors
        .push(report);
    StatusCode::ACCEPTED
}

impl LambdaRuntimeApi {
    /// Serves the Runtime API on a free loopback port.
    pub async fn start() -> Self {
        let runtime = Runtime::default();
        let router = Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next))
            .route(
                "/2018-06-01/runtime/invocation/{id}/response",
                post(respond),
            )
            .route(
                "/2018-06-01/runtime/invocation/{id}/error",
                post(report_error),
            )
            .route("/2018-06-01/runtime/init/error", post(report_error))
            .with_state(runtime.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address: SocketAddr = listener.local_addr().expect("address");
        tokio::spawn(async move { axum::serve(listener, router).await });
        Self {
            runtime,
            address: address.to_string(),
        }
    }

    /// Queues `event` for the function and waits for its answer (at most `timeout`).
    pub async fn invoke(&self, event: Value, timeout: Duration) -> Option<Value> {
        let (answer, answered) = oneshot::channel();
        let id = uuid::Uuid::new_v4().to_string();
        self.runtime
            .invocations
            .lock()
            .expect("not poisoned")
            .waiting
            .push_back((id, event, answer));
        // One poller: a permit is kept if it is not waiting yet.
        self.runtime.arrived.notify_one();
        tokio::time::timeout(timeout, answered).await.ok()?.ok()
    }

    /// The error reports the function sent.
    pub fn errors(&self) -> Vec<Value> {
        self.runtime
            .invocations
            .lock()
            .expect("not poisoned")
            .errors
            .clone()
    }

    /// The environment the Lambda service gives a function.
    pub fn environment(&self) -> Vec<(String, String)> {
        [
            ("AWS_LAMBDA_RUNTIME_API", self.address.as_str()),
            ("AWS_LAMBDA_FUNCTION_NAME", "edgeauth-origin"),
            ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST"),
            ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "1024"),
            ("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/edgeauth-origin"),
            ("AWS_LAMBDA_LOG_STREAM_NAME", "local"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }
}

/// Headers as an event carries them: a JSON object, names in lower case.
fn event_headers(headers: &[(&str, &str)]) -> serde_json::Map<String, Value> {
    headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), json!(v)))
        .collect()
}

/// An API Gateway HTTP API (payload 2.0) event for `method path` from `source_ip`.
pub fn http_api_event(
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
    source_ip: &str,
) -> Value {
    let headers = event_headers(headers);
    let now = edgeauth_origin::clock::now_millis();
    json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": "",
        "headers": headers,
        "requestContext": {
            "accountId": "000000000000",
            "apiId": "e2e",
            "domainName": "auth.e2e.test",
            "domainPrefix": "auth",
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": source_ip,
                "userAgent": "edgeauth-e2e"
            },
            "requestId": uuid::Uuid::new_v4().to_string(),
            "routeKey": "$default",
            "stage": "$default",
            "time": "29/Nov/2026:00:00:00 +0000",
            "timeEpoch": now
        },
        "body": body.map(Value::to_string),
        "isBase64Encoded": false
    })
}

/// An Application Load Balancer target-group event for `method path`: no source address, the
/// connecting address appended to `X-Forwarded-For` as ALBs do.
pub fn alb_event(
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> Value {
    let headers = event_headers(headers);
    json!({
        "requestContext": {
            "elb": {
                "targetGroupArn": "arn:aws:elasticloadbalancing:eu-west-1:000000000000:targetgroup/e2e/0123456789abcdef"
            }
        },
        "httpMethod": method,
        "path": path,
        "queryStringParameters": {},
        "headers": headers,
        "body": body.map(Value::to_string).unwrap_or_default(),
        "isBase64Encoded": false
    })
}

/// The origin binary as a Lambda function, on its own dynoxide, behind a Runtime API.
#[derive(Debug)]
pub struct LambdaOrigin {
    _turn: tokio::sync::MutexGuard<'static, ()>,
    /// The Runtime API the function polls.
    pub api: LambdaRuntimeApi,
    child: tokio::process::Child,
    redis: tokio::process::Child,
    dir: std::path::PathBuf,
    /// When the process was started.
    pub started: Instant,
}

/// The configuration of a Lambda origin: shared storage, as a function has no disk to keep.
fn lambda_origin_env(dir: &std::path::Path, dynamodb: &str, redis: &str) -> Vec<(String, String)> {
    [
        ("EDGEAUTH_STORAGE", "dynamodb".to_string()),
        ("EDGEAUTH_DYNAMODB_ENDPOINT", dynamodb.to_string()),
        ("EDGEAUTH_REDIS_DENYLIST_URL", redis.to_string()),
        ("EDGEAUTH_TABLE_PREFIX", "lambda-".to_string()),
        ("EDGEAUTH_ISSUER", crate::ISSUER.to_string()),
        ("EDGEAUTH_AUDIENCE", crate::AUDIENCE.to_string()),
        ("EDGEAUTH_DATA_DIR", dir.join("data").display().to_string()),
        (
            "EDGEAUTH_SIGNING_KEYS",
            json!({"encryption": {"backend": "local", "key": crate::TEST_KEK}}).to_string(),
        ),
        ("RUST_LOG", "warn".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// A fresh dynoxide with the origin's tables made (`origin create-tables`) and a redis-server for
/// the deny-list (kept running while the returned child lives); the origin's configuration for
/// them.
pub async fn shared_storage(
    dir: &std::path::Path,
    origin: &std::path::Path,
) -> (Vec<(String, String)>, tokio::process::Child) {
    std::fs::create_dir_all(dir).expect("scratch directory");
    let dynamodb = crate::start_dynamodb(dir).await;
    let (redis_child, redis) = crate::start_redis(dir).await;
    let env = lambda_origin_env(dir, &dynamodb, &redis);
    let tables = tokio::process::Command::new(origin)
        .arg("create-tables")
        .envs(env.clone())
        .output()
        .await
        .expect("the origin runs");
    assert!(tables.status.success(), "{tables:?}");
    (env, redis_child)
}

impl LambdaOrigin {
    /// Creates the tables, then starts the function: it initialises and polls for events.
    pub async fn start(origin: &std::path::Path) -> Self {
        let turn = crate::exclusive().await;
        let dir = std::env::temp_dir().join(format!("edgeauth-lambda-{}", uuid::Uuid::new_v4()));
        let (env, redis) = shared_storage(&dir, origin).await;
        let api = LambdaRuntimeApi::start().await;
        let log = std::fs::File::create(dir.join("lambda.log")).expect("log file");
        let started = Instant::now();
        let child = tokio::process::Command::new(origin)
            .envs(env)
            .envs(api.environment())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("the origin starts");
        Self {
            _turn: turn,
            api,
            child,
            redis,
            dir,
            started,
        }
    }

    /// Invokes the function with an HTTP API event; its API Gateway response.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Value {
        let event = http_api_event(method, path, headers, body, "203.0.113.9");
        self.invoke(event).await
    }

    /// Invokes the function with any event; its response.
    pub async fn invoke(&self, event: Value) -> Value {
        match self
            .api
            .invoke(event.clone(), Duration::from_secs(30))
            .await
        {
            Some(answer) => answer,
            None => panic!(
                "no answer to {event}; errors {:?}; log:\n{}",
                self.api.errors(),
                std::fs::read_to_string(self.dir.join("lambda.log")).unwrap_or_default()
            ),
        }
    }
}

impl Drop for LambdaOrigin {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.redis.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
