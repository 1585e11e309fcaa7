//! Which plan a vector search takes, chosen by the size of the user it is
//! filtered to (as Qdrant chooses by a filter's estimated cardinality).
//!
//! A user-filtered search has two good plans, and which one wins depends on
//! the share of the table the user holds:
//!
//! - **exact**: the user's rows through the `user_id` btree, every distance
//!   computed, a top-k sort. Its cost grows with the user's rows; its results
//!   are exact.
//! - **index**: the HNSW graph walked in distance order, the other users'
//!   rows filtered out (iterative scan). Its cost grows with the rows it must
//!   skip, about `ef_search / share`: cheap for a big user, ruinous for a
//!   small one in a big table.
//!
//! Left to itself, PostgreSQL cannot choose: the service's statement is
//! prepared, and the generic plan that the plan cache settles on estimates
//! every `user_id = $1` at the average user's size, so every user took the
//! exact plan, and a user with 20,000 rows paid 35 ms where the index takes 5
//! (bench/results/scale-300000.md, bench/README.md). So the store chooses,
//! and writes the choice into the statement: the exact plan hides the
//! distance from the index (`+ 0`); the index plan hides the user from the
//! btree (`uuid_eq(user_id, ..)`).
//!
//! A user's size is the planner's own estimate: the most common values of
//! `contexts.user_id` in `pg_stats` (kept by ANALYZE and autovacuum), read at
//! most every [`REFRESH`]. A user absent from that list is smaller than every
//! user in it, and takes the exact plan.

use std::collections::HashSet;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::{Store, VectorIndex};
use crate::domain::SearchFilter;

/// How often the users' sizes are read again from the statistics.
pub const REFRESH: Duration = Duration::from_secs(30);

/// Users up to this many rows are always searched exactly.
pub const EXACT_MIN_ROWS: f64 = 2_000.0;

/// The crossover's constant: the exact plan is kept up to
/// `sqrt(CROSSOVER * table rows)` rows. Measured at 300,000 x 768 (the index
/// cached): the two plans met between 4,000 and 8,700 rows, at about
/// `sqrt(120 * rows)`; the cost of the index plan, `ef_search / share`, makes
/// the crossover grow with the square root of the table.
pub const CROSSOVER: f64 = 120.0;

/// The plan of a vector search.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VectorPlan {
    /// No user filter: the HNSW index, or what the planner finds cheaper for
    /// the other filters.
    Global,
    /// A small user: every one of its rows, exactly.
    Exact,
    /// A big user: the HNSW index, filtered.
    Index,
}

impl VectorPlan {
    pub fn as_str(self) -> &'static str {
        match self {
            VectorPlan::Global => "global",
            VectorPlan::Exact => "exact",
            VectorPlan::Index => "index",
        }
    }
}

/// Everything a vector search's statement is written from: the plan, the
/// form of the index, and the vectors' dimension (which the index's
/// expression names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VectorScan {
    pub plan: VectorPlan,
    pub index: VectorIndex,
    pub dim: usize,
    /// The least HNSW candidate list (HNSW_EF_SEARCH).
    pub ef_search: i64,
}

/// The rows above which a user is searched through the index, in a table of
/// `table_rows`.
pub fn exact_limit(table_rows: f64) -> f64 {
    (CROSSOVER * table_rows.max(0.0)).sqrt().max(EXACT_MIN_ROWS)
}

/// The users big enough for the index plan, as last read.
#[derive(Debug, Default)]
pub(super) struct TenantSizes {
    snapshot: RwLock<Snapshot>,
    refreshing: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
struct Snapshot {
    read_at: Option<Instant>,
    /// The users over the exact limit.
    big: HashSet<Uuid>,
    /// The users over [`TEXT_SCAN_ROWS`].
    text_big: HashSet<Uuid>,
}

/// Users up to this many rows have a text search match their own rows one by
/// one; bigger ones go through the text index. At a million rows, reading a
/// user's 1,000 rows took 4 ms for a rare word and 30 ms for a word in every
/// row, where the text index took 0.5 and 146 ms; at 5,000 rows, 20 and 89
/// ms against 0.8 and 210 (own rows: bench/results/scale-1000000-halfvec.md;
/// the index: scale-1000000-halfvec-m24.md).
pub const TEXT_SCAN_ROWS: f64 = 2_000.0;

impl TenantSizes {
    /// The plan for `user` (`None`: no user filter) by the last sizes, and whether the sizes (and the index's form) are due for a refresh.
    fn plan_of(&self, user: Option<Uuid>) -> (VectorPlan, bool) {
        let snapshot = self.snapshot.read().expect("tenant sizes lock");
        let plan = match user {
            None => VectorPlan::Global,
            Some(u) if snapshot.big.contains(&u) => VectorPlan::Index,
            Some(_) => VectorPlan::Exact,
        };
        let stale = snapshot.read_at.is_none_or(|at| at.elapsed() >= REFRESH);
        (plan, stale)
    }

