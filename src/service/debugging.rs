//! Debug mode through the core: a paused task's state (`GET /api/v1/tasks/{id}/state`) and a person's action
//! at its pause (`POST /api/v1/tasks/{id}/resume`). The pauses themselves are `debug.rs`'s.

use serde::Serialize;
use serde_json::{json, Value};

use super::{control, Core};
use crate::debug::{Action, ActionError};
use crate::domain::{shorten, EventKind, TaskId, TaskStatus};
use crate::memory::short_term::WindowEntry;
use crate::storage::{StepRecord, StorageError};

/// Most `memory.read` events `/state` shows (the first ones).
const MAX_STATE_READS: u64 = 200;

/// Longest workspace file content `/state` shows, in characters.
const STATE_FILE_CHARS: usize = 20_000;

/// What a task is doing and holds, as a person inspects it at a pause.
#[derive(Debug, Serialize)]
pub struct TaskState {
    /// The task.
    pub id: TaskId,
    /// Its status.
    pub status: TaskStatus,
    /// What it is paused on (none when it is not paused at a breakpoint): a [`crate::debug::Pending`], from the
    /// process that holds the pause (asked through `control.rs` when that is another one).
    pub pending: Option<Value>,
    /// The steps so far, as stored.
    pub steps: Vec<StepRecord>,
    /// Its short-term scratchpad (the plan and notes), by key.
    pub scratchpad: Value,
    /// Its conversation window (the earlier steps' outputs the next step is shown), oldest first.
    pub window: Vec<Value>,
    /// Why short-term memory could not be read, when it could not (the rest is still shown).
    pub short_term_error: Option<String>,
    /// The memories recalled so far: each `memory.read` event's data (query, every hit with its score,
    /// which were used), in log order.
    pub recalled: Vec<Value>,
    /// The files of its workspace (content cut at 20,000 characters, `truncated` says so).
    pub files: Vec<Value>,
    /// Why the workspace could not be read, when it could not.
    pub files_error: Option<String>,
}

/// An action at a pause that could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    /// No such task.
    #[error("task {0} does not exist")]
    NotFound(TaskId),
    /// The task is not paused at a breakpoint.
    #[error("task {id} is {status} and is not paused at a breakpoint")]
    NotPaused {
        /// The task.
        id: TaskId,
        /// Its status.
        status: TaskStatus,
    },
    /// The override does not fit what is pending.
    #[error("{0}")]
    InvalidOverride(String),
    /// The task is held by another process on the database (the Redis queue): its pause is that
    /// process's.
    #[error("{0}")]
    HeldElsewhere(String),
    /// Reading the task failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl Core {
    /// Task `id`'s state: what it is paused on, its steps, short-term memory, recalled memories and
    /// workspace files. `Ok(None)`: no such task.
    pub async fn task_state(&self, id: TaskId) -> Result<Option<TaskState>, StorageError> {
        let Some(task) = self.storage.task(id).await? else {
            return Ok(None);
        };
        let steps = self.storage.steps(id).await?;
        let recalled = self
            .storage
            .events_of_kind(id, EventKind::MemoryRead, None, Some(MAX_STATE_READS))
            .await?
            .into_iter()
            .map(|event| json!({ "seq": event.seq, "agent": event.agent, "read": event.data }))
            .collect();
        let short_term = self.memory.short_term();
        let (scratchpad, window, short_term_error) =
            match (short_term.scratchpad(id).await, short_term.window(id).await) {
                (Ok(scratchpad), Ok(window)) => (json!(scratchpad), window, None),
                (Err(error), _) | (_, Err(error)) => {
                    (json!({}), Vec::new(), Some(error.to_string()))
                }
            };
        let window = window
            .iter()
            .map(|entry| {
                serde_json::from_str::<WindowEntry>(entry)
                    .map_or_else(|_| json!(entry), |entry| json!(entry))
            })
            .collect();
        let (files, files_error) = match self.tools.workspaces().files(id).await {
            Ok(files) => (
                files
                    .into_iter()
                    .map(|file| {
                        let chars = file.content.chars().count();
                        json!({
                            "name": file.name,
                            "chars": chars,
                            "truncated": chars > STATE_FILE_CHARS,
                            "content": shorten(&file.content, STATE_FILE_CHARS),
                        })
                    })
                    .collect(),
                None,
            ),
            Err(error) => (Vec::new(), Some(error.to_string())),
        };
        let mut pending = self
            .tools
            .debugger()
            .pending(id)
            .and_then(|pending| serde_json::to_value(pending).ok());
        if pending.is_none()
            && task.status == TaskStatus::Paused
            && self.held_elsewhere(task.owner.as_deref()).await.is_some()
        {
            if let Some(control::Answer::Pending(there)) = self
                .asks
                .ask(&self.storage, id, control::Ask::Pending)
                .await?
            {
                pending = Some(there);
            }
        }
        Ok(Some(TaskState {
            id,
            status: task.status,
            pending,
            steps,
            scratchpad,
            window,
            short_term_error,
            recalled,
            files,
            files_error,
        }))
    }

    /// Takes a person's `action` at task `id`'s pause: 404 unknown task, 409 not paused, 400 an override
    /// that does not fit what is pending. An abort ends the task `cancelled`.
    pub async fn resume_task(&self, id: TaskId, action: Action) -> Result<(), ResumeError> {
        let task = self
            .storage
            .task(id)
            .await?
            .ok_or(ResumeError::NotFound(id))?;
        let abort = action == Action::Abort;
        match self.tools.debugger().answer(id, action.clone()) {
            Ok(()) => {}
            Err(ActionError::NotPaused(_)) => {
                if let Some(held) = self.held_elsewhere(task.owner.as_deref()).await {
                    // The process holding the pause takes the action (and, for an abort, cancels).
                    return match self.asks.ask(&self.storage, id, control::Ask::Resume(action)).await? {
                        Some(control::Answer::Done) => Ok(()),
                        Some(control::Answer::Refused(why)) => Err(ResumeError::InvalidOverride(why)),
                        _ if task.status == TaskStatus::Paused => Err(ResumeError::HeldElsewhere(format!(
                            "task {id} is paused on {held}, which did not take the action within {:?}",
                            control::ASK_TIMEOUT
                        ))),
                        _ => Err(ResumeError::NotPaused {
                            id,
                            status: task.status,
                        }),
                    };
                }
                return Err(ResumeError::NotPaused {
                    id,
                    status: task.status,
                });
            }
            Err(ActionError::InvalidOverride(why)) => {
                return Err(ResumeError::InvalidOverride(why))
            }
        }
        if abort {
            // The pause already ends the flow; the cancellation stops whatever else the task has running.
            let _ = self.cancel(id).await;
        }
        Ok(())
    }
}
