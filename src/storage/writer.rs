//! The single writer: every database write of a running system, applied in set-oriented batches.
//!
//! Writers send [`WriteOp`]s (see `records.rs`) down one bounded channel; one task takes whatever has
//! queued up (up to [`MAX_BATCH`] ops), turns it into rows table by table (`writer/plan.rs`), writes each
//! table with multi-row statements in one transaction (`writer/sql.rs`: tasks, breakpoints, steps, step
//! upserts, model calls, decisions, memories, events, then one multi-row update of the task rows, then the
//! deletions) and commits once. After
//! the commit it hands the batch's events to its [`Publish`] (the event hub) and answers those waiting.
//! While a batch commits the channel fills, and the next batch is whatever queued meanwhile: a group commit,
//! so under load the cost of a commit (an fsync: SQLite runs WAL with `synchronous=FULL`) is shared by every
//! op of the batch. Consequences, relied on elsewhere:
//! - each task's events get `seq` 1, 2, 3, ... in the order they were sent;
//! - an event is broadcast only once it is durable;
//! - a task's terminal status and its terminal event commit together (never one without the other);
//! - events sent after a task's end are dropped, and so is a second end (a late end never overwrites the
//!   first), so a terminal event is always the last of its log;
//! - a model call's `llm.token` pieces are stored coalesced ([`MAX_ROW_PIECES`] at most per row; see
//!   `events.rs`), held back until the call's next other op of the task (its record, `llm.finished`, any
//!   event), [`MAX_ROW_PIECES`] pieces, 100 ms, or a [`Writer::flush`]; each piece keeps its own `seq` and is
//!   published on its own, in order, after its row commits. So a call that is recorded has its tokens
//!   stored.
//!
//! **Failure isolation.** A batch that fails to commit is rolled back and applied again op by op, each op
//! in its own transaction, so every good op commits. The op that fails is reported to its task: the task
//! ends `failed` with the storage error in its `error` column and a terminal `task.failed` event
//! (`data.error`, `data.storage: true`), its later ops are dropped, the op's waiter gets the error, and
//! every other task is unaffected. The event reaches [`Publish`] like any other: the service cancels the
//! task's flow on it (the flow's own later end is then dropped as a late write). Counted in
//! `troupe_store_write_errors_total{op}`: `batch` (a batch retried op by op), `task` (a task failed by
//! storage), `queue_full` (below).
//!
//! **Outages.** A commit that fails because the database cannot be reached (down, refusing connections,
//! the pool timed out: [`StorageError::is_unavailable`]) fails no task: the writer marks the store down,
//! answers the batch's requests of clients (a new task, a deletion, a breakpoint) with
//! [`StorageError::Unavailable`] and drops them from the batch, so that a client told 503 finds nothing of
//! its request stored later; then it checks the database every [`OUTAGE_CHECK`] until it answers, and
//! applies the rest of the batch again. Meanwhile such requests are refused at once
//! ([`Writer::create_task`] and the others check the mark, and the writer keeps reading the channel: a
//! request sent before the mark was set is refused there), the flows' own writes are held for the next
//! batch (up to `HOLD_MAX`, then they wait in the channel; their awaited writes, a task's end among them,
//! wait for the database: a flow does not end with its end unwritten) and a full channel fails its tasks as
//! below, once the database is back. Counted in
//! `troupe_store_write_errors_total{op="unavailable"}` (once per outage) and the gauge
//! `troupe_store_down`. A commit cut off by the outage after the server committed it is applied again, fails
//! on its own rows and fails its tasks by storage (the ambiguity of any lost commit reply).
//!
//! **Bounded.** The channel holds `database.writer_queue` ops. The async writes that wait for their commit
//! ([`Writer::create_task`], [`Writer::finish_task`], memories, breakpoints, deletions, flushes) wait for
//! room as well, so a task's end is never dropped; this never deadlocks, as the writer task itself never sends. The
//! fire-and-forget [`Writer::send`] (events, steps, decisions, model calls, called from sync code such as a
//! model's token callback) cannot wait: on a full queue the op is dropped, counted as `queue_full`, and its
//! task is failed by storage at the next batch (error "storage writer queue full"), so a task never goes on
//! with a hole in its records; an op of no task (a memory's use counter) is only counted and logged.

