//! The API's contract: an OpenAPI 3.1 document generated from the handlers and
//! types (`GET /openapi.json`; a copy is committed as `docs/openapi.json` and a
//! test keeps the two equal), and Swagger UI at `/docs`, whose assets are built
//! into the binary: the page works on a network with no internet.

use std::sync::OnceLock;

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue};
use axum::response::{Html, IntoResponse, Response};

use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use serde_json::{json, Map, Value};

use super::{contexts, health, search};
use crate::domain::{ContextKey, ContextType, Cursor, Embedding, Expiry};
use crate::error::Problem;
use crate::state::AppState;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "context-api",
        description = "Per-user memory for LLM applications: JSON contexts with an embedding, \
                       found again by vector search. Errors are RFC 9457 problems. \
                       No string in a request may hold U+0000 (422).",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        contexts::create_context,
        contexts::put_context,
        contexts::list_contexts,
        contexts::create_contexts,
        search::search_contexts,
        contexts::get_context,
        contexts::update_context,
        contexts::delete_context,
        health::health,
        health::ready,
        health::metrics,
    ),
    components(schemas(Problem)),
    modifiers(&Contract),
    security(("bearer" = [])),
    tags(
        (name = "contexts", description = "Contexts: create, read, list, update, delete, search"),
        (name = "operations", description = "Probes and metrics, open to all"),
    )
)]
pub struct ApiDoc;

/// The bearer scheme, and the problem answers every authenticated operation
/// can give, written once instead of on each path.
struct Contract;

impl Modify for Contract {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API key: `Authorization: Bearer <key>` (`context-api keys new`)",
                    ))
                    .build(),
            ),
        );
        let common: &[(&str, &str, bool)] = &[
            ("400", "The body is not JSON", true),
            ("401", "No key, or an unknown key", false),
            ("405", "The route does not have this method", false),
            ("413", "The body is over the size limit", true),
            ("415", "The body is not application/json", true),
            ("422", "Valid JSON the service cannot take", false),
            (
                "429",
                "Over this key's rate limit (Retry-After; RateLimit and RateLimit-Policy)",
                false,
            ),
            (
                "503",
                "Overloaded, or a required dependency is down (Retry-After)",
                false,
            ),
        ];
        for (path, item) in doc.paths.paths.iter_mut() {
            if !path.starts_with("/contexts") {
                continue;
            }
            let ops: [Option<&mut Operation>; 5] = [
                item.get.as_mut(),
                item.post.as_mut(),
                item.put.as_mut(),
                item.patch.as_mut(),
                item.delete.as_mut(),
            ];
            for op in ops.into_iter().flatten() {
                let has_body = op.request_body.is_some();
                for (status, description, needs_body) in common {
                    if *needs_body && !has_body {
                        continue;
                    }
                    op.responses
                        .responses
                        .entry(status.to_string())
                        .or_insert_with(|| RefOr::T(problem(description)));
                }
            }
        }
    }
}

fn problem(description: &str) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/problem+json",
            ContentBuilder::new()
                .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                    "Problem",
                ))))
                .build(),
        )
        .build()
}

/// The document for a service whose vectors have `dim` values: as served
/// (the configured `EMBEDDING_DIM`) and as committed (the default, 768).
pub fn document(dim: usize) -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).expect("the document always serializes");
    refine(&mut doc, dim);
    links(&mut doc);
    doc
}

