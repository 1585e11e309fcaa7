use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::service::{Contexts, ServiceError};

/// Fills embeddings of rows stored `pending` (TEI was down or slow at write
/// time), a batch at a time: see [`Contexts::fill_pending`] for how replicas
/// share the work without embedding a row twice.
pub async fn embed_pending(
    contexts: Contexts,
    batch: usize,
    interval: Duration,
    lease: Duration,
    stop: CancellationToken,
) {
    let mut backoff = interval;
    loop {
        let outcome = tokio::select! {
            _ = stop.cancelled() => break,
            r = contexts.fill_pending(batch, lease) => r,
        };
        let wait = match outcome {
            // A full batch: there may be more, go on at once.
            Ok(n) if n == batch => Duration::ZERO,
            Ok(_) => {
                backoff = interval;
                interval
            }
            Err(e) => {
                match e {
                    ServiceError::Embedding(e) => {
                        tracing::debug!(error = %e, "embedding worker: service not available, will retry")
                    }
                    e => tracing::warn!(error = %e, "embedding worker: database error"),
                }
                backoff = (backoff * 2).min(interval * 8);
                backoff
            }
        };
        if wait.is_zero() {
            continue;
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = contexts.pending_written() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
    tracing::info!("embedding worker stopped");
}