    /// Whether `user`'s text search goes through the text index.
    fn text_index_for(&self, user: Option<Uuid>) -> bool {
        let snapshot = self.snapshot.read().expect("tenant sizes lock");
        user.is_none_or(|u| snapshot.text_big.contains(&u))
    }

    /// Replaces the big users (or, given `None`, keeps the last ones) and
    /// marks the sizes read now.
    fn store(&self, big: Option<(HashSet<Uuid>, HashSet<Uuid>)>) {
        let mut snapshot = self.snapshot.write().expect("tenant sizes lock");
        if let Some((big, text_big)) = big {
            snapshot.big = big;
            snapshot.text_big = text_big;
        }
        snapshot.read_at = Some(Instant::now());
    }
}

impl Store {
    /// How a vector search with `filter` reaches its rows.
    pub async fn vector_scan(&self, filter: &SearchFilter) -> VectorScan {
        VectorScan {
            plan: self.vector_plan(filter).await,
            index: self.vector_index(),
            dim: self.dim(),
            ef_search: self.ef_search,
        }
    }

    /// The plan a vector search with `filter` takes (see the module's notes).
    pub async fn vector_plan(&self, filter: &SearchFilter) -> VectorPlan {
        let user = filter.user_id.map(|u| u.0);
        match self.tenants.plan_of(user) {
            (plan, false) => plan,
            (_, true) => {
                self.refresh_tenant_sizes().await;
                self.tenants.plan_of(user).0
            }
        }
    }

    /// How a text search with `filter` reaches its rows: [`VectorPlan::Exact`]
    /// for a user up to [`TEXT_SCAN_ROWS`] (its own rows, matched one by
    /// one), else [`VectorPlan::Index`] (the text index), or
    /// [`VectorPlan::Global`] without a user filter.
    pub async fn text_plan(&self, filter: &SearchFilter) -> VectorPlan {
        let user = filter.user_id.map(|u| u.0);
        if self.tenants.plan_of(user).1 {
            self.refresh_tenant_sizes().await;
        }
        match user {
            None => VectorPlan::Global,
            Some(_) if self.tenants.text_index_for(user) => VectorPlan::Index,
            Some(_) => VectorPlan::Exact,
        }
    }

    /// Reads the users' sizes from the statistics now, and the form of the
    /// vector index (which `migrate` may switch). One caller reads, the
    /// others keep the last sizes meanwhile; a failure keeps them too, until
    /// the next refresh is due.
    pub async fn refresh_tenant_sizes(&self) {
        let Ok(_guard) = self.tenants.refreshing.try_lock() else {
            return;
        };
        let read = sqlx::query!(
            r#"SELECT greatest(c.reltuples, 0)::float8 AS "rows!",
                      s.most_common_vals::text::uuid[] AS users,
                      s.most_common_freqs AS shares,
                      (SELECT vector_index FROM embedding_state) AS vector_index
               FROM pg_class c
               LEFT JOIN pg_stats s ON s.schemaname = current_schema()
                    AND s.tablename = 'contexts' AND s.attname = 'user_id'
               WHERE c.oid = 'contexts'::regclass"#,
        )
        .fetch_one(&self.pool)
        .await;
        let big = match read {
            Ok(r) => {
                if let Some(index) = r.vector_index.as_deref().and_then(VectorIndex::parse) {
                    self.set_vector_index(index);
                }
                let limit = exact_limit(r.rows);
                let sizes: Vec<(Uuid, f64)> = r
                    .users
                    .unwrap_or_default()
                    .into_iter()
                    .zip(r.shares.unwrap_or_default())
                    .map(|(user, share)| (user, f64::from(share) * r.rows))
                    .collect();
                let over = |limit: f64| {
                    sizes
                        .iter()
                        .filter(|&&(_, rows)| rows > limit)
                        .map(|&(user, _)| user)
                        .collect::<HashSet<_>>()
                };
                (over(limit), over(TEXT_SCAN_ROWS))
            }
            Err(e) => {
                tracing::warn!(error = %e, "users' sizes not read: the last ones are kept");
                self.tenants.store(None);
                return;
            }
        };
        self.tenants.store(Some(big));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exact_limit_grows_with_the_square_root_of_the_table() {
        assert_eq!(exact_limit(0.0), EXACT_MIN_ROWS);
        assert_eq!(exact_limit(-1.0), EXACT_MIN_ROWS);
        assert_eq!(exact_limit(10_000.0), EXACT_MIN_ROWS);
        assert!((exact_limit(300_000.0) - 6_000.0).abs() < 1.0);
        assert!((exact_limit(1_000_000.0) - 10_954.5).abs() < 1.0);
    }
}
