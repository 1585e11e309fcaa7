//! Open routes for orchestrators: liveness, readiness, metrics.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde::Serialize;
use serde_json::{json, Value};

use crate::cache::CacheHealth;
use crate::embeddings::EmbedderState;
use crate::state::AppState;

/// Liveness: touches no dependency, so a database outage never restarts us.
#[utoipa::path(get, path = "/health", tag = "operations", security(()),
    responses((status = 200, description = "`{\"status\":\"alive\"}`", body = Object)))]
pub async fn health() -> Json<Value> {
    Json(json!({"status": "alive"}))
}

/// `ready`, `degraded` or `draining`, with each dependency's state.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Readiness {
    #[schema(pattern = "^(ready|degraded|draining)$")]
    status: &'static str,
    #[schema(value_type = Object)]
    checks: BTreeMap<&'static str, Value>,
}

const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Readiness: 503 while draining, or when Postgres (or a required Redis) fails.
/// The embedding service is reported, not required: writes go pending without it.
#[utoipa::path(get, path = "/ready", tag = "operations", security(()),
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "Degraded or draining", body = Readiness),
    ))]
pub async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Readiness>) {
    let contexts = &state.contexts;
    let (db, cache) = tokio::join!(
        tokio::time::timeout(CHECK_TIMEOUT, contexts.store().ping()),
        contexts.cache().health(CHECK_TIMEOUT)
    );
    let db_ok = matches!(db, Ok(Ok(())));
    let mut checks = BTreeMap::new();
    checks.insert("postgres", json!(if db_ok { "ok" } else { "down" }));
    // Reported, never required: their reads go to the primary meanwhile.
    if contexts.store().has_replicas() {
        checks.insert(
            "postgres_replicas",
            json!(contexts.store().replica_states()),
        );
    }
    let redis = match cache {
        CacheHealth::Ok => "ok",
        CacheHealth::Down if state.redis_optional => "down (optional)",
        CacheHealth::Down => "down",
        CacheHealth::Disabled => "disabled",
    };
    checks.insert("redis", json!(redis));
    // Reported, never required: without its invalidation channel the
    // in-process tier is bypassed and reads go to Redis.
    let local = match contexts.cache().local_live() {
        None => "disabled",
        Some(true) => "live",
        Some(false) => "off",
    };
    checks.insert("cache_local", json!(local));
    let embeddings = embedder_check(contexts.embedder().state());
    checks.insert("embeddings", embeddings);
    if let Some(previous) = contexts.previous() {
        checks.insert("embeddings_previous", embedder_check(previous.state()));
    }
    // Reported, never required: searches keep serving the stored vectors.
    let vectors = contexts.vectors();
    let reembed = match &vectors.target {
        None => json!({"state": "idle", "model": vectors.active_model, "dim": vectors.active_dim}),
        Some(t) => json!({
            "state": "running", "model": t.model, "dim": t.dim,
            "rows_done": vectors.rows_done, "rows_total": vectors.rows_total,
        }),
    };
    checks.insert("reembed", reembed);
    let redis_ok = cache != CacheHealth::Down || state.redis_optional;
    let (code, status) = if state.lifecycle.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining")
    } else if db_ok && redis_ok {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "degraded")
    };
    (code, Json(Readiness { status, checks }))
}

fn embedder_check(state: EmbedderState) -> Value {
    match state {
        EmbedderState::Unknown => json!("not contacted yet"),
        EmbedderState::Ready { model } => json!({"status": "ok", "model": model}),
        EmbedderState::Unavailable => json!("unavailable"),
        EmbedderState::DimensionMismatch { expected, got } => json!({
            "status": "dimension_mismatch", "expected": expected, "got": got
        }),
    }
}

/// Prometheus text format. Gauges of shared resources are read at scrape time.
#[utoipa::path(get, path = "/metrics", tag = "operations", security(()),
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let store = state.contexts.store();
    let (size, idle) = store.pool_size();
    metrics::gauge!("db_pool_connections").set(size as f64);
    metrics::gauge!("db_pool_idle_connections").set(idle as f64);
    if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(1), store.pending_count()).await {
        metrics::gauge!("embeddings_pending").set(n as f64);
    }
    state.metrics.run_upkeep();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}
