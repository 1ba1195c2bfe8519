//! Forks and replays as the core accepts them: [`Core::fork`] (`POST /api/v1/tasks/{id}/fork`: a new task
//! with the source's prompt and options and `options.fork_of`), and the checks every submission with
//! `fork_of` or `on_divergence` passes (`Core::submit` calls [`Core::check_rerun`]).
//!
//! What a fork then does is the flow's (`director/flow/fork.rs`).

use serde::Deserialize;
use tracing::Instrument;

use super::{Core, SubmitError};
use crate::domain::{
    AgentKind, DecisionKind, DecisionOverride, ForkOf, OnDivergence, TaskId, TaskOptions,
};

/// What a fork asks for (the body of `POST /api/v1/tasks/{id}/fork`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForkRequest {
    /// The first step made live (1..= the source's steps, its verification included).
    #[serde(deserialize_with = "crate::domain::json_types::whole")]
    pub from_step: i32,
    /// A decision at the fork point taken differently.
    #[serde(
        default,
        rename = "override",
        deserialize_with = "crate::domain::json_types::optional_object"
    )]
    pub decision_override: Option<DecisionOverride>,
    /// Another prompt (the source's when left out); the plan's request then differs, so nothing is
    /// replayed: the fork diverges at `plan` and runs live.
    #[serde(default)]
    pub prompt: Option<String>,
    /// What a divergence does (default `live`).
    #[serde(default)]
    pub on_divergence: Option<OnDivergence>,
}

impl Core {
    /// Forks finished task `source`: a new task with its prompt (or `request.prompt`) and its options
    /// (without its own `replay_of`/`fork_of`), and `fork_of = {task, from_step, override}`; submitted like
    /// any task (see [`Core::submit`]). A `task.fork` span.
    pub async fn fork(&self, source: TaskId, request: ForkRequest) -> Result<TaskId, SubmitError> {
        let span = tracing::info_span!(
            "task.fork",
            troupe.fork.source = %source,
            troupe.fork.from_step = request.from_step,
            troupe.fork.overridden = request.decision_override.is_some(),
            troupe.task.id = tracing::field::Empty,
        );
        async move {
            let task = self
                .storage
                .task(source)
                .await?
                .ok_or(SubmitError::ForkSourceNotFound(source))?;
            let options = TaskOptions {
                replay_of: None,
                fork_of: Some(ForkOf {
                    task: source,
                    from_step: request.from_step,
                    decision_override: request.decision_override,
                }),
                on_divergence: request.on_divergence,
                ..task.options
            };
            let prompt = request.prompt.unwrap_or(task.prompt);
            let id = self.submit(&prompt, options).await?;
            tracing::Span::current().record("troupe.task.id", tracing::field::display(id));
            Ok(id)
        }
        .instrument(span)
        .await
    }

    /// The checks of a replay's or fork's options: `replay_of` and `fork_of` exclude each other,
    /// `on_divergence` needs one of them; a fork's source exists and has finished, `from_step` is one of
    /// its steps, an override is about the fork's step and names a specialist, and a fork whose prompt
    /// differs from its source's (so that it diverges at its plan) does not ask to stop there.
    pub(super) async fn check_rerun(
        &self,
        prompt: &str,
        options: &TaskOptions,
    ) -> Result<(), SubmitError> {
        if options.replay_of.is_some() && options.fork_of.is_some() {
            return Err(SubmitError::InvalidOption(
                "options.replay_of and options.fork_of exclude each other: a task replays or forks one task"
                    .into(),
            ));
        }
        if options.on_divergence.is_some() && !options.is_rerun() {
            return Err(SubmitError::InvalidOption(
                "options.on_divergence applies to a replay or a fork: set options.replay_of or options.fork_of"
                    .into(),
            ));
        }
        let Some(fork) = &options.fork_of else {
            return Ok(());
        };
        let source = self
            .storage
            .task(fork.task)
            .await?
            .ok_or(SubmitError::ForkSourceNotFound(fork.task))?;
        if !source.status.is_terminal() {
            return Err(SubmitError::ForkSourceUnfinished {
                id: fork.task,
                status: source.status,
            });
        }
        let steps = self.storage.steps(fork.task).await?;
        let Some(last) = steps.last().map(|step| step.idx) else {
            return Err(SubmitError::InvalidOption(format!(
                "task {} has no steps to fork from: it ended before its plan was stored",
                fork.task
            )));
        };
        if !(1..=last).contains(&fork.from_step) {
            return Err(SubmitError::InvalidOption(format!(
                "from_step must be one of task {}'s steps, 1..={last} (its verification is {last}), got {}",
                fork.task, fork.from_step
            )));
        }
        if let Some(decision) = &fork.decision_override {
            check_override(decision, fork.from_step, last)?;
        }
        if options.on_divergence == Some(OnDivergence::Stop) && prompt != source.prompt.trim() {
            return Err(SubmitError::InvalidOption(
                "a fork with another prompt diverges at its first call (plan): on_divergence must be live"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// An override's checks: about the fork's step (`from_step`), a work step (the verification, `last`, has
/// no agent to choose), naming a specialist.
fn check_override(
    decision: &DecisionOverride,
    from_step: i32,
    last: i32,
) -> Result<(), SubmitError> {
    let step = decision.step.unwrap_or(from_step);
    if step != from_step {
        return Err(SubmitError::InvalidOption(format!(
            "override.step must be the fork's step ({from_step}): a fork changes one decision, at the step \
             it goes live from; got {step}"
        )));
    }
    match decision.decision {
        DecisionKind::AssignAgent => {
            if step == last {
                return Err(SubmitError::InvalidOption(format!(
                    "step {step} is the verification, which QA always works: no agent to choose"
                )));
            }
            let names: Vec<&str> = AgentKind::SPECIALISTS.iter().map(|a| a.as_str()).collect();
            let known = decision
                .chosen
                .parse::<AgentKind>()
                .is_ok_and(AgentKind::is_specialist);
            if !known {
                return Err(SubmitError::InvalidOption(format!(
                    "override.chosen must be a specialist ({}) for assign_agent, got '{}'",
                    names.join(", "),
                    decision.chosen.chars().take(64).collect::<String>()
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(step: Option<i32>, chosen: &str) -> DecisionOverride {
        DecisionOverride {
            decision: DecisionKind::AssignAgent,
            step,
            chosen: chosen.to_owned(),
        }
    }

    #[test]
    fn an_override_must_be_at_the_fork_point_and_name_a_specialist() {
        assert!(check_override(&decision(None, "research"), 2, 3).is_ok());
        assert!(check_override(&decision(Some(2), "qa"), 2, 3).is_ok());
        let error = |result: Result<(), SubmitError>| result.unwrap_err().to_string();
        assert!(error(check_override(&decision(Some(1), "code"), 2, 3)).contains("fork's step (2)"));
        assert!(error(check_override(&decision(None, "director"), 2, 3)).contains("specialist"));
        assert!(error(check_override(&decision(None, "nobody"), 2, 3)).contains("'nobody'"));
        assert!(error(check_override(&decision(None, "code"), 3, 3)).contains("verification"));
    }
}
