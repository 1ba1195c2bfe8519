//! Re-runs of a recorded task in the flow (issue 16): the models of a replay (`options.replay_of`) or a
//! fork (`options.fork_of`), whose source's recording answers first (`TaskModels::with_replay`: by purpose,
//! while the request is the recorded one); what a re-run sees of memory (what its source saw,
//! `Memory::set_view`); the fork's announcement (`task.forked`); and the hook through which a decision is
//! taken otherwise than the model took it ([`TaskFlow::override_for`]).
//!
//! Not here: what a divergence does (`llm::recorded`), which purposes a fork replays
//! (`domain::replay::replayed_in_fork`), validating a fork (`service`).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::json;

use super::{FlowError, TaskFlow};
use crate::domain::{AgentKind, DecisionKind, DecisionOverride, EventKind, TaskId};
use crate::llm::models::{Replay, ReplayScope, TaskModels};
use crate::llm::replay::ReplayProvider;

/// Most links followed from a re-run to the live task at the root of its chain (a replay of a fork of
/// ...), for its view of memory.
const MAX_CHAIN: usize = 32;

/// A decision the task's options impose at a step, as the flow applies it.
pub(super) struct Overridden {
    /// The option taken.
    pub(super) chosen: String,
    /// What `decision.made` says of it: the model's choice (`before`), the imposed one (`after`), and
    /// where the override comes from.
    pub(super) detail: serde_json::Value,
}

impl TaskFlow {
    /// The task whose recording this one re-runs, and which of its calls it answers.
    fn rerun(&self) -> Option<(TaskId, ReplayScope)> {
        if let Some(source) = self.options.replay_of {
            return Some((source, ReplayScope::Whole));
        }
        self.options
            .fork_of
            .as_ref()
            .map(|fork| (fork.task, ReplayScope::BeforeStep(fork.from_step)))
    }

    /// `models` with the re-run's source answering first (see [`TaskModels::replayed`]); `models` as
    /// they are for a task that re-runs nothing. A replay of a task without recorded calls is refused.
    pub(super) async fn with_rerun(&self, models: TaskModels) -> Result<TaskModels, FlowError> {
        let Some((source, scope)) = self.rerun() else {
            return Ok(models);
        };
        let recording = self.source_recording(source).await?;
        if recording.is_empty() {
            return Err(FlowError::Replay(format!(
                "task {source} has no recorded model calls"
            )));
        }
        let action = self.options.divergence_action();
        Ok(models.with_replay(Replay::new(recording, scope, action)))
    }

    /// Task `source`'s recording, read once for a recording that is complete.
    async fn source_recording(&self, source: TaskId) -> Result<Arc<ReplayProvider>, FlowError> {
        if let Some(cached) = self.deps.replays.get(source) {
            return Ok(cached);
        }
        let recording = self.deps.storage.recording(source).await?;
        let provider = Arc::new(ReplayProvider::from_recording(source, recording)?);
        // A recording that holds the final verification belongs to a task that got to its end: it will not
        // change, so later replays of it can skip the read.
        if provider.has("verify") {
            self.deps.replays.insert(source, Arc::clone(&provider));
        }
        Ok(provider)
    }

    /// Before a re-run's work: it sees memory as the live task at the root of its chain saw it (memories
    /// stored before that task started), so that it asks the recorded questions; a fork that is not a
    /// resumed one announces itself (`task.forked`).
    pub(super) async fn enter_rerun(&self) {
        let Some(source) = self.options.rerun_of() else {
            return;
        };
        if let Some(as_of) = self.memory_view(source).await {
            self.deps.agent.memory.set_view(self.task_id, as_of);
        }
        let Some(fork) = self
            .options
            .fork_of
            .as_ref()
            .filter(|_| self.resume.is_none())
        else {
            return;
        };
        let prompt_changed = match self.deps.storage.task(fork.task).await {
            Ok(found) => found.map(|task| task.prompt != self.prompt),
            Err(error) => {
                tracing::warn!(task_id = %self.task_id, %error, "read a fork's source");
                None
            }
        };
        tracing::info!(
            troupe.fork.source = %fork.task,
            troupe.fork.from_step = fork.from_step,
            troupe.fork.overridden = fork.decision_override.is_some(),
            "task forked"
        );
        self.deps.agent.events.emit(
            self.task_id,
            EventKind::TaskForked,
            Some(AgentKind::Director),
            json!({
                "source": fork.task,
                "from_step": fork.from_step,
                "override": fork.decision_override,
                "prompt_changed": prompt_changed,
                "replayed": format!(
                    "plan, assign.calibration and the calls of steps before {} (assign.K, work.K*, test.K*); \
                     the rest live",
                    fork.from_step
                ),
            }),
        );
    }

    /// After a re-run: memory is seen as it is again.
    pub(super) fn leave_rerun(&self) {
        if self.options.is_rerun() {
            self.deps.agent.memory.clear_view(self.task_id);
        }
    }

    /// When the live task at the root of `source`'s chain of re-runs started (its creation, if it never
    /// did); `None` when it cannot be read (the re-run then sees memory as it is, and says it diverges
    /// where that matters).
    async fn memory_view(&self, mut source: TaskId) -> Option<DateTime<Utc>> {
        let mut seen = None;
        for _ in 0..MAX_CHAIN {
            let task = match self.deps.storage.task(source).await {
                Ok(Some(task)) => task,
                Ok(None) => break,
                Err(error) => {
                    tracing::warn!(task_id = %self.task_id, %error, "read a re-run's source");
                    break;
                }
            };
            seen = Some(task.started_at.unwrap_or(task.created_at));
            match task.options.rerun_of() {
                Some(next) => source = next,
                None => break,
            }
        }
        seen
    }

    /// The decision of kind `kind` about step `step` that the task's options take instead of the model
    /// (a fork's `override`), if any. The one place a flow looks for an imposed decision.
    pub fn override_for(&self, kind: DecisionKind, step: i32) -> Option<&DecisionOverride> {
        let fork = self.options.fork_of.as_ref()?;
        fork.decision_override.as_ref().filter(|decision| {
            decision.decision == kind && decision.step.unwrap_or(fork.from_step) == step
        })
    }

    /// The option taken for decision `kind` about `step` when the model chose `model_choice`: the imposed
    /// one (with what `decision.made` says of it) where [`TaskFlow::override_for`] has one, else `None`.
    pub(super) fn overridden(
        &self,
        kind: DecisionKind,
        step: i32,
        model_choice: &str,
    ) -> Option<Overridden> {
        let decision = self.override_for(kind, step)?;
        let source = self.options.fork_of.as_ref().map(|fork| fork.task);
        Some(Overridden {
            chosen: decision.chosen.clone(),
            detail: json!({
                "before": model_choice,
                "after": decision.chosen,
                "by": "fork",
                "fork_of": source,
            }),
        })
    }
}
