//! From ops to rows: [`Logs`] (what the writer knows of each task's log: its last `seq`, the token pieces it
//! holds back for coalescing, whether the task ended) turns a batch of [`WriteOp`]s into a [`Plan`], the rows
//! of each table and the events to publish after the commit. Planning touches no database; a plan that
//! fails to commit is undone ([`Logs::rollback`]) so its ops can be planned again one by one.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use chrono::{DateTime, SubsecRound, Utc};
use sea_orm::ActiveValue::Set;

use super::super::entities::{breakpoint, decision, event, experiment, llm_call, step, task};
use super::super::events::{is_piece, token_row, MAX_ROW_PIECES};
use super::super::memories::NewMemory;
use super::super::records::{PendingEvent, StepUpdate, WriteOp};
use super::super::{breakpoints, experiments};
use crate::domain::{BreakpointId, Event, EventKind, StepStatus, TaskId, TaskStatus};

/// How long a model call's pieces are held back at most before their row is written.
pub(super) const TOKEN_HOLD: Duration = Duration::from_millis(100);

/// How many ended tasks the writer remembers, to drop their late writes.
const CLOSED_MEMORY: usize = 100_000;

/// Why a task takes no more writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closed {
    /// It ended: its late events and task-row changes are dropped (other records still land).
    Ended,
    /// A write of it failed and the writer failed it: every later op of it is dropped.
    StorageFailed,
}

/// Consecutive `llm.token` pieces of one model call, held back to be stored as one row.
#[derive(Debug, Clone)]
struct Run {
    /// The pieces, with their `seq` (consecutive) and `at` (microseconds).
    pieces: Vec<Event>,
    /// When the first piece arrived.
    since: Instant,
}

impl Run {
    /// Whether `piece` belongs to the same call (same purpose, agent, trace and span).
    fn continues(&self, piece: &PendingEvent) -> bool {
        self.pieces.first().is_some_and(|first| {
            first.agent == piece.agent
                && first.span_id == piece.span_id
                && first.trace_id == piece.trace_id
                && first.data.get("purpose") == piece.data.get("purpose")
        })
    }
}

/// What a task's log looked like before a plan touched it.
struct Undo {
    next_seq: Option<i64>,
    run: Option<Run>,
}

/// The writer's knowledge of the logs it appends to.
#[derive(Default)]
pub(super) struct Logs {
    /// Last `seq` given per task with events in flight; dropped when the task ends.
    last_seq: HashMap<TaskId, i64>,
    /// Token pieces held back per task (at most one run per task: any other event of the task writes it).
    runs: HashMap<TaskId, Run>,
    /// Tasks that take no more writes (the most recent [`CLOSED_MEMORY`]).
    closed: HashMap<TaskId, Closed>,
    closed_order: VecDeque<TaskId>,
}

/// The final change of one task's row in a batch.
#[derive(Debug, Clone)]
pub(super) struct TaskRow {
    pub task_id: TaskId,
    /// The new status; `true`: only when the row is still running or paused.
    pub status: Option<(TaskStatus, bool)>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Result and error, set with `finished_at`.
    pub result: Option<serde_json::Value>,
    pub error: Option<String>,
}

/// A batch's rows, table by table, and what to do after its commit.
#[derive(Default)]
pub(super) struct Plan {
    pub tasks: Vec<task::ActiveModel>,
    pub steps: Vec<step::ActiveModel>,
    /// One per step (the last update wins; an earlier `started_at`/`finished_at` is kept).
    pub step_updates: Vec<StepUpdate>,
    step_index: HashMap<(TaskId, i32), usize>,
    pub llm_calls: Vec<llm_call::ActiveModel>,
    pub decisions: Vec<decision::ActiveModel>,
    pub memories: Vec<NewMemory>,
    pub events: Vec<event::ActiveModel>,
    /// One per task.
    pub task_rows: Vec<TaskRow>,
    task_index: HashMap<TaskId, usize>,
    pub memories_used: Vec<Vec<String>>,
    pub patterns: Vec<String>,
    pub deletes: Vec<TaskId>,
    pub breakpoints: Vec<breakpoint::ActiveModel>,
    pub breakpoint_deletes: Vec<BreakpointId>,
    /// Experiment rows to insert or replace (the last of each id in the batch).
    pub experiments: Vec<experiment::ActiveModel>,
    /// Committed events to publish, in `seq` order per task.
    pub published: Vec<Event>,
    /// Tasks whose end is in this plan.
    pub ended: HashSet<TaskId>,
    /// Tasks this plan fails for a storage error.
    pub failed: HashSet<TaskId>,
    undo: HashMap<TaskId, Undo>,
}

