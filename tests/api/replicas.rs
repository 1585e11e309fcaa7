//! Read replicas: searches and lists on a real streaming standby of the test
//! Postgres (scripts/services.sh start-replica), skipped when it lags or is
//! down, with every read of one's own write on the primary.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{
    database_admin_url, eventually, execute_on_drop, metric, replace_db, result_ids, schema,
    spawn_app_with, Options, SendExt, TestApp, DIM,
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

/// Waits until the standby has replayed all the primary had written.
async fn caught_up() {
    let primary = sqlx::PgPool::connect(&database_admin_url()).await.unwrap();
    let lsn: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(&primary)
        .await
        .unwrap();
    primary.close().await;
    let replica = sqlx::PgPool::connect(&replica_admin_url()).await.unwrap();
    // Generous: the other tests running meanwhile write WAL too.
    eventually(Duration::from_secs(60), || async {
        sqlx::query_scalar::<_, bool>("SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn")
            .bind(&lsn)
            .fetch_one(&replica)
            .await
            .unwrap()
            .then_some(())
    })
    .await;
    replica.close().await;
}

/// A rolling update migrates the primary before a replica has replayed it:
/// reads that the replica cannot run for want of the new schema are answered
/// by the primary, not failed. The database reaches the standby, replay is
/// paused, and only then is it migrated on the primary.
async fn a_replica_behind_a_migration_is_skipped(app: &TestApp) {
    let name = format!("test_{}", Uuid::new_v4().simple());
    let admin = sqlx::PgPool::connect(&database_admin_url()).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let _drop = DropDb(name.clone());
    let primary_db = replace_db(&database_admin_url(), &name);
    let replica_db = replace_db(&replica_admin_url(), &name);
    caught_up().await;
    on_replica("SELECT pg_wal_replay_pause()").await;
    let paused = ResumeReplay;
    let pool = sqlx::PgPool::connect(&primary_db).await.unwrap();
    context_api::store::migrate(&pool, &schema(DIM))
        .await
        .unwrap();
    pool.close().await;

    let mut behind = app
        .sibling_with(
            app.tei.clone(),
            vec![
                ("database_url".into(), json!(primary_db)),
                ("database_replica_urls".into(), json!(replica_db)),
                ("db_replica_max_lag_ms".into(), json!(60_000)),
            ],
        )
        .await;
    let created = behind
        .create(
            behind.alice.id,
            json!({"context_type": "note", "content": {"text": "a pangolin"}}),
        )
        .await;
    for _ in 0..3 {
        assert_eq!(
            search_ids(&behind, "pangolin").await,
            [created["id"].as_str().unwrap()],
            "answered by the primary"
        );
        let listed = behind
            .get_json(&format!("/contexts?user_id={}", behind.alice.id))
            .await;
        assert_eq!(listed["items"].as_array().unwrap().len(), 1, "{listed}");
    }
    let metrics = behind.metrics().await;
    assert!(
        metric(&metrics, "db_replica_fallbacks_total") >= 1.0,
        "{metrics}"
    );
    behind.stop().await;
    drop(paused);
}

async fn replica_state(app: &TestApp) -> Value {
    app.ready_json().await["checks"]["postgres_replicas"][0].clone()
}

#[tokio::test]
async fn searches_go_to_a_replica_in_bounds_and_to_the_primary_otherwise() {
    // A run that failed while replay was paused left it so.
    on_replica("SELECT pg_wal_replay_resume()").await;
    let mut app = spawn_app_with(Options::default()).await;
    a_replica_behind_a_migration_is_skipped(&app).await;
    let replica_db = replace_db(&replica_admin_url(), &app.db.name);
    // The new database and its schema reach the standby by replication.
    caught_up().await;
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

/// Drops a database the test made itself, also when an assertion failed.
struct DropDb(String);

impl Drop for DropDb {
    fn drop(&mut self) {
        execute_on_drop(
            database_admin_url(),
            format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.0),
        );
    }
}

/// Starts the standby again, also when an assertion failed while it was down.
struct RestartReplica;

impl Drop for RestartReplica {
    fn drop(&mut self) {
        services("start-replica");
    }
}
