//! The one mapping from a refused or failed request to an HTTP response: OpenAI's error shape
//! `{"error": {"message", "type", "param", "code"}}` with the status of [`http_status`]; the
//! message is the gRPC wire's text for the same [`RequestError`]. Every error response and every
//! error streamed mid-response is counted and logged here, through [`crate::refusal`].

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::json_response;
use crate::error::RequestError;
use crate::refusal::{self, code_name};

/// A refusal of request `request_id`, as a handler returns it.
#[derive(Debug)]
pub struct ApiError {
    pub request_id: String,
    pub error: RequestError,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        json_response(
            http_status(&self.error),
            &error_body(&self.request_id, &self.error),
        )
    }
}

/// The HTTP status of a refusal.
pub fn http_status(error: &RequestError) -> StatusCode {
    match error {
        RequestError::InvalidParameter { .. }
        | RequestError::Malformed { .. }
        | RequestError::TooLong { .. }
        | RequestError::NotConfigured { .. } => StatusCode::BAD_REQUEST,
        RequestError::UnknownModel { .. } | RequestError::UnknownRoute { .. } => {
            StatusCode::NOT_FOUND
        }
        RequestError::BodyTooLarge { .. } | RequestError::MessageTooLarge { .. } => {
            StatusCode::PAYLOAD_TOO_LARGE
        }
        RequestError::AtCapacity { .. } => StatusCode::TOO_MANY_REQUESTS,
        RequestError::DuplicateRequestId { .. } => StatusCode::CONFLICT,
        RequestError::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        RequestError::Internal { .. } | RequestError::Dropped => StatusCode::INTERNAL_SERVER_ERROR,
        RequestError::Draining | RequestError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        RequestError::Unauthenticated => StatusCode::UNAUTHORIZED,
    }
}

/// The error object of a refusal, counted and logged once: the body of an error response, or
/// the `data:` of an error streamed after the response started.
pub fn error_body(request_id: &str, error: &RequestError) -> Value {
    refusal::record(request_id, error);
    let status = http_status(error);
    let kind = if status.is_server_error() {
        "server_error"
    } else {
        "invalid_request_error"
    };
    let param = match error {
        RequestError::InvalidParameter { field, .. } => Some(field.as_ref()),
        RequestError::UnknownModel { .. } => Some("model"),
        _ => None,
    };
    let code = match error {
        RequestError::UnknownModel { .. } => "model_not_found".to_string(),
        RequestError::Unauthenticated => "invalid_api_key".to_string(),
        _ => code_name(error.code()).to_lowercase(),
    };
    json!({"error": {"message": error.to_string(), "type": kind, "param": param, "code": code}})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invalid_parameter_is_a_400_naming_it_with_the_grpc_message() {
        let error = RequestError::invalid("temperature", "must be finite and >= 0, got -1");
        assert_eq!(http_status(&error), StatusCode::BAD_REQUEST);
        let body = error_body("cmpl-1", &error);
        assert_eq!(body["error"]["param"], "temperature");
        assert_eq!(body["error"]["message"], error.to_string());
        assert_eq!(body["error"]["code"], "invalid_argument");
    }

    #[test]
    fn capacity_draining_and_bugs_get_their_own_statuses() {
        let cases = [
            (RequestError::AtCapacity { max_in_flight: 2 }, 429),
            (RequestError::Draining, 503),
            (RequestError::Dropped, 500),
            (RequestError::BodyTooLarge { limit_bytes: 10 }, 413),
            (RequestError::Unauthenticated, 401),
            (
                RequestError::UnknownModel {
                    requested: "gpt-4".into(),
                    served: "stories260K".into(),
                },
                404,
            ),
        ];
        for (error, status) in cases {
            assert_eq!(http_status(&error).as_u16(), status, "{error:?}");
        }
    }
}
