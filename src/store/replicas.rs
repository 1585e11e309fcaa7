//! Read replicas: streaming standbys of the primary. Searches and lists go
//! to a replica that is up and within the lag bound, in turn; everything
//! else (writes, and the reads that must see them: a GET, an update's read,
//! a delete's check) stays on the primary. A replica that fails a statement,
//! or falls behind, is skipped until its next check passes: its reads go to
//! the primary, and nothing fails.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

use super::{Store, StoreError};
use crate::config::DatabaseSettings;

/// How often each replica's state and lag are read.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub(super) struct Replica {
    pool: PgPool,
    usable: AtomicBool,
    /// Replay lag at the last check, in milliseconds (`u64::MAX`: down).
    lag_ms: AtomicU64,
}

#[derive(Debug, Default)]
pub(super) struct Replicas {
    list: Vec<Replica>,
    next: AtomicUsize,
    max_lag: Duration,
}

/// What `/ready` and the metrics say of one replica.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReplicaState {
    pub replica: usize,
    /// `ok`, `lagging` or `down`.
    pub state: &'static str,
    pub lag_ms: Option<u64>,
}

impl Replicas {
    pub(super) fn connect(settings: &DatabaseSettings) -> Result<Arc<Self>, StoreError> {
        let list = settings
            .replicas
            .iter()
            .map(|url| {
                let options: PgConnectOptions =
                    url.expose().parse().map_err(StoreError::Database)?;
                // Lazy: a replica that is down at startup is only skipped.
                let pool = PgPoolOptions::new()
                    .max_connections(settings.pool_max)
                    .min_connections(0)
                    .acquire_timeout(settings.acquire_timeout.min(Duration::from_secs(1)))
                    .connect_lazy_with(options.application_name("context-api-replica"));
                Ok(Replica {
                    pool,
                    usable: AtomicBool::new(false),
                    lag_ms: AtomicU64::new(u64::MAX),
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(Arc::new(Self {
            list,
            next: AtomicUsize::new(0),
            max_lag: settings.replica_max_lag,
        }))
    }

    /// A usable replica, in turn, with its index.
    fn pick(&self) -> Option<(usize, &PgPool)> {
        let n = self.list.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| (start + i) % n)
            .find(|&i| self.list[i].usable.load(Ordering::Relaxed))
            .map(|i| (i, &self.list[i].pool))
    }
}

impl Store {
    /// Runs `read` on a usable replica, else on the primary. A replica that
    /// cannot be reached, or that lacks the schema the primary has (behind a
    /// migration), is marked unusable and the read runs again on the primary.
    pub(super) async fn on_replica<'a, T, F, Fut>(&'a self, read: F) -> Result<T, StoreError>
    where
        F: Fn(&'a PgPool) -> Fut,
        Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
    {
        if let Some((i, pool)) = self.replicas.pick() {
            match read(pool).await {
                Ok(v) => {
                    metrics::counter!("db_reads_total", "pool" => "replica").increment(1);
                    return Ok(v);
                }
                Err(e) => {
                    let behind = lacks_the_schema(&e);
                    let e = StoreError::from(e);
                    if !behind && !matches!(e, StoreError::Unavailable(_)) {
                        return Err(e);
                    }
                    tracing::warn!(replica = i, error = %e, behind, "replica failed a read: reading from the primary");
                    self.replicas.list[i].usable.store(false, Ordering::Relaxed);
                    metrics::counter!("db_replica_fallbacks_total").increment(1);
                }
            }
        }
        let v = read(&self.pool).await?;
        if !self.replicas.list.is_empty() {
            metrics::counter!("db_reads_total", "pool" => "primary").increment(1);
        }
        Ok(v)
    }

    pub fn has_replicas(&self) -> bool {
        !self.replicas.list.is_empty()
    }

    /// Reads each replica's state and replay lag against the primary's
    /// position, and marks it usable when it is up and within the bound.
    pub async fn check_replicas(&self) {
        if self.replicas.list.is_empty() {
            return;
        }
        let primary_lsn: Option<String> = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
            .fetch_one(&self.pool)
            .await
            .ok();
        for (i, r) in self.replicas.list.iter().enumerate() {
            let lag = tokio::time::timeout(
                Duration::from_secs(2),
                replica_lag(&r.pool, primary_lsn.as_deref()),
            )
            .await
            .unwrap_or(Ok(None))
            .unwrap_or(None);
            let (usable, lag_ms) = match lag {
                Some(lag) => (
                    lag <= self.replicas.max_lag,
                    u64::try_from(lag.as_millis()).unwrap_or(u64::MAX - 1),
                ),
                None => (false, u64::MAX),
            };
            if usable != r.usable.load(Ordering::Relaxed) {
                tracing::info!(replica = i, usable, lag_ms, "replica state changed");
            }
            r.usable.store(usable, Ordering::Relaxed);
            r.lag_ms.store(lag_ms, Ordering::Relaxed);
            let label = i.to_string();
            metrics::gauge!("db_replica_up", "replica" => label.clone()).set(if lag.is_some() {
                1.0
            } else {
                0.0
            });
            metrics::gauge!("db_replica_usable", "replica" => label.clone()).set(if usable {
                1.0
            } else {
                0.0
            });
            if let Some(lag) = lag {
                metrics::gauge!("db_replica_lag_seconds", "replica" => label.clone())
                    .set(lag.as_secs_f64());
            }
            metrics::gauge!("db_replica_pool_connections", "replica" => label)
                .set(r.pool.size() as f64);
        }
    }

    /// Each replica's state as last checked.
    pub fn replica_states(&self) -> Vec<ReplicaState> {
        self.replicas
            .list
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let lag = r.lag_ms.load(Ordering::Relaxed);
                let state = match (lag, r.usable.load(Ordering::Relaxed)) {
                    (u64::MAX, _) => "down",
                    (_, true) => "ok",
                    (_, false) => "lagging",
                };
                ReplicaState {
                    replica: i,
                    state,
                    lag_ms: (lag != u64::MAX).then_some(lag),
                }
            })
            .collect()
    }

    pub(super) async fn close_replicas(&self) {
        for r in &self.replicas.list {
            r.pool.close().await;
        }
    }
}

/// The replica has not replayed a migration the primary has: the statement
/// names a table, column, function or type that is not there yet
/// (SQLSTATEs 42P01, 42703, 42883, 42704). The same read on the primary is
/// right, so the replica is skipped like one that is down, until the next
/// check finds it again.
fn lacks_the_schema(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db)
        if matches!(db.code().as_deref(), Some("42P01" | "42703" | "42883" | "42704")))
}

/// How far `pool`'s server is behind: zero once it has replayed the
/// primary's position read just before; otherwise the age of its last
/// replayed transaction. `None`: not reachable, or not a standby.
async fn replica_lag(
    pool: &PgPool,
    primary_lsn: Option<&str>,
) -> Result<Option<Duration>, sqlx::Error> {
    let (standby, caught_up, age): (bool, Option<bool>, Option<f64>) = sqlx::query_as(
        "SELECT pg_is_in_recovery(),
                pg_last_wal_replay_lsn() >= $1::pg_lsn,
                extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8",
    )
    .bind(primary_lsn)
    .fetch_one(pool)
    .await?;
    if !standby {
        return Ok(None);
    }
    Ok(Some(match (caught_up, age) {
        (Some(true), _) => Duration::ZERO,
        (_, Some(age)) => Duration::from_secs_f64(age.max(0.0)),
        (_, None) => Duration::MAX,
    }))
}
