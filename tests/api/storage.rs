//! The form of the HNSW index (VECTOR_INDEX), as an operator meets it: a new
//! database gets `halfvec`; `context-api migrate` switches to another form
//! by building it beside the old one while searches go on, and leaves one
//! index; an unset VECTOR_INDEX keeps what a database has; a wrong value is
//! refused by name. (Each form's plans and recall: tests/api/plan.rs.)

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use serde_json::json;
use sqlx::PgPool;

use crate::helpers::{binary, hnsw_index_definition, result_ids, spawn_app, SendExt, TestApp, DIM};

/// The definition of the index searches use.
async fn index_definition(pool: &PgPool) -> String {
    hnsw_index_definition(pool)
        .await
        .expect("a valid HNSW index")
}

/// Every HNSW index on the table, valid or not.
async fn hnsw_indexes(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT indexname::text FROM pg_indexes
         WHERE tablename = 'contexts' AND indexdef LIKE '%USING hnsw%' ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn recorded(pool: &PgPool) -> String {
    sqlx::query_scalar("SELECT vector_index FROM embedding_state")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// `context-api migrate` on the app's database, with VECTOR_INDEX when given.
async fn migrate(app: &TestApp, vector_index: Option<&str>) -> std::process::Output {
    match vector_index {
        Some(v) => migrate_with(app, &[("VECTOR_INDEX", v)]).await,
        None => migrate_with(app, &[]).await,
    }
}

/// `context-api migrate` on the app's database with these settings of the
/// index (the others unset).
async fn migrate_with(app: &TestApp, settings: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = binary();
    cmd.env("DATABASE_URL", &app.db.url)
        .env("EMBEDDING_DIM", DIM.to_string())
        .env("LOG_LEVEL", "info")
        .env_remove("VECTOR_INDEX")
        .env_remove("HNSW_M")
        .env_remove("HNSW_EF_CONSTRUCTION")
        .arg("migrate");
    for (k, v) in settings {
        cmd.env(k, v);
    }
    tokio::process::Command::from(cmd).output().await.unwrap()
}

/// The graph recorded for the index: (m, ef_construction).
async fn recorded_graph(pool: &PgPool) -> (i32, i32) {
    sqlx::query_as("SELECT hnsw_m, hnsw_ef_construction FROM embedding_state")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// What a command printed: the logs go to stdout, errors to stderr.
fn output(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

async fn nearest(app: &TestApp) -> Vec<String> {
    let resp = app
        .search(json!({"query": "memory number 7", "k": 5}))
        .await;
    assert_eq!(resp.status(), 200);
    result_ids(&resp.json().await.unwrap())
}

#[tokio::test]
async fn migrate_switches_the_vector_index_beside_the_old_one_while_searches_go_on() {
    let app = spawn_app().await;
    let pool = app.db.pool().await;
    let definition = index_definition(&pool).await;
    assert!(
        definition.contains(&format!("halfvec({DIM})"))
            && definition.contains("halfvec_cosine_ops"),
        "a new database gets the halfvec index: {definition}"
    );
    assert_eq!(recorded(&pool).await, "halfvec");
    for i in 0..40 {
        app.create(
            app.alice.id,
            json!({"content": {"text": format!("memory number {i}")}}),
        )
        .await;
    }
    let before = nearest(&app).await;
    assert_eq!(before.len(), 5);

    // Searches run all along, on the instance that started before the switches.
    let stop = Arc::new(AtomicBool::new(false));
    let (searches, failures) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load = {
        let (client, url) = (app.client.clone(), app.url("/contexts/search"));
        let (stop, searches, failures) = (stop.clone(), searches.clone(), failures.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let resp = client
                    .post(&url)
                    .bearer_auth(crate::helpers::ADMIN_KEY)
                    .json(&json!({"query": "memory number 7", "k": 5}))
                    .send()
                    .await;
                searches.fetch_add(1, Ordering::SeqCst);
                if !resp.is_ok_and(|r| r.status() == 200) {
                    failures.fetch_add(1, Ordering::SeqCst);
                }
            }
        })
    };

    for (form, marks) in [
        ("bit", ["binary_quantize(embedding)", "bit_hamming_ops"]),
        ("vector", ["(embedding vector_cosine_ops)", "hnsw"]),
        ("halfvec", ["halfvec_cosine_ops", "halfvec("]),
    ] {
        let out = migrate(&app, Some(form)).await;
        let log = output(&out);
        assert!(out.status.success(), "migrate to {form}: {log}");
        assert!(log.contains("switched the vector index"), "{log}");
        let definition = index_definition(&pool).await;
        assert!(
            marks.iter().all(|m| definition.contains(m)),
            "{form}: {definition}"
        );
        assert_eq!(
            hnsw_indexes(&pool).await,
            ["contexts_embedding_hnsw_idx"],
            "{form}: the old index is dropped, no half-built one is left"
        );
        assert_eq!(recorded(&pool).await, form);
        // An instance started now searches in the new form and finds the
        // same: the text itself first, and its neighbours (a bit index of 16
        // dimensions has ties enough to lose one).
        let fresh = app.sibling().await;
        let found = nearest(&fresh).await;
        assert_eq!(found[0], before[0], "{form}");
        let common = found.iter().filter(|id| before.contains(id)).count();
        assert!(common >= 4, "{form}: {found:?} against {before:?}");
    }

    // Unset, a database keeps its index; a form that does not exist is refused.
    let out = migrate(&app, None).await;
    assert!(out.status.success());
    assert!(!output(&out).contains("switched the vector index"));
    assert!(index_definition(&pool).await.contains("halfvec_cosine_ops"));
    let out = migrate(&app, Some("pq")).await;
    assert!(!out.status.success());
    let log = output(&out);
    assert!(log.contains("VECTOR_INDEX") && log.contains("pq"), "{log}");

    stop.store(true, Ordering::SeqCst);
    load.await.unwrap();
    let searches = searches.load(Ordering::SeqCst);
    assert!(
        searches >= 10,
        "searches ran through the switches: {searches}"
    );
    assert_eq!(failures.load(Ordering::SeqCst), 0, "of {searches} searches");
    assert_eq!(nearest(&app).await[0], before[0]);
}

/// The graph's density (HNSW_M, HNSW_EF_CONSTRUCTION): a new database gets
/// the default; `migrate` rebuilds the index beside the old one when asked
/// for another and keeps the form; unset, a database keeps its graph; values
/// pgvector would refuse are refused by name, before anything is built.
#[tokio::test]
async fn migrate_rebuilds_the_hnsw_graph_when_asked_and_keeps_it_otherwise() {
    let app = spawn_app().await;
    let pool = app.db.pool().await;
    let definition = index_definition(&pool).await;
    assert!(
        definition.contains("m='24'") && definition.contains("ef_construction='128'"),
        "a new database gets the default graph: {definition}"
    );
    assert_eq!(recorded_graph(&pool).await, (24, 128));
    for i in 0..20 {
        app.create(
            app.alice.id,
            json!({"content": {"text": format!("memory number {i}")}}),
        )
        .await;
    }
    let before = nearest(&app).await;

    let out = migrate_with(&app, &[("HNSW_M", "8"), ("HNSW_EF_CONSTRUCTION", "40")]).await;
    let log = output(&out);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("switched the vector index"), "{log}");
    let definition = index_definition(&pool).await;
    assert!(
        definition.contains("m='8'")
            && definition.contains("ef_construction='40'")
            && definition.contains("halfvec_cosine_ops"),
        "the new graph, the same form: {definition}"
    );
    assert_eq!(hnsw_indexes(&pool).await, ["contexts_embedding_hnsw_idx"]);
    assert_eq!(recorded_graph(&pool).await, (8, 40));
    assert_eq!(recorded(&pool).await, "halfvec");
    assert_eq!(nearest(&app.sibling().await).await[0], before[0]);

    // Unset: kept. One of the two: the other is the database's.
    let out = migrate(&app, None).await;
    assert!(out.status.success(), "{}", output(&out));
    assert!(!output(&out).contains("switched the vector index"));
    assert!(index_definition(&pool).await.contains("m='8'"));
    let out = migrate_with(&app, &[("HNSW_EF_CONSTRUCTION", "64")]).await;
    assert!(out.status.success(), "{}", output(&out));
    assert_eq!(recorded_graph(&pool).await, (8, 64));
    let definition = index_definition(&pool).await;
    assert!(
        definition.contains("m='8'") && definition.contains("ef_construction='64'"),
        "{definition}"
    );

    // Refused by name: out of range, or ef_construction under twice m
    // (with the database's ef_construction of 64).
    for (settings, named) in [
        (vec![("HNSW_M", "1")], "HNSW_M"),
        (
            vec![("HNSW_EF_CONSTRUCTION", "2000")],
            "HNSW_EF_CONSTRUCTION",
        ),
        (vec![("HNSW_M", "48")], "HNSW_EF_CONSTRUCTION"),
    ] {
        let out = migrate_with(&app, &settings).await;
        let log = output(&out);
        assert!(!out.status.success(), "{settings:?}: {log}");
        assert!(log.contains(named), "{settings:?}: {log}");
    }
    assert_eq!(recorded_graph(&pool).await, (8, 64), "nothing changed");
    assert_eq!(hnsw_indexes(&pool).await, ["contexts_embedding_hnsw_idx"]);
}

/// A vector may hold values up to 1e15 in magnitude (and as small as 1e-15),
/// far past half precision's 65,504: in every form it is stored, patched in
/// and searched for, and found by its own direction. (The `halfvec` index
/// holds the unit vector; found by the contract fuzzer as a 500.)
#[tokio::test]
async fn vectors_of_any_accepted_magnitude_are_stored_and_found_in_every_form() {
    let app = spawn_app().await;
    let huge: Vec<f64> = (0..DIM)
        .map(|i| match i % 3 {
            0 => 1e15,
            1 => -1e15,
            _ => 1e-15,
        })
        .collect();
    let other: Vec<f64> = (0..DIM)
        .map(|i| if i % 2 == 0 { 1.0 } else { 0.5 })
        .collect();
    for form in ["halfvec", "vector", "bit"] {
        let out = migrate(&app, Some(form)).await;
        assert!(out.status.success(), "migrate to {form}: {}", output(&out));
        let fresh = app.sibling().await;
        let big = fresh
            .create(fresh.alice.id, json!({"content": {}, "embedding": huge}))
            .await;
        let small = fresh
            .create(fresh.alice.id, json!({"content": {}, "embedding": other}))
            .await;
        let small_id = small["id"].as_str().unwrap();
        let resp = fresh
            .req(reqwest::Method::PATCH, &format!("/contexts/{small_id}"))
            .json(&json!({"embedding": huge.iter().map(|x| -x).collect::<Vec<_>>()}))
            .sent()
            .await;
        assert_eq!(resp.status(), 200, "{form}: {}", resp.text().await.unwrap());
        let resp = fresh.search(json!({"vector": huge, "k": 2})).await;
        assert_eq!(resp.status(), 200, "{form}: {}", resp.text().await.unwrap());
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(
            result_ids(&body),
            [big["id"].as_str().unwrap(), small_id],
            "{form}"
        );
        let score = body["results"][0]["score"].as_f64().unwrap();
        assert!((score - 1.0).abs() < 1e-4, "{form}: {score}");
        for id in result_ids(&body) {
            fresh
                .req(reqwest::Method::DELETE, &format!("/contexts/{id}"))
                .sent()
                .await;
        }
    }
}
