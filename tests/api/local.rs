//! The in-process provider (EMBEDDING_PROVIDER=local) with all-MiniLM-L6-v2.

use std::path::Path;

use context_api::embeddings::LocalModel;
use reqwest::Method;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::helpers::{assert_problem, cosine, model_dir, spawn_app_with, Options, SendExt};

const MINILM_DIM: usize = 384;

#[derive(Deserialize)]
struct Reference {
    header: String,
    dim: usize,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    text: String,
    embedding: Vec<f32>,
}

#[derive(Deserialize)]
struct Pairs {
    documents: Vec<String>,
    queries: Vec<Query>,
}

#[derive(Deserialize)]
struct Query {
    query: String,
    answer_index: usize,
}

fn fixture<T: for<'de> Deserialize<'de>>(name: &str) -> T {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

fn local(options: Options) -> Options {
    Options {
        dim: MINILM_DIM,
        ..options
    }
    .set("embedding_provider", "local")
    .set("embedding_model_dir", model_dir())
}

#[tokio::test]
async fn local_vectors_match_the_reference_implementation() {
    let reference: Reference = fixture("minilm-reference.json");
    assert!(
        reference.header.contains("NumPy"),
        "the fixture says how it was made"
    );
    let dir = model_dir();
    let model = tokio::task::spawn_blocking(move || LocalModel::load(Path::new(&dir), 16, 8))
        .await
        .unwrap()
        .expect("the model loads");
    assert_eq!(model.dim, reference.dim);
    let texts: Vec<String> = reference.cases.iter().map(|c| c.text.clone()).collect();

    // All at once: texts of very different lengths share padded batches, so a
    // masking mistake would show here. Then one by one.
    let batched = model.embed(&texts).await.unwrap();
    for (case, got) in reference.cases.iter().zip(&batched) {
        let c = cosine(got, &case.embedding);
        assert!(c >= 0.999, "batched {:?}: cosine {c}", case.text);
        let norm: f32 = got.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "normalized: {norm}");
    }
    for case in &reference.cases {
        let got = model
            .embed(std::slice::from_ref(&case.text))
            .await
            .unwrap()
            .remove(0);
        let c = cosine(&got, &case.embedding);
        assert!(c >= 0.999, "single {:?}: cosine {c}", case.text);
    }

    // A text past the model's limit is cut before it is tokenized: the
    // longest case with 100 kB more after it is still that case, and a text
    // whose cut would leave too few tokens (a long run of whitespace) is
    // tokenized whole, as if the run were one space.
    let longest = reference.cases.iter().max_by_key(|c| c.text.len()).unwrap();
    let texts = vec![
        format!("{} {}", longest.text, "and more words ".repeat(7_000)),
        format!("Tea{}{}", " ".repeat(8_000), longest.text),
        format!("Tea {}", longest.text),
    ];
    let got = model.embed(&texts).await.unwrap();
    let c = cosine(&got[0], &longest.embedding);
    assert!(c >= 0.999, "with 100 kB after it: cosine {c}");
    let c = cosine(&got[1], &got[2]);
    assert!(c >= 0.99999, "after a run of whitespace: cosine {c}");
}

#[tokio::test]
async fn search_ranks_the_right_answer_first() {
    let pairs: Pairs = fixture("semantic-pairs.json");
    let app = spawn_app_with(local(Options::default())).await;
    let mut ids = vec![];
    for doc in &pairs.documents {
        let c = app
            .create(app.alice.id, json!({"content": {"text": doc}}))
            .await;
        assert_eq!(c["embedding_status"], "ready");
        ids.push(c["id"].as_str().unwrap().to_owned());
    }
    for q in &pairs.queries {
        let body: Value = app
            .search(json!({"query": q.query, "k": 3}))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(
            body["results"][0]["context"]["id"].as_str().unwrap(),
            ids[q.answer_index],
            "{:?} should find {:?}, got {}",
            q.query,
            pairs.documents[q.answer_index],
            body["results"][0]["context"]["content"]
        );
    }
}

