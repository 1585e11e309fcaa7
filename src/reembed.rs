//! `context-api reembed`: after a change of model (or of dimension), builds
//! every active context's vector with the configured model into a new column
//! and index while searches keep serving the old ones, then switches the two
//! in one transaction (see `store/rebuild.rs`).
//!
//! Resumable: the rows still to embed are the ones without a new vector, so
//! a run that stops is continued by the next. Batched to the provider's
//! limits by the [`Embedder`]. Progress goes to stderr (a bar on a terminal,
//! lines otherwise) and to the state row, where `/ready` and the metrics of
//! every replica read it.

use std::time::Duration;

use crate::embeddings::{model_aliases, same_model, EmbedError, Embedder};
use crate::store::{RebuildRow, Store, StoreError, Target};
use crate::transfer::Progress;

#[derive(Debug, thiserror::Error)]
pub enum ReembedError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the embedding service (EMBEDDING_*) cannot be used: {0}")]
    Embedding(EmbedError),
    #[error("the embedding service refuses the text of context {id}: {message}")]
    Rejected { id: uuid::Uuid, message: String },
    #[error("writes without the new model's vectors outpace the rebuild ({0} rows left after {PASSES} passes): give the serving replicas the new model")]
    Outpaced(i64),
}

/// What a run did.
#[derive(Debug, PartialEq, Eq)]
pub enum Reembedded {
    /// The stored vectors are already the configured model's.
    UpToDate,
    /// Rebuilt and switched: `rows` embedded by this run.
    Switched { rows: u64 },
}

/// Passes over the rows still to embed before the switch is given up.
const PASSES: usize = 50;

/// At most this many rows are embedded while writes wait at the switch.
const SWITCH_ROWS: i64 = 256;

/// How long an unreachable embedding service is waited for, per batch.
const PATIENCE: Duration = Duration::from_secs(300);

pub async fn reembed(
    store: &Store,
    embedder: &Embedder,
    batch: usize,
) -> Result<Reembedded, ReembedError> {
    let model = with_patience(|| embedder.model()).await?;
    let dim = embedder.dim();
    let state = store.embedding_state().await?;
    if state.target.is_none() && state.active_dim == dim {
        match &state.active_model {
            Some(m) if same_model(m, &model) => {
                if *m != model {
                    // The same model under its new name: recorded, nothing rebuilt.
                    store.record_active_model(&model).await?;
                }
                return Ok(Reembedded::UpToDate);
            }
            None if !store
                .has_vectors_not_of(&model, model_aliases(&model).as_deref())
                .await? =>
            {
                store.record_active_model(&model).await?;
                return Ok(Reembedded::UpToDate);
            }
            _ => {}
        }
    }
    let target = Target { model, dim };
    let state = store.begin_rebuild(&target).await?;
    tracing::info!(model = %target.model, dim, from_dim = state.active_dim, rows = state.rows_total, "rebuilding the vectors");
    let remaining = store.rebuild_remaining().await?;
    let mut done = (state.rows_total - remaining).max(0);
    let mut progress = Progress::new("reembed", "contexts", (done + remaining) as u64);
    progress.resume_at(done as u64);
    let mut rows_embedded = 0u64;
    for _ in 0..PASSES {
        let total = done + store.rebuild_remaining().await?;
        progress.set_total(total as u64);
        let mut after = None;
        loop {
            let rows = store.rebuild_batch(after, batch as i64).await?;
            let Some(last) = rows.last() else { break };
            after = Some(last.id);
            let vectors = embed_rows(embedder, &rows).await?;
            store.store_next(&rows, vectors, &target.model).await?;
            rows_embedded += rows.len() as u64;
            done = (done + rows.len() as i64).min(total);
            progress.advance(rows.len() as u64);
            store.rebuild_progress(done, total).await?;
        }
        // The rows written meanwhile without a new vector, then the switch.
        let Some(lock) = store.lock_for_switch(SWITCH_ROWS).await? else {
            continue;
        };
        let vectors = embed_rows(embedder, &lock.rows).await?;
        rows_embedded += lock.rows.len() as u64;
        lock.complete(store, vectors, &target.model).await?;
        progress.finish();
        tracing::info!(model = %target.model, dim, rows = rows_embedded, "switched to the new vectors");
        return Ok(Reembedded::Switched {
            rows: rows_embedded,
        });
    }
    Err(ReembedError::Outpaced(store.rebuild_remaining().await?))
}

/// The rows' vectors, waiting out an unreachable service; a text the
/// service refuses alone stops the run (naming its row).
async fn embed_rows(
    embedder: &Embedder,
    rows: &[RebuildRow],
) -> Result<Vec<Vec<f32>>, ReembedError> {
    let texts: Vec<String> = rows.iter().map(|r| r.text.clone()).collect();
    match with_patience(|| embedder.embed(&texts)).await {
        Err(ReembedError::Embedding(EmbedError::Rejected(_))) if rows.len() > 1 => {
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                let one = std::slice::from_ref(row);
                out.extend(Box::pin(embed_rows(embedder, one)).await?);
            }
            Ok(out)
        }
        Err(ReembedError::Embedding(EmbedError::Rejected(message))) => {
            Err(ReembedError::Rejected {
                id: rows[0].id,
                message,
            })
        }
        other => other,
    }
}

/// Retries `call` while the service is unavailable, for up to [`PATIENCE`].
async fn with_patience<T, F, Fut>(mut call: F) -> Result<T, ReembedError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, EmbedError>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut delay = Duration::from_millis(500);
    loop {
        match call().await {
            Ok(v) => return Ok(v),
            Err(EmbedError::Unavailable(e)) if tokio::time::Instant::now() + delay < deadline => {
                tracing::warn!(error = %e, "embedding service unavailable: waiting");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
            Err(e) => return Err(ReembedError::Embedding(e)),
        }
    }
}
