//! `glimpse health`: asks a server's standard `grpc.health.v1` service whether it is SERVING
//! (exit 0) or not (exit 1). Container health checks use it, as no `grpc_health_probe` ships.
//! An `https://` endpoint (a server with `--tls-cert-file`) is verified against `--tls-ca-file`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
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
    /// PEM certificate (or CA) that signed the server's TLS certificate, for an `https://`
    /// endpoint.
    #[arg(long)]
    tls_ca_file: Option<PathBuf>,
    /// Seconds to wait for an answer.
    #[arg(long, default_value_t = 5)]
    timeout_secs: u64,
}

pub fn run(args: HealthArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut endpoint = Endpoint::from_shared(args.endpoint.clone())?
            .timeout(Duration::from_secs(args.timeout_secs));
        if let Some(ca) = &args.tls_ca_file {
            let pem = std::fs::read(ca)
                .with_context(|| format!("reading --tls-ca-file {}", ca.display()))?;
            endpoint = endpoint
                .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))?;
        }
        let channel = endpoint
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
