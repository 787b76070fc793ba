//! The bearer-token check of the HTTP API and the metrics port (`--auth-token-file`): every path
//! but `/health` (which probes ask without headers) needs `Authorization: Bearer <token>`; without
//! it the answer is 401 in OpenAI's error shape with `WWW-Authenticate: Bearer`, counted and
//! logged like every refusal.

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use crate::auth::BearerToken;
use crate::error::RequestError;
use crate::refusal::new_request_id;

/// The path that stays open.
const EXEMPT: &str = "/health";

/// `router` with the token required on every path but `/health`; unchanged without a token.
pub fn require_token(router: Router, token: Option<BearerToken>) -> Router {
    let Some(token) = token else {
        return router;
    };
    router.layer(middleware::from_fn(move |request: Request, next: Next| {
        let allowed = request.uri().path() == EXEMPT
            || token.accepts(
                request
                    .headers()
                    .get(header::AUTHORIZATION)
                    .map(HeaderValue::as_bytes),
            );
        async move {
            if allowed {
                return next.run(request).await;
            }
            let mut response: Response = ApiError {
                request_id: new_request_id("auth"),
                error: RequestError::Unauthenticated,
            }
            .into_response();
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            response
        }
    }))
}
