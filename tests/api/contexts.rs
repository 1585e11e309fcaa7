use reqwest::Method;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{
    assert_close, assert_problem, spawn_app, spawn_app_with, Options, SendExt, DIM,
};

#[tokio::test]
async fn create_returns_201_location_etag_and_the_context() {
    let app = spawn_app().await;
    let resp = app
        .req(Method::POST, "/contexts")
        .json(&json!({
            "user_id": app.alice.id,
            "context_type": "preference",
            "content": {"text": "likes green tea", "source": "chat"},
            "metadata": {"lang": "en"}
        }))
        .sent()
        .await;
    assert_eq!(resp.status(), 201);
    let etag = resp.headers()["etag"].to_str().unwrap().to_owned();
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(etag, "\"1\"");
    assert_eq!(
        location,
        format!("/contexts/{}", body["id"].as_str().unwrap())
    );
    assert_eq!(body["version"], 1);
    assert_eq!(body["user_id"], json!(app.alice.id));
    assert_eq!(body["context_type"], "preference");
    assert_eq!(body["content"]["source"], "chat");
    assert_eq!(body["metadata"], json!({"lang": "en"}));
    assert_eq!(body["embedding_status"], "ready");
    assert_eq!(body["is_active"], true);
    assert!(body["expires_at"].is_null());
    assert!(
        body.get("embedding").is_none(),
        "the vector is only sent when asked for"
    );
    // The text embedded was content.text.
    assert!(app.tei.inputs().contains(&"likes green tea".to_string()));

    let resp = app
        .client
        .get(app.url(&location))
        .bearer_auth(crate::helpers::ADMIN_KEY)
        .sent()
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["etag"], "\"1\"");
    let fetched: Value = resp.json().await.unwrap();
    assert_eq!(fetched, body);
}

