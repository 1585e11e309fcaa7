//! `spawn_app()`: a real server on port 0 with its own database, its own Redis
//! key prefix and its own TEI stand-in. Postgres and Redis are real; when they
//! are missing the test fails with a message saying how to start them.

use std::time::Duration;

use context_api::auth::key_entry;
use context_api::config::Settings;
use context_api::startup::App;
use figment::providers::Serialized;
use figment::Figment;
use reqwest::{Method, RequestBuilder, Response};
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection};
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::tei::TeiStub;

/// Small vectors keep the tests fast; the code path is the same as for 768.
pub const DIM: usize = 16;
pub const ADMIN_KEY: &str = "test-admin-key";

pub fn database_admin_url() -> String {
    std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| {
        panic!(
            "TEST_DATABASE_URL is not set: the integration tests need a real PostgreSQL with pgvector. \
             Run them with ./scripts/test.sh, which installs and starts Postgres and Redis."
        )
    })
}

/// all-MiniLM-L6-v2 in sentence-transformers layout (scripts/model.sh).
pub fn model_dir() -> String {
    std::env::var("TEST_MODEL_DIR").unwrap_or_else(|_| {
        panic!(
            "TEST_MODEL_DIR is not set: the local-embedding tests need all-MiniLM-L6-v2. \
             Run them with ./scripts/test.sh, which fetches it with scripts/model.sh."
        )
    })
}

pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| {
        panic!(
            "TEST_REDIS_URL is not set: the integration tests need a real Redis. \
             Run them with ./scripts/test.sh, which installs and starts Postgres and Redis."
        )
    })
}

/// TEST_REDIS_CLUSTER=1: TEST_REDIS_URL lists a Redis Cluster's nodes
/// (scripts/test.sh runs the suite a second time so).
pub fn redis_cluster() -> bool {
    std::env::var("TEST_REDIS_CLUSTER").is_ok_and(|v| v == "1")
}

/// The schema the tests migrate for: `dim`, and the default text-search configuration.
pub fn schema(dim: usize) -> context_api::store::Schema {
    context_api::store::Schema {
        dim,
        text_search_config: "english".into(),
        vector_index: None,
        hnsw_m: None,
        hnsw_ef_construction: None,
    }
}

/// A fresh database, migrated for `dim`; dropped by [`TestDb`]'s `Drop`.
pub struct TestDb {
    pub name: String,
    pub url: String,
    admin_url: String,
}

impl TestDb {
    pub async fn create(dim: usize) -> Self {
        let admin_url = database_admin_url();
        let name = format!("test_{}", Uuid::new_v4().simple());
        let mut conn = PgConnection::connect(&admin_url).await.unwrap_or_else(|e| {
            panic!("cannot connect to TEST_DATABASE_URL ({e}): is Postgres running? ./scripts/services.sh start")
        });
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .unwrap();
        let url = replace_db(&admin_url, &name);
        let pool = sqlx::PgPool::connect(&url).await.unwrap();
        context_api::store::migrate(&pool, &schema(dim))
            .await
            .expect("migrations apply");
        pool.close().await;
        Self {
            name,
            url,
            admin_url,
        }
    }

    pub async fn pool(&self) -> sqlx::PgPool {
        sqlx::PgPool::connect(&self.url).await.unwrap()
    }
}

/// The definition of the HNSW index searches use, when it is there and valid.
pub async fn hnsw_index_definition(pool: &sqlx::PgPool) -> Option<String> {
    sqlx::query_scalar(
        "SELECT pg_get_indexdef(indexrelid) FROM pg_index
         WHERE indexrelid = to_regclass('contexts_embedding_hnsw_idx') AND indisvalid",
    )
    .fetch_optional(pool)
    .await
    .unwrap()
}