impl Plan {
    /// Whether the plan writes nothing.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
            && self.steps.is_empty()
            && self.step_updates.is_empty()
            && self.llm_calls.is_empty()
            && self.decisions.is_empty()
            && self.memories.is_empty()
            && self.events.is_empty()
            && self.task_rows.is_empty()
            && self.memories_used.is_empty()
            && self.patterns.is_empty()
            && self.deletes.is_empty()
            && self.breakpoints.is_empty()
            && self.breakpoint_deletes.is_empty()
            && self.experiments.is_empty()
    }

    /// Rows written, for the logs.
    pub fn rows(&self) -> usize {
        self.tasks.len()
            + self.steps.len()
            + self.step_updates.len()
            + self.llm_calls.len()
            + self.decisions.len()
            + self.memories.len()
            + self.events.len()
            + self.task_rows.len()
            + self.deletes.len()
            + self.breakpoints.len()
            + self.breakpoint_deletes.len()
            + self.experiments.len()
    }

    fn task_row(&mut self, task_id: TaskId) -> &mut TaskRow {
        let next = self.task_rows.len();
        let index = *self.task_index.entry(task_id).or_insert(next);
        if index == next {
            self.task_rows.push(TaskRow {
                task_id,
                status: None,
                started_at: None,
                finished_at: None,
                result: None,
                error: None,
            });
        }
        &mut self.task_rows[index]
    }

    fn update_step(&mut self, update: &StepUpdate) {
        let key = (update.task_id, update.idx);
        match self.step_index.get(&key) {
            Some(&index) => {
                let earlier = &self.step_updates[index];
                let mut merged = update.clone();
                merged.started_at = merged.started_at.or(earlier.started_at);
                merged.finished_at = merged.finished_at.or(earlier.finished_at);
                self.step_updates[index] = merged;
            }
            None => {
                self.step_index.insert(key, self.step_updates.len());
                self.step_updates.push(update.clone());
            }
        }
    }
}

impl Logs {
    /// Tasks that `ops` append events to whose last `seq` this writer does not know (created by another
    /// process, or before it started): their logs continue from the stored last `seq`.
    pub fn unknown(&self, ops: &[WriteOp]) -> Vec<TaskId> {
        let mut created = HashSet::new();
        let mut unknown = Vec::new();
        for op in ops {
            let task_id = match op {
                WriteOp::CreateTask { task, .. } => {
                    created.insert(task.id);
                    continue;
                }
                WriteOp::Event(_)
                | WriteOp::MarkRunning(_)
                | WriteOp::SetStatus { .. }
                | WriteOp::FinishTask { .. } => op.task_id(),
                _ => None,
            };
            let Some(task_id) = task_id else { continue };
            if !created.contains(&task_id)
                && !self.last_seq.contains_key(&task_id)
                && !self.closed.contains_key(&task_id)
                && !unknown.contains(&task_id)
            {
                unknown.push(task_id);
            }
        }
        unknown
    }

    /// Records the stored last `seq` of a task found by [`Logs::unknown`].
    pub fn learn(&mut self, task_id: TaskId, last_seq: i64) {
        self.last_seq.entry(task_id).or_insert(last_seq);
    }

