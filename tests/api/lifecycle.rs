//! Admission control, expiry, graceful shutdown (in process and of the real
//! binary), and the command line.

use std::process::{Command, Stdio};
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{
    assert_problem, binary, eventually, free_port, redis_url, spawn_app_with, wait_healthy,
    Options, SendExt, TestDb, ADMIN_KEY, DIM,
};
use crate::tei::TeiStub;
use uuid::Uuid;

#[tokio::test]
async fn beyond_the_concurrency_cap_requests_get_503_at_once() {
    let app = spawn_app_with(Options::default().set("max_concurrent_requests", 1)).await;
    app.create(app.alice.id, json!({"content": {"text": "warm"}}))
        .await;
    app.tei.set_delay(Duration::from_millis(1500));
    let slow = app.spawn_search("slow query");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    let resp = app.req(Method::GET, "/contexts").sent().await;
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "refused at once, not queued"
    );
    assert_eq!(resp.headers()["retry-after"], "1");
    assert_problem(resp, 503).await;
    // Probes are not subject to the cap.
    assert_eq!(
        app.client.get(app.url("/health")).sent().await.status(),
        200
    );
    assert_eq!(slow.await.unwrap(), 200);
    assert_eq!(app.req(Method::GET, "/contexts").sent().await.status(), 200);
}

#[tokio::test]
async fn a_request_over_the_timeout_gets_503() {
    let app = spawn_app_with(Options::default().set("request_timeout_ms", 300)).await;
    app.create(app.alice.id, json!({"content": {"text": "warm"}}))
        .await;
    app.tei.set_delay(Duration::from_millis(1500));
    let resp = app.search(json!({"query": "too slow"})).await;
    assert_problem(resp, 503).await;
}

#[tokio::test]
async fn expired_contexts_are_purged_in_batches() {
    let app = spawn_app_with(
        Options::default()
            .set("purge_interval_seconds", 1)
            .set("purge_batch_size", 2),
    )
    .await;
    let mut expired = vec![];
    for _ in 0..5 {
        let c = app
            .create(
                app.alice.id,
                json!({"content": {"text": "short-lived"}, "ttl_seconds": 1}),
            )
            .await;
        expired.push(c["id"].as_str().unwrap().to_owned());
    }
    let kept = app
        .create(
            app.alice.id,
            json!({"content": {"text": "long-lived"}, "ttl_seconds": 3600}),
        )
        .await;
    let pool = app.db.pool().await;
    eventually(Duration::from_secs(15), || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM contexts")
            .fetch_one(&pool)
            .await
            .unwrap();
        (n == 1).then_some(())
    })
    .await;
    assert_eq!(app.get(kept["id"].as_str().unwrap()).await.status(), 200);
    for id in &expired {
        assert_problem(app.get(id).await, 404).await;
    }
}

