//! Migrations from migrations/, embedded at compile time. The vector dimension
//! and the text-search configuration are deployment choices, so the SQL
//! carries `{{EMBEDDING_DIM}}` and `{{TEXT_SEARCH_CONFIG}}` placeholders that
//! are filled in before sqlx sees it.

use std::borrow::Cow;

use futures_util::future::BoxFuture;
use sqlx::error::BoxDynError;
use sqlx::migrate::{Migration, MigrationSource, Migrator};
use sqlx::PgPool;

use super::vector_index::{
    ensure_vector_index, recorded, switch_vector_index, HnswGraph, IndexSpec, SwitchError,
    VectorIndex,
};

static TEMPLATES: Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(
        "migration {0} was applied with a different EMBEDDING_DIM or TEXT_SEARCH_CONFIG (or edited \
         since): neither can change in an existing database; use the original values or a new database"
    )]
    Changed(i64),
    #[error(transparent)]
    Other(#[from] sqlx::migrate::MigrateError),
    #[error("cannot read the recorded schema values: {0}")]
    Origin(#[from] sqlx::Error),
    #[error("cannot switch the vector index: {0}")]
    VectorIndex(#[from] SwitchError),
}

#[derive(Debug)]
struct Templated(Vec<Migration>);

impl MigrationSource<'static> for Templated {
    fn resolve(self) -> BoxFuture<'static, Result<Vec<Migration>, BoxDynError>> {
        Box::pin(async move { Ok(self.0) })
    }
}

/// The values the migrations are built with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schema {
    pub dim: usize,
    /// A Postgres text-search configuration name (`english`), checked by
    /// the settings to be a plain identifier.
    pub text_search_config: String,
    /// VECTOR_INDEX: the form of the HNSW index. `None` keeps the one a
    /// database has; a new database gets the default.
    pub vector_index: Option<VectorIndex>,
    /// HNSW_M and HNSW_EF_CONSTRUCTION: the density of its graph (checked
    /// together when the index is built). `None` keeps a database's; a new
    /// database gets [`HnswGraph::default`].
    pub hnsw_m: Option<u16>,
    pub hnsw_ef_construction: Option<u16>,
}

/// Applies the pending migrations. A database that records the values its
/// migrations were first applied with (migration 6) is migrated with those:
/// after `context-api reembed` its vectors may have another dimension than
/// the one its first migration was built with, and that one must not change.
///
/// Then the HNSW index takes the form and graph VECTOR_INDEX, HNSW_M and
/// HNSW_EF_CONSTRUCTION ask for, a database's own where unset, or the
/// defaults in a new database (see [`switch_vector_index`]), and is built
/// if an interrupted bulk import left it missing.
pub async fn migrate(pool: &PgPool, schema: &Schema) -> Result<(), MigrateError> {
    let fresh: bool = sqlx::query_scalar("SELECT to_regclass('contexts') IS NULL")
        .fetch_one(pool)
        .await?;
    apply(pool, schema).await?;
    let had = if fresh {
        IndexSpec::default()
    } else {
        recorded(pool).await?
    };
    let graph = HnswGraph::new(
        schema.hnsw_m.unwrap_or(had.graph.m),
        schema
            .hnsw_ef_construction
            .unwrap_or(had.graph.ef_construction),
    )
    .map_err(SwitchError::Graph)?;
    let to = IndexSpec {
        form: schema.vector_index.unwrap_or(had.form),
        graph,
    };
    switch_vector_index(pool, to).await?;
    // An index dropped by a bulk import that did not finish.
    ensure_vector_index(pool, None).await?;
    Ok(())
}

async fn apply(pool: &PgPool, schema: &Schema) -> Result<(), MigrateError> {
    let schema = match origin(pool).await? {
        Some(origin) => origin,
        None => schema.clone(),
    };
    let migrations = TEMPLATES
        .iter()
        .map(|m| {
            let sql = m
                .sql
                .replace("{{EMBEDDING_DIM}}", &schema.dim.to_string())
                .replace("{{TEXT_SEARCH_CONFIG}}", &schema.text_search_config);
            Migration::new(
                m.version,
                m.description.clone(),
                m.migration_type,
                Cow::Owned(sql),
                m.no_tx,
            )
        })
        .collect();
    let migrator = Migrator::new(Templated(migrations)).await?;
    migrator.run(pool).await.map_err(|e| match e {
        sqlx::migrate::MigrateError::VersionMismatch(v) => MigrateError::Changed(v),
        other => MigrateError::Other(other),
    })
}

/// The values the migrations were first applied with, where recorded.
async fn origin(pool: &PgPool) -> Result<Option<Schema>, sqlx::Error> {
    let recorded: bool = sqlx::query_scalar("SELECT to_regclass('embedding_state') IS NOT NULL")
        .fetch_one(pool)
        .await?;
    if !recorded {
        return Ok(None);
    }
    let row: Option<(i32, String)> =
        sqlx::query_as("SELECT origin_dim, origin_text_search_config FROM embedding_state")
            .fetch_optional(pool)
            .await?;
    Ok(row.map(|(dim, text_search_config)| Schema {
        dim: dim as usize,
        text_search_config,
        vector_index: None,
        hnsw_m: None,
        hnsw_ef_construction: None,
    }))
}
