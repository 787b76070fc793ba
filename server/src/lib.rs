//! Glimpse server library: the engine loop, the one request validator and its error, the gRPC
//! service, the load-test client and the eval report; the binary adds the CLI.

pub mod bench;
pub mod engine_loop;
pub mod error;
pub mod eval;
pub mod grpc;
pub mod metrics;
pub mod progress;
pub mod validation;
