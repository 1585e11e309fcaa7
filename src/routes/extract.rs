//! Extractors whose rejections come out as problem responses, and the caller's
//! identity from the Authorization header.

use axum::body::Bytes;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRef, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use serde::de::DeserializeOwned;

use super::idempotency::{self, IdempotencyKey};
use crate::auth::Scope;
use crate::domain::IfMatch;
use crate::error::ApiError;
use crate::state::AuthState;

/// `Json` whose rejections are problems: 400 when the body is not JSON, 413
/// too large, 415 wrong content type, 422 JSON that the service cannot take
/// (see [`check_json`]) or of the wrong shape.
pub struct AppJson<T>(pub T);

impl<S, T> FromRequest<S> for AppJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        read_json(req, state).await.map(|(v, _)| Self(v))
    }
}

/// [`AppJson`], and the request's `Idempotency-Key` (checked, and bound to
/// the method, path and body: see [`super::idempotency`]).
pub struct KeyedJson<T>(pub T, pub Option<IdempotencyKey>);

impl<S, T> FromRequest<S> for KeyedJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let key = req.headers().get(idempotency::HEADER).cloned();
        let (value, bytes) = read_json(req, state).await?;
        let key = key
            .map(|k| IdempotencyKey::parse(&k, method.as_str(), &path, &bytes))
            .transpose()?;
        Ok(Self(value, key))
    }
}

async fn read_json<S, T>(req: Request, state: &S) -> Result<(T, Bytes), ApiError>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    if !is_json(req.headers()) {
        return Err(ApiError::UnsupportedMediaType(
            "expected a request with `Content-Type: application/json`".into(),
        ));
    }
    let bytes = Bytes::from_request(req, state).await.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge(r.body_text())
        } else {
            ApiError::BadRequest(r.body_text())
        }
    })?;
    check_json(&bytes)?;
    match axum::Json::<T>::from_bytes(&bytes) {
        Ok(axum::Json(v)) => Ok((v, bytes)),
        Err(rejection) => Err(json_rejection(rejection)),
    }
}

/// `application/json`, or a `+json` type, whatever its parameters.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// How deep arrays and objects may nest in a body.
pub const MAX_JSON_DEPTH: usize = 32;
/// The longest string (or key) in a body, in bytes of UTF-8: room for a long
/// document in `content`, not for a body that is one string.
pub const MAX_STRING_BYTES: usize = 256 * 1024;
/// The most items in one array, or members in one object: room for a vector
/// of pgvector's largest dimension (16,000).
pub const MAX_COLLECTION_ITEMS: usize = 16_384;

/// One pass over the body before it is read into its type, so that every
/// route and field gets the same answers:
/// - not JSON at all (bad syntax, or anything after the value): 400, even
///   when the JSON before the fault would have had the wrong shape;
/// - a string or key holding U+0000, which PostgreSQL cannot store in text
///   or jsonb: 422;
/// - arrays and objects nested deeper than [`MAX_JSON_DEPTH`], strings longer
///   than [`MAX_STRING_BYTES`], arrays or objects of more than
///   [`MAX_COLLECTION_ITEMS`]: 422, naming the limit (bodies over the size
///   limit are 413 before this).
pub fn check_json(body: &[u8]) -> Result<(), ApiError> {
    use serde::de::DeserializeSeed;
    let mut de = serde_json::Deserializer::from_slice(body);
    let result = Checked { depth: 0 }
        .deserialize(&mut de)
        .and_then(|()| de.end());
    match result {
        Ok(()) => Ok(()),
        Err(e) if e.classify() == serde_json::error::Category::Data => {
            Err(ApiError::Validation(format!("request body: {e}")))
        }
        Err(e) => Err(ApiError::BadRequest(format!(
            "the request body is not JSON: {e}"
        ))),
    }
}

/// Visits a JSON value, keeping nothing, and refuses what the service cannot take.
#[derive(Clone, Copy)]
struct Checked {
    depth: usize,
}

impl Checked {
    fn deeper<E: serde::de::Error>(self) -> Result<Self, E> {
        if self.depth >= MAX_JSON_DEPTH {
            return Err(E::custom(format_args!(
                "arrays and objects nest deeper than {MAX_JSON_DEPTH} levels"
            )));
        }
        Ok(Self {
            depth: self.depth + 1,
        })
    }
}

fn storable<E: serde::de::Error>(s: &str) -> Result<(), E> {
    if s.len() > MAX_STRING_BYTES {
        return Err(E::custom(format_args!(
            "a string is {} bytes long; the limit is {MAX_STRING_BYTES}",
            s.len()
        )));
    }
    if s.contains('\0') {
        return Err(E::custom(
            "strings must not contain U+0000 (NUL), which PostgreSQL cannot store",
        ));
    }
    Ok(())
}

fn too_many<E: serde::de::Error>(n: usize) -> Result<(), E> {
    if n > MAX_COLLECTION_ITEMS {
        return Err(E::custom(format_args!(
            "an array or object holds more than {MAX_COLLECTION_ITEMS} items"
        )));
    }
    Ok(())
}

