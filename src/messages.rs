//! The messages to the specialists and the Director, their replies' types (the step, its output,
//! [`AgentError`]), and the [`Envelope`] every one of them travels in. The Director's own `Dispatch` (from a
//! task flow to its Director) lives in `director`, beside the supervision errors it answers with.
//!
//! An envelope carries the sender's OpenTelemetry context (trace id, span id, flags, tracestate: the W3C
//! trace context), the task id and the send time. The receiving handler opens its span as a child of that
//! context, so one task is one trace across every actor; the send time gives the hop latency; the
//! [`MailboxTicket`] inside keeps `troupe_mailbox_depth` honest even when a message is dropped unread.

use std::sync::Arc;
use std::time::Instant;

use actix::Message;
use prometheus::IntGauge;
use tokio_util::sync::CancellationToken;

use crate::domain::{AgentKind, TaskId, TaskOptions, TaskStatus};
use crate::llm::models::TaskModels;
use crate::llm::LlmError;
use crate::memory::{MemoryDraft, MemoryHit};
use crate::sandbox::RunReport;
use crate::storage::ResumeRecords;
use crate::telemetry::propagation;

/// A message with its trace context, task and send time.
pub struct Envelope<M> {
    /// The sender's span context; the handler's span is its child.
    pub trace: opentelemetry::Context,
    /// The task the message is about.
    pub task_id: TaskId,
    /// When it was sent.
    pub sent_at: Instant,
    /// Counts the message in its receiver's mailbox depth until received.
    pub ticket: MailboxTicket,
    /// The message.
    pub payload: M,
}

impl<M> Envelope<M> {
    /// Wraps `payload` with the current span's context, stamped now, uncounted.
    pub fn new(task_id: TaskId, payload: M) -> Self {
        Envelope {
            trace: propagation::current(),
            task_id,
            sent_at: Instant::now(),
            ticket: MailboxTicket::none(),
            payload,
        }
    }

    /// Counts this message in `depth` until it is received (or dropped).
    pub fn counted(mut self, depth: IntGauge) -> Self {
        depth.inc();
        self.ticket = MailboxTicket(Some(depth));
        self
    }
}

impl<M> Message for Envelope<M>
where
    M: Message,
    M::Result: 'static,
{
    type Result = M::Result;
}

/// Holds one unit of a mailbox-depth gauge: released when the handler takes the message, or when the
/// message is dropped unread (its actor died), so the gauge never drifts.
pub struct MailboxTicket(Option<IntGauge>);

impl MailboxTicket {
    /// A ticket that counts nothing.
    pub fn none() -> Self {
        MailboxTicket(None)
    }

    /// The handler has the message: it no longer waits in the mailbox.
    pub fn received(&mut self) {
        if let Some(depth) = self.0.take() {
            depth.dec();
        }
    }
}

impl Drop for MailboxTicket {
    fn drop(&mut self) {
        self.received();
    }
}

/// What a specialist is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    /// Work on a planned step (Research, Code, or QA when the Director picks it for a step).
    Work,
    /// Check the work done so far against the task (QA, at the end of every task).
    Verify,
    /// Run the test Code wrote for a step in the sandbox (QA, after every attempt of a code step).
    Test,
}

impl StepKind {
    /// The stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            StepKind::Work => "work",
            StepKind::Verify => "verify",
            StepKind::Test => "test",
        }
    }
}

