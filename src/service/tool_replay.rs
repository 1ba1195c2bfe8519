//! Replaying a recorded tool call ([`Core::replay_tool_call`]): find its `tool.called` event, rebuild the
//! task's workspace as it was at that call from the `write_file` calls before it, run it again there
//! (`Tools::replay`), and return both outcomes compared. A `tool.replay` span, counted in
//! `troupe_tool_replays_total{tool,outcome}`.
//!
//! The log: a replay of an unfinished task's call (say, at a pause) is a `tool.replayed` event in its log;
//! a finished task's log is closed (the writer drops events after the terminal one, so the terminal event
//! stays last and the log stays the record of the run), so a replay of its calls is not logged there: the
//! answer says `logged: false`, and the span and the metric still have it.

use serde_json::json;
use tracing::Instrument;

use super::Core;
use crate::domain::{AgentKind, EventKind, TaskId};
use crate::sandbox::SandboxError;
use crate::storage::StorageError;
use crate::tools::replay::{workspace_at, RecordedCall, ReplayError, ToolReplay};
use crate::tools::ToolContext;

/// `troupe_tool_replays_total`'s outcomes.
pub const REPLAY_OUTCOMES: [&str; 3] = ["same", "different", "error"];

/// Longest call id accepted, in characters (ids are purposes with a suffix, such as `test.1.r2.stub`).
pub const MAX_CALL_ID_CHARS: usize = 128;

/// A replay and whether it went into the task's log.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Replayed {
    /// The replay beside the recording.
    #[serde(flatten)]
    pub replay: ToolReplay,
    /// Whether a `tool.replayed` event was sent to the task's log (the task was not finished).
    pub logged: bool,
}

/// A recorded tool call could not be replayed.
#[derive(Debug, thiserror::Error)]
pub enum ToolReplayError {
    /// No such task.
    #[error("task {0} does not exist")]
    TaskNotFound(TaskId),
    /// The task has no recorded tool call of this id (at this `seq`).
    #[error("task {id} has no recorded tool call '{call_id}'{at}")]
    CallNotFound {
        /// The task.
        id: TaskId,
        /// The call id asked for.
        call_id: String,
        /// `" at seq N"` when a seq was asked for, else empty.
        at: String,
    },
    /// The call cannot be replayed as recorded (see the message).
    #[error("tool call '{call_id}' cannot be replayed: {why}")]
    NotReplayable {
        /// The call.
        call_id: String,
        /// Why.
        why: String,
    },
    /// The sandbox the call needs is off or cannot run code here.
    #[error("the call needs the sandbox: {0}")]
    SandboxUnavailable(SandboxError),
    /// Every sandbox slot stayed busy.
    #[error("{0}")]
    SandboxBusy(SandboxError),
    /// A recorded event is malformed, or the temporary workspace could not be made.
    #[error("replay: {0}")]
    Internal(String),
    /// Reading failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl ToolReplayError {
    fn from_replay(call_id: &str, error: ReplayError) -> Self {
        match error {
            ReplayError::NotReplayable(why) => ToolReplayError::NotReplayable {
                call_id: call_id.to_owned(),
                why,
            },
            ReplayError::Sandbox(error @ SandboxError::Busy(_)) => {
                ToolReplayError::SandboxBusy(error)
            }
            ReplayError::Sandbox(error) => ToolReplayError::SandboxUnavailable(error),
            error @ (ReplayError::Corrupt { .. } | ReplayError::Workspace(_)) => {
                ToolReplayError::Internal(error.to_string())
            }
        }
    }
}

impl Core {
    /// Replays task `id`'s recorded tool call `call_id` (the last one of that id, or the one at `seq`):
    /// the same arguments in a fresh temporary workspace holding the task's files as they were at that
    /// call, compared with what was recorded (see the module documentation for what is logged).
    pub async fn replay_tool_call(
        &self,
        id: TaskId,
        call_id: &str,
        seq: Option<i64>,
    ) -> Result<Replayed, ToolReplayError> {
        let task = self
            .storage
            .task(id)
            .await?
            .ok_or(ToolReplayError::TaskNotFound(id))?;
        let calls = self
            .storage
            .events_of_kind(id, EventKind::ToolCalled, None, None)
            .await?;
        // A call id recurs when a resumed task ran a call again: the last one, unless a seq is named.
        let event = calls
            .iter()
            .rev()
            .filter(|event| event.data.get("call_id").and_then(|c| c.as_str()) == Some(call_id))
            .find(|event| seq.is_none_or(|seq| event.seq == seq))
            .ok_or_else(|| ToolReplayError::CallNotFound {
                id,
                call_id: call_id.to_owned(),
                at: seq.map(|seq| format!(" at seq {seq}")).unwrap_or_default(),
            })?;
        let tool = event
            .data
            .get("tool")
            .and_then(|tool| tool.as_str())
            .unwrap_or_default();
        let label = self.tools.label(tool);
        let span = tracing::info_span!(
            "tool.replay",
            otel.name = %format!("tool.replay {label}"),
            gen_ai.tool.name = label,
            gen_ai.tool.call.id = call_id,
            gen_ai.conversation.id = %id,
            troupe.tool.replay.seq = event.seq,
            troupe.tool.replay.outcome = tracing::field::Empty,
            error.type = tracing::field::Empty,
        );
        let result = async {
            let recorded = RecordedCall::from_event(event)
                .map_err(|e| ToolReplayError::from_replay(call_id, e))?;
            let files = workspace_at(&calls, event.seq)
                .map_err(|e| ToolReplayError::from_replay(call_id, e))?;
            let context = ToolContext {
                task_id: id,
                agent: recorded.agent.unwrap_or(AgentKind::Director),
                step: 0,
            };
            self.tools
                .replay(context, &recorded, files)
                .await
                .map_err(|e| ToolReplayError::from_replay(call_id, e))
        }
        .instrument(span.clone())
        .await;
        let outcome = match &result {
            Ok(replay) if replay.same => "same",
            Ok(_) => "different",
            Err(_) => "error",
        };
        span.record("troupe.tool.replay.outcome", outcome);
        if let Err(error) = &result {
            span.record("error.type", error_kind(error));
        }
        self.metrics
            .tool_replays
            .with_label_values(&[label, outcome])
            .inc();
        let replay = result?;
        let logged = !task.status.is_terminal();
        if logged {
            self.writer.emit(
                id,
                EventKind::ToolReplayed,
                None,
                json!({
                    "call_id": replay.call_id,
                    "seq": replay.seq,
                    "tool": replay.tool,
                    "same": replay.same,
                    "differences": replay.differences,
                    "workspace": replay.workspace,
                    "replayed": replay.replayed.outcome,
                    "status_was": task.status.as_str(),
                }),
            );
        }
        Ok(Replayed { replay, logged })
    }
}

/// A short stable name of a replay error, for the span.
fn error_kind(error: &ToolReplayError) -> &'static str {
    match error {
        ToolReplayError::TaskNotFound(_) | ToolReplayError::CallNotFound { .. } => "not_found",
        ToolReplayError::NotReplayable { .. } => "not_replayable",
        ToolReplayError::SandboxUnavailable(_) => "sandbox_unavailable",
        ToolReplayError::SandboxBusy(_) => "sandbox_busy",
        ToolReplayError::Internal(_) => "internal",
        ToolReplayError::Storage(_) => "storage",
    }
}
