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
    #[error("dependency unavailable: {0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: String,
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        use ApiError::*;
        match self {
            BadRequest(_) => (StatusCode::BAD_REQUEST, "bad-request", "Malformed request"),
            Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Authentication required",
            ),
            Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden", "Forbidden"),
            NotFound => (StatusCode::NOT_FOUND, "not-found", "Not found"),
            MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
            ),
            PreconditionFailed(_) => (
                StatusCode::PRECONDITION_FAILED,
                "precondition-failed",
                "Precondition failed",
            ),
            PayloadTooLarge(_) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                "Request body too large",
            ),
            UnsupportedMediaType(_) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
            ),
            Validation(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation",
                "Invalid request",
            ),
            Overloaded(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                "Service overloaded",
            ),
            Unavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Dependency unavailable",
            ),
            Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal server error",
            ),
        }
    }

    /// What the client may read. Internal causes stay in the logs.
    fn detail(&self) -> String {
        use ApiError::*;
        match self {
            BadRequest(d)
            | Forbidden(d)
            | PreconditionFailed(d)
            | PayloadTooLarge(d)
            | UnsupportedMediaType(d)
            | Validation(d) => d.clone(),
            Unauthorized => "send Authorization: Bearer <api key>".into(),
            NotFound => "no such resource".into(),
            MethodNotAllowed => "this route does not accept that method".into(),
            Overloaded(what) => format!("{what}; retry later"),
            Unavailable(_) => "a required dependency is unavailable; retry later".into(),
            Internal(_) => "the server failed to handle the request".into(),
        }
    }
}

impl ApiError {
    /// The status and the RFC 9457 body of this error, for a response or for
    /// one item of a batch.
    pub fn problem(&self) -> (StatusCode, serde_json::Value) {
        let (status, slug, title) = self.parts();
        let body = Problem {
            kind: format!("urn:context-api:problem:{slug}"),
            title,
            status: status.as_u16(),
            detail: self.detail(),
        };
        (
            status,
            serde_json::to_value(&body).expect("problems always serialize"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            ApiError::Internal(_) => tracing::error!(error = %self, "request failed"),
            ApiError::Unavailable(_) | ApiError::Overloaded(_) => {
                tracing::warn!(error = %self, "request refused")
            }
            _ => tracing::debug!(error = %self, "request rejected"),
        }
        let (status, body) = self.problem();
        let mut resp = (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/problem+json"),
            )],
            body.to_string(),
        )
            .into_response();
        let headers = resp.headers_mut();
        match self {
            ApiError::Unauthorized => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::Overloaded(_) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ApiError::Unavailable(_) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            }
            _ => {}
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
            ServiceError::Forbidden(why) => ApiError::Forbidden(why.into()),
            ServiceError::PreconditionFailed { expected } => ApiError::PreconditionFailed(format!(
                "If-Match version {expected} is not the current version"
            )),
            ServiceError::Store(s) => s.into(),
            ServiceError::Embedding(EmbedError::Rejected(why)) => {
                ApiError::Validation(format!("query text: {why}"))
            }
            ServiceError::Embedding(e) => ApiError::Unavailable(e.to_string()),
        }
    }
}
