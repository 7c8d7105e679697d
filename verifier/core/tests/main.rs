//! One integration-test binary (each file under tests/ would be its own binary and link again).

mod shared;

mod ed25519;
mod gate;
mod properties;
mod revocation;
mod rfc_vectors;
mod verify;
