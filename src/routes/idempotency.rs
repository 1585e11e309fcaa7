//! `Idempotency-Key` on writes (IETF draft-ietf-httpapi-idempotency-key-header):
//! a retry with the same key gets the first answer (status, headers, body)
//! and writes nothing, from any replica, also when the retries race. The
//! answers live in Postgres, beside the rows they describe, for
//! `IDEMPOTENCY_TTL_SECONDS`.
//!
//! - The key is reserved before the write starts. A request that finds it
//!   reserved waits for the first answer (up to the request timeout, then 409).
//! - The same key with another method, path or body: 422.
//! - A first request that wrote nothing (5xx, 408, 409, 429) frees its key, so
//!   its retry runs again. A reservation left unanswered past twice the
//!   request timeout (the replica died) may be taken over.
//! - The write runs in its own task: a client that disconnects does not stop
//!   it halfway, and its answer is recorded.

use std::future::Future;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::time::Instant;

use crate::auth::Scope;
use crate::error::ApiError;
use crate::state::AppState;
use crate::store::{Answer, Recorded, Store};

pub const HEADER: &str = "idempotency-key";
/// Set on a replayed answer.
pub const REPLAYED: &str = "idempotent-replayed";
/// How long a key may be: the draft's keys are UUIDs; room for other schemes.
pub const MAX_KEY_LEN: usize = 255;

/// A request's key, and the fingerprint of what it asks.
pub struct IdempotencyKey {
    pub key: String,
    pub fingerprint: [u8; 32],
}

impl IdempotencyKey {
    /// 1 to 255 visible ASCII characters (the OpenAPI document's pattern).
    pub fn parse(
        value: &HeaderValue,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Result<Self, ApiError> {
        use sha2::{Digest, Sha256};
        let key = value
            .to_str()
            .ok()
            .filter(|k| (1..=MAX_KEY_LEN).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic()))
            .ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "Idempotency-Key must be 1 to {MAX_KEY_LEN} visible ASCII characters (a UUID is best)"
                ))
            })?;
        let mut h = Sha256::new();
        for part in [method.as_bytes(), path.as_bytes(), body] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
        Ok(Self {
            key: key.to_owned(),
            fingerprint: h.finalize().into(),
        })
    }
}

/// Runs `write` once for `key` (or just runs it, without a key).
pub async fn once<F>(
    state: &AppState,
    scope: Scope,
    key: Option<IdempotencyKey>,
    write: F,
) -> Result<Response, ApiError>
where
    F: Future<Output = Result<Response, ApiError>> + Send + 'static,
{
    let Some(key) = key else {
        return write.await;
    };
    let store = state.contexts.store().clone();
    let owner = match scope {
        Scope::Admin => "admin".to_owned(),
        Scope::User(u) => u.0.to_string(),
    };
    let ttl = state.idempotency_ttl;
    let abandoned = state.request_timeout * 2;
    let deadline = Instant::now() + state.request_timeout;
    let mut write = Some(write);
    loop {
        if store
            .reserve_key(&owner, &key.key, &key.fingerprint, ttl, abandoned)
            .await?
        {
            let write = write.take().expect("a key is reserved once per request");
            let task = tokio::spawn(run_and_record(store, owner, key.key, write));
            return task
                .await
                .map_err(|e| ApiError::Internal(format!("idempotent write task: {e}")))?;
        }
        match store.recorded_key(&owner, &key.key).await? {
            Some(Recorded { fingerprint, .. }) if fingerprint != key.fingerprint => {
                return Err(ApiError::Validation(
                    "Idempotency-Key: this key was first used for another request \
                     (method, path or body); use a new key for a new request"
                        .into(),
                ))
            }
            Some(Recorded {
                answer: Some(answer),
                ..
            }) => return Ok(replay(answer)),
            // Still running elsewhere, or freed since: look again shortly.
            _ if Instant::now() >= deadline => {
                return Err(ApiError::Conflict(
                    "a request with this Idempotency-Key is still in progress; retry later".into(),
                ))
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Whether an answer says that nothing was written and a retry may succeed.
fn retryable(status: StatusCode) -> bool {
    status.is_server_error()
        || matches!(
            status,
            StatusCode::REQUEST_TIMEOUT | StatusCode::CONFLICT | StatusCode::TOO_MANY_REQUESTS
        )
}

/// The headers a replay repeats.
const KEPT: [HeaderName; 4] = [
    header::CONTENT_TYPE,
    header::ETAG,
    header::LOCATION,
    header::RETRY_AFTER,
];

async fn run_and_record<F>(
    store: Store,
    owner: String,
    key: String,
    write: F,
) -> Result<Response, ApiError>
where
    F: Future<Output = Result<Response, ApiError>>,
{
    let response = write.await.unwrap_or_else(IntoResponse::into_response);
    if retryable(response.status()) {
        if let Err(e) = store.release_key(&owner, &key).await {
            tracing::warn!(error = %e, "could not free an idempotency key; it lapses after twice the request timeout");
        }
        return Ok(response);
    }
    let (parts, body) = response.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .map_err(|e| ApiError::Internal(format!("buffering an answer: {e}")))?;
    let answer = Answer {
        status: parts.status.as_u16(),
        headers: KEPT
            .iter()
            .filter_map(|name| {
                let v = parts.headers.get(name)?.to_str().ok()?;
                Some((name.as_str().to_owned(), v.to_owned()))
            })
            .collect(),
        body: body.to_vec(),
    };
    if let Err(e) = store.answer_key(&owner, &key, &answer).await {
        // The write is done: answer it. Retries wait, then get 409, until the
        // reservation lapses.
        tracing::warn!(error = %e, "could not record the answer to an idempotent write");
    }
    Ok(Response::from_parts(parts, Body::from(body)))
}

fn replay(answer: Answer) -> Response {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::OK);
    let mut response = (status, answer.body).into_response();
    let headers = response.headers_mut();
    for (name, value) in answer.headers {
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
            headers.insert(name, value);
        }
    }
    headers.insert(REPLAYED, HeaderValue::from_static("true"));
    response
}