#[tokio::test]
async fn in_process_shutdown_drains_and_lets_a_slow_request_finish() {
    let mut app = spawn_app_with(Options::default().set("shutdown_delay_ms", 800)).await;
    app.create(app.alice.id, json!({"content": {"text": "warm"}}))
        .await;
    app.tei.set_delay(Duration::from_millis(1500));
    let slow = app.spawn_search("in flight");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ready_url = app.url("/ready");
    let client = reqwest::Client::new();
    let stopping = tokio::spawn(async move {
        app.stop().await;
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let resp = client.get(&ready_url).sent().await;
    assert_eq!(resp.status(), 503);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "draining");
    assert_eq!(slow.await.unwrap(), 200);
    stopping.await.unwrap();
}

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn base_env(cmd: &mut Command, db: &TestDb, tei: &TeiStub, port: u16) {
    cmd.env("BIND_ADDRESS", format!("127.0.0.1:{port}"))
        .env("DATABASE_URL", &db.url)
        .env("REDIS_URL", redis_url())
        .env("CACHE_KEY_PREFIX", format!("bin-{port}:"))
        .env("EMBEDDING_SERVICE_URL", tei.url())
        .env("EMBEDDING_DIM", DIM.to_string())
        .env("API_KEYS", context_api::auth::key_entry("admin", ADMIN_KEY))
        .env("LOG_LEVEL", "info");
}

#[tokio::test]
async fn the_binary_drains_on_sigterm_finishes_the_slow_request_and_exits_0() {
    let db = TestDb::create(DIM).await;
    let tei = TeiStub::start(DIM, 8).await;
    let port = free_port();
    let mut cmd = binary();
    base_env(&mut cmd, &db, &tei, port);
    cmd.env("SHUTDOWN_DELAY_MS", "1000")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = Child(cmd.spawn().expect("the binary starts"));
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    wait_healthy(&client, &base).await;
    // `healthcheck` agrees.
    let mut hc = binary();
    base_env(&mut hc, &db, &tei, port);
    assert!(hc.arg("healthcheck").status().unwrap().success());

    tei.set_delay(Duration::from_millis(2500));
    let slow = {
        let req = client
            .post(format!("{base}/contexts/search"))
            .bearer_auth(ADMIN_KEY)
            .json(&json!({"query": "slow request in flight"}));
        tokio::spawn(async move { req.send().await.map(|r| r.status().as_u16()) })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    let pid = child.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let resp = client.get(format!("{base}/ready")).sent().await;
    assert_eq!(resp.status(), 503);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "draining");

    assert_eq!(
        slow.await
            .unwrap()
            .expect("the in-flight request completes"),
        200
    );
    let mut child = child;
    let status = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = child.0.try_wait().unwrap() {
                return s;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the binary did not exit"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await
    .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn the_binary_refuses_bad_configuration_with_one_clear_line() {
    let db = TestDb::create(DIM).await;
    let tei = TeiStub::start(DIM, 8).await;
    let run = |configure: &dyn Fn(&mut Command)| {
        let mut cmd = binary();
        base_env(&mut cmd, &db, &tei, free_port());
        configure(&mut cmd);
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        )
    };

    let (code, err) = run(&|c| {
        c.env_remove("DATABASE_URL");
    });
    assert_ne!(code, Some(0));
    assert!(
        err.contains("DATABASE_URL") && err.lines().count() == 1,
        "{err}"
    );

    let (code, err) = run(&|c| {
        c.env("EMBEDDING_DIM", "lots");
    });
    assert_ne!(code, Some(0));
    assert!(err.contains("EMBEDDING_DIM"), "{err}");

    let (code, err) = run(&|c| {
        c.env_remove("API_KEYS");
    });
    assert_ne!(code, Some(0));
    assert!(
        err.contains("API_KEYS") && err.contains("AUTH_DISABLED"),
        "{err}"
    );

    // The database column and EMBEDDING_DIM must agree.
    let (code, err) = run(&|c| {
        c.env("EMBEDDING_DIM", (DIM * 2).to_string());
    });
    assert_eq!(code, Some(1));
    assert!(
        err.contains("EMBEDDING_DIM") && err.contains(&DIM.to_string()),
        "{err}"
    );

    // So must the text column's configuration and TEXT_SEARCH_CONFIG: queries
    // parsed another way would silently miss.
    let (code, err) = run(&|c| {
        c.env("TEXT_SEARCH_CONFIG", "simple");
    });
    assert_eq!(code, Some(1));
    assert!(
        err.contains("TEXT_SEARCH_CONFIG=english") && err.contains("\"simple\""),
        "{err}"
    );
}

/// A database with nothing in it.
async fn empty_database() -> TestDb {
    let db = TestDb::create(DIM).await;
    let pool = db.pool().await;
    sqlx::query("DROP TABLE contexts, idempotency_keys, embedding_state, _sqlx_migrations")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    db
}

#[tokio::test]
async fn migrate_is_a_separate_idempotent_step_and_serve_refuses_an_unmigrated_database() {
    let db = empty_database().await;
    let tei = TeiStub::start(DIM, 8).await;

    let mut serve = binary();
    base_env(&mut serve, &db, &tei, free_port());
    let out = serve.output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("context-api migrate"));

    for _ in 0..2 {
        let mut migrate = binary();
        base_env(&mut migrate, &db, &tei, free_port());
        let out = migrate.arg("migrate").output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // A different dimension is refused with a message that says why.
    let mut migrate = binary();
    base_env(&mut migrate, &db, &tei, free_port());
    let out = migrate
        .arg("migrate")
        .env("EMBEDDING_DIM", "32")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("EMBEDDING_DIM"));
    // So is another text-search configuration.
    let mut migrate = binary();
    base_env(&mut migrate, &db, &tei, free_port());
    let out = migrate
        .arg("migrate")
        .env("TEXT_SEARCH_CONFIG", "simple")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("TEXT_SEARCH_CONFIG"));
}

