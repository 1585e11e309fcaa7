use std::time::Duration;

use chrono::{DateTime, Utc};
use pgvector::Vector;
use sqlx::types::Json;
use sqlx::{FromRow, Postgres, QueryBuilder};
use uuid::Uuid;

use super::{Store, StoreError, VectorIndex, VectorPlan, VectorScan};
use crate::domain::{
    Context, ContextId, ContextKey, EmbeddingStatus, Fusion, JsonObject, ListQuery, NewContext,
    Ranking, SearchFilter, TopK, UserId,
};

const COLUMNS: &str =
    "id, user_id, client_key, context_type, content, metadata, expires_at, embedding_status, \
                       is_active, version, created_at, updated_at, embedding_model";

#[derive(FromRow)]
pub(super) struct Row {
    pub(super) id: Uuid,
    pub(super) user_id: Uuid,
    pub(super) client_key: Option<String>,
    pub(super) context_type: String,
    pub(super) content: Json<JsonObject>,
    pub(super) metadata: Json<JsonObject>,
    pub(super) expires_at: Option<DateTime<Utc>>,
    pub(super) embedding_status: String,
    pub(super) is_active: bool,
    pub(super) version: i32,
    pub(super) created_at: DateTime<Utc>,
    pub(super) updated_at: DateTime<Utc>,
    pub(super) embedding_model: Option<String>,
    #[sqlx(default)]
    pub(super) embedding: Option<Vector>,
    /// Only where a statement needs it (an update compares it).
    #[sqlx(default)]
    pub(super) embedding_text: Option<String>,
}

/// `sqlx::query_as!(Row, ..)` with the row's columns, and their Rust types,
/// written once: `row_query!("SELECT", "FROM contexts WHERE ..", args..)`
/// puts them between the two pieces. The tail names the two optional
/// columns first (`embedding?`, `embedding_text?`), usually as NULLs.
macro_rules! row_query {
    ($head:tt, $tail:tt $(, $($args:tt)*)?) => {
        sqlx::query_as!(
            Row,
            $head + r#" id, user_id, client_key, context_type, content AS "content: Json<JsonObject>",
                metadata AS "metadata: Json<JsonObject>", expires_at, embedding_status,
                is_active, version, created_at, updated_at, embedding_model, "# + $tail
            $(, $($args)*)?
        )
    };
}

impl Row {
    /// The context, and its embedded text (empty unless the statement selected it).
    pub(super) fn with_text(mut self) -> (Context, String) {
        let text = self.embedding_text.take().unwrap_or_default();
        (self.into(), text)
    }
}

impl From<Row> for Context {
    fn from(r: Row) -> Self {
        Context {
            id: ContextId(r.id),
            user_id: UserId(r.user_id),
            key: r.client_key,
            context_type: r.context_type,
            content: r.content.0,
            metadata: r.metadata.0,
            expires_at: r.expires_at,
            embedding_status: EmbeddingStatus::from_db(&r.embedding_status),
            is_active: r.is_active,
            version: r.version,
            created_at: r.created_at,
            updated_at: r.updated_at,
            embedding: r.embedding.map(|v| v.to_vec()),
            embedding_model: r.embedding_model,
        }
    }
}

#[derive(FromRow)]
struct ScoredRow {
    #[sqlx(flatten)]
    row: Row,
    score: f64,
}

/// A context as stored, with the text its embedding comes from: what an update needs.
pub struct Current {
    pub context: Context,
    pub text: String,
}

/// The full new state of a context, written by [`Store::update`].
pub struct Replacement<'a> {
    pub context_type: &'a str,
    pub content: &'a JsonObject,
    pub metadata: &'a JsonObject,
    pub expires_at: Option<DateTime<Utc>>,
    pub text: &'a str,
    pub embedding: EmbeddingChange,
}

pub enum EmbeddingChange {
    Keep,
    /// A new vector, and the model that made it (`None`: the client's).
    Set(Vec<f32>, Option<String>),
    /// The text changed and no vector is available yet.
    Pending,
}

/// Rows the embedding worker has claimed, and the token that holds them.
pub struct Claim {
    pub token: Uuid,
    pub rows: Vec<PendingRow>,
}

/// A row the embedding worker has claimed.
pub struct PendingRow {
    pub id: ContextId,
    pub text: String,
}

/// Visible = active and not expired; expiry takes effect at once, before the purge job runs.
const VISIBLE: &str = "is_active AND (expires_at IS NULL OR expires_at > now())";