/// One step for a specialist.
#[derive(Debug, Clone)]
pub struct StepSpec {
    /// Position in the plan, from 1.
    pub idx: i32,
    /// Work or verification.
    pub kind: StepKind,
    /// The user's prompt.
    pub prompt: String,
    /// The step's instruction.
    pub instruction: String,
    /// The steps this one waits for, directly or through others, in step order: the earlier work it is
    /// shown (the verification waits for every work step).
    pub after: Vec<i32>,
    /// Outputs of the steps in `after` (in step order), already shortened; the specialist fills it from the
    /// task's conversation window in short-term memory.
    pub earlier: Vec<String>,
    /// Memories recalled for this step (best first); filled by the specialist before it asks the model.
    pub recalled: Vec<MemoryHit>,
    /// Which attempt this is, from 1 (dispatches of this step: restarts and revisions included).
    pub attempt: u32,
    /// Which try of this dispatch (from 1): a try after the agent was restarted (a crash, a panic, a
    /// timeout) is 2, 3, ...; its model calls get their own purposes (`work.2.a2`), so a retried step never
    /// collides with what the replaced incarnation recorded.
    pub retry: u32,
    /// For a code step: which attempt of the Code/QA loop (from 1); for a test step, the attempt tested.
    pub revision: u32,
    /// Which round of QA's verification this belongs to: 1, then 2, ... after each `fail` verdict that
    /// sent the work back (`director.qa_revisions`).
    pub round: u32,
    /// For a step sent back (a failed or vacuous test, or QA's `fail` verdict): the work that was rejected
    /// and why.
    pub feedback: Option<Feedback>,
    /// For a test step: the workspace file to run.
    pub test_file: Option<String>,
    /// For the verification: what the Director knows of each code step (its instruction, the functions
    /// the code defines and those its test calls), one line each.
    pub review: Vec<String>,
    /// Files of earlier steps in the task's workspace (name, content shortened), read by an agent that
    /// looks (Code, through `list_files`/`read_file`).
    pub earlier_files: Vec<(String, String)>,
    /// For a verification given to several voters: which voter this is (from 1), so that QA votes through
    /// its lens as a scored choice.
    pub voter: Option<u32>,
}

impl StepSpec {
    /// `key` (a model-call purpose or a tool-call id of this step) as this try's own: unchanged on the first
    /// try, `key.a2`, `key.a3`, ... on a try after the agent was restarted.
    pub fn own(&self, key: String) -> String {
        if self.retry > 1 {
            format!("{key}.a{}", self.retry)
        } else {
            key
        }
    }
}

/// Why work goes back to its agent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FeedbackKind {
    /// The code's test failed (or there was no usable code).
    #[default]
    TestFailed,
    /// The test passed but cannot fail: it passed against a stub of the code too, or asserts nothing.
    VacuousTest,
    /// The code passed its test but is not for the task (another task's function, a copied example).
    OffTask,
    /// QA's final verdict was `fail`.
    QaVerdict,
}

/// What the Director sends back with work it rejects.
#[derive(Debug, Clone, Default)]
pub struct Feedback {
    /// Why the work came back.
    pub kind: FeedbackKind,
    /// The rejected work (for a code step, its code).
    pub code: String,
    /// What was wrong: the failure output (the tail of the test run's stderr, or why there was nothing to
    /// run), why the test is vacuous, or QA's feedback.
    pub failure: String,
    /// Fixes learned from earlier tasks whose failures look like this one.
    pub known_fixes: Vec<String>,
}

/// What Code submits for a code step: the code and a test that exercises it, written to the task's
/// workspace as `step<N>.py` and `step<N>_test.py` (the code followed by the test, runnable alone).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CodeSubmission {
    /// The code.
    pub code: String,
    /// The test: statements that raise (an `assert`) when the code is wrong.
    pub test: String,
    /// The workspace file that runs code and test together.
    pub test_file: String,
}

/// What QA found when it ran a code step's test.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TestResult {
    /// The run exited 0 with nothing contained.
    pub passed: bool,
    /// The run as the sandbox measured it.
    pub report: RunReport,
    /// For a failure: the output Code gets back.
    pub failure: Option<String>,
}

/// QA's verdict.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Verdict {
    /// "pass" or "fail".
    pub verdict: String,
    /// What is wrong or right.
    pub feedback: String,
}

/// What a specialist produced.
#[derive(Debug, Clone, Default)]
pub struct StepOutput {
    /// The output text.
    pub text: String,
    /// QA's verdict, for verification steps.
    pub verdict: Option<Verdict>,
    /// What the step leaves in long-term memory (stored with the task's end if it completes).
    pub memories: Vec<MemoryDraft>,
    /// A code step's submission (None when Code's answer held no usable code).
    pub code: Option<CodeSubmission>,
    /// A test step's result.
    pub test: Option<TestResult>,
    /// A voter's verdict as the model scored it (the options with their probabilities).
    pub vote: Option<crate::llm::Choice>,
}

