//! `origin`: serve (default), or one of the admin commands `create-tables`, `keys rotate`,
//! `keys list`, `set-scopes`. Configuration comes from `EDGEAUTH_*`
//! variables and an optional `EDGEAUTH_CONFIG` file; see the README.

use std::process::ExitCode;

use anyhow::Context;
use edgeauth_origin::{app::app, bootstrap, config::Config, telemetry};

const USAGE: &str =
    "usage: origin [serve | create-tables | keys rotate | keys list | set-scopes <email> <scope>...]  (configuration: EDGEAUTH_* variables, see README)";

fn main() -> ExitCode {
    let command = std::env::args().nth(1);
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("origin: {e}");
            return ExitCode::from(2);
        }
    };
    // Logging and the span exporter start before the runtime and stop after it (see telemetry).
    let telemetry = match telemetry::init(config.otlp_traces_endpoint.as_deref()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("origin: {e}");
            return ExitCode::from(2);
        }
    };
    let code = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(run(command, config)),
        Err(e) => {
            eprintln!("origin: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    };
    telemetry.shutdown();
    code
}

async fn run(command: Option<String>, config: Config) -> ExitCode {
    let result = match command.as_deref() {
        // The Lambda runtime sets AWS_LAMBDA_RUNTIME_API: the same origin, behind API Gateway.
        None | Some("serve") if std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some() => {
            serve_lambda(config).await
        }
        None | Some("serve") => serve(config).await,
        Some("create-tables") => bootstrap::create_tables_command(&config).await,
        Some("keys") => match std::env::args().nth(2).as_deref() {
            Some("rotate") => bootstrap::rotate_keys_command(config).await,
            Some("list") => bootstrap::list_keys_command(config).await,
            _ => {
                eprintln!("origin: keys needs `rotate` or `list`\n{USAGE}");
                return ExitCode::from(2);
            }
        },
        Some("set-scopes") => {
            let args: Vec<String> = std::env::args().skip(2).collect();
            match args.split_first() {
                Some((email, scopes)) => bootstrap::set_scopes_command(config, email, scopes).await,
                None => {
                    eprintln!("origin: set-scopes needs an email and its scopes\n{USAGE}");
                    return ExitCode::from(2);
                }
            }
        }
        Some("-h" | "--help") => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Some(other) => {
            eprintln!("origin: unknown command `{other}`\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "origin stopped");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let listen = config.listen;
    let state = bootstrap::build_state(config).await?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot bind {listen}"))?;
    tracing::info!(address = %listener.local_addr()?, "origin listening");
    // The peer address is the client's when `client_ip` is `peer` (rate limits).
    let timeouts = state.config.server_timeouts;
    edgeauth_origin::server::serve(listener, app(state), timeouts, shutdown_signal()).await;
    Ok(())
}

/// As an AWS Lambda function behind API Gateway (REST or HTTP API) or an ALB: each invocation's
/// event becomes a request to the same router. API Gateway's source address stands in for the
/// TCP peer (`client_ip: peer`), and the audit events of a request are stored before its answer
/// goes, since the environment may be frozen right after.
async fn serve_lambda(config: Config) -> anyhow::Result<()> {
    use lambda_http::{request::RequestContext, RequestExt};
    use tower::ServiceExt as _;

    let state = bootstrap::build_state(config).await?;
    let audit = state.audit.clone();
    let router = app(state);
    tracing::info!("origin serving Lambda invocations");
    let handler = lambda_http::service_fn(move |request: lambda_http::Request| {
        let (router, audit) = (router.clone(), audit.clone());
        async move {
            let source = match request.request_context_ref() {
                Some(RequestContext::ApiGatewayV2(context)) => context.http.source_ip.clone(),
                Some(RequestContext::ApiGatewayV1(context)) => context.identity.source_ip.clone(),
                // An ALB passes no source address. It appends the address that connected to it
                // to X-Forwarded-For, as the last entry, which no client can forge: that is
                // the peer (what `client_ip: peer` reads). Entries before it are the client's.
                Some(RequestContext::Alb(_)) => {
                    edgeauth_origin::rate_limit::forwarded_for_hops(request.headers())
                        .next_back()
                        .map(str::to_owned)
                }
                _ => None,
            };
            let (mut parts, body) = request.into_parts();
            if let Some(ip) = source.and_then(|ip| ip.parse::<std::net::IpAddr>().ok()) {
                parts
                    .extensions
                    .insert(axum::extract::ConnectInfo(std::net::SocketAddr::new(ip, 0)));
            }
            let request =
                axum::http::Request::from_parts(parts, axum::body::Body::from(body.to_vec()));
            let response = router.oneshot(request).await?;
            let (parts, body) = response.into_parts();
            let bytes = http_body_util::BodyExt::collect(body).await?.to_bytes();
            audit.flush().await;
            let body = match String::from_utf8(bytes.to_vec()) {
                Ok(text) if text.is_empty() => lambda_http::Body::Empty,
                Ok(text) => lambda_http::Body::Text(text),
                Err(binary) => lambda_http::Body::Binary(binary.into_bytes()),
            };
            Ok::<_, lambda_http::Error>(lambda_http::Response::from_parts(parts, body))
        }
    });
    lambda_http::run(handler)
        .await
        .map_err(|e| anyhow::anyhow!("Lambda runtime: {e}"))
}

/// Ctrl-C, or SIGTERM: what container runtimes, Kubernetes and ECS send to stop a task. In-flight
/// requests finish first.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
