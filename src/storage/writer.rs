//! The single writer: every database write of a running system, applied in batches.
//!
//! Writers send [`WriteOp`]s (see `records.rs`) down one channel; one task takes whatever has queued up (up to
//! [`MAX_BATCH`]), applies it in one transaction, and after the commit hands the batch's events to its
//! [`Publish`] (the event hub) and answers those waiting. Consequences, relied on elsewhere:
//! - each task's events get `seq` 1, 2, 3, ... in the order they were sent;
//! - an event is broadcast only once it is durable;
//! - a task's terminal status and its terminal event commit together (never one without the other);
//! - under load, batches grow and the cost of a commit is shared by many events.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use chrono::{SubsecRound, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, DatabaseTransaction, EntityTrait, QueryFilter, TransactionTrait,
};
use tokio::sync::{mpsc, oneshot};

use super::entities::{decision, event, llm_call, step, task};
use super::events::{event_row, last_seq};
use super::memories::{insert_memories, mark_succeeded, mark_used, NewMemory};
use super::records::{NewTask, PendingEvent, TaskEnd, WriteOp};
use super::{Storage, StorageError};
use crate::domain::{AgentKind, Event, EventKind, StepStatus, TaskId, TaskStatus};
use crate::telemetry::metrics::Metrics;

/// Most operations applied in one transaction.
pub const MAX_BATCH: usize = 1024;

/// Where the writer hands each committed event (the event hub of `events`, which this layer does not
/// name): called after the commit, in `seq` order per task.
pub trait Publish: Send + 'static {
    /// Publishes one committed event.
    fn publish(&self, event: Arc<Event>);
}

impl<F: Fn(Arc<Event>) + Send + 'static> Publish for F {
    fn publish(&self, event: Arc<Event>) {
        self(event);
    }
}

/// Sends writes to the writer task: the one write path for every record of a running system (tasks,
/// steps, decisions, model calls, memories and events). Cheap to clone.
#[derive(Clone)]
pub struct Writer {
    ops: mpsc::UnboundedSender<WriteOp>,
}

impl Writer {
    /// Starts the writer task over `storage`; each committed event goes to `publish`.
    pub fn spawn(storage: Storage, publish: impl Publish, metrics: Metrics) -> Writer {
        let (ops, queue) = mpsc::unbounded_channel();
        let task = WriterTask {
            storage,
            publish: Box::new(publish),
            metrics,
            queue,
            next_seq: HashMap::new(),
            closed: HashSet::new(),
            closed_order: VecDeque::new(),
        };
        tokio::spawn(task.run());
        Writer { ops }
    }

    /// Queues a write. A write sent while the application shuts down is dropped (logged).
    pub fn send(&self, op: WriteOp) {
        if self.ops.send(op).is_err() {
            tracing::warn!("storage writer stopped; a write was dropped");
        }
    }

    /// Appends an event stamped now, with the current span's trace (fire and forget: it becomes visible once
    /// its batch commits).
    pub fn emit(
        &self,
        task_id: TaskId,
        kind: EventKind,
        agent: Option<AgentKind>,
        data: serde_json::Value,
    ) {
        self.send(WriteOp::Event(PendingEvent::now(
            task_id, kind, agent, data,
        )));
    }

    /// Stores a new task with its first event and waits for the commit.
    pub async fn create_task(
        &self,
        task: NewTask,
        event: PendingEvent,
    ) -> Result<(), StorageError> {
        let (reply, committed) = oneshot::channel();
        self.send(WriteOp::CreateTask { task, event, reply });
        committed.await.map_err(|_| StorageError::WriterStopped)?
    }

    /// Ends a task and waits for the commit.
    pub async fn finish_task(&self, end: TaskEnd) -> Result<(), StorageError> {
        let (reply, committed) = oneshot::channel();
        self.send(WriteOp::FinishTask {
            end,
            reply: Some(reply),
        });
        committed.await.map_err(|_| StorageError::WriterStopped)?
    }

