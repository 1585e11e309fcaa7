//! Hostile and odd client input: the classes a black-box suite found, each
//! fixed where the input enters the service.
//! - a body that is not JSON is 400, whatever its JSON prefix holds;
//! - strings Postgres cannot store (U+0000) and instants it cannot hold are
//!   422, on every route and field, never 500;
//! - writers without If-Match are applied one on top of the other, never 412;
//! - numbers at the edges of a double read back after Postgres respells them;
//! - strings, arrays and objects over their size limits are 422.

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{assert_problem, spawn_app, SendExt};

async fn send_raw(
    app: &crate::helpers::TestApp,
    method: Method,
    path: &str,
    body: &str,
) -> reqwest::Response {
    app.req(method, path)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .sent()
        .await
}

#[tokio::test]
async fn a_body_that_is_not_json_is_400_on_every_route() {
    let app = spawn_app().await;
    let c = app.create(app.alice.id, json!({"content": {}})).await;
    let id = c["id"].as_str().unwrap();
    let user = app.alice.id;
    // Each prefix alone is JSON of the wrong shape (422); with what follows
    // it, the body is not JSON at all.
    let cases = [
        (
            Method::POST,
            "/contexts".to_string(),
            r#"{"user_id": "bad"} x"#.to_string(),
        ),
        (
            Method::POST,
            "/contexts".to_string(),
            format!(r#"{{"user_id": "{user}"}}}}"#),
        ),
        (
            Method::PATCH,
            format!("/contexts/{id}"),
            r#"{"content": 5} trailing"#.to_string(),
        ),
        (
            Method::POST,
            "/contexts/search".to_string(),
            r#"{"k": "many"} ]"#.to_string(),
        ),
        (
            Method::POST,
            "/contexts/batch".to_string(),
            r#"{"items": 1} {}"#.to_string(),
        ),
    ];
    for (method, path, body) in cases {
        let resp = send_raw(&app, method.clone(), &path, &body).await;
        let problem = assert_problem(resp, 400).await;
        assert!(
            problem["detail"].as_str().unwrap().contains("JSON"),
            "{method} {path} {body}: {problem}"
        );
    }
}

#[tokio::test]
async fn input_postgres_cannot_store_is_422_never_500() {
    let app = spawn_app().await;
    let c = app.create(app.alice.id, json!({"content": {}})).await;
    let id = c["id"].as_str().unwrap();
    let user = app.alice.id;
    let nul = "a\u{0}b";
    let create = |extra: Value| {
        let mut body = json!({"user_id": user, "context_type": "t", "content": {}});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    let cases: Vec<(Method, String, Value)> = vec![
        (
            Method::POST,
            "/contexts".into(),
            create(json!({"content": {"text": nul}})),
        ),
        (
            Method::POST,
            "/contexts".into(),
            create(json!({"content": {nul: 1}})),
        ),
        (
            Method::POST,
            "/contexts".into(),
            create(json!({"metadata": {"a": [nul]}})),
        ),
        (
            Method::POST,
            "/contexts".into(),
            create(json!({"text": nul})),
        ),
        (
            Method::POST,
            "/contexts".into(),
            create(json!({"expires_at": "-262000-01-01T00:00:00Z"})),
        ),
        (
            Method::POST,
            "/contexts".into(),
            create(json!({"expires_at": "+200000-01-01T00:00:00Z"})),
        ),
        (
            Method::PATCH,
            format!("/contexts/{id}"),
            json!({"metadata": {"k": nul}}),
        ),
        (
            Method::PATCH,
            format!("/contexts/{id}"),
            json!({"text": nul}),
        ),
        (
            Method::PATCH,
            format!("/contexts/{id}"),
            json!({"expires_at": "-262000-01-01T00:00:00Z"}),
        ),
        (
            Method::POST,
            "/contexts/search".into(),
            json!({"query": "a", "metadata": {"k": nul}}),
        ),
        (
            Method::POST,
            "/contexts/search".into(),
            json!({"query": nul}),
        ),
        (
            Method::POST,
            "/contexts/batch".into(),
            json!({"items": [create(json!({"content": {"text": nul}}))]}),
        ),
    ];
    // A cursor whose instant Postgres cannot hold (chrono can).
    let resp = app
        .req(
            Method::GET,
            "/contexts?cursor=-8000000000000000000_0193b3c400007000800000000000000a",
        )
        .sent()
        .await;
    assert_problem(resp, 422).await;
    for (method, path, body) in cases {
        let resp = app.req(method.clone(), &path).json(&body).sent().await;
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        // A batch answers 200 with the item's own problem.
        let item_status = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["results"][0]["status"].as_u64());
        let got = if status == 200 && path.ends_with("batch") {
            item_status.unwrap_or(0) as u16
        } else {
            status
        };
        assert_eq!(got, 422, "{method} {path} {body}: {status} {text}");
    }
}

#[tokio::test]
async fn concurrent_patches_without_if_match_all_apply() {
    let app = spawn_app().await;
    let c = app.create(app.alice.id, json!({"content": {}})).await;
    let id = c["id"].as_str().unwrap().to_owned();
    let writers = 24;
    let patches = (0..writers).map(|i| {
        let req = app
            .req(Method::PATCH, &format!("/contexts/{id}"))
            .json(&json!({"metadata": {"writer": i}}));
        async move {
            let resp = req.sent().await;
            (resp.status().as_u16(), resp.text().await.unwrap())
        }
    });
    for (status, body) in futures_util::future::join_all(patches).await {
        assert_eq!(status, 200, "{body}");
    }
    let now: Value = app.get(&id).await.json().await.unwrap();
    assert_eq!(now["version"], 1 + writers, "{now}");
}

#[tokio::test]
async fn deep_nesting_is_refused_before_it_reaches_the_database() {
    let app = spawn_app().await;
    let mut deep = json!(1);
    for _ in 0..40 {
        deep = json!([deep]);
    }
    let body = json!({"user_id": app.alice.id, "context_type": "t", "content": {"deep": deep}});
    let resp = app.req(Method::POST, "/contexts").json(&body).sent().await;
    let problem = assert_problem(resp, 422).await;
    assert!(
        problem["detail"].as_str().unwrap().contains("nest"),
        "{problem}"
    );
}

/// Strings, arrays and objects over their size limits are 422 naming the
/// limit, on every route (a batch item included), while the body is under
/// the size limit; a body over the size limit is 413.
#[tokio::test]
async fn oversized_strings_and_collections_are_422_and_big_bodies_413() {
    let app = spawn_app().await;
    let user = app.alice.id;
    let long = "x".repeat(300 * 1024);
    let many: Vec<u8> = vec![0; 20_000];
    let wide: serde_json::Map<String, Value> =
        (0..20_000).map(|i| (format!("k{i}"), json!(0))).collect();
    let item = |content: Value| json!({"user_id": user, "context_type": "t", "content": content});
    let cases = [
        ("/contexts", item(json!({"text": long})), "bytes long"),
        ("/contexts", item(json!({"a": many})), "more than"),
        ("/contexts", item(Value::Object(wide)), "more than"),
        ("/contexts/search", json!({"query": long}), "bytes long"),
        (
            "/contexts/batch",
            json!({"items": [item(json!({"text": long}))]}),
            "bytes long",
        ),
    ];
    for (path, body, says) in cases {
        let resp = app.req(Method::POST, path).json(&body).sent().await;
        let problem = assert_problem(resp, 422).await;
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.contains(says), "{path}: {detail}");
    }
    // Just under the limits is fine.
    let fits = item(json!({"text": "x".repeat(256 * 1024), "a": vec![0; 16_384]}));
    let resp = app.req(Method::POST, "/contexts").json(&fits).sent().await;
    assert_eq!(resp.status(), 201);
    // Over the body limit (1 MiB by default) is 413, whatever is inside.
    let huge = item(json!({"a": "y".repeat(100_000), "b": vec!["z".repeat(100_000); 11]}));
    let resp = app.req(Method::POST, "/contexts").json(&huge).sent().await;
    assert_problem(resp, 413).await;
}

