//! The end of a task: its result, the memories a completed task leaves, its open steps closed, its
//! metrics, and the terminal commit (status, terminal event and memories together).

use std::time::Instant;

use serde_json::json;

use super::{FlowError, TaskFlow};
use crate::director::plan::Plan;
use crate::domain::{shorten, AgentKind, EventKind, MemoryKind, StepStatus, TaskStatus};
use crate::llm::models::TaskModels;
use crate::memory::{MemoryDraft, NewMemory};
use crate::messages::{StepKind, Verdict};
use crate::storage::records::{PendingEvent, TaskEnd};

/// Longest answer kept in a task's summary memory, in characters.
const SUMMARY_ANSWER_CHARS: usize = 600;

impl TaskFlow {
    /// Stores the end of the task: its status and terminal event, its open steps closed, its metrics, and
    /// for a completed task its memories, in one commit.
    pub(super) async fn finish(
        &mut self,
        outcome: Result<serde_json::Value, FlowError>,
        started: Instant,
    ) {
        let task_id = self.task_id;
        let (status, result, error, kind, data) = match outcome {
            Ok(result) => (
                TaskStatus::Completed,
                Some(result.clone()),
                None,
                EventKind::TaskCompleted,
                json!({ "result": result }),
            ),
            Err(FlowError::Cancelled) => {
                let (partial, stopped) = self.stop_everything();
                (
                    TaskStatus::Cancelled,
                    Some(partial),
                    None,
                    EventKind::TaskCancelled,
                    stopped,
                )
            }
            Err(error) => {
                let message = error.to_string();
                tracing::warn!(task_id = %task_id, error = %message, "task failed");
                (
                    TaskStatus::Failed,
                    None,
                    Some(message.clone()),
                    EventKind::TaskFailed,
                    json!({ "error": message }),
                )
            }
        };
        self.close_open_steps(status);
        // Counted before the end commits, so that whoever sees the terminal event sees the task counted. A
        // cancelled flow's task may have been failed by the writer for a storage error first (that failure
        // cancels the flow): it counts as failed, as it is stored.
        let counted = if status == TaskStatus::Cancelled {
            self.stored_status().await.unwrap_or(status)
        } else {
            status
        };
        let metrics = &self.deps.agent.metrics;
        metrics
            .tasks_total
            .with_label_values(&[counted.as_str()])
            .inc();
        metrics
            .task_duration
            .with_label_values(&[counted.as_str()])
            .observe(started.elapsed().as_secs_f64());
        // Only a completed task leaves memories (a cancelled one's partial result does not).
        let memories = match &result {
            Some(result) if status == TaskStatus::Completed => self.memories(result).await,
            _ => Vec::new(),
        };
        let stored = memories.len();
        let mut data = data;
        if stored > 0 {
            data["memories"] = json!(memories
                .iter()
                .map(|m| m.id.to_string())
                .collect::<Vec<_>>());
        }
        let end = TaskEnd {
            task_id,
            status,
            result,
            error,
            event: PendingEvent::now(task_id, kind, Some(AgentKind::Director), data),
            memories,
        };
        let commit_started = Instant::now();
        let committed = self.deps.agent.writer.finish_task(end).await;
        if stored > 0 {
            self.deps
                .agent
                .memory
                .count_task_write(commit_started, committed.is_ok());
        }
        if let Err(error) = committed {
            tracing::error!(task_id = %task_id, %error, "store the end of a task");
        }
    }

    /// The task's status as stored, when it has ended (a cancelled flow's task may have been failed by the
    /// writer first); `None` when it has not or could not be read.
    async fn stored_status(&self) -> Option<TaskStatus> {
        match self.deps.storage.task(self.task_id).await {
            Ok(Some(task)) if task.status.is_terminal() => Some(task.status),
            Ok(_) => None,
            Err(error) => {
                tracing::warn!(task_id = %self.task_id, %error, "read the status of a cancelled task");
                None
            }
        }
    }

