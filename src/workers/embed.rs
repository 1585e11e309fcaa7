use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::embeddings::EmbedError;
use crate::service::Contexts;
use crate::store::StoreError;

/// Fills embeddings of rows stored `pending` (TEI was down or slow at write
/// time). Rows are claimed with FOR UPDATE SKIP LOCKED inside a transaction
/// that lasts until their vectors are stored, so replicas never embed the
/// same row twice.
pub async fn embed_pending(
    contexts: Contexts,
    batch: usize,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut backoff = interval;
    loop {
        let outcome = tokio::select! {
            _ = stop.cancelled() => break,
            r = run_batch(&contexts, batch) => r,
        };
        let wait = match outcome {
            // A full batch: there may be more, go on at once.
            Ok(n) if n == batch => Duration::ZERO,
            Ok(_) => {
                backoff = interval;
                interval
            }
            Err(BatchError::Embed(e)) => {
                tracing::debug!(error = %e, "embedding worker: service not available, will retry");
                backoff = (backoff * 2).min(interval * 8);
                backoff
            }
            Err(BatchError::Store(e)) => {
                tracing::warn!(error = %e, "embedding worker: database error");
                backoff = (backoff * 2).min(interval * 8);
                backoff
            }
        };
        if wait.is_zero() {
            continue;
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = contexts.pending.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
    tracing::info!("embedding worker stopped");
}

#[derive(Debug, thiserror::Error)]
enum BatchError {
    #[error(transparent)]
    Embed(#[from] EmbedError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

async fn run_batch(contexts: &Contexts, batch: usize) -> Result<usize, BatchError> {
    let store = &contexts.store;
    let mut tx = store.begin().await?;
    let rows = store.claim_pending(&mut tx, batch as i64).await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let texts: Vec<String> = rows.iter().map(|r| r.text.clone()).collect();
    // On error the transaction rolls back when dropped and the rows stay pending.
    let vectors = contexts.embedder.embed(&texts).await?;
    let filled = rows.iter().map(|r| r.id).zip(vectors).collect();
    let updated = store.fill_embeddings(&mut tx, filled).await?;
    tx.commit().await.map_err(StoreError::from)?;
    for ctx in &updated {
        contexts.cache.put_context(ctx).await;
    }
    metrics::counter!("embeddings_filled_total").increment(updated.len() as u64);
    tracing::info!(count = updated.len(), "filled pending embeddings");
    Ok(rows.len())
}