impl Store {
    /// Inserts a context. When it has a key that a live context of its user
    /// already holds: with `replace`, that context takes the new fields (a
    /// new version; its id and, unless it had expired, its creation time
    /// stay); without, nothing is written and the answer is `None`. An
    /// expired holder is replaced either way: its key is free.
    #[tracing::instrument(name = "store.insert", level = "debug", skip_all, fields(id = %c.id.0))]
    pub async fn insert(
        &self,
        c: &NewContext,
        replace: bool,
    ) -> Result<Option<Context>, StoreError> {
        let row = row_query!(
            "INSERT INTO contexts (id, user_id, context_type, content, metadata, expires_at,
                                   embedding_text, embedding, embedding_status, embedding_model,
                                   client_key)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
             ON CONFLICT (user_id, client_key) WHERE client_key IS NOT NULL AND is_active
             DO UPDATE SET
                context_type = EXCLUDED.context_type, content = EXCLUDED.content,
                metadata = EXCLUDED.metadata, expires_at = EXCLUDED.expires_at,
                embedding_text = EXCLUDED.embedding_text, embedding = EXCLUDED.embedding,
                embedding_status = EXCLUDED.embedding_status,
                embedding_model = EXCLUDED.embedding_model,
                embedding_claim = NULL, embedding_claimed_until = NULL,
                created_at = CASE WHEN contexts.expires_at <= now() THEN now()
                                  ELSE contexts.created_at END,
                version = contexts.version + 1, updated_at = now()
             WHERE $12 OR contexts.expires_at <= now()
             RETURNING",
            r#"NULL::vector AS "embedding?: Vector", NULL::text AS "embedding_text?""#,
            c.id.0,
            c.user_id.0,
            c.context_type.as_str(),
            Json(&c.content) as _,
            Json(&c.metadata) as _,
            c.expires_at,
            c.text,
            vector_of(c) as _,
            status_of(c).as_str(),
            model_of(c),
            c.key.as_ref().map(ContextKey::as_str),
            replace,
        )
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(Into::into))
    }

    /// Inserts every item in one statement (UNNEST of one array per column):
    /// all rows or none. Returns each item's stored context, in the order
    /// given: `None` for an item whose key a live context of its user holds
    /// (or an earlier item of the batch), which is not written.
    #[tracing::instrument(name = "store.insert_many", level = "debug", skip_all, fields(items = items.len()))]
    pub async fn insert_many(
        &self,
        items: &[NewContext],
    ) -> Result<Vec<Option<Context>>, StoreError> {
        let Columns {
            ids,
            users,
            types,
            contents,
            metadata,
            expiries,
            texts,
            vectors,
            statuses,
            models,
            keys,
        } = Columns::of(items.iter());
        let rows = row_query!(
            "INSERT INTO contexts (id, user_id, context_type, content, metadata, expires_at,
                                   embedding_text, embedding, embedding_status, embedding_model,
                                   client_key)
             SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::jsonb[], $5::jsonb[],
                                  $6::timestamptz[], $7::text[], $8::vector[], $9::text[], $10::text[],
                                  $11::text[])
             ON CONFLICT (user_id, client_key) WHERE client_key IS NOT NULL AND is_active DO NOTHING
             RETURNING",
            r#"NULL::vector AS "embedding?: Vector", NULL::text AS "embedding_text?""#,
            &ids,
            &users,
            &types as _,
            &contents as _,
            &metadata as _,
            &expiries as _,
            &texts as _,
            &vectors as _,
            &statuses as _,
            &models as _,
            &keys as _,
        )
        .fetch_all(&self.pool)
        .await?;
        // RETURNING follows no promised order: put the rows back in the caller's.
        let mut by_id: std::collections::HashMap<Uuid, Row> =
            rows.into_iter().map(|r| (r.id, r)).collect();
        Ok(ids
            .iter()
            .map(|id| by_id.remove(id).map(Into::into))
            .collect())
    }

    /// A visible context, or `None`.
    #[tracing::instrument(name = "store.get", level = "debug", skip(self), fields(id = %id.0))]
    pub async fn get(
        &self,
        id: ContextId,
        with_embedding: bool,
    ) -> Result<Option<Context>, StoreError> {
        Ok(self
            .visible_row(id, with_embedding, false)
            .await?
            .map(Into::into))
    }

    /// A visible context with its embedded text, for an update.
    #[tracing::instrument(name = "store.get_current", level = "debug", skip(self), fields(id = %id.0))]
    pub async fn get_current(&self, id: ContextId) -> Result<Option<Current>, StoreError> {
        let row = self.visible_row(id, false, true).await?;
        Ok(row.map(|mut r| {
            let text = r.embedding_text.take().unwrap_or_default();
            Current {
                context: r.into(),
                text,
            }
        }))
    }

    /// The visible row `id`, with its vector and its embedded text if asked.
    async fn visible_row(
        &self,
        id: ContextId,
        with_embedding: bool,
        with_text: bool,
    ) -> Result<Option<Row>, StoreError> {
        Ok(row_query!(
            "SELECT",
            r#"CASE WHEN $2 THEN embedding END AS "embedding?: Vector",
                CASE WHEN $3 THEN embedding_text END AS "embedding_text?"
             FROM contexts
             WHERE id = $1 AND is_active AND (expires_at IS NULL OR expires_at > now())"#,
            id.0,
            with_embedding,
            with_text,
        )
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Writes the new state if the stored version is still `expected`; `None` otherwise.
    #[tracing::instrument(name = "store.update", level = "debug", skip(self, new), fields(id = %id.0))]
    pub async fn update(
        &self,
        id: ContextId,
        expected: i32,
        new: Replacement<'_>,
    ) -> Result<Option<Context>, StoreError> {
        let (keep, vector, status, model) = match new.embedding {
            EmbeddingChange::Keep => (true, None, None, None),
            EmbeddingChange::Set(v, model) => (
                false,
                Some(Vector::from(v)),
                Some(EmbeddingStatus::Ready),
                model,
            ),
            EmbeddingChange::Pending => (false, None, Some(EmbeddingStatus::Pending), None),
        };
        let row = row_query!(
            "UPDATE contexts SET
                context_type = $3, content = $4, metadata = $5, expires_at = $6, embedding_text = $7,
                embedding = CASE WHEN $8 THEN embedding ELSE $9::vector END,
                embedding_status = CASE WHEN $8 THEN embedding_status ELSE $10 END,
                embedding_model = CASE WHEN $8 THEN embedding_model ELSE $11 END,
                embedding_claim = CASE WHEN $8 THEN embedding_claim END,
                embedding_claimed_until = CASE WHEN $8 THEN embedding_claimed_until END,
                version = version + 1, updated_at = now()
             WHERE id = $1 AND version = $2 AND is_active AND (expires_at IS NULL OR expires_at > now())
             RETURNING",
            r#"NULL::vector AS "embedding?: Vector", NULL::text AS "embedding_text?""#,
            id.0,
            expected,
            new.context_type,
            Json(new.content) as _,
            Json(new.metadata) as _,
            new.expires_at,
            new.text,
            keep,
            vector as _,
            status.map(EmbeddingStatus::as_str),
            model,
        )
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(Into::into))
    }

    /// Marks a visible context inactive. `expected` guards against a stale If-Match.
    /// Returns the new version, or `None` when nothing matched.
    #[tracing::instrument(name = "store.soft_delete", level = "debug", skip(self), fields(id = %id.0))]
    pub async fn soft_delete(
        &self,
        id: ContextId,
        expected: Option<i32>,
    ) -> Result<Option<Context>, StoreError> {
        let row = row_query!(
            "UPDATE contexts SET is_active = false, version = version + 1, updated_at = now()
             WHERE id = $1 AND ($2::int IS NULL OR version = $2)
               AND is_active AND (expires_at IS NULL OR expires_at > now())
             RETURNING",
            r#"NULL::vector AS "embedding?: Vector", NULL::text AS "embedding_text?""#,
            id.0,
            expected,
        )
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(Into::into))
    }

    /// Removes the row. A soft-deleted row may be removed too (it is only hidden);
    /// with `expected` the version must match.
    #[tracing::instrument(name = "store.hard_delete", level = "debug", skip(self), fields(id = %id.0))]
    pub async fn hard_delete(
        &self,
        id: ContextId,
        expected: Option<i32>,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query!(
            "DELETE FROM contexts WHERE id = $1 AND ($2::int IS NULL OR version = $2)",
            id.0,
            expected,
        )
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Newest first, after the cursor.
    #[tracing::instrument(name = "store.list", level = "debug", skip_all, fields(limit = q.limit.get()))]
    pub async fn list(&self, q: &ListQuery) -> Result<Vec<Context>, StoreError> {
        let rows: Vec<Row> = self
            .on_replica(|pool| async move { list_query(q).build_query_as().fetch_all(pool).await })
            .await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    /// The k best visible contexts by `ranking`, best first, with their
    /// scores. One statement, one round trip: see [`search_query`],
    /// [`text_search_query`] and [`hybrid_search_query`]. A vector search
    /// filtered to one user takes the plan its size calls for (see
    /// [`VectorPlan`]).
    #[tracing::instrument(name = "store.search", level = "debug", skip_all, fields(k = k.get(), mode = ranking.mode().as_str(), plan, index))]
    pub async fn search(
        &self,
        ranking: &Ranking,
        filter: &SearchFilter,
        k: TopK,
    ) -> Result<Vec<(Context, f32)>, StoreError> {
        let config = self.text_search_config.as_str();
        // Each ranking's plan is read only for the modes that rank by it.
        let scan = match ranking {
            Ranking::Text(_) => VectorScan {
                plan: VectorPlan::Global,
                index: self.vector_index(),
                dim: self.dim(),
                ef_search: self.ef_search,
            },
            Ranking::Vector(_) | Ranking::Hybrid { .. } => {
                let scan = self.vector_scan(filter).await;
                let plan = scan.plan.as_str();
                tracing::Span::current().record("plan", plan);
                tracing::Span::current().record("index", scan.index.as_str());
                metrics::counter!("search_plans_total", "plan" => plan).increment(1);
                scan
            }
        };
        // A small user's text ranking reads its own rows (see [`push_bm25`]).
        let text_plan = match ranking {
            Ranking::Vector(_) => VectorPlan::Global, // unused
            Ranking::Text(_) | Ranking::Hybrid { .. } => self.text_plan(filter).await,
        };
        let rows: Vec<ScoredRow> = self
            .on_replica(|pool| async move {
                let mut sql = match ranking {
                    Ranking::Vector(v) => search_query(v, filter, k, scan),
                    Ranking::Text(t) => text_search_query(config, t, filter, k, text_plan),
                    Ranking::Hybrid {
                        vector,
                        text,
                        fusion,
                    } => hybrid_search_query(
                        config, vector, text, filter, k, fusion, scan, text_plan,
                    ),
                };
                sql.build_query_as().fetch_all(pool).await
            })
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| (r.row.into(), r.score as f32))
            .collect())
    }

    /// Claims up to `limit` pending rows, unclaimed or with a lapsed claim,
    /// for `lease`: other workers skip them until it ends. One short statement.
    #[tracing::instrument(name = "store.claim_pending", level = "debug", skip(self))]
    pub async fn claim_pending(&self, limit: i64, lease: Duration) -> Result<Claim, StoreError> {
        let token = Uuid::new_v4();
        let rows = sqlx::query!(
            "UPDATE contexts c
             SET embedding_claim = $2, embedding_claimed_until = now() + make_interval(secs => $3)
             FROM (SELECT id FROM contexts
                   WHERE embedding_status = 'pending' AND is_active
                     AND (embedding_claimed_until IS NULL OR embedding_claimed_until < now())
                   ORDER BY updated_at
                   LIMIT $1
                   FOR UPDATE SKIP LOCKED) p
             WHERE c.id = p.id
             RETURNING c.id, c.embedding_text",
            limit,
            token,
            lease.as_secs_f64(),
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(Claim {
            token,
            rows: rows
                .into_iter()
                .map(|r| PendingRow {
                    id: ContextId(r.id),
                    text: r.embedding_text,
                })
                .collect(),
        })
    }

    /// Claims the rows `ids` that are pending and unclaimed (or whose claim
    /// lapsed) for `lease`, under a new token: for a write whose embedding
    /// outlived its inline wait and is still running. Returns the token and
    /// the rows it holds.
    #[tracing::instrument(name = "store.claim_rows", level = "debug", skip_all, fields(rows = ids.len()))]
    pub async fn claim_rows(
        &self,
        ids: &[ContextId],
        lease: Duration,
    ) -> Result<(Uuid, Vec<ContextId>), StoreError> {
        let token = Uuid::new_v4();
        let ids: Vec<Uuid> = ids.iter().map(|id| id.0).collect();
        let claimed = sqlx::query_scalar!(
            "UPDATE contexts
             SET embedding_claim = $2, embedding_claimed_until = now() + make_interval(secs => $3)
             WHERE id = ANY($1) AND embedding_status = 'pending' AND is_active
               AND (embedding_claimed_until IS NULL OR embedding_claimed_until < now())
             RETURNING id",
            &ids,
            token,
            lease.as_secs_f64(),
        )
        .fetch_all(&self.pool)
        .await?;
        Ok((token, claimed.into_iter().map(ContextId).collect()))
    }

    /// Gives claimed rows back at once (the embedding call failed).
    #[tracing::instrument(name = "store.release_claim", level = "debug", skip(self))]
    pub async fn release_claim(&self, token: Uuid) -> Result<(), StoreError> {
        sqlx::query!(
            "UPDATE contexts SET embedding_claim = NULL, embedding_claimed_until = NULL
             WHERE embedding_claim = $1",
            token,
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Stores vectors for the rows `token` still claims, in one statement. A
    /// row whose text changed meanwhile lost its claim and is skipped. Does not
    /// bump `version`: the content did not change.
    #[tracing::instrument(name = "store.fill_embeddings", level = "debug", skip_all, fields(%token, rows = filled.len()))]
    pub async fn fill_embeddings(
        &self,
        token: Uuid,
        filled: Vec<(ContextId, Vec<f32>)>,
        model: Option<&str>,
    ) -> Result<Vec<Context>, StoreError> {
        let (ids, vectors): (Vec<Uuid>, Vec<Vector>) = filled
            .into_iter()
            .map(|(id, v)| (id.0, Vector::from(v)))
            .unzip();
        let rows = row_query!(
            "UPDATE contexts SET embedding = f.vector, embedding_status = 'ready', embedding_model = $4,
                    embedding_claim = NULL, embedding_claimed_until = NULL
             FROM UNNEST($2::uuid[], $3::vector[]) AS f(claimed, vector)
             WHERE id = f.claimed AND embedding_claim = $1 AND embedding_status = 'pending'
             RETURNING",
            r#"NULL::vector AS "embedding?: Vector", NULL::text AS "embedding_text?""#,
            token,
            &ids,
            &vectors as _,
            model,
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(Context::from).collect())
    }

    #[tracing::instrument(name = "store.pending_count", level = "debug", skip_all)]
    pub async fn pending_count(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar!(
            r#"SELECT count(*) AS "count!" FROM contexts WHERE embedding_status = 'pending' AND is_active"#,
        )
        .fetch_one(&self.pool)
        .await?)
    }

    /// Deletes up to `batch` expired rows, if no other replica holds the purge lock.
    /// `None` when another replica is purging.
    #[tracing::instrument(name = "store.purge", level = "debug", skip(self))]
    pub async fn purge_expired_batch(
        &self,
        batch: i64,
    ) -> Result<Option<Vec<ContextId>>, StoreError> {
        // Arbitrary constant naming this job's advisory lock ("ctxpurge").
        const PURGE_LOCK: i64 = 0x6374_7870_7572_6765;
        let mut tx = self.pool.begin().await?;
        let locked = sqlx::query_scalar!(
            r#"SELECT pg_try_advisory_xact_lock($1) AS "locked!""#,
            PURGE_LOCK
        )
        .fetch_one(&mut *tx)
        .await?;
        if !locked {
            return Ok(None);
        }
        let ids = sqlx::query_scalar!(
            "DELETE FROM contexts WHERE id IN (
                SELECT id FROM contexts WHERE expires_at <= now()
                ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED)
             RETURNING id",
            batch
        )
        .fetch_all(&mut *tx)
        .await?;
        // Idempotency keys past their time go with the same job.
        sqlx::query!(
            "DELETE FROM idempotency_keys WHERE ctid IN (
                SELECT ctid FROM idempotency_keys WHERE expires_at <= now() LIMIT $1)",
            batch
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(ids.into_iter().map(ContextId).collect()))
    }
}

