//! The one place a failed request is counted and logged, for both wires: counted in
//! `glimpse_request_errors_total{code}` under its canonical code name ([`RequestError::code`]),
//! logged once with its request id, code and message — at INFO when the client is at fault (or
//! the server is busy or stopping), at WARN when the server is.

use tonic::Code;

use crate::error::RequestError;
use crate::metrics::record_error;

/// Counts and logs a refused or failed request; each wire calls it once per failure.
pub fn record(request_id: &str, error: &RequestError) {
    let code = error.code();
    record_error(code_name(code));
    if matches!(code, Code::Internal | Code::Unknown | Code::DataLoss) {
        tracing::warn!(request_id, code = code_name(code), %error, "request failed");
    } else {
        tracing::info!(request_id, code = code_name(code), %error, "request refused");
    }
}

/// A fresh request id (`<prefix>-` and 24 hex digits) for a request that brought none.
pub fn new_request_id(prefix: &str) -> String {
    format!("{prefix}-{:024x}", rand::random::<u128>() >> 32)
}

/// The canonical name of every gRPC code, so each is counted under its own label: a
/// FAILED_PRECONDITION counted as INTERNAL would fire the server-fault alert.
pub fn code_name(code: Code) -> &'static str {
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
    fn every_code_is_counted_under_its_own_canonical_name() {
        let codes = (0..=16).map(Code::from_i32);
        let labels: Vec<&str> = codes.clone().map(code_name).collect();
        let unique: std::collections::HashSet<_> = labels.iter().collect();
        assert_eq!(unique.len(), 17, "{labels:?}");
        assert_eq!(code_name(Code::FailedPrecondition), "FAILED_PRECONDITION");
        for (code, label) in codes.zip(&labels) {
            // tonic's Debug is the CamelCase name: INVALID_ARGUMENT <-> InvalidArgument.
            let camel: String = label
                .split('_')
                .map(|w| w[..1].to_string() + &w[1..].to_lowercase())
                .collect();
            assert_eq!(format!("{code:?}"), camel);
        }
    }

    #[test]
    fn request_ids_carry_their_prefix_and_differ() {
        let (a, b) = (new_request_id("cmpl"), new_request_id("cmpl"));
        assert!(a.starts_with("cmpl-") && a.len() == 5 + 24, "{a}");
        assert_ne!(a, b);
    }

    /// A decode failure reaches the wire as `StreamEvent::Error(Internal)`, which each wire
    /// records here; no tokenizer here fails to decode, so the error is built by hand.
    #[test]
    fn a_decode_failure_is_counted_as_internal() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            record(
                "req-1",
                &RequestError::Internal {
                    message: "the generated tokens could not be decoded: bad byte".into(),
                },
            )
        });
        assert!(
            handle
                .render()
                .contains("glimpse_request_errors_total{code=\"INTERNAL\"} 1"),
            "{}",
            handle.render()
        );
    }
}