/// Runs `statement` on `url`, ignoring failures, from a `Drop`: drop may run
/// inside a runtime, so the async work gets a thread and a runtime of its own.
pub fn execute_on_drop(url: String, statement: String) {
    let _ = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            if let Ok(mut conn) = PgConnection::connect(&url).await {
                let _ = sqlx::query(&statement).execute(&mut conn).await;
            }
        });
    })
    .join();
}

impl Drop for TestDb {
    fn drop(&mut self) {
        execute_on_drop(
            self.admin_url.clone(),
            format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

pub fn replace_db(url: &str, db: &str) -> String {
    let mut u = reqwest::Url::parse(url).expect("TEST_DATABASE_URL is a URL");
    u.set_path(&format!("/{db}"));
    u.to_string()
}

/// Two user keys besides the admin key.
pub struct User {
    pub id: Uuid,
    pub key: String,
}

pub struct TestApp {
    pub addr: std::net::SocketAddr,
    pub client: reqwest::Client,
    pub tei: TeiStub,
    pub alice: User,
    pub bob: User,
    pub prefix: String,
    pub overrides: Vec<(String, Value)>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
    // Last: the database outlives the server that uses it.
    pub db: std::sync::Arc<TestDb>,
}

pub struct Options {
    pub overrides: Vec<(String, Value)>,
    pub tei_max_batch: usize,
    /// The database's vector dimension (and EMBEDDING_DIM).
    pub dim: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            overrides: vec![],
            tei_max_batch: 8,
            dim: DIM,
        }
    }
}

impl Options {
    pub fn set(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.overrides.push((key.to_owned(), value.into()));
        self
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(Options::default()).await
}

pub async fn spawn_app_with(options: Options) -> TestApp {
    let db = std::sync::Arc::new(TestDb::create(options.dim).await);
    let tei = TeiStub::start(options.dim, options.tei_max_batch).await;
    let alice = User {
        id: Uuid::now_v7(),
        key: format!("alice-{}", Uuid::new_v4()),
    };
    let bob = User {
        id: Uuid::now_v7(),
        key: format!("bob-{}", Uuid::new_v4()),
    };
    let prefix = format!("test-{}:", Uuid::new_v4().simple());
    let keys = [
        key_entry("admin", ADMIN_KEY),
        key_entry(&alice.id.to_string(), &alice.key),
        key_entry(&bob.id.to_string(), &bob.key),
    ]
    .join(",");
    let mut overrides: Vec<(String, Value)> = vec![
        ("bind_address".into(), json!("127.0.0.1:0")),
        ("database_url".into(), json!(db.url)),
        ("redis_url".into(), json!(redis_url())),
        ("redis_cluster".into(), json!(redis_cluster())),
        ("cache_key_prefix".into(), json!(prefix)),
        ("embedding_service_url".into(), json!(tei.url())),
        ("embedding_dim".into(), json!(options.dim)),
        ("embedding_timeout_ms".into(), json!(2000)),
        ("embedding_max_retries".into(), json!(1)),
        ("embedding_worker_interval_ms".into(), json!(100)),
        ("db_pool_max".into(), json!(5)),
        ("api_keys".into(), json!(keys)),
        (
            "log_level".into(),
            json!(std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into())),
        ),
    ];
    overrides.extend(options.overrides);
    let mut app = TestApp {
        addr: "0.0.0.0:0".parse().unwrap(),
        client: reqwest::Client::new(),
        tei,
        alice,
        bob,
        prefix,
        overrides,
        shutdown: None,
        server: None,
        db,
    };
    app.start().await;
    app
}

pub fn settings_from(overrides: &[(String, Value)]) -> Settings {
    let mut fig = Figment::new();
    for (k, v) in overrides {
        fig = fig.merge(Serialized::default(k, v));
    }
    Settings::from_figment(fig).expect("test settings are valid")
}

impl TestApp {
    async fn start(&mut self) {
        let settings = settings_from(&self.overrides);
        context_api::telemetry::init_logging(&settings.log);
        let app = App::build(settings, false).await.expect("app builds");
        self.addr = app.local_addr();
        let (tx, rx) = oneshot::channel::<()>();
        self.shutdown = Some(tx);
        self.server = Some(tokio::spawn(async move {
            app.run(async {
                let _ = rx.await;
            })
            .await
            .expect("server runs");
        }));
    }

