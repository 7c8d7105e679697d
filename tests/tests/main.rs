//! One end-to-end test binary (each file under tests/ would be its own binary and link again).

mod edge;
mod envoy;
mod lambda;
mod revocation;
mod telemetry;
mod worker;
