use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{assert_problem, metric, spawn_app, SendExt};

async fn metadata_of(app: &crate::helpers::TestApp, id: &str) -> Value {
    let resp = app.get(id).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    body["metadata"].clone()
}

#[tokio::test]
async fn reads_are_cached_in_redis_under_the_prefix() {
    let app = spawn_app().await;
    let c = app
        .create(app.alice.id, json!({"content": {"text": "cached"}}))
        .await;
    let id = c["id"].as_str().unwrap();
    assert_eq!(app.get(id).await.status(), 200);
    let mut redis = app.redis().await;
    let key = format!("{}ctx:{id}", app.prefix);
    let raw: Option<String> = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .unwrap();
    let raw = raw.expect("the context is in the cache");
    assert!(raw.contains("cached"));
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(ttl > 0 && ttl <= 300_000, "{ttl}");

    // Served from the cache: a row changed behind the service's back is not seen
    // (this is what proves the read came from Redis).
    let pool = app.db.pool().await;
    sqlx::query("UPDATE contexts SET metadata = '{\"sneaky\": true}' WHERE id = $1::uuid")
        .bind(id)
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(metadata_of(&app, id).await, json!({}));
}

#[tokio::test]
async fn writes_invalidate_across_two_instances_sharing_redis() {
    let a = spawn_app().await;
    let b = a.sibling().await;
    let c = a
        .create(
            a.alice.id,
            json!({"content": {"text": "shared"}, "metadata": {"v": 1}}),
        )
        .await;
    let id = c["id"].as_str().unwrap();
    // Both instances read (and cache) version 1.
    assert_eq!(metadata_of(&a, id).await, json!({"v": 1}));
    assert_eq!(metadata_of(&b, id).await, json!({"v": 1}));

    // Write through A, read through B: never stale.
    let resp = a
        .req(Method::PATCH, &format!("/contexts/{id}"))
        .json(&json!({"metadata": {"v": 2}}))
        .sent()
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(metadata_of(&b, id).await, json!({"v": 2}));
    assert_eq!(metadata_of(&a, id).await, json!({"v": 2}));

    // Write through B, read through A.
    let resp = b
        .req(Method::PATCH, &format!("/contexts/{id}"))
        .json(&json!({"metadata": {"v": 3}}))
        .sent()
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(metadata_of(&a, id).await, json!({"v": 3}));

    // Delete through A: B answers 404 at once.
    let resp = a
        .req(Method::DELETE, &format!("/contexts/{id}"))
        .sent()
        .await;
    assert_eq!(resp.status(), 204);
    assert_problem(b.get(id).await, 404).await;
}

#[tokio::test]
async fn an_older_version_never_overwrites_a_newer_cache_entry() {
    let app = spawn_app().await;
    let c = app
        .create(
            app.alice.id,
            json!({"content": {"text": "race"}, "metadata": {"v": 1}}),
        )
        .await;
    let id = c["id"].as_str().unwrap();
    app.req(Method::PATCH, &format!("/contexts/{id}"))
        .json(&json!({"metadata": {"v": 2}}))
        .sent()
        .await;
    // Simulate a slow reader putting back what it read before the write.
    let mut stale = c.clone();
    stale["metadata"] = json!({"v": 1});
    let script = redis::Script::new(include_str!("../../src/cache/put_if_newer.lua"));
    let mut redis = app.redis().await;
    let stored: i64 = script
        .key(format!("{}ctx:{id}", app.prefix))
        .arg(2) // generation of version 1, ready
        .arg(serde_json::to_string(&stale).unwrap())
        .arg(60_000)
        .invoke_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(stored, 0, "the older entry was refused");
    assert_eq!(metadata_of(&app, id).await, json!({"v": 2}));
}

#[tokio::test]
async fn query_embeddings_are_cached_by_model_and_text() {
    let app = spawn_app().await;
    app.create(app.alice.id, json!({"content": {"text": "alpha beta"}}))
        .await;
    let first = app.search(json!({"query": "alpha"})).await;
    assert_eq!(first.status(), 200);
    let calls = app.tei.embed_calls();
    let second = app.search(json!({"query": "alpha"})).await;
    assert_eq!(second.status(), 200);
    assert_eq!(
        app.tei.embed_calls(),
        calls,
        "the second identical query used the cache"
    );
    let a: Value = first.json().await.unwrap();
    let b: Value = second.json().await.unwrap();
    assert_eq!(a["results"], b["results"]);
}

/// Waits until the instance's in-process tier follows the invalidation channel.
async fn local_tier_live(app: &crate::helpers::TestApp) {
    crate::helpers::eventually(std::time::Duration::from_secs(10), || async {
        (app.ready_json().await["checks"]["cache_local"] == "live").then_some(())
    })
    .await;
}

/// Replaces the Redis entry behind the services' backs, same generation.
async fn tamper(app: &crate::helpers::TestApp, id: &str) {
    let mut redis = app.redis().await;
    let key = format!("{}ctx:{id}", app.prefix);
    let raw: String = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .unwrap();
    let (generation, body) = raw.split_once('|').unwrap();
    let mut ctx: Value = serde_json::from_str(body).unwrap();
    ctx["metadata"] = json!({"tampered": true});
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg(format!("{generation}|{ctx}"))
        .query_async(&mut redis)
        .await
        .unwrap();
}

