//! The standard `grpc.health.v1.Health` service, answered from the one health state that
//! [`Admission`] owns: the whole server (`""`, which probes and `glimpse health` ask) and
//! `glimpse.v1.Generation` always report the same status, SERVING only between the end of
//! warm-up and the start of draining. Other service names are NOT_FOUND.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::{Health as HealthApi, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

use crate::admission::{Admission, Health};

/// The service names health answers for.
const SERVICES: [&str; 2] = ["", "glimpse.v1.Generation"];

/// gRPC health over the admission's state.
pub struct HealthService {
    admission: Arc<Admission>,
}

/// The health service for `admission`'s state.
pub fn service(admission: Arc<Admission>) -> HealthServer<HealthService> {
    HealthServer::new(HealthService { admission })
}

fn response(health: Health) -> HealthCheckResponse {
    let status = match health {
        Health::Serving => ServingStatus::Serving,
        Health::Starting | Health::Draining | Health::Stopped => ServingStatus::NotServing,
    };
    HealthCheckResponse {
        status: status.into(),
    }
}

fn known(service: &str) -> Result<(), Status> {
    if SERVICES.contains(&service) {
        Ok(())
    } else {
        Err(Status::not_found(format!(
            "unknown service `{service}`; health answers for \"\" and glimpse.v1.Generation"
        )))
    }
}

#[tonic::async_trait]
impl HealthApi for HealthService {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        known(&request.get_ref().service)?;
        Ok(Response::new(response(self.admission.health())))
    }

    type WatchStream = ReceiverStream<Result<HealthCheckResponse, Status>>;

    /// The status now, then each change until the client leaves.
    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        known(&request.get_ref().service)?;
        let mut health = self.admission.watch_health();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            loop {
                let now = *health.borrow_and_update();
                if tx.send(Ok(response(now))).await.is_err() || health.changed().await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