    /// Stores memories and waits for the commit.
    pub async fn insert_memories(&self, memories: Vec<NewMemory>) -> Result<(), StorageError> {
        let (reply, committed) = oneshot::channel();
        self.send(WriteOp::InsertMemories { memories, reply });
        committed.await.map_err(|_| StorageError::WriterStopped)?
    }

    /// Removes finished task `task_id` with its events, steps, decisions and model calls (memories stay);
    /// answered after the commit: false when no finished task has that id.
    pub async fn delete_task(&self, task_id: TaskId) -> Result<bool, StorageError> {
        let (reply, answer) = oneshot::channel();
        self.send(WriteOp::DeleteTask { task_id, reply });
        answer.await.map_err(|_| StorageError::WriterStopped)?
    }

    /// Waits until everything sent so far is committed.
    pub async fn flush(&self) -> Result<(), StorageError> {
        let (reply, done) = oneshot::channel();
        self.send(WriteOp::Flush(reply));
        done.await.map_err(|_| StorageError::WriterStopped)
    }
}

struct WriterTask {
    storage: Storage,
    publish: Box<dyn Publish>,
    metrics: Metrics,
    queue: mpsc::UnboundedReceiver<WriteOp>,
    /// Last `seq` used per task with events in flight; dropped when the task ends.
    next_seq: HashMap<TaskId, i64>,
    /// Tasks ended by this writer (the most recent [`CLOSED_MEMORY`]): late events for them are dropped,
    /// so a terminal event is always the last of its log.
    closed: HashSet<TaskId>,
    closed_order: VecDeque<TaskId>,
}

/// How many ended tasks the writer remembers to drop their late events.
const CLOSED_MEMORY: usize = 100_000;

/// What a committed batch must do afterwards.
#[derive(Default)]
struct Outcome {
    events: Vec<Event>,
    replies: Vec<oneshot::Sender<Result<(), StorageError>>>,
    flushes: Vec<oneshot::Sender<()>>,
    ended: Vec<TaskId>,
    /// Deletions waiting for the commit, with whether a finished task was removed.
    deletions: Vec<(oneshot::Sender<Result<bool, StorageError>>, bool)>,
}

