//! Migrations from migrations/, embedded at compile time. The vector dimension
//! is a deployment choice, so the SQL carries a `{{EMBEDDING_DIM}}` placeholder
//! that is filled in before sqlx sees it.

use std::borrow::Cow;

use futures_util::future::BoxFuture;
use sqlx::error::BoxDynError;
use sqlx::migrate::{Migration, MigrationSource, Migrator};
use sqlx::PgPool;

static TEMPLATES: Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(
        "migration {0} was applied with a different EMBEDDING_DIM (or edited since): the embedding \
         dimension of an existing database cannot change; use the original EMBEDDING_DIM or a new database"
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

pub async fn migrate(pool: &PgPool, dim: usize) -> Result<(), MigrateError> {
    let migrations = TEMPLATES
        .iter()
        .map(|m| {
            let sql = m.sql.replace("{{EMBEDDING_DIM}}", &dim.to_string());
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