/// The listing statement: newest first, after the cursor.
fn list_query(q: &ListQuery) -> QueryBuilder<'_, Postgres> {
    let mut sql =
        QueryBuilder::<Postgres>::new(format!("SELECT {COLUMNS} FROM contexts WHERE {VISIBLE}"));
    if let Some(u) = q.user_id {
        sql.push(" AND user_id = ").push_bind(u.0);
    }
    if let Some(t) = &q.context_type {
        sql.push(" AND context_type = ")
            .push_bind(t.as_str().to_owned());
    }
    if let Some(k) = &q.key {
        sql.push(" AND client_key = ")
            .push_bind(k.as_str().to_owned());
    }
    if let Some(m) = &q.metadata {
        sql.push(" AND metadata @> ").push_bind(Json(m.clone()));
    }
    if let Some(s) = q.embedding_status {
        sql.push(" AND embedding_status = ").push_bind(s.as_str());
    }
    if let Some(c) = q.after {
        sql.push(" AND (created_at, id) < (")
            .push_bind(c.created_at)
            .push(", ")
            .push_bind(c.id.0)
            .push(")");
    }
    sql.push(" ORDER BY created_at DESC, id DESC LIMIT ")
        .push_bind(q.limit.get());
    sql
}

/// New rows as one array per column, for `INSERT ... SELECT * FROM UNNEST(...)`.
pub(super) struct Columns<'a> {
    pub ids: Vec<Uuid>,
    pub users: Vec<Uuid>,
    pub types: Vec<&'a str>,
    pub contents: Vec<Json<&'a JsonObject>>,
    pub metadata: Vec<Json<&'a JsonObject>>,
    pub expiries: Vec<Option<DateTime<Utc>>>,
    pub texts: Vec<&'a str>,
    pub vectors: Vec<Option<Vector>>,
    pub statuses: Vec<&'static str>,
    pub models: Vec<Option<&'a str>>,
    pub keys: Vec<Option<&'a str>>,
}

