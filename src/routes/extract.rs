//! Extractors whose rejections come out as problem responses, and the caller's
//! identity from the Authorization header.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRef, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use serde::de::DeserializeOwned;

use crate::auth::Scope;
use crate::error::ApiError;
use crate::state::AuthState;

/// `Json` whose rejections are problems: 400 syntax, 413 too large, 415 wrong
/// content type, 422 wrong shape.
pub struct AppJson<T>(pub T);

impl<S, T> FromRequest<S> for AppJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Self(v)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(r: JsonRejection) -> ApiError {
    let text = r.body_text();
    match r.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge(text),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType(text),
        StatusCode::UNPROCESSABLE_ENTITY => ApiError::Validation(text),
        _ => ApiError::BadRequest(text),
    }
}

/// `Query` whose rejection is a 422 problem.
pub struct AppQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for AppQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Self(v)),
            Err(r @ QueryRejection::FailedToDeserializeQueryString(_)) => {
                Err(ApiError::Validation(r.body_text()))
            }
            Err(r) => Err(ApiError::BadRequest(r.body_text())),
        }
    }
}

/// The authenticated caller. Extracting it is what makes a route require a key.
pub struct Caller(pub Scope);

impl<S> FromRequestParts<S> for Caller
where
    AuthState: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let auth = AuthState::from_ref(state);
        let Some(keys) = auth.keys else {
            return Ok(Caller(Scope::Admin));
        };
        let token = bearer(&parts.headers).ok_or(ApiError::Unauthorized)?;
        keys.lookup(token).map(Caller).ok_or(ApiError::Unauthorized)
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The version named by `If-Match: "<version>"`; `None` when absent or `*`.
/// A tag that is not one of our versions can never match: 412.
pub fn if_match(headers: &HeaderMap) -> Result<Option<i32>, ApiError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let stale =
        || ApiError::PreconditionFailed("If-Match does not name a version of this context".into());
    let value = value.to_str().map_err(|_| stale())?.trim();
    if value == "*" {
        return Ok(None);
    }
    let tag = value.split(',').next().unwrap_or_default().trim();
    let tag = tag.strip_prefix("W/").unwrap_or(tag);
    let version = tag
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .and_then(|t| t.parse::<i32>().ok())
        .ok_or_else(stale)?;
    Ok(Some(version))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with(name: header::HeaderName, v: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_static(v));
        h
    }

    #[test]
    fn if_match_reads_strong_and_weak_versions() {
        assert_eq!(if_match(&HeaderMap::new()).unwrap(), None);
        assert_eq!(if_match(&with(header::IF_MATCH, "*")).unwrap(), None);
        assert_eq!(if_match(&with(header::IF_MATCH, "\"3\"")).unwrap(), Some(3));
        assert_eq!(
            if_match(&with(header::IF_MATCH, "W/\"4\"")).unwrap(),
            Some(4)
        );
        assert!(if_match(&with(header::IF_MATCH, "abc")).is_err());
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_needs_a_token() {
        assert_eq!(
            bearer(&with(header::AUTHORIZATION, "bearer k1")),
            Some("k1")
        );
        assert_eq!(bearer(&with(header::AUTHORIZATION, "Bearer ")), None);
        assert_eq!(bearer(&with(header::AUTHORIZATION, "Basic abc")), None);
    }
}
