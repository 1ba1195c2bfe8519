//! The process's lease ([`LeaseKeeper`]: acquired at start, its heartbeat renewed every
//! `durability.heartbeat_seconds` by a tokio task, released on a clean stop) and taking over the unfinished
//! tasks of processes that died ([`Core::take_over_orphans`], at start-up and then every
//! `durability.lease_seconds`): each is claimed by a compare-and-set on its
//! owner, then resumed from its records (running or paused), started afresh (queued), or failed with the
//! reason when its records cannot be continued from. Resumed tasks take a place among the admitted tasks
//! like new ones.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use actix::Addr;

use super::Core;
use crate::config::DurabilitySettings;
use crate::director::Director;
use crate::domain::{AgentKind, EventKind, TaskId, TaskStatus};
use crate::messages::{Envelope, Resume, StartTask};
use crate::storage::records::{PendingEvent, TaskEnd};
use crate::storage::writer::Writer;
use crate::storage::{Lease, OrphanedTask, Storage, StorageError};
use crate::telemetry::metrics::Metrics;

/// What became of a task taken over at start-up: the `outcome` label of `troupe_tasks_resumed_total`.
pub const RESUME_OUTCOMES: [&str; 4] = ["resumed", "requeued", "unresumable", "interrupted"];

/// This process's lease and the task that renews it; dropping it stops the renewal (the lease then
/// expires), [`LeaseKeeper::release`] deletes it at once.
pub struct LeaseKeeper {
    lease: Lease,
    storage: Storage,
    heartbeat: tokio::task::JoinHandle<()>,
    /// The periodic look for orphans (see [`Core::start`]), stopped with the lease.
    watch: Option<tokio::task::JoinHandle<()>>,
}

impl LeaseKeeper {
    /// Acquires a lease and starts renewing it every `settings.heartbeat_seconds`.
    pub async fn start(
        storage: &Storage,
        settings: &DurabilitySettings,
    ) -> Result<LeaseKeeper, StorageError> {
        let lease = storage.acquire_lease().await?;
        let every = Duration::from_secs(settings.heartbeat_seconds.max(1));
        let renewing = storage.clone();
        let held = lease.clone();
        let heartbeat = tokio::spawn(async move {
            let mut interval = tokio::time::interval(every);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // The first tick is now: the lease was just written.
            interval.tick().await;
            loop {
                interval.tick().await;
                if let Err(error) = renewing.heartbeat(&held).await {
                    tracing::warn!(%error, lease = %held.id, "renew this process's lease");
                }
            }
        });
        tracing::info!(lease = %lease.id, pid = lease.pid, host = %lease.host, "lease acquired");
        Ok(LeaseKeeper {
            lease,
            storage: storage.clone(),
            heartbeat,
            watch: None,
        })
    }

    /// Keeps `watch` (the periodic take-over) alive as long as the lease, and stops it with the lease.
    pub(super) fn keep_watch(&mut self, watch: tokio::task::JoinHandle<()>) {
        if let Some(old) = self.watch.replace(watch) {
            old.abort();
        }
    }

    /// The lease.
    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// Stops renewing and deletes the lease: the tasks it still owns can be taken over at once.
    pub async fn release(&self) {
        self.heartbeat.abort();
        if let Some(watch) = &self.watch {
            watch.abort();
        }
        if let Err(error) = self.storage.release_lease(&self.lease.id).await {
            tracing::warn!(%error, lease = %self.lease.id, "release this process's lease");
        }
    }
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        self.heartbeat.abort();
        if let Some(watch) = &self.watch {
            watch.abort();
        }
    }
}

/// The tasks taken over at start-up, by outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TakenOver {
    /// Running or paused tasks resumed from their records.
    pub resumed: Vec<TaskId>,
    /// Queued tasks started afresh.
    pub requeued: Vec<TaskId>,
    /// Tasks failed because their records cannot be continued from, or resuming is off.
    pub failed: Vec<TaskId>,
}

/// What taking over orphans needs: clones of the core's parts, so that it also runs on a timer.
#[derive(Clone)]
pub(super) struct TakeOver {
    me: String,
    durability: DurabilitySettings,
    storage: Storage,
    writer: Writer,
    metrics: Metrics,
    admission: Arc<tokio::sync::Semaphore>,
    director: Addr<Director>,
}

impl Core {
    /// Claims the unfinished tasks of processes whose lease expired (or of no process) and resumes them
    /// (`durability.resume`) or fails them (`interrupted`). A task whose owner is alive is never touched;
    /// a task another process claimed first is left to it. A core without a lease takes over nothing.
    /// [`Core::start`] does this once before it returns and then every `durability.lease_seconds`.
    pub async fn take_over_orphans(&self) -> Result<TakenOver, StorageError> {
        match self.take_over() {
            Some(take_over) => take_over.run().await,
            None => Ok(TakenOver::default()),
        }
    }

    pub(super) fn take_over(&self) -> Option<TakeOver> {
        Some(TakeOver {
            me: self.lease.as_ref()?.lease().id.clone(),
            durability: self.settings.durability.clone(),
            storage: self.storage.clone(),
            writer: self.writer.clone(),
            metrics: self.metrics.clone(),
            admission: Arc::clone(&self.admission),
            director: self.director.clone(),
        })
    }
}

