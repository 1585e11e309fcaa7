use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{
    ContextId, ContextKey, ContextType, Embedding, EmbeddingStatus, JsonObject, UserId,
    ValidationError,
};

/// How results are ranked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SearchMode {
    /// Cosine similarity of the embeddings (the query's text is embedded).
    #[default]
    Vector,
    /// Postgres full-text search over the embedded text: no embedding needed.
    Text,
    /// Both, fused by reciprocal rank fusion.
    Hybrid,
}

impl SearchMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Vector => "vector",
            Self::Text => "text",
            Self::Hybrid => "hybrid",
        }
    }
}

/// What a search compares against, for its mode; valid by construction
/// ([`SearchInput::new`]).
#[derive(Debug, Clone)]
pub enum SearchInput {
    /// Vector mode, with the vector to compare against.
    Vector(Embedding),
    /// Vector mode, with a text to embed first. `fallback_to_text`: when the
    /// text cannot be embedded (the embedding service is down), run a text
    /// search instead of failing.
    Embed {
        text: String,
        fallback_to_text: bool,
    },
    /// Text mode: no embedding involved.
    Text(String),
    /// Hybrid mode: the text for both rankings, and the vector for it if the
    /// caller has one (else the text is embedded).
    Hybrid {
        text: String,
        vector: Option<Embedding>,
        fallback_to_text: bool,
    },
}

impl SearchInput {
    /// Vector mode takes a text or a vector; text mode a text; hybrid mode a
    /// text, and optionally its vector.
    pub fn new(
        mode: SearchMode,
        text: Option<String>,
        vector: Option<Embedding>,
        fallback_to_text: bool,
    ) -> Result<Self, ValidationError> {
        match (mode, text, vector) {
            (SearchMode::Vector, Some(_), Some(_)) => Err(ValidationError::new(
                "query",
                "give query or vector, not both",
            )),
            (SearchMode::Vector, None, None) => Err(ValidationError::new(
                "query",
                "give one of query (text) or vector",
            )),
            (SearchMode::Vector, None, Some(v)) => Ok(Self::Vector(v)),
            (SearchMode::Vector, Some(text), None) => Ok(Self::Embed {
                text,
                fallback_to_text,
            }),
            (SearchMode::Text | SearchMode::Hybrid, None, _) => Err(ValidationError::new(
                "query",
                format!("mode {} needs query (text)", mode.as_str()),
            )),
            (SearchMode::Text, Some(_), Some(_)) => Err(ValidationError::new(
                "vector",
                "mode text ranks by the query's words: give no vector",
            )),
            (SearchMode::Text, Some(text), None) => Ok(Self::Text(text)),
            (SearchMode::Hybrid, Some(text), vector) => Ok(Self::Hybrid {
                text,
                vector,
                fallback_to_text,
            }),
        }
    }
}

/// What the store ranks by, with what it needs.
#[derive(Debug, Clone)]
pub enum Ranking {
    Vector(Vec<f32>),
    Text(String),
    Hybrid {
        vector: Vec<f32>,
        text: String,
        fusion: Fusion,
    },
}

impl Ranking {
    pub fn mode(&self) -> SearchMode {
        match self {
            Self::Vector(_) => SearchMode::Vector,
            Self::Text(_) => SearchMode::Text,
            Self::Hybrid { .. } => SearchMode::Hybrid,
        }
    }
}

/// Reciprocal rank fusion: a result's hybrid score is the sum, over the
/// vector and the text ranking, of `weight / (k + rank)` (rank from 1; a
/// ranking that misses the result adds nothing). Each ranking contributes
/// its best `candidates` results (at least the k asked for). Computed by the
/// store's query, next to the rankings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fusion {
    pub k: f64,
    pub vector_weight: f64,
    pub text_weight: f64,
    pub candidates: i64,
}

#[derive(Debug, Clone)]
pub struct SearchFilter {
    pub user_id: Option<UserId>,
    pub context_type: Option<ContextType>,
    pub metadata: Option<JsonObject>,
    pub min_score: Option<f32>,
}

/// k nearest by cosine similarity, k in 1..=100.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopK(i64);

impl TopK {
    pub const DEFAULT: i64 = 10;
    pub const MAX: i64 = 100;
    pub fn parse(k: Option<i64>) -> Result<Self, ValidationError> {
        let k = k.unwrap_or(Self::DEFAULT);
        if !(1..=Self::MAX).contains(&k) {
            return Err(ValidationError::new(
                "k",
                format!("must be between 1 and {}, got {k}", Self::MAX),
            ));
        }
        Ok(Self(k))
    }
    pub fn get(self) -> i64 {
        self.0
    }
}

/// Checked as sent (a double), so that a value just outside the range is not
/// rounded into it.
pub fn parse_min_score(s: Option<f64>) -> Result<Option<f32>, ValidationError> {
    match s {
        Some(x) if !x.is_finite() || !(-1.0..=1.0).contains(&x) => Err(ValidationError::new(
            "min_score",
            "must be between -1 and 1",
        )),
        other => Ok(other.map(|x| x as f32)),
    }
}