#[tokio::test]
async fn migrate_names_an_unknown_text_search_configuration() {
    let db = empty_database().await;
    let tei = TeiStub::start(DIM, 8).await;
    let mut migrate = binary();
    base_env(&mut migrate, &db, &tei, free_port());
    let out = migrate
        .arg("migrate")
        .env("TEXT_SEARCH_CONFIG", "klingon")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("klingon"), "{err}");
}

#[tokio::test]
async fn config_prints_the_effective_configuration_without_secrets() {
    let db = TestDb::create(DIM).await;
    let tei = TeiStub::start(DIM, 8).await;
    let mut cmd = binary();
    base_env(&mut cmd, &db, &tei, 8123);
    let out = cmd
        .arg("config")
        .env("DATABASE_URL", "postgres://app:hunter2@db:5432/contexts")
        .env("REDIS_URL", "redis://default:s3cret@redis:6379")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("bind_address = \"127.0.0.1:8123\""), "{text}");
    assert!(
        text.contains(&format!("embedding_dim = \"{DIM}\"")),
        "{text}"
    );
    assert!(
        !text.contains("hunter2") && !text.contains("s3cret"),
        "{text}"
    );
    let hash = context_api::auth::key_entry("admin", ADMIN_KEY);
    assert!(!text.contains(hash.split(':').nth(1).unwrap()), "{text}");
}

#[tokio::test]
async fn healthcheck_fails_when_nothing_listens() {
    let db = TestDb::create(DIM).await;
    let tei = TeiStub::start(DIM, 8).await;
    let mut cmd = binary();
    base_env(&mut cmd, &db, &tei, free_port());
    assert_eq!(
        cmd.arg("healthcheck").output().unwrap().status.code(),
        Some(1)
    );
}

#[tokio::test]
async fn the_service_starts_before_tei_and_checks_it_when_it_answers() {
    let tei_down = TeiStub::start(DIM, 8).await;
    tei_down.set_down(true);
    let app2 =
        spawn_app_with(Options::default().set("embedding_service_url", tei_down.url())).await;
    let body = app2.ready_json().await;
    assert_eq!(body["status"], "ready");
    assert_ne!(body["checks"]["embeddings"]["status"], "ok");
    tei_down.set_down(false);
    app2.wait_embeddings_ok(Duration::from_secs(15)).await;
}

#[tokio::test]
async fn keys_new_prints_a_key_once_with_the_entry_that_admits_it() {
    let user = Uuid::now_v7();
    let out = binary()
        .args(["keys", "new", "--scope", &user.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    let [key, entry] = lines[..] else {
        panic!("expected the key and its entry: {text}")
    };
    assert!(
        !entry.contains(key),
        "the entry holds the hash, never the key"
    );
    // A server configured with the entry admits the key, within its scope.
    let app = spawn_app_with(Options::default().set("api_keys", entry)).await;
    let mine = app
        .req_as(key, Method::GET, &format!("/contexts?user_id={user}"))
        .sent()
        .await;
    assert_eq!(mine.status(), 200);
    let others = app
        .req_as(
            key,
            Method::GET,
            &format!("/contexts?user_id={}", Uuid::now_v7()),
        )
        .sent()
        .await;
    assert_eq!(others.status(), 403);
    let bad = binary()
        .args(["keys", "new", "--scope", "everyone"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
}
