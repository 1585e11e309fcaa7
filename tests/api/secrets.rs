//! Secrets never reach the logs: the real binary, at debug level for every
//! crate, through a whole session (good and bad keys, a TEI URL and a
//! database URL carrying passwords, a Redis that is down, TEI failing, a
//! database that refuses the password), and every line it printed is searched
//! for each secret.

use std::process::{Command, Stdio};

use reqwest::Method;
use serde_json::json;

use crate::helpers::{binary, free_port, replace_db, wait_healthy, SendExt, TestDb, DIM};
use crate::tei::TeiStub;

fn random_hex() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// `url` with `user:password@` put in front of its host.
fn with_credentials(url: &str, user: &str, password: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    format!("{scheme}://{user}:{password}@{host}")
}

#[tokio::test]
async fn no_key_password_or_connection_string_appears_in_any_log_line() {
    let db = TestDb::create(DIM).await;
    let tei = TeiStub::start(DIM, 8).await;
    let (admin_key, user_key, bad_key) = (random_hex(), random_hex(), random_hex());
    let (db_password, redis_password, tei_password) = (random_hex(), random_hex(), random_hex());
    let user = uuid::Uuid::new_v4();

    // A role with a password, to put one in DATABASE_URL.
    let role = format!("secret_{}", &random_hex()[..12]);
    let pool = db.pool().await;
    sqlx::query(&format!(
        "CREATE ROLE {role} LOGIN SUPERUSER PASSWORD '{db_password}'"
    ))
    .execute(&pool)
    .await
    .unwrap();
    let db_url = with_credentials(&db.url, &role, &db_password);
    let port = free_port();
    let log = tempfile_path("secrets-serve");
    let mut cmd = binary();
    cmd.env("BIND_ADDRESS", format!("127.0.0.1:{port}"))
        .env("DATABASE_URL", &db_url)
        .env(
            "REDIS_URL",
            format!("redis://:{redis_password}@127.0.0.1:1/"),
        )
        .env("REDIS_OPTIONAL", "true")
        .env(
            "EMBEDDING_SERVICE_URL",
            with_credentials(&tei.url(), "tei", &tei_password),
        )
        .env("EMBEDDING_DIM", DIM.to_string())
        .env("EMBEDDING_TIMEOUT_MS", "500")
        .env(
            "API_KEYS",
            format!(
                "{},{}",
                context_api::auth::key_entry("admin", &admin_key),
                context_api::auth::key_entry(&user.to_string(), &user_key)
            ),
        )
        .env("LOG_LEVEL", "debug")
        .env("LOG_FORMAT", "json")
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::inherit());
    let mut child = cmd.spawn().expect("the binary starts");
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    wait_healthy(&client, &base).await;

    // A session: good keys, bad keys, a key in the wrong scheme, TEI up and down.
    let req = |key: &str, method: Method, path: &str| {
        client
            .request(method, format!("{base}{path}"))
            .bearer_auth(key)
    };
    let created = req(&admin_key, Method::POST, "/contexts")
        .json(&json!({"user_id": user, "context_type": "note", "content": {"text": "hello"}}))
        .sent()
        .await;
    assert_eq!(created.status(), 201);
    assert_eq!(
        req(&user_key, Method::GET, "/contexts")
            .sent()
            .await
            .status(),
        200
    );
    // Error bodies are searched too.
    let mut bodies = String::new();
    let bad = req(&bad_key, Method::GET, "/contexts").sent().await;
    assert_eq!(bad.status(), 401);
    bodies.push_str(&bad.text().await.unwrap());
    let basic = client
        .get(format!("{base}/contexts"))
        .header("authorization", format!("Basic {bad_key}"))
        .sent()
        .await;
    assert_eq!(basic.status(), 401);
    bodies.push_str(&basic.text().await.unwrap());
    tei.set_down(true);
    let search = req(&user_key, Method::POST, "/contexts/search")
        .json(&json!({"query": "while TEI is down"}))
        .sent()
        .await;
    assert_eq!(search.status(), 503);
    bodies.push_str(&search.text().await.unwrap());
    let pending = req(&user_key, Method::POST, "/contexts")
        .json(&json!({"context_type": "note", "content": {"text": "stored pending"}}))
        .sent()
        .await;
    assert_eq!(pending.status(), 201);
    tei.set_down(false);
    assert_eq!(
        req(&admin_key, Method::GET, "/ready").sent().await.status(),
        200
    );
    // The database refuses new connections for a moment: the pool reconnects.
    sqlx::query(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'"
    ))
    .execute(&pool)
    .await
    .unwrap();
    let _ = req(&user_key, Method::GET, "/contexts").sent().await;
    assert_eq!(
        req(&user_key, Method::GET, "/contexts")
            .sent()
            .await
            .status(),
        200
    );
    // SIGTERM, then read everything it wrote.
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = tokio::task::spawn_blocking(move || child.wait()).await;
    let mut out = std::fs::read_to_string(&log).unwrap();
    out.push('\n');
    out.push_str(&bodies);

    // A run that cannot start: the password is wrong. Its error names the
    // database without the password.
    let wrong = with_credentials(&db.url, &role, "wrong-password-that-is-secret");
    let failed = binary()
        .env("DATABASE_URL", replace_db(&wrong, "no_such_database_here"))
        .env("DB_CONNECT_TIMEOUT_SECONDS", "1")
        .env("EMBEDDING_DIM", DIM.to_string())
        .arg("migrate")
        .output()
        .unwrap();
    assert!(!failed.status.success());
    out.push_str(&String::from_utf8_lossy(&failed.stdout));
    out.push_str(&String::from_utf8_lossy(&failed.stderr));

    assert!(out.lines().count() > 20, "the session logged: {out}");
    for (what, secret) in [
        ("the admin key", admin_key.as_str()),
        ("a user key", user_key.as_str()),
        ("a rejected key", bad_key.as_str()),
        ("the database password", db_password.as_str()),
        ("the Redis password", redis_password.as_str()),
        ("the TEI password", tei_password.as_str()),
        ("a wrong database password", "wrong-password-that-is-secret"),
    ] {
        let leaks: Vec<&str> = out.lines().filter(|l| l.contains(secret)).collect();
        assert!(leaks.is_empty(), "{what} appears in the logs: {leaks:#?}");
    }
    sqlx::query(&format!("DROP ROLE IF EXISTS {role}"))
        .execute(&pool)
        .await
        .ok();
    pool.close().await;
    let _ = std::fs::remove_file(&log);
}

fn tempfile_path(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("{name}-{}.log", random_hex()))
}
