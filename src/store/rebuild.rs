//! Re-embedding after a change of model: the vectors of another model are
//! built into `contexts.embedding_next` while `contexts.embedding` keeps
//! serving, then the two switch places in one transaction. The state lives
//! in the one row of `embedding_state` (migration 6).
//!
//! `embedding_next` exists only during a rebuild, so its statements are
//! checked at run time, not against `.sqlx/`. While it exists, a trigger
//! clears a row's next vector whenever its text changes, unless the same
//! statement set a new one: a row can never switch with the vector of a text
//! it no longer has, whichever process wrote it.

use pgvector::Vector;
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use super::{HnswGraph, IndexSpec, Store, StoreError, VectorIndex};
use crate::domain::ContextId;

/// What the database says of its vectors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddingState {
    /// The dimension of `contexts.embedding`.
    pub active_dim: usize,
    /// The model of `contexts.embedding`, once a rebuild has recorded it.
    pub active_model: Option<String>,
    /// The rebuild under way, if any.
    pub target: Option<Target>,
    pub rows_done: i64,
    pub rows_total: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub model: String,
    pub dim: usize,
}

/// A row still to embed for the rebuild: its version guards the write.
pub struct RebuildRow {
    pub id: Uuid,
    pub version: i32,
    pub text: String,
}

/// The table locked against writes, with the last rows to embed: the
/// rebuild's final step (see [`Store::lock_for_switch`]).
pub struct SwitchLock {
    tx: Transaction<'static, Postgres>,
    pub rows: Vec<RebuildRow>,
}

/// pgvector's complaint about a vector of the wrong dimension (SQLSTATE
/// 22000, "expected N dimensions, not M" or "different vector dimensions"):
/// what a statement built for the vectors of before a switch meets after it.
pub fn is_dimension_error(e: &StoreError) -> bool {
    let (StoreError::Database(sqlx::Error::Database(db))
    | StoreError::Unavailable(sqlx::Error::Database(db))) = e
    else {
        return false;
    };
    db.code().as_deref() == Some("22000") && db.message().contains("dimensions")
}

/// An undefined column (42703): `embedding_next` after a switch.
fn is_undefined_column(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("42703"))
}

const NEXT_TRIGGER: &str = "
    CREATE OR REPLACE FUNCTION contexts_embedding_next_clear() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        IF NEW.embedding_next IS NOT DISTINCT FROM OLD.embedding_next THEN
            NEW.embedding_next := NULL;
            NEW.embedding_next_model := NULL;
        END IF;
        RETURN NEW;
    END
    $$";

