//! A task's identity, its options and the lifecycle states of tasks and their steps, shared by every layer.
//!
//! Holds no behaviour beyond parsing and naming; the lifecycle itself is driven by the Director.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::replay::{ForkOf, OnDivergence};

/// A task's id: a UUIDv7, so ids sort by creation time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TaskId(pub Uuid);

impl TaskId {
    /// A fresh id.
    pub fn new() -> Self {
        TaskId(Uuid::now_v7())
    }
}

impl Default for TaskId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for TaskId {
    type Err = uuid::Error;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(text).map(TaskId)
    }
}

/// Where a task is in its life. `Completed`, `Failed` and `Cancelled` are terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    /// Accepted and stored; waiting for the Director.
    Queued,
    /// The Director is working on it.
    Running,
    /// Waiting for a person (a cloud fallback to confirm); holds no model slot.
    Paused,
    /// Finished with a result.
    Completed,
    /// Finished without a result; the task's `error` says why.
    Failed,
    /// Stopped at the user's request.
    Cancelled,
}

impl TaskStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [TaskStatus; 6] = [
        TaskStatus::Queued,
        TaskStatus::Running,
        TaskStatus::Paused,
        TaskStatus::Completed,
        TaskStatus::Failed,
        TaskStatus::Cancelled,
    ];

    /// The stored and displayed name.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Queued => "queued",
            TaskStatus::Running => "running",
            TaskStatus::Paused => "paused",
            TaskStatus::Completed => "completed",
            TaskStatus::Failed => "failed",
            TaskStatus::Cancelled => "cancelled",
        }
    }

    /// Whether the task is over.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskStatus::Completed | TaskStatus::Failed | TaskStatus::Cancelled
        )
    }
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not a task status.
#[derive(Debug, thiserror::Error)]
#[error("unknown task status '{0}'")]
pub struct UnknownStatus(pub String);

impl FromStr for TaskStatus {
    type Err = UnknownStatus;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        TaskStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == text)
            .ok_or_else(|| UnknownStatus(text.to_owned()))
    }
}

/// Where a planned step is. `Done`, `Failed`, `Skipped` and `Cancelled` are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepStatus {
    /// Planned, not yet sent to its agent.
    Pending,
    /// Sent to its agent (again, after a restart or a failed attempt of a code step).
    Running,
    /// Finished with an output.
    Done,
    /// Failed for good; the task fails with it.
    Failed,
    /// Not run: the task ended (failed) before the step's turn.
    Skipped,
    /// Not finished: the task was cancelled.
    Cancelled,
}

impl StepStatus {
    /// Every status.
    pub const ALL: [StepStatus; 6] = [
        StepStatus::Pending,
        StepStatus::Running,
        StepStatus::Done,
        StepStatus::Failed,
        StepStatus::Skipped,
        StepStatus::Cancelled,
    ];

    /// The stored and displayed name.
    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Pending => "pending",
            StepStatus::Running => "running",
            StepStatus::Done => "done",
            StepStatus::Failed => "failed",
            StepStatus::Skipped => "skipped",
            StepStatus::Cancelled => "cancelled",
        }
    }

    /// Whether the step is still to be done or being done.
    pub fn is_open(self) -> bool {
        matches!(self, StepStatus::Pending | StepStatus::Running)
    }
}

impl fmt::Display for StepStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not a step status.
#[derive(Debug, thiserror::Error)]
#[error("unknown step status '{0}'")]
pub struct UnknownStepStatus(pub String);

impl FromStr for StepStatus {
    type Err = UnknownStepStatus;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        StepStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == text)
            .ok_or_else(|| UnknownStepStatus(text.to_owned()))
    }
}

/// Options a client may set per task.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskOptions {
    /// Most steps the plan may have (1..=`director.max_steps`; more is refused, not clamped).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "super::json_types::optional_whole"
    )]
    pub max_steps: Option<u32>,
    /// Replay the recorded model outputs of this earlier task instead of calling the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_of: Option<TaskId>,
    /// What this task may spend on models, over the configured `[budget]`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "super::json_types::optional_object"
    )]
    pub budget: Option<TaskBudget>,
    /// A fork of this finished task from one of its steps (`POST /api/v1/tasks/{id}/fork`): the model
    /// calls before the step are answered from the source's recording, the rest are live.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "super::json_types::optional_object"
    )]
    pub fork_of: Option<ForkOf>,
    /// What a replay or fork does when a call's request differs from the recorded one (default: `stop` for
    /// a replay, `live` for a fork).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_divergence: Option<OnDivergence>,
    /// QA's verification by several voters and the rule that combines their votes (over the configured
    /// `director.consensus`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "super::json_types::optional_object"
    )]
    pub consensus: Option<super::consensus::ConsensusSpec>,
    /// The named model (`[llm.models.<name>]`) every agent of this task uses instead of the configured ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Director settings of this task's own, over the configured `[director]` (an experiment's variant).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "super::json_types::optional_object"
    )]
    pub director: Option<DirectorOptions>,
}

