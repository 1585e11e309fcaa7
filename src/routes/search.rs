//! POST /contexts/search: k nearest contexts by cosine similarity.

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use super::contexts::ContextResponse;
use super::extract::{whole_number, AppJson, Caller};
use crate::domain::{
    json_object, parse_min_score, text_to_embed, ContextType, Embedding, SearchFilter, SearchInput,
    TopK, UserId, ValidationError,
};
use crate::error::ApiError;
use crate::state::AppState;

/// One of `query` or `vector`, and filters.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchRequest {
    /// Text to embed and search for.
    query: Option<String>,
    /// A vector of `EMBEDDING_DIM` values to search for.
    vector: Option<Vec<f64>>,
    /// How many results, 1 to 100 (default 10).
    #[schema(minimum = 1, maximum = 100)]
    #[serde(default, deserialize_with = "whole_number")]
    k: Option<i64>,
    /// Only this user's contexts (a user key: its own, always).
    user_id: Option<Uuid>,
    context_type: Option<String>,
    /// Only contexts whose metadata contains this object.
    #[schema(value_type = Option<Object>)]
    metadata: Option<Value>,
    /// Only results with at least this cosine similarity, -1 to 1.
    #[schema(minimum = -1.0, maximum = 1.0)]
    min_score: Option<f64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SearchResult {
    context: ContextResponse,
    /// Cosine similarity to the query, -1 to 1.
    score: f32,
}

/// Best first.
#[derive(Debug, Serialize, ToSchema)]
pub struct SearchResponse {
    results: Vec<SearchResult>,
}

impl SearchRequest {
    fn parse(self, dim: usize) -> Result<(SearchInput, SearchFilter, TopK), ValidationError> {
        let input = match (self.query, self.vector) {
            (Some(q), None) => SearchInput::Text(text_to_embed("query", q)?),
            (None, Some(v)) => SearchInput::Vector(Embedding::from_wire("vector", v, dim)?),
            (Some(_), Some(_)) => {
                return Err(ValidationError::new(
                    "query",
                    "give query or vector, not both",
                ))
            }
            (None, None) => {
                return Err(ValidationError::new(
                    "query",
                    "give one of query (text) or vector",
                ))
            }
        };
        let filter = SearchFilter {
            user_id: self.user_id.map(UserId),
            context_type: self
                .context_type
                .as_deref()
                .map(ContextType::parse)
                .transpose()?,
            metadata: self
                .metadata
                .map(|m| json_object("metadata", m))
                .transpose()?,
            min_score: parse_min_score(self.min_score)?,
        };
        Ok((input, filter, TopK::parse(self.k)?))
    }
}

/// The k visible contexts nearest to the query, by cosine similarity.
#[utoipa::path(post, path = "/contexts/search", tag = "contexts",
    request_body = SearchRequest,
    responses(
        (status = 200, description = "Best first", body = SearchResponse),
        (status = 403, description = "A user key asking for another user", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn search_contexts(
    State(state): State<AppState>,
    Caller(scope): Caller,
    AppJson(body): AppJson<SearchRequest>,
) -> Result<Json<SearchResponse>, ApiError> {
    let (input, filter, k) = body.parse(state.contexts.dim())?;
    let hits = state.contexts.search(scope, input, filter, k).await?;
    Ok(Json(SearchResponse {
        results: hits
            .into_iter()
            .map(|(c, score)| SearchResult {
                context: c.into(),
                score,
            })
            .collect(),
    }))
}
