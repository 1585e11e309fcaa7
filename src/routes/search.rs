//! POST /contexts/search: the k best contexts by vector, text or hybrid ranking.

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use super::contexts::ContextResponse;
use super::extract::{whole_number, AppJson, Caller};
use crate::domain::{
    json_object, parse_min_score, text_to_embed, Context, ContextType, Embedding, SearchFilter,
    SearchInput, SearchMode, TopK, UserId, ValidationError,
};
use crate::error::ApiError;
use crate::state::AppState;

/// How results are ranked.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// By cosine similarity of the embeddings (`query` is embedded, or
    /// `vector` is used as given).
    Vector,
    /// By Postgres full-text search over each context's embedded text
    /// (`query` only): contexts holding any of the query's words (stemmed,
    /// stop words dropped), ranked by BM25. Needs no embedding service, and
    /// finds contexts whose embedding is still pending.
    Text,
    /// Both rankings, fused by reciprocal rank fusion (`query`, and
    /// optionally its `vector`).
    Hybrid,
}

impl From<SearchMode> for Mode {
    fn from(m: SearchMode) -> Self {
        match m {
            SearchMode::Vector => Self::Vector,
            SearchMode::Text => Self::Text,
            SearchMode::Hybrid => Self::Hybrid,
        }
    }
}

/// What to search for (by `mode`), and filters.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchRequest {
    /// `vector` (the default), `text` or `hybrid`. (Read as a string and
    /// parsed here: serde_json calls a wrong type for an enum a syntax
    /// error, which would be a 400 for valid JSON.)
    #[schema(value_type = Option<Mode>)]
    mode: Option<String>,
    /// Text to search for: embedded in modes `vector` and `hybrid`, matched
    /// word by word in modes `text` and `hybrid`. Required in modes `text`
    /// and `hybrid`.
    query: Option<String>,
    /// A vector of `EMBEDDING_DIM` values to search for: in mode `vector`
    /// instead of `query`; in mode `hybrid` as `query`'s vector.
    vector: Option<Vec<f64>>,
    /// When `query` must be embedded and the embedding service is down,
    /// search by text instead of answering 503 (the answer's `mode` then
    /// says `text`).
    #[serde(default)]
    fallback_to_text: bool,
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
    /// Only results with at least this `score` (as the mode that runs
    /// defines it), -1 to 1.
    #[schema(minimum = -1.0, maximum = 1.0)]
    min_score: Option<f64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SearchResult {
    context: ContextResponse,
    /// By mode: `vector`, the cosine similarity to the query, -1 to 1;
    /// `text`, the Okapi BM25 score s (k1 1.2, b 0.75) mapped to 0..1 as
    /// s / (s + 1); `hybrid`, the fused score, the sum of
    /// `weight / (HYBRID_RRF_K + rank)` over the two rankings that found it.
    score: f32,
}

/// Best first.
#[derive(Debug, Serialize, ToSchema)]
pub struct SearchResponse {
    /// The mode that ran: the one asked for, or `text` after a fallback.
    mode: Mode,
    results: Vec<SearchResult>,
}

impl SearchRequest {
    pub(super) fn parse(
        self,
        dim: usize,
    ) -> Result<(SearchInput, SearchFilter, TopK), ValidationError> {
        let mode = match self.mode.as_deref() {
            None | Some("vector") => SearchMode::Vector,
            Some("text") => SearchMode::Text,
            Some("hybrid") => SearchMode::Hybrid,
            Some(_) => {
                return Err(ValidationError::new(
                    "mode",
                    "must be vector, text or hybrid",
                ))
            }
        };
        let input = SearchInput::new(
            mode,
            self.query.map(|q| text_to_embed("query", q)).transpose()?,
            self.vector
                .map(|v| Embedding::from_wire("vector", v, dim))
                .transpose()?,
            self.fallback_to_text,
        )?;
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

/// The k best visible contexts for the query: by cosine similarity (mode
/// `vector`), by full-text rank (`text`), or both fused (`hybrid`).
#[utoipa::path(post, path = "/contexts/search", tag = "contexts",
    request_body = SearchRequest,
    responses(
        (status = 200, description = "Best first", body = SearchResponse),
        (status = 403, description = "A user key asking for another user", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 503, description = "The query must be embedded and the embedding service is down (see `fallback_to_text`)", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn search_contexts(
    State(state): State<AppState>,
    Caller(scope): Caller,
    AppJson(body): AppJson<SearchRequest>,
) -> Result<Json<SearchResponse>, ApiError> {
    let (input, filter, k) = body.parse(state.contexts.dim())?;
    let (mode, hits) = state.contexts.search(scope, input, filter, k).await?;
    Ok(Json(SearchResponse::new(mode, hits)))
}

impl SearchResponse {
    pub(super) fn new(mode: SearchMode, hits: Vec<(Context, f32)>) -> Self {
        Self {
            mode: mode.into(),
            results: hits
                .into_iter()
                .map(|(c, score)| SearchResult {
                    context: c.into(),
                    score,
                })
                .collect(),
        }
    }
}
