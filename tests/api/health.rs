use reqwest::Method;
use serde_json::Value;

use crate::helpers::{spawn_app, spawn_app_with, Options, SendExt};

#[tokio::test]
async fn health_is_alive_without_touching_dependencies() {
    let app = spawn_app().await;
    let resp = app.client.get(app.url("/health")).sent().await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body, serde_json::json!({"status": "alive"}));
}

#[tokio::test]
async fn ready_reports_each_dependency() {
    let app = spawn_app().await;
    let resp = app.client.get(app.url("/ready")).sent().await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "ready");
    assert_eq!(body["checks"]["postgres"], "ok");
    assert_eq!(body["checks"]["redis"], "ok");
    assert!(body["checks"].get("embeddings").is_some(), "{body}");
}

#[tokio::test]
async fn ready_is_degraded_when_required_redis_is_down_but_not_when_optional() {
    // A port where nothing listens.
    let dead = "redis://127.0.0.1:1";
    let app = spawn_app_with(Options::default().set("redis_url", dead)).await;
    let resp = app.client.get(app.url("/ready")).sent().await;
    assert_eq!(resp.status(), 503);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "degraded");
    assert_eq!(body["checks"]["redis"], "down");

    let app = spawn_app_with(
        Options::default()
            .set("redis_url", dead)
            .set("redis_optional", true),
    )
    .await;
    let resp = app.client.get(app.url("/ready")).sent().await;
    assert_eq!(resp.status(), 200);

    // And a Redis outage never fails a request: the cache is bypassed.
    let created = app
        .create(
            app.alice.id,
            serde_json::json!({"content": {"text": "still works"}}),
        )
        .await;
    let resp = app.get(created["id"].as_str().unwrap()).await;
    assert_eq!(resp.status(), 200);
    let resp = app
        .search(serde_json::json!({"query": "still works"}))
        .await;
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn ready_is_degraded_when_postgres_is_gone() {
    let app = spawn_app().await;
    // Forbid new connections and end the app's: the database is "down".
    app.admin_sql(&format!(
        "ALTER DATABASE {} WITH ALLOW_CONNECTIONS false",
        app.db.name
    ))
    .await;
    app.terminate_connections().await;
    let resp = app.client.get(app.url("/ready")).sent().await;
    assert_eq!(resp.status(), 503);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "degraded");
    assert_eq!(body["checks"]["postgres"], "down");

    // A request that needs the database gets 503 with Retry-After, never a 500.
    let resp = app
        .req(
            Method::GET,
            "/contexts/0190b7a0-0000-7000-8000-000000000000",
        )
        .sent()
        .await;
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));

    app.admin_sql(&format!(
        "ALTER DATABASE {} WITH ALLOW_CONNECTIONS true",
        app.db.name
    ))
    .await;
}

#[tokio::test]
async fn metrics_are_prometheus_text_labelled_by_route_template() {
    let app = spawn_app().await;
    let created = app
        .create(app.alice.id, serde_json::json!({"content": {"text": "m"}}))
        .await;
    let id = created["id"].as_str().unwrap();
    assert_eq!(app.get(id).await.status(), 200);
    assert_eq!(app.get(id).await.status(), 200);
    assert_eq!(
        app.search(serde_json::json!({"query": "never asked before"}))
            .await
            .status(),
        200
    );
    let resp = app.client.get(app.url("/metrics")).sent().await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = resp.text().await.unwrap();
    for name in [
        "http_requests_total",
        "http_request_duration_seconds_bucket",
        "http_requests_in_flight",
        "db_pool_connections",
        "db_pool_idle_connections",
        "cache_hits_total",
        "cache_misses_total",
        "embedding_requests_total",
        "embedding_request_duration_seconds",
        "embeddings_pending",
    ] {
        assert!(text.contains(name), "missing {name} in:\n{text}");
    }
    assert!(
        text.contains("route=\"/contexts/{id}\""),
        "route template label missing"
    );
    assert!(!text.contains(id), "a raw path leaked into metric labels");
}

#[tokio::test]
async fn request_id_is_echoed_or_generated() {
    let app = spawn_app().await;
    let resp = app
        .client
        .get(app.url("/health"))
        .header("x-request-id", "abc-123")
        .sent()
        .await;
    assert_eq!(resp.headers()["x-request-id"], "abc-123");
    let resp = app.client.get(app.url("/health")).sent().await;
    let generated = resp.headers()["x-request-id"].to_str().unwrap();
    assert_eq!(generated.len(), 36, "a UUID: {generated}");
}