    /// The result of a completed task: the answer (the last work step's output), the plan, each work
    /// step's output, QA's verdict, the code steps' test attempts, and the model that did the work.
    pub(super) fn result(
        &self,
        plan: &Plan,
        verdict: Option<Verdict>,
        llm: &TaskModels,
    ) -> serde_json::Value {
        let board = self.board.borrow();
        let work: Vec<_> = board
            .steps
            .iter()
            .filter(|step| step.kind == StepKind::Work)
            .map(work_step)
            .collect();
        let answer = board
            .steps
            .iter()
            .rev()
            .find(|step| step.kind == StepKind::Work)
            .and_then(|step| step.output.clone());
        // Rich results: the tables in the work steps' outputs (Markdown tables, figures, JSON rows), for
        // the dashboard's tables and charts and the CLI's aligned tables.
        let tables: Vec<serde_json::Value> = board
            .steps
            .iter()
            .filter(|step| step.kind == StepKind::Work)
            .flat_map(|step| {
                let idx = step.idx;
                crate::domain::tables::tables_in(step.output.as_deref().unwrap_or(""))
                    .into_iter()
                    .map(move |table| json!({ "step": idx, "table": table }))
            })
            .take(crate::domain::tables::MAX_TABLES * 2)
            .collect();
        json!({
            "answer": answer,
            "plan": plan.instructions(),
            "depends_on": plan.dependencies(),
            "steps": work,
            "tables": tables,
            "verdict": verdict,
            "tests": board.tests,
            "provider": llm.answering(AgentKind::Code).provider_name(),
            "model": llm.answering(AgentKind::Code).model_name(),
            "models": llm.describe(),
        })
    }

    /// The memories a completed task leaves: what its steps asked to keep and the Director's summary of
    /// the task, embedded in one batch. None for replays and forks (they would repeat the original's) or
    /// when memory is off; an embedding failure is logged and keeps none (all or nothing).
    async fn memories(&mut self, result: &serde_json::Value) -> Vec<NewMemory> {
        let memory = &self.deps.agent.memory;
        if !memory.enabled() || self.options.is_rerun() {
            return Vec::new();
        }
        let answer = result
            .get("answer")
            .and_then(|answer| answer.as_str())
            .unwrap_or("");
        let mut drafts = std::mem::take(&mut self.board.get_mut().drafts);
        drafts.push(MemoryDraft {
            kind: MemoryKind::Summary,
            content: format!(
                "Task: {}\nResult: {}",
                self.prompt,
                shorten(answer, SUMMARY_ANSWER_CHARS)
            ),
            detail: Some(json!({
                "verdict": result.get("verdict"),
                "plan": result.get("plan"),
            })),
            agent: AgentKind::Director,
            step: None,
        });
        let started = Instant::now();
        match memory.prepare(Some(self.task_id), drafts).await {
            Ok(memories) => memories,
            Err(error) => {
                tracing::warn!(task_id = %self.task_id, %error, "the task's memories could not be embedded; none are kept");
                memory.count_task_write(started, false);
                Vec::new()
            }
        }
    }

    /// What a cancelled task stops and keeps: its sandbox runs in progress are killed at once (their slots
    /// freed; the model's streams stop at their next token on the task's token, which has fired). Returns
    /// the partial result (the work steps that were done, with their outputs, and the code steps' test
    /// attempts) and the `task.cancelled` event's data: what was stopped (the steps running, the sandbox
    /// runs killed), what was kept (the steps done) and what never started.
    fn stop_everything(&mut self) -> (serde_json::Value, serde_json::Value) {
        let sandbox_runs = self.deps.agent.tools.sandbox().cancel_task(self.task_id);
        let board = self.board.get_mut();
        let with = |status: StepStatus| -> Vec<i32> {
            board
                .steps
                .iter()
                .filter(|step| step.status == status)
                .map(|step| step.idx)
                .collect()
        };
        let (running, done, pending) = (
            with(StepStatus::Running),
            with(StepStatus::Done),
            with(StepStatus::Pending),
        );
        let kept: Vec<serde_json::Value> = board
            .steps
            .iter()
            .filter(|step| step.kind == StepKind::Work && step.status == StepStatus::Done)
            .map(work_step)
            .collect();
        let partial = json!({
            "partial": true,
            "answer": null,
            "steps": kept,
            "tests": board.tests,
        });
        let data = json!({
            "stopped": { "steps": running, "sandbox_runs": sandbox_runs },
            "kept": { "steps": done },
            "not_started": pending,
        });
        (partial, data)
    }

    /// Steps still pending or running when the task ends are marked `cancelled` or `skipped`.
    fn close_open_steps(&mut self, status: TaskStatus) {
        let closing = if status == TaskStatus::Cancelled {
            StepStatus::Cancelled
        } else {
            StepStatus::Skipped
        };
        for position in 0..self.board.get_mut().steps.len() {
            let step = &mut self.board.get_mut().steps[position];
            if step.status.is_open() {
                step.status = closing;
                self.update_step(position, false);
            }
        }
    }
}

/// A work step as a result lists it.
fn work_step(step: &super::PlannedStep) -> serde_json::Value {
    json!({
        "idx": step.idx,
        "agent": step.agent,
        "instruction": step.instruction,
        "depends_on": step.depends_on,
        "output": step.output,
    })
}
