//! Refusals tonic makes before any handler runs, given the gRPC convention's codes and counted.
//! tonic answers a request message it cannot decode (malformed protobuf, a `string` field that is
//! not UTF-8, no message at all) with INTERNAL — the server-fault code that alerts fire on — and
//! one over the size limit with OUT_OF_RANGE, and neither is counted in
//! `glimpse_request_errors_total`. [`DecodeRefusals`], around the Generation service, turns such a
//! status into the matching [`RequestError`] (INVALID_ARGUMENT, RESOURCE_EXHAUSTED) and refuses
//! the request through [`refused`] like any other. A handler's own refusals carry their
//! [`RequestError`] as the status's source and pass unchanged.

use std::convert::Infallible;
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::codegen::{BoxFuture, Service, http};
use tonic::server::NamedService;
use tonic::{Code, Status};

use super::status::refused;
use crate::error::RequestError;
use crate::refusal::new_request_id;

/// A gRPC service whose decode refusals are remapped and counted; its messages are limited to
/// `max_message_bytes` (the limit the refusal names).
#[derive(Clone)]
pub struct DecodeRefusals<S> {
    inner: S,
    max_message_bytes: usize,
}

impl<S> DecodeRefusals<S> {
    pub fn new(inner: S, max_message_bytes: usize) -> Self {
        Self {
            inner,
            max_message_bytes,
        }
    }
}

impl<S: NamedService> NamedService for DecodeRefusals<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for DecodeRefusals<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let response = self.inner.call(request);
        let limit_bytes = self.max_message_bytes;
        Box::pin(async move {
            let response = response.await?;
            Ok(match tonic_refusal(&response, limit_bytes) {
                Some(error) => refused(&new_request_id("grpc"), error).into_http(),
                None => response,
            })
        })
    }
}

/// The refusal behind a status tonic built itself (one without a [`RequestError`] source), if
/// it is a decode failure.
fn tonic_refusal(response: &http::Response<Body>, limit_bytes: usize) -> Option<RequestError> {
    let status = response.extensions().get::<Status>()?;
    let from_handler = std::error::Error::source(status).is_some_and(|s| s.is::<RequestError>());
    if from_handler {
        return None;
    }
    match status.code() {
        Code::OutOfRange => Some(RequestError::MessageTooLarge {
            limit_bytes,
            detail: status.message().to_string(),
        }),
        Code::Internal => Some(RequestError::Malformed {
            message: format!(
                "the request message cannot be decoded: {}",
                status.message()
            ),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response_of(status: Status) -> http::Response<Body> {
        status.into_http()
    }

    #[test]
    fn tonic_decode_statuses_become_the_conventional_codes() {
        let malformed = tonic_refusal(&response_of(Status::internal("invalid wire type")), 9);
        assert_eq!(
            malformed.map(|e| (e.code(), e.to_string())),
            Some((
                Code::InvalidArgument,
                "the request message cannot be decoded: invalid wire type".to_string()
            ))
        );
        let large = tonic_refusal(&response_of(Status::out_of_range("found 20 bytes")), 9);
        assert_eq!(
            large.map(|e| (e.code(), e.to_string())),
            Some((
                Code::ResourceExhausted,
                "the request message is larger than the limit of 9 bytes (--max-message-bytes): \
                 found 20 bytes"
                    .to_string()
            ))
        );
    }

    #[test]
    fn a_handlers_refusal_and_a_success_pass_unchanged() {
        let dropped = refused("req-1", RequestError::Dropped);
        assert!(tonic_refusal(&response_of(dropped), 9).is_none());
        let ok = http::Response::new(Body::empty());
        assert!(tonic_refusal(&ok, 9).is_none());
    }
}
