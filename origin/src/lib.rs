//! # edgeauth-origin
//!
//! The service public clients call to register, log in, refresh and log out. It is stateless:
//! users and refresh tokens live in DynamoDB (dynoxide in-process in the embedded default), so
//! instances scale out behind a load balancer.

pub mod api;
pub mod app;
pub mod audit;
pub mod auth;
pub mod bootstrap;
pub mod clock;
pub mod config;
pub mod cors;
pub mod deny_list;
pub mod edge_push;
pub mod error;
pub mod feed_appender;
pub mod feed_tail;
pub mod key_encryption;
pub mod key_rotation;
pub mod keys;
pub mod mail;
pub mod metrics;
pub mod mfa;
pub mod outbound;
pub mod password;
pub mod rate_limit;
pub mod server;
pub mod soft_lock;
pub mod state;
pub mod store;
pub mod telemetry;