#[tokio::test]
async fn a_full_queue_answers_like_an_overloaded_tei() {
    let app = spawn_app_with(local(Options::default()).set("embedding_queue_size", 1)).await;
    let long = "context management for language models ".repeat(40);
    let mut tasks = vec![];
    for i in 0..12 {
        let req = app
            .req(Method::POST, "/contexts/search")
            .json(&json!({"query": format!("{i} {long}")}));
        tasks.push(tokio::spawn(async move { req.sent().await }));
    }
    let mut ok = 0;
    let mut refused = 0;
    for t in tasks {
        let resp = t.await.unwrap();
        match resp.status().as_u16() {
            200 => ok += 1,
            503 => {
                assert!(resp.headers().contains_key("retry-after"));
                assert_problem(resp, 503).await;
                refused += 1;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(ok >= 1, "some searches got through");
    assert!(
        refused >= 1,
        "with one queue slot, concurrent searches are refused, not queued"
    );
}

#[tokio::test]
async fn the_service_refuses_a_model_of_another_dimension() {
    let db = crate::helpers::TestDb::create(crate::helpers::DIM).await;
    let mut overrides = local(Options::default()).overrides;
    overrides.extend([
        ("database_url".to_string(), json!(db.url)),
        ("embedding_dim".to_string(), json!(crate::helpers::DIM)),
        ("bind_address".to_string(), json!("127.0.0.1:0")),
        ("auth_disabled".to_string(), json!(true)),
    ]);
    let settings = crate::helpers::settings_from(&overrides);
    let err = match context_api::startup::App::build(settings, false).await {
        Ok(_) => panic!("a 384-dimensional model with EMBEDDING_DIM=16 must not start"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("EMBEDDING_DIM=384"), "{err}");
}

#[tokio::test]
async fn the_model_is_named_as_its_users_know_it() {
    let dir = model_dir();
    let model = tokio::task::spawn_blocking(move || LocalModel::load(Path::new(&dir), 4, 4))
        .await
        .unwrap()
        .expect("the model loads");
    let (name, digest) = model
        .model_id
        .strip_prefix("local/")
        .and_then(|id| id.split_once('@'))
        .unwrap_or_else(|| panic!("local/NAME@DIGEST: {}", model.model_id));
    // The wheel unpacks to a directory called `model`; its model card says what it is.
    assert_eq!(name, "all-MiniLM-L6-v2", "{}", model.model_id);
    assert_eq!(digest.len(), 12);
    assert!(context_api::embeddings::same_model(
        &model.model_id,
        &format!("local/model@{digest}")
    ));
    assert!(!context_api::embeddings::same_model(
        &model.model_id,
        "local/all-MiniLM-L6-v2@000000000000"
    ));
}

/// A database whose vectors were recorded under the id older versions gave
/// the same model (`local/model@DIGEST`): `reembed` records the new name and
/// makes no vector again.
#[tokio::test]
async fn reembed_takes_the_old_id_of_the_same_model_for_the_model() {
    let app = spawn_app_with(local(Options::default())).await;
    for i in 0..3 {
        let c = app
            .create(
                app.alice.id,
                json!({"content": {"text": format!("note {i}")}}),
            )
            .await;
        assert_eq!(c["embedding_status"], "ready");
    }
    let pool = app.db.pool().await;
    let id: String = sqlx::query_scalar("SELECT embedding_model FROM contexts LIMIT 1")
        .fetch_one(&pool)
        .await
        .unwrap();
    let digest = id.rsplit_once('@').unwrap().1.to_owned();
    let old = format!("local/model@{digest}");
    // Both states an older database can be in: the model recorded, or not yet.
    for recorded in [Some(old.clone()), None] {
        sqlx::query("UPDATE contexts SET embedding_model = $1")
            .bind(&old)
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query("UPDATE embedding_state SET active_model = $1")
            .bind(&recorded)
            .execute(&pool)
            .await
            .unwrap();
        let mut cmd = crate::helpers::binary();
        cmd.env("DATABASE_URL", &app.db.url)
            .env("EMBEDDING_PROVIDER", "local")
            .env("EMBEDDING_MODEL_DIR", model_dir())
            .env("EMBEDDING_DIM", MINILM_DIM.to_string())
            .env("LOG_LEVEL", "info")
            .arg("reembed");
        let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap();
        let log = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{log}");
        assert!(
            log.contains("nothing to do"),
            "recorded {recorded:?}: {log}"
        );
        let (active, target): (Option<String>, Option<String>) =
            sqlx::query_as("SELECT active_model, target_model FROM embedding_state")
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(
            active.as_deref(),
            Some(id.as_str()),
            "the new name is recorded"
        );
        assert_eq!(target, None, "no rebuild was begun");
        let rows: i64 =
            sqlx::query_scalar("SELECT count(*) FROM contexts WHERE embedding_model = $1")
                .bind(&old)
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(rows, 3, "no vector was made again");
    }
    pool.close().await;
}
