//! The background pruner that keeps the event log within its retention.

use std::{sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;

use super::Store;
use crate::metrics::Metrics;

/// Events deleted per transaction, so writers wait behind one small batch at most.
const BATCH: u32 = 1_000;

/// How much of the event log to keep.
#[derive(Clone, Copy, Debug)]
pub struct Retention {
    pub per_room: u32,
    pub max_age: Duration,
    pub interval: Duration,
}

/// Prunes the event log every `retention.interval` until `shutdown` is cancelled.
pub fn spawn_pruner(
    store: Arc<dyn Store>,
    retention: Retention,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut timer = tokio::time::interval(retention.interval);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = timer.tick() => prune_once(store.as_ref(), retention, &metrics, &shutdown).await,
            }
        }
    })
}

/// Deletes everything outside the retention, batch by batch.
pub async fn prune_once(
    store: &dyn Store,
    retention: Retention,
    metrics: &Metrics,
    shutdown: &CancellationToken,
) {
    let max_age = chrono::Duration::from_std(retention.max_age).unwrap_or(chrono::Duration::MAX);
    let cutoff = chrono::Utc::now().checked_sub_signed(max_age).map_or(i64::MIN, |t| t.timestamp_millis());
    let mut total = 0u64;
    while !shutdown.is_cancelled() {
        match store.prune_events(retention.per_room, cutoff, BATCH).await {
            Ok(deleted) => {
                total += deleted;
                if deleted < u64::from(BATCH) {
                    break;
                }
                // Lets queued writes through between batches.
                tokio::task::yield_now().await;
            }
            Err(error) => {
                tracing::warn!(%error, "pruning the event log failed; retrying at the next interval");
                break;
            }
        }
    }
    if total > 0 {
        metrics.pruned.fetch_add(total, std::sync::atomic::Ordering::Relaxed);
        tracing::debug!(deleted = total, "pruned the event log");
    }
}