    /// Adds `op` to `plan`.
    pub fn plan(&mut self, op: &WriteOp, plan: &mut Plan) {
        if let Some(task_id) = op.task_id() {
            if self.closed.get(&task_id) == Some(&Closed::StorageFailed)
                || plan.failed.contains(&task_id)
            {
                tracing::debug!(%task_id, "write of a task failed by storage dropped");
                return;
            }
            let is_token = matches!(op, WriteOp::Event(pending) if is_piece(pending));
            if !is_token && !matches!(op, WriteOp::DeleteTask { .. }) {
                // Its pieces first: they were sent before this op (so a recorded call has its tokens).
                self.write_run(task_id, plan);
            }
        }
        match op {
            WriteOp::CreateTask { task, event, .. } => {
                plan.tasks.push(task::ActiveModel {
                    id: Set(task.id.to_string()),
                    prompt: Set(task.prompt.clone()),
                    status: Set(TaskStatus::Queued.as_str().to_owned()),
                    options: Set(Some(task.options.clone())),
                    result: Set(None),
                    error: Set(None),
                    trace_id: Set(Some(task.trace_id.clone())),
                    replay_of: Set(task.replay_of.map(|id| id.to_string())),
                    created_at: Set(task.created_at),
                    started_at: Set(None),
                    finished_at: Set(None),
                    owner: Set(task.owner.clone()),
                });
                self.touch(task.id, plan);
                // No event yet: the task's first one gets seq 1.
                self.last_seq.insert(task.id, 0);
                self.push_event(event, plan);
            }
            WriteOp::Event(pending) => {
                if is_piece(pending) {
                    self.push_piece(pending, plan);
                } else {
                    self.push_event(pending, plan);
                }
            }
            WriteOp::MarkRunning(pending) => {
                if self.is_closed(pending.task_id, plan) {
                    return;
                }
                let row = plan.task_row(pending.task_id);
                row.status = Some((TaskStatus::Running, false));
                row.started_at = Some(pending.at.trunc_subsecs(6));
                self.push_event(pending, plan);
            }
            WriteOp::SetStatus { status, event } => {
                if self.is_closed(event.task_id, plan) {
                    return;
                }
                let row = plan.task_row(event.task_id);
                // Only a task still running or paused moves; one made so in this batch certainly is.
                let known = matches!(
                    row.status,
                    Some((TaskStatus::Running | TaskStatus::Paused, false))
                );
                row.status = Some((*status, !known));
                self.push_event(event, plan);
            }
            WriteOp::InsertSteps { task_id, steps } => {
                plan.steps.extend(steps.iter().map(|new| step::ActiveModel {
                    task_id: Set(task_id.to_string()),
                    idx: Set(new.idx),
                    agent: Set(new.agent.as_str().to_owned()),
                    instruction: Set(new.instruction.clone()),
                    depends_on: Set(Some(
                        serde_json::to_string(&new.depends_on).unwrap_or_else(|_| "[]".to_owned()),
                    )),
                    status: Set(StepStatus::Pending.as_str().to_owned()),
                    output: Set(None),
                    attempts: Set(0),
                    started_at: Set(None),
                    finished_at: Set(None),
                }));
            }
            WriteOp::UpdateStep(update) => plan.update_step(update),
            WriteOp::Decision(record) => plan.decisions.push(decision::ActiveModel {
                id: Set(uuid::Uuid::now_v7().to_string()),
                task_id: Set(record.task_id.to_string()),
                step_idx: Set(record.step_idx),
                kind: Set(record.kind.clone()),
                options: Set(record.options.clone()),
                chosen: Set(record.chosen.clone()),
                confidence: Set(record.confidence),
                reasoning: Set(record.reasoning.clone()),
                created_at: Set(Utc::now()),
            }),
            WriteOp::LlmCall(record) => plan.llm_calls.push(llm_call::ActiveModel {
                id: Set(uuid::Uuid::now_v7().to_string()),
                task_id: Set(record.task_id.to_string()),
                purpose: Set(record.purpose.clone()),
                agent: Set(record.agent.as_str().to_owned()),
                provider: Set(record.provider.clone()),
                model: Set(record.model.clone()),
                prompt: Set(record.prompt.clone()),
                output: Set(record.output.clone()),
                choice: Set(record.choice.clone()),
                prompt_tokens: Set(record.prompt_tokens),
                completion_tokens: Set(record.completion_tokens),
                duration_seconds: Set(record.duration_seconds),
                created_at: Set(Utc::now()),
                cost_usd: Set(record.cost_usd),
                request: Set(record.request.clone()),
                request_digest: Set(record.request_digest.clone()),
            }),
            WriteOp::FinishTask { end, .. } => {
                if self.is_closed(end.task_id, plan) {
                    // A late end (the task was ended already, e.g. failed by storage): it must not
                    // overwrite the first.
                    tracing::debug!(task_id = %end.task_id, status = %end.status, "end of an ended task dropped");
                    return;
                }
                let row = plan.task_row(end.task_id);
                row.status = Some((end.status, false));
                row.result = end.result.clone();
                row.error = end.error.clone();
                row.finished_at = Some(end.event.at.trunc_subsecs(6));
                plan.memories.extend(end.memories.iter().cloned());
                self.push_event(&end.event, plan);
                plan.ended.insert(end.task_id);
            }
            WriteOp::InsertMemories { memories, .. } => {
                plan.memories.extend(memories.iter().cloned());
            }
            WriteOp::DeleteTask { task_id, .. } => plan.deletes.push(*task_id),
            WriteOp::InsertBreakpoint { breakpoint, .. } => {
                plan.breakpoints.push(breakpoints::row(breakpoint));
            }
            WriteOp::DeleteBreakpoint { id, .. } => plan.breakpoint_deletes.push(*id),
            WriteOp::PutExperiment { experiment, .. } => {
                // The last row of an experiment in a batch is the one written (one upsert may not touch a
                // row twice).
                let id = experiment.id.to_string();
                plan.experiments
                    .retain(|row| row.id.as_ref().as_str() != id.as_str());
                plan.experiments.push(experiments::row(experiment));
            }
            WriteOp::MemoriesUsed(ids) => plan.memories_used.push(ids.clone()),
            WriteOp::PatternSucceeded(id) => plan.patterns.push(id.clone()),
            WriteOp::HandOff(task_id) => {
                self.last_seq.remove(task_id);
                self.runs.remove(task_id);
            }
            WriteOp::Flush(_) => {
                for task_id in self.held() {
                    self.write_run(task_id, plan);
                }
            }
        }
    }

