//! One build path for `main` and the tests: [`App::build`] connects and binds,
//! [`App::run`] serves until the shutdown future resolves, then drains.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::cache::Cache;
use crate::config::Settings;
use crate::embeddings::{Embedder, EmbedderState};
use crate::routes::{self, Admission};
use crate::service::Contexts;
use crate::state::{AppState, AuthState, Lifecycle, Shared};
use crate::store::{self, EmbeddingState, Store, StoreError};
use crate::{telemetry, workers};

/// How often the metrics recorder drains its histogram buffers.
const METRICS_UPKEEP: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot connect to the database (DATABASE_URL): {0}")]
    Database(#[from] StoreError),
    #[error(
        "the database is not migrated for this version: run `context-api migrate` first (or `serve --migrate`)"
    )]
    NotMigrated,
    #[error(
        "contexts.embedding_tsv was built with text-search configuration {column:?} but \
         TEXT_SEARCH_CONFIG is {configured:?}: set TEXT_SEARCH_CONFIG={column} or use a new database"
    )]
    TextSearchConfigMismatch { column: String, configured: String },
    #[error(
        "contexts.embedding has dimension {column} but EMBEDDING_DIM is {configured}: \
         set EMBEDDING_DIM={column}, or to change the model keep the old one as \
         EMBEDDING_PREVIOUS_SERVICE_URL and EMBEDDING_PREVIOUS_DIM={column} and run \
         `context-api reembed` (see docs/operations.md, Re-embedding)"
    )]
    DimensionMismatch { column: i32, configured: usize },
    #[error("migration failed: {0}")]
    Migrate(#[from] store::MigrateError),
    #[error("invalid REDIS_URL: {0}")]
    Redis(#[from] redis::RedisError),
    #[error(transparent)]
    Embeddings(#[from] crate::embeddings::BuildError),
    #[error("cannot listen on {addr} (BIND_ADDRESS): {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("server error: {0}")]
    Serve(std::io::Error),
}

pub struct App {
    listener: TcpListener,
    state: AppState,
    settings: Settings,
}

/// The service over its dependencies: connects to Postgres (checking the
/// schema: the vector dimension and the text-search configuration), and
/// prepares the cache and the embedding client.
pub async fn contexts(settings: &Settings, migrate: bool) -> Result<Contexts, StartupError> {
    let schema = settings.schema();
    let store = Store::connect(&settings.database, &schema)
        .await?
        .with_ef_search(settings.search.ef_search);
    if migrate {
        store::migrate(store.pool(), &schema).await?;
    }
    let previous_dim = settings.embeddings.previous.as_ref().map(|(_, d)| *d);
    let vectors = check_schema(&store, &schema, previous_dim).await?;
    store.check_replicas().await;
    let cache = Cache::new(&settings.redis)?;
    let embedder = Embedder::build(&settings.embeddings).await?;
    let previous = match settings.embeddings.previous() {
        Some(p) => Some(Embedder::build(&p).await?),
        None => None,
    };
    let contexts = Contexts::new(
        store,
        cache,
        embedder,
        settings.embeddings.timeout,
        settings.search.fusion,
    )
    .with_previous(previous);
    contexts.publish_vectors(vectors);
    Ok(contexts)
}

/// The database fits the settings: migrated, with the configured
/// text-search configuration, and vectors of the configured dimension, or of
/// `previous_dim` (a change of model), or a rebuild for the configured one
/// under way.
pub async fn check_schema(
    store: &Store,
    schema: &store::Schema,
    previous_dim: Option<usize>,
) -> Result<EmbeddingState, StartupError> {
    let dim = schema.dim;
    // The statement fails (no table, no column, no state row) until the
    // migrations ran; a database that cannot answer is another matter.
    let vectors = store.embedding_state().await.map_err(|e| match e {
        StoreError::Unavailable(_) => StartupError::Database(e),
        StoreError::Database(_) => StartupError::NotMigrated,
    })?;
    if let Some(asked) = schema.vector_index.filter(|&i| i != store.vector_index()) {
        tracing::warn!(
            vector_index = asked.as_str(),
            database = store.vector_index().as_str(),
            "VECTOR_INDEX differs from the database's index: `context-api migrate` switches it"
        );
    }
    if !store::has_vector_index(store.pool()).await.unwrap_or(true) {
        tracing::warn!(
            "the HNSW index is missing (a bulk import that did not finish?): searches over many \
             rows read them exactly; `context-api migrate` builds it"
        );
    }
    let column = vectors.active_dim;
    let previous_fits = previous_dim == Some(column);
    let rebuilding_for_it = vectors.target.as_ref().is_some_and(|t| t.dim == dim);
    if column != dim && !previous_fits && !rebuilding_for_it {
        return Err(StartupError::DimensionMismatch {
            column: column as i32,
            configured: dim,
        });
    }
    match store.column_text_search_config().await? {
        None => Err(StartupError::NotMigrated),
        Some(column) if column != schema.text_search_config => {
            Err(StartupError::TextSearchConfigMismatch {
                column,
                configured: schema.text_search_config.clone(),
            })
        }
        Some(_) => Ok(vectors),
    }
}

impl App {
    /// Connects to Postgres (checking the schema and its vector dimension),
    /// prepares the cache and embedding client, and binds the listener
    /// (port 0 picks a free port, as tests do).
    pub async fn build(settings: Settings, migrate: bool) -> Result<Self, StartupError> {
        let metrics = telemetry::metrics_handle();
        let contexts = contexts(&settings, migrate).await?;
        let listener = TcpListener::bind(settings.bind_address)
            .await
            .map_err(|source| StartupError::Bind {
                addr: settings.bind_address,
                source,
            })?;
        let state = AppState::new(Shared {
            contexts,
            auth: AuthState {
                keys: settings.auth.keys.clone().map(Arc::new),
            },
            lifecycle: Lifecycle::default(),
            metrics,
            redis_optional: settings.redis.optional,
            idempotency_ttl: settings.http.idempotency_ttl,
            request_timeout: settings.http.request_timeout,
        });
        Ok(Self {
            listener,
            state,
            settings,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until `shutdown` resolves. Then: /ready answers 503 "draining";
    /// after SHUTDOWN_DELAY_MS the listener closes; in-flight requests get up
    /// to SHUTDOWN_TIMEOUT_SECONDS; workers stop between batches; the pool closes.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartupError> {
        let App {
            listener,
            state,
            settings,
        } = self;
        let stop = CancellationToken::new();
        let contexts = state.contexts.clone();
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(workers::embed_pending(
            contexts.clone(),
            settings.embeddings.batch_size,
            settings.workers.embed_interval,
            settings.embeddings.claim_lease(),
            stop.clone(),
        ));
        tasks.spawn(workers::purge_expired(
            contexts.clone(),
            settings.workers.purge_batch_size,
            settings.workers.purge_interval,
            stop.clone(),
        ));
        tasks.spawn(watch_embedder(contexts.clone(), stop.clone()));
        tasks.spawn(watch_vectors(contexts.clone(), stop.clone()));
        if contexts.store().has_replicas() {
            let (store, token) = (contexts.store().clone(), stop.clone());
            tasks.spawn(async move {
                loop {
                    tokio::select! {
                        _ = token.cancelled() => break,
                        _ = tokio::time::sleep(store::REPLICA_CHECK_INTERVAL) => store.check_replicas().await,
                    }
                }
            });
        }
        {
            // Histogram samples wait in the recorder until a scrape or an
            // upkeep drains them: without this, a service nobody scrapes
            // grows by every request's latency sample.
            let (metrics, token) = (state.metrics.clone(), stop.clone());
            tasks.spawn(async move {
                loop {
                    tokio::select! {
                        _ = token.cancelled() => break,
                        _ = tokio::time::sleep(METRICS_UPKEEP) => metrics.run_upkeep(),
                    }
                }
            });
        }
        {
            let (cache, token) = (contexts.cache().clone(), stop.clone());
            tasks.spawn(async move { cache.listen(token).await });
            let (cache, token) = (contexts.cache().clone(), stop.clone());
            tasks.spawn(async move { cache.publish_barriers(token).await });
        }

        let admission = Admission::new(
            settings.http.max_concurrent_requests,
            settings.http.request_timeout,
        );
        let limits = routes::RateLimits {
            keys: state.auth.keys.clone(),
            cache: contexts.cache().clone(),
            admin_per_minute: settings.http.rate_limit_admin_per_minute,
            user_per_minute: settings.http.rate_limit_user_per_minute,
        };
        let router = routes::router(
            state.clone(),
            admission,
            limits,
            settings.http.max_body_bytes,
        );

        let lifecycle = state.lifecycle.clone();
        let drain_started = CancellationToken::new();
        let delay = settings.http.shutdown_delay;
        let signal = {
            let drain_started = drain_started.clone();
            async move {
                shutdown.await;
                lifecycle.start_draining();
                tracing::info!(
                    delay_ms = delay.as_millis() as u64,
                    "draining: /ready now answers 503"
                );
                tokio::time::sleep(delay).await;
                tracing::info!("no longer accepting connections; finishing in-flight requests");
                drain_started.cancel();
            }
        };

        tracing::info!(address = %listener.local_addr().map_err(StartupError::Serve)?, "listening");
        let server = axum::serve(listener, router).with_graceful_shutdown(signal);
        let grace = settings.http.shutdown_timeout;
        let forced = async {
            drain_started.cancelled().await;
            tokio::time::sleep(grace).await;
        };
        let served = tokio::select! {
            r = server => r.map_err(StartupError::Serve),
            _ = forced => {
                tracing::warn!(timeout_s = grace.as_secs(), "in-flight requests did not finish in time");
                Ok(())
            }
        };

        stop.cancel();
        let joined = tokio::time::timeout(Duration::from_secs(10), async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if joined.is_err() {
            tracing::warn!("background workers did not stop in time");
        }
        contexts.release_handovers().await;
        contexts.store().close().await;
        tracing::info!("shutdown complete");
        served
    }
}

/// How often a replica reads the state of the vectors (a rebuild's switch
/// and progress); a statement that meets a switch sooner reads it at once.
const VECTORS_REFRESH: Duration = Duration::from_secs(1);

/// Follows what the database says of its vectors: a rebuild, its progress,
/// its switch.
async fn watch_vectors(contexts: Contexts, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(VECTORS_REFRESH) => {}
        }
        match contexts.refresh_vectors().await {
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "cannot read the state of the vectors"),
        }
    }
}

/// Checks the embedding service until it answers (TEI loads its model before
/// opening its port), and again whenever it is not known to be ready; the
/// previous model's service as well, where one is configured.
async fn watch_embedder(contexts: Contexts, stop: CancellationToken) {
    loop {
        for embedder in std::iter::once(contexts.embedder()).chain(contexts.previous()) {
            if matches!(embedder.state(), EmbedderState::Ready { .. }) {
                // Known good: nothing to do until a call fails.
            } else if let Err(e) = embedder.check().await {
                tracing::debug!(error = %e, "embedding service not ready");
            } else {
                // It may have come back: wake the worker for rows left pending.
                contexts.wake_worker();
            }
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}