mod plan;
mod sql;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sea_orm::{DatabaseTransaction, TransactionTrait};
use tokio::sync::{mpsc, oneshot};

use super::events::last_seq;
use super::memories::NewMemory;
use super::records::{NewTask, PendingEvent, TaskEnd, WriteOp};
use super::{Storage, StorageError};
use crate::domain::{AgentKind, Breakpoint, BreakpointId, Event, EventKind, TaskId};
use crate::telemetry::metrics::Metrics;
use plan::{Logs, Plan};
use sql::Deletions;

pub use super::events::MAX_ROW_PIECES;

/// Connections of the writer's own pool.
const WRITER_CONNECTIONS: u32 = 2;

/// Most operations applied in one transaction.
pub const MAX_BATCH: usize = 1024;

/// Ops the writer's channel holds by default (`database.writer_queue`).
pub const DEFAULT_QUEUE: usize = 65_536;

/// How often a writer that found the database unreachable checks whether it answers again.
pub const OUTAGE_CHECK: Duration = Duration::from_millis(250);

/// Where the writer hands each committed event (the event hub of `events`, which this layer does not
/// name): called after the commit, in `seq` order per task. A task failed by storage is told by its
/// `task.failed` event with `data.storage: true`.
pub trait Publish: Send + 'static {
    /// Publishes one committed event.
    fn publish(&self, event: Arc<Event>);
}

impl<F: Fn(Arc<Event>) + Send + 'static> Publish for F {
    fn publish(&self, event: Arc<Event>) {
        self(event);
    }
}

/// Whether `event` says its task was failed by the storage writer (not by its flow).
pub fn failed_by_storage(event: &Event) -> bool {
    event.kind == EventKind::TaskFailed
        && event
            .data
            .get("storage")
            .and_then(serde_json::Value::as_bool)
            == Some(true)
}

/// Sends writes to the writer task: the one write path for every record of a running system (tasks,
/// steps, decisions, model calls, memories and events). Cheap to clone.
#[derive(Clone)]
pub struct Writer {
    ops: mpsc::Sender<WriteOp>,
    /// Tasks with an op dropped on a full queue, for the writer to fail.
    overflowed: Arc<Mutex<HashSet<TaskId>>>,
    /// Set while the database cannot be reached (see the module's doc, Outages).
    down: Arc<AtomicBool>,
    metrics: Metrics,
}

impl Writer {
    /// Starts the writer task over `storage` with a channel of [`DEFAULT_QUEUE`] ops; each committed event
    /// goes to `publish`.
    pub fn spawn(storage: Storage, publish: impl Publish, metrics: Metrics) -> Writer {
        Self::spawn_with(storage, publish, metrics, DEFAULT_QUEUE)
    }

