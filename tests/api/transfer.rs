//! `context-api export` and `import`, run as the binary an operator runs.

use std::path::Path;
use std::process::Output;

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{binary, hnsw_index_definition, spawn_app, SendExt, TestApp, TestDb, DIM};

/// The binary, pointed at `db_url` and the app's TEI stand-in.
/// Run off the test's runtime, which serves the TEI stand-in meanwhile.
async fn run(app: &TestApp, db_url: &str, args: &[&str]) -> Output {
    let mut cmd = binary();
    cmd.env("DATABASE_URL", db_url)
        .env("EMBEDDING_SERVICE_URL", app.tei.url())
        .env("EMBEDDING_DIM", DIM.to_string())
        .env("LOG_LEVEL", "warn")
        .args(args);
    tokio::task::spawn_blocking(move || cmd.output().expect("the binary runs"))
        .await
        .unwrap()
}

async fn export(app: &TestApp, db_url: &str, args: &[&str]) -> String {
    let mut all = vec!["export"];
    all.extend_from_slice(args);
    let out = run(app, db_url, &all).await;
    assert!(
        out.status.success(),
        "export failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

async fn import(app: &TestApp, db_url: &str, file: &Path, args: &[&str]) -> Output {
    let mut all = vec!["import", file.to_str().unwrap()];
    all.extend_from_slice(args);
    run(app, db_url, &all).await
}

fn temp_file(name: &str, text: &str) -> (tempdir::Dir, std::path::PathBuf) {
    let dir = tempdir::Dir::new();
    let path = dir.0.join(name);
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

mod tempdir {
    /// A directory removed on drop.
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new() -> Self {
            let p = std::env::temp_dir().join(format!("ctx-transfer-{}", uuid::Uuid::new_v4()));
            std::fs::create_dir_all(&p).unwrap();
            Self(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

async fn count(db: &TestDb) -> i64 {
    let pool = db.pool().await;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM contexts")
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    n
}

/// Four visible contexts of two users (one patched, one with an expiry, one
/// with its own vector), one expired and one deleted.
async fn seed(app: &TestApp) {
    let a = app
        .create(
            app.alice.id,
            json!({"content": {"text": "prefers green tea", "n": 1.5e300}, "metadata": {"source": "chat"}}),
        )
        .await;
    let resp = app
        .req(
            Method::PATCH,
            &format!("/contexts/{}", a["id"].as_str().unwrap()),
        )
        .json(&json!({"content": {"text": "prefers green tea, no sugar"}}))
        .sent()
        .await;
    assert_eq!(resp.status(), 200);
    app.create(
        app.alice.id,
        json!({"context_type": "fact", "content": {"text": "lives in Lyon 🇫🇷"},
               "expires_at": "2999-01-01T00:00:00.123456Z"}),
    )
    .await;
    let mut v = vec![0.0f32; DIM];
    v[3] = 0.6;
    v[5] = -0.8;
    app.create(
        app.bob.id,
        json!({"content": {"notes": ["a", {"b": null}]}, "text": "bob's own words", "embedding": v}),
    )
    .await;
    app.create(app.bob.id, json!({"content": {"text": "works nights"}}))
        .await;
    app.create(
        app.bob.id,
        json!({"content": {"text": "expired"}, "expires_at": "2001-01-01T00:00:00Z"}),
    )
    .await;
    let gone = app
        .create(app.bob.id, json!({"content": {"text": "deleted"}}))
        .await;
    let resp = app
        .req(
            Method::DELETE,
            &format!("/contexts/{}", gone["id"].as_str().unwrap()),
        )
        .sent()
        .await;
    assert_eq!(resp.status(), 204);
}

#[tokio::test]
async fn export_import_export_is_byte_for_byte_the_same() {
    let app = spawn_app().await;
    seed(&app).await;
    let first = export(&app, &app.db.url, &[]).await;
    let lines: Vec<Value> = first
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4, "{first}");
    for l in &lines {
        assert_eq!(l["embedding"].as_array().map(Vec::len), Some(DIM), "{l}");
        // The stand-in's model made every vector but the one bob gave.
        let given = l["text"] == "bob's own words";
        assert_eq!(l["model"].is_null(), given, "{l}");
    }
    assert_eq!(lines[0]["version"], 2);
    // Filters.
    let alices = export(&app, &app.db.url, &["--user", &app.alice.id.to_string()]).await;
    assert_eq!(alices.lines().count(), 2);
    let facts = export(&app, &app.db.url, &["--type", "fact"]).await;
    assert_eq!(facts.lines().count(), 1);

    let empty = TestDb::create(DIM).await;
    let (_dir, file) = temp_file("contexts.ndjson", &first);
    let out = import(&app, &empty.url, &file, &[]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(count(&empty).await, 4);
    let second = export(&app, &empty.url, &[]).await;
    assert_eq!(first, second);

    // Again: everything is there already, nothing is written twice.
    let out = import(&app, &empty.url, &file, &[]).await;
    assert!(out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("0 written, 4 already present"), "{said}");
    assert_eq!(count(&empty).await, 4);
}

/// `n` import lines: the seeded contexts' export again and again, each
/// with an id of its own.
async fn many_lines(app: &TestApp, n: usize) -> Vec<String> {
    let exported: Vec<Value> = export(app, &app.db.url, &[])
        .await
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (0..n)
        .map(|i| {
            let mut line = exported[i % exported.len()].clone();
            line["id"] = json!(uuid::Uuid::now_v7());
            line.to_string()
        })
        .collect()
}

/// Batches written at once (`--jobs`) write every line once, resume as one
/// at a time does, and an invalid line still stops the import with every
/// batch before it written whole.
#[tokio::test]
async fn batches_written_at_once_write_every_line_once() {
    let app = spawn_app().await;
    seed(&app).await;
    let lines = many_lines(&app, 300).await;
    let (_dir, file) = temp_file("many.ndjson", &lines.join("\n"));
    let db = TestDb::create(DIM).await;
    // The graph this database's index was built with (as `migrate` records it).
    sqlx::query("UPDATE embedding_state SET hnsw_m = 8, hnsw_ef_construction = 40")
        .execute(&sqlx::PgPool::connect(&db.url).await.unwrap())
        .await
        .unwrap();
    let args = ["--batch-size", "7", "--jobs", "4"];
    let out = import(&app, &db.url, &file, &args).await;
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("300 written, 0 already present"), "{said}");
    assert_eq!(count(&db).await, 300);
    let out = import(&app, &db.url, &file, &args).await;
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("0 written, 300 already present"), "{said}");

    // An invalid line 200: the 28 batches of 7 before it are written, whole.
    let mut bad = lines.clone();
    bad[199] = r#"{"id": "not a uuid"}"#.into();
    let (_dir, file) = temp_file("bad.ndjson", &bad.join("\n"));
    let db = TestDb::create(DIM).await;
    let out = import(&app, &db.url, &file, &args).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 200"));
    assert_eq!(count(&db).await, 28 * 7);
}

/// `--defer-index`: the rows go in without the HNSW index, which is built
/// once after, in the database's form; an import that stops leaves it
/// missing, and `migrate` (or the import run again) builds it.
#[tokio::test]
async fn a_deferred_index_is_built_after_the_load_or_by_migrate() {
    let app = spawn_app().await;
    seed(&app).await;
    let lines = many_lines(&app, 100).await;
    let index = |db: &TestDb| {
        let url = db.url.clone();
        async move { hnsw_index_definition(&sqlx::PgPool::connect(&url).await.unwrap()).await }
    };

    let (_dir, file) = temp_file("many.ndjson", &lines.join("\n"));
    let db = TestDb::create(DIM).await;
    // The graph this database's index was built with (as `migrate` records it).
    sqlx::query("UPDATE embedding_state SET hnsw_m = 8, hnsw_ef_construction = 40")
        .execute(&sqlx::PgPool::connect(&db.url).await.unwrap())
        .await
        .unwrap();
    let args = [
        "--batch-size",
        "9",
        "--defer-index",
        "--maintenance-work-mem",
        "64MB",
    ];
    let out = import(&app, &db.url, &file, &args).await;
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("built the HNSW index"), "{said}");
    assert_eq!(count(&db).await, 100);
    let def = index(&db).await.expect("the index is built and valid");
    assert!(
        def.contains("halfvec_cosine_ops")
            && def.contains("m='8'")
            && def.contains("ef_construction='40'"),
        "in the database's form and graph: {def}"
    );

    // Stopped by an invalid line: the index is missing until migrate builds it.
    let mut bad = lines.clone();
    bad[50] = r#"{"id": "not a uuid"}"#.into();
    let (_dir, file) = temp_file("bad.ndjson", &bad.join("\n"));
    let db = TestDb::create(DIM).await;
    let out = import(&app, &db.url, &file, &args).await;
    assert!(!out.status.success());
    assert_eq!(index(&db).await, None, "dropped for the load, not built");
    let out = run(&app, &db.url, &["migrate"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let def = index(&db).await.expect("migrate builds the missing index");
    assert!(def.contains("halfvec_cosine_ops"), "{def}");
}

#[tokio::test]
async fn an_invalid_line_is_named_and_no_batch_is_half_written() {
    let app = spawn_app().await;
    seed(&app).await;
    let good: Vec<String> = export(&app, &app.db.url, &[])
        .await
        .lines()
        .map(str::to_owned)
        .collect();
    // Lines 1 and 2 make the first batch; line 3 is bad; line 4 and 5 follow.
    let text = [
        good[0].as_str(),
        good[1].as_str(),
        r#"{"id": "not a uuid"}"#,
        good[2].as_str(),
        good[3].as_str(),
    ]
    .join("\n");
    let (_dir, file) = temp_file("bad.ndjson", &text);

    let db = TestDb::create(DIM).await;
    let out = import(&app, &db.url, &file, &["--batch-size", "2"]).await;
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("line 3"), "{said}");
    assert_eq!(count(&db).await, 2, "the batch before the bad line, whole");

    let db = TestDb::create(DIM).await;
    let out = import(
        &app,
        &db.url,
        &file,
        &["--batch-size", "2", "--on-error", "skip"],
    )
    .await;
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("line 3") && said.contains("1 invalid"),
        "{said}"
    );
    assert_eq!(count(&db).await, 4);
}

#[tokio::test]
async fn vectors_of_another_model_are_made_again() {
    let app = spawn_app().await;
    seed(&app).await;
    let exported = export(&app, &app.db.url, &[]).await;
    let mut records: Vec<Value> = exported
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let original = records[0]["embedding"].clone();
    let mut other = vec![0.0f64; DIM];
    other[0] = 1.0;
    records[0]["embedding"] = json!(other);
    records[0]["model"] = json!("some-other-model");
    let text: Vec<String> = records.iter().map(Value::to_string).collect();
    let (_dir, file) = temp_file("other.ndjson", &text.join("\n"));

    let db = TestDb::create(DIM).await;
    let out = import(&app, &db.url, &file, &[]).await;
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("1 embedded again (0 left pending)"), "{said}");
    // The progress line counts the vectors made on the way as well as the bytes.
    let records_n = records.len();
    assert!(
        said.contains(&format!(
            "{records_n} rows written, 1 embedded, 0 left pending"
        )),
        "{said}"
    );
    let back: Value =
        serde_json::from_str(export(&app, &db.url, &[]).await.lines().next().unwrap()).unwrap();
    // Made again from its text by the configured model: the original vector.
    assert_eq!(back["embedding"], original);
    assert_eq!(back["model"], records[1]["model"]);
}

/// A context's key travels with it: exported, imported, exported again the
/// same. A line whose key a live context of its user already holds under
/// another id is skipped like a line already present.
#[tokio::test]
async fn keys_travel_with_an_export() {
    let app = spawn_app().await;
    app.create(
        app.alice.id,
        json!({"key": "ns/one", "content": {"text": "kept by key"}}),
    )
    .await;
    let first = export(&app, &app.db.url, &[]).await;
    let line: Value = serde_json::from_str(first.lines().next().unwrap()).unwrap();
    assert_eq!(line["key"], "ns/one", "{first}");

    let empty = TestDb::create(DIM).await;
    let (_dir, file) = temp_file("contexts.ndjson", &first);
    assert!(import(&app, &empty.url, &file, &[]).await.status.success());
    assert_eq!(export(&app, &empty.url, &[]).await, first);

    let mut other = line.clone();
    other["id"] = json!(uuid::Uuid::now_v7());
    other["content"] = json!({"text": "another holder"});
    let (_dir2, file2) = temp_file("other.ndjson", &format!("{other}\n"));
    let out = import(&app, &empty.url, &file2, &[]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        count(&empty).await,
        1,
        "the key's holder stays the only one"
    );
    assert_eq!(export(&app, &empty.url, &[]).await, first);
}
