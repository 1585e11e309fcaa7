//! The form in which the HNSW index holds the vectors (`VECTOR_INDEX`).
//! The table always keeps the full `vector` column: exact searches, the
//! scores returned and the re-ranking read it. Only the index changes:
//!
//! - `vector`: the vectors as stored, 4 bytes a dimension;
//! - `halfvec`: an expression index on `l2_normalize(embedding)::halfvec(dim)`,
//!   2 bytes a dimension: half the index, the same recall (bench/results).
//!   The cosine distance does not change when a vector is scaled, and a
//!   unit vector always fits half precision: a stored value may reach 1e15,
//!   where `halfvec` ends at 65,504;
//! - `bit`: an expression index on `binary_quantize(embedding)::bit(dim)`,
//!   one bit a dimension, searched by Hamming distance for
//!   [`BIT_RERANK`] times the candidates, which are then re-ranked by the
//!   exact distance.
//!
//! The graph's density (`HNSW_M`, `HNSW_EF_CONSTRUCTION`: pgvector's `m` and
//! `ef_construction`) is chosen with it: see [`HnswGraph`].
//!
//! The choice is recorded in `embedding_state` (migrations 7 and 9) and the
//! form is read by every serving instance (at start and every
//! [`super::tenants::REFRESH`]). `context-api migrate` switches it: the new
//! index is built beside the old one (`CREATE INDEX CONCURRENTLY`: reads and
//! writes go on), the two switch names and the recorded choice in one short
//! transaction, and the old index is dropped once every instance has had
//! time to read the new choice.

use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use sqlx::PgPool;

use super::tenants::REFRESH;
use super::{Store, StoreError};

/// Candidates fetched by Hamming distance for each result a `bit` index
/// returns, before the exact re-ranking.
pub const BIT_RERANK: i64 = 10;

/// pgvector's largest `hnsw.ef_search`.
const MAX_EF_SEARCH: i64 = 1000;

/// Tables above this many rows keep the old index for [`REFRESH`] after a
/// switch, so that instances still on the old choice keep an index to use;
/// a smaller table is scanned quickly enough without one.
const GRACE_ROWS: f64 = 50_000.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VectorIndex {
    Vector,
    #[default]
    Halfvec,
    Bit,
}

impl VectorIndex {
    pub const ALL: [VectorIndex; 3] = [VectorIndex::Vector, VectorIndex::Halfvec, VectorIndex::Bit];

    pub fn as_str(self) -> &'static str {
        match self {
            VectorIndex::Vector => "vector",
            VectorIndex::Halfvec => "halfvec",
            VectorIndex::Bit => "bit",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// The largest dimension pgvector's HNSW index takes in this form.
    pub fn max_dim(self) -> usize {
        match self {
            VectorIndex::Vector => 2_000,
            VectorIndex::Halfvec => 4_000,
            VectorIndex::Bit => 64_000,
        }
    }

    /// The indexed expression over `column` (of `dim` dimensions) and its
    /// operator class, as `CREATE INDEX ... USING hnsw (...)` takes them.
    /// `dim` is a number and `column` one of ours: nothing here is input.
    pub fn index_expression(self, column: &str, dim: usize) -> String {
        match self {
            VectorIndex::Vector => format!("{column} vector_cosine_ops"),
            VectorIndex::Halfvec => {
                format!("(l2_normalize({column})::halfvec({dim})) halfvec_cosine_ops")
            }
            VectorIndex::Bit => {
                format!("(binary_quantize({column})::bit({dim})) bit_hamming_ops")
            }
        }
    }

    /// The rows an index scan must return for `limit` results.
    pub fn candidates(self, limit: i64) -> i64 {
        match self {
            VectorIndex::Bit => limit * BIT_RERANK,
            _ => limit,
        }
    }

    /// The HNSW candidate list for `limit` results: twice the candidates,
    /// never under `least` (HNSW_EF_SEARCH), nor over pgvector's limit of
    /// 1,000 (iterative scans go on past it when filters reject rows).
    pub fn ef_search(self, limit: i64, least: i64) -> i64 {
        (self.candidates(limit) * 2).max(least).min(MAX_EF_SEARCH)
    }

    fn code(self) -> u8 {
        self as u8
    }

    fn from_code(code: u8) -> Self {
        Self::ALL
            .into_iter()
            .find(|v| v.code() == code)
            .unwrap_or_default()
    }
}

/// The density of the HNSW graph: the neighbours each element keeps (`m`,
/// twice that on the bottom layer) and the candidate list a build searches
/// for them (`ef_construction`). On the suite's 768-d data at pgvector's
/// defaults (16, 64) recall@10 stops near 0.93 at 300,000 rows whatever
/// `ef_search`, and falls to 0.84 at a million: the graph, not the search,
/// is the limit (bench/results/hnsw-graph-300000.md). The default, m 24 and
/// ef_construction 128, keeps recall@10 at 0.98 at a million rows (0.89 with
/// m 16) for 1.26 times m 16's build and the same `halfvec` index size
/// (bench/results/scale-1000000-halfvec-m24.md). pgvector costs an index
/// scan in proportion to `m`; a big user's search keeps the index plan on
/// small tables because the statement tells the planner the user is big
/// (see `push_nearest` in contexts.rs and the plan guard, tests/api/plan.rs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HnswGraph {
    pub m: u16,
    pub ef_construction: u16,
}

