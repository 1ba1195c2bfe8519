//! Sending one step to its agent through the Director, again after a restart while the policy allows, and
//! keeping the step's stored row up to date as it goes.

use std::sync::Arc;

use super::{FlowError, TaskFlow};
use crate::director::{Dispatch, DispatchError};
use crate::domain::{AgentKind, StepStatus};
use crate::llm::models::TaskModels;
use crate::messages::{Envelope, Feedback, RunStep, StepKind, StepOutput, StepSpec};
use crate::storage::records::{StepUpdate, WriteOp};

/// When a step sent to its agent is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ends {
    /// With the agent's answer.
    WithAnswer,
    /// When the Director accepts the answer (a code step: once its test passed for real).
    WhenAccepted,
}

impl TaskFlow {
    /// What an agent is sent for step `position` as `kind`, in attempt `revision` of the Code/QA loop (1
    /// outside it) of the current QA round; the agent fills in earlier work and recalled memories.
    pub(super) fn spec_for(&self, position: usize, kind: StepKind, revision: u32) -> StepSpec {
        let step = self.step_at(position);
        let after = self.board(|board| ancestors(&board.steps, position));
        StepSpec {
            idx: step.idx,
            kind,
            prompt: self.prompt.clone(),
            instruction: step.instruction,
            after,
            earlier: Vec::new(),
            recalled: Vec::new(),
            attempt: 1,
            retry: 1,
            revision,
            round: self.round,
            feedback: None,
            test_file: None,
            review: Vec::new(),
            earlier_files: Vec::new(),
            voter: None,
        }
    }

    /// Dispatches `spec` to `agent` for step `position`, again after a restart while `director.step_retries`
    /// allows. `next_attempt` runs before each try and numbers it (it may also record the try on the step).
    /// A failure other than a restart or a cancellation marks the step failed.
    pub(super) async fn dispatch_retrying(
        &self,
        position: usize,
        agent: AgentKind,
        mut spec: StepSpec,
        llm: &Arc<TaskModels>,
        mut next_attempt: impl FnMut(&Self) -> u32,
    ) -> Result<StepOutput, FlowError> {
        let retries = self.deps.settings.step_retries;
        let mut retry = 0_u32;
        loop {
            retry = retry.saturating_add(1);
            spec.attempt = next_attempt(self);
            spec.retry = retry;
            // Debug mode: the step may pause before it is sent, and a person may rewrite its instruction
            // (kept for the step's later attempts).
            if let Some(instruction) = self.at_step(agent, &spec).await? {
                if spec.kind != StepKind::Test {
                    self.board(|board| board.steps[position].instruction.clone_from(&instruction));
                }
                spec.instruction = instruction;
            }
            match self.dispatch(agent, spec.clone(), llm).await? {
                Ok(output) => return Ok(output),
                Err(DispatchError::Restarted { .. }) if spec.attempt <= retries => {}
                Err(DispatchError::Cancelled) => return Err(FlowError::Cancelled),
                Err(source) => {
                    self.board(|board| board.steps[position].status = StepStatus::Failed);
                    self.update_step(position, false);
                    return Err(FlowError::Step {
                        idx: spec.idx,
                        agent,
                        source,
                    });
                }
            }
        }
    }

    /// Sends one step to `agent` through the Director and waits for the answer (or the task's cancellation).
    ///
    /// The agent gets a token of this try alone (a child of the task's): when the try ends however it ends
    /// (an answer, a timeout that replaced the agent, a crash, the task's cancellation), the token is
    /// cancelled, so an incarnation that is still working after its step was given up on (a timed-out
    /// agent) stops at its next model token and records nothing more for the task.
    async fn dispatch(
        &self,
        agent: AgentKind,
        spec: StepSpec,
        llm: &Arc<TaskModels>,
    ) -> Result<Result<StepOutput, DispatchError>, FlowError> {
        let this_try = self.cancel.child_token();
        let _stop_when_done = this_try.clone().drop_guard();
        let dispatch = Envelope::new(
            self.task_id,
            Dispatch {
                agent,
                run: RunStep {
                    step: spec,
                    llm: Arc::clone(llm),
                    cancel: this_try,
                    instance: 0,
                },
            },
        );
        let reply = self.director.send(dispatch);
        tokio::select! {
            biased;
            () = self.cancel.cancelled() => Err(FlowError::Cancelled),
            reply = reply => reply.map_err(|_| FlowError::DirectorGone),
        }
    }

    /// Runs step `position` on its agent (attempt `revision` of a code step, with the feedback of the
    /// previous one), retrying after a restart as the policy allows; the step is done with the agent's
    /// answer, or (`Ends::WhenAccepted`, a code step) stays running with it until its test passes.
    pub(super) async fn run_step(
        &self,
        position: usize,
        llm: &Arc<TaskModels>,
        revision: u32,
        feedback: Option<Feedback>,
        ends: Ends,
    ) -> Result<StepOutput, FlowError> {
        let step = self.step_at(position);
        let agent = step.agent;
        let review = if step.kind == StepKind::Verify {
            self.review_lines()
        } else {
            Vec::new()
        };
        let spec = StepSpec {
            feedback,
            review,
            ..self.spec_for(position, step.kind, revision)
        };
        let mut output = self
            .dispatch_retrying(position, agent, spec, llm, |flow| {
                let attempt = flow.board(|board| {
                    let step = &mut board.steps[position];
                    step.attempts += 1;
                    step.status = StepStatus::Running;
                    u32::try_from(step.attempts).unwrap_or(u32::MAX)
                });
                flow.update_step(position, true);
                attempt
            })
            .await?;
        self.board(|board| {
            board.drafts.append(&mut output.memories);
            let step = &mut board.steps[position];
            if ends == Ends::WithAnswer {
                step.status = StepStatus::Done;
            }
            step.output = Some(output.text.clone());
        });
        self.update_step(position, false);
        Ok(output)
    }

    pub(super) fn update_step(&self, position: usize, starting: bool) {
        let step = self.step_at(position);
        let now = chrono::Utc::now();
        self.deps.agent.writer.send(WriteOp::UpdateStep(StepUpdate {
            task_id: self.task_id,
            idx: step.idx,
            agent: step.agent,
            status: step.status,
            output: step.output,
            attempts: step.attempts,
            started_at: starting.then_some(now),
            finished_at: (!starting && step.status != StepStatus::Running).then_some(now),
        }));
    }
}

/// The steps that step `position` waits for, directly or through others, in step order: what it is shown
/// of earlier work (so that two steps running side by side never see each other's output, and what a step
/// is shown does not depend on which of its dependencies ended first).
fn ancestors(steps: &[super::PlannedStep], position: usize) -> Vec<i32> {
    let mut found = std::collections::BTreeSet::new();
    let mut open: Vec<i32> = steps[position].depends_on.clone();
    while let Some(idx) = open.pop() {
        if found.insert(idx) {
            if let Some(step) = steps.iter().find(|step| step.idx == idx) {
                open.extend(step.depends_on.iter().copied());
            }
        }
    }
    found.into_iter().collect()
}