impl WriterTask {
    async fn run(mut self) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while let Some(first) = self.queue.recv().await {
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match self.queue.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            self.apply(&mut batch).await;
        }
    }

    async fn apply(&mut self, batch: &mut Vec<WriteOp>) {
        let seq_before = self.next_seq.clone();
        let mut outcome = Outcome::default();
        let started = std::time::Instant::now();
        let result = self.write(batch, &mut outcome).await;
        self.metrics
            .store_commit_duration
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(()) => {
                for reply in outcome.replies {
                    let _ = reply.send(Ok(()));
                }
                for (reply, removed) in outcome.deletions {
                    let _ = reply.send(Ok(removed));
                }
                for event in outcome.events {
                    self.metrics
                        .events
                        .with_label_values(&[event.kind.as_str()])
                        .inc();
                    self.publish.publish(Arc::new(event));
                }
                for task_id in outcome.ended {
                    self.next_seq.remove(&task_id);
                    if self.closed.insert(task_id) {
                        self.closed_order.push_back(task_id);
                    }
                    if self.closed_order.len() > CLOSED_MEMORY {
                        if let Some(oldest) = self.closed_order.pop_front() {
                            self.closed.remove(&oldest);
                        }
                    }
                }
            }
            Err(error) => {
                // The whole batch rolled back: forget the sequence numbers it used.
                self.next_seq = seq_before;
                tracing::error!(error = %error, source = ?std::error::Error::source(&error), ops = batch.len(), "event-log batch failed to commit");
                self.metrics
                    .store_write_errors
                    .with_label_values(&["batch"])
                    .inc();
                for reply in outcome.replies {
                    let _ = reply.send(Err(StorageError::Query {
                        action: "commit batch",
                        source: sea_orm::DbErr::Custom(error.to_string()),
                    }));
                }
                for (reply, _) in outcome.deletions {
                    let _ = reply.send(Err(StorageError::Query {
                        action: "commit batch",
                        source: sea_orm::DbErr::Custom(error.to_string()),
                    }));
                }
            }
        }
        for flush in outcome.flushes {
            let _ = flush.send(());
        }
    }

    /// Applies `batch` in one transaction, filling `outcome`; drains the batch either way.
    async fn write(
        &mut self,
        batch: &mut Vec<WriteOp>,
        outcome: &mut Outcome,
    ) -> Result<(), StorageError> {
        let db = self.storage.connection();
        let txn = db
            .begin()
            .await
            .map_err(StorageError::query("begin batch"))?;
        let mut events: Vec<event::ActiveModel> = Vec::new();
        let mut failed = None;
        for op in batch.drain(..) {
            // Keep draining after a failure so every waiter gets its answer.
            if failed.is_some() {
                collect_waiters(op, outcome);
                continue;
            }
            if let Err(error) = self.write_one(&txn, op, &mut events, outcome).await {
                failed = Some(error);
            }
        }
        if let Some(error) = failed {
            let _ = txn.rollback().await;
            return Err(error);
        }
        insert_events(&txn, &mut events).await?;
        txn.commit()
            .await
            .map_err(StorageError::query("commit batch"))
    }

    async fn write_one(
        &mut self,
        txn: &DatabaseTransaction,
        op: WriteOp,
        events: &mut Vec<event::ActiveModel>,
        outcome: &mut Outcome,
    ) -> Result<(), StorageError> {
        match op {
            WriteOp::CreateTask { task, event, reply } => {
                outcome.replies.push(reply);
                insert_events(txn, events).await?;
                task::Entity::insert(task::ActiveModel {
                    id: Set(task.id.to_string()),
                    prompt: Set(task.prompt),
                    status: Set(TaskStatus::Queued.as_str().to_owned()),
                    options: Set(Some(task.options)),
                    result: Set(None),
                    error: Set(None),
                    trace_id: Set(Some(task.trace_id)),
                    replay_of: Set(task.replay_of.map(|id| id.to_string())),
                    created_at: Set(task.created_at),
                    started_at: Set(None),
                    finished_at: Set(None),
                    owner: Set(task.owner),
                })
                .exec(txn)
                .await
                .map_err(StorageError::query("insert task"))?;
                // No event yet: the task's first one below gets seq 1.
                self.next_seq.insert(task.id, 0);
                self.push_event(txn, event, events, outcome).await
            }
            WriteOp::Event(event) => self.push_event(txn, event, events, outcome).await,
            WriteOp::MarkRunning(event) => {
                task::Entity::update_many()
                    .col_expr(
                        task::Column::Status,
                        Expr::value(TaskStatus::Running.as_str()),
                    )
                    .col_expr(task::Column::StartedAt, Expr::value(Some(event.at)))
                    .filter(task::Column::Id.eq(event.task_id.to_string()))
                    .exec(txn)
                    .await
                    .map_err(StorageError::query("mark task running"))?;
                self.push_event(txn, event, events, outcome).await
            }
            WriteOp::SetStatus { status, event } => {
                // Only a task still running or paused moves: a task that ended meanwhile keeps its end.
                task::Entity::update_many()
                    .col_expr(task::Column::Status, Expr::value(status.as_str()))
                    .filter(task::Column::Id.eq(event.task_id.to_string()))
                    .filter(
                        task::Column::Status
                            .is_in([TaskStatus::Running.as_str(), TaskStatus::Paused.as_str()]),
                    )
                    .exec(txn)
                    .await
                    .map_err(StorageError::query("set task status"))?;
                self.push_event(txn, event, events, outcome).await
            }
            WriteOp::InsertSteps { task_id, steps } => {
                if steps.is_empty() {
                    return Ok(());
                }
                let rows = steps
                    .into_iter()
                    .map(|(idx, agent, instruction)| step::ActiveModel {
                        task_id: Set(task_id.to_string()),
                        idx: Set(idx),
                        agent: Set(agent.as_str().to_owned()),
                        instruction: Set(instruction),
                        status: Set(StepStatus::Pending.as_str().to_owned()),
                        output: Set(None),
                        attempts: Set(0),
                        started_at: Set(None),
                        finished_at: Set(None),
                    });
                step::Entity::insert_many(rows)
                    .exec(txn)
                    .await
                    .map_err(StorageError::query("insert steps"))?;
                Ok(())
            }
            WriteOp::UpdateStep(update) => {
                let mut query = step::Entity::update_many()
                    .col_expr(step::Column::Agent, Expr::value(update.agent.as_str()))
                    .col_expr(step::Column::Status, Expr::value(update.status.as_str()))
                    .col_expr(step::Column::Output, Expr::value(update.output))
                    .col_expr(step::Column::Attempts, Expr::value(update.attempts));
                if let Some(at) = update.started_at {
                    query = query.col_expr(step::Column::StartedAt, Expr::value(Some(at)));
                }
                if let Some(at) = update.finished_at {
                    query = query.col_expr(step::Column::FinishedAt, Expr::value(Some(at)));
                }
                query
                    .filter(step::Column::TaskId.eq(update.task_id.to_string()))
                    .filter(step::Column::Idx.eq(update.idx))
                    .exec(txn)
                    .await
                    .map_err(StorageError::query("update step"))?;
                Ok(())
            }
            WriteOp::Decision(record) => {
                decision::Entity::insert(decision::ActiveModel {
                    id: Set(uuid::Uuid::now_v7().to_string()),
                    task_id: Set(record.task_id.to_string()),
                    step_idx: Set(record.step_idx),
                    kind: Set(record.kind),
                    options: Set(record.options),
                    chosen: Set(record.chosen),
                    confidence: Set(record.confidence),
                    reasoning: Set(record.reasoning),
                    created_at: Set(Utc::now()),
                })
                .exec(txn)
                .await
                .map_err(StorageError::query("insert decision"))?;
                Ok(())
            }
            WriteOp::LlmCall(record) => {
                llm_call::Entity::insert(llm_call::ActiveModel {
                    id: Set(uuid::Uuid::now_v7().to_string()),
                    task_id: Set(record.task_id.to_string()),
                    purpose: Set(record.purpose),
                    agent: Set(record.agent.as_str().to_owned()),
                    provider: Set(record.provider),
                    model: Set(record.model),
                    prompt: Set(record.prompt),
                    output: Set(record.output),
                    choice: Set(record.choice),
                    prompt_tokens: Set(record.prompt_tokens),
                    completion_tokens: Set(record.completion_tokens),
                    duration_seconds: Set(record.duration_seconds),
                    created_at: Set(Utc::now()),
                    cost_usd: Set(record.cost_usd),
                })
                .exec(txn)
                .await
                .map_err(StorageError::query("insert model call"))?;
                Ok(())
            }
            WriteOp::FinishTask { end, reply } => {
                if let Some(reply) = reply {
                    outcome.replies.push(reply);
                }
                task::Entity::update_many()
                    .col_expr(task::Column::Status, Expr::value(end.status.as_str()))
                    .col_expr(task::Column::Result, Expr::value(end.result))
                    .col_expr(task::Column::Error, Expr::value(end.error))
                    .col_expr(task::Column::FinishedAt, Expr::value(Some(end.event.at)))
                    .filter(task::Column::Id.eq(end.task_id.to_string()))
                    .exec(txn)
                    .await
                    .map_err(StorageError::query("finish task"))?;
                insert_memories(txn, &end.memories).await?;
                self.push_event(txn, end.event, events, outcome).await?;
                outcome.ended.push(end.task_id);
                Ok(())
            }
            WriteOp::InsertMemories { memories, reply } => {
                outcome.replies.push(reply);
                insert_memories(txn, &memories).await
            }
            WriteOp::DeleteTask { task_id, reply } => {
                let removed = delete_finished_task(txn, task_id).await?;
                outcome.deletions.push((reply, removed));
                Ok(())
            }
            WriteOp::MemoriesUsed(ids) => mark_used(txn, &ids).await,
            WriteOp::PatternSucceeded(id) => mark_succeeded(txn, &id).await,
            WriteOp::Flush(done) => {
                outcome.flushes.push(done);
                Ok(())
            }
        }
    }

    /// Gives `pending` its `seq` and queues its row; rows go in with one statement per batch.
    async fn push_event(
        &mut self,
        txn: &DatabaseTransaction,
        pending: PendingEvent,
        events: &mut Vec<event::ActiveModel>,
        outcome: &mut Outcome,
    ) -> Result<(), StorageError> {
        if self.closed.contains(&pending.task_id) || outcome.ended.contains(&pending.task_id) {
            tracing::debug!(task_id = %pending.task_id, kind = %pending.kind, "event after the end of its task dropped");
            return Ok(());
        }
        let seq = match self.next_seq.get(&pending.task_id) {
            Some(last) => last + 1,
            None => {
                // A task this writer has not seen yet (created by another process): continue its log.
                last_seq(txn, pending.task_id).await?.unwrap_or(0) + 1
            }
        };
        self.next_seq.insert(pending.task_id, seq);
        // Stored timestamps keep microseconds (PostgreSQL's precision): so must the broadcast copy.
        let mut pending = pending;
        pending.at = pending.at.trunc_subsecs(6);
        events.push(event_row(&pending, seq));
        outcome.events.push(pending.with_seq(seq));
        Ok(())
    }
}