impl Store {
    /// The state of the vectors: the column's dimension and the state row.
    #[tracing::instrument(name = "store.embedding_state", level = "debug", skip_all)]
    pub async fn embedding_state(&self) -> Result<EmbeddingState, StoreError> {
        type StateRow = (
            i32,
            Option<String>,
            Option<String>,
            Option<i32>,
            i64,
            i64,
            String,
        );
        let row: StateRow = sqlx::query_as(
            "SELECT (SELECT a.atttypmod FROM pg_attribute a
                     WHERE a.attrelid = 'contexts'::regclass AND a.attname = 'embedding'
                       AND NOT a.attisdropped),
                    active_model, target_model, target_dim, rows_done, rows_total, vector_index
             FROM embedding_state",
        )
        .fetch_one(&self.pool)
        .await?;
        let (dim, active_model, target_model, target_dim, rows_done, rows_total, index) = row;
        if let Some(index) = VectorIndex::parse(&index) {
            self.set_vector_index(index);
        }
        let state = EmbeddingState {
            active_dim: dim.max(0) as usize,
            active_model,
            target: target_model.zip(target_dim).map(|(model, dim)| Target {
                model,
                dim: dim as usize,
            }),
            rows_done,
            rows_total,
        };
        self.set_dim(state.active_dim);
        Ok(state)
    }

    /// Whether any stored vector was made by another model than `model`
    /// (or given by a client), among the rows a rebuild embeds.
    /// `aliases`: a LIKE pattern of other ids of the same model.
    pub async fn has_vectors_not_of(
        &self,
        model: &str,
        aliases: Option<&str>,
    ) -> Result<bool, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM contexts WHERE is_active AND embedding IS NOT NULL
                            AND embedding_model IS DISTINCT FROM $1
                            AND NOT coalesce(embedding_model LIKE $2, false))",
        )
        .bind(model)
        .bind(aliases)
        .fetch_one(&self.pool)
        .await?)
    }

    /// Records `model` as the model of the stored vectors (nothing to rebuild).
    pub async fn record_active_model(&self, model: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE embedding_state SET active_model = $1, updated_at = now()")
            .bind(model)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Starts a rebuild for `target`, or resumes the one under way for it
    /// (a rebuild for another target is abandoned). Adds the next column,
    /// its HNSW index and the trigger; counts the rows to embed.
    #[tracing::instrument(name = "store.begin_rebuild", level = "debug", skip(self))]
    pub async fn begin_rebuild(&self, target: &Target) -> Result<EmbeddingState, StoreError> {
        let mut tx = self.pool.begin().await?;
        // DROP ... IF EXISTS of what a first run lacks says so in notices.
        sqlx::query("SET LOCAL client_min_messages = warning")
            .execute(&mut *tx)
            .await?;
        let current: (Option<String>, Option<i32>, i32, i32) = sqlx::query_as(
            "SELECT target_model, target_dim, hnsw_m, hnsw_ef_construction
             FROM embedding_state FOR UPDATE",
        )
        .fetch_one(&mut *tx)
        .await?;
        let resuming =
            current.0.as_deref() == Some(&target.model) && current.1 == Some(target.dim as i32);
        // The next index is built as the current one is (the table checks the graph's ranges).
        let next_index = IndexSpec {
            form: self.vector_index(),
            graph: HnswGraph {
                m: current.2 as u16,
                ef_construction: current.3 as u16,
            },
        };
        if !resuming {
            for sql in [
                "DROP TRIGGER IF EXISTS contexts_embedding_next_clear ON contexts",
                "ALTER TABLE contexts DROP COLUMN IF EXISTS embedding_next, \
                 DROP COLUMN IF EXISTS embedding_next_model",
            ] {
                sqlx::query(sql).execute(&mut *tx).await?;
            }
            // The dimension is checked by the settings (1 to 16,000): a number, never text.
            let storage = if target.dim <= 1900 { "PLAIN" } else { "MAIN" };
            let statements = [
                format!(
                    "ALTER TABLE contexts ADD COLUMN embedding_next vector({}), \
                     ADD COLUMN embedding_next_model text",
                    target.dim
                ),
                format!("ALTER TABLE contexts ALTER COLUMN embedding_next SET STORAGE {storage}"),
                next_index.create_sql(
                    "contexts_embedding_next_hnsw_idx",
                    false,
                    "embedding_next",
                    target.dim,
                ),
                NEXT_TRIGGER.into(),
                "CREATE TRIGGER contexts_embedding_next_clear BEFORE UPDATE OF embedding_text \
                 ON contexts FOR EACH ROW \
                 WHEN (OLD.embedding_text IS DISTINCT FROM NEW.embedding_text) \
                 EXECUTE FUNCTION contexts_embedding_next_clear()"
                    .into(),
            ];
            for sql in statements {
                sqlx::query(&sql).execute(&mut *tx).await?;
            }
            sqlx::query(
                "UPDATE embedding_state SET target_model = $1, target_dim = $2, rows_done = 0,
                        rows_total = (SELECT count(*) FROM contexts WHERE is_active),
                        started_at = now(), updated_at = now()",
            )
            .bind(&target.model)
            .bind(target.dim as i32)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        self.embedding_state().await
    }

    /// Up to `limit` active rows without a next vector, after `after` in id order.
    pub async fn rebuild_batch(
        &self,
        after: Option<Uuid>,
        limit: i64,
    ) -> Result<Vec<RebuildRow>, StoreError> {
        let rows: Vec<(Uuid, i32, String)> = sqlx::query_as(
            "SELECT id, version, embedding_text FROM contexts
             WHERE is_active AND embedding_next IS NULL AND ($1::uuid IS NULL OR id > $1)
             ORDER BY id LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, version, text)| RebuildRow { id, version, text })
            .collect())
    }

    /// Active rows without a next vector.
    pub async fn rebuild_remaining(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT count(*) FROM contexts WHERE is_active AND embedding_next IS NULL",
        )
        .fetch_one(&self.pool)
        .await?)
    }

    /// Stores next vectors for rows still at the version they were read at;
    /// returns how many were stored.
    pub async fn store_next(
        &self,
        rows: &[RebuildRow],
        vectors: Vec<Vec<f32>>,
        model: &str,
    ) -> Result<u64, StoreError> {
        Ok(store_next_in(&self.pool, rows, vectors, model).await?)
    }

    /// Writes a rebuild's progress where `/ready` and the metrics read it.
    pub async fn rebuild_progress(&self, done: i64, total: i64) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE embedding_state SET rows_done = $1, rows_total = $2, updated_at = now()",
        )
        .bind(done)
        .bind(total)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A serving replica's next vectors for rows it has just written (those
    /// still at `version`). Best effort: when the rebuild has switched (no
    /// next column any more), there is nothing to write; a row missed here
    /// is embedded by the rebuild itself.
    pub async fn write_next(
        &self,
        rows: &[(ContextId, i32)],
        vectors: Vec<Vec<f32>>,
        model: &str,
    ) -> Result<(), StoreError> {
        let rows: Vec<RebuildRow> = rows
            .iter()
            .map(|&(id, version)| RebuildRow {
                id: id.0,
                version,
                text: String::new(),
            })
            .collect();
        match store_next_in(&self.pool, &rows, vectors, model).await {
            Ok(_) => Ok(()),
            Err(e) if is_undefined_column(&e) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Locks `contexts` against writes (reads go on) and returns the rows
    /// still without a next vector, if there are at most `limit`; `None`
    /// (and the lock released) when there are more.
    #[tracing::instrument(name = "store.lock_for_switch", level = "debug", skip(self))]
    pub async fn lock_for_switch(&self, limit: i64) -> Result<Option<SwitchLock>, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("LOCK TABLE contexts IN SHARE ROW EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await?;
        let rows: Vec<(Uuid, i32, String)> = sqlx::query_as(
            "SELECT id, version, embedding_text FROM contexts
             WHERE is_active AND embedding_next IS NULL ORDER BY id LIMIT $1",
        )
        .bind(limit + 1)
        .fetch_all(&mut *tx)
        .await?;
        if rows.len() as i64 > limit {
            return Ok(None);
        }
        Ok(Some(SwitchLock {
            tx,
            rows: rows
                .into_iter()
                .map(|(id, version, text)| RebuildRow { id, version, text })
                .collect(),
        }))
    }
}

impl SwitchLock {
    /// Stores the last rows' vectors and switches the columns: the next
    /// vectors become `embedding`, the rebuild's model the active one, all
    /// at one commit. Rows without a next vector (inactive ones) are left
    /// pending. The constraint tying status to the vector is validated
    /// afterwards, outside the lock.
    pub async fn complete(
        mut self,
        store: &Store,
        vectors: Vec<Vec<f32>>,
        model: &str,
    ) -> Result<(), StoreError> {
        let tx = &mut self.tx;
        if !self.rows.is_empty() {
            store_next_in(&mut **tx, &self.rows, vectors, model).await?;
        }
        for sql in [
            "DROP TRIGGER contexts_embedding_next_clear ON contexts",
            "ALTER TABLE contexts DROP CONSTRAINT IF EXISTS contexts_check",
            "UPDATE contexts SET embedding_status = 'pending'
             WHERE embedding_next IS NULL AND embedding_status = 'ready'",
            "UPDATE contexts SET embedding_status = 'ready', embedding_claim = NULL,
                    embedding_claimed_until = NULL
             WHERE embedding_next IS NOT NULL AND embedding_status = 'pending'",
            "ALTER TABLE contexts DROP COLUMN embedding, DROP COLUMN embedding_model",
            "ALTER TABLE contexts RENAME COLUMN embedding_next TO embedding",
            "ALTER TABLE contexts RENAME COLUMN embedding_next_model TO embedding_model",
            "ALTER INDEX contexts_embedding_next_hnsw_idx RENAME TO contexts_embedding_hnsw_idx",
            "ALTER TABLE contexts ADD CONSTRAINT contexts_check
             CHECK ((embedding_status = 'ready') = (embedding IS NOT NULL)) NOT VALID",
            "UPDATE embedding_state SET active_model = target_model, target_model = NULL,
                    target_dim = NULL, rows_done = rows_total, switched_at = now(),
                    updated_at = now()",
        ] {
            sqlx::query(sql).execute(&mut **tx).await?;
        }
        self.tx.commit().await?;
        sqlx::query("ALTER TABLE contexts VALIDATE CONSTRAINT contexts_check")
            .execute(store.pool())
            .await?;
        sqlx::query("ANALYZE contexts")
            .execute(store.pool())
            .await?;
        store.embedding_state().await?;
        Ok(())
    }
}

async fn store_next_in<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    rows: &[RebuildRow],
    vectors: Vec<Vec<f32>>,
    model: &str,
) -> Result<u64, sqlx::Error> {
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let versions: Vec<i32> = rows.iter().map(|r| r.version).collect();
    let vectors: Vec<Vector> = vectors.into_iter().map(Vector::from).collect();
    let done = sqlx::query(
        "UPDATE contexts SET embedding_next = f.vector, embedding_next_model = $4
         FROM UNNEST($1::uuid[], $2::int[], $3::vector[]) AS f(id, version, vector)
         WHERE contexts.id = f.id AND contexts.version = f.version",
    )
    .bind(&ids)
    .bind(&versions)
    .bind(&vectors)
    .bind(model)
    .execute(executor)
    .await?;
    Ok(done.rows_affected())
}
