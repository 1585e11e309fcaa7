use std::collections::HashMap;
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{
    assert_close, assert_problem, eventually, spawn_app, spawn_app_with, Options, SendExt, TestApp,
    DIM,
};
use crate::tei::TeiStub;

async fn status_of(app: &TestApp, id: &str) -> String {
    let body: Value = app.get(id).await.json().await.unwrap();
    body["embedding_status"].as_str().unwrap().to_owned()
}

async fn wait_ready(app: &TestApp, id: &str) {
    eventually(Duration::from_secs(20), || async {
        (status_of(app, id).await == "ready").then_some(())
    })
    .await;
}

/// Creates one context of type "t" per text, for alice, in one batch; the
/// answer's body.
async fn post_texts(app: &TestApp, texts: &[String]) -> Value {
    let items: Vec<Value> = texts
        .iter()
        .map(|t| json!({"user_id": app.alice.id, "context_type": "t", "content": {"text": t}}))
        .collect();
    let resp = app
        .req(Method::POST, "/contexts/batch")
        .json(&json!({ "items": items }))
        .sent()
        .await;
    let status = resp.status();
    let body = resp.text().await.unwrap();
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Waits until no row of the app's database is pending.
async fn wait_none_pending(app: &TestApp, within: Duration) {
    let pool = app.db.pool().await;
    eventually(within, || async {
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM contexts WHERE embedding_status = 'pending'")
                .fetch_one(&pool)
                .await
                .unwrap();
        (n == 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn writes_succeed_pending_while_tei_is_down_and_are_filled_when_it_returns() {
    let app = spawn_app().await;
    app.tei.set_down(true);
    let c = app
        .create(
            app.alice.id,
            json!({"content": {"text": "written during the outage"}}),
        )
        .await;
    let id = c["id"].as_str().unwrap();
    assert_eq!(c["embedding_status"], "pending");

    // A text search needs TEI: 503 with Retry-After. A vector search does not.
    let resp = app.search(json!({"query": "outage"})).await;
    assert!(resp.headers().contains_key("retry-after"));
    assert_problem(resp, 503).await;
    let resp = app.search(json!({"vector": vec![0.3f32; DIM]})).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["results"].as_array().unwrap().is_empty(),
        "pending rows are not searchable"
    );

    // A PATCH of the text while down stays pending too.
    let resp = app
        .req(Method::PATCH, &format!("/contexts/{id}"))
        .json(&json!({"text": "new words after the outage"}))
        .sent()
        .await;
    assert_eq!(resp.status(), 200);

    app.tei.set_down(false);
    wait_ready(&app, id).await;
    // The vector stored is the one of the latest text.
    let (body, got) = app.with_embedding(id).await;
    assert_close(&got, &crate::tei::vector("new words after the outage", DIM));
    assert_eq!(
        body["version"], 2,
        "filling the embedding is not a change of the context"
    );
    // And it is now found by a text search.
    let body: Value = app
        .search(json!({"query": "new words"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["results"][0]["context"]["id"], json!(id));
}

#[tokio::test]
async fn the_worker_batches_within_teis_max_client_batch_size() {
    let app = spawn_app_with(Options {
        tei_max_batch: 4,
        ..Default::default()
    })
    .await;
    app.tei.set_down(true);
    let mut ids = vec![];
    for i in 0..11 {
        let c = app
            .create(
                app.alice.id,
                json!({"content": {"text": format!("item number {i}")}}),
            )
            .await;
        ids.push(c["id"].as_str().unwrap().to_owned());
    }
    app.tei.set_down(false);
    for id in &ids {
        wait_ready(&app, id).await;
    }
    let max = app
        .tei
        .switches
        .max_batch_seen
        .load(std::sync::atomic::Ordering::SeqCst);
    assert!(max <= 4 && max > 1, "batches of at most 4, got {max}");
}

#[tokio::test]
async fn two_replicas_share_the_backlog_and_never_embed_a_row_twice() {
    // Each replica embeds through its own stand-in, so each one's share of
    // the work can be counted.
    let a = spawn_app().await;
    let b_tei = TeiStub::start(DIM, 32).await;
    a.tei.set_down(true);
    b_tei.set_down(true);
    let texts: Vec<String> = (0..160).map(|i| format!("replica row {i}")).collect();
    post_texts(&a, &texts).await;
    let b = a.sibling_with_tei(b_tei.clone()).await;
    // Slow answers: five batches of 32 take one worker over a second, so the
    // other wakes while rows are left and claims its share.
    for tei in [&a.tei, &b_tei] {
        tei.set_delay(Duration::from_millis(300));
        tei.set_down(false);
    }
    wait_none_pending(&a, Duration::from_secs(30)).await;
    let (by_a, by_b) = (a.tei.inputs(), b_tei.inputs());
    let mut seen: HashMap<String, usize> = HashMap::new();
    for input in by_a.iter().chain(&by_b) {
        *seen.entry(input.clone()).or_default() += 1;
    }
    for text in &texts {
        assert_eq!(
            seen.get(text),
            Some(&1),
            "{text:?} embedded {:?} times",
            seen.get(text)
        );
    }
    let share = |inputs: &[String]| {
        inputs
            .iter()
            .filter(|t| t.starts_with("replica row"))
            .count()
    };
    assert!(
        share(&by_a) > 0 && share(&by_b) > 0,
        "both replicas claim rows: a embedded {}, b {}",
        share(&by_a),
        share(&by_b)
    );
    drop(b);
}

#[tokio::test]
async fn a_tei_of_the_wrong_dimension_is_reported_and_nothing_of_that_size_is_stored() {
    let app = spawn_app().await;
    app.tei.set_dim(DIM * 2);
    let c = app
        .create(app.alice.id, json!({"content": {"text": "wrong size"}}))
        .await;
    assert_eq!(c["embedding_status"], "pending");
    let body = app.ready_json().await;
    assert_eq!(
        body["checks"]["embeddings"]["status"], "dimension_mismatch",
        "{body}"
    );
    assert_eq!(body["checks"]["embeddings"]["got"], DIM * 2);
    assert_eq!(
        body["status"], "ready",
        "embeddings are reported, not required"
    );
    assert_problem(app.search(json!({"query": "wrong"})).await, 503).await;

    // Fixed: the worker fills the row with a vector of the right size.
    app.tei.set_dim(0);
    wait_ready(&app, c["id"].as_str().unwrap()).await;
}

#[tokio::test]
async fn a_429_from_tei_is_retried_with_backoff() {
    let app = spawn_app().await;
    // Let the startup probe finish first, so the failures hit the write's call.
    app.wait_embeddings_ok(Duration::from_secs(10)).await;
    app.tei
        .switches
        .fail_next
        .store(1, std::sync::atomic::Ordering::SeqCst);
    let c = app
        .create(app.alice.id, json!({"content": {"text": "retried once"}}))
        .await;
    assert_eq!(
        c["embedding_status"], "ready",
        "the retry got the vector inline"
    );
    assert_eq!(
        app.tei
            .switches
            .fail_next
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

#[tokio::test]
async fn every_row_records_the_model_that_made_its_vector() {
    let app = spawn_app().await;
    let model = crate::tei::MODEL_ID;
    // Embedded at once, on create and in a batch.
    let made = app
        .create(
            app.alice.id,
            json!({"content": {"text": "embedded at once"}}),
        )
        .await;
    assert_eq!(made["embedding_model"], model);
    let resp = app
        .req(Method::POST, "/contexts/batch")
        .json(&json!({"items": [
            {"user_id": app.alice.id, "context_type": "note", "content": {"text": "in a batch"}},
            {"user_id": app.alice.id, "context_type": "note", "content": {"text": "given"},
             "embedding": vec![0.5f32; DIM]},
        ]}))
        .sent()
        .await;
    let batch: Value = resp.json().await.unwrap();
    assert_eq!(batch["results"][0]["context"]["embedding_model"], model);
    assert_eq!(
        batch["results"][1]["context"]["embedding_model"],
        Value::Null
    );
    // The client's own vector: no model.
    let given = app
        .create(
            app.alice.id,
            json!({"content": {"text": "mine"}, "embedding": vec![0.5f32; DIM]}),
        )
        .await;
    assert_eq!(given["embedding_model"], Value::Null);
    let id = given["id"].as_str().unwrap();
    // A new text is embedded by the service: its model from then on.
    let resp = app
        .req(Method::PATCH, &format!("/contexts/{id}"))
        .json(&json!({"text": "now the service's"}))
        .sent()
        .await;
    let patched: Value = resp.json().await.unwrap();
    assert_eq!(patched["embedding_model"], model);
    // Pending: none; filled by the worker: the model.
    app.tei.set_down(true);
    let pending = app
        .create(app.alice.id, json!({"content": {"text": "while down"}}))
        .await;
    assert_eq!(pending["embedding_model"], Value::Null);
    let id = pending["id"].as_str().unwrap();
    app.tei.set_down(false);
    wait_ready(&app, id).await;
    let filled: Value = app.get(id).await.json().await.unwrap();
    assert_eq!(filled["embedding_model"], model);
}

/// A client loading documents while the embedder cannot keep up: the batch
/// answer says how many wait for their vectors, and listing with
/// `embedding_status=pending` tells when the load has become searchable.
#[tokio::test]
async fn a_batch_says_how_many_wait_for_a_vector_and_the_list_tells_when_none_do() {
    let app = spawn_app().await;
    let pending_page = |user: uuid::Uuid| {
        let app = &app;
        async move {
            let resp = app
                .req(
                    Method::GET,
                    &format!("/contexts?user_id={user}&embedding_status=pending&limit=100"),
                )
                .sent()
                .await;
            assert_eq!(resp.status(), 200);
            let body: Value = resp.json().await.unwrap();
            body["items"].as_array().unwrap().clone()
        }
    };
    // One with a vector given, then the embedder goes down for five more.
    let given = app
        .create(
            app.alice.id,
            json!({"content": {"text": "given"}, "embedding": vec![0.5f32; DIM]}),
        )
        .await;
    app.tei.set_down(true);
    let items: Vec<Value> = (0..5)
        .map(|i| json!({"user_id": app.alice.id, "context_type": "doc", "content": {"text": format!("doc {i}")}}))
        .chain([json!({"user_id": app.alice.id, "context_type": "doc", "content": {"text": "short"}, "embedding": [1.0]}), // of the wrong size: fails alone
                json!({"user_id": app.alice.id, "context_type": "doc", "content": {"text": "v"}, "embedding": vec![0.25f32; DIM]})])
        .collect();
    let resp = app
        .req(Method::POST, "/contexts/batch")
        .json(&json!({ "items": items }))
        .sent()
        .await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        (&body["created"], &body["failed"], &body["pending"]),
        (&json!(6), &json!(1), &json!(5)),
        "{body}"
    );
    let waiting = pending_page(app.alice.id).await;
    assert_eq!(waiting.len(), 5);
    assert!(waiting.iter().all(|c| c["embedding_status"] == "pending"));
    assert!(waiting.iter().all(|c| c["id"] != given["id"]));
    assert!(
        pending_page(app.bob.id).await.is_empty(),
        "another user's are not listed"
    );
    let resp = app
        .req(Method::GET, "/contexts?embedding_status=done")
        .sent()
        .await;
    assert_problem(resp, 422).await;

    app.tei.set_down(false);
    eventually(Duration::from_secs(20), || async {
        pending_page(app.alice.id).await.is_empty().then_some(())
    })
    .await;
    let resp = app
        .req(
            Method::GET,
            &format!(
                "/contexts?user_id={}&embedding_status=ready&limit=100",
                app.alice.id
            ),
        )
        .sent()
        .await;
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["items"].as_array().unwrap().len(), 7);
}

/// A batch whose embedding outlives the inline wait is stored pending, and
/// the call it started goes on: its vectors are stored when it ends, and the
/// worker does not embed those rows a second time meanwhile.
#[tokio::test]
async fn a_batch_embedding_past_the_inline_wait_is_kept_and_not_made_twice() {
    let app = spawn_app_with(Options {
        tei_max_batch: 4,
        ..Options::default().set("embedding_timeout_ms", 500)
    })
    .await;
    // The embedder known first, then three calls of 4 texts, 200 ms each:
    // the inline wait ends during the third, each call within its own 500 ms.
    app.wait_embeddings_ok(Duration::from_secs(10)).await;
    app.tei.set_delay(Duration::from_millis(200));
    let texts: Vec<String> = (0..12).map(|i| format!("late row {i}")).collect();
    let body = post_texts(&app, &texts).await;
    assert_eq!(body["pending"], json!(12), "{body}");
    wait_none_pending(&app, Duration::from_secs(20)).await;
    // The worker polls every 100 ms: it had time to take the rows, had they
    // not been held.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut seen: HashMap<String, usize> = HashMap::new();
    for input in app.tei.inputs() {
        *seen.entry(input).or_default() += 1;
    }
    for text in &texts {
        assert_eq!(
            seen.get(text),
            Some(&1),
            "{text:?} embedded {:?} times",
            seen.get(text)
        );
    }
    let ready: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM contexts WHERE embedding_status = 'ready' AND embedding_claim IS NULL",
    )
    .fetch_one(&app.db.pool().await)
    .await
    .unwrap();
    assert_eq!(ready, 12);
}

/// A replica that stops while a batch's embedding is still running gives its
/// rows back: the next worker takes them at once, not after the claim's
/// 2-minute lease.
#[tokio::test]
async fn a_stopping_replica_gives_back_the_rows_of_a_batch_embedding_still_running() {
    let mut app = spawn_app_with(Options {
        tei_max_batch: 4,
        ..Options::default().set("embedding_timeout_ms", 500)
    })
    .await;
    // Five calls of 4 texts, 400 ms each: the inline wait ends during the
    // second, and the rest runs on for about 1.5 s.
    app.wait_embeddings_ok(Duration::from_secs(10)).await;
    app.tei.set_delay(Duration::from_millis(400));
    let texts: Vec<String> = (0..20).map(|i| format!("stopping row {i}")).collect();
    let body = post_texts(&app, &texts).await;
    assert_eq!(body["pending"], json!(20), "{body}");
    app.stop().await;
    let held: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM contexts WHERE embedding_status = 'pending' AND embedding_claim IS NOT NULL",
    )
    .fetch_one(&app.db.pool().await)
    .await
    .unwrap();
    assert_eq!(held, 0, "rows still claimed after the replica stopped");
}
