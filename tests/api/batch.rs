//! POST /contexts/batch: many creates in one request, a result per item.

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{assert_problem, spawn_app, spawn_app_with, Options, SendExt, ADMIN_KEY, DIM};

fn vector(seed: f32) -> Vec<f32> {
    (0..DIM).map(|i| ((i as f32) * seed).sin() + 1.5).collect()
}

async fn batch(app: &crate::helpers::TestApp, key: &str, items: Value) -> reqwest::Response {
    app.req_as(key, Method::POST, "/contexts/batch")
        .json(&json!({ "items": items }))
        .sent()
        .await
}

#[tokio::test]
async fn batch_answers_each_item_in_order_and_bad_items_fail_alone() {
    let app = spawn_app().await;
    let alice = app.alice.id;
    let resp = batch(
        &app,
        ADMIN_KEY,
        json!([
            {"user_id": alice, "context_type": "note", "content": {"text": "given vector"}, "embedding": vector(0.3)},
            {"user_id": alice, "context_type": "note", "content": {"text": "embedded by TEI"}},
            {"user_id": alice, "content": {"text": "no context_type"}},
            {"user_id": alice, "context_type": "note", "content": {"text": "wrong dimension"}, "embedding": [1.0, 2.0]},
            {"user_id": alice, "context_type": "note", "content": {"text": "ttl"}, "ttl_seconds": 3600, "metadata": {"k": "v"}},
        ]),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        (body["created"].as_u64(), body["failed"].as_u64()),
        (Some(3), Some(2))
    );
    let results = body["results"].as_array().unwrap();
    let statuses: Vec<u64> = results
        .iter()
        .map(|r| r["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [201, 201, 422, 422, 201]);
    for (i, r) in results
        .iter()
        .enumerate()
        .filter(|(_, r)| r["status"] == 422)
    {
        assert_eq!(r["problem"]["status"], 422);
        assert_eq!(r["problem"]["type"], "urn:context-api:problem:validation");
        let detail = r["problem"]["detail"].as_str().unwrap();
        assert!(detail.starts_with(&format!("items[{i}]")), "{detail}");
        assert!(r.get("context").is_none());
    }
    assert_eq!(results[0]["context"]["content"]["text"], "given vector");
    assert_eq!(results[0]["context"]["embedding_status"], "ready");
    assert_eq!(results[1]["context"]["embedding_status"], "ready");
    assert_eq!(results[4]["context"]["metadata"], json!({"k": "v"}));
    assert!(results[4]["context"]["expires_at"].is_string());

    // Each created item reads back as its single-create twin would.
    for r in results.iter().filter(|r| r["status"] == 201) {
        let id = r["context"]["id"].as_str().unwrap();
        let fetched = app.get_json(&format!("/contexts/{id}")).await;
        assert_eq!(fetched, r["context"]);
    }
    // And the given vector was stored as given.
    let id = results[0]["context"]["id"].as_str().unwrap();
    let (_, stored) = app.with_embedding(id).await;
    crate::helpers::assert_close(&stored, &vector(0.3));
}

#[tokio::test]
async fn text_items_are_embedded_in_batches_of_the_providers_size() {
    // The stand-in refuses batches over 8 with 413, as TEI does.
    let app = spawn_app_with(Options {
        tei_max_batch: 8,
        ..Options::default()
    })
    .await;
    // The first call to the provider also probes it: warm that up first.
    app.create(app.alice.id, json!({"content": {"text": "warm up"}}))
        .await;
    let before = app.tei.embed_calls();
    let items: Vec<Value> = (0..20)
        .map(|i| json!({"user_id": app.alice.id, "context_type": "note", "content": {"text": format!("memory {i}")}}))
        .collect();
    let body: Value = batch(&app, ADMIN_KEY, json!(items))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["created"], 20);
    assert!(body["results"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["context"]["embedding_status"] == "ready"));
    assert_eq!(
        app.tei.embed_calls() - before,
        3,
        "20 texts in batches of at most 8"
    );
}

#[tokio::test]
async fn a_user_key_writes_only_its_own_user_in_a_batch() {
    let app = spawn_app().await;
    let resp = batch(
        &app,
        &app.alice.key,
        json!([
            {"context_type": "note", "content": {"text": "mine"}},
            {"user_id": app.bob.id, "context_type": "note", "content": {"text": "bob's"}},
        ]),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["results"][0]["status"], 201);
    assert_eq!(
        body["results"][0]["context"]["user_id"],
        json!(app.alice.id)
    );
    assert_eq!(body["results"][1]["status"], 403);
    assert_eq!(body["results"][1]["problem"]["status"], 403);

    let listed = app
        .get_json(&format!("/contexts?user_id={}", app.bob.id))
        .await;
    assert_eq!(listed["items"], json!([]), "nothing was written for bob");
}

#[tokio::test]
async fn a_batch_holds_one_to_a_thousand_items_and_needs_a_key() {
    let app = spawn_app().await;
    assert_problem(batch(&app, ADMIN_KEY, json!([])).await, 422).await;
    let item = json!({"user_id": app.alice.id, "context_type": "note", "content": {"text": "x"}});
    let too_many: Vec<Value> = std::iter::repeat_n(item.clone(), 1001).collect();
    let problem = assert_problem(batch(&app, ADMIN_KEY, json!(too_many)).await, 422).await;
    assert!(problem["detail"].as_str().unwrap().contains("1001"));
    let resp = app
        .client
        .post(app.url("/contexts/batch"))
        .json(&json!({"items": [item]}))
        .sent()
        .await;
    assert_problem(resp, 401).await;
}

#[tokio::test]
async fn concurrent_single_creates_share_provider_calls() {
    let app = spawn_app().await;
    app.create(app.alice.id, json!({"content": {"text": "warm up"}}))
        .await;
    // A slow provider, as a real model server under load is.
    app.tei.set_delay(std::time::Duration::from_millis(200));
    let before = app.tei.embed_calls();
    let creates = (0..24).map(|i| {
        app.req(Method::POST, "/contexts")
            .json(&json!({"user_id": app.alice.id, "context_type": "note", "content": {"text": format!("memory {i}")}}))
            .send()
    });
    for resp in futures_util::future::join_all(creates).await {
        let body: Value = resp.unwrap().json().await.unwrap();
        assert_eq!(body["embedding_status"], "ready", "{body}");
    }
    let calls = app.tei.embed_calls() - before;
    assert!(
        calls <= 12,
        "24 concurrent texts took {calls} provider calls"
    );
}