impl<'de> serde::de::DeserializeSeed<'de> for Checked {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Checked {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<(), E> {
        storable(s)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let inner = self.deeper()?;
        let mut n = 0;
        while seq.next_element_seed(inner)?.is_some() {
            n += 1;
            too_many::<A::Error>(n)?;
        }
        Ok(())
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let inner = self.deeper()?;
        let mut n = 0;
        while map.next_key_seed(Checked { depth: 0 })?.is_some() {
            map.next_value_seed(inner)?;
            n += 1;
            too_many::<A::Error>(n)?;
        }
        Ok(())
    }
}

/// An optional integer field that also takes a whole number written as a
/// float (`3.0`), as JSON Schema's `integer` does; `null` is absent.
pub fn whole_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    use serde::Deserialize;
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    if let Some(i) = n.as_i64() {
        return Ok(Some(i));
    }
    match n.as_f64() {
        // Every whole f64 in this range converts to i64 exactly.
        Some(f) if f.fract() == 0.0 && (-9.2e18..=9.2e18).contains(&f) => Ok(Some(f as i64)),
        _ => Err(serde::de::Error::custom(format_args!(
            "{n} is not a whole number in the 64-bit range"
        ))),
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
        // Already checked by the API's `authenticate` middleware.
        if let Some(scope) = parts.extensions.get::<Scope>() {
            return Ok(Caller(*scope));
        }
        let auth = AuthState::from_ref(state);
        let Some(keys) = auth.keys else {
            return Ok(Caller(Scope::Admin));
        };
        let token = bearer(&parts.headers).ok_or(ApiError::Unauthorized)?;
        keys.lookup(token).map(Caller).ok_or(ApiError::Unauthorized)
    }
}

pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The versions named by `If-Match` (see [`IfMatch`]); `None` when absent,
/// empty (an empty list of conditions) or `*`. A header that is not `*` or a
/// list of entity tags (`"3"`, `W/"3", "4"`) is malformed: 400. A tag that
/// is not one of our versions names none (weak tags are read as strong).
pub fn if_match(headers: &HeaderMap) -> Result<Option<IfMatch>, ApiError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    // A tag may hold any octet but DQUOTE (obs-text too): read it as such.
    let value = String::from_utf8_lossy(value.as_bytes());
    let value = value.trim();
    if value.is_empty() || value == "*" {
        return Ok(None);
    }
    let tags = entity_tags(value).ok_or_else(|| {
        ApiError::BadRequest("If-Match must be `*` or a list of entity tags such as \"3\"".into())
    })?;
    Ok(Some(IfMatch(
        tags.iter().filter_map(|t| t.parse::<i32>().ok()).collect(),
    )))
}

/// Each tag's opaque part if `value` is `tag *("," *SP tag)`, each tag
/// `[W/] DQUOTE *(any but DQUOTE) DQUOTE`: the document's pattern for the
/// header, exactly, so that what it calls malformed is refused as such.
fn entity_tags(value: &str) -> Option<Vec<&str>> {
    let mut tags = Vec::new();
    let mut rest = value;
    loop {
        let start = if rest.starts_with("W/") { 2 } else { 0 };
        let inner = rest[start..].strip_prefix('"')?;
        let len = inner.find('"')?;
        tags.push(&inner[..len]);
        rest = &inner[len + 1..];
        if rest.is_empty() {
            return Some(tags);
        }
        rest = rest.strip_prefix(',')?.trim_start_matches(' ');
    }
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
    fn if_match_reads_every_tag_as_a_version() {
        let versions = |v: &'static str| if_match(&with(header::IF_MATCH, v)).unwrap().map(|m| m.0);
        assert_eq!(if_match(&HeaderMap::new()).unwrap(), None);
        assert_eq!(versions("*"), None);
        assert_eq!(versions(""), None);
        assert_eq!(versions("\"3\""), Some(vec![3]));
        assert_eq!(versions("W/\"4\""), Some(vec![4]));
        assert_eq!(versions(" \"5\",  W/\"6\""), Some(vec![5, 6]));
        assert_eq!(versions("\"7\",\"8\""), Some(vec![7, 8]));
        // A tag that is no version of ours names none; the others still count.
        assert_eq!(versions("W/\"\", \"e\", \"2\""), Some(vec![2]));
        for none in ["\"abc\"", "\"a,b\"", "W/\"\"", "\"\""] {
            assert_eq!(versions(none), Some(vec![]), "{none}");
        }
        for malformed in [
            "abc",
            "{}",
            "\"3",
            "\"3\" \"4\"",
            "W/3",
            "3",
            "\"3\"x",
            "\"3\",",
            "\"3\" ,\"4\"",
            ", \"3\"",
        ] {
            assert!(
                matches!(
                    if_match(&with(header::IF_MATCH, malformed)),
                    Err(ApiError::BadRequest(_))
                ),
                "{malformed}"
            );
        }
        assert!(IfMatch(vec![2, 5]).matches(5) && !IfMatch(vec![]).matches(0));
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
