//! Cold start of the origin as a Lambda function against the long-running server: from process
//! start to the first answered request (`GET /healthz`), on the same shared storage (dynoxide,
//! tables made before the clock starts), median of
//! several starts. `scripts/bench lambda` runs it on the release binary and writes
//! `bench-results/lambda.md`; the figure is a ratio measured in one run.
//!
//! Usage: cold_start <origin binary> [runs]

use std::time::{Duration, Instant};

use edgeauth_e2e::lambda::{shared_storage, LambdaOrigin};

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

async fn lambda_cold_start(origin: &std::path::Path) -> f64 {
    let function = LambdaOrigin::start(origin).await;
    let answer = function.call("GET", "/healthz", &[], None).await;
    let took = function.started.elapsed();
    assert_eq!(answer["statusCode"], 200, "{answer}");
    took.as_secs_f64() * 1000.0
}

async fn server_cold_start(origin: &std::path::Path) -> f64 {
    let dir = std::env::temp_dir().join(format!("edgeauth-cold-{}", uuid::Uuid::new_v4()));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a port")
        .port();
    let (env, _redis) = shared_storage(&dir, origin).await;
    let client = reqwest::Client::new();
    let started = Instant::now();
    let mut child = tokio::process::Command::new(origin)
        .envs(env)
        .env("EDGEAUTH_LISTEN", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .expect("the origin starts");
    let url = format!("http://127.0.0.1:{port}/healthz");
    let took = loop {
        if let Ok(answer) = client.get(&url).send().await {
            if answer.status().is_success() {
                break started.elapsed();
            }
        }
        assert!(started.elapsed() < Duration::from_secs(30), "no answer");
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let _ = child.kill().await;
    let _ = std::fs::remove_dir_all(dir);
    took.as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let origin = std::path::PathBuf::from(args.next().expect("usage: cold_start <origin> [runs]"));
    let runs: usize = args.next().map_or(5, |n| n.parse().expect("runs"));
    let (mut lambda, mut server) = (Vec::new(), Vec::new());
    // Interleaved, so drift in the machine's load touches both alike.
    for _ in 0..runs {
        lambda.push(lambda_cold_start(&origin).await);
        server.push(server_cold_start(&origin).await);
    }
    let (lambda, server) = (median(lambda), median(server));
    println!("| mode | process start to first answer, ms (median of {runs}) |");
    println!("|---|---:|");
    println!("| long-running server (first `/healthz` answer, polled every 1 ms) | {server:.1} |");
    println!(
        "| Lambda function (first invocation answered through the Runtime API) | {lambda:.1} |"
    );
    println!();
    println!("Lambda ÷ server: **{:.2}**", lambda / server);
}