impl TakeOver {
    /// Every `durability.lease_seconds`, takes over what a process that died since left (a server
    /// restarted at once after a crash finds its predecessor's lease still alive at start-up).
    pub(super) fn watch(self) -> tokio::task::JoinHandle<()> {
        let every = Duration::from_secs(self.durability.lease_seconds.max(1));
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(every);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            interval.tick().await;
            loop {
                interval.tick().await;
                if let Err(error) = self.run().await {
                    tracing::warn!(%error, "look for the tasks of processes that died");
                }
            }
        })
    }

    /// See [`Core::take_over_orphans`].
    pub(super) async fn run(&self) -> Result<TakenOver, StorageError> {
        let mut taken = TakenOver::default();
        let me = self.me.as_str();
        let durability = &self.durability;
        let orphans = self
            .storage
            .orphaned_tasks(me, Duration::from_secs(durability.lease_seconds))
            .await?;
        let mut starts = Vec::new();
        for orphan in orphans {
            if !self
                .storage
                .claim_task(orphan.id, orphan.owner.as_deref(), me)
                .await?
            {
                continue;
            }
            if !durability.resume {
                self.fail_at_start(
                    orphan.id,
                    "interrupted: the process running the task stopped, and durability.resume is off",
                )
                .await;
                self.count_taken_over("interrupted");
                taken.failed.push(orphan.id);
                continue;
            }
            match start_for(&self.storage, &orphan).await {
                Ok(start) => {
                    if start.resume.is_some() {
                        self.count_taken_over("resumed");
                        taken.resumed.push(orphan.id);
                    } else {
                        self.count_taken_over("requeued");
                        taken.requeued.push(orphan.id);
                    }
                    starts.push((orphan.id, start));
                }
                Err(reason) => {
                    tracing::warn!(task_id = %orphan.id, %reason, "a task taken over cannot be resumed");
                    self.fail_at_start(
                        orphan.id,
                        &format!("cannot resume the task after its process died: {reason}"),
                    )
                    .await;
                    self.count_taken_over("unresumable");
                    taken.failed.push(orphan.id);
                }
            }
        }
        if !starts.is_empty() {
            tracing::warn!(
                resumed = taken.resumed.len(),
                requeued = taken.requeued.len(),
                "took over the unfinished tasks of a process that died"
            );
        }
        // Each task waits for a place among the admitted tasks, like a new one; the waiting is not the
        // start-up's (a full house must not hold the server back).
        let admission = Arc::clone(&self.admission);
        let director = self.director.clone();
        let depth = self
            .metrics
            .mailbox_depth
            .with_label_values(&[AgentKind::Director.as_str()]);
        if !starts.is_empty() {
            tokio::spawn(async move {
                for (id, mut start) in starts {
                    let Ok(permit) = Arc::clone(&admission).acquire_owned().await else {
                        return;
                    };
                    start.admission = Some(permit);
                    // do_send: should the Director be gone (shutdown), the task stays claimed by a lease
                    // that expires, and the next process takes it over again.
                    director.do_send(Envelope::new(id, start).counted(depth.clone()));
                }
            });
        }
        Ok(taken)
    }
    /// Fails a task taken over at start-up with `error` (its terminal event and status in one commit).
    async fn fail_at_start(&self, id: TaskId, error: &str) {
        let ended = end_unstarted(&self.writer, &self.metrics, id, TaskStatus::Failed, error).await;
        if let Err(store) = ended {
            tracing::error!(task_id = %id, error = %store, "store the failure of a task taken over");
        }
    }

    fn count_taken_over(&self, outcome: &str) {
        self.metrics
            .tasks_resumed
            .with_label_values(&[outcome])
            .inc();
    }
}

/// The `StartTask` that continues `orphan`: with its records for a task that had started, plain for a
/// queued one. `Err` says why it cannot be resumed.
pub(super) async fn start_for(
    storage: &Storage,
    orphan: &OrphanedTask,
) -> Result<StartTask, String> {
    let task = storage
        .task(orphan.id)
        .await
        .map_err(|error| error.to_string())?
        .ok_or_else(|| "the task's row is gone".to_owned())?;
    let resume = if orphan.status == TaskStatus::Queued {
        None
    } else {
        let records = storage
            .resume_records(orphan.id)
            .await
            .map_err(|error| error.to_string())?;
        crate::director::flow::resumable(&records)?;
        Some(Resume {
            owner_was: orphan.owner.clone(),
            status_was: orphan.status,
            records,
        })
    };
    Ok(StartTask {
        prompt: task.prompt,
        options: task.options,
        admission: None,
        resume,
    })
}

/// Ends task `id`, which never ran (taken over and not resumable, or refused before it started), as `status`
/// (failed or cancelled) for `reason`: its terminal event and status in one commit, counted like any end.
pub(super) async fn end_unstarted(
    writer: &Writer,
    metrics: &Metrics,
    id: TaskId,
    status: TaskStatus,
    reason: &str,
) -> Result<(), StorageError> {
    metrics
        .tasks_total
        .with_label_values(&[status.as_str()])
        .inc();
    let (kind, data) = match status {
        TaskStatus::Cancelled => (EventKind::TaskCancelled, json!({ "reason": reason })),
        _ => (EventKind::TaskFailed, json!({ "error": reason })),
    };
    writer
        .finish_task(TaskEnd {
            task_id: id,
            status,
            result: None,
            error: Some(reason.to_owned()),
            event: PendingEvent::now(id, kind, Some(AgentKind::Director), data),
            memories: Vec::new(),
        })
        .await
}
