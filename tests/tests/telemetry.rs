//! Traces from the real origin binary to an OTLP/HTTP receiver served by the test: the spans a
//! collector would get, with the request id a log line carries.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{body::Bytes, extract::State, routing::post, Router};
use edgeauth_e2e::origin_binary;
use serde_json::{json, Value};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Every span received, flattened: (name, traceId, attributes as a JSON object).
fn spans(batches: &[Value]) -> Vec<(String, String, serde_json::Map<String, Value>)> {
    let mut out = Vec::new();
    for batch in batches {
        for resource in batch["resourceSpans"].as_array().into_iter().flatten() {
            for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
                for span in scope["spans"].as_array().into_iter().flatten() {
                    let attributes = span["attributes"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|a| {
                            let value = a["value"].as_object()?.values().next()?.clone();
                            Some((a["key"].as_str()?.to_string(), value))
                        })
                        .collect();
                    out.push((
                        span["name"].as_str().unwrap_or("").to_string(),
                        span["traceId"].as_str().unwrap_or("").to_string(),
                        attributes,
                    ));
                }
            }
        }
    }
    out
}

#[tokio::test]
async fn requests_and_their_store_calls_are_one_trace_over_otlp() {
    let _turn = edgeauth_e2e::exclusive().await;
    // The collector: OTLP/HTTP with JSON bodies.
    let received: Arc<Mutex<Vec<Value>>> = Arc::default();
    let collector = Router::new()
        .route(
            "/v1/traces",
            post(
                |State(received): State<Arc<Mutex<Vec<Value>>>>, body: Bytes| async move {
                    if let Ok(batch) = serde_json::from_slice(&body) {
                        received.lock().expect("not poisoned").push(batch);
                    }
                    "{}"
                },
            ),
        )
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let collector_address = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, collector).await });

    // A real Redis, so the rate limit and the deny-list make calls to trace.
    let redis_port = free_port();
    let mut redis = tokio::process::Command::new("redis-server")
        .args([
            "--port",
            &redis_port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("redis-server on PATH (scripts/test installs it)");
    let dir = std::env::temp_dir().join(format!("edgeauth-otel-{}", uuid::Uuid::new_v4()));
    let port = free_port();
    let mut origin = tokio::process::Command::new(origin_binary())
        .env("EDGEAUTH_DATA_DIR", dir.join("data"))
        .env("EDGEAUTH_LISTEN", format!("127.0.0.1:{port}"))
        .env(
            "EDGEAUTH_REDIS_DENYLIST_URL",
            format!("redis://127.0.0.1:{redis_port}"),
        )
        .env(
            "EDGEAUTH_OTLP_TRACES_ENDPOINT",
            format!("http://{collector_address}/v1/traces"),
        )
        // The SDK's batch delay, from its standard variable: export within 100 ms.
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .expect("the origin starts");
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let started = Instant::now();
    while client.get(format!("{base}/healthz")).send().await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the origin never listened"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let credentials =
        json!({"email": "otel@example.com", "password": "correct horse battery staple"});
    let registered = client
        .post(format!("{base}/v1/register"))
        .json(&credentials)
        .send()
        .await
        .expect("answers");
    assert_eq!(registered.status(), 201);
    let login = client
        .post(format!("{base}/v1/login"))
        .header("x-request-id", "otel-e2e-login")
        .json(&credentials)
        .send()
        .await
        .expect("answers");
    assert_eq!(login.status(), 200);

    // The login's trace: its request span, and the DynamoDB and Redis calls made under it.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (request_trace, children) = loop {
        let all = spans(&received.lock().expect("not poisoned"));
        let request = all.iter().find(|(name, _, attributes)| {
            name == "request" && attributes.get("request_id") == Some(&json!("otel-e2e-login"))
        });
        if let Some((_, trace, attributes)) = request {
            let children: Vec<_> = all.iter().filter(|(_, t, _)| t == trace).cloned().collect();
            let has = |name: &str| children.iter().any(|(n, _, _)| n == name);
            if has("dynamodb") && has("redis") {
                assert_eq!(attributes.get("http.request.method"), Some(&json!("POST")));
                assert_eq!(attributes.get("url.path"), Some(&json!("/v1/login")));
                let status = attributes
                    .get("http.response.status_code")
                    .map(ToString::to_string);
                assert!(
                    status.as_deref().is_some_and(|s| s.contains("200")),
                    "{attributes:?}"
                );
                break (trace.clone(), children);
            }
        }
        assert!(
            Instant::now() < deadline,
            "no complete login trace in {:#?}",
            all.iter()
                .map(|(n, t, a)| (n, t, a.get("request_id")))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(!request_trace.is_empty());
    let operations: Vec<&Value> = children
        .iter()
        .filter(|(name, _, _)| name == "dynamodb")
        .filter_map(|(_, _, attributes)| attributes.get("db.operation"))
        .collect();
    // Named by the SDK's operation (GetItem, Query, …), never left unknown.
    assert!(
        !operations.is_empty()
            && operations
                .iter()
                .all(|o| o.as_str().is_some_and(|s| !s.is_empty() && s != "unknown")),
        "{operations:?}"
    );
    let connections: Vec<&Value> = children
        .iter()
        .filter(|(name, _, _)| name == "redis")
        .filter_map(|(_, _, attributes)| attributes.get("connection"))
        .collect();
    assert!(
        connections.contains(&&json!("rate_limit")),
        "{connections:?}"
    );

    let _ = origin.kill().await;
    let _ = redis.kill().await;
    let _ = std::fs::remove_dir_all(dir);
}
