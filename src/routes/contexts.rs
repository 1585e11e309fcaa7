//! /contexts: create, read, list, update, delete.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::extract::{if_match, whole_number, AppJson, AppQuery, Caller, KeyedJson};
use super::idempotency;
use crate::auth::Scope;
use crate::domain::{
    embedding_text, json_object, storable_instant, text_to_embed, Context, ContextId, ContextKey,
    ContextPatch, ContextType, Cursor, Embedding, EmbeddingStatus, Expiry, JsonObject, ListQuery,
    NewContext, PageLimit, UserId, ValidationError,
};
use crate::error::ApiError;
use crate::state::AppState;

/// A context to store.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateContextRequest {
    /// Optional for a user key (its own user); required for an admin key.
    user_id: Option<Uuid>,
    /// A name of the client's choosing, unique among the user's live
    /// contexts (1 to 1,024 characters, no control characters). A create
    /// whose key is in use is 409; `PUT /contexts` replaces that context.
    /// Required by `PUT /contexts`.
    #[schema(max_length = 1024, min_length = 1)]
    key: Option<String>,
    /// A short label, 1 to 50 characters, no control characters.
    #[schema(example = "conversation")]
    context_type: String,
    /// Any JSON object. `content.text`, when a string, is what gets embedded
    /// unless `text` is given.
    #[schema(value_type = Object)]
    content: Value,
    /// A JSON object, matched by the search's `metadata` filter (containment).
    #[schema(value_type = Option<Object>)]
    metadata: Option<Value>,
    /// When the context stops being visible (years 0001 to 9999). Not with `ttl_seconds`.
    expires_at: Option<DateTime<Utc>>,
    /// Seconds from now until it expires, at most 100 years. Not with `expires_at`.
    #[serde(default, deserialize_with = "whole_number")]
    ttl_seconds: Option<i64>,
    /// The text to embed, instead of the one derived from `content`.
    text: Option<String>,
    /// A vector of exactly `EMBEDDING_DIM` values, not all zero; when given,
    /// nothing is embedded.
    embedding: Option<Vec<f64>>,
}

/// Fields to replace; absent fields keep their value.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchContextRequest {
    context_type: Option<String>,
    #[schema(value_type = Option<Object>)]
    content: Option<Value>,
    #[schema(value_type = Option<Object>)]
    metadata: Option<Value>,
    /// `null` clears the expiry; absent keeps it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<DateTime<Utc>>)]
    expires_at: Option<Option<DateTime<Utc>>>,
    #[serde(default, deserialize_with = "whole_number")]
    ttl_seconds: Option<i64>,
    text: Option<String>,
    embedding: Option<Vec<f64>>,
}

/// Distinguishes a field given as `null` (`Some(None)`) from an absent one (`None`).
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// A stored context. Its `version` is also its ETag.
#[derive(Debug, Serialize, ToSchema)]
pub struct ContextResponse {
    id: Uuid,
    user_id: Uuid,
    /// The client's name for it, or `null`.
    key: Option<String>,
    context_type: String,
    #[schema(value_type = Object)]
    content: JsonObject,
    #[schema(value_type = Object)]
    metadata: JsonObject,
    expires_at: Option<DateTime<Utc>>,
    /// `ready` once the context has its vector, `pending` until the worker embeds it.
    #[schema(value_type = String, pattern = "^(ready|pending)$")]
    embedding_status: EmbeddingStatus,
    /// The embedding service's model that made the vector; `null` while
    /// pending, or when the vector was given by the client.
    embedding_model: Option<String>,
    is_active: bool,
    version: i32,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    /// Only with `?include=embedding`.
    #[serde(skip_serializing_if = "Option::is_none")]
    embedding: Option<Vec<f32>>,
}

