//! The retention sweep: every `retention.sweep_seconds` (the first at start-up), finished tasks that ended
//! more than `retention.days` days ago are removed through the writer (the same one-commit delete as
//! `DELETE /api/v1/tasks/{id}`: events, steps, decisions, model calls and breakpoints go, memories stay), a bounded number
//! per sweep so that a first sweep over a large backlog does not hold the writer; counted in
//! `troupe_tasks_deleted_total{reason="retention"}`.

use std::time::Duration;

use tracing::Instrument;

use super::breakpoints::Breakpoints;
use crate::config::RetentionSettings;
use crate::storage::writer::Writer;
use crate::storage::{Storage, StorageError};
use crate::telemetry::metrics::Metrics;

/// Most tasks one sweep removes; the rest wait for the next sweep.
const MAX_PER_SWEEP: u64 = 10_000;
/// Tasks read and deleted at a time within a sweep.
const CHUNK: u64 = 256;

/// The sweeping task; stopped when dropped.
pub struct Sweeper(Option<tokio::task::JoinHandle<()>>);

impl Drop for Sweeper {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

/// What a sweep needs.
#[derive(Clone)]
pub struct Retention {
    settings: RetentionSettings,
    storage: Storage,
    writer: Writer,
    metrics: Metrics,
    breakpoints: Breakpoints,
}

impl Retention {
    /// The sweep over `storage` with `settings`, deleting through `writer`; a removed task's breakpoints
    /// go out of force in `breakpoints` too.
    pub fn new(
        settings: RetentionSettings,
        storage: Storage,
        writer: Writer,
        metrics: Metrics,
        breakpoints: Breakpoints,
    ) -> Self {
        Retention {
            settings,
            storage,
            writer,
            metrics,
            breakpoints,
        }
    }

    /// Starts sweeping (nothing when `retention.days` is 0).
    pub fn start(self) -> Sweeper {
        if self.settings.days == 0 {
            return Sweeper(None);
        }
        let period = Duration::from_secs(self.settings.sweep_seconds);
        Sweeper(Some(tokio::spawn(async move {
            let mut ticks = tokio::time::interval(period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                if let Err(error) = self.sweep().await {
                    tracing::error!(%error, "retention sweep failed; the next sweep tries again");
                }
            }
        })))
    }

    /// One sweep: removes up to [`MAX_PER_SWEEP`] finished tasks past retention; how many were removed.
    pub async fn sweep(&self) -> Result<u64, StorageError> {
        if self.settings.days == 0 {
            return Ok(0);
        }
        let span = tracing::info_span!(
            "retention.sweep",
            troupe.retention.days = self.settings.days,
            troupe.retention.removed = tracing::field::Empty
        );
        let removed = self.sweep_inner().instrument(span.clone()).await?;
        span.record("troupe.retention.removed", removed);
        if removed > 0 {
            tracing::info!(parent: &span, removed, days = self.settings.days, "removed finished tasks past retention");
        }
        Ok(removed)
    }

    async fn sweep_inner(&self) -> Result<u64, StorageError> {
        let cutoff = chrono::Utc::now() - chrono::Duration::days(i64::from(self.settings.days));
        let counter = self.metrics.tasks_deleted.with_label_values(&["retention"]);
        let mut removed = 0;
        while removed < MAX_PER_SWEEP {
            let ids = self.storage.finished_before(cutoff, CHUNK).await?;
            if ids.is_empty() {
                break;
            }
            let read = ids.len();
            let deletions = ids.iter().map(|id| self.writer.delete_task(*id));
            let mut gone = 0;
            for (id, deleted) in ids
                .iter()
                .zip(futures_util::future::join_all(deletions).await)
            {
                if deleted? {
                    self.breakpoints.forget_task(*id).await;
                    gone += 1;
                }
            }
            counter.inc_by(gone);
            removed += gone;
            if gone == 0 || (read as u64) < CHUNK {
                break;
            }
        }
        Ok(removed)
    }
}
