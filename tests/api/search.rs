use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{assert_problem, cosine, result_ids as ids, spawn_app, SendExt, DIM};

/// Deterministic pseudo-random vectors (xorshift), no two alike.
fn vectors(n: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut x = seed.max(1);
    (0..n)
        .map(|_| {
            (0..DIM)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x % 2000) as f32 / 1000.0 - 1.0
                })
                .collect()
        })
        .collect()
}

#[tokio::test]
async fn search_order_equals_an_exact_brute_force_ranking() {
    let app = spawn_app().await;
    let vs = vectors(40, 7);
    let mut stored = vec![];
    for (i, v) in vs.iter().enumerate() {
        let c = app
            .create(app.alice.id, json!({"content": {"i": i}, "embedding": v}))
            .await;
        stored.push((c["id"].as_str().unwrap().to_owned(), v.clone()));
    }
    for query in vectors(5, 99) {
        let mut expected: Vec<(String, f64)> = stored
            .iter()
            .map(|(id, v)| (id.clone(), cosine(&query, v)))
            .collect();
        expected.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap());
        let body: Value = app
            .search(json!({"vector": query, "k": 10}))
            .await
            .json()
            .await
            .unwrap();
        let got = ids(&body);
        let want: Vec<String> = expected.iter().take(10).map(|(id, _)| id.clone()).collect();
        assert_eq!(got, want);
        for (r, (_, score)) in body["results"].as_array().unwrap().iter().zip(&expected) {
            let s = r["score"].as_f64().unwrap();
            assert!((s - score).abs() < 1e-4, "score {s} vs {score}");
        }
    }
}

#[tokio::test]
async fn text_search_finds_the_closest_text_first() {
    let app = spawn_app().await;
    for text in [
        "the cat sat on the mat",
        "stock markets fell sharply",
        "a recipe for lemon cake",
    ] {
        app.create(app.alice.id, json!({"content": {"text": text}}))
            .await;
    }
    let body: Value = app
        .search(json!({"query": "lemon cake recipe", "k": 3}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        body["results"][0]["context"]["content"]["text"],
        "a recipe for lemon cake"
    );
    let scores: Vec<f64> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["score"].as_f64().unwrap())
        .collect();
    assert!(
        scores.windows(2).all(|w| w[0] >= w[1]),
        "descending: {scores:?}"
    );
}

