use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::ValidationError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ContextId(pub Uuid);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UserId(pub Uuid);

fn parse_uuid(field: &'static str, s: &str) -> Result<Uuid, ValidationError> {
    Uuid::parse_str(s).map_err(|_| ValidationError::new(field, format!("{s:?} is not a UUID")))
}

impl ContextId {
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        parse_uuid("id", s).map(Self)
    }
    pub fn new() -> Self {
        // v7: time-ordered, so new rows land at the end of the primary key index.
        Self(Uuid::now_v7())
    }
}

impl Default for ContextId {
    fn default() -> Self {
        Self::new()
    }
}

impl UserId {
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        parse_uuid("user_id", s).map(Self)
    }
}

/// 1 to 50 characters, as the `VARCHAR(50)` column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ContextType(String);

impl ContextType {
    pub const MAX_CHARS: usize = 50;

    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        label("context_type", s, Self::MAX_CHARS).map(Self)
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A name given by the client: 1 to `max` characters, no control characters.
fn label(field: &'static str, s: &str, max: usize) -> Result<String, ValidationError> {
    let n = s.chars().count();
    if n == 0 || n > max {
        return Err(ValidationError::new(
            field,
            format!("must be 1 to {max} characters, got {n}"),
        ));
    }
    if s.chars().any(char::is_control) {
        return Err(ValidationError::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(s.to_owned())
}

/// A client's own name for a context, unique among its user's live
/// contexts: 1 to 1,024 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ContextKey(String);

impl ContextKey {
    pub const MAX_CHARS: usize = 1024;

    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        label("key", s, Self::MAX_CHARS).map(Self)
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A JSON object (never an array or scalar).
pub type JsonObject = Map<String, Value>;

pub fn json_object(field: &'static str, v: Value) -> Result<JsonObject, ValidationError> {
    match v {
        Value::Object(m) => Ok(m),
        other => Err(ValidationError::new(
            field,
            format!("must be a JSON object, got {}", json_kind(&other)),
        )),
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A vector of exactly the configured dimension, all values finite.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedding(Vec<f32>);

impl Embedding {
    pub fn parse(
        field: &'static str,
        values: Vec<f32>,
        dim: usize,
    ) -> Result<Self, ValidationError> {
        if values.len() != dim {
            return Err(ValidationError::new(
                field,
                format!("must have {dim} values, got {}", values.len()),
            ));
        }
        if values.iter().any(|x| !x.is_finite()) {
            return Err(ValidationError::new(field, "values must be finite numbers"));
        }
        if values.iter().all(|x| *x == 0.0) {
            return Err(ValidationError::new(
                field,
                "must not be all zeros (cosine similarity is undefined)",
            ));
        }
        Ok(Self(values))
    }
    /// A vector as a client sent it (JSON numbers are doubles): each value 0,
    /// or of a magnitude from [`Self::MIN_MAGNITUDE`] to [`Self::MAX_MAGNITUDE`];
    /// then as [`Self::parse`]. pgvector sums squares and products in single
    /// precision: outside these bounds a norm underflows to 0 or overflows to
    /// infinity (up to 16,000 dimensions), and the cosine becomes NaN.
    pub fn from_wire(
        field: &'static str,
        values: Vec<f64>,
        dim: usize,
    ) -> Result<Self, ValidationError> {
        if values
            .iter()
            .any(|x| *x != 0.0 && !(Self::MIN_MAGNITUDE..=Self::MAX_MAGNITUDE).contains(&x.abs()))
        {
            return Err(ValidationError::new(
                field,
                format!(
                    "each value must be 0 or between {:e} and {:e} in magnitude",
                    Self::MIN_MAGNITUDE,
                    Self::MAX_MAGNITUDE
                ),
            ));
        }
        Self::parse(field, values.into_iter().map(|x| x as f32).collect(), dim)
    }
    /// The smallest non-zero magnitude taken: its square is a normal f32.
    pub const MIN_MAGNITUDE: f64 = 1e-15;
    /// The largest magnitude taken: 16,000 squares of it sum below f32::MAX.
    pub const MAX_MAGNITUDE: f64 = 1e15;

    pub fn as_slice(&self) -> &[f32] {
        &self.0
    }
    pub fn into_vec(self) -> Vec<f32> {
        self.0
    }
}

/// An instant PostgreSQL can store and clients can read back: the four-digit
/// years of RFC 3339 (chrono parses years to ±262,143; Postgres stops at 4713 BC).
pub fn storable_instant(
    field: &'static str,
    at: DateTime<Utc>,
) -> Result<DateTime<Utc>, ValidationError> {
    use chrono::Datelike;
    if !(1..=9999).contains(&at.year()) {
        return Err(ValidationError::new(
            field,
            "must be between the years 0001 and 9999",
        ));
    }
    Ok(at)
}

/// How long a context lives: an instant, or a TTL from now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    At(DateTime<Utc>),
    In(Duration),
}

impl Expiry {
    /// 100 years.
    pub const MAX_TTL_SECONDS: i64 = 100 * 365 * 86_400;

    /// At most one of the two may be given.
    pub fn parse(
        at: Option<DateTime<Utc>>,
        ttl_seconds: Option<i64>,
    ) -> Result<Option<Self>, ValidationError> {
        match (at, ttl_seconds) {
            (Some(_), Some(_)) => Err(ValidationError::new(
                "expires_at",
                "give expires_at or ttl_seconds, not both",
            )),
            (Some(at), None) => Ok(Some(Expiry::At(storable_instant("expires_at", at)?))),
            (None, Some(s)) if s <= 0 => {
                Err(ValidationError::new("ttl_seconds", "must be positive"))
            }
            (None, Some(s)) if s > Self::MAX_TTL_SECONDS => Err(ValidationError::new(
                "ttl_seconds",
                "must be at most 100 years",
            )),
            (None, Some(s)) => Ok(Some(Expiry::In(Duration::seconds(s)))),
            (None, None) => Ok(None),
        }
    }
    pub fn resolve(self, now: DateTime<Utc>) -> DateTime<Utc> {
        match self {
            Expiry::At(at) => at,
            Expiry::In(d) => now + d,
        }
    }
}

/// Text given to be embedded (a context's `text`, a search's `query`) must hold
/// something besides white space (Unicode White_Space, as `str::trim`).
pub fn text_to_embed(field: &'static str, text: String) -> Result<String, ValidationError> {
    if text.trim().is_empty() {
        return Err(ValidationError::new(
            field,
            "must contain something besides white space",
        ));
    }
    Ok(text)
}

/// The text a context's embedding is computed from: the explicit `text` when
/// given, else `content.text` when it is a string, else the compact JSON of content.
pub fn embedding_text(text: Option<&str>, content: &JsonObject) -> String {
    if let Some(t) = text {
        return t.to_owned();
    }
    match content.get("text") {
        Some(Value::String(s)) => s.clone(),
        _ => Value::Object(content.clone()).to_string(),
    }
}

/// A context to create, valid by construction.
#[derive(Debug, Clone)]
pub struct NewContext {
    pub id: ContextId,
    pub user_id: UserId,
    /// The client's name for it: a create fails if a live context of the
    /// user has it, a put replaces that context.
    pub key: Option<ContextKey>,
    pub context_type: ContextType,
    pub content: JsonObject,
    pub metadata: JsonObject,
    pub expires_at: Option<DateTime<Utc>>,
    pub text: String,
    pub embedding: Option<Embedding>,
    /// The model that made `embedding`; `None` for a vector the client gave.
    pub embedding_model: Option<String>,
}

/// Fields a PATCH replaces; `None` keeps the stored value.
#[derive(Debug, Clone, Default)]
pub struct ContextPatch {
    pub context_type: Option<ContextType>,
    pub content: Option<JsonObject>,
    pub metadata: Option<JsonObject>,
    /// `Some(None)` clears the expiry.
    pub expires_at: Option<Option<DateTime<Utc>>>,
    pub text: Option<String>,
    pub embedding: Option<Embedding>,
}

impl ContextPatch {
    pub fn is_empty(&self) -> bool {
        self.context_type.is_none()
            && self.content.is_none()
            && self.metadata.is_none()
            && self.expires_at.is_none()
            && self.text.is_none()
            && self.embedding.is_none()
    }
}

/// `If-Match`'s entity tags, read as versions: the condition holds when one
/// of them is the context's current version. A tag that is no version of
/// ours can never match, so the list may be empty (the condition is then
/// false, for an existing context: a missing one is a 404 whatever the
/// header, as RFC 9110 section 13.2.1 asks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfMatch(pub Vec<i32>);

impl IfMatch {
    pub fn matches(&self, version: i32) -> bool {
        self.0.contains(&version)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EmbeddingStatus {
    Ready,
    Pending,
}

impl EmbeddingStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            EmbeddingStatus::Ready => "ready",
            EmbeddingStatus::Pending => "pending",
        }
    }
    /// A status a client names (`?embedding_status=`).
    pub fn parse(field: &'static str, s: &str) -> Result<Self, ValidationError> {
        match s {
            "ready" => Ok(EmbeddingStatus::Ready),
            "pending" => Ok(EmbeddingStatus::Pending),
            other => Err(ValidationError::new(
                field,
                format!("unknown value {other:?}; allowed: pending, ready"),
            )),
        }
    }
    pub fn from_db(s: &str) -> Self {
        if s == "ready" {
            EmbeddingStatus::Ready
        } else {
            EmbeddingStatus::Pending
        }
    }
}

/// A stored context. `embedding` is loaded only when asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Context {
    pub id: ContextId,
    pub user_id: UserId,
    /// The client's name for it, if it was given one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub context_type: String,
    pub content: JsonObject,
    pub metadata: JsonObject,
    pub expires_at: Option<DateTime<Utc>>,
    pub embedding_status: EmbeddingStatus,
    pub is_active: bool,
    pub version: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub embedding: Option<Vec<f32>>,
    /// The model that made the vector; `None` while pending, for a vector
    /// the client gave, or for one stored before models were recorded.
    #[serde(default)]
    pub embedding_model: Option<String>,
}

impl Context {
    /// Visible to readers: active and not expired at `now`.
    pub fn is_visible(&self, now: DateTime<Utc>) -> bool {
        self.is_active && self.expires_at.is_none_or(|at| at > now)
    }

    /// A number that grows with every change a reader can see, including the
    /// background fill of the embedding (which does not bump `version`).
    pub fn generation(&self) -> i64 {
        i64::from(self.version) * 2 + i64::from(self.embedding_status == EmbeddingStatus::Ready)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> JsonObject {
        json_object("content", v).unwrap()
    }

    #[test]
    fn embedding_text_prefers_explicit_text_then_content_text_then_json() {
        let c = obj(json!({"text": "hello", "n": 1}));
        assert_eq!(embedding_text(Some("given"), &c), "given");
        assert_eq!(embedding_text(None, &c), "hello");
        let c = obj(json!({"text": 5, "a": "b"}));
        assert_eq!(embedding_text(None, &c), r#"{"a":"b","text":5}"#);
    }

    #[test]
    fn context_type_is_one_to_fifty_characters() {
        assert!(ContextType::parse("").is_err());
        assert!(ContextType::parse(&"é".repeat(50)).is_ok());
        assert!(ContextType::parse(&"a".repeat(51)).is_err());
    }

    #[test]
    fn embedding_dimension_and_values_are_checked() {
        assert!(Embedding::parse("embedding", vec![0.1, 0.2], 3).is_err());
        assert!(Embedding::parse("embedding", vec![0.1, f32::NAN, 0.0], 3).is_err());
        assert!(Embedding::parse("embedding", vec![0.0; 3], 3).is_err());
        assert!(Embedding::parse("embedding", vec![0.1, 0.2, 0.3], 3).is_ok());
    }

    #[test]
    fn a_vector_from_the_wire_is_held_by_single_precision() {
        // 1e-50 becomes 0.0 as an f32, so the vector would be all zeros; 1e39
        // infinite; the square of 1e-20 underflows and of 1e30 overflows.
        for bad in [1e-50, 1e39, 1e-20, -1e30] {
            assert!(Embedding::from_wire("vector", vec![bad, 1.0], 2).is_err());
        }
        assert!(Embedding::from_wire("vector", vec![0.0, 1e-15], 2).is_ok());
        assert!(Embedding::from_wire("vector", vec![-1e15, 0.5], 2).is_ok());
    }

    #[test]
    fn content_must_be_an_object() {
        assert!(json_object("content", json!([1])).is_err());
        assert!(json_object("content", json!("s")).is_err());
    }

    #[test]
    fn expiry_is_one_of_at_or_ttl() {
        let now = Utc::now();
        assert!(Expiry::parse(Some(now), Some(5)).is_err());
        assert!(Expiry::parse(None, Some(0)).is_err());
        assert_eq!(
            Expiry::parse(None, Some(10)).unwrap().unwrap().resolve(now),
            now + Duration::seconds(10)
        );
        assert_eq!(Expiry::parse(None, None).unwrap(), None);
    }

    #[test]
    fn generation_grows_when_the_embedding_is_filled() {
        let mut c = Context {
            id: ContextId::new(),
            user_id: UserId(Uuid::now_v7()),
            key: None,
            context_type: "t".into(),
            content: JsonObject::new(),
            metadata: JsonObject::new(),
            expires_at: None,
            embedding_status: EmbeddingStatus::Pending,
            is_active: true,
            version: 1,
            created_at: Utc::now(),
            updated_at: Utc::now(),
            embedding: None,
            embedding_model: None,
        };
        let pending = c.generation();
        c.embedding_status = EmbeddingStatus::Ready;
        assert!(c.generation() > pending);
        let ready = c.generation();
        c.version = 2;
        c.embedding_status = EmbeddingStatus::Pending;
        assert!(c.generation() > ready);
    }
}
