//! [`Breakpoints`]: the registry of the debug mode's breakpoints that the pause engine asks at every
//! decision, tool call, step dispatch and model call ([`Breakpoints::matching`], in memory: no database read
//! per check), and the only way to set and remove them ([`Breakpoints::add`], [`Breakpoints::remove`]:
//! validated, stored through the writer, then applied here).
//!
//! Loaded from the database when the core starts ([`Breakpoints::load`]); changed afterwards only by this
//! process. Another process on the same database (a `troupe run` beside `troupe serve`) sees a change at its
//! next start, or when it calls [`Breakpoints::load`] again. Pausing itself is the Director's (the pause
//! engine calls [`Breakpoints::matching`] and, when it pauses, [`Breakpoints::record_hit`]).

use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use chrono::{SubsecRound, Utc};
use serde_json::json;
use tracing::Instrument;

use crate::domain::{
    Breakpoint, BreakpointError, BreakpointId, BreakpointSpec, EventKind, PausePoint, TaskId,
    TaskStatus,
};
use crate::storage::writer::Writer;
use crate::storage::{Storage, StorageError};
use crate::telemetry::metrics::Metrics;

/// Most breakpoints set at once (every check walks them all).
pub const MAX_BREAKPOINTS: usize = 1000;

/// A breakpoint could not be set or removed.
#[derive(Debug, thiserror::Error)]
pub enum BreakpointsError {
    /// The spec is invalid (the client's to fix).
    #[error(transparent)]
    Invalid(#[from] BreakpointError),
    /// `task_id` names no task.
    #[error("task {0} (task_id) does not exist")]
    TaskNotFound(TaskId),
    /// `task_id` names a task that has ended: nothing of it can pause any more.
    #[error("task {id} (task_id) is already {status}: a breakpoint can only be attached to a task that has not finished")]
    TaskFinished {
        /// The task.
        id: TaskId,
        /// Its terminal status.
        status: TaskStatus,
    },
    /// No breakpoint has this id.
    #[error("breakpoint {0} does not exist")]
    NotFound(BreakpointId),
    /// As many breakpoints as allowed are set.
    #[error("{max} breakpoints are set, the most allowed; remove one first")]
    TooMany {
        /// The limit.
        max: usize,
    },
    /// Reading or writing the database failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// The breakpoints in force in this process, in creation order; cheap to clone (every clone is the same
/// registry).
#[derive(Clone)]
pub struct Breakpoints {
    set: Arc<RwLock<Vec<Breakpoint>>>,
    /// Held by every change of the set that waits for the database (a load, an add, a removal, a task's
    /// deletion), so that a load reading the table while a change commits cannot put back what the change
    /// took out, or drop what it added. Checks never take it.
    changes: Arc<tokio::sync::Mutex<()>>,
    storage: Storage,
    writer: Writer,
    metrics: Metrics,
    /// The registered tools' names (what `tool` may name).
    tools: Arc<[&'static str]>,
    /// Several processes share the database (the Redis queue): a change is announced to every process
    /// (which reloads), and no `breakpoint.set`/`removed` event is written here, since the task may run
    /// on another process, the only one that may append to its log.
    shared: bool,
}

impl Breakpoints {
    /// An empty registry over `storage` (reads) and `writer` (writes); `tools` are the registered tools'
    /// names. [`Breakpoints::load`] fills it from the database.
    pub fn new(
        storage: Storage,
        writer: Writer,
        metrics: Metrics,
        tools: Vec<&'static str>,
    ) -> Breakpoints {
        metrics.breakpoints.set(0);
        Breakpoints {
            set: Arc::default(),
            changes: Arc::default(),
            storage,
            writer,
            metrics,
            tools: tools.into(),
            shared: false,
        }
    }

    /// Announces every change to the other processes on the database (see `control.rs`).
    pub(super) fn shared_between_processes(mut self) -> Self {
        self.shared = true;
        self
    }

    /// Tells the other processes the breakpoints changed (a shared registry only).
    async fn announce(&self) {
        if self.shared {
            if let Err(error) = super::control::Control::Breakpoints
                .send(&self.storage)
                .await
            {
                tracing::warn!(%error, "tell the other processes the breakpoints changed");
            }
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, Vec<Breakpoint>> {
        // A panic while holding the lock leaves a list that is still whole (every change is one push,
        // retain or assignment), so a poisoned lock is used as it is.
        self.set
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Vec<Breakpoint>> {
        self.set
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn count(&self, set: &[Breakpoint]) {
        self.metrics
            .breakpoints
            .set(i64::try_from(set.len()).unwrap_or(i64::MAX));
    }

    /// Replaces what the registry holds with the stored breakpoints; how many there are.
    pub async fn load(&self) -> Result<usize, StorageError> {
        let _changing = self.changes.lock().await;
        let stored = self.storage.breakpoints().await?;
        let mut set = self.write();
        *set = stored;
        self.count(&set);
        Ok(set.len())
    }

    /// The registered tools' names, as `tool` may give them.
    pub fn tools(&self) -> &[&'static str] {
        &self.tools
    }

    /// Validates `spec`, checks that a task it is attached to exists and has not finished, stores it (after
    /// the commit it is in force here) and returns it. A task-attached breakpoint is a `breakpoint.set` event
    /// in the task's log. A `breakpoint.add` span.
    pub async fn add(&self, spec: BreakpointSpec) -> Result<Breakpoint, BreakpointsError> {
        let span = tracing::info_span!(
            "breakpoint.add",
            troupe.breakpoint.on = spec.on.as_str(),
            troupe.breakpoint.id = tracing::field::Empty,
            gen_ai.conversation.id = tracing::field::Empty,
            error.type = tracing::field::Empty,
        );
        if let Some(task_id) = spec.task_id {
            span.record("gen_ai.conversation.id", tracing::field::display(task_id));
        }
        let result = self.add_inner(spec).instrument(span.clone()).await;
        match &result {
            Ok(breakpoint) => {
                span.record(
                    "troupe.breakpoint.id",
                    tracing::field::display(breakpoint.id),
                );
            }
            Err(error) => {
                span.record("error.type", error_type(error));
            }
        }
        result
    }

    async fn add_inner(&self, spec: BreakpointSpec) -> Result<Breakpoint, BreakpointsError> {
        spec.validate(&self.tools)?;
        if let Some(task_id) = spec.task_id {
            let task = self
                .storage
                .task(task_id)
                .await?
                .ok_or(BreakpointsError::TaskNotFound(task_id))?;
            if task.status.is_terminal() {
                return Err(BreakpointsError::TaskFinished {
                    id: task_id,
                    status: task.status,
                });
            }
        }
        let breakpoint = Breakpoint {
            id: BreakpointId::new(),
            spec,
            // The stored precision, so that what this returns and what a later read gives are equal.
            created_at: Utc::now().trunc_subsecs(6),
        };
        {
            let _changing = self.changes.lock().await;
            if self.read().len() >= MAX_BREAKPOINTS {
                return Err(BreakpointsError::TooMany {
                    max: MAX_BREAKPOINTS,
                });
            }
            self.writer.insert_breakpoint(breakpoint.clone()).await?;
            let mut set = self.write();
            // Creation order; two adds committing in the other order still sort by their time and id.
            let at = set.partition_point(|held| {
                (held.created_at, held.id) <= (breakpoint.created_at, breakpoint.id)
            });
            set.insert(at, breakpoint.clone());
            self.count(&set);
        }
        self.announce().await;
        if let Some(task_id) = breakpoint.spec.task_id.filter(|_| !self.shared) {
            // The task was unfinished a moment ago; should it end meanwhile in this process, the writer
            // drops the event (nothing follows a task's terminal event).
            self.writer.emit(
                task_id,
                EventKind::BreakpointSet,
                None,
                json!({ "breakpoint": breakpoint }),
            );
        }
        tracing::info!(breakpoint = %breakpoint.id, on = %breakpoint.spec.on, "breakpoint set");
        Ok(breakpoint)
    }

    /// Removes breakpoint `id` from the database and from force here; returns it. A task-attached one
    /// whose task has not finished is a `breakpoint.removed` event in the task's log. A `breakpoint.remove`
    /// span.
    pub async fn remove(&self, id: BreakpointId) -> Result<Breakpoint, BreakpointsError> {
        let span = tracing::info_span!(
            "breakpoint.remove",
            troupe.breakpoint.id = %id,
            error.type = tracing::field::Empty,
        );
        let result = self.remove_inner(id).instrument(span.clone()).await;
        if let Err(error) = &result {
            span.record("error.type", error_type(error));
        }
        result
    }

    async fn remove_inner(&self, id: BreakpointId) -> Result<Breakpoint, BreakpointsError> {
        // What it was (the registry's copy, else the stored row: one this process could not read).
        let known = match self.get(id) {
            Some(breakpoint) => breakpoint,
            None => self
                .storage
                .breakpoint(id)
                .await?
                .ok_or(BreakpointsError::NotFound(id))?,
        };
        {
            let _changing = self.changes.lock().await;
            let removed = self.writer.delete_breakpoint(id).await?;
            self.forget(|breakpoint| breakpoint.id == id);
            if !removed {
                // Removed meanwhile by someone else.
                return Err(BreakpointsError::NotFound(id));
            }
        }
        self.announce().await;
        if let Some(task_id) = known.spec.task_id.filter(|_| !self.shared) {
            let unfinished = self
                .storage
                .task(task_id)
                .await?
                .is_some_and(|task| !task.status.is_terminal());
            if unfinished {
                self.writer.emit(
                    task_id,
                    EventKind::BreakpointRemoved,
                    None,
                    json!({ "breakpoint": known }),
                );
            }
        }
        tracing::info!(breakpoint = %id, "breakpoint removed");
        Ok(known)
    }

    /// Takes out of force the breakpoints for which `gone` holds (already removed from the database).
    fn forget(&self, gone: impl Fn(&Breakpoint) -> bool) {
        let mut set = self.write();
        set.retain(|breakpoint| !gone(breakpoint));
        self.count(&set);
    }

    /// Takes task `task_id`'s breakpoints out of force: the task was deleted, and its breakpoints with it in
    /// the same commit (`DELETE /api/v1/tasks/{id}`, the retention sweep).
    pub async fn forget_task(&self, task_id: TaskId) {
        let _changing = self.changes.lock().await;
        self.forget(|breakpoint| breakpoint.spec.task_id == Some(task_id));
    }

    /// Every breakpoint in force, in creation order.
    pub fn list(&self) -> Vec<Breakpoint> {
        self.read().clone()
    }

    /// The breakpoints attached to task `task_id`, in creation order.
    pub fn attached_to(&self, task_id: TaskId) -> Vec<Breakpoint> {
        self.read()
            .iter()
            .filter(|breakpoint| breakpoint.spec.task_id == Some(task_id))
            .cloned()
            .collect()
    }

    /// Breakpoint `id`, if it is in force.
    pub fn get(&self, id: BreakpointId) -> Option<Breakpoint> {
        self.read()
            .iter()
            .find(|breakpoint| breakpoint.id == id)
            .cloned()
    }

    /// Whether any breakpoint is set (the pause engine may skip describing points when none is).
    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    /// The first breakpoint, in creation order, at which task `task_id` should pause at `point` (see
    /// [`Breakpoint::matches`]). In memory, under a read lock: no database read, no allocation unless one
    /// matches.
    pub fn matching(&self, task_id: TaskId, point: &PausePoint) -> Option<Breakpoint> {
        self.read()
            .iter()
            .find(|breakpoint| breakpoint.matches(task_id, point))
            .cloned()
    }

    /// Counts that `breakpoint` paused a task (`troupe_breakpoint_hits_total{on}`) and records it on the
    /// current span; the pause engine calls it when it pauses.
    pub fn record_hit(&self, breakpoint: &Breakpoint) {
        self.metrics
            .breakpoint_hits
            .with_label_values(&[breakpoint.spec.on.as_str()])
            .inc();
        tracing::info!(
            breakpoint = %breakpoint.id,
            on = %breakpoint.spec.on,
            when = breakpoint.spec.when.as_ref().map(ToString::to_string).as_deref(),
            "breakpoint hit"
        );
    }
}

/// A short stable name of `error`, for the span's `error.type`.
fn error_type(error: &BreakpointsError) -> &'static str {
    match error {
        BreakpointsError::Invalid(_) => "invalid",
        BreakpointsError::TaskNotFound(_) => "task_not_found",
        BreakpointsError::TaskFinished { .. } => "task_finished",
        BreakpointsError::NotFound(_) => "not_found",
        BreakpointsError::TooMany { .. } => "too_many",
        BreakpointsError::Storage(_) => "storage",
    }
}

impl crate::debug::BreakpointSource for Breakpoints {
    fn is_empty(&self) -> bool {
        Breakpoints::is_empty(self)
    }

    fn matching(&self, task_id: TaskId, point: &PausePoint) -> Option<Breakpoint> {
        Breakpoints::matching(self, task_id, point)
    }

    fn record_hit(&self, breakpoint: &Breakpoint) {
        Breakpoints::record_hit(self, breakpoint);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DatabaseSettings;
    use crate::domain::AgentKind;
    use crate::events::Hub;
    use crate::storage::records::{NewTask, PendingEvent};

    const TOOLS: [&str; 5] = [
        "run_code",
        "write_file",
        "read_file",
        "list_files",
        "search_memory",
    ];

    async fn registry(dir: &tempfile::TempDir) -> (Breakpoints, Storage, Writer, Metrics) {
        let storage = Storage::connect(&DatabaseSettings {
            url: format!("sqlite://{}/b.sqlite?mode=rwc", dir.path().display()),
            max_connections: 2,
            writer_queue: 64,
        })
        .await
        .unwrap();
        storage.migrate().await.unwrap();
        let metrics = Metrics::new().unwrap();
        let writer = Writer::spawn(storage.clone(), Hub::new(), metrics.clone());
        let breakpoints = Breakpoints::new(
            storage.clone(),
            writer.clone(),
            metrics.clone(),
            TOOLS.to_vec(),
        );
        (breakpoints, storage, writer, metrics)
    }

    fn spec(value: serde_json::Value) -> BreakpointSpec {
        serde_json::from_value(value).unwrap()
    }

    #[tokio::test]
    async fn breakpoints_are_stored_matched_in_creation_order_removed_and_loaded_again() {
        let dir = tempfile::tempdir().unwrap();
        let (breakpoints, storage, writer, metrics) = registry(&dir).await;
        let unsure = breakpoints
            .add(spec(
                json!({ "on": "decision", "kind": "assign_agent", "when": "confidence < 0.6" }),
            ))
            .await
            .unwrap();
        let every = breakpoints
            .add(spec(json!({ "on": "decision" })))
            .await
            .unwrap();
        assert_eq!(metrics.breakpoints.get(), 2);
        let task = TaskId::new();
        let low = PausePoint::decision(AgentKind::Director, "assign_agent")
            .at_step(1)
            .with("confidence", json!(0.3));
        let high = low.clone().with("confidence", json!(0.9));
        assert_eq!(
            breakpoints.matching(task, &low).map(|b| b.id),
            Some(unsure.id)
        );
        assert_eq!(
            breakpoints.matching(task, &high).map(|b| b.id),
            Some(every.id)
        );
        assert_eq!(
            breakpoints.matching(task, &PausePoint::step(AgentKind::Code, 1)),
            None
        );

        breakpoints.record_hit(&unsure);
        assert_eq!(
            metrics
                .breakpoint_hits
                .with_label_values(&["decision"])
                .get(),
            1
        );

        // Stored: a registry loaded from the database has both, in the same order and equal.
        let again = Breakpoints::new(
            storage.clone(),
            writer.clone(),
            Metrics::new().unwrap(),
            TOOLS.to_vec(),
        );
        assert_eq!(again.load().await.unwrap(), 2);
        assert_eq!(again.list(), vec![unsure.clone(), every.clone()]);

        let removed = breakpoints.remove(unsure.id).await.unwrap();
        assert_eq!(removed, unsure);
        assert_eq!(
            breakpoints.matching(task, &low).map(|b| b.id),
            Some(every.id)
        );
        assert!(matches!(
            breakpoints.remove(unsure.id).await,
            Err(BreakpointsError::NotFound(id)) if id == unsure.id
        ));
        assert_eq!(metrics.breakpoints.get(), 1);
        assert_eq!(again.load().await.unwrap(), 1);
        assert_eq!(storage.breakpoint(unsure.id).await.unwrap(), None);
        assert_eq!(storage.breakpoint(every.id).await.unwrap(), Some(every));
    }

    #[tokio::test]
    async fn bad_specs_and_tasks_that_cannot_take_one_store_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (breakpoints, storage, writer, _) = registry(&dir).await;
        let invalid = breakpoints
            .add(spec(json!({ "on": "tool", "tool": "rm_rf" })))
            .await
            .unwrap_err();
        assert!(
            matches!(
                invalid,
                BreakpointsError::Invalid(BreakpointError::UnknownTool { .. })
            ),
            "{invalid}"
        );
        let missing = TaskId::new();
        let error = breakpoints
            .add(spec(json!({ "on": "step", "task_id": missing })))
            .await
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            format!("task {missing} (task_id) does not exist")
        );

        // A finished task takes none; a queued one does, and its deletion takes the breakpoint with it.
        let queued = PendingEvent::now(missing, EventKind::TaskQueued, None, json!({}));
        let task = missing;
        writer
            .create_task(
                NewTask {
                    id: task,
                    prompt: "p".into(),
                    options: json!({}),
                    trace_id: "0".repeat(32),
                    replay_of: None,
                    created_at: queued.at,
                    owner: None,
                },
                queued,
            )
            .await
            .unwrap();
        let attached = breakpoints
            .add(spec(json!({ "on": "step", "task_id": task })))
            .await
            .unwrap();
        assert_eq!(breakpoints.attached_to(task), vec![attached.clone()]);
        writer
            .finish_task(crate::storage::records::TaskEnd {
                task_id: task,
                status: TaskStatus::Cancelled,
                result: None,
                error: None,
                event: PendingEvent::now(task, EventKind::TaskCancelled, None, json!({})),
                memories: Vec::new(),
            })
            .await
            .unwrap();
        let finished = breakpoints
            .add(spec(json!({ "on": "step", "task_id": task })))
            .await
            .unwrap_err();
        assert!(
            matches!(
                finished,
                BreakpointsError::TaskFinished {
                    status: TaskStatus::Cancelled,
                    ..
                }
            ),
            "{finished}"
        );
        // The log has the breakpoint.set event before the end, nothing after.
        let kinds: Vec<EventKind> = storage
            .events_after(task, 0)
            .await
            .unwrap()
            .into_iter()
            .map(|event| event.kind)
            .collect();
        assert_eq!(
            kinds,
            vec![
                EventKind::TaskQueued,
                EventKind::BreakpointSet,
                EventKind::TaskCancelled
            ]
        );

        assert!(writer.delete_task(task).await.unwrap());
        breakpoints.forget_task(task).await;
        assert!(breakpoints.list().is_empty());
        assert_eq!(storage.breakpoint(attached.id).await.unwrap(), None);
        assert_eq!(storage.breakpoints().await.unwrap(), Vec::new());
    }
}
