//! The entries of a task's event log: [`EventKind`] (stable names clients match on) and [`Event`].
//!
//! How events are appended and followed lives in `events` (the hub and subscriptions) and `storage` (the
//! writer that gives each its `seq`); this file only names them.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::agent::AgentKind;
use super::task::TaskId;

/// What happened. The names are stable: clients match on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventKind {
    /// The task was accepted and stored.
    #[serde(rename = "task.queued")]
    TaskQueued,
    /// The Director started working on it.
    #[serde(rename = "task.started")]
    TaskStarted,
    /// The Director's plan: its steps.
    #[serde(rename = "plan.created")]
    PlanCreated,
    /// A choice, with the options weighed and their probabilities.
    #[serde(rename = "decision.made")]
    DecisionMade,
    /// An agent began a step.
    #[serde(rename = "agent.started")]
    AgentStarted,
    /// A piece of model output, streamed.
    #[serde(rename = "llm.token")]
    LlmToken,
    /// A model call ended, with usage.
    #[serde(rename = "llm.finished")]
    LlmFinished,
    /// An agent finished a step.
    #[serde(rename = "agent.finished")]
    AgentFinished,
    /// The supervisor restarted an agent.
    #[serde(rename = "agent.restarted")]
    AgentRestarted,
    /// QA's verdict on the work.
    #[serde(rename = "qa.verdict")]
    QaVerdict,
    /// An agent searched memory: the query, every hit with its similarity score, and which were used.
    #[serde(rename = "memory.read")]
    MemoryRead,
    /// An agent called a tool: which, with what, how it went, how long it took.
    #[serde(rename = "tool.called")]
    ToolCalled,
    /// A person replayed a recorded tool call of an unfinished task (`POST .../tool-calls/{call_id}/replay`):
    /// `data.call_id`, `data.seq` (the recorded `tool.called`), `data.tool`, `data.same`,
    /// `data.differences`. A finished task's log is closed, so a replay of its calls is not logged there.
    #[serde(rename = "tool.replayed")]
    ToolReplayed,
    /// The sandbox contained something a run tried (network, filesystem, fork bomb, memory, runaway, output).
    #[serde(rename = "sandbox.violation")]
    SandboxViolation,
    /// One attempt of the Code/QA loop: the step, the attempt number, whether the test passed, the feedback.
    #[serde(rename = "code.attempt")]
    CodeAttempt,
    /// QA's final verdict was `fail` and the work goes back for a revision (or, out of revisions, the task
    /// fails): `data.round`, `data.of`, `data.step`, `data.feedback`, `data.outcome`.
    #[serde(rename = "qa.revision")]
    QaRevision,
    /// The task waits for a person: `data.reason` (`cloud_fallback`: the estimated cost; `breakpoint`,
    /// `step`, `restart`: debug mode, with `data.key`, `data.point`, `data.breakpoint` and what is pending in
    /// `data.pending`).
    #[serde(rename = "task.paused")]
    TaskPaused,
    /// A paused task goes on (or, declined, ends): `data.reason` (`cloud_fallback` with `data.answer`;
    /// `debug` with `data.action` and `data.key`; a task taken over after its process died: what was reused).
    #[serde(rename = "task.resumed")]
    TaskResumed,
    /// A person changed what a paused task was about to do: `data.what` (`decision`, `instruction`,
    /// `arguments`), `data.key`, `data.before`, `data.after`.
    #[serde(rename = "decision.overridden")]
    DecisionOverridden,
    /// A model call went to the fallback provider: `data.from`, `data.to`, `data.reason`.
    #[serde(rename = "llm.fallback")]
    LlmFallback,
    /// A model call would take the task over its budget: `data.limit`, `data.used`, `data.action`.
    #[serde(rename = "budget.exceeded")]
    BudgetExceeded,
    /// A replay's (or fork's) model call asked something else than the recorded call of the same purpose
    /// (or one never recorded): `data.purpose`, `data.part` (what differed), `data.position`,
    /// `data.recorded`, `data.requested` (excerpts), `data.action` (`stop` or `live`).
    #[serde(rename = "replay.diverged")]
    ReplayDiverged,
    /// The task is a fork of a finished one: `data.source`, `data.from_step`, `data.override`,
    /// `data.prompt_changed`.
    #[serde(rename = "task.forked")]
    TaskForked,
    /// A breakpoint was attached to the task: `data.breakpoint` (the stored breakpoint).
    #[serde(rename = "breakpoint.set")]
    BreakpointSet,
    /// A breakpoint attached to the task was removed: `data.breakpoint`.
    #[serde(rename = "breakpoint.removed")]
    BreakpointRemoved,
    /// Several voters verified the work: their votes, the rule, the outcome and who dissented.
    #[serde(rename = "consensus.reached")]
    ConsensusReached,
    /// Terminal: the task has a result.
    #[serde(rename = "task.completed")]
    TaskCompleted,
    /// Terminal: the task failed; `data.error` says why.
    #[serde(rename = "task.failed")]
    TaskFailed,
    /// Terminal: the task was cancelled.
    #[serde(rename = "task.cancelled")]
    TaskCancelled,
}

