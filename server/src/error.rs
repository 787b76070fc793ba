//! Why a request was refused or failed: the one error every refusal of the server produces, from
//! admission and header parsing through validation to the engine loop. Each wire maps it in one
//! place (gRPC: [`crate::grpc::status_of`]); messages name the field, the limit and the value.

/// Why a request was refused or failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RequestError {
    /// A parameter is out of range; names the field, the allowed range and the value.
    #[error("invalid `{field}`: {message}")]
    InvalidParameter {
        field: &'static str,
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
    /// The server is draining for shutdown and admits no new requests.
    #[error("the server is shutting down")]
    Draining,
    /// The engine is shutting down and takes no new requests.
    #[error("the engine is shutting down")]
    ShuttingDown,
}

impl RequestError {
    /// An engine validation error as the client's fault (`InvalidParameter`, naming the field);
    /// anything else the engine reports is internal.
    pub fn from_engine(error: glimpse_engine::EngineError) -> Self {
        match error {
            glimpse_engine::EngineError::InvalidParameter { field, message } => {
                RequestError::InvalidParameter { field, message }
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