    /// Fails task `task_id` for storage error `error` in `plan` (its own, alone): the pieces it held back
    /// are dropped, its row says failed with the error, and its terminal `task.failed` event says so
    /// (`data.storage: true`).
    pub fn plan_failure(&mut self, task_id: TaskId, error: &str, plan: &mut Plan) {
        self.touch(task_id, plan);
        if let Some(run) = self.runs.remove(&task_id) {
            // Given but never stored: the terminal event takes the first of them, so `seq` has no gap.
            if let Some(first) = run.pieces.first() {
                self.last_seq.insert(task_id, first.seq - 1);
            }
        }
        let pending = PendingEvent::now(
            task_id,
            EventKind::TaskFailed,
            Some(crate::domain::AgentKind::Director),
            serde_json::json!({ "error": error, "storage": true }),
        );
        let row = plan.task_row(task_id);
        row.status = Some((TaskStatus::Failed, false));
        row.error = Some(error.to_owned());
        row.finished_at = Some(pending.at.trunc_subsecs(6));
        self.push_event(&pending, plan);
        plan.ended.insert(task_id);
        plan.failed.insert(task_id);
    }

    /// Writes into `plan` the runs held back longer than [`TOKEN_HOLD`] at `now`.
    pub fn plan_due(&mut self, now: Instant, plan: &mut Plan) {
        for task_id in self.due(now) {
            self.write_run(task_id, plan);
        }
    }

    /// Tasks with a run held back longer than [`TOKEN_HOLD`] at `now`.
    pub fn due(&self, now: Instant) -> Vec<TaskId> {
        self.runs
            .iter()
            .filter(|(_, run)| now.duration_since(run.since) >= TOKEN_HOLD)
            .map(|(task_id, _)| *task_id)
            .collect()
    }

    /// Tasks with pieces held back.
    pub fn held(&self) -> Vec<TaskId> {
        self.runs.keys().copied().collect()
    }

    /// Whether task `task_id` has pieces held back.
    pub fn holds(&self, task_id: TaskId) -> bool {
        self.runs.contains_key(&task_id)
    }