#[tokio::test]
async fn filters_k_and_min_score_apply() {
    let app = spawn_app().await;
    let q = vec![1.0f32; DIM];
    let mut near = vec![1.0f32; DIM];
    near[0] = 0.9;
    let mut far = vec![-1.0f32; DIM];
    far[0] = 1.0;
    let a = app
        .create(app.alice.id, json!({"context_type": "fact", "content": {}, "metadata": {"topic": "x", "n": 1}, "embedding": near}))
        .await;
    app.create(app.alice.id, json!({"context_type": "note", "content": {}, "metadata": {"topic": "y"}, "embedding": near}))
        .await;
    app.create(
        app.bob.id,
        json!({"context_type": "fact", "content": {}, "embedding": near}),
    )
    .await;
    app.create(
        app.alice.id,
        json!({"context_type": "fact", "content": {}, "embedding": far}),
    )
    .await;

    let body: Value = app
        .search(json!({"vector": q, "k": 100}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(ids(&body).len(), 4);
    let body: Value = app
        .search(json!({"vector": q, "k": 2}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(ids(&body).len(), 2);
    let body: Value = app
        .search(json!({"vector": q, "user_id": app.alice.id, "context_type": "fact", "metadata": {"topic": "x"}}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(ids(&body), vec![a["id"].as_str().unwrap().to_owned()]);
    let body: Value = app
        .search(json!({"vector": q, "min_score": 0.5}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(ids(&body).len(), 3, "the far one is below min_score");
    assert!(body["results"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["score"].as_f64().unwrap() >= 0.5));
}

#[tokio::test]
async fn deleted_and_expired_contexts_are_never_found() {
    let app = spawn_app().await;
    let v = vec![0.5f32; DIM];
    let gone = app
        .create(app.alice.id, json!({"content": {}, "embedding": v}))
        .await;
    let expired = app
        .create(app.alice.id, json!({"content": {}, "embedding": v}))
        .await;
    let kept = app
        .create(app.alice.id, json!({"content": {}, "embedding": v}))
        .await;
    app.req(
        Method::DELETE,
        &format!("/contexts/{}", gone["id"].as_str().unwrap()),
    )
    .sent()
    .await;
    let pool = app.db.pool().await;
    sqlx::query("UPDATE contexts SET expires_at = now() - interval '1 second' WHERE id = $1::uuid")
        .bind(expired["id"].as_str().unwrap())
        .execute(&pool)
        .await
        .unwrap();
    let body: Value = app.search(json!({"vector": v})).await.json().await.unwrap();
    assert_eq!(ids(&body), vec![kept["id"].as_str().unwrap().to_owned()]);
}

#[tokio::test]
async fn a_filtered_search_keeps_its_recall_past_ef_search() {
    // 1000 of bob's rows lie around the query, alice's 5 notes elsewhere. An
    // HNSW scan filtered to notes without pgvector 0.8's iterative scans stops
    // after ef_search candidates, all bob's, and returns nothing. (A filter to
    // alice alone takes the exact plan: she is a small user.)
    let app = spawn_app().await;
    let pool = app.db.pool().await;
    sqlx::query(
        "INSERT INTO contexts (id, user_id, context_type, content, embedding, embedding_text, embedding_status)
         SELECT gen_random_uuid(), $1, 'bulk', '{}',
                (SELECT array_agg(random())::real[]::vector FROM generate_series(1, $2) d WHERE d > g * 0),
                'bulk', 'ready'
         FROM generate_series(1, 1000) g",
    )
    .bind(app.bob.id)
    .bind(DIM as i32)
    .execute(&pool)
    .await
    .unwrap();
    for v in vectors(5, 3) {
        app.create(
            app.alice.id,
            json!({"content": {}, "embedding": v, "context_type": "note"}),
        )
        .await;
    }
    // Make the planner order by the HNSW index (with a selective filter it
    // would otherwise sort the few matching rows exactly, which proves nothing),
    // and make the app's connections pick that up.
    app.admin_sql(&format!(
        "ALTER DATABASE {} SET enable_sort = off",
        app.db.name
    ))
    .await;
    sqlx::query("ANALYZE contexts")
        .execute(&pool)
        .await
        .unwrap();
    app.terminate_connections().await;
    // The statistics count index scans: the search must go through HNSW.
    let hnsw_scans = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT idx_scan FROM pg_stat_user_indexes WHERE indexrelname = 'contexts_embedding_hnsw_idx'",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    let before = hnsw_scans().await;
    let q = vec![1.0f32; DIM];
    let resp = crate::helpers::eventually(std::time::Duration::from_secs(5), || async {
        let r = app
            .search(json!({"vector": q, "context_type": "note", "k": 5}))
            .await;
        (r.status() == 200).then_some(r)
    })
    .await;
    let body: Value = resp.json().await.unwrap();
    assert_eq!(ids(&body).len(), 5, "{body}");
    // Backends report their statistics within a second or so of going idle.
    crate::helpers::eventually(std::time::Duration::from_secs(10), || async {
        (hnsw_scans().await > before).then_some(())
    })
    .await;
}

#[tokio::test]
async fn search_input_is_validated() {
    let app = spawn_app().await;
    let bad = [
        json!({}),
        json!({"query": "a", "vector": vec![0.1f32; DIM]}),
        json!({"query": ""}),
        json!({"vector": [0.1, 0.2]}),
        json!({"vector": vec![0.0f32; DIM]}),
        json!({"query": "a", "k": 0}),
        json!({"query": "a", "k": 101}),
        json!({"query": "a", "min_score": 2.0}),
        json!({"query": "a", "metadata": [1]}),
        json!({"query": "a", "user_id": "nope"}),
    ];
    for body in bad {
        assert_problem(app.search(body.clone()).await, 422).await;
    }
    let resp = app
        .req(Method::POST, "/contexts/search")
        .body("{")
        .header("content-type", "application/json")
        .sent()
        .await;
    assert_problem(resp, 400).await;
}
