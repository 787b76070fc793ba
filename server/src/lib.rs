//! Glimpse server library: the engine loop, the one request validator and its error, the gRPC
//! service and its metrics; the binary adds the CLI, which dispatches `bench` to `glimpse-bench`
//! and the offline jobs to `glimpse-jobs`.

pub mod engine_loop;
pub mod error;
pub mod grpc;
pub mod metrics;
pub mod stats_log;
pub mod validation;