impl<'a> Columns<'a> {
    pub(super) fn of(items: impl ExactSizeIterator<Item = &'a NewContext>) -> Self {
        let n = items.len();
        let mut c = Columns {
            ids: Vec::with_capacity(n),
            users: Vec::with_capacity(n),
            types: Vec::with_capacity(n),
            contents: Vec::with_capacity(n),
            metadata: Vec::with_capacity(n),
            expiries: Vec::with_capacity(n),
            texts: Vec::with_capacity(n),
            vectors: Vec::with_capacity(n),
            statuses: Vec::with_capacity(n),
            models: Vec::with_capacity(n),
            keys: Vec::with_capacity(n),
        };
        for new in items {
            c.ids.push(new.id.0);
            c.users.push(new.user_id.0);
            c.types.push(new.context_type.as_str());
            c.contents.push(Json(&new.content));
            c.metadata.push(Json(&new.metadata));
            c.expiries.push(new.expires_at);
            c.texts.push(new.text.as_str());
            c.vectors.push(vector_of(new));
            c.statuses.push(status_of(new).as_str());
            c.models.push(model_of(new));
            c.keys.push(new.key.as_ref().map(ContextKey::as_str));
        }
        c
    }
}

/// A new row's vector, as bound.
fn vector_of(c: &NewContext) -> Option<Vector> {
    c.embedding
        .as_ref()
        .map(|e| Vector::from(e.as_slice().to_vec()))
}