/// Page size for listing, 1..=100.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageLimit(i64);

impl PageLimit {
    pub fn parse(n: Option<i64>) -> Result<Self, ValidationError> {
        let n = n.unwrap_or(20);
        if !(1..=100).contains(&n) {
            return Err(ValidationError::new(
                "limit",
                format!("must be between 1 and 100, got {n}"),
            ));
        }
        Ok(Self(n))
    }
    pub fn get(self) -> i64 {
        self.0
    }
}

/// Keyset position: the (created_at, id) of the last item of a page. Opaque to
/// clients; stable under concurrent inserts because it names a row, not an offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub created_at: DateTime<Utc>,
    pub id: ContextId,
}

impl Cursor {
    pub fn encode(&self) -> String {
        format!(
            "{}_{}",
            self.created_at.timestamp_micros(),
            self.id.0.simple()
        )
    }

    /// The grammar [`Self::encode`] writes, and the OpenAPI document states
    /// ([`Self::PATTERN`]): microseconds since 1970 (at most 17 digits, 16
    /// before 1970, so always in the years 1653 to 5138), `_`, the id as 32
    /// lowercase hex digits.
    pub const PATTERN: &'static str = "^(0|[1-9][0-9]{0,16}|-[1-9][0-9]{0,15})_[0-9a-f]{32}$";

    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        let bad = || ValidationError::new("cursor", "is not a cursor this service returned");
        let (micros, id) = s.split_once('_').ok_or_else(bad)?;
        let digits = micros.strip_prefix('-').unwrap_or(micros);
        let max_digits = if digits.len() == micros.len() { 17 } else { 16 };
        let canonical = !digits.is_empty()
            && digits.len() <= max_digits
            && digits.bytes().all(|b| b.is_ascii_digit())
            && (digits == "0" || !digits.starts_with('0'))
            && micros != "-0";
        let lower_hex =
            id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !canonical || !lower_hex {
            return Err(bad());
        }
        let micros: i64 = micros.parse().map_err(|_| bad())?;
        let created_at = DateTime::from_timestamp_micros(micros)
            .and_then(|at| super::storable_instant("cursor", at).ok())
            .ok_or_else(bad)?;
        let id = Uuid::try_parse(id).map_err(|_| bad())?;
        Ok(Self {
            created_at,
            id: ContextId(id),
        })
    }
}

#[derive(Debug, Clone)]
pub struct ListQuery {
    pub user_id: Option<UserId>,
    pub context_type: Option<ContextType>,
    /// Only the context of this key.
    pub key: Option<ContextKey>,
    /// Only contexts whose metadata contains this object.
    pub metadata: Option<JsonObject>,
    /// Only contexts whose vector is (or is not yet) made.
    pub embedding_status: Option<EmbeddingStatus>,
    pub limit: PageLimit,
    pub after: Option<Cursor>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn k_and_limit_are_bounded() {
        assert_eq!(TopK::parse(None).unwrap().get(), 10);
        assert!(TopK::parse(Some(0)).is_err());
        assert!(TopK::parse(Some(101)).is_err());
        assert_eq!(PageLimit::parse(None).unwrap().get(), 20);
        assert!(PageLimit::parse(Some(101)).is_err());
    }

    #[test]
    fn cursor_round_trips_and_rejects_garbage() {
        let c = Cursor {
            created_at: DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap(),
            id: ContextId::new(),
        };
        assert_eq!(Cursor::parse(&c.encode()).unwrap(), c);
        assert!(Cursor::parse("nope").is_err());
        assert!(Cursor::parse("12_zz").is_err());
    }

    #[test]
    fn each_mode_takes_its_inputs() {
        let v = || Some(Embedding::parse("v", vec![1.0, 0.0], 2).unwrap());
        let t = || Some("a question".to_owned());
        use SearchMode::*;
        assert!(SearchInput::new(Vector, t(), None, false).is_ok());
        assert!(SearchInput::new(Vector, None, v(), false).is_ok());
        assert!(SearchInput::new(Vector, t(), v(), false).is_err());
        assert!(SearchInput::new(Vector, None, None, false).is_err());
        assert!(SearchInput::new(Text, t(), None, false).is_ok());
        assert!(SearchInput::new(Text, t(), v(), false).is_err());
        assert!(SearchInput::new(Text, None, None, false).is_err());
        assert!(SearchInput::new(Hybrid, t(), v(), false).is_ok());
        assert!(SearchInput::new(Hybrid, t(), None, false).is_ok());
        assert!(SearchInput::new(Hybrid, None, v(), false).is_err());
    }

    #[test]
    fn min_score_is_a_cosine() {
        assert!(parse_min_score(Some(1.5)).is_err());
        assert!(parse_min_score(Some(-1.000_000_001)).is_err());
        assert_eq!(parse_min_score(Some(0.5)).unwrap(), Some(0.5));
    }
}
