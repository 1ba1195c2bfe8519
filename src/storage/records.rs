//! What the writer is sent: [`WriteOp`], one durable change, and the records it carries (tasks, steps,
//! decisions, model calls, events before their `seq`, a task's end). Plain rows: this module knows
//! nothing of the agents, the model or the memory that produce them.

use chrono::{DateTime, Utc};
use tokio::sync::oneshot;

use super::memories::NewMemory;
use super::StorageError;
use crate::domain::{
    AgentKind, Breakpoint, BreakpointId, Event, EventKind, StepStatus, TaskId, TaskStatus,
};
use crate::telemetry::propagation;

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

impl PendingEvent {
    /// An event stamped now, with the trace and span of the current `tracing` span.
    pub fn now(
        task_id: TaskId,
        kind: EventKind,
        agent: Option<AgentKind>,
        data: serde_json::Value,
    ) -> PendingEvent {
        Self::now_in(&propagation::current(), task_id, kind, agent, data)
    }

    /// An event stamped now, with the trace and span of `cx` (for code that acts for a task outside the
    /// task's spans, like a supervisor).
    pub fn now_in(
        cx: &opentelemetry::Context,
        task_id: TaskId,
        kind: EventKind,
        agent: Option<AgentKind>,
        data: serde_json::Value,
    ) -> PendingEvent {
        let (trace_id, span_id) = propagation::ids(cx);
        PendingEvent {
            task_id,
            at: Utc::now(),
            kind,
            agent,
            trace_id,
            span_id,
            data,
        }
    }

    /// The event this becomes once the writer gives it its place `seq` in the task's log.
    pub fn with_seq(self, seq: i64) -> Event {
        Event {
            seq,
            task_id: self.task_id,
            at: self.at,
            kind: self.kind,
            agent: self.agent,
            trace_id: self.trace_id,
            span_id: self.span_id,
            data: self.data,
        }
    }
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
    /// The lease of the process that runs it (`None`: nobody's; a process that starts resumes it).
    pub owner: Option<String>,
}

/// A planned step, as stored before it runs.
#[derive(Debug, Clone)]
pub struct NewStep {
    /// Position in the plan, from 1.
    pub idx: i32,
    /// The agent that works it.
    pub agent: AgentKind,
    /// What to do.
    pub instruction: String,
    /// The earlier steps it waits for.
    pub depends_on: Vec<i32>,
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
    /// Where the step is now.
    pub status: StepStatus,
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
    /// US dollars at the model's configured price (0 for local models).
    pub cost_usd: f64,
    /// Duration.
    pub duration_seconds: f64,
    /// What was asked beside the messages (JSON text: `max_tokens`, `output`, `model`), which a replay
    /// compares its own request with; `None` when unknown.
    pub request: Option<String>,
    /// SHA-256 (hex) of the whole request, messages included; `None` when unknown.
    pub request_digest: Option<String>,
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
    MarkRunning(PendingEvent),
    /// Move a started task between `running` and `paused` with the event that says why.
    SetStatus {
        /// `paused` or `running`.
        status: TaskStatus,
        /// `task.paused` or `task.resumed`.
        event: PendingEvent,
    },
    /// Remove a finished task with its events, steps, decisions, model calls and breakpoints (its memories
    /// stay, with their provenance); answered after the commit with whether a finished task was removed.
    DeleteTask {
        /// The task.
        task_id: TaskId,
        /// Commit result: true when a finished task was removed.
        reply: oneshot::Sender<Result<bool, StorageError>>,
    },
    /// Insert a task's planned steps.
    InsertSteps {
        /// Task.
        task_id: TaskId,
        /// The steps.
        steps: Vec<NewStep>,
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
    /// Insert a breakpoint; answered after the commit.
    InsertBreakpoint {
        /// The breakpoint.
        breakpoint: Breakpoint,
        /// Commit result.
        reply: oneshot::Sender<Result<(), StorageError>>,
    },
    /// Remove a breakpoint; answered after the commit with whether it existed.
    DeleteBreakpoint {
        /// The breakpoint.
        id: BreakpointId,
        /// Commit result: true when a breakpoint was removed.
        reply: oneshot::Sender<Result<bool, StorageError>>,
    },
    /// Insert or replace an experiment's row; answered after the commit when `reply` is given (its
    /// creation, a client's request).
    PutExperiment {
        /// The experiment as it stands.
        experiment: Box<crate::domain::experiment::Experiment>,
        /// Commit result.
        reply: Option<oneshot::Sender<Result<(), StorageError>>>,
    },
    /// Count one use of each of these memories (by id).
    MemoriesUsed(Vec<String>),
    /// Count one success of this pattern (by id).
    PatternSucceeded(String),
    /// Answered once everything sent before it is committed.
    Flush(oneshot::Sender<()>),
    /// The task runs in another process from now on (a queue worker): this writer forgets what it knows of
    /// its log (its last `seq`), so that a later write of it continues from the stored log. Writes nothing.
    HandOff(TaskId),
}

impl WriteOp {
    /// The task this write belongs to (`None`: memories, breakpoints, counters, a flush). A breakpoint is
    /// nobody's write even when attached to a task: failing to store it must not fail the task.
    pub fn task_id(&self) -> Option<TaskId> {
        match self {
            WriteOp::CreateTask { task, .. } => Some(task.id),
            WriteOp::Event(event) | WriteOp::MarkRunning(event) => Some(event.task_id),
            WriteOp::SetStatus { event, .. } => Some(event.task_id),
            WriteOp::DeleteTask { task_id, .. } | WriteOp::InsertSteps { task_id, .. } => {
                Some(*task_id)
            }
            WriteOp::UpdateStep(update) => Some(update.task_id),
            WriteOp::Decision(record) => Some(record.task_id),
            WriteOp::LlmCall(record) => Some(record.task_id),
            WriteOp::FinishTask { end, .. } => Some(end.task_id),
            WriteOp::InsertMemories { .. }
            | WriteOp::InsertBreakpoint { .. }
            | WriteOp::DeleteBreakpoint { .. }
            | WriteOp::PutExperiment { .. }
            | WriteOp::MemoriesUsed(_)
            | WriteOp::PatternSucceeded(_)
            | WriteOp::Flush(_)
            | WriteOp::HandOff(_) => None,
        }
    }
}