/// The model a new row's vector comes from, if it has one.
fn model_of(c: &NewContext) -> Option<&str> {
    c.embedding.as_ref().and(c.embedding_model.as_deref())
}

/// A new row is ready when it comes with its vector.
fn status_of(c: &NewContext) -> EmbeddingStatus {
    if c.embedding.is_some() {
        EmbeddingStatus::Ready
    } else {
        EmbeddingStatus::Pending
    }
}

/// The search statement, with every parameter cast so that its text alone
/// fixes the plan's inputs (the plan guard test prepares this same text).
///
/// - The scan's settings travel in the statement: `set_config(.., true)` in an
///   uncorrelated sub-select becomes a one-time filter that runs before the
///   index scan fetches its first row, and is local to the statement's
///   implicit transaction, so nothing leaks to the next user of the pooled
///   connection. This replaces BEGIN, two SET LOCALs and COMMIT.
/// - `hnsw.iterative_scan = relaxed_order` (pgvector 0.8): when filters reject
///   candidates, the scan goes on past ef_search instead of returning fewer
///   than k rows. Relaxed order may return rows slightly out of order; the
///   outer query re-sorts.
/// - Vectors are stored inline (`STORAGE PLAIN`, migration 2), so the planner
///   sees their real size in the heap and picks the index whenever the index
///   is cheaper, with or without filters.
/// - A user filter's plan is the store's choice, by the user's size
///   ([`VectorPlan`]), written into the statement, as is the form of the
///   index ([`VectorIndex`]).
pub fn search_query<'a>(
    vector: &[f32],
    filter: &SearchFilter,
    k: TopK,
    scan: VectorScan,
) -> QueryBuilder<'a, Postgres> {
    let mut sql = QueryBuilder::<Postgres>::new("WITH nearest AS MATERIALIZED (");
    push_nearest(&mut sql, COLUMNS, vector, filter, k.get(), scan);
    sql.push(format!(
        ") SELECT {COLUMNS}, (1 - distance)::float8 AS score FROM nearest"
    ));
    if let Some(min) = filter.min_score {
        sql.push(" WHERE 1 - distance >= ")
            .push_bind(f64::from(min))
            .push("::float8");
    }
    sql.push(" ORDER BY distance, id");
    sql
}

