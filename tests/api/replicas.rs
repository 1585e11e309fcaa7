//! Read replicas: searches and lists on a real streaming standby of the test
//! Postgres (scripts/services.sh start-replica), skipped when it lags or is
//! down, with every read of one's own write on the primary.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{
    eventually, execute_on_drop, metric, replace_db, result_ids, spawn_app_with, Options, SendExt,
    TestApp,
};

fn replica_admin_url() -> String {
    std::env::var("TEST_REPLICA_URL").unwrap_or_else(|_| {
        panic!(
            "TEST_REPLICA_URL is not set: the replica tests need a streaming standby of the test \
             Postgres. Run them with ./scripts/test.sh, which starts one (scripts/services.sh start)."
        )
    })
}

fn services(action: &str) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/services.sh");
    let out = std::process::Command::new(script)
        .arg(action)
        .output()
        .expect("scripts/services.sh runs");
    assert!(
        out.status.success(),
        "services.sh {action}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn on_replica(sql: &str) {
    let pool = sqlx::PgPool::connect(&replica_admin_url()).await.unwrap();
    sqlx::query(sql).execute(&pool).await.unwrap();
    pool.close().await;
}

async fn search_ids(app: &TestApp, query: &str) -> Vec<String> {
    let resp = app
        .search(json!({"query": query, "mode": "text", "user_id": app.alice.id, "k": 50}))
        .await;
    assert_eq!(resp.status(), 200);
    result_ids(&resp.json().await.unwrap())
}

async fn replica_state(app: &TestApp) -> Value {
    app.ready_json().await["checks"]["postgres_replicas"][0].clone()
}

#[tokio::test]
async fn searches_go_to_a_replica_in_bounds_and_to_the_primary_otherwise() {
    // A run that failed while replay was paused left it so.
    on_replica("SELECT pg_wal_replay_resume()").await;
    let mut app = spawn_app_with(Options::default()).await;
    let replica_db = replace_db(&replica_admin_url(), &app.db.name);
    // The new database reaches the standby by replication.
    eventually(Duration::from_secs(20), || async {
        sqlx::PgPool::connect(&replica_db).await.ok().map(drop)
    })
    .await;
    app.stop().await;
    app.overrides
        .push(("database_replica_urls".into(), json!(replica_db)));
    app.overrides
        .push(("db_replica_max_lag_ms".into(), json!(60_000)));
    let tei = app.tei.clone();
    let app = app.sibling_with(tei.clone(), vec![]).await;
    // A second instance that skips a replica more than 300 ms behind.
    let strict = app
        .sibling_with(tei, vec![("db_replica_max_lag_ms".into(), json!(300))])
        .await;
    let before = app
        .create(
            app.alice.id,
            json!({"context_type": "note", "content": {"text": "an aardvark"}}),
        )
        .await;
    eventually(Duration::from_secs(10), || async {
        search_ids(&app, "aardvark")
            .await
            .contains(&before["id"].as_str().unwrap().to_owned())
            .then_some(())
    })
    .await;
    assert_eq!(replica_state(&app).await["state"], "ok");

    // Replay paused: the replica serves the searches and lists, so a new row
    // is not found there; the GET of it, on the primary, is never stale.
    on_replica("SELECT pg_wal_replay_pause()").await;
    let paused = ResumeReplay;
    let metrics_before = app.metrics().await;
    for i in 0..20 {
        let created = app
            .create(
                app.alice.id,
                json!({"context_type": "note", "content": {"text": format!("a zebra {i}")}}),
            )
            .await;
        let id = created["id"].as_str().unwrap().to_owned();
        let got = app.get_json(&format!("/contexts/{id}")).await;
        assert_eq!(got["id"], created["id"], "a write is read back at once");
        let resp = app
            .req(Method::PATCH, &format!("/contexts/{id}"))
            .json(&json!({"metadata": {"n": i}}))
            .sent()
            .await;
        assert_eq!(resp.status(), 200);
        assert_eq!(
            app.get_json(&format!("/contexts/{id}")).await["version"],
            2,
            "never stale"
        );
    }
    assert!(
        search_ids(&app, "zebra").await.is_empty(),
        "the search ran on the paused replica"
    );
    let listed = app
        .get_json(&format!("/contexts?user_id={}", app.alice.id))
        .await;
    assert_eq!(
        listed["items"].as_array().unwrap().len(),
        1,
        "the list ran on the replica: {listed}"
    );
    let metrics = app.metrics().await;
    let replica_reads = r#"db_reads_total{pool="replica"}"#;
    assert!(
        metric(&metrics, replica_reads) >= metric(&metrics_before, replica_reads) + 2.0,
        "{metrics}"
    );

    // Past its bound, the strict instance skips the replica: the primary answers.
    eventually(Duration::from_secs(10), || async {
        (replica_state(&strict).await["state"] == "lagging").then_some(())
    })
    .await;
    assert_eq!(
        search_ids(&strict, "zebra").await.len(),
        20,
        "from the primary"
    );
    drop(paused);
    eventually(Duration::from_secs(10), || async {
        (search_ids(&app, "zebra").await.len() == 20).then_some(())
    })
    .await;
    eventually(Duration::from_secs(10), || async {
        (replica_state(&strict).await["state"] == "ok").then_some(())
    })
    .await;

    // The replica stopped: every read still answers, from the primary.
    services("stop-replica");
    let _restart = RestartReplica;
    for i in 0..30 {
        assert_eq!(
            search_ids(&app, "zebra").await.len(),
            20,
            "search {i} with the replica down"
        );
        let resp = app
            .req(Method::GET, &format!("/contexts?user_id={}", app.alice.id))
            .sent()
            .await;
        assert_eq!(resp.status(), 200);
    }
    eventually(Duration::from_secs(10), || async {
        (replica_state(&app).await["state"] == "down").then_some(())
    })
    .await;
    assert_eq!(
        app.ready_json().await["status"],
        "ready",
        "a replica is never required"
    );
    drop(_restart);
    eventually(Duration::from_secs(20), || async {
        (replica_state(&app).await["state"] == "ok").then_some(())
    })
    .await;
}

/// Resumes the standby's replay, also when an assertion failed while it was paused.
struct ResumeReplay;

impl Drop for ResumeReplay {
    fn drop(&mut self) {
        execute_on_drop(replica_admin_url(), "SELECT pg_wal_replay_resume()".into());
    }
}

/// Starts the standby again, also when an assertion failed while it was down.
struct RestartReplica;

impl Drop for RestartReplica {
    fn drop(&mut self) {
        services("start-replica");
    }
}