#[tokio::test]
async fn embedded_text_is_text_then_content_text_then_compact_json() {
    let app = spawn_app().await;
    app.create(
        app.alice.id,
        json!({"content": {"text": "ignored"}, "text": "explicit words"}),
    )
    .await;
    app.create(app.alice.id, json!({"content": {"a": 1, "b": [true]}}))
        .await;
    let inputs = app.tei.inputs();
    assert!(inputs.contains(&"explicit words".to_string()), "{inputs:?}");
    assert!(
        inputs.contains(&r#"{"a":1,"b":[true]}"#.to_string()),
        "{inputs:?}"
    );
}

#[tokio::test]
async fn a_given_embedding_is_stored_as_is_without_calling_tei() {
    let app = spawn_app().await;
    let vector: Vec<f32> = (0..DIM).map(|i| i as f32 + 1.0).collect();
    let created = app
        .create(
            app.alice.id,
            json!({"content": {"text": "given vector"}, "embedding": vector}),
        )
        .await;
    assert_eq!(created["embedding_status"], "ready");
    assert!(
        !app.tei.inputs().contains(&"given vector".to_string()),
        "TEI must not be called"
    );
    let (_, got) = app.with_embedding(created["id"].as_str().unwrap()).await;
    assert_eq!(got, vector);
}

#[tokio::test]
async fn get_is_404_for_absent_soft_deleted_and_expired() {
    let app = spawn_app().await;
    assert_problem(app.get(&Uuid::now_v7().to_string()).await, 404).await;

    let c = app
        .create(app.alice.id, json!({"content": {"text": "x"}}))
        .await;
    let id = c["id"].as_str().unwrap();
    let resp = app
        .req(Method::DELETE, &format!("/contexts/{id}"))
        .sent()
        .await;
    assert_eq!(resp.status(), 204);
    assert_problem(app.get(id).await, 404).await;

    // Soft delete keeps the row, inactive.
    let pool = app.db.pool().await;
    let (active, version): (bool, i32) =
        sqlx::query_as("SELECT is_active, version FROM contexts WHERE id = $1::uuid")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(!active);
    assert_eq!(version, 2);

    let past = (chrono::Utc::now() - chrono::Duration::seconds(5)).to_rfc3339();
    let c = app
        .create(
            app.alice.id,
            json!({"content": {"text": "old"}, "expires_at": past}),
        )
        .await;
    assert_problem(app.get(c["id"].as_str().unwrap()).await, 404).await;
}

#[tokio::test]
async fn hard_delete_removes_the_row() {
    let app = spawn_app().await;
    let c = app
        .create(app.alice.id, json!({"content": {"text": "x"}}))
        .await;
    let id = c["id"].as_str().unwrap();
    let resp = app
        .req(Method::DELETE, &format!("/contexts/{id}?hard=true"))
        .sent()
        .await;
    assert_eq!(resp.status(), 204);
    let pool = app.db.pool().await;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM contexts WHERE id = $1::uuid")
        .bind(id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 0);
    assert_problem(app.get(id).await, 404).await;
    let resp = app
        .req(Method::DELETE, &format!("/contexts/{id}?hard=true"))
        .sent()
        .await;
    assert_problem(resp, 404).await;
}

#[tokio::test]
async fn ttl_seconds_sets_expires_at_and_both_is_422() {
    let app = spawn_app().await;
    let c = app
        .create(
            app.alice.id,
            json!({"content": {"text": "x"}, "ttl_seconds": 3600}),
        )
        .await;
    let at: chrono::DateTime<chrono::Utc> = c["expires_at"].as_str().unwrap().parse().unwrap();
    let left = at - chrono::Utc::now();
    assert!(
        left > chrono::Duration::seconds(3590) && left <= chrono::Duration::seconds(3600),
        "{left}"
    );

    let resp = app
        .req(Method::POST, "/contexts")
        .json(
            &json!({"user_id": app.alice.id, "context_type": "t", "content": {},
                      "ttl_seconds": 5, "expires_at": "2030-01-01T00:00:00Z"}),
        )
        .sent()
        .await;
    assert_problem(resp, 422).await;
}

#[tokio::test]
async fn patch_replaces_given_fields_bumps_version_and_reembeds_on_text_change() {
    let app = spawn_app().await;
    let c = app
        .create(
            app.alice.id,
            json!({"content": {"text": "first words"}, "metadata": {"a": 1}}),
        )
        .await;
    let id = c["id"].as_str().unwrap();
    let calls = app.tei.embed_calls();

    // Metadata only: no re-embedding.
    let resp = app
        .req(Method::PATCH, &format!("/contexts/{id}"))
        .json(&json!({"metadata": {"b": 2}}))
        .sent()
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["etag"], "\"2\"");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["metadata"], json!({"b": 2}));
    assert_eq!(body["content"]["text"], "first words");
    assert_eq!(body["version"], 2);
    assert_eq!(
        app.tei.embed_calls(),
        calls,
        "unchanged text is not re-embedded"
    );

    // New content text: re-embedded.
    let resp = app
        .req(Method::PATCH, &format!("/contexts/{id}"))
        .json(&json!({"content": {"text": "second words"}, "context_type": "fact"}))
        .sent()
        .await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["version"], 3);
    assert_eq!(body["context_type"], "fact");
    assert_eq!(app.tei.embed_calls(), calls + 1);
    assert_eq!(app.tei.inputs().last().unwrap(), "second words");

    // The stored vector is the new text's.
    let (_, got) = app.with_embedding(id).await;
    assert_close(&got, &crate::tei::vector("second words", DIM));

    // expires_at: null clears, a TTL sets.
    let resp = app
        .req(Method::PATCH, &format!("/contexts/{id}"))
        .json(&json!({"ttl_seconds": 60}))
        .sent()
        .await;
    let body: Value = resp.json().await.unwrap();
    assert!(body["expires_at"].is_string());
    let resp = app
        .req(Method::PATCH, &format!("/contexts/{id}"))
        .json(&json!({"expires_at": null}))
        .sent()
        .await;
    let body: Value = resp.json().await.unwrap();
    assert!(body["expires_at"].is_null());
    assert_eq!(body["version"], 5);
}