/// `SELECT {columns}, distance FROM ...`: the rows nearest to `vector` that
/// pass `filter`, at most `limit`, with their exact cosine distance, through
/// the HNSW index with the scan's settings in the statement (see
/// [`search_query`]), in the form the scan asks for. By plan:
///
/// - [`VectorPlan::Exact`]: the distance as `(embedding <=> $1) + 0`, an
///   expression no index orders by, so the rows come from the other filters'
///   indexes (the user's btree) and are sorted: exact;
/// - [`VectorPlan::Index`]: the user compared by `uuid_eq(user_id, ..)`, a
///   function call, not the `=` operator: no btree serves it, and the
///   planner, having no estimate for a function, takes it to pass a third of
///   the rows, in a generic plan too. A user on this plan holds a large share
///   of the table (past the crossover), so that is nearer the truth than the
///   0.5% it assumed for the user compared as text, which made a seq scan
///   look cheaper than the HNSW scan on a small table with a denser graph
///   (`HNSW_M` 24);
/// - [`VectorPlan::Global`]: the filters as they are.
///
/// By index, the order the HNSW scan serves: the distance itself
/// (`vector`), the distance of the vectors as `halfvec`, or the Hamming
/// distance of their binary quantization, for [`VectorIndex::candidates`]
/// rows that an outer query re-ranks by the exact distance (`bit`).
fn push_nearest(
    sql: &mut QueryBuilder<'_, Postgres>,
    columns: &str,
    vector: &[f32],
    filter: &SearchFilter,
    limit: i64,
    scan: VectorScan,
) {
    let exact = scan.plan == VectorPlan::Exact;
    let index = if exact {
        VectorIndex::Vector
    } else {
        scan.index
    };
    let rerank = index == VectorIndex::Bit;
    if rerank {
        sql.push(format!("SELECT {columns}, distance FROM ("));
    }
    sql.push(format!("SELECT {columns}, "));
    if exact {
        sql.push("(");
    }
    sql.push("embedding <=> ")
        .push_bind(Vector::from(vector.to_vec()));
    let query = last_placeholder(sql);
    sql.push(if exact { "::vector) + 0" } else { "::vector" })
        .push(" AS distance FROM contexts WHERE ")
        .push(VISIBLE)
        .push(" AND embedding_status = 'ready'");
    push_filters_with(sql, filter, scan.plan == VectorPlan::Index);
    sql.push(" AND (SELECT set_config('hnsw.ef_search', ")
        .push_bind(index.ef_search(limit, scan.ef_search).to_string())
        .push("::text, true) || set_config('hnsw.iterative_scan', 'relaxed_order', true)) IS NOT NULL");
    let dim = scan.dim;
    sql.push(match index {
        VectorIndex::Vector => " ORDER BY distance".to_owned(),
        VectorIndex::Halfvec => {
            format!(
                " ORDER BY l2_normalize(embedding)::halfvec({dim}) <=> l2_normalize({query}::vector)::halfvec({dim})"
            )
        }
        VectorIndex::Bit => format!(
            " ORDER BY binary_quantize(embedding)::bit({dim}) <~> binary_quantize({query}::vector)::bit({dim})"
        ),
    });
    sql.push(" LIMIT ")
        .push_bind(index.candidates(limit))
        .push("::int8");
    if rerank {
        sql.push(") candidates ORDER BY distance LIMIT ")
            .push_bind(limit)
            .push("::int8");
    }
}