    /// When the oldest held-back run is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.runs.values().map(|run| run.since + TOKEN_HOLD).min()
    }

    /// Writes task `task_id`'s held-back pieces (if any) into `plan`.
    pub fn write_run(&mut self, task_id: TaskId, plan: &mut Plan) {
        if !self.runs.contains_key(&task_id) {
            return;
        }
        self.touch(task_id, plan);
        let Some(run) = self.runs.remove(&task_id) else {
            return;
        };
        match run.pieces.as_slice() {
            [] => {}
            [single] => plan.events.push(single_row(single)),
            pieces => {
                if let Some(row) = token_row(pieces) {
                    plan.events.push(row);
                }
            }
        }
        plan.published.extend(run.pieces);
    }

    /// After `plan` committed: forgets ended tasks' sequence numbers and closes them.
    pub fn committed(&mut self, plan: &mut Plan) {
        plan.undo.clear();
        for task_id in plan.ended.drain() {
            self.last_seq.remove(&task_id);
            self.runs.remove(&task_id);
            let closed = if plan.failed.contains(&task_id) {
                Closed::StorageFailed
            } else {
                Closed::Ended
            };
            if self.closed.insert(task_id, closed).is_none() {
                self.closed_order.push_back(task_id);
            }
            if self.closed_order.len() > CLOSED_MEMORY {
                if let Some(oldest) = self.closed_order.pop_front() {
                    self.closed.remove(&oldest);
                }
            }
        }
    }

    /// After `plan` failed to commit: puts every log it touched back as it was.
    pub fn rollback(&mut self, plan: &mut Plan) {
        for (task_id, undo) in plan.undo.drain() {
            match undo.next_seq {
                Some(seq) => self.last_seq.insert(task_id, seq),
                None => self.last_seq.remove(&task_id),
            };
            match undo.run {
                Some(run) => self.runs.insert(task_id, run),
                None => self.runs.remove(&task_id),
            };
        }
    }

    /// Marks task `task_id` as taking no more writes without writing anything (its failure could not be
    /// stored either: it has no row).
    pub fn abandon(&mut self, task_id: TaskId) {
        self.last_seq.remove(&task_id);
        self.runs.remove(&task_id);
        if self.closed.insert(task_id, Closed::StorageFailed).is_none() {
            self.closed_order.push_back(task_id);
        }
    }

    fn is_closed(&self, task_id: TaskId, plan: &Plan) -> bool {
        self.closed.contains_key(&task_id) || plan.ended.contains(&task_id)
    }

    /// Remembers task `task_id`'s log as it was before `plan` first touched it.
    fn touch(&mut self, task_id: TaskId, plan: &mut Plan) {
        if let std::collections::hash_map::Entry::Vacant(entry) = plan.undo.entry(task_id) {
            entry.insert(Undo {
                next_seq: self.last_seq.get(&task_id).copied(),
                run: self.runs.get(&task_id).cloned(),
            });
        }
    }

    /// The next `seq` of task `task_id`'s log.
    fn give_seq(&mut self, task_id: TaskId, plan: &mut Plan) -> i64 {
        self.touch(task_id, plan);
        let seq = self.last_seq.get(&task_id).copied().unwrap_or(0) + 1;
        self.last_seq.insert(task_id, seq);
        seq
    }

    /// Gives `pending` its `seq` and queues its row (dropped after the end of its task).
    fn push_event(&mut self, pending: &PendingEvent, plan: &mut Plan) {
        if self.is_closed(pending.task_id, plan) {
            tracing::debug!(task_id = %pending.task_id, kind = %pending.kind, "event after the end of its task dropped");
            return;
        }
        let seq = self.give_seq(pending.task_id, plan);
        let event = stamped(pending, seq);
        plan.events.push(single_row(&event));
        plan.published.push(event);
    }

    /// Gives token piece `pending` its `seq` and holds it back in its task's run.
    fn push_piece(&mut self, pending: &PendingEvent, plan: &mut Plan) {
        let task_id = pending.task_id;
        if self.is_closed(task_id, plan) {
            tracing::debug!(%task_id, "token after the end of its task dropped");
            return;
        }
        if self
            .runs
            .get(&task_id)
            .is_some_and(|run| !run.continues(pending))
        {
            self.write_run(task_id, plan);
        }
        let seq = self.give_seq(task_id, plan);
        let piece = stamped(pending, seq);
        let run = self.runs.entry(task_id).or_insert_with(|| Run {
            pieces: Vec::with_capacity(MAX_ROW_PIECES),
            since: Instant::now(),
        });
        run.pieces.push(piece);
        if run.pieces.len() >= MAX_ROW_PIECES {
            self.write_run(task_id, plan);
        }
    }
}

