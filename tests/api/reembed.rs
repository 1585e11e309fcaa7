//! `context-api reembed`: a change of model rebuilds every vector into a
//! new column while the service keeps searching the old ones, then switches.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{binary, schema, settings_from, spawn_app_with, Options, SendExt, TestApp};
use crate::tei::TeiStub;

const OLD_DIM: usize = 384;
const NEW_DIM: usize = 768;
const NEW_MODEL: &str = "test/new-model-768";

async fn new_model_tei() -> TeiStub {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    TeiStub::serve(listener, NEW_DIM, 8, NEW_MODEL)
}

/// `n` contexts for alice through the batch route, with texts of a few words.
async fn load(app: &TestApp, n: usize) {
    for chunk in (0..n).collect::<Vec<_>>().chunks(100) {
        let items: Vec<Value> = chunk
            .iter()
            .map(|i| {
                json!({
                    "user_id": app.alice.id, "context_type": "note",
                    "content": {"text": format!("note {i} about topic {} and colour {}", i % 7, i % 5)}
                })
            })
            .collect();
        let resp = app
            .req(Method::POST, "/contexts/batch")
            .json(&json!({ "items": items }))
            .sent()
            .await;
        assert!(resp.status().is_success(), "{}", resp.text().await.unwrap());
    }
}

/// A replica rolled to the new model, keeping the old one as the previous.
async fn rolled(old: &TestApp, tei: TeiStub) -> TestApp {
    old.sibling_with(
        tei,
        vec![
            ("embedding_dim".into(), json!(NEW_DIM)),
            (
                "embedding_previous_service_url".into(),
                json!(old.tei.url()),
            ),
            ("embedding_previous_dim".into(), json!(OLD_DIM)),
        ],
    )
    .await
}

async fn run_reembed(app: &TestApp, tei: &TeiStub, args: &[&str]) -> std::process::Output {
    let mut cmd = binary();
    cmd.env("DATABASE_URL", &app.db.url)
        .env("EMBEDDING_SERVICE_URL", tei.url())
        .env("EMBEDDING_DIM", NEW_DIM.to_string())
        .env("LOG_LEVEL", "info")
        .arg("reembed")
        .args(args);
    tokio::task::spawn_blocking(move || cmd.output().expect("the binary runs"))
        .await
        .unwrap()
}

async fn scalar_i64(app: &TestApp, sql: &str) -> i64 {
    let pool = app.db.pool().await;
    let v: i64 = sqlx::query_scalar(sql).fetch_one(&pool).await.unwrap();
    pool.close().await;
    v
}