    /// A second instance on the same database, Redis prefix and TEI.
    pub async fn sibling(&self) -> TestApp {
        self.sibling_with_tei(self.tei.clone()).await
    }

    /// Another instance on the same database, Redis prefix and keys, that
    /// embeds through `tei`.
    pub async fn sibling_with_tei(&self, tei: TeiStub) -> TestApp {
        self.sibling_with(tei, vec![]).await
    }

    /// Another instance as [`TestApp::sibling_with_tei`], with more settings.
    pub async fn sibling_with(&self, tei: TeiStub, extra: Vec<(String, Value)>) -> TestApp {
        let mut overrides = self.overrides.clone();
        overrides.push(("embedding_service_url".into(), json!(tei.url())));
        overrides.extend(extra);
        let mut other = TestApp {
            addr: "0.0.0.0:0".parse().unwrap(),
            client: reqwest::Client::new(),
            tei,
            alice: User {
                id: self.alice.id,
                key: self.alice.key.clone(),
            },
            bob: User {
                id: self.bob.id,
                key: self.bob.key.clone(),
            },
            prefix: self.prefix.clone(),
            overrides,
            shutdown: None,
            server: None,
            db: self.db.clone(),
        };
        other.start().await;
        other
    }

    /// Stops the server and waits for its drain to finish.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.server.take() {
            tokio::time::timeout(Duration::from_secs(30), h)
                .await
                .expect("server stops in time")
                .expect("server task does not panic");
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// A request with the admin key.
    pub fn req(&self, method: Method, path: &str) -> RequestBuilder {
        self.client
            .request(method, self.url(path))
            .bearer_auth(ADMIN_KEY)
    }

    pub fn req_as(&self, key: &str, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, self.url(path)).bearer_auth(key)
    }

    /// Creates a context as admin for `user`; panics unless 201.
    pub async fn create(&self, user: Uuid, body: Value) -> Value {
        let mut body = body;
        body["user_id"] = json!(user);
        if body.get("context_type").is_none() {
            body["context_type"] = json!("note");
        }
        let resp = self.req(Method::POST, "/contexts").json(&body).sent().await;
        assert_eq!(
            resp.status(),
            201,
            "create failed: {}",
            resp.text().await.unwrap()
        );
        resp.json().await.unwrap()
    }

    pub async fn get(&self, id: &str) -> Response {
        self.req(Method::GET, &format!("/contexts/{id}"))
            .sent()
            .await
    }

    /// The Prometheus exposition of `/metrics`.
    pub async fn metrics(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .sent()
            .await
            .text()
            .await
            .unwrap()
    }

    /// GET `path` with the admin key; the JSON body, whatever the status.
    pub async fn get_json(&self, path: &str) -> Value {
        self.req(Method::GET, path)
            .sent()
            .await
            .json()
            .await
            .unwrap()
    }

    /// A context with its vector (`?include=embedding`).
    pub async fn with_embedding(&self, id: &str) -> (Value, Vec<f32>) {
        let body = self
            .get_json(&format!("/contexts/{id}?include=embedding"))
            .await;
        let vector = serde_json::from_value(body["embedding"].clone()).expect("an embedding");
        (body, vector)
    }

    /// The body of GET /ready (an open route: no key).
    pub async fn ready_json(&self) -> Value {
        self.client
            .get(self.url("/ready"))
            .sent()
            .await
            .json()
            .await
            .unwrap()
    }

    /// Waits until /ready reports the embedding service as ok.
    pub async fn wait_embeddings_ok(&self, timeout: Duration) {
        eventually(timeout, || async {
            let body = self.ready_json().await;
            (body["checks"]["embeddings"]["status"] == "ok").then_some(())
        })
        .await;
    }

