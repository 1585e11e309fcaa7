//! The API's contract: an OpenAPI 3.1 document generated from the handlers and
//! types (`GET /openapi.json`; a copy is committed as `docs/openapi.json` and a
//! test keeps the two equal), and Swagger UI at `/docs`, whose assets are built
//! into the binary: the page works on a network with no internet.

use std::sync::OnceLock;

use axum::extract::Path;
use axum::http::{header, HeaderValue};
use axum::response::{Html, IntoResponse, Response};

use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use super::{contexts, health, search};
use crate::error::Problem;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "context-api",
        description = "Per-user memory for LLM applications: JSON contexts with an embedding, \
                       found again by vector search. Errors are RFC 9457 problems.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        contexts::create_context,
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
                "503",
                "Overloaded, or a required dependency is down (Retry-After)",
                false,
            ),
        ];
        for (path, item) in doc.paths.paths.iter_mut() {
            if !path.starts_with("/contexts") {
                continue;
            }
            let ops: [Option<&mut Operation>; 4] = [
                item.get.as_mut(),
                item.post.as_mut(),
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

/// The document, as served and as committed.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// GET /openapi.json (built once).
pub async fn openapi_json() -> Response {
    static JSON: OnceLock<String> = OnceLock::new();
    let body = JSON.get_or_init(|| {
        document()
            .to_json()
            .expect("the document always serializes")
    });
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