/// A step failed inside an agent.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AgentError {
    /// The agent's work panicked (caught); the supervisor restarts the agent.
    #[error("agent panicked: {0}")]
    Panicked(String),
    /// The model call failed.
    #[error(transparent)]
    Llm(#[from] LlmError),
    /// The model's output is unusable.
    #[error("malformed model output: {0}")]
    MalformedOutput(String),
    /// A tool the agent called failed (the sandbox refused, a write failed, a call was malformed).
    #[error("tool: {0}")]
    Tool(String),
    /// The task was cancelled.
    #[error("cancelled")]
    Cancelled,
}

impl From<crate::tools::ToolError> for AgentError {
    /// A tool call that did not run because the task was cancelled (or aborted while paused before it) is
    /// the step's cancellation; any other tool error is the tool's failure.
    fn from(error: crate::tools::ToolError) -> Self {
        match error {
            crate::tools::ToolError::Cancelled => AgentError::Cancelled,
            other => AgentError::Tool(other.to_string()),
        }
    }
}

/// Director to specialist: work one step with this model, stop when `cancel` fires.
#[derive(Message)]
#[rtype(result = "Result<StepOutput, AgentError>")]
pub struct RunStep {
    /// The step.
    pub step: StepSpec,
    /// The task's models (the configured ones, or a replay).
    pub llm: Arc<TaskModels>,
    /// The task's cancellation.
    pub cancel: CancellationToken,
    /// Which instance of the agent's pool runs it, from 1 (the Director sets it when it routes the step).
    pub instance: u32,
}

/// API/CLI to Director: start (or queue) a stored task.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StartTask {
    /// The user's prompt.
    pub prompt: String,
    /// Options given at submission.
    pub options: TaskOptions,
    /// The task's place among the admitted tasks (`director.max_concurrent_tasks` + `max_queued_tasks`),
    /// held until the task ends and then given back (dropped with the message if it never runs).
    pub admission: Option<tokio::sync::OwnedSemaphorePermit>,
    /// Set when the task is taken over from a process that died: what is stored of it, to continue from.
    pub resume: Option<Resume>,
}

/// A task taken over from a process whose lease expired, and what is stored of it.
#[derive(Debug, Clone)]
pub struct Resume {
    /// The lease that owned it.
    pub owner_was: Option<String>,
    /// Where it stood (`running` or `paused`; a `queued` task is started afresh, not resumed).
    pub status_was: TaskStatus,
    /// Its steps, decisions, recorded model calls, sandbox runs and code attempts.
    pub records: ResumeRecords,
}

/// API/CLI to Director: cancel a queued or running task.
#[derive(Message)]
#[rtype(result = "Result<(), NotRunning>")]
pub struct CancelTask;

/// The task is not queued or running in this Director.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("task is not queued or running")]
pub struct NotRunning;

/// API to Director: the agents and their health.
#[derive(Message)]
#[rtype(result = "Vec<AgentStatus>")]
pub struct GetAgents;

/// One agent as `GET /api/v1/agents` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AgentStatus {
    /// Agent name.
    pub name: AgentKind,
    /// "running".
    pub status: &'static str,
    /// Restarts since start-up.
    pub restarts: u64,
    /// Messages waiting in its mailbox.
    pub mailbox_depth: i64,
    /// Work accepted and not finished.
    pub in_flight: i64,
    /// Instances in its pool (`agents.<agent>.instances`; the Director is one).
    pub instances: usize,
    /// Steps in flight on each instance, in instance order (the Director: its running tasks).
    pub busy: Vec<usize>,
    /// The tasks it works for now (the Director: its running tasks), in id order.
    pub tasks: Vec<TaskId>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(retry: u32) -> StepSpec {
        StepSpec {
            idx: 2,
            kind: StepKind::Work,
            prompt: "p".into(),
            instruction: "i".into(),
            after: Vec::new(),
            earlier: Vec::new(),
            recalled: Vec::new(),
            attempt: retry,
            retry,
            revision: 1,
            round: 1,
            feedback: None,
            test_file: None,
            review: Vec::new(),
            earlier_files: Vec::new(),
            voter: None,
        }
    }

    #[test]
    fn a_try_after_a_restart_has_keys_of_its_own() {
        assert_eq!(spec(1).own("work.2".into()), "work.2");
        assert_eq!(spec(2).own("work.2".into()), "work.2.a2");
        assert_eq!(spec(3).own("test.2.r2".into()), "test.2.r2.a3");
    }
}