/// What the derives cannot say, said once here and keyed by field name, so
/// that the schemas accept exactly what the parsers in `domain` accept (the
/// contract test fuzzes both directions: valid data taken, invalid refused).
fn refine(doc: &mut Value, dim: usize) {
    // U+0000-001F and U+007F-009F: what `char::is_control` refuses. (A
    // string holding one; `null`, where a field takes it, passes.)
    let control = json!({"type": "string", "pattern": "[\\u0000-\\u001F\\u007F-\\u009F]"});
    // Anything but Unicode White_Space (what `str::trim` removes); the
    // pattern is unanchored: "contains one such character".
    let not_blank =
        "[^\\t-\\r \\u0085\\u00A0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F\\u205F\\u3000]";
    let magnitude = |lo: f64, hi: f64| json!({"type": "number", "minimum": lo, "maximum": hi});
    let (lo, hi) = (Embedding::MIN_MAGNITUDE, Embedding::MAX_MAGNITUDE);
    let field = |name: &str, schema: &mut Map<String, Value>| match name {
        "context_type" => {
            schema.insert("minLength".into(), json!(1));
            schema.insert("maxLength".into(), json!(ContextType::MAX_CHARS));
            schema.insert("not".into(), control.clone());
        }
        "key" => {
            schema.insert("minLength".into(), json!(1));
            schema.insert("maxLength".into(), json!(ContextKey::MAX_CHARS));
            schema.insert("not".into(), control.clone());
        }
        "text" | "query" => {
            schema.insert("pattern".into(), json!(not_blank));
        }
        "cursor" => {
            schema.insert("pattern".into(), json!(Cursor::PATTERN));
        }
        "ttl_seconds" => {
            schema.insert("minimum".into(), json!(1));
            schema.insert("maximum".into(), json!(Expiry::MAX_TTL_SECONDS));
        }
        "embedding" | "vector" if schema.contains_key("items") => {
            schema.insert("minItems".into(), json!(dim));
            schema.insert("maxItems".into(), json!(dim));
            schema.insert(
                "items".into(),
                json!({"anyOf": [{"const": 0}, magnitude(lo, hi), magnitude(-hi, -lo)]}),
            );
            // Not all zeros (cosine similarity is undefined).
            schema.insert(
                "not".into(),
                json!({"type": "array", "items": {"const": 0}}),
            );
        }
        _ => {}
    };
    for name in [
        "CreateContextRequest",
        "PatchContextRequest",
        "SearchRequest",
    ] {
        let schema = &mut doc["components"]["schemas"][name];
        if let Some(props) = schema["properties"].as_object_mut() {
            for (name, prop) in props.iter_mut() {
                if let Some(prop) = prop.as_object_mut() {
                    field(name, prop);
                }
            }
        }
    }
    if let Some(params) = doc["paths"]["/contexts"]["get"]["parameters"].as_array_mut() {
        for p in params {
            let name = p["name"].as_str().unwrap_or_default().to_owned();
            if let Some(schema) = p["schema"].as_object_mut() {
                field(&name, schema);
            }
            // The metadata filter is a JSON object in the query string.
            if name == "metadata" {
                let p = p.as_object_mut().expect("a parameter is an object");
                p.remove("schema");
                p.insert(
                    "content".into(),
                    json!({"application/json": {"schema": {"type": "object"}}}),
                );
            }
        }
    }
    // PUT takes a create's body, with its key required.
    let put = &mut doc["paths"]["/contexts"]["put"]["requestBody"]["content"]["application/json"];
    if put.is_object() {
        put["schema"] = json!({"allOf": [
            {"$ref": "#/components/schemas/CreateContextRequest"},
            {"required": ["key"], "properties": {"key": {"type": "string"}}},
        ]});
    }
    // One of expires_at and ttl_seconds. A create reads `null` as absent; a
    // PATCH reads `expires_at: null` as "clear it", so there it counts.
    doc["components"]["schemas"]["CreateContextRequest"]["not"] = json!({
        "required": ["expires_at", "ttl_seconds"],
        "properties": {"expires_at": {"type": "string"}, "ttl_seconds": {"type": "number"}},
    });
    doc["components"]["schemas"]["PatchContextRequest"]["not"] = json!({
        "required": ["expires_at", "ttl_seconds"],
        "properties": {"ttl_seconds": {"type": "number"}},
    });
    // By mode (absent is `vector`; `null` is absent): vector takes exactly
    // one of query and vector; text a query and no vector; hybrid a query.
    doc["components"]["schemas"]["SearchRequest"]["oneOf"] = json!([
        {
            "properties": {"mode": {"enum": ["vector", null]}},
            "oneOf": [
                {"required": ["query"], "properties": {"query": {"type": "string"}}},
                {"required": ["vector"], "properties": {"vector": {"type": "array"}}},
            ],
        },
        {
            "required": ["mode", "query"],
            "properties": {
                "mode": {"const": "text"},
                "query": {"type": "string"},
                "vector": {"type": "null"},
            },
        },
        {
            "required": ["mode", "query"],
            "properties": {"mode": {"const": "hybrid"}, "query": {"type": "string"}},
        },
    ]);
    // A header is a string or absent, never null (its Option is `required: false`).
    for (path, method) in [
        ("/contexts", "post"),
        ("/contexts", "put"),
        ("/contexts/batch", "post"),
    ] {
        if let Some(params) = doc["paths"][path][method]["parameters"].as_array_mut() {
            for p in params.iter_mut().filter(|p| p["name"] == "Idempotency-Key") {
                p["schema"] = json!({"type": "string", "pattern": "^[!-~]{1,255}$"});
            }
        }
    }
    // If-Match: `*` or entity tags (empty: no condition); a tag that names
    // no version answers 412, anything else 400.
    for (path, method) in [("/contexts/{id}", "patch"), ("/contexts/{id}", "delete")] {
        if let Some(params) = doc["paths"][path][method]["parameters"].as_array_mut() {
            for p in params.iter_mut().filter(|p| p["name"] == "If-Match") {
                p["schema"] = json!({
                    "type": "string",
                    "pattern": "^(\\*|(W/)?\"[^\"]*\"(, *(W/)?\"[^\"]*\")*)?$",
                });
            }
        }
    }
}

