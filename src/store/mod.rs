//! PostgreSQL storage. The only place that speaks SQL.

#[macro_use]
mod contexts;
mod idempotency;
mod rebuild;
mod replicas;
mod tenants;
mod transfer;
mod vector_index;

pub use contexts::{
    hybrid_search_query, search_query, text_search_query, Claim, Current, EmbeddingChange,
    PendingRow, Replacement,
};
pub use idempotency::{Answer, Recorded};
pub use rebuild::{is_dimension_error, EmbeddingState, RebuildRow, SwitchLock, Target};
pub use replicas::{ReplicaState, CHECK_INTERVAL as REPLICA_CHECK_INTERVAL};
pub use tenants::{VectorPlan, VectorScan};
pub use transfer::{Restored, Stored};
pub use vector_index::{
    drop_vector_index, ensure_vector_index, has_vector_index, switch_vector_index, HnswGraph,
    IndexSpec, SwitchError, VectorIndex, BIT_RERANK,
};
mod migrate;

pub use migrate::{migrate, MigrateError, Schema};

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

use crate::config::DatabaseSettings;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached or a connection was not free in time.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_) => StoreError::Unavailable(e),
            sqlx::Error::Database(db) if db.code().as_deref().is_some_and(is_unavailable_code) => {
                StoreError::Unavailable(e)
            }
            _ => StoreError::Database(e),
        }
    }
}

/// SQLSTATEs that mean "the database cannot serve us right now" rather than
/// "this statement is wrong": connection exceptions (08), refused logins (28),
/// insufficient resources (53), operator intervention such as a shutdown (57),
/// a database that is gone or closed to connections (3D000, 55000), and a
/// read-only server after a failover (25006).
fn is_unavailable_code(code: &str) -> bool {
    ["08", "28", "53", "57"]
        .iter()
        .any(|class| code.starts_with(class))
        || matches!(code, "3D000" | "55000" | "25006")
}

/// HNSW_EF_SEARCH's default. On bench/scale.sh's clustered 768-d data at
/// 300,000 rows (a psql probe of 150 queries over all rows), recall@10 was
/// 0.91 at pgvector's default of 40 with the `vector` index, and 0.93, 0.945
/// and 0.958 at 40, 80 and 120 with `halfvec`, whose scans cost less.
pub const DEFAULT_EF_SEARCH: i64 = 100;

/// Cheap to clone: a handle on the pool.
#[derive(Clone, Debug)]
pub struct Store {
    pool: PgPool,
    /// The dimension of `contexts.embedding`: the configured one at first,
    /// then as the database says (a rebuild changes it).
    dim: Arc<AtomicUsize>,
    /// The text-search configuration `contexts.embedding_tsv` was built
    /// with; queries must parse text the same way.
    text_search_config: String,
    /// Read replicas (none unless DATABASE_REPLICA_URLS).
    replicas: Arc<replicas::Replicas>,
    /// The users big enough to be searched through the index.
    tenants: Arc<tenants::TenantSizes>,
    /// The form of the HNSW index, as the database records it.
    vector_index: Arc<vector_index::ActiveIndex>,
    /// The least HNSW candidate list of a vector search (HNSW_EF_SEARCH).
    ef_search: i64,
}

impl Store {
    /// Connects, retrying until `connect_timeout` (the database may start after us).
    pub async fn connect(settings: &DatabaseSettings, schema: &Schema) -> Result<Self, StoreError> {
        let options: PgConnectOptions = settings
            .url
            .expose()
            .parse()
            .map_err(StoreError::Database)?;
        let options = options.application_name("context-api");
        let deadline = tokio::time::Instant::now() + settings.connect_timeout;
        let mut delay = Duration::from_millis(200);
        loop {
            let attempt = PgPoolOptions::new()
                .max_connections(settings.pool_max)
                .min_connections(settings.pool_min)
                .acquire_timeout(settings.acquire_timeout)
                .connect_with(options.clone())
                .await;
            match attempt {
                Ok(pool) => {
                    let mut store = Self::from_pool(pool, schema);
                    store.replicas = replicas::Replicas::connect(settings)?;
                    return Ok(store);
                }
                Err(e) if tokio::time::Instant::now() + delay < deadline => {
                    tracing::warn!(error = %e, "database not reachable yet, retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(3));
                }
                Err(e) => return Err(StoreError::Unavailable(e)),
            }
        }
    }

    pub fn from_pool(pool: PgPool, schema: &Schema) -> Self {
        Self {
            pool,
            dim: Arc::new(AtomicUsize::new(schema.dim)),
            text_search_config: schema.text_search_config.clone(),
            replicas: Arc::default(),
            tenants: Arc::default(),
            vector_index: Arc::new(vector_index::ActiveIndex::new(
                schema.vector_index.unwrap_or_default(),
            )),
            ef_search: DEFAULT_EF_SEARCH,
        }
    }

    /// Searches with `ef` as the least HNSW candidate list.
    pub fn with_ef_search(mut self, ef: i64) -> Self {
        self.ef_search = ef;
        self
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn dim(&self) -> usize {
        self.dim.load(Ordering::Relaxed)
    }

    pub(crate) fn set_dim(&self, dim: usize) {
        self.dim.store(dim, Ordering::Relaxed);
    }

    /// The text-search configuration `contexts.embedding_tsv` is generated
    /// with; `None` when that column is missing (migration 4 has not run).
    pub async fn column_text_search_config(&self) -> Result<Option<String>, StoreError> {
        let expr = sqlx::query_scalar!(
            r#"SELECT pg_get_expr(d.adbin, d.adrelid) AS "expr!" FROM pg_attrdef d
               JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum
               WHERE a.attrelid = to_regclass('contexts') AND a.attname = 'embedding_tsv'
                 AND NOT a.attisdropped"#,
        )
        .fetch_optional(&self.pool)
        .await?;
        // to_tsvector('english'::regconfig, "left"(embedding_text, 250000))
        Ok(expr.map(|e| {
            e.split_once("to_tsvector('")
                .and_then(|(_, rest)| rest.split_once("'::regconfig"))
                .map_or(e.clone(), |(name, _)| name.to_owned())
        }))
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query!("SELECT 1 AS one")
            .fetch_one(&self.pool)
            .await?;
        Ok(())
    }

    pub fn pool_size(&self) -> (u32, usize) {
        (self.pool.size(), self.pool.num_idle())
    }

    pub async fn close(&self) {
        self.close_replicas().await;
        self.pool.close().await;
    }
}
