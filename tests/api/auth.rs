use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{assert_problem, spawn_app, SendExt, DIM};

#[tokio::test]
async fn every_contexts_route_needs_a_bearer_key() {
    let app = spawn_app().await;
    let id = uuid::Uuid::now_v7();
    let routes = [
        (Method::POST, "/contexts".to_string()),
        (Method::GET, "/contexts".to_string()),
        (Method::GET, format!("/contexts/{id}")),
        (Method::PATCH, format!("/contexts/{id}")),
        (Method::DELETE, format!("/contexts/{id}")),
        (Method::POST, "/contexts/search".to_string()),
    ];
    for (method, path) in routes {
        let resp = app
            .client
            .request(method.clone(), app.url(&path))
            .json(&json!({}))
            .sent()
            .await;
        assert_eq!(
            resp.headers()["www-authenticate"],
            "Bearer",
            "{method} {path}"
        );
        assert_problem(resp, 401).await;
        let resp = app
            .req_as("wrong-key", method.clone(), &path)
            .json(&json!({}))
            .sent()
            .await;
        assert_problem(resp, 401).await;
    }
    // Probes stay open.
    for path in ["/health", "/ready", "/metrics"] {
        let resp = app.client.get(app.url(path)).sent().await;
        assert_eq!(resp.status(), 200, "{path}");
    }
}

#[tokio::test]
async fn a_user_key_writes_only_its_own_user() {
    let app = spawn_app().await;
    let resp = app
        .req_as(&app.alice.key, Method::POST, "/contexts")
        .json(&json!({"user_id": app.bob.id, "context_type": "t", "content": {"text": "x"}}))
        .sent()
        .await;
    assert_problem(resp, 403).await;
    // Without user_id a user key writes for itself.
    let resp = app
        .req_as(&app.alice.key, Method::POST, "/contexts")
        .json(&json!({"context_type": "t", "content": {"text": "mine"}}))
        .sent()
        .await;
    assert_eq!(resp.status(), 201);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["user_id"], json!(app.alice.id));
}

#[tokio::test]
async fn another_users_context_is_404_for_read_update_and_delete() {
    let app = spawn_app().await;
    let c = app
        .create(app.bob.id, json!({"content": {"text": "bob's secret"}}))
        .await;
    let path = format!("/contexts/{}", c["id"].as_str().unwrap());
    let resp = app.req_as(&app.alice.key, Method::GET, &path).sent().await;
    assert_problem(resp, 404).await;
    let resp = app
        .req_as(&app.alice.key, Method::PATCH, &path)
        .json(&json!({"metadata": {"x": 1}}))
        .sent()
        .await;
    assert_problem(resp, 404).await;
    let resp = app
        .req_as(&app.alice.key, Method::DELETE, &path)
        .sent()
        .await;
    assert_problem(resp, 404).await;
    // Bob's key and the admin key see it.
    assert_eq!(
        app.req_as(&app.bob.key, Method::GET, &path)
            .sent()
            .await
            .status(),
        200
    );
    assert_eq!(app.req(Method::GET, &path).sent().await.status(), 200);
}

#[tokio::test]
async fn list_and_search_are_confined_to_the_keys_user() {
    let app = spawn_app().await;
    app.create(
        app.alice.id,
        json!({"content": {"text": "apple pie recipe"}}),
    )
    .await;
    app.create(app.bob.id, json!({"content": {"text": "apple pie recipe"}}))
        .await;

    let page: Value = app
        .req_as(&app.alice.key, Method::GET, "/contexts")
        .sent()
        .await
        .json()
        .await
        .unwrap();
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["user_id"], json!(app.alice.id));
    let resp = app
        .req_as(
            &app.alice.key,
            Method::GET,
            &format!("/contexts?user_id={}", app.bob.id),
        )
        .sent()
        .await;
    assert_problem(resp, 403).await;

    let body: Value = app
        .req_as(&app.alice.key, Method::POST, "/contexts/search")
        .json(&json!({"query": "apple pie"}))
        .sent()
        .await
        .json()
        .await
        .unwrap();
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 1);
    assert_eq!(results[0]["context"]["user_id"], json!(app.alice.id));
    let resp = app
        .req_as(&app.alice.key, Method::POST, "/contexts/search")
        .json(&json!({"vector": vec![0.5f32; DIM], "user_id": app.bob.id}))
        .sent()
        .await;
    assert_problem(resp, 403).await;
}
