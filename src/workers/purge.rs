use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::service::Contexts;

/// Deletes expired rows in batches. Readers stop seeing a context the moment it
/// expires; this only reclaims space. A transaction-scoped advisory lock lets
/// one replica at a time do it.
pub async fn purge_expired(
    contexts: Contexts,
    batch: i64,
    interval: Duration,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(interval) => {}
        }
        loop {
            if stop.is_cancelled() {
                break;
            }
            match contexts.purge_expired(batch).await {
                Ok(Some(n)) => {
                    metrics::counter!("contexts_purged_total").increment(n as u64);
                    if n > 0 {
                        tracing::info!(count = n, "purged expired contexts");
                    }
                    if (n as i64) < batch {
                        break;
                    }
                }
                Ok(None) => {
                    metrics::counter!("purge_lock_busy_total").increment(1);
                    tracing::debug!("another replica is purging");
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "purge failed");
                    break;
                }
            }
        }
    }
    tracing::info!("purge worker stopped");
}
