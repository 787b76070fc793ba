//! Why a request was refused or failed: the one error every refusal of the server produces, from
//! admission and header parsing through validation to the engine loop, on either wire. Its
//! canonical code ([`RequestError::code`], gRPC's code set) is what gRPC sends and what both wires
//! count and log under ([`crate::refusal`]); each wire maps it to its own status in one place
//! (gRPC: [`crate::grpc::status_of`], HTTP: `http::error`). Messages name the field, the limit and
//! the value, and are the same text on both wires.

use std::borrow::Cow;

use tonic::Code;

/// Why a request was refused or failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RequestError {
    /// A parameter is out of range; names the field, the allowed range and the value.
    #[error("invalid `{field}`: {message}")]
    InvalidParameter {
        field: Cow<'static, str>,
        message: String,
    },
    /// The request cannot be read at all (a malformed header, text the tokenizer refuses); the
    /// message says what and where.
    #[error("{message}")]
    Malformed { message: String },
    /// The prompt and `max_tokens` do not fit the model or the KV pool.
    #[error("{message}")]
    TooLong { message: String },
    /// The engine failed while running the request (a bug or a device failure).
    #[error("internal error: {message}")]
    Internal { message: String },
    /// The engine loop ended the request's stream without a final event.
    #[error("the engine dropped the request")]
    Dropped,
    /// The request asks for something this engine was not started with (LookaheadKV without
    /// a lookahead module).
    #[error("{message}")]
    NotConfigured { message: String },
    /// The server holds `max_in_flight` requests already.
    #[error(
        "the server is at its limit of {max_in_flight} requests in flight (running + waiting); retry later"
    )]
    AtCapacity { max_in_flight: usize },
    /// The deadline the client set passed before the response ended.
    #[error("the request's deadline passed")]
    DeadlineExceeded,
    /// The request names a model this server does not serve.
    #[error("the model `{requested}` does not exist; this server serves `{served}`")]
    UnknownModel { requested: String, served: String },
    /// No endpoint at this method and path (HTTP).
    #[error("no endpoint {method} {path}")]
    UnknownRoute { method: String, path: String },
    /// The request body is larger than the server takes.
    #[error(
        "the request body is larger than the limit of {limit_bytes} bytes (--http-max-body-bytes)"
    )]
    BodyTooLarge { limit_bytes: usize },
    /// A gRPC request message is larger than the server takes; `detail` is tonic's account of
    /// the size found.
    #[error(
        "the request message is larger than the limit of {limit_bytes} bytes (--max-message-bytes): {detail}"
    )]
    MessageTooLarge { limit_bytes: usize, detail: String },
    /// A request with this id is in flight already; ids are unique among live requests.
    #[error("a request with id `{request_id}` is already in flight; request ids must be unique")]
    DuplicateRequestId { request_id: String },
    /// The request does not present the bearer token of `--auth-token-file`.
    #[error(
        "missing or wrong bearer token: send `authorization: Bearer <token>` with the token of \
         the server's --auth-token-file"
    )]
    Unauthenticated,
    /// The server is draining for shutdown and admits no new requests.
    #[error("the server is shutting down")]
    Draining,
    /// The engine is shutting down and takes no new requests.
    #[error("the engine is shutting down")]
    ShuttingDown,
}

impl RequestError {
    /// An out-of-range parameter: `field` is the name the wire gives it.
    pub fn invalid(field: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        RequestError::InvalidParameter {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The canonical code of this refusal (gRPC's code set): the gRPC wire sends it, and both
    /// wires count (`glimpse_request_errors_total{code}`) and log failures under its name.
    pub fn code(&self) -> Code {
        match self {
            RequestError::InvalidParameter { .. }
            | RequestError::Malformed { .. }
            | RequestError::TooLong { .. } => Code::InvalidArgument,
            RequestError::NotConfigured { .. } => Code::FailedPrecondition,
            RequestError::UnknownModel { .. } | RequestError::UnknownRoute { .. } => Code::NotFound,
            RequestError::BodyTooLarge { .. } => Code::OutOfRange,
            RequestError::AtCapacity { .. } | RequestError::MessageTooLarge { .. } => {
                Code::ResourceExhausted
            }
            RequestError::DuplicateRequestId { .. } => Code::AlreadyExists,
            RequestError::DeadlineExceeded => Code::DeadlineExceeded,
            RequestError::Internal { .. } | RequestError::Dropped => Code::Internal,
            RequestError::Draining | RequestError::ShuttingDown => Code::Unavailable,
            RequestError::Unauthenticated => Code::Unauthenticated,
        }
    }

    /// An engine validation error as the client's fault (`InvalidParameter`, naming the field);
    /// anything else the engine reports is internal.
    pub fn from_engine(error: glimpse_engine::EngineError) -> Self {
        match error {
            glimpse_engine::EngineError::InvalidParameter { field, message } => {
                RequestError::invalid(field, message)
            }
            other => RequestError::Internal {
                message: other.to_string(),
            },
        }
    }

    /// An engine error as a request the server cannot read, with the engine's message.
    pub fn malformed(error: glimpse_engine::EngineError) -> Self {
        RequestError::Malformed {
            message: error.to_string(),
        }
    }
}
