//! Client keys: a context may carry a name of the client's choosing, unique
//! among its user's live contexts. `PUT /contexts` creates the context of a
//! key or replaces it (what a memory store's put(namespace, key) needs); a
//! create with a key in use is 409; delete and expiry free a key; list finds
//! a context by key, and by metadata containment.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{assert_problem, result_ids, spawn_app, SendExt, TestApp};

async fn put(app: &TestApp, body: Value) -> reqwest::Response {
    app.req(Method::PUT, "/contexts").json(&body).sent().await
}

async fn listed(app: &TestApp, query: &str) -> Vec<Value> {
    let body = app.get_json(&format!("/contexts?{query}")).await;
    body["items"].as_array().unwrap().clone()
}

#[tokio::test]
async fn put_creates_then_replaces_the_context_of_a_key() {
    let app = spawn_app().await;
    let user = app.alice.id;
    let body = |text: &str| {
        json!({"user_id": user, "key": "favourite-drink", "context_type": "preference",
               "content": {"text": text}, "metadata": {"topic": "drinks"}})
    };
    let resp = put(&app, body("green tea every morning")).await;
    assert_eq!(resp.status(), 201);
    assert!(resp.headers().get("location").is_some());
    let first: Value = resp.json().await.unwrap();
    assert_eq!(
        (first["key"].as_str(), first["version"].as_i64()),
        (Some("favourite-drink"), Some(1))
    );
    let id = first["id"].as_str().unwrap().to_owned();

    let resp = put(&app, body("black coffee after lunch")).await;
    assert_eq!(resp.status(), 200, "the same key replaces");
    assert_eq!(resp.headers()["etag"], "\"2\"");
    let second: Value = resp.json().await.unwrap();
    assert_eq!(second["id"], first["id"], "the id stays");
    assert_eq!(second["created_at"], first["created_at"]);
    assert_eq!(second["content"]["text"], "black coffee after lunch");

    // Read back by id (the cache too), by key, and found by its new text.
    let got = app.get_json(&format!("/contexts/{id}")).await;
    assert_eq!(
        (got["version"].as_i64(), &got["content"]["text"]),
        (Some(2), &json!("black coffee after lunch"))
    );
    let by_key = listed(&app, &format!("user_id={user}&key=favourite-drink")).await;
    assert_eq!(by_key.len(), 1);
    assert_eq!(by_key[0]["id"], first["id"]);
    let score = |text: &'static str| {
        let (app, id) = (&app, id.clone());
        async move {
            let resp = app
                .search(json!({"query": text, "user_id": user, "k": 1}))
                .await;
            let hits: Value = resp.json().await.unwrap();
            assert_eq!(result_ids(&hits), [id]);
            hits["results"][0]["score"].as_f64().unwrap()
        }
    };
    assert!(
        score("black coffee after lunch").await > 0.99,
        "embedded again"
    );
    assert!(
        score("green tea every morning").await < 0.5,
        "the old vector is gone"
    );

    // A create with the key in use is refused, and writes nothing; PUT needs a key.
    let resp = app
        .req(Method::POST, "/contexts")
        .json(&body("tea again"))
        .sent()
        .await;
    assert!(
        resp.headers().get("retry-after").is_none(),
        "not worth retrying"
    );
    let problem = assert_problem(resp, 409).await;
    assert_eq!(problem["type"], "urn:context-api:problem:key-taken");
    assert_eq!(listed(&app, &format!("user_id={user}")).await.len(), 1);
    let mut keyless = body("x");
    keyless.as_object_mut().unwrap().remove("key");
    let problem = assert_problem(put(&app, keyless).await, 422).await;
    assert!(
        problem["detail"].as_str().unwrap().contains("key"),
        "{problem}"
    );
    for bad in [json!(""), json!("a\u{7}b"), json!("k".repeat(1025))] {
        let mut b = body("x");
        b["key"] = bad;
        assert_problem(put(&app, b).await, 422).await;
    }
}

