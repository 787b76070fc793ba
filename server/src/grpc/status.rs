//! The one mapping from a refused or failed request to a gRPC status: every `Status` the service
//! sends is built here, and counted by code (`glimpse_request_errors_total{code}`).

use tonic::{Code, Status};

use crate::error::RequestError;
use crate::metrics::record_error;

/// The gRPC status for a refused or failed request.
pub fn status_of(error: RequestError) -> Status {
    let message = error.to_string();
    match error {
        RequestError::InvalidParameter { .. }
        | RequestError::Malformed { .. }
        | RequestError::TooLong { .. } => Status::invalid_argument(message),
        RequestError::NotConfigured { .. } => Status::failed_precondition(message),
        RequestError::AtCapacity { .. } => Status::resource_exhausted(message),
        RequestError::DeadlineExceeded => Status::deadline_exceeded(message),
        RequestError::Internal { .. } | RequestError::Dropped => Status::internal(message),
        RequestError::Draining | RequestError::ShuttingDown => Status::unavailable(message),
    }
}

/// [`status_of`], counted by code: what a handler returns or streams for a refusal.
pub fn refused(error: RequestError) -> Status {
    let status = status_of(error);
    record_error(code_label(status.code()));
    status
}

fn code_label(code: Code) -> &'static str {
    match code {
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::Unavailable => "UNAVAILABLE",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Cancelled => "CANCELLED",
        _ => "INTERNAL",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_refusal_keeps_its_code_and_message() {
        let cases = [
            (
                RequestError::InvalidParameter {
                    field: "max_tokens",
                    message: "must be at least 1, got 0".into(),
                },
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