    /// Starts the writer task with a channel of `queue` ops (at least 1).
    pub fn spawn_with(
        storage: Storage,
        publish: impl Publish,
        metrics: Metrics,
        queue: usize,
    ) -> Writer {
        let (ops, receiver) = mpsc::channel(queue.max(1));
        let overflowed = Arc::new(Mutex::new(HashSet::new()));
        let down = Arc::new(AtomicBool::new(false));
        let task = WriterTask {
            storage,
            publish: Box::new(publish),
            metrics: metrics.clone(),
            queue: receiver,
            overflowed: Arc::clone(&overflowed),
            down: Arc::clone(&down),
            held: Vec::new(),
            logs: Logs::default(),
        };
        // The writer runs on a thread of its own, so that building a batch's statements and waiting for its
        // commit take nothing from the threads that run the tasks' flows (on the actix system's thread it
        // was a quarter of a durable run's samples). Where its runtime or thread cannot be had (the system
        // is out of threads), the writer runs on the current runtime instead: slower, nothing lost.
        match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => {
                let task = Arc::new(Mutex::new(Some(task)));
                let theirs = Arc::clone(&task);
                let started = std::thread::Builder::new()
                    .name("troupe-writer".into())
                    .spawn(move || {
                        if let Some(task) = theirs.lock().ok().and_then(|mut task| task.take()) {
                            runtime.block_on(task.on_own_connections());
                        }
                    });
                if let Err(error) = started {
                    tracing::warn!(%error, "the storage writer's thread did not start; it runs on this runtime");
                    if let Some(task) = task.lock().ok().and_then(|mut task| task.take()) {
                        tokio::spawn(task.run());
                    }
                }
            }
            Err(error) => {
                tracing::warn!(%error, "the storage writer's runtime did not start; it runs on this runtime");
                tokio::spawn(task.run());
            }
        }
        Writer {
            ops,
            overflowed,
            down,
            metrics,
        }
    }

    /// Whether the writer found the database unreachable and waits for it (see the module's doc).
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Acquire)
    }

    /// A client's request is refused at once while the database cannot be reached.
    fn refuse_while_down(&self) -> Result<(), StorageError> {
        if self.is_down() {
            return Err(StorageError::Unavailable(UNREACHABLE.into()));
        }
        Ok(())
    }

    /// Queues a write without waiting. On a full queue the write is dropped and counted, and its task is
    /// failed by storage (see the module's doc); a write sent while the application shuts down is dropped
    /// (logged).
    pub fn send(&self, op: WriteOp) {
        match self.ops.try_send(op) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(op)) => {
                self.metrics
                    .store_write_errors
                    .with_label_values(&["queue_full"])
                    .inc();
                match op.task_id() {
                    Some(task_id) => {
                        tracing::error!(%task_id, "storage writer queue full: a write was dropped and its task will fail");
                        self.overflowed
                            .lock()
                            .unwrap_or_else(|poisoned| poisoned.into_inner())
                            .insert(task_id);
                    }
                    None => tracing::error!("storage writer queue full: a write was dropped"),
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::warn!("storage writer stopped; a write was dropped");
            }
        }
    }

    /// Queues a write, waiting for room.
    async fn send_waiting(&self, op: WriteOp) -> Result<(), StorageError> {
        self.ops
            .send(op)
            .await
            .map_err(|_| StorageError::WriterStopped)
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
        self.refuse_while_down()?;
        let (reply, committed) = oneshot::channel();
        self.send_waiting(WriteOp::CreateTask { task, event, reply })
            .await?;
        committed.await.map_err(|_| StorageError::WriterStopped)?
    }

    /// Stores a new task that another process runs (a queue worker): [`Writer::create_task`], then
    /// forgets its log's last `seq` here ([`WriteOp::HandOff`]), so nothing of it stays in this writer.
    pub async fn create_handed_off(
        &self,
        task: NewTask,
        event: PendingEvent,
    ) -> Result<(), StorageError> {
        let id = task.id;
        self.create_task(task, event).await?;
        self.send_waiting(WriteOp::HandOff(id)).await
    }

    /// Ends a task and waits for the commit (an end after the task has ended is dropped and answered `Ok`).
    pub async fn finish_task(&self, end: TaskEnd) -> Result<(), StorageError> {
        let (reply, committed) = oneshot::channel();
        self.send_waiting(WriteOp::FinishTask {
            end,
            reply: Some(reply),
        })
        .await?;
        committed.await.map_err(|_| StorageError::WriterStopped)?
    }

    /// Stores memories and waits for the commit.
    pub async fn insert_memories(&self, memories: Vec<NewMemory>) -> Result<(), StorageError> {
        let (reply, committed) = oneshot::channel();
        self.send_waiting(WriteOp::InsertMemories { memories, reply })
            .await?;
        committed.await.map_err(|_| StorageError::WriterStopped)?
    }

    /// Removes finished task `task_id` with its events, steps, decisions, model calls and breakpoints
    /// (memories stay);
    /// answered after the commit: false when no finished task has that id.
    pub async fn delete_task(&self, task_id: TaskId) -> Result<bool, StorageError> {
        self.refuse_while_down()?;
        let (reply, answer) = oneshot::channel();
        self.send_waiting(WriteOp::DeleteTask { task_id, reply })
            .await?;
        answer.await.map_err(|_| StorageError::WriterStopped)?
    }

    /// Stores breakpoint `breakpoint` and waits for the commit.
    pub async fn insert_breakpoint(&self, breakpoint: Breakpoint) -> Result<(), StorageError> {
        self.refuse_while_down()?;
        let (reply, committed) = oneshot::channel();
        self.send_waiting(WriteOp::InsertBreakpoint { breakpoint, reply })
            .await?;
        committed.await.map_err(|_| StorageError::WriterStopped)?
    }

    /// Stores a new experiment and waits for the commit.
    pub async fn create_experiment(
        &self,
        experiment: crate::domain::experiment::Experiment,
    ) -> Result<(), StorageError> {
        self.refuse_while_down()?;
        let (reply, committed) = oneshot::channel();
        self.send_waiting(WriteOp::PutExperiment {
            experiment: Box::new(experiment),
            reply: Some(reply),
        })
        .await?;
        committed.await.map_err(|_| StorageError::WriterStopped)?
    }

    /// Removes breakpoint `id`; answered after the commit: false when no breakpoint has that id.
    pub async fn delete_breakpoint(&self, id: BreakpointId) -> Result<bool, StorageError> {
        self.refuse_while_down()?;
        let (reply, answer) = oneshot::channel();
        self.send_waiting(WriteOp::DeleteBreakpoint { id, reply })
            .await?;
        answer.await.map_err(|_| StorageError::WriterStopped)?
    }

    /// Waits until everything sent so far is committed (token pieces held back included).
    pub async fn flush(&self) -> Result<(), StorageError> {
        let (reply, done) = oneshot::channel();
        self.send_waiting(WriteOp::Flush(reply)).await?;
        done.await.map_err(|_| StorageError::WriterStopped)
    }
}