#[tokio::test]
async fn keys_are_per_user_and_freed_by_delete_and_by_expiry() {
    let app = spawn_app().await;
    let (alice, bob) = (app.alice.id, app.bob.id);
    let a = app
        .create(alice, json!({"key": "k", "content": {"text": "alice's"}}))
        .await;
    let b = app
        .create(bob, json!({"key": "k", "content": {"text": "bob's"}}))
        .await;
    assert_ne!(a["id"], b["id"], "two users, one key each");
    // A user key cannot put into another user's keys, nor see them by key.
    let resp = app
        .req_as(&app.alice.key, Method::PUT, "/contexts")
        .json(&json!({"user_id": bob, "key": "k", "context_type": "t", "content": {"text": "mine now"}}))
        .sent()
        .await;
    assert_problem(resp, 403).await;
    let resp = app
        .req_as(&app.alice.key, Method::PUT, "/contexts")
        .json(&json!({"key": "k", "context_type": "t", "content": {"text": "alice again"}}))
        .sent()
        .await;
    assert_eq!(resp.status(), 200);
    let mine: Value = resp.json().await.unwrap();
    assert_eq!(mine["id"], a["id"]);

    // Deleted: the key is free for a new context.
    let resp = app
        .req(
            Method::DELETE,
            &format!("/contexts/{}", a["id"].as_str().unwrap()),
        )
        .sent()
        .await;
    assert_eq!(resp.status(), 204);
    let again = app
        .create(alice, json!({"key": "k", "content": {"text": "new"}}))
        .await;
    assert_ne!(again["id"], a["id"]);

    // Expired: a create takes its key, with a fresh creation time.
    let short = app
        .create(
            alice,
            json!({"key": "brief", "content": {"text": "soon gone"}, "ttl_seconds": 1}),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let after = app
        .create(alice, json!({"key": "brief", "content": {"text": "back"}}))
        .await;
    assert_eq!(after["content"]["text"], "back");
    assert!(after["expires_at"].is_null());
    assert!(after["created_at"].as_str() > short["created_at"].as_str());
    assert_eq!(
        listed(&app, &format!("user_id={alice}&key=brief"))
            .await
            .len(),
        1
    );
}

#[tokio::test]
async fn concurrent_puts_of_one_key_leave_one_context() {
    let app = spawn_app().await;
    let user = app.alice.id;
    let puts = (0..12).map(|i| {
        let (client, url) = (app.client.clone(), app.url("/contexts"));
        async move {
            client
                .put(url)
                .bearer_auth(crate::helpers::ADMIN_KEY)
                .json(&json!({"user_id": user, "key": "race", "context_type": "t",
                              "content": {"text": format!("writer {i}")}}))
                .sent()
                .await
                .status()
                .as_u16()
        }
    });
    let mut statuses = futures_util::future::join_all(puts).await;
    statuses.sort_unstable();
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 201),
        "{statuses:?}"
    );
    let all = listed(&app, &format!("user_id={user}")).await;
    assert_eq!(all.len(), 1);
    assert_eq!(all[0]["version"], 12);
}

#[tokio::test]
async fn batch_items_with_a_taken_key_fail_alone() {
    let app = spawn_app().await;
    let user = app.alice.id;
    app.create(user, json!({"key": "held", "content": {"text": "first"}}))
        .await;
    let item = |key: &str, text: &str| json!({"user_id": user, "key": key, "context_type": "t", "content": {"text": text}});
    let resp = app
        .req(Method::POST, "/contexts/batch")
        .json(&json!({"items": [item("a", "one"), item("b", "two"), item("a", "three"), item("held", "four"), {"user_id": user, "context_type": "t", "content": {"text": "no key"}}]}))
        .sent()
        .await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    let statuses: Vec<i64> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_i64().unwrap())
        .collect();
    assert_eq!(statuses, [201, 201, 409, 409, 201], "{body}");
    assert_eq!(
        body["results"][2]["problem"]["type"],
        "urn:context-api:problem:key-taken"
    );
    assert_eq!(
        (body["created"].as_i64(), body["failed"].as_i64()),
        (Some(3), Some(2))
    );
    assert_eq!(listed(&app, &format!("user_id={user}")).await.len(), 4);
    assert_eq!(
        listed(&app, &format!("user_id={user}&key=a")).await[0]["content"]["text"],
        "one"
    );
}

#[tokio::test]
async fn list_filters_by_metadata_containment() {
    let app = spawn_app().await;
    let user = app.alice.id;
    let food = app.create(user, json!({"content": {"text": "soup"}, "metadata": {"topic": "food", "ns": {"0": "a", "1": "b"}}})).await;
    app.create(user, json!({"content": {"text": "bus"}, "metadata": {"topic": "travel", "ns": {"0": "a", "1": "c"}}})).await;
    app.create(user, json!({"content": {"text": "none"}})).await;
    let q = |m: Value| format!("user_id={user}&metadata={}", urlencoding(&m.to_string()));
    let got = listed(&app, &q(json!({"topic": "food"}))).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["id"], food["id"]);
    assert_eq!(
        listed(&app, &q(json!({"ns": {"0": "a"}}))).await.len(),
        2,
        "a nested prefix"
    );
    assert_eq!(listed(&app, &q(json!({}))).await.len(), 3);
    for bad in ["%7Bnot-json", "%5B1%5D"] {
        let resp = app
            .req(
                Method::GET,
                &format!("/contexts?user_id={user}&metadata={bad}"),
            )
            .sent()
            .await;
        let problem = assert_problem(resp, 422).await;
        assert!(
            problem["detail"].as_str().unwrap().contains("metadata"),
            "{problem}"
        );
    }
}

fn urlencoding(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