/// The event `pending` becomes at `seq`, its time cut to microseconds (the stored precision, so that the
/// broadcast copy and a later read agree).
fn stamped(pending: &PendingEvent, seq: i64) -> Event {
    let mut event = pending.clone().with_seq(seq);
    event.at = event.at.trunc_subsecs(6);
    event
}

/// The row of an event that is one row (a lone token piece too).
fn single_row(piece: &Event) -> event::ActiveModel {
    event::ActiveModel {
        task_id: Set(piece.task_id.to_string()),
        seq: Set(piece.seq),
        at: Set(piece.at),
        kind: Set(piece.kind.as_str().to_owned()),
        agent: Set(piece.agent.map(|agent| agent.as_str().to_owned())),
        trace_id: Set(piece.trace_id.clone()),
        span_id: Set(piece.span_id.clone()),
        data: Set(piece.data.clone()),
        seq_end: Set(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::AgentKind;

    fn piece(task_id: TaskId, purpose: &str, n: usize) -> WriteOp {
        WriteOp::Event(PendingEvent::now(
            task_id,
            EventKind::LlmToken,
            Some(AgentKind::Code),
            serde_json::json!({ "purpose": purpose, "text": format!("t{n}") }),
        ))
    }

    fn update(task_id: TaskId, status: StepStatus, started: bool, finished: bool) -> WriteOp {
        WriteOp::UpdateStep(StepUpdate {
            task_id,
            idx: 1,
            agent: AgentKind::Code,
            status,
            output: None,
            attempts: 1,
            started_at: started.then(Utc::now),
            finished_at: finished.then(Utc::now),
        })
    }

    #[test]
    fn updates_of_one_step_in_a_batch_are_one_keeping_the_start() {
        let mut logs = Logs::default();
        let mut plan = Plan::default();
        let task_id = TaskId::new();
        logs.plan(
            &update(task_id, StepStatus::Running, true, false),
            &mut plan,
        );
        logs.plan(&update(task_id, StepStatus::Done, false, true), &mut plan);
        assert_eq!(plan.step_updates.len(), 1);
        let merged = &plan.step_updates[0];
        assert_eq!(merged.status, StepStatus::Done);
        assert!(merged.started_at.is_some() && merged.finished_at.is_some());
    }

    #[test]
    fn pieces_are_held_back_and_written_in_rows_of_at_most_sixty_four() {
        let mut logs = Logs::default();
        let mut plan = Plan::default();
        let task_id = TaskId::new();
        logs.learn(task_id, 0);
        for n in 0..100 {
            logs.plan(&piece(task_id, "plan", n), &mut plan);
        }
        // One full row written, 36 pieces held back.
        assert_eq!(plan.events.len(), 1);
        assert_eq!(plan.published.len(), MAX_ROW_PIECES);
        assert!(logs.holds(task_id));
        // Another call's piece writes the run first; an event of the task writes that one too.
        logs.plan(&piece(task_id, "work.1", 0), &mut plan);
        assert_eq!(plan.events.len(), 2);
        logs.plan(
            &WriteOp::Event(PendingEvent::now(
                task_id,
                EventKind::LlmFinished,
                None,
                serde_json::json!({}),
            )),
            &mut plan,
        );
        // The lone piece of work.1 is a plain row.
        assert_eq!(plan.events.len(), 4);
        assert!(!logs.holds(task_id));
        let seqs: Vec<i64> = plan.published.iter().map(|event| event.seq).collect();
        assert_eq!(seqs, (1..=102).collect::<Vec<_>>());

        // Undone, the log is as before the plan: nothing given, nothing held.
        logs.rollback(&mut plan);
        let mut again = Plan::default();
        logs.plan(&piece(task_id, "plan", 0), &mut again);
        assert_eq!(again.published.len(), 0);
        logs.write_run(task_id, &mut again);
        assert_eq!(again.published[0].seq, 1);
    }
}
