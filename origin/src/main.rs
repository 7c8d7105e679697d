//! `origin`: serve (default), or one of the admin commands `create-tables`, `keys rotate`,
//! `keys list`, `set-scopes`. Configuration comes from `EDGEAUTH_*`
//! variables and an optional `EDGEAUTH_CONFIG` file; see the README.

use std::process::ExitCode;

use anyhow::Context;
use edgeauth_origin::{app::app, bootstrap, config::Config};
use tracing_subscriber::EnvFilter;

const USAGE: &str =
    "usage: origin [serve | create-tables | keys rotate | keys list | set-scopes <email> <scope>...]  (configuration: EDGEAUTH_* variables, see README)";

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let command = std::env::args().nth(1);
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("origin: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match command.as_deref() {
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
    axum::serve(
        listener,
        app(state).into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown_signal())
    .await
    .context("server failed")
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
