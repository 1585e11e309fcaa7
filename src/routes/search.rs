//! POST /contexts/search: k nearest contexts by cosine similarity.

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::contexts::ContextResponse;
use super::extract::{AppJson, Caller};
use crate::domain::{
    json_object, parse_min_score, ContextType, Embedding, SearchFilter, SearchInput, TopK, UserId,
    ValidationError,
};
use crate::error::ApiError;
use crate::state::AppState;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchRequest {
    query: Option<String>,
    vector: Option<Vec<f32>>,
    k: Option<i64>,
    user_id: Option<Uuid>,
    context_type: Option<String>,
    metadata: Option<Value>,
    min_score: Option<f32>,
}

#[derive(Debug, Serialize)]
pub struct SearchResult {
    context: ContextResponse,
    score: f32,
}

#[derive(Debug, Serialize)]
pub struct SearchResponse {
    results: Vec<SearchResult>,
}

impl SearchRequest {
    fn parse(self, dim: usize) -> Result<(SearchInput, SearchFilter, TopK), ValidationError> {
        let input = match (self.query, self.vector) {
            (Some(q), None) if q.trim().is_empty() => {
                return Err(ValidationError::new("query", "must not be empty"))
            }
            (Some(q), None) => SearchInput::Text(q),
            (None, Some(v)) => SearchInput::Vector(Embedding::parse("vector", v, dim)?),
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
