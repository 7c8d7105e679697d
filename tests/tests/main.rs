//! One end-to-end test binary (each file under tests/ would be its own binary and link again).

/// Mounts each scenario once per edge, as rustls mounts its API tests once per provider.
macro_rules! on_every_edge {
    ($($scenario:ident),* $(,)?) => {
        mod worker {
            $(#[tokio::test]
            async fn $scenario() {
                super::$scenario(edgeauth_e2e::Edge::Worker).await
            })*
        }
        mod envoy {
            $(#[tokio::test]
            async fn $scenario() {
                super::$scenario(edgeauth_e2e::Edge::Envoy).await
            })*
        }
        mod envoy_native {
            $(#[tokio::test]
            async fn $scenario() {
                super::$scenario(edgeauth_e2e::Edge::EnvoyNative).await
            })*
        }
    };
}

mod browser;
mod edge;
mod envoy;
mod fleet;
mod lambda;
mod revocation;
mod telemetry;
mod worker;