struct WriterTask {
    storage: Storage,
    publish: Box<dyn Publish>,
    metrics: Metrics,
    queue: mpsc::Receiver<WriteOp>,
    overflowed: Arc<Mutex<HashSet<TaskId>>>,
    down: Arc<AtomicBool>,
    /// Ops read from the channel while the database was down, first in the next batch.
    held: Vec<WriteOp>,
    logs: Logs,
}

/// What a request refused during an outage is told.
const UNREACHABLE: &str = "the database cannot be reached; nothing was stored, retry later";

/// How an op fared, for its waiter.
type Fate = Result<(), Failure>;

/// Why an op was not written.
#[derive(Debug)]
enum Failure {
    /// Its write failed (the error chain).
    Write(String),
    /// The database could not be reached and the op, a client's request, was dropped.
    Unavailable,
}

impl WriterTask {
    /// [`WriterTask::run`] over a pool of the writer's own (two connections: its transaction, and a read
    /// beside it), made on the writer's runtime; over the shared pool if that cannot be had.
    async fn on_own_connections(mut self) {
        match self.storage.connect_again(WRITER_CONNECTIONS).await {
            Ok(own) => self.storage = own,
            Err(error) => {
                tracing::warn!(%error, "the storage writer uses the shared pool: a pool of its own could not be opened");
            }
        }
        self.run().await;
    }