/// Keeps the waiters of an op that will not be applied, so they hear the batch's fate.
fn collect_waiters(op: WriteOp, outcome: &mut Outcome) {
    match op {
        WriteOp::CreateTask { reply, .. }
        | WriteOp::InsertMemories { reply, .. }
        | WriteOp::FinishTask {
            reply: Some(reply), ..
        } => {
            outcome.replies.push(reply);
        }
        WriteOp::Flush(done) => outcome.flushes.push(done),
        WriteOp::DeleteTask { reply, .. } => outcome.deletions.push((reply, false)),
        _ => {}
    }
}

/// Removes task `task_id` and its events, steps, decisions and model calls when it is finished (its row says
/// completed, failed or cancelled); memories keep their provenance. Whether it was removed.
async fn delete_finished_task(
    txn: &DatabaseTransaction,
    task_id: TaskId,
) -> Result<bool, StorageError> {
    let id = task_id.to_string();
    let finished = [
        TaskStatus::Completed,
        TaskStatus::Failed,
        TaskStatus::Cancelled,
    ]
    .map(|status| status.as_str());
    let removed = task::Entity::delete_many()
        .filter(task::Column::Id.eq(id.clone()))
        .filter(task::Column::Status.is_in(finished))
        .exec(txn)
        .await
        .map_err(StorageError::query("delete task"))?;
    if removed.rows_affected == 0 {
        return Ok(false);
    }
    event::Entity::delete_many()
        .filter(event::Column::TaskId.eq(id.clone()))
        .exec(txn)
        .await
        .map_err(StorageError::query("delete task events"))?;
    step::Entity::delete_many()
        .filter(step::Column::TaskId.eq(id.clone()))
        .exec(txn)
        .await
        .map_err(StorageError::query("delete task steps"))?;
    decision::Entity::delete_many()
        .filter(decision::Column::TaskId.eq(id.clone()))
        .exec(txn)
        .await
        .map_err(StorageError::query("delete task decisions"))?;
    llm_call::Entity::delete_many()
        .filter(llm_call::Column::TaskId.eq(id))
        .exec(txn)
        .await
        .map_err(StorageError::query("delete task model calls"))?;
    Ok(true)
}

/// Inserts the queued event rows, in chunks small enough for SQLite's statement limits.
async fn insert_events(
    txn: &DatabaseTransaction,
    events: &mut Vec<event::ActiveModel>,
) -> Result<(), StorageError> {
    const CHUNK: usize = 256;
    while !events.is_empty() {
        let rest = events.split_off(events.len().min(CHUNK));
        let chunk = std::mem::replace(events, rest);
        event::Entity::insert_many(chunk)
            .exec(txn)
            .await
            .map_err(StorageError::query("append events"))?;
    }
    Ok(())
}
