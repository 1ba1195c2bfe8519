//! The single writer: every database write of a running system, applied in batches.
//!
//! Writers send [`WriteOp`]s down one channel; one task takes whatever has queued up (up to
//! [`MAX_BATCH`]), applies it in one transaction, and after the commit broadcasts the batch's events and
//! answers those waiting. Consequences, relied on elsewhere:
//! - each task's events get `seq` 1, 2, 3, ... in the order they were sent;
//! - an event is broadcast only once it is durable;
//! - a task's terminal status and its terminal event commit together (never one without the other);
//! - under load, batches grow and the cost of a commit is shared by many events.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use chrono::{DateTime, SubsecRound, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, DatabaseTransaction, EntityTrait, QueryFilter, QuerySelect,
    TransactionTrait,
};
use tokio::sync::{mpsc, oneshot};

use super::entities::{decision, event, llm_call, step, task};
use super::memories::{insert_memories, mark_succeeded, mark_used};
use super::{Storage, StorageError};
use crate::agents::AgentKind;
use crate::events::{Event, EventKind, Hub};
use crate::memory::NewMemory;
use crate::task::{TaskId, TaskStatus};
use crate::telemetry::metrics::Metrics;

/// Most operations applied in one transaction.
pub const MAX_BATCH: usize = 1024;

/// An event before the writer gives it its `seq`.
#[derive(Debug, Clone)]
pub struct PendingEvent {
    /// The task.
    pub task_id: TaskId,
    /// When it happened.
    pub at: DateTime<Utc>,
    /// What happened.
    pub kind: EventKind,
    /// The agent concerned.
    pub agent: Option<AgentKind>,
    /// Trace id (hex).
    pub trace_id: String,
    /// Span id (hex).
    pub span_id: String,
    /// Details.
    pub data: serde_json::Value,
}

/// A task to store.
#[derive(Debug, Clone)]
pub struct NewTask {
    /// Id.
    pub id: TaskId,
    /// Prompt.
    pub prompt: String,
    /// Options as given.
    pub options: serde_json::Value,
    /// Trace id (hex).
    pub trace_id: String,
    /// Replay source.
    pub replay_of: Option<TaskId>,
    /// Accepted at.
    pub created_at: DateTime<Utc>,
}

/// A change to one step.
#[derive(Debug, Clone)]
pub struct StepUpdate {
    /// Task.
    pub task_id: TaskId,
    /// Step position, from 1.
    pub idx: i32,
    /// New agent (may change after a decision).
    pub agent: AgentKind,
    /// pending, running, done, failed.
    pub status: &'static str,
    /// Output so far.
    pub output: Option<String>,
    /// Attempts so far.
    pub attempts: i32,
    /// Set when the step starts.
    pub started_at: Option<DateTime<Utc>>,
    /// Set when the step ends.
    pub finished_at: Option<DateTime<Utc>>,
}

/// A decision to store.
#[derive(Debug, Clone)]
pub struct DecisionRecord {
    /// Task.
    pub task_id: TaskId,
    /// The step it was about, if any.
    pub step_idx: Option<i32>,
    /// Kind, e.g. "assign_agent".
    pub kind: String,
    /// Options with scores.
    pub options: serde_json::Value,
    /// The chosen option.
    pub chosen: String,
    /// Its probability.
    pub confidence: f64,
    /// The stated reason.
    pub reasoning: String,
}

/// A model call to store.
#[derive(Debug, Clone)]
pub struct LlmCallRecord {
    /// Task.
    pub task_id: TaskId,
    /// Purpose key (unique per task).
    pub purpose: String,
    /// Calling agent.
    pub agent: AgentKind,
    /// Provider name.
    pub provider: String,
    /// Model name.
    pub model: String,
    /// The prompt (messages as JSON).
    pub prompt: String,
    /// The output text.
    pub output: String,
    /// The scored choice, for choices.
    pub choice: Option<serde_json::Value>,
    /// Prompt tokens.
    pub prompt_tokens: i64,
    /// Generated tokens.
    pub completion_tokens: i64,
    /// Duration.
    pub duration_seconds: f64,
}

/// A task's end.
#[derive(Debug, Clone)]
pub struct TaskEnd {
    /// Task.
    pub task_id: TaskId,
    /// Terminal status.
    pub status: TaskStatus,
    /// Result of a completed task.
    pub result: Option<serde_json::Value>,
    /// Why it failed.
    pub error: Option<String>,
    /// The terminal event (committed with the status).
    pub event: PendingEvent,
    /// The memories the task leaves (committed with the status, all or none).
    pub memories: Vec<NewMemory>,
}