/// What QA's final verdict does (`director.qa_verdict`, or a task's `options.director.qa_verdict`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QaVerdictMode {
    /// `fail` sends the work back for revision (`director.qa_revisions`), then fails the task.
    Decides,
    /// The verdict is recorded (event, result) and the task completes whatever it says.
    Advisory,
}

/// `[director]` settings a task may set for itself, each over the configured one when given.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectorOptions {
    /// Attempts Code gets at a code step, 1..=10.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "super::json_types::optional_whole"
    )]
    pub code_attempts: Option<u32>,
    /// Whether QA's verdict decides or is only recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qa_verdict: Option<QaVerdictMode>,
    /// Revisions a `fail` verdict sends the work back for, 0..=3.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "super::json_types::optional_whole"
    )]
    pub qa_revisions: Option<u32>,
    /// Whether the agent choice is calibrated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibrate_routing: Option<bool>,
    /// Least similarity of accepted code to the task, 0..=1 (0: off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_code_relevance: Option<f32>,
}

impl DirectorOptions {
    /// Most attempts Code may get at a code step.
    pub const MAX_CODE_ATTEMPTS: u32 = 10;
    /// Most revisions QA's `fail` may ask for.
    pub const MAX_QA_REVISIONS: u32 = 3;

    /// What is out of bounds here, each named under `at` (`director`, `options.director`): the one check
    /// of these bounds, for the configuration and for a task's options alike.
    pub fn problems(&self, at: &str) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(attempts) = self
            .code_attempts
            .filter(|n| !(1..=Self::MAX_CODE_ATTEMPTS).contains(n))
        {
            problems.push(format!(
                "{at}.code_attempts: must be within 1..={}, got {attempts}",
                Self::MAX_CODE_ATTEMPTS
            ));
        }
        if let Some(revisions) = self.qa_revisions.filter(|n| *n > Self::MAX_QA_REVISIONS) {
            problems.push(format!(
                "{at}.qa_revisions: must be within 0..={}, got {revisions}",
                Self::MAX_QA_REVISIONS
            ));
        }
        if let Some(bar) = self
            .min_code_relevance
            .filter(|bar| !(bar.is_finite() && (0.0..=1.0).contains(bar)))
        {
            problems.push(format!(
                "{at}.min_code_relevance: must be within 0..=1, got {bar}"
            ));
        }
        problems
    }
}

impl TaskOptions {
    /// The task whose recording this one re-runs (a replay's or a fork's source), if any.
    pub fn rerun_of(&self) -> Option<TaskId> {
        self.replay_of
            .or_else(|| self.fork_of.as_ref().map(|fork| fork.task))
    }

    /// Whether this task re-runs a recording (a replay or a fork): it leaves no memories and learns nothing.
    pub fn is_rerun(&self) -> bool {
        self.rerun_of().is_some()
    }

    /// What a divergence from the recording does for this task (see [`OnDivergence::default_for`]).
    pub fn divergence_action(&self) -> OnDivergence {
        self.on_divergence
            .unwrap_or_else(|| OnDivergence::default_for(self.fork_of.is_some()))
    }
}

/// A task's spending limits; a limit left out is the configured one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskBudget {
    /// Most tokens (input and output) of all the task's model calls.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "super::json_types::optional_whole"
    )]
    pub max_tokens: Option<u64>,
    /// Most US dollars of all the task's model calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cost_usd: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_through_their_names() {
        for status in TaskStatus::ALL {
            assert_eq!(status.as_str().parse::<TaskStatus>().unwrap(), status);
        }
        assert!("done".parse::<TaskStatus>().is_err());
    }

    #[test]
    fn step_statuses_round_trip_through_their_names() {
        for status in StepStatus::ALL {
            assert_eq!(status.as_str().parse::<StepStatus>().unwrap(), status);
            assert_eq!(serde_json::to_value(status).unwrap(), status.as_str());
        }
        assert!("finished".parse::<StepStatus>().is_err());
        assert!(StepStatus::Running.is_open() && !StepStatus::Skipped.is_open());
    }

    #[test]
    fn only_final_states_are_terminal() {
        assert!(!TaskStatus::Queued.is_terminal());
        assert!(!TaskStatus::Running.is_terminal());
        assert!(TaskStatus::Cancelled.is_terminal());
    }

    #[test]
    fn task_ids_sort_by_creation() {
        let first = TaskId::new();
        let second = TaskId::new();
        assert!(first < second);
        assert_eq!(first.to_string().parse::<TaskId>().unwrap(), first);
    }
}
