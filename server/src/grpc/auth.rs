//! The bearer-token check of the gRPC port (`--auth-token-file`), as an interceptor around the
//! Generation and reflection services; health is not wrapped, so probes need no token. A request
//! without the token is refused with UNAUTHENTICATED, counted and logged like every refusal.

use tonic::service::Interceptor;
use tonic::{Request, Status};

use super::status::refused;
use crate::auth::BearerToken;
use crate::error::RequestError;
use crate::refusal::new_request_id;

/// Lets a request through when no token is configured or it presents the token.
#[derive(Clone)]
pub struct TokenCheck(pub Option<BearerToken>);

impl Interceptor for TokenCheck {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(token) = &self.0 else {
            return Ok(request);
        };
        let presented = request
            .metadata()
            .get("authorization")
            .map(|v| v.as_bytes());
        if token.accepts(presented) {
            Ok(request)
        } else {
            Err(refused(
                &new_request_id("grpc"),
                RequestError::Unauthenticated,
            ))
        }
    }
}
