//! Migrations from migrations/, embedded at compile time. The vector dimension
//! and the text-search configuration are deployment choices, so the SQL
//! carries `{{EMBEDDING_DIM}}` and `{{TEXT_SEARCH_CONFIG}}` placeholders that
//! are filled in before sqlx sees it.

use std::borrow::Cow;

use futures_util::future::BoxFuture;
use sqlx::error::BoxDynError;
use sqlx::migrate::{Migration, MigrationSource, Migrator};
use sqlx::PgPool;

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
}

pub async fn migrate(pool: &PgPool, schema: &Schema) -> Result<(), MigrateError> {
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