impl HnswGraph {
    /// pgvector's own: what an index built before HNSW_M was a setting has.
    pub const PGVECTOR: Self = Self {
        m: 16,
        ef_construction: 64,
    };

    /// Checked as pgvector checks them: m 2 to 100, ef_construction 4 to
    /// 1,000 and at least twice m.
    pub fn new(m: u16, ef_construction: u16) -> Result<Self, String> {
        if !(2..=100).contains(&m) {
            return Err(format!("HNSW_M must be between 2 and 100, got {m}"));
        }
        if !(4..=1000).contains(&ef_construction) {
            return Err(format!(
                "HNSW_EF_CONSTRUCTION must be between 4 and 1000, got {ef_construction}"
            ));
        }
        if ef_construction < 2 * m {
            return Err(format!(
                "HNSW_EF_CONSTRUCTION ({ef_construction}) must be at least twice HNSW_M ({m})"
            ));
        }
        Ok(Self { m, ef_construction })
    }

    /// The `WITH (...)` of `CREATE INDEX`: two numbers, nothing of input.
    pub fn with_clause(self) -> String {
        format!(
            "WITH (m = {}, ef_construction = {})",
            self.m, self.ef_construction
        )
    }
}

impl Default for HnswGraph {
    fn default() -> Self {
        Self {
            m: 24,
            ef_construction: 128,
        }
    }
}

/// What an index is built as: its form and its graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IndexSpec {
    pub form: VectorIndex,
    pub graph: HnswGraph,
}

impl IndexSpec {
    /// `CREATE INDEX [CONCURRENTLY] name ON contexts USING hnsw (...) WITH (...)`
    /// over `column` of `dim` dimensions.
    pub fn create_sql(self, name: &str, concurrently: bool, column: &str, dim: usize) -> String {
        format!(
            "CREATE INDEX {}{name} ON contexts USING hnsw ({}) {}",
            if concurrently { "CONCURRENTLY " } else { "" },
            self.form.index_expression(column, dim),
            self.graph.with_clause()
        )
    }

    fn describe(self) -> String {
        format!(
            "{} (m {}, ef_construction {})",
            self.form.as_str(),
            self.graph.m,
            self.graph.ef_construction
        )
    }
}

/// The recorded choice, shared by the store's clones.
#[derive(Debug, Default)]
pub(super) struct ActiveIndex(AtomicU8);

impl ActiveIndex {
    pub(super) fn new(index: VectorIndex) -> Self {
        Self(AtomicU8::new(index.code()))
    }

    pub(super) fn get(&self) -> VectorIndex {
        VectorIndex::from_code(self.0.load(Ordering::Relaxed))
    }

    pub(super) fn set(&self, index: VectorIndex) {
        self.0.store(index.code(), Ordering::Relaxed);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SwitchError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("VECTOR_INDEX={0} cannot index {1} dimensions (at most {2})")]
    TooManyDimensions(&'static str, usize, usize),
    #[error("a re-embedding is under way: finish it (`context-api reembed`) before changing VECTOR_INDEX")]
    RebuildUnderWay,
    #[error("the database records an unknown vector index {0:?}")]
    Unknown(String),
    #[error("{0}")]
    Graph(String),
}

impl From<sqlx::Error> for SwitchError {
    fn from(e: sqlx::Error) -> Self {
        SwitchError::Store(e.into())
    }
}

/// The choice recorded in the database.
pub(super) async fn recorded<'e>(
    executor: impl sqlx::PgExecutor<'e>,
) -> Result<IndexSpec, SwitchError> {
    let (name, m, ef_construction): (String, i32, i32) =
        sqlx::query_as("SELECT vector_index, hnsw_m, hnsw_ef_construction FROM embedding_state")
            .fetch_one(executor)
            .await?;
    let form = VectorIndex::parse(&name).ok_or(SwitchError::Unknown(name))?;
    // The table's checks keep both in pgvector's ranges.
    let graph = HnswGraph::new(m as u16, ef_construction as u16).map_err(SwitchError::Graph)?;
    Ok(IndexSpec { form, graph })
}