/// OpenAPI links: what a client can do next with a created or updated
/// context. Stateful fuzzing follows them (create, then get, patch, search
/// and delete that id).
fn links(doc: &mut Value) {
    let id = "$response.body#/id";
    let etag = "$response.header.ETag";
    let next = json!({
        "GetContext": {"operationId": "get_context", "parameters": {"path.id": id},
            "description": "Read it back"},
        "UpdateContext": {"operationId": "update_context",
            "parameters": {"path.id": id, "header.If-Match": etag},
            "description": "Change it, if it is still this version"},
        "DeleteContext": {"operationId": "delete_context", "parameters": {"path.id": id},
            "description": "Delete it"},
        "SearchUser": {"operationId": "search_contexts",
            "requestBody": {"user_id": "$response.body#/user_id"},
            "description": "Search its user's contexts"},
        "ListUser": {"operationId": "list_contexts",
            "parameters": {"query.user_id": "$response.body#/user_id"},
            "description": "List its user's contexts"},
    });
    for (path, method, status) in [
        ("/contexts", "post", "201"),
        ("/contexts", "put", "201"),
        ("/contexts", "put", "200"),
        ("/contexts/{id}", "get", "200"),
        ("/contexts/{id}", "patch", "200"),
    ] {
        let response = &mut doc["paths"][path][method]["responses"][status];
        if response.is_object() {
            response["links"] = next.clone();
        }
    }
}

/// GET /openapi.json (built once: the dimension does not change while running).
pub async fn openapi_json(State(state): State<AppState>) -> Response {
    static JSON: OnceLock<String> = OnceLock::new();
    let body = JSON.get_or_init(|| document(state.contexts.dim()).to_string());
    ([(header::CONTENT_TYPE, "application/json")], body.as_str()).into_response()
}

/// GET /docs: Swagger UI on /openapi.json, "Try it out" against this server.
pub async fn docs_page() -> Html<&'static str> {
    Html(
        r##"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>context-api: API documentation</title>
<link rel="stylesheet" href="/docs/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/docs/swagger-ui-bundle.js"></script>
<script>
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  persistAuthorization: true,
  presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout"
});
</script>
</body>
</html>
"##,
    )
}

/// Swagger UI 5.17.14 (Apache-2.0, assets/swagger-ui/LICENSE), gzipped.
const BUNDLE_JS: &[u8] = include_bytes!("../../assets/swagger-ui/swagger-ui-bundle.js.gz");
const UI_CSS: &[u8] = include_bytes!("../../assets/swagger-ui/swagger-ui.css.gz");

/// GET /docs/{asset}: the two assets the page loads, sent gzipped (every
/// browser accepts it); cached for a day.
pub async fn docs_asset(Path(asset): Path<String>) -> Response {
    let (body, content_type) = match asset.as_str() {
        "swagger-ui-bundle.js" => (BUNDLE_JS, "text/javascript; charset=utf-8"),
        "swagger-ui.css" => (UI_CSS, "text/css; charset=utf-8"),
        _ => return crate::error::ApiError::NotFound.into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CONTENT_ENCODING, HeaderValue::from_static("gzip")),
            (header::VARY, HeaderValue::from_static("Accept-Encoding")),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=86400"),
            ),
        ],
        body,
    )
        .into_response()
}