impl From<Context> for ContextResponse {
    fn from(c: Context) -> Self {
        Self {
            id: c.id.0,
            user_id: c.user_id.0,
            key: c.key,
            context_type: c.context_type,
            content: c.content,
            metadata: c.metadata,
            expires_at: c.expires_at,
            embedding_status: c.embedding_status,
            embedding_model: c.embedding_model,
            is_active: c.is_active,
            version: c.version,
            created_at: c.created_at,
            updated_at: c.updated_at,
            embedding: c.embedding,
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct GetParams {
    /// `embedding` adds the vector to the answer.
    #[param(pattern = "^(embedding)?$")]
    include: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only this user's contexts (a user key: its own, the default).
    #[param(value_type = Option<Uuid>)]
    user_id: Option<String>,
    context_type: Option<String>,
    /// Only the context of this key (`PUT /contexts`).
    key: Option<String>,
    /// Only contexts whose metadata contains this JSON object, e.g. `{"topic":"food"}`.
    metadata: Option<String>,
    /// `pending`: only contexts whose vector the worker has yet to make (not
    /// yet found by vector or hybrid search); `ready`: only those it has.
    /// Waiting for a load to become searchable: list with `pending` and
    /// `limit=1` until the page is empty.
    #[param(value_type = Option<String>, pattern = "^(pending|ready)$")]
    embedding_status: Option<String>,
    /// 1 to 100, default 20.
    #[param(value_type = Option<i64>, minimum = 1, maximum = 100)]
    limit: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// A page, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct ListResponse {
    items: Vec<ContextResponse>,
    /// Pass as `cursor` for the next page; `null` on the last one.
    next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeleteParams {
    /// Remove the row instead of hiding it.
    hard: Option<bool>,
}

/// `?include=embedding` (or empty: nothing more).
pub fn wants_embedding(include: Option<&str>) -> Result<bool, ApiError> {
    match include.unwrap_or_default() {
        "" => Ok(false),
        "embedding" => Ok(true),
        other => Err(ValidationError::new(
            "include",
            format!("unknown value {other:?}; allowed: embedding"),
        )
        .into()),
    }
}

/// 201 with the context, its `ETag` and its `Location`.
fn created(ctx: Context) -> Response {
    let location = HeaderValue::from_str(&format!("/contexts/{}", ctx.id.0))
        .expect("a UUID path is a valid header");
    with_etag(StatusCode::CREATED, ctx, Some((header::LOCATION, location)))
}

fn with_etag(
    status: StatusCode,
    ctx: Context,
    extra: Option<(header::HeaderName, HeaderValue)>,
) -> Response {
    let etag =
        HeaderValue::from_str(&format!("\"{}\"", ctx.version)).expect("a number is a valid header");
    let mut resp = (
        status,
        [(header::ETAG, etag)],
        Json(ContextResponse::from(ctx)),
    )
        .into_response();
    if let Some((name, value)) = extra {
        resp.headers_mut().insert(name, value);
    }
    resp
}

impl CreateContextRequest {
    pub(super) fn parse(self, scope: Scope, dim: usize) -> Result<NewContext, ValidationError> {
        let user_id = match (self.user_id, scope) {
            (Some(u), _) => UserId(u),
            (None, Scope::User(own)) => own,
            (None, Scope::Admin) => return Err(ValidationError::new("user_id", "is required")),
        };
        let content = json_object("content", self.content)?;
        let metadata = self
            .metadata
            .map(|m| json_object("metadata", m))
            .transpose()?
            .unwrap_or_default();
        let expires_at =
            Expiry::parse(self.expires_at, self.ttl_seconds)?.map(|e| e.resolve(Utc::now()));
        let embedding = self
            .embedding
            .map(|v| Embedding::from_wire("embedding", v, dim))
            .transpose()?;
        let given = self.text.map(|t| text_to_embed("text", t)).transpose()?;
        let text = embedding_text(given.as_deref(), &content);
        if text.trim().is_empty() && embedding.is_none() {
            return Err(ValidationError::new("text", "the text to embed is empty"));
        }
        Ok(NewContext {
            id: ContextId::new(),
            user_id,
            key: self.key.as_deref().map(ContextKey::parse).transpose()?,
            context_type: ContextType::parse(&self.context_type)?,
            content,
            metadata,
            expires_at,
            text,
            embedding,
            embedding_model: None,
        })
    }
}

impl PatchContextRequest {
    pub(super) fn parse(self, dim: usize) -> Result<ContextPatch, ValidationError> {
        let expires_at = match (self.expires_at, self.ttl_seconds) {
            (Some(_), Some(_)) => {
                return Err(ValidationError::new(
                    "expires_at",
                    "give expires_at or ttl_seconds, not both",
                ))
            }
            (Some(at), None) => Some(
                at.map(|at| storable_instant("expires_at", at))
                    .transpose()?,
            ),
            (None, ttl @ Some(_)) => Expiry::parse(None, ttl)?.map(|e| Some(e.resolve(Utc::now()))),
            (None, None) => None,
        };
        Ok(ContextPatch {
            context_type: self
                .context_type
                .as_deref()
                .map(ContextType::parse)
                .transpose()?,
            content: self
                .content
                .map(|c| json_object("content", c))
                .transpose()?,
            metadata: self
                .metadata
                .map(|m| json_object("metadata", m))
                .transpose()?,
            expires_at,
            text: self.text.map(|t| text_to_embed("text", t)).transpose()?,
            embedding: self
                .embedding
                .map(|v| Embedding::from_wire("embedding", v, dim))
                .transpose()?,
        })
    }
}

/// Store a context. Without `embedding`, its text is embedded at once when the
/// embedding service answers in time, else it is stored `pending` and embedded
/// by the worker.
#[utoipa::path(post, path = "/contexts", tag = "contexts",
    params(("Idempotency-Key" = Option<String>, Header, description = IDEMPOTENCY_KEY_DOC)),
    request_body = CreateContextRequest,
    responses(
        (status = 409, description = "A request with this Idempotency-Key is still running (Retry-After), or `key` names a live context of the user (`key-taken`, no Retry-After)", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 201, description = "Created", body = ContextResponse,
            headers(("ETag" = String, description = "The version"), ("Location" = String))),
        (status = 403, description = "A user key writing for another user", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn create_context(
    State(state): State<AppState>,
    Caller(scope): Caller,
    KeyedJson(body, key): KeyedJson<CreateContextRequest>,
) -> Result<Response, ApiError> {
    let contexts = state.contexts.clone();
    idempotency::once(&state, scope, key, async move {
        let new = body.parse(scope, contexts.dim())?;
        Ok(created(contexts.create(scope, new).await?))
    })
    .await
}

/// Create the context of `key`, or replace the one that has it (as a
/// memory store's put does): its fields become the request's, its version
/// grows, its id stays. An expired context's key is free. The text is
/// embedded as a create's is.
#[utoipa::path(put, path = "/contexts", tag = "contexts",
    params(("Idempotency-Key" = Option<String>, Header, description = IDEMPOTENCY_KEY_DOC)),
    request_body = CreateContextRequest,
    responses(
        (status = 200, description = "Replaced", body = ContextResponse, headers(("ETag" = String))),
        (status = 201, description = "Created", body = ContextResponse,
            headers(("ETag" = String, description = "The version"), ("Location" = String))),
        (status = 403, description = "A user key writing for another user", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "A request with this Idempotency-Key is still running (Retry-After)", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn put_context(
    State(state): State<AppState>,
    Caller(scope): Caller,
    KeyedJson(body, key): KeyedJson<CreateContextRequest>,
) -> Result<Response, ApiError> {
    let contexts = state.contexts.clone();
    idempotency::once(&state, scope, key, async move {
        let new = body.parse(scope, contexts.dim())?;
        if new.key.is_none() {
            return Err(ValidationError::new("key", "is required by PUT /contexts").into());
        }
        let (ctx, is_new) = contexts.put(scope, new).await?;
        Ok(if is_new {
            created(ctx)
        } else {
            with_etag(StatusCode::OK, ctx, None)
        })
    })
    .await
}

const IDEMPOTENCY_KEY_DOC: &str = "A key naming this request (a UUID is best; 1 to 255 \
    visible ASCII characters). A retry with it gets the first answer, marked \
    `Idempotent-Replayed: true`, and writes nothing; the same key with another body is 422.";

/// Items a batch may carry.
pub const MAX_BATCH_ITEMS: usize = 1000;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchCreateRequest {
    /// Each item an object with the fields of a create (`CreateContextRequest`).
    /// An item is read on its own: one with a bad field fails alone, in its
    /// result. (Kept as raw JSON text, so no JSON tree of the whole batch, 1,000
    /// vectors as `Value` numbers and tens of MB, is ever built.)
    #[schema(value_type = Vec<Object>, min_items = 1, max_items = 1000)]
    items: Vec<Box<serde_json::value::RawValue>>,
}

/// One item's outcome: 201 with its context, or its own problem.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchItemResult {
    status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    context: Option<ContextResponse>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<crate::error::Problem>)]
    problem: Option<Value>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BatchCreateResponse {
    created: usize,
    failed: usize,
    /// Of the created, those stored `pending`: the embedding service did not
    /// answer within the inline wait, and the worker makes their vectors
    /// later. `GET /contexts?embedding_status=pending` lists them.
    pending: usize,
    results: Vec<BatchItemResult>,
}

impl BatchItemResult {
    fn failed(e: ApiError) -> Self {
        let (status, problem) = e.problem();
        Self {
            status: status.as_u16(),
            context: None,
            problem: Some(problem),
        }
    }
}

/// Up to 1,000 creates in one request and one insert.
/// 200 with a result per item, in order: 201 and the context, or the item's
/// problem. The request fails as a whole only when it is malformed or a
/// dependency the insert needs is down.
#[utoipa::path(post, path = "/contexts/batch", tag = "contexts",
    params(("Idempotency-Key" = Option<String>, Header, description = IDEMPOTENCY_KEY_DOC)),
    request_body = BatchCreateRequest,
    responses(
        (status = 200, description = "A result per item, in order", body = BatchCreateResponse),
        (status = 409, description = "A request with this Idempotency-Key is still running (Retry-After)", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn create_contexts(
    State(state): State<AppState>,
    Caller(scope): Caller,
    KeyedJson(body, key): KeyedJson<BatchCreateRequest>,
) -> Result<Response, ApiError> {
    let contexts = state.contexts.clone();
    idempotency::once(&state, scope, key, async move {
        let answer = create_batch(&contexts, scope, body).await?;
        Ok(Json(answer).into_response())
    })
    .await
}

async fn create_batch(
    contexts: &crate::service::Contexts,
    scope: Scope,
    body: BatchCreateRequest,
) -> Result<BatchCreateResponse, ApiError> {
    let n = body.items.len();
    if !(1..=MAX_BATCH_ITEMS).contains(&n) {
        return Err(ValidationError::new(
            "items",
            format!("must hold between 1 and {MAX_BATCH_ITEMS} items, got {n}"),
        )
        .into());
    }
    // RawValue holds the value's text exactly, so an object starts with `{`.
    if let Some(i) = body.items.iter().position(|v| !v.get().starts_with('{')) {
        return Err(ValidationError::new(
            "items",
            format!("items[{i}] must be a JSON object (the fields of a create)"),
        )
        .into());
    }
    let dim = contexts.dim();
    let mut slots: Vec<Option<BatchItemResult>> = Vec::with_capacity(n);
    let mut valid = Vec::with_capacity(n);
    for (i, item) in body.items.into_iter().enumerate() {
        let parsed = serde_json::from_str::<CreateContextRequest>(item.get())
            .map_err(|e| e.to_string())
            .and_then(|req| req.parse(scope, dim).map_err(|e| e.to_string()))
            .map_err(|e| ApiError::Validation(format!("items[{i}]: {e}")));
        match parsed {
            Ok(new) => {
                slots.push(None);
                valid.push(new);
            }
            Err(e) => slots.push(Some(BatchItemResult::failed(e))),
        }
    }
    let mut stored = contexts.create_many(scope, valid).await?.into_iter();
    let results: Vec<BatchItemResult> = slots
        .into_iter()
        .map(|slot| match slot {
            Some(failed) => failed,
            None => match stored.next().expect("create_many answers every item") {
                Ok(ctx) => BatchItemResult {
                    status: StatusCode::CREATED.as_u16(),
                    context: Some(ctx.into()),
                    problem: None,
                },
                Err(e) => BatchItemResult::failed(e.into()),
            },
        })
        .collect();
    let created = results.iter().filter(|r| r.status == 201).count();
    let pending = results
        .iter()
        .filter_map(|r| r.context.as_ref())
        .filter(|c| c.embedding_status == EmbeddingStatus::Pending)
        .count();
    Ok(BatchCreateResponse {
        created,
        failed: results.len() - created,
        pending,
        results,
    })
}

/// A visible context (not deleted, not expired, in the key's scope).
#[utoipa::path(get, path = "/contexts/{id}", tag = "contexts",
    params(("id" = Uuid, Path, description = "The context's id"), GetParams),
    responses(
        (status = 200, description = "The context", body = ContextResponse, headers(("ETag" = String))),
        (status = 404, description = "Absent, deleted, expired or out of scope", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_context(
    State(state): State<AppState>,
    Caller(scope): Caller,
    Path(id): Path<String>,
    AppQuery(params): AppQuery<GetParams>,
) -> Result<Response, ApiError> {
    let id = ContextId::parse(&id)?;
    let with_embedding = wants_embedding(params.include.as_deref())?;
    let ctx = state.contexts.get(scope, id, with_embedding).await?;
    Ok(with_etag(StatusCode::OK, ctx, None))
}

/// Contexts, newest first, a page at a time.
#[utoipa::path(get, path = "/contexts", tag = "contexts",
    params(ListParams),
    responses(
        (status = 200, description = "A page", body = ListResponse),
        (status = 403, description = "A user key asking for another user", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_contexts(
    State(state): State<AppState>,
    Caller(scope): Caller,
    AppQuery(params): AppQuery<ListParams>,
) -> Result<Json<ListResponse>, ApiError> {
    let limit = params
        .limit
        .map(|l| {
            l.parse::<i64>()
                .map_err(|_| ValidationError::new("limit", format!("{l:?} is not a number")))
        })
        .transpose()?;
    let query = ListQuery {
        user_id: params.user_id.as_deref().map(UserId::parse).transpose()?,
        context_type: params
            .context_type
            .as_deref()
            .map(ContextType::parse)
            .transpose()?,
        key: params.key.as_deref().map(ContextKey::parse).transpose()?,
        metadata: params
            .metadata
            .as_deref()
            .map(|m| {
                let v = serde_json::from_str(m)
                    .map_err(|e| ValidationError::new("metadata", format!("not JSON: {e}")))?;
                json_object("metadata", v)
            })
            .transpose()?,
        embedding_status: params
            .embedding_status
            .as_deref()
            .map(|s| EmbeddingStatus::parse("embedding_status", s))
            .transpose()?,
        limit: PageLimit::parse(limit)?,
        after: params.cursor.as_deref().map(Cursor::parse).transpose()?,
    };
    let page = state.contexts.list(scope, query).await?;
    Ok(Json(ListResponse {
        items: page.items.into_iter().map(Into::into).collect(),
        next_cursor: page.next.map(|c| c.encode()),
    }))
}

/// Replace the given fields. With `If-Match`, only if the version is still the one named.
#[utoipa::path(patch, path = "/contexts/{id}", tag = "contexts",
    params(("id" = Uuid, Path), ("If-Match" = Option<String>, Header, description = "The version last seen, as its ETag")),
    request_body = PatchContextRequest,
    responses(
        (status = 200, description = "The new state", body = ContextResponse, headers(("ETag" = String))),
        (status = 400, description = "The body is not JSON, or If-Match is not a list of entity tags", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "Absent, deleted, expired or out of scope", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 412, description = "If-Match names another version", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn update_context(
    State(state): State<AppState>,
    Caller(scope): Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    AppJson(body): AppJson<PatchContextRequest>,
) -> Result<Response, ApiError> {
    let id = ContextId::parse(&id)?;
    let patch = body.parse(state.contexts.dim())?;
    let expected = if_match(&headers)?;
    let ctx = state.contexts.update(scope, id, patch, expected).await?;
    Ok(with_etag(StatusCode::OK, ctx, None))
}

/// Hide a context (or remove it with `hard=true`).
#[utoipa::path(delete, path = "/contexts/{id}", tag = "contexts",
    params(("id" = Uuid, Path), ("If-Match" = Option<String>, Header), DeleteParams),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "If-Match is not a list of entity tags", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "Absent, deleted, expired or out of scope", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 412, description = "If-Match names another version", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn delete_context(
    State(state): State<AppState>,
    Caller(scope): Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    AppQuery(params): AppQuery<DeleteParams>,
) -> Result<StatusCode, ApiError> {
    let id = ContextId::parse(&id)?;
    let expected = if_match(&headers)?;
    state
        .contexts
        .delete(scope, id, params.hard.unwrap_or(false), expected)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