#[tokio::test]
async fn reads_are_served_in_process_and_writes_elsewhere_invalidate_them() {
    let a = spawn_app().await;
    let b = a.sibling().await;
    local_tier_live(&a).await;
    local_tier_live(&b).await;
    let c = a
        .create(
            a.alice.id,
            json!({"content": {"text": "hot"}, "metadata": {"v": 1}}),
        )
        .await;
    let id = c["id"].as_str().unwrap();
    assert_eq!(metadata_of(&b, id).await, json!({"v": 1}));

    // Redis changes behind both instances' backs: they keep serving what
    // they hold in process, which is what proves the in-process tier.
    tamper(&a, id).await;
    assert_eq!(metadata_of(&a, id).await, json!({"v": 1}));
    assert_eq!(metadata_of(&b, id).await, json!({"v": 1}));

    // A write through A reaches B's process before the client can ask B.
    for v in 2..=6 {
        let resp = a
            .req(Method::PATCH, &format!("/contexts/{id}"))
            .json(&json!({"metadata": {"v": v}}))
            .sent()
            .await;
        assert_eq!(resp.status(), 200);
        assert_eq!(metadata_of(&b, id).await, json!({"v": v}));
    }
    let resp = b
        .req(Method::DELETE, &format!("/contexts/{id}"))
        .sent()
        .await;
    assert_eq!(resp.status(), 204);
    assert_problem(a.get(id).await, 404).await;
}

#[tokio::test]
async fn local_cache_entries_zero_turns_the_in_process_tier_off() {
    let app = crate::helpers::spawn_app_with(
        crate::helpers::Options::default().set("local_cache_entries", 0),
    )
    .await;
    assert_eq!(app.ready_json().await["checks"]["cache_local"], "disabled");
    let c = app
        .create(
            app.alice.id,
            json!({"content": {"text": "cold"}, "metadata": {"v": 1}}),
        )
        .await;
    let id = c["id"].as_str().unwrap();
    assert_eq!(metadata_of(&app, id).await, json!({"v": 1}));
    tamper(&app, id).await;
    assert_eq!(metadata_of(&app, id).await, json!({"tampered": true}));
}

/// After a Redis operation fails, reads skip Redis for a second and go to
/// Postgres at once, instead of each waiting out the Redis timeout; writes
/// still try it.
#[tokio::test]
async fn after_a_redis_failure_reads_skip_redis_for_a_while() {
    let app = crate::helpers::spawn_app_with(
        crate::helpers::Options::default()
            // A port where nothing listens.
            .set("redis_url", "redis://127.0.0.1:1")
            .set("redis_optional", true),
    )
    .await;
    let bypassed = |text: String| metric(&text, "cache_bypassed_total");
    let metrics = || app.metrics();
    // The create's cache write fails: reads now bypass Redis.
    let c = app
        .create(app.alice.id, serde_json::json!({"content": {"text": "x"}}))
        .await;
    let before = bypassed(metrics().await);
    let resp = app.get(c["id"].as_str().unwrap()).await;
    assert_eq!(resp.status(), 200);
    let after = bypassed(metrics().await);
    assert!(
        after > before,
        "the read went to Redis: {before} -> {after}"
    );
}

#[tokio::test]
async fn reads_stay_current_across_instances_on_one_redis_and_on_a_cluster() {
    let a = spawn_app().await;
    let b = a.sibling().await;
    // With a cluster there is no in-process tier: a cluster does not order
    // pub/sub messages across nodes, which its read barrier relies on.
    let tier = if crate::helpers::redis_cluster() {
        "disabled"
    } else {
        "live"
    };
    for app in [&a, &b] {
        crate::helpers::eventually(std::time::Duration::from_secs(5), || async {
            (app.ready_json().await["checks"]["cache_local"] == tier).then_some(())
        })
        .await;
    }
    assert_eq!(a.ready_json().await["checks"]["redis"], "ok");
    let c = a
        .create(
            a.alice.id,
            json!({"context_type": "note", "content": {"text": "x"}, "metadata": {"v": 0}}),
        )
        .await;
    let id = c["id"].as_str().unwrap();
    for v in 1..=20 {
        let (writer, reader) = if v % 2 == 0 { (&a, &b) } else { (&b, &a) };
        let resp = writer
            .req(Method::PATCH, &format!("/contexts/{id}"))
            .json(&json!({"metadata": {"v": v}}))
            .sent()
            .await;
        assert_eq!(resp.status(), 200);
        assert_eq!(
            metadata_of(reader, id).await,
            json!({"v": v}),
            "read after write, across instances"
        );
    }
    // The entry is in Redis (in a cluster, on its slot's node).
    let mut redis = a.redis().await;
    let raw: Option<String> = redis::cmd("GET")
        .arg(format!("{}ctx:{id}", a.prefix))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(raw.is_some_and(|r| r.contains("\"v\":20")));
}
