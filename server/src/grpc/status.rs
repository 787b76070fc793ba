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

/// The canonical name of every gRPC code, so each is counted under its own label: a
/// FAILED_PRECONDITION counted as INTERNAL would fire the server-fault alert.
fn code_label(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
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

    /// A decode failure reaches the wire as `StreamEvent::Error(Internal)`, which the handler
    /// sends through `refused`; no tokenizer here fails to decode, so the error is built by hand.
    #[test]
    fn a_decode_failure_is_counted_as_internal() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let status = metrics::with_local_recorder(&recorder, || {
            refused(RequestError::Internal {
                message: "the generated tokens could not be decoded: bad byte".into(),
            })
        });
        assert_eq!(status.code(), Code::Internal);
        assert!(
            handle
                .render()
                .contains("glimpse_request_errors_total{code=\"INTERNAL\"} 1"),
            "{}",
            handle.render()
        );
    }

    #[test]
    fn every_code_is_counted_under_its_own_canonical_name() {
        let codes = (0..=16).map(Code::from_i32);
        let labels: Vec<&str> = codes.clone().map(code_label).collect();
        let unique: std::collections::HashSet<_> = labels.iter().collect();
        assert_eq!(unique.len(), 17, "{labels:?}");
        assert_eq!(code_label(Code::FailedPrecondition), "FAILED_PRECONDITION");
        for (code, label) in codes.zip(&labels) {
            // tonic's Debug is the CamelCase name: INVALID_ARGUMENT <-> InvalidArgument.
            let camel: String = label
                .split('_')
                .map(|w| w[..1].to_string() + &w[1..].to_lowercase())
                .collect();
            assert_eq!(format!("{code:?}"), camel);
        }
    }
}