/// One write.
#[derive(Debug)]
pub enum WriteOp {
    /// Insert a task and its `task.queued` event; answered after the commit.
    CreateTask {
        /// The task.
        task: NewTask,
        /// Its first event.
        event: PendingEvent,
        /// Commit result.
        reply: oneshot::Sender<Result<(), StorageError>>,
    },
    /// Append an event.
    Event(PendingEvent),
    /// Mark a task running and append its `task.started` event.
    StartTask(PendingEvent),
    /// Insert a task's planned steps.
    InsertSteps {
        /// Task.
        task_id: TaskId,
        /// (idx, agent, instruction).
        steps: Vec<(i32, AgentKind, String)>,
    },
    /// Update a step.
    UpdateStep(StepUpdate),
    /// Insert a decision.
    Decision(DecisionRecord),
    /// Insert a model call.
    LlmCall(LlmCallRecord),
    /// Set a task's terminal status with its terminal event; answered after the commit.
    FinishTask {
        /// The end.
        end: TaskEnd,
        /// Commit result.
        reply: Option<oneshot::Sender<Result<(), StorageError>>>,
    },
    /// Insert memories (outside a task's end); answered after the commit.
    InsertMemories {
        /// The memories.
        memories: Vec<NewMemory>,
        /// Commit result.
        reply: oneshot::Sender<Result<(), StorageError>>,
    },
    /// Count one use of each of these memories (by id).
    MemoriesUsed(Vec<String>),
    /// Count one success of this pattern (by id).
    PatternSucceeded(String),
    /// Answered once everything sent before it is committed.
    Flush(oneshot::Sender<()>),
}

/// Sends writes to the writer task. Cheap to clone.
#[derive(Clone)]
pub struct Writer {
    ops: mpsc::UnboundedSender<WriteOp>,
}

impl Writer {
    /// Starts the writer task over `storage`; committed events are published on `hub`.
    pub fn spawn(storage: Storage, hub: Hub, metrics: Metrics) -> Writer {
        let (ops, queue) = mpsc::unbounded_channel();
        let task = WriterTask {
            storage,
            hub,
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

    /// Waits until everything sent so far is committed.
    pub async fn flush(&self) -> Result<(), StorageError> {
        let (reply, done) = oneshot::channel();
        self.send(WriteOp::Flush(reply));
        done.await.map_err(|_| StorageError::WriterStopped)
    }
}

/// The stored row of an event.
pub(crate) fn event_row(pending: &PendingEvent, seq: i64) -> event::ActiveModel {
    event::ActiveModel {
        task_id: Set(pending.task_id.to_string()),
        seq: Set(seq),
        at: Set(pending.at),
        kind: Set(pending.kind.as_str().to_owned()),
        agent: Set(pending.agent.map(|agent| agent.as_str().to_owned())),
        trace_id: Set(pending.trace_id.clone()),
        span_id: Set(pending.span_id.clone()),
        data: Set(pending.data.clone()),
    }
}

struct WriterTask {
    storage: Storage,
    hub: Hub,
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
                for event in outcome.events {
                    self.metrics
                        .events
                        .with_label_values(&[event.kind.as_str()])
                        .inc();
                    self.hub.publish(Arc::new(event));
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
                })
                .exec(txn)
                .await
                .map_err(StorageError::query("insert task"))?;
                // No event yet: the task's first one below gets seq 1.
                self.next_seq.insert(task.id, 0);
                self.push_event(txn, event, events, outcome).await
            }
            WriteOp::Event(event) => self.push_event(txn, event, events, outcome).await,
            WriteOp::StartTask(event) => {
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
                        status: Set("pending".to_owned()),
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
                    .col_expr(step::Column::Status, Expr::value(update.status))
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
                let last: Option<i64> = event::Entity::find()
                    .select_only()
                    .column_as(event::Column::Seq.max(), "max")
                    .filter(event::Column::TaskId.eq(pending.task_id.to_string()))
                    .into_tuple::<Option<i64>>()
                    .one(txn)
                    .await
                    .map_err(StorageError::query("read last event"))?
                    .flatten();
                last.unwrap_or(0) + 1
            }
        };
        self.next_seq.insert(pending.task_id, seq);
        // Stored timestamps keep microseconds (PostgreSQL's precision): so must the broadcast copy.
        let mut pending = pending;
        pending.at = pending.at.trunc_subsecs(6);
        events.push(event_row(&pending, seq));
        outcome.events.push(Event {
            seq,
            task_id: pending.task_id,
            at: pending.at,
            kind: pending.kind,
            agent: pending.agent,
            trace_id: pending.trace_id,
            span_id: pending.span_id,
            data: pending.data,
        });
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
        _ => {}
    }
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