impl EventKind {
    /// Every kind.
    pub const ALL: [EventKind; 29] = [
        EventKind::TaskQueued,
        EventKind::TaskStarted,
        EventKind::PlanCreated,
        EventKind::DecisionMade,
        EventKind::AgentStarted,
        EventKind::LlmToken,
        EventKind::LlmFinished,
        EventKind::AgentFinished,
        EventKind::AgentRestarted,
        EventKind::QaVerdict,
        EventKind::MemoryRead,
        EventKind::ToolCalled,
        EventKind::ToolReplayed,
        EventKind::SandboxViolation,
        EventKind::CodeAttempt,
        EventKind::QaRevision,
        EventKind::TaskPaused,
        EventKind::TaskResumed,
        EventKind::DecisionOverridden,
        EventKind::LlmFallback,
        EventKind::BudgetExceeded,
        EventKind::ReplayDiverged,
        EventKind::TaskForked,
        EventKind::BreakpointSet,
        EventKind::BreakpointRemoved,
        EventKind::ConsensusReached,
        EventKind::TaskCompleted,
        EventKind::TaskFailed,
        EventKind::TaskCancelled,
    ];

    /// The stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::TaskQueued => "task.queued",
            EventKind::TaskStarted => "task.started",
            EventKind::PlanCreated => "plan.created",
            EventKind::DecisionMade => "decision.made",
            EventKind::AgentStarted => "agent.started",
            EventKind::LlmToken => "llm.token",
            EventKind::LlmFinished => "llm.finished",
            EventKind::AgentFinished => "agent.finished",
            EventKind::AgentRestarted => "agent.restarted",
            EventKind::QaVerdict => "qa.verdict",
            EventKind::MemoryRead => "memory.read",
            EventKind::ToolCalled => "tool.called",
            EventKind::ToolReplayed => "tool.replayed",
            EventKind::SandboxViolation => "sandbox.violation",
            EventKind::CodeAttempt => "code.attempt",
            EventKind::QaRevision => "qa.revision",
            EventKind::TaskPaused => "task.paused",
            EventKind::TaskResumed => "task.resumed",
            EventKind::DecisionOverridden => "decision.overridden",
            EventKind::LlmFallback => "llm.fallback",
            EventKind::BudgetExceeded => "budget.exceeded",
            EventKind::ReplayDiverged => "replay.diverged",
            EventKind::TaskForked => "task.forked",
            EventKind::BreakpointSet => "breakpoint.set",
            EventKind::BreakpointRemoved => "breakpoint.removed",
            EventKind::ConsensusReached => "consensus.reached",
            EventKind::TaskCompleted => "task.completed",
            EventKind::TaskFailed => "task.failed",
            EventKind::TaskCancelled => "task.cancelled",
        }
    }

    /// Whether this kind ends a task's log.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            EventKind::TaskCompleted | EventKind::TaskFailed | EventKind::TaskCancelled
        )
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not an event kind.
#[derive(Debug, thiserror::Error)]
#[error("unknown event kind '{0}'")]
pub struct UnknownEventKind(pub String);

impl FromStr for EventKind {
    type Err = UnknownEventKind;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        EventKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == text)
            .ok_or_else(|| UnknownEventKind(text.to_owned()))
    }
}

/// One entry of a task's event log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the task's log: 1, 2, 3, ... without gaps.
    pub seq: i64,
    /// The task.
    pub task_id: TaskId,
    /// When it happened.
    pub at: DateTime<Utc>,
    /// What happened.
    pub kind: EventKind,
    /// The agent it concerns, if any.
    pub agent: Option<AgentKind>,
    /// The task's trace (hex).
    pub trace_id: String,
    /// The span that emitted it (hex).
    pub span_id: String,
    /// Kind-specific details.
    pub data: serde_json::Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_through_names_and_serde() {
        for kind in EventKind::ALL {
            assert_eq!(kind.as_str().parse::<EventKind>().unwrap(), kind);
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
        }
    }

    #[test]
    fn exactly_three_kinds_are_terminal() {
        let terminal: Vec<_> = EventKind::ALL
            .into_iter()
            .filter(|k| k.is_terminal())
            .collect();
        assert_eq!(
            terminal,
            vec![
                EventKind::TaskCompleted,
                EventKind::TaskFailed,
                EventKind::TaskCancelled
            ]
        );
    }
}
