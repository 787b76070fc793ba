//! `glimpse health`: asks a server's standard `grpc.health.v1` service whether it is SERVING
//! (exit 0) or not (exit 1). Container health checks use it, as no `grpc_health_probe` ships.

use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

#[derive(Args)]
pub struct HealthArgs {
    /// Server address, e.g. http://127.0.0.1:50051.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    endpoint: String,
    /// Service to ask about; empty means the whole server.
    #[arg(long, default_value = "")]
    service: String,
    /// Seconds to wait for an answer.
    #[arg(long, default_value_t = 5)]
    timeout_secs: u64,
}

pub fn run(args: HealthArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(args.endpoint.clone())?
            .timeout(Duration::from_secs(args.timeout_secs))
            .connect()
            .await
            .with_context(|| format!("connecting to {}", args.endpoint))?;
        let status = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: args.service.clone(),
            })
            .await?
            .into_inner()
            .status();
        println!("{}", status.as_str_name());
        if status != ServingStatus::Serving {
            bail!("{} is {}", args.endpoint, status.as_str_name());
        }
        Ok(())
    })
}