/// The placeholder (`$n`) the builder wrote last, for a parameter the
/// statement names twice: bound once, its text is the same wherever used.
fn last_placeholder(sql: &QueryBuilder<'_, Postgres>) -> String {
    let text = sql.sql();
    let start = text.rfind('$').expect("a parameter was just bound");
    text[start..].to_owned()
}

/// ` AND ...` for each of the filter's conditions but the score.
fn push_filters(sql: &mut QueryBuilder<'_, Postgres>, filter: &SearchFilter) {
    push_filters_with(sql, filter, false);
}

/// [`push_filters`], with the user compared by `uuid_eq` when `user_hidden`
/// (hidden from the btree: see [`push_nearest`]).
fn push_filters_with(
    sql: &mut QueryBuilder<'_, Postgres>,
    filter: &SearchFilter,
    user_hidden: bool,
) {
    if let Some(u) = filter.user_id {
        if user_hidden {
            sql.push(" AND uuid_eq(user_id, ")
                .push_bind(u.0)
                .push("::uuid)");
        } else {
            sql.push(" AND user_id = ").push_bind(u.0).push("::uuid");
        }
    }
    if let Some(t) = &filter.context_type {
        sql.push(" AND context_type = ")
            .push_bind(t.as_str().to_owned())
            .push("::text");
    }
    if let Some(m) = &filter.metadata {
        sql.push(" AND metadata @> ")
            .push_bind(Json(m.clone()))
            .push("::jsonb");
    }
}

/// `WITH q AS (...), ..., bm25 AS (SELECT id, score ...)`: every visible row
/// that passes `filter` and holds any of the query's words, scored by Okapi
/// BM25 (k1 = 1.2, b = 0.75), computed in the statement from the tsvector
/// column:
///
/// - `q`: the query parsed and normalized as the column was (same
///   configuration): its distinct lexemes, and a tsquery matching any of them
///   (`plainto_tsquery` joins them with AND; each ` & ` of its output becomes
///   ` | `: lexemes are printed quoted and never hold a space);
/// - `cand`: the matching rows, found through the GIN index, with their
///   length in distinct lexemes;
/// - `tf`: each query lexeme's count of positions in each candidate;
/// - `df`: how many candidates hold each lexeme. Every row holding a query
///   lexeme is a candidate, so this is the lexeme's document frequency among
///   the rows the filter lets through;
/// - N, the number of documents, is the table's row estimate (never under
///   the candidates' count), and the average length the candidates'.
///
/// Cost: one pass over the candidates' tsvectors, as `ts_rank` would take.
/// A small user (`plan` [`VectorPlan::Exact`], see [`Store::text_plan`]) has
/// its rows read by its btree and matched one by one.
fn push_bm25(
    sql: &mut QueryBuilder<'_, Postgres>,
    config: &str,
    text: &str,
    filter: &SearchFilter,
    plan: VectorPlan,
) {
    sql.push("WITH q AS (SELECT replace(plainto_tsquery(")
        .push_bind(config.to_owned())
        .push("::regconfig, ")
        .push_bind(text.to_owned())
        .push("::text)::text, ' & ', ' | ')::tsquery AS q, ARRAY(SELECT DISTINCT lexeme FROM unnest(to_tsvector(")
        .push_bind(config.to_owned())
        .push("::regconfig, ")
        .push_bind(text.to_owned())
        .push("::text))) AS lx)");
    // A small user's rows are matched one by one (`ts_match_vq` is `@@`
    // called as a function, which no index serves): with the operator, the
    // planner may combine the user's btree with the text index, which for a
    // common word returns every row of the table (140 ms for a user of 10
    // rows at a million). A bigger user, or no user, keeps the index.
    let matches = if plan == VectorPlan::Exact {
        "ts_match_vq(embedding_tsv, q.q)"
    } else {
        "embedding_tsv @@ q.q"
    };
    sql.push(format!(
        ", cand AS MATERIALIZED (SELECT id, embedding_tsv AS tsv, length(embedding_tsv) AS dl \
         FROM contexts, q WHERE {matches} AND {VISIBLE}"
    ));
    push_filters(sql, filter);
    sql.push(
        "), n AS (SELECT greatest((SELECT reltuples FROM pg_class WHERE oid = 'contexts'::regclass), \
         (SELECT count(*) FROM cand))::float8 AS n, (SELECT avg(dl) FROM cand)::float8 AS avgdl), \
         tf AS (SELECT cand.id, cand.dl, u.lexeme, array_length(u.positions, 1)::float8 AS tf \
         FROM cand, q, unnest(cand.tsv) u WHERE u.lexeme = ANY(q.lx)), \
         df AS (SELECT lexeme, count(*)::float8 AS df FROM tf GROUP BY lexeme), \
         bm25 AS (SELECT tf.id, sum(ln(1 + (n.n - df.df + 0.5) / (df.df + 0.5)) \
         * tf.tf * 2.2 / (tf.tf + 1.2 * (0.25 + 0.75 * tf.dl / n.avgdl))) AS score \
         FROM tf JOIN df USING (lexeme), n GROUP BY tf.id)",
    );
}

