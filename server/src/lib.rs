//! Glimpse server library: the engine loop, the gRPC service and its metrics; the binary adds the
//! CLI, which dispatches `bench` to `glimpse-bench` and the offline jobs to `glimpse-jobs`.

pub mod engine_loop;
pub mod grpc;
pub mod metrics;
