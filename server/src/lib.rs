//! Glimpse server library: the engine loop, and (in the binary) the CLI, gRPC service and metrics.

pub mod engine_loop;