#[tokio::test]
async fn if_match_is_honored_on_patch_and_delete() {
    let app = spawn_app().await;
    let c = app
        .create(app.alice.id, json!({"content": {"text": "x"}}))
        .await;
    let id = c["id"].as_str().unwrap();
    let path = format!("/contexts/{id}");

    let resp = app
        .req(Method::PATCH, &path)
        .header("if-match", "\"1\"")
        .json(&json!({"metadata": {"v": 2}}))
        .sent()
        .await;
    assert_eq!(resp.status(), 200);
    // A client still holding version 1 is refused.
    let resp = app
        .req(Method::PATCH, &path)
        .header("if-match", "\"1\"")
        .json(&json!({"metadata": {"v": 3}}))
        .sent()
        .await;
    assert_problem(resp, 412).await;
    let resp = app
        .req(Method::DELETE, &path)
        .header("if-match", "\"1\"")
        .sent()
        .await;
    assert_problem(resp, 412).await;
    // A tag that is no version of ours never matches; a header that is no
    // list of tags at all is malformed.
    let resp = app
        .req(Method::DELETE, &path)
        .header("if-match", "\"garbage\"")
        .sent()
        .await;
    assert_problem(resp, 412).await;
    for malformed in ["garbage", "{}"] {
        let resp = app
            .req(Method::DELETE, &path)
            .header("if-match", malformed)
            .sent()
            .await;
        assert_problem(resp, 400).await;
        let resp = app
            .req(Method::PATCH, &path)
            .header("if-match", malformed)
            .json(&json!({"metadata": {"v": 4}}))
            .sent()
            .await;
        assert_problem(resp, 400).await;
    }
    // The stored context is untouched by the refused writes.
    let body: Value = app.get(id).await.json().await.unwrap();
    assert_eq!(body["metadata"], json!({"v": 2}));

    // Any tag of the list may name the current version.
    let resp = app
        .req(Method::PATCH, &path)
        .header("if-match", "W/\"\", \"e\", \"1\", \"2\"")
        .json(&json!({"metadata": {"v": 3}}))
        .sent()
        .await;
    assert_eq!(resp.status(), 200);

    // A context that does not exist is a 404 whatever If-Match says: the
    // answer without the condition would not be a 2xx (RFC 9110, 13.2.1).
    let missing = format!("/contexts/{}", uuid::Uuid::now_v7());
    for tags in ["\"1\"", "\"garbage\"", "W/\"\""] {
        let resp = app
            .req(Method::PATCH, &missing)
            .header("if-match", tags)
            .json(&json!({"metadata": {"v": 5}}))
            .sent()
            .await;
        assert_problem(resp, 404).await;
        let resp = app
            .req(Method::DELETE, &missing)
            .header("if-match", tags)
            .sent()
            .await;
        assert_problem(resp, 404).await;
    }

    let resp = app
        .req(Method::DELETE, &path)
        .header("if-match", "\"2\", \"3\"")
        .sent()
        .await;
    assert_eq!(resp.status(), 204);
    // Deleted: a 404 now, with or without a condition.
    let resp = app
        .req(Method::DELETE, &path)
        .header("if-match", "\"3\"")
        .sent()
        .await;
    assert_problem(resp, 404).await;
}

