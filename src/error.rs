//! The one error type of the HTTP edge. Every failure becomes an RFC 9457
//! `application/problem+json` response here, in one `match`. Internal details
//! are logged, never sent.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::domain::ValidationError;
use crate::embeddings::EmbedError;
use crate::service::ServiceError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("malformed request: {0}")]
    BadRequest(String),
    #[error("missing or invalid API key")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("not found")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("conflict: {0}")]
    Conflict(String),
    /// A create names a key that a live context of the user has.
    #[error("key in use: {0}")]
    KeyTaken(String),
    #[error("precondition failed: {0}")]
    PreconditionFailed(String),
    #[error("request body too large: {0}")]
    PayloadTooLarge(String),
    #[error("unsupported media type: {0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    Validation(String),
    #[error("overloaded: {0}")]
    Overloaded(&'static str),
    /// Over this key's rate limit; retry after this many seconds.
    #[error("rate limited for {0} s")]
    RateLimited(u64),
    #[error("dependency unavailable: {0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

/// An RFC 9457 problem: every error answer's body (`application/problem+json`).
#[derive(Serialize, utoipa::ToSchema)]
pub struct Problem<'a> {
    /// `urn:context-api:problem:<slug>`, one per kind of failure.
    #[serde(rename = "type")]
    #[schema(example = "urn:context-api:problem:validation")]
    kind: String,
    #[schema(example = "Invalid request")]
    title: &'a str,
    /// The HTTP status, repeated.
    #[schema(example = 422)]
    status: u16,
    /// What went wrong with this request, for a person to read.
    detail: String,
}

/// How loudly a failure is logged.
#[derive(Clone, Copy)]
enum Log {
    /// The client's mistake.
    Debug,
    /// Refused for a dependency or load: worth a look when it repeats.
    Warn,
    /// The server's fault.
    Error,
}

/// Everything the edge says about one error.
struct Spec {
    status: StatusCode,
    slug: &'static str,
    title: &'static str,
    /// What the client may read. Internal causes stay in the logs.
    detail: String,
    /// Seconds, for a Retry-After header.
    retry_after: Option<u64>,
    log: Log,
}

impl ApiError {
    /// The one mapping from an error to its response.
    fn spec(&self) -> Spec {
        use ApiError::*;
        use StatusCode as S;
        let (status, slug, title, detail, retry_after, log) = match self {
            BadRequest(d) => (
                S::BAD_REQUEST,
                "bad-request",
                "Malformed request",
                d.clone(),
                None,
                Log::Debug,
            ),
            Unauthorized => (
                S::UNAUTHORIZED,
                "unauthorized",
                "Authentication required",
                "send Authorization: Bearer <api key>".into(),
                None,
                Log::Debug,
            ),
            Forbidden(d) => (
                S::FORBIDDEN,
                "forbidden",
                "Forbidden",
                d.clone(),
                None,
                Log::Debug,
            ),
            NotFound => (
                S::NOT_FOUND,
                "not-found",
                "Not found",
                "no such resource".into(),
                None,
                Log::Debug,
            ),
            MethodNotAllowed => (
                S::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
                "this route does not accept that method".into(),
                None,
                Log::Debug,
            ),
            Conflict(d) => (
                S::CONFLICT,
                "conflict",
                "Conflict",
                d.clone(),
                Some(1),
                Log::Debug,
            ),
            KeyTaken(d) => (
                S::CONFLICT,
                "key-taken",
                "Key in use",
                d.clone(),
                None,
                Log::Debug,
            ),
            PreconditionFailed(d) => (
                S::PRECONDITION_FAILED,
                "precondition-failed",
                "Precondition failed",
                d.clone(),
                None,
                Log::Debug,
            ),
            PayloadTooLarge(d) => (
                S::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                "Request body too large",
                d.clone(),
                None,
                Log::Debug,
            ),
            UnsupportedMediaType(d) => (
                S::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
                d.clone(),
                None,
                Log::Debug,
            ),
            Validation(d) => (
                S::UNPROCESSABLE_ENTITY,
                "validation",
                "Invalid request",
                d.clone(),
                None,
                Log::Debug,
            ),
            Overloaded(what) => (
                S::SERVICE_UNAVAILABLE,
                "overloaded",
                "Service overloaded",
                format!("{what}; retry later"),
                Some(1),
                Log::Warn,
            ),
            RateLimited(secs) => (
                S::TOO_MANY_REQUESTS,
                "rate-limited",
                "Too many requests",
                format!("this key is over its rate limit; retry in {secs} s"),
                Some(*secs),
                Log::Debug,
            ),
            Unavailable(_) => (
                S::SERVICE_UNAVAILABLE,
                "unavailable",
                "Dependency unavailable",
                "a required dependency is unavailable; retry later".into(),
                Some(5),
                Log::Warn,
            ),
            Internal(_) => (
                S::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal server error",
                "the server failed to handle the request".into(),
                None,
                Log::Error,
            ),
        };
        Spec {
            status,
            slug,
            title,
            detail,
            retry_after,
            log,
        }
    }

    /// The status and the RFC 9457 body of this error, for a response or for
    /// one item of a batch.
    pub fn problem(&self) -> (StatusCode, serde_json::Value) {
        let spec = self.spec();
        (spec.status, Self::body(&spec))
    }

    fn body(spec: &Spec) -> serde_json::Value {
        let body = Problem {
            kind: format!("urn:context-api:problem:{}", spec.slug),
            title: spec.title,
            status: spec.status.as_u16(),
            detail: spec.detail.clone(),
        };
        serde_json::to_value(&body).expect("problems always serialize")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let spec = self.spec();
        match spec.log {
            Log::Error => tracing::error!(error = %self, "request failed"),
            Log::Warn => tracing::warn!(error = %self, "request refused"),
            Log::Debug => tracing::debug!(error = %self, "request rejected"),
        }
        let mut resp = (
            spec.status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/problem+json"),
            )],
            Self::body(&spec).to_string(),
        )
            .into_response();
        let headers = resp.headers_mut();
        if spec.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(secs) = spec.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> Self {
        ApiError::Validation(e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(_) => ApiError::Unavailable(e.to_string()),
            StoreError::Database(_) => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::NotFound => ApiError::NotFound,
            ServiceError::KeyTaken => ApiError::KeyTaken(e.to_string()),
            ServiceError::Forbidden(why) => ApiError::Forbidden(why.into()),
            ServiceError::PreconditionFailed => ApiError::PreconditionFailed(e.to_string()),
            ServiceError::Store(s) => s.into(),
            // The upstream's own words stay in the logs: they may echo input
            // or describe the upstream's internals.
            ServiceError::Embedding(EmbedError::Rejected(why)) => {
                tracing::warn!(upstream = %why, "the embedding service refused a query text");
                ApiError::Validation("query: the embedding service refused this text".into())
            }
            ServiceError::Embedding(e) => ApiError::Unavailable(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upstream_refusal_never_reaches_the_client() {
        let upstream = "HTTP 413 Payload Too Large: {\"error\":\"batch size 40 > maximum allowed 32\",\"secret\":\"tei-internal\"}";
        let e = ApiError::from(ServiceError::Embedding(EmbedError::Rejected(
            upstream.into(),
        )));
        let (status, body) = e.problem();
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        let shown = body.to_string();
        assert!(
            !shown.contains("tei-internal") && !shown.contains("413"),
            "{shown}"
        );
    }
}
