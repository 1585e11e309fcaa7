//! The HTTP surface: public probes, the authenticated /contexts API and its
//! MCP server at /mcp, and the middleware around them.

mod contexts;
pub(crate) mod extract;
mod health;
mod idempotency;
pub mod mcp;
mod middleware;
pub mod openapi;
mod search;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;

use crate::error::ApiError;
use crate::state::AppState;
pub use middleware::{Admission, RateLimits};

/// The batch route accepts this many times MAX_BODY_BYTES (16 MiB by default).
pub const BATCH_BODY_FACTOR: usize = 16;

pub fn router(
    state: AppState,
    admission: Admission,
    limits: RateLimits,
    max_body_bytes: usize,
) -> Router {
    // Liveness, readiness and metrics stay outside admission control: probes
    // must answer while the API sheds load.
    let public = Router::new()
        .route("/health", get(health::health))
        .route("/ready", get(health::ready))
        .route("/metrics", get(health::metrics))
        .route("/openapi.json", get(openapi::openapi_json))
        .route("/docs", get(openapi::docs_page))
        .route("/docs/", get(openapi::docs_page))
        .route("/docs/{asset}", get(openapi::docs_asset));

    let api = Router::new()
        .route(
            "/contexts",
            post(contexts::create_context)
                .get(contexts::list_contexts)
                .put(contexts::put_context),
        )
        .route("/contexts/search", post(search::search_contexts))
        .route(
            "/contexts/batch",
            // A full batch of 768-d vectors as JSON is about 9 MB.
            post(contexts::create_contexts).layer(DefaultBodyLimit::max(
                max_body_bytes.saturating_mul(BATCH_BODY_FACTOR),
            )),
        )
        .route(
            "/contexts/{id}",
            get(contexts::get_context)
                .patch(contexts::update_context)
                .delete(contexts::delete_context),
        )
        // MCP over streamable HTTP: the caller's scope travels in the
        // request's extensions to the tools.
        .route_service(
            "/mcp",
            mcp::http_service(state.contexts.clone(), max_body_bytes),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::authenticate,
        ))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(
            admission,
            middleware::admit,
        ))
        // Outside admission: a throttled key takes no admission slot.
        .layer(axum::middleware::from_fn_with_state(
            limits,
            middleware::rate_limit,
        ));

    let app = public
        .merge(api)
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(axum::middleware::from_fn(middleware::track_metrics))
        .with_state(state);
    middleware::observe(app)
}
