//! Search modes: `text` (Postgres full-text search over the embedded text)
//! and `hybrid` (vector and text rankings fused by reciprocal rank fusion),
//! with every filter, and what each does while TEI is down.

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{
    assert_problem, result_ids as ids, spawn_app, spawn_app_with, Options, TestApp, DIM,
};

fn scores(body: &Value) -> Vec<f64> {
    body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["score"].as_f64().unwrap())
        .collect()
}

async fn search_ok(app: &TestApp, body: Value) -> Value {
    let resp = app.search(body.clone()).await;
    assert_eq!(resp.status(), 200, "{body}: {}", resp.text().await.unwrap());
    resp.json().await.unwrap()
}

/// A unit vector at a cosine to e0 that falls as `r` grows.
fn at_rank(r: usize) -> Vec<f32> {
    let mut v = [0.0f32; DIM];
    v[0] = 1.0;
    v[1 + r] = 0.1 * r as f32;
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter().map(|x| x / n).collect()
}

const QUERY: &str = "quantum entanglement of photons";

#[tokio::test]
async fn text_mode_ranks_by_words_and_needs_no_embedding_service() {
    let app = spawn_app().await;
    let lemon = app
        .create(
            app.alice.id,
            json!({"content": {"text": "a recipe for lemon cake with fresh lemons"}}),
        )
        .await;
    app.create(
        app.alice.id,
        json!({"content": {"text": "stock markets fell sharply"}}),
    )
    .await;
    app.create(
        app.alice.id,
        json!({"content": {"text": "a cake made from carrots"}}),
    )
    .await;

    app.tei.set_down(true);
    // Written while TEI is down: stored pending, and found by text at once.
    let pending = app
        .create(
            app.alice.id,
            json!({"content": {"text": "lemons: how to store lemon zest"}}),
        )
        .await;
    assert_eq!(pending["embedding_status"], "pending");

    let body = search_ok(&app, json!({"mode": "text", "query": "Lemon cakes"})).await;
    assert_eq!(body["mode"], "text");
    let got = ids(&body);
    // Stemmed: "Lemon cakes" matches lemon/lemons and cake; the context with
    // both words comes first, and nothing without either word is found.
    assert_eq!(got.len(), 3, "{body}");
    assert_eq!(got[0], lemon["id"].as_str().unwrap());
    assert!(got.contains(&pending["id"].as_str().unwrap().to_owned()));
    let s = scores(&body);
    assert!(s.windows(2).all(|w| w[0] >= w[1]), "best first: {s:?}");
    assert!(s.iter().all(|x| *x > 0.0 && *x < 1.0), "0 to 1: {s:?}");

    // Vector search needs the embedding service: 503, as before.
    assert_problem(app.search(json!({"query": "Lemon cakes"})).await, 503).await;

    // A query of stop words alone matches nothing, and is no error.
    let body = search_ok(&app, json!({"mode": "text", "query": "the of and"})).await;
    assert_eq!(ids(&body).len(), 0);
    // Operators and punctuation are words to this parser, never syntax.
    for q in ["!lemon & | <-> ('cake'", "lemon:* \\ ' \"", "🍋 & cake"] {
        search_ok(&app, json!({"mode": "text", "query": q})).await;
    }
}