/// Numbers in content and metadata at the edges of a double. Postgres keeps a
/// JSON number as the exact decimal written, and hands it back in another
/// spelling (1.7976931348623157e308 comes back as 309 digits): each must read
/// back, or the whole list of that user answers 500 from then on.
#[tokio::test]
async fn numbers_stored_read_back_on_every_read_path() {
    let app = spawn_app().await;
    let user = app.alice.id;
    let numbers = [
        "1.7976931348623157e308",
        "-1.7976931348623157e+308",
        "1.7976931348623158e308",
        "5e-324",
        "1e-400",
        "2.2250738585072014e-308",
        "-481023998197891197694902272",
        "-0",
        "0.1",
    ];
    for n in numbers {
        let body = format!(
            r#"{{"user_id": "{user}", "context_type": "t", "content": {{"n": {n}, "text": "x"}}, "metadata": {{"m": [{n}]}}}}"#
        );
        let resp = send_raw(&app, Method::POST, "/contexts", &body).await;
        assert_eq!(resp.status(), 201, "{n}: {}", resp.text().await.unwrap());
    }
    let resp = app
        .req(Method::GET, &format!("/contexts?user_id={user}&limit=100"))
        .sent()
        .await;
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    let page: Value = resp.json().await.unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), numbers.len());
    let resp = app
        .req(Method::POST, "/contexts/search")
        .json(&json!({"user_id": user, "query": "x", "k": 100}))
        .sent()
        .await;
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
}