    async fn run(mut self) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        loop {
            // What an outage held back goes first, in the order it was sent.
            if !self.held.is_empty() {
                batch.append(&mut self.held);
                self.apply(&mut batch).await;
                continue;
            }
            let due = self.logs.next_due();
            let received = match due {
                Some(due) => {
                    tokio::select! {
                        op = self.queue.recv() => Some(op),
                        () = tokio::time::sleep_until(due.into()) => None,
                    }
                }
                None => Some(self.queue.recv().await),
            };
            match received {
                Some(Some(first)) => {
                    batch.push(first);
                    while batch.len() < MAX_BATCH {
                        match self.queue.try_recv() {
                            Ok(op) => batch.push(op),
                            Err(_) => break,
                        }
                    }
                }
                // Every sender is gone: write what is held back and stop.
                Some(None) => {
                    let (reply, _) = oneshot::channel();
                    batch.push(WriteOp::Flush(reply));
                    self.apply(&mut batch).await;
                    return;
                }
                // A run of token pieces is due.
                None => {}
            }
            self.apply(&mut batch).await;
        }
    }

    /// Applies `batch` (drained either way): in one transaction, or op by op when that fails; through an
    /// outage of the database, once it answers again.
    async fn apply(&mut self, batch: &mut Vec<WriteOp>) {
        self.fail_overflowed().await;
        loop {
            let db = self.storage.connection();
            for task_id in self.logs.unknown(batch) {
                match last_seq(db, task_id).await {
                    Ok(seq) => self.logs.learn(task_id, seq.unwrap_or(0)),
                    Err(error) => tracing::warn!(%task_id, %error, "read the last seq of a task"),
                }
            }
            let mut plan = Plan::default();
            for op in batch.iter() {
                self.logs.plan(op, &mut plan);
            }
            self.logs.plan_due(Instant::now(), &mut plan);
            if plan.is_empty() {
                self.logs.committed(&mut plan);
                self.publish(plan.published);
                for op in batch.drain(..) {
                    answer(op, &Ok(()), &Deletions::default());
                }
                return;
            }
            let started = Instant::now();
            let result = commit(&self.storage, &plan).await;
            self.metrics
                .store_commit_duration
                .observe(started.elapsed().as_secs_f64());
            match result {
                Ok(deletions) => {
                    self.logs.committed(&mut plan);
                    self.publish(plan.published);
                    for op in batch.drain(..) {
                        answer(op, &Ok(()), &deletions);
                    }
                    return;
                }
                Err(error) if error.is_unavailable() => {
                    self.logs.rollback(&mut plan);
                    refuse_requests(batch);
                    self.wait_for_database(&error).await;
                    self.fail_overflowed().await;
                }
                Err(error) => {
                    self.logs.rollback(&mut plan);
                    tracing::warn!(error = %error, source = ?std::error::Error::source(&error), ops = batch.len(), rows = plan.rows(), "storage batch failed to commit; applying it op by op");
                    self.metrics
                        .store_write_errors
                        .with_label_values(&["batch"])
                        .inc();
                    self.apply_one_by_one(batch).await;
                    return;
                }
            }
        }
    }

    /// Marks the store down and waits until the database answers again (checked every
    /// [`OUTAGE_CHECK`]), then marks it up.
    async fn wait_for_database(&mut self, error: &StorageError) {
        tracing::error!(error = %error_chain(error), "the database cannot be reached: writes wait for it, new requests are refused");
        self.down.store(true, Ordering::Release);
        self.metrics.store_down.set(1);
        self.metrics
            .store_write_errors
            .with_label_values(&["unavailable"])
            .inc();
        let started = Instant::now();
        let storage = self.storage.clone();
        loop {
            // Meanwhile the channel is read: clients' requests are refused at once (not left waiting for the
            // database), the flows' ops are held for the next batch, up to `HOLD_MAX` (then the channel
            // fills and pushes back, as always).
            let check = async {
                tokio::time::sleep(OUTAGE_CHECK).await;
                storage.ping().await.is_ok()
            };
            tokio::pin!(check);
            let answered = loop {
                tokio::select! {
                    answered = &mut check => break answered,
                    op = self.queue.recv(), if self.held.len() < HOLD_MAX => match op {
                        Some(op) => hold_or_refuse(op, &mut self.held),
                        // Every sender is gone: nothing more can come; wait for the database alone.
                        None => break (&mut check).await,
                    },
                }
            };
            if answered {
                break;
            }
        }
        self.down.store(false, Ordering::Release);
        self.metrics.store_down.set(0);
        tracing::info!(after = ?started.elapsed(), "the database answers again: writes go on");
    }

    /// Commits `plan`, through outages of the database (for the op-by-op paths, whose plans are small).
    async fn commit_through_outages(&mut self, plan: &Plan) -> Result<Deletions, StorageError> {
        loop {
            match commit(&self.storage, plan).await {
                Err(error) if error.is_unavailable() => self.wait_for_database(&error).await,
                result => return result,
            }
        }
    }
}

/// Ops taken from the channel during an outage and held for the next batch, at most.
const HOLD_MAX: usize = 16 * MAX_BATCH;