#[tokio::test]
async fn every_filter_applies_in_every_mode() {
    let app = spawn_app().await;
    let text = "notes on quantum entanglement of photons";
    let mut wanted = vec![];
    for (user, ctype, tag) in [
        (app.alice.id, "note", "a"),
        (app.alice.id, "note", "b"),
        (app.alice.id, "chat", "a"),
        (app.bob.id, "note", "a"),
    ] {
        let c = app
            .create(
                user,
                json!({"context_type": ctype, "content": {"text": text}, "metadata": {"tag": tag}}),
            )
            .await;
        if user == app.alice.id && ctype == "note" && tag == "a" {
            wanted.push(c["id"].as_str().unwrap().to_owned());
        }
    }
    // Expired, and deleted: found by no mode.
    app.create(
        app.alice.id,
        json!({"content": {"text": text}, "metadata": {"tag": "a"},
               "expires_at": "2001-01-01T00:00:00Z"}),
    )
    .await;
    let gone = app
        .create(
            app.alice.id,
            json!({"content": {"text": text}, "metadata": {"tag": "a"}}),
        )
        .await;
    let resp = app
        .req(
            Method::DELETE,
            &format!("/contexts/{}", gone["id"].as_str().unwrap()),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);

    for mode in ["vector", "text", "hybrid"] {
        let filters = json!({"mode": mode, "query": QUERY, "user_id": app.alice.id,
                             "context_type": "note", "metadata": {"tag": "a"}});
        let body = search_ok(&app, filters.clone()).await;
        assert_eq!(body["mode"], mode);
        assert_eq!(ids(&body), wanted, "{mode}: {body}");

        // A user key sees its own user only, in every mode.
        let resp = app
            .req_as(&app.bob.key, Method::POST, "/contexts/search")
            .json(&json!({"mode": mode, "query": QUERY}))
            .send()
            .await
            .unwrap();
        let body: Value = resp.json().await.unwrap();
        let bobs: Vec<String> = body["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["context"]["user_id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(bobs, vec![app.bob.id.to_string()], "{mode}: {body}");
        let resp = app
            .req_as(&app.bob.key, Method::POST, "/contexts/search")
            .json(&json!({"mode": mode, "query": QUERY, "user_id": app.alice.id}))
            .send()
            .await
            .unwrap();
        assert_problem(resp, 403).await;

        // min_score applies to the mode's own score: above the best, nothing.
        let all = search_ok(&app, json!({"mode": mode, "query": QUERY})).await;
        let best = scores(&all)[0];
        let mut above = json!({"mode": mode, "query": QUERY});
        above["min_score"] = json!(best + 1e-3);
        assert_eq!(ids(&search_ok(&app, above).await).len(), 0, "{mode}");
        let mut at = json!({"mode": mode, "query": QUERY});
        at["min_score"] = json!(best - 1e-6);
        assert!(!ids(&search_ok(&app, at).await).is_empty(), "{mode}");
    }
}

#[tokio::test]
async fn hybrid_fuses_the_two_rankings_by_reciprocal_rank() {
    // k = 10, the vector ranking weighs twice the text ranking.
    let app = spawn_app_with(
        Options::default()
            .set("hybrid_rrf_k", 10.0)
            .set("hybrid_vector_weight", 2.0)
            .set("hybrid_text_weight", 1.0),
    )
    .await;
    // Vector ranks: a 1, c 2, fillers 3 to 9, b 10. Text ranks: b 1, c 2;
    // nothing else holds the query's words.
    let make = |r: usize, text: String| {
        let app = &app;
        async move {
            app.create(
                app.alice.id,
                json!({"content": {"text": text}, "embedding": at_rank(r)}),
            )
            .await["id"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let a = make(0, "a note about growing tomatoes".into()).await;
    let c = make(
        1,
        "photons show quantum entanglement in long fiber experiments, as reported by the team"
            .into(),
    )
    .await;
    for i in 2..9 {
        make(i, format!("shopping list number {i}: bread, milk")).await;
    }
    let b = make(9, "quantum entanglement of photons".into()).await;

    let text = search_ok(&app, json!({"mode": "text", "query": QUERY})).await;
    assert_eq!(ids(&text), vec![b.clone(), c.clone()]);

    let body = search_ok(
        &app,
        json!({"mode": "hybrid", "query": QUERY, "vector": at_rank(0), "k": 3}),
    )
    .await;
    assert_eq!(body["mode"], "hybrid");
    // c: 2/(10+2) + 1/(10+2) = 0.25; a: 2/11 = 0.18; b: 2/20 + 1/11 = 0.19.
    assert_eq!(ids(&body), vec![c.clone(), b.clone(), a.clone()], "{body}");
    let s = scores(&body);
    for (got, want) in s
        .iter()
        .zip([3.0 / 12.0, 2.0 / 20.0 + 1.0 / 11.0, 2.0 / 11.0])
    {
        assert!((got - want).abs() < 1e-6, "{s:?}");
    }
    // Without the vector given, the query is embedded: still fused.
    let body = search_ok(&app, json!({"mode": "hybrid", "query": QUERY})).await;
    assert_eq!(body["mode"], "hybrid");
    assert_eq!(ids(&body).len(), 10);
}

#[tokio::test]
async fn without_the_embedding_service_hybrid_fails_or_falls_back_as_asked() {
    let app = spawn_app().await;
    let c = app
        .create(
            app.alice.id,
            json!({"content": {"text": "quantum entanglement of photons"}}),
        )
        .await;
    app.tei.set_down(true);
    for body in [
        json!({"mode": "hybrid", "query": "entangled photons"}),
        json!({"query": "entangled photons"}),
    ] {
        assert_problem(app.search(body).await, 503).await;
    }
    for body in [
        json!({"mode": "hybrid", "query": "entangled photons", "fallback_to_text": true}),
        json!({"query": "entangled photons", "fallback_to_text": true}),
    ] {
        let got = search_ok(&app, body).await;
        assert_eq!(got["mode"], "text", "{got}");
        assert_eq!(ids(&got), vec![c["id"].as_str().unwrap().to_owned()]);
    }
    // A hybrid search with its own vector needs no embedding service.
    let got = search_ok(
        &app,
        json!({"mode": "hybrid", "query": "entangled photons", "vector": at_rank(0)}),
    )
    .await;
    assert_eq!(got["mode"], "hybrid");
}

#[tokio::test]
async fn each_mode_takes_its_inputs() {
    let app = spawn_app().await;
    for body in [
        json!({"mode": "text"}),
        json!({"mode": "text", "vector": at_rank(0)}),
        json!({"mode": "text", "query": "a", "vector": at_rank(0)}),
        json!({"mode": "hybrid", "vector": at_rank(0)}),
        json!({"mode": "hybrid", "query": ""}),
        json!({"mode": "bm25", "query": "a"}),
        json!({"mode": 5, "query": "a"}),
        json!({"mode": ["text"], "query": "a"}),
        json!({"query": "a", "fallback_to_text": "yes"}),
    ] {
        assert_problem(app.search(body).await, 422).await;
    }
}
