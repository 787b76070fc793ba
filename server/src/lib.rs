//! Glimpse server library: the engine loop, the load-test client and the eval report; the binary
//! adds the CLI.

pub mod bench;
pub mod engine_loop;
pub mod eval;
pub mod grpc;
pub mod metrics;
pub mod progress;