/// Whether `op` is a client's request (a new task, a deletion, a breakpoint): refused while the database
/// cannot be reached, since a client told so must not find its request done later.
fn is_request(op: &WriteOp) -> bool {
    matches!(
        op,
        WriteOp::CreateTask { .. }
            | WriteOp::DeleteTask { .. }
            | WriteOp::InsertBreakpoint { .. }
            | WriteOp::DeleteBreakpoint { .. }
            | WriteOp::PutExperiment { reply: Some(_), .. }
    )
}

/// Answers a client's request: the database cannot be reached, nothing was stored.
fn refuse(op: WriteOp) {
    answer(op, &Err(Failure::Unavailable), &Deletions::default());
}

/// During an outage: a client's request is refused, any other op is held.
fn hold_or_refuse(op: WriteOp, held: &mut Vec<WriteOp>) {
    if is_request(&op) {
        refuse(op);
    } else {
        held.push(op);
    }
}

/// Refuses and removes the clients' requests in `batch`.
fn refuse_requests(batch: &mut Vec<WriteOp>) {
    let (refused, kept): (Vec<WriteOp>, Vec<WriteOp>) = batch.drain(..).partition(is_request);
    refused.into_iter().for_each(refuse);
    *batch = kept;
}

/// Writes `plan` in one transaction.
async fn commit(storage: &Storage, plan: &Plan) -> Result<Deletions, StorageError> {
    let txn = storage
        .connection()
        .begin()
        .await
        .map_err(StorageError::query("begin batch"))?;
    match sql::execute(&txn, plan).await {
        Ok(deletions) => {
            txn.commit()
                .await
                .map_err(StorageError::query("commit batch"))?;
            Ok(deletions)
        }
        Err(error) => {
            rollback(txn).await;
            Err(error)
        }
    }
}

impl WriterTask {
    /// Applies `batch` op by op, each in its own transaction; an op that fails fails its task.
    async fn apply_one_by_one(&mut self, batch: &mut Vec<WriteOp>) {
        for op in batch.drain(..) {
            let task_id = op.task_id();
            let is_piece =
                matches!(&op, WriteOp::Event(pending) if super::events::is_piece(pending));
            // A task's held-back pieces go alone first, so that a failure is pinned on the right op.
            match (&op, task_id) {
                (WriteOp::Flush(_), _) => {
                    for held in self.logs.held() {
                        self.write_run_alone(held).await;
                    }
                }
                (WriteOp::DeleteTask { .. }, _) => {}
                (_, Some(task_id)) if !is_piece && self.logs.holds(task_id) => {
                    self.write_run_alone(task_id).await;
                }
                _ => {}
            }
            let mut plan = Plan::default();
            self.logs.plan(&op, &mut plan);
            if plan.is_empty() {
                self.logs.committed(&mut plan);
                self.publish(plan.published);
                answer(op, &Ok(()), &Deletions::default());
                continue;
            }
            match self.commit_through_outages(&plan).await {
                Ok(deletions) => {
                    self.logs.committed(&mut plan);
                    self.publish(plan.published);
                    answer(op, &Ok(()), &deletions);
                }
                Err(error) => {
                    self.logs.rollback(&mut plan);
                    let text = error_chain(&error);
                    // The task's failure commits before the op's waiter hears of it, so a waiter that then
                    // reads the task finds it ended.
                    match task_id {
                        Some(task_id) => self.fail(task_id, &text).await,
                        None => tracing::error!(error = %text, "a storage write of no task failed"),
                    }
                    answer(op, &Err(Failure::Write(text)), &Deletions::default());
                }
            }
        }
        for task_id in self.logs.due(Instant::now()) {
            self.write_run_alone(task_id).await;
        }
    }

    /// Writes task `task_id`'s held-back pieces in their own transaction; failing that fails the task.
    async fn write_run_alone(&mut self, task_id: TaskId) {
        let mut plan = Plan::default();
        self.logs.write_run(task_id, &mut plan);
        if plan.is_empty() {
            return;
        }
        match self.commit_through_outages(&plan).await {
            Ok(_) => {
                self.logs.committed(&mut plan);
                self.publish(plan.published);
            }
            Err(error) => {
                self.logs.rollback(&mut plan);
                self.fail(task_id, &error_chain(&error)).await;
            }
        }
    }