#[tokio::test]
async fn a_change_from_384_to_768_dimensions_under_load_fails_no_search_and_leaves_no_row() {
    let mut old = spawn_app_with(Options {
        dim: OLD_DIM,
        ..Options::default()
    })
    .await;
    load(&old, 400).await;
    let tei = new_model_tei().await;
    // The operator rolls the replicas to the new model first, the old one
    // kept as the previous: they go on serving the stored 384-d vectors.
    let a = rolled(&old, tei.clone()).await;
    let b = rolled(&old, tei.clone()).await;
    old.stop().await;
    a.wait_embeddings_ok(Duration::from_secs(10)).await;

    // Load on both replicas: searches (every mode) and writes, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let searches = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut load_tasks = Vec::new();
    for (n, app) in [&a, &b, &a, &b].into_iter().enumerate() {
        let (req_search, req_create) = (
            app.req(Method::POST, "/contexts/search"),
            app.req(Method::POST, "/contexts"),
        );
        let (stop, searches, failures) = (stop.clone(), searches.clone(), failures.clone());
        let user = a.alice.id;
        load_tasks.push(tokio::spawn(async move {
            let mut i = 0usize;
            while !stop.load(Ordering::SeqCst) && i < 20_000 {
                i += 1;
                let mode = ["vector", "hybrid", "text"][i % 3];
                let resp = req_search
                    .try_clone()
                    .unwrap()
                    .json(&json!({"query": format!("topic {} colour {}", i % 7, i % 5), "mode": mode, "k": 5}))
                    .sent()
                    .await;
                let status = resp.status();
                let body: Value = resp.json().await.unwrap_or(Value::Null);
                if status != 200 || body["results"].as_array().is_none_or(|r| r.is_empty()) {
                    failures.lock().unwrap().push(format!("search {mode}: {status} {body}"));
                }
                searches.fetch_add(1, Ordering::SeqCst);
                if i % 4 == n % 4 {
                    let resp = req_create
                        .try_clone()
                        .unwrap()
                        .json(&json!({"user_id": user, "context_type": "note",
                                      "content": {"text": format!("written during the rebuild {n} {i}")}}))
                        .sent()
                        .await;
                    if resp.status() != 201 {
                        failures.lock().unwrap().push(format!("create: {}", resp.status()));
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = searches.load(Ordering::SeqCst);
    // Slow enough that the load runs all through the rebuild.
    tei.set_delay(Duration::from_millis(30));
    let out = run_reembed(&a, &tei, &["--batch-size", "16"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "reembed failed: {stderr}");
    assert!(
        stderr.contains("reembed: "),
        "progress lines on a non-terminal: {stderr}"
    );
    let during = searches.load(Ordering::SeqCst) - before;
    tei.set_delay(Duration::ZERO);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::SeqCst);
    for t in load_tasks {
        t.await.unwrap();
    }
    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} failed requests, first: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(
        during >= 50,
        "the load ran through the rebuild: {during} searches"
    );
    eprintln!(
        "reembed under load: {during} searches (and their creates) during the rebuild, 0 failed"
    );

    // Every row has the new model's vector: none left behind, written during the rebuild or not.
    let rows = scalar_i64(&a, "SELECT count(*) FROM contexts").await;
    assert!(rows > 400, "rows were written during the rebuild: {rows}");
    eprintln!("reembed under load: {rows} rows after it (400 before), all 768-d of the new model");
    let done = scalar_i64(
        &a,
        &format!(
            "SELECT count(*) FROM contexts WHERE embedding_status = 'ready'
             AND vector_dims(embedding) = {NEW_DIM} AND embedding_model = '{NEW_MODEL}'"
        ),
    )
    .await;
    assert_eq!(done, rows, "every row embedded by the new model");
    let column = scalar_i64(
        &a,
        "SELECT atttypmod::int8 FROM pg_attribute WHERE attrelid = 'contexts'::regclass
         AND attname = 'embedding' AND NOT attisdropped",
    )
    .await;
    assert_eq!(column, NEW_DIM as i64);
    // The new vectors' index has the form the old one had (a new database's halfvec).
    let pool = a.db.pool().await;
    let index = crate::helpers::hnsw_index_definition(&pool)
        .await
        .expect("a valid HNSW index");
    assert!(
        index.contains(&format!("l2_normalize(embedding))::halfvec({NEW_DIM})")),
        "{index}"
    );
    pool.close().await;

    // The replicas follow: new vectors, the state in /ready and the metrics.
    let ready = a.ready_json().await;
    assert_eq!(ready["checks"]["reembed"]["state"], "idle", "{ready}");
    assert_eq!(ready["checks"]["reembed"]["model"], NEW_MODEL, "{ready}");
    assert_eq!(ready["checks"]["reembed"]["dim"], NEW_DIM, "{ready}");
    let metrics = b.metrics().await;
    assert!(metrics.contains("reembed_in_progress 0"), "{metrics}");
    let created = b
        .create(
            b.alice.id,
            json!({"context_type": "note", "content": {"text": "after the switch"}}),
        )
        .await;
    let (_, v) = b.with_embedding(created["id"].as_str().unwrap()).await;
    assert_eq!(v.len(), NEW_DIM);
    assert_eq!(created["embedding_model"], NEW_MODEL);

    // Nothing left to do, and the migrations still match (built with 384).
    let again = run_reembed(&a, &tei, &[]).await;
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert!(String::from_utf8_lossy(&again.stderr).contains("nothing to do"));
    let pool = a.db.pool().await;
    context_api::store::migrate(&pool, &schema(NEW_DIM))
        .await
        .expect("migrate after a rebuild");
    pool.close().await;
}

#[tokio::test]
async fn an_interrupted_rebuild_resumes_and_a_changed_text_is_embedded_again() {
    let old = spawn_app_with(Options {
        dim: OLD_DIM,
        ..Options::default()
    })
    .await;
    load(&old, 200).await;
    let tei = new_model_tei().await;
    let settings = settings_from(&[
        ("database_url".into(), json!(old.db.url)),
        ("embedding_service_url".into(), json!(tei.url())),
        ("embedding_dim".into(), json!(NEW_DIM)),
        ("auth_disabled".into(), json!(true)),
    ]);
    let store = context_api::store::Store::connect(&settings.database, &settings.schema())
        .await
        .unwrap();
    let embedder = context_api::embeddings::Embedder::build(&settings.embeddings)
        .await
        .unwrap();

    // Stopped part way: some rows have their new vector, the switch has not happened.
    tei.set_delay(Duration::from_millis(40));
    let first_run = {
        let (store, embedder) = (store.clone(), embedder.clone());
        tokio::spawn(async move { context_api::reembed::reembed(&store, &embedder, 8).await })
    };
    let pool = old.db.pool().await;
    crate::helpers::eventually(Duration::from_secs(20), || async {
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM contexts WHERE embedding_next IS NOT NULL")
                .fetch_one(&pool)
                .await
                .unwrap_or(0);
        (n >= 16).then_some(())
    })
    .await;
    first_run.abort();
    assert!(
        first_run.await.unwrap_err().is_cancelled(),
        "cut off before it ends"
    );
    tei.set_delay(Duration::ZERO);
    let state = store.embedding_state().await.unwrap();
    assert_eq!(state.active_dim, OLD_DIM, "not switched yet");
    assert_eq!(state.target.as_ref().map(|t| t.dim), Some(NEW_DIM));
    let first = tei.inputs().len();
    assert!(
        first > 0 && first < 200,
        "part of the rows embedded: {first}"
    );

    // A replica that knows only the old model changes a text meanwhile: the
    // trigger drops that row's new vector, so the rebuild embeds it again.
    let with_next: Vec<uuid::Uuid> =
        sqlx::query_scalar("SELECT id FROM contexts WHERE embedding_next IS NOT NULL LIMIT 1")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(with_next.len(), 1);
    let id = with_next[0];
    let resp = old
        .req(Method::PATCH, &format!("/contexts/{id}"))
        .json(&json!({"content": {"text": "a text changed during the rebuild"}}))
        .sent()
        .await;
    assert_eq!(resp.status(), 200);
    let cleared: bool =
        sqlx::query_scalar("SELECT embedding_next IS NULL FROM contexts WHERE id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(cleared, "a changed text drops the stale new vector");

    // The second run embeds only what is left, then switches.
    let done = context_api::reembed::reembed(&store, &embedder, 8)
        .await
        .unwrap();
    let context_api::reembed::Reembedded::Switched { rows } = done else {
        panic!("switched: {done:?}")
    };
    assert!(
        (rows as usize) < 200,
        "resumed, not restarted: {rows} rows embedded again"
    );
    assert!(tei
        .inputs()
        .iter()
        .any(|t| t == "a text changed during the rebuild"));
    let wrong: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM contexts WHERE embedding IS NULL OR vector_dims(embedding) <> {NEW_DIM}"
    ))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(wrong, 0);
    pool.close().await;
}