/// Text mode: rows holding any of the query's words, best BM25 score first
/// (see [`push_bm25`]), the score mapped to 0..1 as `s / (s + 1)`.
pub fn text_search_query<'a>(
    config: &str,
    text: &str,
    filter: &SearchFilter,
    k: TopK,
    plan: VectorPlan,
) -> QueryBuilder<'a, Postgres> {
    let mut sql = QueryBuilder::<Postgres>::new("");
    push_bm25(&mut sql, config, text, filter, plan);
    sql.push(format!(
        " SELECT {COLUMNS}, (bm25.score / (bm25.score + 1))::float8 AS score \
         FROM bm25 JOIN contexts USING (id)"
    ));
    if let Some(min) = filter.min_score {
        sql.push(" WHERE bm25.score / (bm25.score + 1) >= ")
            .push_bind(f64::from(min))
            .push("::float8");
    }
    sql.push(" ORDER BY bm25.score DESC, id LIMIT ")
        .push_bind(k.get())
        .push("::int8");
    sql
}

/// Hybrid mode: the best `fusion.candidates` (at least k) of each ranking,
/// fused by reciprocal rank fusion (see [`Fusion`]), in one statement.
#[allow(clippy::too_many_arguments)] // the two rankings' inputs and plans
pub fn hybrid_search_query<'a>(
    config: &str,
    vector: &[f32],
    text: &str,
    filter: &SearchFilter,
    k: TopK,
    fusion: &Fusion,
    scan: VectorScan,
    text_plan: VectorPlan,
) -> QueryBuilder<'a, Postgres> {
    let n = fusion.candidates.max(k.get());
    let mut sql = QueryBuilder::<Postgres>::new("");
    push_bm25(&mut sql, config, text, filter, text_plan);
    sql.push(", nearest AS MATERIALIZED (");
    push_nearest(&mut sql, "id", vector, filter, n, scan);
    sql.push(
        "), by_vector AS (SELECT id, row_number() OVER (ORDER BY distance, id) AS r FROM nearest)",
    );
    sql.push(", by_text AS (SELECT id, row_number() OVER (ORDER BY score DESC, id) AS r FROM bm25 ORDER BY r LIMIT ")
        .push_bind(n)
        .push("::int8)");
    sql.push(", fused AS (SELECT id, coalesce(")
        .push_bind(fusion.vector_weight)
        .push("::float8 / (")
        .push_bind(fusion.k)
        .push("::float8 + by_vector.r), 0) + coalesce(")
        .push_bind(fusion.text_weight)
        .push("::float8 / (")
        .push_bind(fusion.k)
        .push("::float8 + by_text.r), 0) AS score FROM by_vector FULL JOIN by_text USING (id))");
    sql.push(format!(
        " SELECT {COLUMNS}, fused.score FROM fused JOIN contexts USING (id)"
    ));
    if let Some(min) = filter.min_score {
        sql.push(" WHERE fused.score >= ")
            .push_bind(f64::from(min))
            .push("::float8");
    }
    sql.push(" ORDER BY fused.score DESC, id LIMIT ")
        .push_bind(k.get())
        .push("::int8");
    sql
}