    /// Ends task `task_id` `failed` for storage error `error`, with its terminal event, in a transaction of
    /// its own; a task that has no row or has ended already is only closed (nothing more of it is written).
    async fn fail(&mut self, task_id: TaskId, error: &str) {
        tracing::error!(%task_id, %error, "a storage write failed: its task fails");
        self.metrics
            .store_write_errors
            .with_label_values(&["task"])
            .inc();
        let mut plan = Plan::default();
        self.logs.plan_failure(task_id, error, &mut plan);
        let storage = self.storage.clone();
        let result: Result<bool, StorageError> = async {
            let txn = storage
                .connection()
                .begin()
                .await
                .map_err(StorageError::query("begin failure"))?;
            let Some(row) = plan.task_rows.first() else {
                rollback(txn).await;
                return Ok(false);
            };
            if !sql::fail_task_row(&txn, row).await? {
                rollback(txn).await;
                return Ok(false);
            }
            let appended = sql::append_events(&txn, &plan.events).await;
            match appended {
                Ok(_) => txn
                    .commit()
                    .await
                    .map_err(StorageError::query("commit failure"))
                    .map(|()| true),
                Err(error) => {
                    rollback(txn).await;
                    Err(error)
                }
            }
        }
        .await;
        match result {
            Ok(true) => {
                self.logs.committed(&mut plan);
                self.publish(plan.published);
            }
            Ok(false) => {
                self.logs.rollback(&mut plan);
                self.logs.abandon(task_id);
            }
            Err(failure) => {
                tracing::error!(%task_id, error = %error_chain(&failure), "store the storage failure of a task");
                self.logs.rollback(&mut plan);
                self.logs.abandon(task_id);
            }
        }
    }

    /// Fails the tasks that had a write dropped on a full queue.
    async fn fail_overflowed(&mut self) {
        let tasks: Vec<TaskId> = {
            let mut overflowed = self
                .overflowed
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if overflowed.is_empty() {
                return;
            }
            overflowed.drain().collect()
        };
        for task_id in tasks {
            self.fail(
                task_id,
                "storage writer queue full (database.writer_queue): a write of the task was dropped",
            )
            .await;
        }
    }

    fn publish(&self, events: Vec<Event>) {
        for event in events {
            self.metrics
                .events
                .with_label_values(&[event.kind.as_str()])
                .inc();
            self.publish.publish(Arc::new(event));
        }
    }
}

/// Rolls `txn` back (a failed rollback only means the connection is gone: the transaction is void).
async fn rollback(txn: DatabaseTransaction) {
    if let Err(error) = txn.rollback().await {
        tracing::warn!(%error, "roll back a storage transaction");
    }
}

/// `error` with its causes, for a task's `error` column.
fn error_chain(error: &StorageError) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Tells `op`'s waiter how it fared.
fn answer(op: WriteOp, fate: &Fate, deletions: &Deletions) {
    let failed = |failure: &Failure| match failure {
        Failure::Write(text) => StorageError::Query {
            action: "store write",
            source: sea_orm::DbErr::Custom(text.clone()),
        },
        Failure::Unavailable => StorageError::Unavailable(UNREACHABLE.into()),
    };
    match op {
        WriteOp::CreateTask { reply, .. }
        | WriteOp::InsertMemories { reply, .. }
        | WriteOp::InsertBreakpoint { reply, .. }
        | WriteOp::FinishTask {
            reply: Some(reply), ..
        }
        | WriteOp::PutExperiment {
            reply: Some(reply), ..
        } => {
            let _ = reply.send(fate.as_ref().map_err(failed).copied());
        }
        WriteOp::DeleteTask { task_id, reply } => {
            let removed = deletions.tasks.get(&task_id).copied().unwrap_or(false);
            let _ = reply.send(fate.as_ref().map_err(failed).map(|_| removed));
        }
        WriteOp::DeleteBreakpoint { id, reply } => {
            let removed = deletions.breakpoints.get(&id).copied().unwrap_or(false);
            let _ = reply.send(fate.as_ref().map_err(failed).map(|_| removed));
        }
        WriteOp::Flush(done) => {
            let _ = done.send(());
        }
        _ => {}
    }
}
