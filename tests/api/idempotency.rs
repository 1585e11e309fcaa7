//! Idempotency-Key: a retry gets the first answer and writes nothing, also
//! when retries race, across replicas; the same key with another body is 422.

use reqwest::Method;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{assert_problem, spawn_app, SendExt, TestApp};

async fn rows(app: &TestApp) -> i64 {
    let pool = app.db.pool().await;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM contexts")
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    n
}

async fn post(app: &TestApp, path: &str, key: &str, body: &Value) -> (u16, Option<String>, Value) {
    let resp = app
        .req(Method::POST, path)
        .header("Idempotency-Key", key)
        .json(body)
        .sent()
        .await;
    let status = resp.status().as_u16();
    let replayed = resp
        .headers()
        .get("idempotent-replayed")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, replayed, resp.json().await.unwrap())
}

#[tokio::test]
async fn a_retry_gets_the_first_answer_and_creates_nothing() {
    let app = spawn_app().await;
    let body =
        json!({"user_id": app.alice.id, "context_type": "note", "content": {"text": "once"}});
    let key = Uuid::new_v4().to_string();
    let (s1, r1, first) = post(&app, "/contexts", &key, &body).await;
    assert_eq!((s1, r1), (201, None));
    // The context changes in between: the replay is still the first answer.
    let id = first["id"].as_str().unwrap();
    app.req(Method::PATCH, &format!("/contexts/{id}"))
        .json(&json!({"metadata": {"changed": true}}))
        .sent()
        .await;
    let (s2, r2, second) = post(&app, "/contexts", &key, &body).await;
    assert_eq!((s2, r2.as_deref()), (201, Some("true")));
    assert_eq!(second, first);
    assert_eq!(rows(&app).await, 1);
    // Without a key, or with another one, the same body creates again.
    let (s3, _, third) = post(&app, "/contexts", &Uuid::new_v4().to_string(), &body).await;
    assert_eq!(s3, 201);
    assert_ne!(third["id"], first["id"]);
    assert_eq!(rows(&app).await, 2);
}

#[tokio::test]
async fn racing_retries_on_two_replicas_create_once() {
    let app = spawn_app().await;
    let other = app.sibling().await;
    let body =
        json!({"user_id": app.alice.id, "context_type": "note", "content": {"text": "race"}});
    let key = Uuid::new_v4().to_string();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..16 {
        let (client, url) = if i % 2 == 0 {
            (app.client.clone(), app.url("/contexts"))
        } else {
            (other.client.clone(), other.url("/contexts"))
        };
        let (key, body) = (key.clone(), body.clone());
        tasks.spawn(async move {
            let resp = client
                .post(url)
                .bearer_auth(crate::helpers::ADMIN_KEY)
                .header("Idempotency-Key", key)
                .json(&body)
                .sent()
                .await;
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        });
    }
    let answers: Vec<(u16, Value)> = tasks.join_all().await;
    let first = &answers[0].1;
    for (status, answer) in &answers {
        assert_eq!(*status, 201, "{answer}");
        assert_eq!(answer, first);
    }
    assert_eq!(rows(&app).await, 1);
}

#[tokio::test]
async fn the_same_key_with_another_body_is_422() {
    let app = spawn_app().await;
    let key = Uuid::new_v4().to_string();
    let body = json!({"user_id": app.alice.id, "context_type": "note", "content": {"text": "a"}});
    assert_eq!(post(&app, "/contexts", &key, &body).await.0, 201);
    let other = json!({"user_id": app.alice.id, "context_type": "note", "content": {"text": "b"}});
    let resp = app
        .req(Method::POST, "/contexts")
        .header("Idempotency-Key", &key)
        .json(&other)
        .sent()
        .await;
    let problem = assert_problem(resp, 422).await;
    assert!(problem["detail"]
        .as_str()
        .unwrap()
        .contains("Idempotency-Key"));
    // Another route with the same key is another request too.
    let resp = app
        .req(Method::POST, "/contexts/batch")
        .header("Idempotency-Key", &key)
        .json(&json!({"items": [body]}))
        .sent()
        .await;
    assert_problem(resp, 422).await;
    // A key that is not visible ASCII is 400.
    let resp = app
        .req(Method::POST, "/contexts")
        .header("Idempotency-Key", "has space")
        .json(&body)
        .sent()
        .await;
    assert_problem(resp, 400).await;
    assert_eq!(rows(&app).await, 1);
}

#[tokio::test]
async fn a_batch_retry_gets_the_first_results() {
    let app = spawn_app().await;
    let key = Uuid::new_v4().to_string();
    let item =
        |t: &str| json!({"user_id": app.alice.id, "context_type": "note", "content": {"text": t}});
    let body = json!({"items": [item("x"), item("y"), {"context_type": ""}]});
    let (s1, _, first) = post(&app, "/contexts/batch", &key, &body).await;
    assert_eq!(s1, 200);
    assert_eq!(first["created"], 2);
    let (s2, replayed, second) = post(&app, "/contexts/batch", &key, &body).await;
    assert_eq!((s2, replayed.as_deref()), (200, Some("true")));
    assert_eq!(second, first);
    assert_eq!(rows(&app).await, 2);
}

#[tokio::test]
async fn a_first_request_that_wrote_nothing_frees_its_key() {
    let app = spawn_app().await;
    let key = Uuid::new_v4().to_string();
    let body =
        json!({"user_id": app.alice.id, "context_type": "note", "content": {"text": "later"}});
    // The insert fails after the key is reserved: a 5xx, and nothing written.
    let pool = app.db.pool().await;
    for sql in [
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN RAISE EXCEPTION 'injected failure'; END $$",
        "CREATE TRIGGER refuse BEFORE INSERT ON contexts FOR EACH ROW EXECUTE FUNCTION refuse()",
    ] {
        sqlx::query(sql).execute(&pool).await.unwrap();
    }
    let (status, _, _) = post(&app, "/contexts", &key, &body).await;
    assert_eq!(status, 500);
    sqlx::query("DROP TRIGGER refuse ON contexts")
        .execute(&pool)
        .await
        .unwrap();
    // The retry is not answered with the failure: it runs, and creates.
    let (status, replayed, _) = post(&app, "/contexts", &key, &body).await;
    assert_eq!((status, replayed), (201, None));
    assert_eq!(rows(&app).await, 1);
    pool.close().await;
}