    /// Starts a text search in the background (slow when the TEI stub has a
    /// delay); resolves to its status.
    pub fn spawn_search(&self, query: &str) -> tokio::task::JoinHandle<reqwest::StatusCode> {
        let req = self
            .req(Method::POST, "/contexts/search")
            .json(&json!({ "query": query }));
        tokio::spawn(async move { req.sent().await.status() })
    }

    /// Runs `sql` on the server's maintenance database (for statements about
    /// this test's database, which cannot run inside it).
    pub async fn admin_sql(&self, sql: &str) {
        let admin = sqlx::PgPool::connect(&database_admin_url()).await.unwrap();
        sqlx::query(sql).execute(&admin).await.unwrap();
        admin.close().await;
    }

    /// Ends every connection to this test's database: the app's pool has to reconnect.
    pub async fn terminate_connections(&self) {
        self.admin_sql(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{}'",
            self.db.name
        ))
        .await;
    }

    pub async fn search(&self, body: Value) -> Response {
        self.req(Method::POST, "/contexts/search")
            .json(&body)
            .sent()
            .await
    }

    /// A connection to the tests' Redis, or to their Redis Cluster.
    pub async fn redis(&self) -> context_api::cache::RedisConn {
        context_api::cache::RedisBackend::open(
            &redis_url(),
            redis_cluster(),
            Duration::from_secs(2),
        )
        .unwrap()
        .connect(Duration::from_secs(2))
        .await
        .expect("Redis is reachable at TEST_REDIS_URL: ./scripts/services.sh start")
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.server.take() {
            h.abort();
        }
    }
}

/// Sending without the boilerplate: the tests talk to a live server on
/// loopback, where a transport error is itself a failure.
pub trait SendExt {
    fn sent(self) -> impl std::future::Future<Output = Response> + Send;
}

impl SendExt for reqwest::RequestBuilder {
    async fn sent(self) -> Response {
        self.send().await.expect("the request reaches the server")
    }
}

/// Asserts an RFC 9457 problem response with `status`; returns its body.
pub async fn assert_problem(resp: Response, status: u16) -> Value {
    let got = resp.status();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let text = resp.text().await.unwrap_or_default();
    assert_eq!(got, status, "unexpected status; body: {text}");
    assert_eq!(ct, "application/problem+json", "body: {text}");
    let body: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("a problem body is JSON ({e}): {text}"));
    assert_eq!(body["status"], status);
    for field in ["type", "title", "detail"] {
        assert!(body[field].is_string(), "problem lacks {field}: {body}");
    }
    body
}

/// Cosine similarity, in f64.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// Element-wise equal within float noise.
pub fn assert_close(got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len());
    assert!(
        got.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-6),
        "{got:?} != {want:?}"
    );
}

/// Polls `f` until it returns `Some`, for at most `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The real binary, with an empty environment but PATH and no stdin.
pub fn binary() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_context-api"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdin(std::process::Stdio::null());
    cmd
}

/// A TCP port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Until `base`/health answers 200 (a started binary is up), at most 20 s.
pub async fn wait_healthy(client: &reqwest::Client, base: &str) {
    eventually(Duration::from_secs(20), || async {
        client
            .get(format!("{base}/health"))
            .send()
            .await
            .ok()
            .filter(|r| r.status() == 200)
            .map(|_| ())
    })
    .await;
}

/// The value of the first sample in `exposition` whose line starts with
/// `name` (with its labels, if given); 0 when there is none.
pub fn metric(exposition: &str, name: &str) -> f64 {
    exposition
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// The ids of a search answer's results, in order.
pub fn result_ids(body: &Value) -> Vec<String> {
    body["results"]
        .as_array()
        .unwrap_or_else(|| panic!("no results in {body}"))
        .iter()
        .map(|r| r["context"]["id"].as_str().unwrap().to_owned())
        .collect()
}