impl Store {
    /// The form of the HNSW index, as last read.
    pub fn vector_index(&self) -> VectorIndex {
        self.vector_index.get()
    }

    pub(super) fn set_vector_index(&self, index: VectorIndex) {
        self.vector_index.set(index);
    }

    /// [`switch_vector_index`] to the form `to` on the recorded graph, and
    /// this store searches in the new form at once.
    pub async fn switch_vector_index(&self, to: VectorIndex) -> Result<bool, SwitchError> {
        let graph = recorded(&self.pool).await?.graph;
        let switched = switch_vector_index(&self.pool, IndexSpec { form: to, graph }).await?;
        self.set_vector_index(to);
        Ok(switched)
    }
}

/// The vectors' dimension (the column's), and whether a re-embedding is
/// under way (its next index is built in the current form).
async fn vectors(pool: &PgPool) -> Result<(usize, bool), SwitchError> {
    let (dim, rebuilding): (i32, bool) = sqlx::query_as(
        "SELECT (SELECT a.atttypmod FROM pg_attribute a
                 WHERE a.attrelid = 'contexts'::regclass AND a.attname = 'embedding'
                   AND NOT a.attisdropped),
                target_model IS NOT NULL
         FROM embedding_state",
    )
    .fetch_one(pool)
    .await?;
    Ok((dim.max(0) as usize, rebuilding))
}

/// Records `spec` as the index's.
async fn record<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    spec: IndexSpec,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE embedding_state
         SET vector_index = $1, hnsw_m = $2, hnsw_ef_construction = $3, updated_at = now()",
    )
    .bind(spec.form.as_str())
    .bind(i32::from(spec.graph.m))
    .bind(i32::from(spec.graph.ef_construction))
    .execute(executor)
    .await?;
    Ok(())
}

