//! Glimpse server library: the engine loop and the load-test client; the binary adds the CLI.

pub mod bench;
pub mod engine_loop;
pub mod grpc;
pub mod metrics;
pub mod progress;
