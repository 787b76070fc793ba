//! Glimpse server library: the engine loop, the one request validator and its error, admission
//! and prompt handling shared by both wires, the gRPC service and the OpenAI-compatible HTTP API,
//! and metrics; the binary adds the CLI, which dispatches `bench` to `glimpse-bench` and the
//! offline jobs to `glimpse-jobs`. [`fuzz`] holds the request fuzz targets (docs/fuzzing.md).

pub mod admission;
pub mod auth;
pub mod engine_loop;
pub mod error;
pub mod fuzz;
pub mod grpc;
pub mod health;
pub mod http;
pub mod metrics;
pub mod net;
pub mod outbox;
pub mod prompt;
pub mod refusal;
pub mod stats_log;
pub mod validation;