/// Builds the index `name` as `spec` on `conn`, without blocking reads or
/// writes (`CONCURRENTLY`); one an interrupted build left is dropped first.
async fn build(
    conn: &mut sqlx::PgConnection,
    name: &str,
    spec: IndexSpec,
    dim: usize,
) -> Result<(), sqlx::Error> {
    sqlx::query(&format!("DROP INDEX CONCURRENTLY IF EXISTS {name}"))
        .execute(&mut *conn)
        .await?;
    sqlx::query(&spec.create_sql(name, true, "embedding", dim))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Makes `to` the form and graph of the HNSW index, if they are not already: builds it
/// beside the current one, switches, then drops the old one (see the
/// module's notes). Returns whether it switched. Resumable: an index left
/// invalid by an interrupted build is dropped and built again.
#[tracing::instrument(name = "store.switch_vector_index", skip(pool), fields(to = to.describe()))]
pub async fn switch_vector_index(pool: &PgPool, to: IndexSpec) -> Result<bool, SwitchError> {
    let from = recorded(pool).await?;
    // An old index a switch did not get to drop.
    sqlx::query("DROP INDEX CONCURRENTLY IF EXISTS contexts_embedding_hnsw_old_idx")
        .execute(pool)
        .await?;
    if from == to {
        return Ok(false);
    }
    let (dim, rebuilding) = vectors(pool).await?;
    if rebuilding {
        return Err(SwitchError::RebuildUnderWay);
    }
    if dim > to.form.max_dim() {
        return Err(SwitchError::TooManyDimensions(
            to.form.as_str(),
            dim,
            to.form.max_dim(),
        ));
    }
    let exists: bool =
        sqlx::query_scalar("SELECT to_regclass('contexts_embedding_hnsw_idx') IS NOT NULL")
            .fetch_one(pool)
            .await?;
    if !exists {
        // Nothing to build beside (a bulk import dropped it): build it anew.
        record(pool, to).await?;
        ensure_vector_index(pool, None).await?;
        return Ok(true);
    }
    let started = std::time::Instant::now();
    tracing::info!(
        from = from.describe(),
        to = to.describe(),
        "building the new vector index beside the old one"
    );
    build(
        &mut *pool.acquire().await?,
        "contexts_embedding_hnsw_next_idx",
        to,
        dim,
    )
    .await?;
    let mut tx = pool.begin().await?;
    for sql in [
        "ALTER INDEX contexts_embedding_hnsw_idx RENAME TO contexts_embedding_hnsw_old_idx",
        "ALTER INDEX contexts_embedding_hnsw_next_idx RENAME TO contexts_embedding_hnsw_idx",
    ] {
        sqlx::query(sql).execute(&mut *tx).await?;
    }
    record(&mut *tx, to).await?;
    tx.commit().await?;
    tracing::info!(
        to = to.describe(),
        seconds = started.elapsed().as_secs_f64(),
        "switched the vector index"
    );
    let rows: f64 = sqlx::query_scalar(
        "SELECT reltuples::float8 FROM pg_class WHERE oid = 'contexts'::regclass",
    )
    .fetch_one(pool)
    .await?;
    if rows > GRACE_ROWS {
        let grace = REFRESH + Duration::from_secs(5);
        tracing::info!(
            seconds = grace.as_secs(),
            "keeping the old index while the serving instances read the switch"
        );
        tokio::time::sleep(grace).await;
    }
    sqlx::query("DROP INDEX CONCURRENTLY IF EXISTS contexts_embedding_hnsw_old_idx")
        .execute(pool)
        .await?;
    Ok(true)
}

/// Whether the HNSW index is there and valid.
pub async fn has_vector_index(pool: &PgPool) -> Result<bool, sqlx::Error> {
    let valid: Option<bool> = sqlx::query_scalar(
        "SELECT indisvalid FROM pg_index
         WHERE indexrelid = to_regclass('contexts_embedding_hnsw_idx')",
    )
    .fetch_optional(pool)
    .await?;
    Ok(valid == Some(true))
}

/// Drops the HNSW index before a bulk load, so that the rows go in without
/// its maintenance (most of an insert's cost). Meanwhile searches that would
/// use it read the rows exactly (correct, slower on a big table); a
/// small user's searches never used it.
pub async fn drop_vector_index(pool: &PgPool) -> Result<(), SwitchError> {
    if vectors(pool).await?.1 {
        return Err(SwitchError::RebuildUnderWay);
    }
    sqlx::query("DROP INDEX CONCURRENTLY IF EXISTS contexts_embedding_hnsw_idx")
        .execute(pool)
        .await?;
    Ok(())
}

/// Builds the HNSW index in the recorded form when it is missing or left
/// invalid (a bulk load, or one interrupted), without blocking reads or
/// writes. `maintenance_work_mem`, when given, is this build's (pgvector
/// builds in memory while the graph fits, many times faster). Returns
/// whether it built.
pub async fn ensure_vector_index(
    pool: &PgPool,
    maintenance_work_mem: Option<&str>,
) -> Result<bool, SwitchError> {
    if has_vector_index(pool).await? {
        return Ok(false);
    }
    let spec = recorded(pool).await?;
    let (dim, _) = vectors(pool).await?;
    let started = std::time::Instant::now();
    tracing::info!(index = spec.describe(), "building the HNSW index");
    let mut conn = pool.acquire().await?;
    if let Some(mem) = maintenance_work_mem {
        sqlx::query("SELECT set_config('maintenance_work_mem', $1, false)")
            .bind(mem)
            .execute(&mut *conn)
            .await?;
    }
    let built = build(&mut conn, "contexts_embedding_hnsw_idx", spec, dim).await;
    // The pooled connection goes back with the server's own setting.
    sqlx::query("RESET maintenance_work_mem")
        .execute(&mut *conn)
        .await?;
    built?;
    tracing::info!(
        index = spec.describe(),
        seconds = started.elapsed().as_secs_f64(),
        "built the HNSW index"
    );
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_codes_are_distinct() {
        for v in VectorIndex::ALL {
            assert_eq!(VectorIndex::parse(v.as_str()), Some(v));
            assert_eq!(VectorIndex::from_code(v.code()), v);
        }
        assert_eq!(VectorIndex::parse("halfvec(768)"), None);
    }

    #[test]
    fn a_bit_index_fetches_more_candidates_within_pgvectors_limit() {
        assert_eq!(VectorIndex::Vector.ef_search(10, 40), 40);
        assert_eq!(VectorIndex::Halfvec.ef_search(10, 100), 100);
        assert_eq!(VectorIndex::Halfvec.ef_search(100, 100), 200);
        assert_eq!(VectorIndex::Bit.candidates(10), 10 * BIT_RERANK);
        assert_eq!(VectorIndex::Bit.ef_search(10, 100), 200);
        assert_eq!(VectorIndex::Bit.ef_search(100, 100), MAX_EF_SEARCH);
    }
}