#[tokio::test]
async fn list_is_newest_first_filtered_and_paged_by_a_stable_cursor() {
    let app = spawn_app().await;
    let mut ids = vec![];
    for i in 0..5 {
        let kind = if i % 2 == 0 { "even" } else { "odd" };
        let c = app
            .create(
                app.alice.id,
                json!({"context_type": kind, "content": {"text": format!("n{i}")}}),
            )
            .await;
        ids.push(c["id"].as_str().unwrap().to_owned());
    }
    app.create(app.bob.id, json!({"content": {"text": "bob's"}}))
        .await;

    let page: Value = app
        .get_json(&format!("/contexts?user_id={}&limit=2", app.alice.id))
        .await;
    let first: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(first, vec![ids[4].as_str(), ids[3].as_str()]);
    let cursor = page["next_cursor"].as_str().unwrap().to_owned();

    // Inserts between pages do not shift the next page.
    app.create(app.alice.id, json!({"content": {"text": "late"}}))
        .await;
    let page: Value = app
        .get_json(&format!(
            "/contexts?user_id={}&limit=2&cursor={cursor}",
            app.alice.id
        ))
        .await;
    let second: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(second, vec![ids[2].as_str(), ids[1].as_str()]);
    let cursor = page["next_cursor"].as_str().unwrap().to_owned();
    let page: Value = app
        .get_json(&format!(
            "/contexts?user_id={}&limit=2&cursor={cursor}",
            app.alice.id
        ))
        .await;
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    assert!(page["next_cursor"].is_null());

    let page: Value = app
        .get_json(&format!(
            "/contexts?user_id={}&context_type=even",
            app.alice.id
        ))
        .await;
    assert_eq!(page["items"].as_array().unwrap().len(), 3);
    assert!(page["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["context_type"] == "even"));

    // Admin without a filter sees everyone, default limit 20.
    let page: Value = app.get_json("/contexts").await;
    assert_eq!(page["items"].as_array().unwrap().len(), 7);
}

#[tokio::test]
async fn client_errors_are_problems_never_500() {
    let app = spawn_app().await;
    let post = |body: &'static str, ct: &'static str| {
        app.req(Method::POST, "/contexts")
            .header("content-type", ct)
            .body(body)
            .send()
    };
    assert_problem(post("{not json", "application/json").await.unwrap(), 400).await;
    assert_problem(post("{}", "text/plain").await.unwrap(), 415).await;
    // Wrong types and unknown fields are validation errors.
    assert_problem(
        post(r#"{"context_type": 5, "content": {}}"#, "application/json")
            .await
            .unwrap(),
        422,
    )
    .await;
    assert_problem(
        post(
            r#"{"context_type": "t", "content": {}, "bogus": 1}"#,
            "application/json",
        )
        .await
        .unwrap(),
        422,
    )
    .await;
    let bad = [
        json!({"user_id": "not-a-uuid", "context_type": "t", "content": {}}),
        json!({"user_id": app.alice.id, "context_type": "", "content": {}}),
        json!({"user_id": app.alice.id, "context_type": "x".repeat(51), "content": {}}),
        json!({"user_id": app.alice.id, "context_type": "t", "content": [1, 2]}),
        json!({"user_id": app.alice.id, "context_type": "t", "content": {}, "metadata": "m"}),
        json!({"user_id": app.alice.id, "context_type": "t", "content": {}, "embedding": [0.1, 0.2]}),
        json!({"user_id": app.alice.id, "context_type": "t", "content": {}, "ttl_seconds": -1}),
        json!({"context_type": "t", "content": {}}),
    ];
    for body in bad {
        let resp = app.req(Method::POST, "/contexts").json(&body).sent().await;
        assert_problem(resp, 422).await;
    }
    assert_problem(app.get("not-a-uuid").await, 422).await;
    for query in ["limit=0", "limit=abc", "cursor=zzz", "user_id=nope"] {
        let resp = app
            .req(Method::GET, &format!("/contexts?{query}"))
            .sent()
            .await;
        assert_problem(resp, 422).await;
    }
    let resp = app.req(Method::PATCH, "/contexts").sent().await;
    assert_problem(resp, 405).await;
    let resp = app.req(Method::GET, "/nowhere").sent().await;
    assert_problem(resp, 404).await;
}

#[tokio::test]
async fn a_body_over_the_limit_is_413() {
    let app = spawn_app_with(Options::default().set("max_body_bytes", 1024)).await;
    let big = "x".repeat(2048);
    let resp = app
        .req(Method::POST, "/contexts")
        .json(&json!({"user_id": app.alice.id, "context_type": "t", "content": {"text": big}}))
        .sent()
        .await;
    assert_problem(resp, 413).await;
    // A body of exactly the limit is fine.
    let body = |n: usize| {
        json!({"user_id": app.alice.id, "context_type": "t", "content": {"text": "x".repeat(n)}})
            .to_string()
    };
    let pad = 1024 - body(0).len();
    let at_limit = body(pad);
    assert_eq!(at_limit.len(), 1024);
    let resp = app
        .req(Method::POST, "/contexts")
        .header("content-type", "application/json")
        .body(at_limit)
        .sent()
        .await;
    assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap());
}
