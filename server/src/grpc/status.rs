//! The one mapping from a refused or failed request to a gRPC status: every `Status` the service
//! sends is built here, and counted and logged through [`crate::refusal`].

use std::sync::Arc;

use tonic::Status;

use crate::error::RequestError;
use crate::refusal;

/// The gRPC status for a refused or failed request: its canonical code and its message.
pub fn status_of(error: RequestError) -> Status {
    Status::new(error.code(), error.to_string())
}

/// [`status_of`], counted and logged: what a handler returns or streams for a refusal of the
/// request `request_id`. The status carries the error as its source: that is how
/// [`super::decode_refusals`] tells a handler's refusal from one tonic built itself.
pub fn refused(request_id: &str, error: RequestError) -> Status {
    refusal::record(request_id, &error);
    let mut status = status_of(error.clone());
    status.set_source(Arc::new(error));
    status
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;

    #[test]
    fn each_refusal_keeps_its_code_and_message() {
        let cases = [
            (
                RequestError::invalid("max_tokens", "must be at least 1, got 0"),
                Code::InvalidArgument,
                "invalid `max_tokens`: must be at least 1, got 0",
            ),
            (
                RequestError::AtCapacity { max_in_flight: 3 },
                Code::ResourceExhausted,
                "the server is at its limit of 3 requests in flight (running + waiting); retry later",
            ),
            (
                RequestError::Draining,
                Code::Unavailable,
                "the server is shutting down",
            ),
            (
                RequestError::Dropped,
                Code::Internal,
                "the engine dropped the request",
            ),
            (
                RequestError::DeadlineExceeded,
                Code::DeadlineExceeded,
                "the request's deadline passed",
            ),
        ];
        for (error, code, message) in cases {
            let status = status_of(error);
            assert_eq!((status.code(), status.message()), (code, message));
        }
    }
}
