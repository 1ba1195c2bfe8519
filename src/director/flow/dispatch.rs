//! Sending one step to its agent through the Director, again after a restart while the policy allows, and
//! keeping the step's stored row up to date as it goes.

use std::sync::Arc;

use super::{FlowError, TaskFlow};
use crate::director::{Dispatch, DispatchError};
use crate::domain::{AgentKind, StepStatus};
use crate::llm::models::TaskModels;
use crate::messages::{Envelope, Feedback, RunStep, StepKind, StepOutput, StepSpec};
use crate::storage::records::{StepUpdate, WriteOp};

impl TaskFlow {
    /// What an agent is sent for step `position` as `kind`, in attempt `revision` of the Code/QA loop (1
    /// outside it) of the current QA round; the agent fills in earlier work and recalled memories.
    pub(super) fn spec_for(&self, position: usize, kind: StepKind, revision: u32) -> StepSpec {
        let step = &self.steps[position];
        StepSpec {
            idx: step.idx,
            kind,
            prompt: self.prompt.clone(),
            instruction: step.instruction.clone(),
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
        }
    }

    /// Dispatches `spec` to `agent` for step `position`, again after a restart while `director.step_retries`
    /// allows. `next_attempt` runs before each try and numbers it (it may also record the try on the step).
    /// A failure other than a restart or a cancellation marks the step failed.
    pub(super) async fn dispatch_retrying(
        &mut self,
        position: usize,
        agent: AgentKind,
        mut spec: StepSpec,
        llm: &Arc<TaskModels>,
        mut next_attempt: impl FnMut(&mut Self) -> u32,
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
                    self.steps[position].instruction.clone_from(&instruction);
                }
                spec.instruction = instruction;
            }
            match self.dispatch(agent, spec.clone(), llm).await? {
                Ok(output) => return Ok(output),
                Err(DispatchError::Restarted { .. }) if spec.attempt <= retries => {}
                Err(DispatchError::Cancelled) => return Err(FlowError::Cancelled),
                Err(source) => {
                    self.steps[position].status = StepStatus::Failed;
                    self.update_step(position, false);
                    return Err(FlowError::Step {
                        idx: self.steps[position].idx,
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
    /// previous one), retrying after a restart as the policy allows.
    pub(super) async fn run_step(
        &mut self,
        position: usize,
        llm: &Arc<TaskModels>,
        revision: u32,
        feedback: Option<Feedback>,
    ) -> Result<StepOutput, FlowError> {
        let step = &self.steps[position];
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
                let step = &mut flow.steps[position];
                step.attempts += 1;
                step.status = StepStatus::Running;
                let attempt = u32::try_from(step.attempts).unwrap_or(u32::MAX);
                flow.update_step(position, true);
                attempt
            })
            .await?;
        self.drafts.append(&mut output.memories);
        let step = &mut self.steps[position];
        step.status = StepStatus::Done;
        step.output = Some(output.text.clone());
        self.update_step(position, false);
        Ok(output)
    }

    pub(super) fn update_step(&self, position: usize, starting: bool) {
        let step = &self.steps[position];
        let now = chrono::Utc::now();
        self.deps.agent.writer.send(WriteOp::UpdateStep(StepUpdate {
            task_id: self.task_id,
            idx: step.idx,
            agent: step.agent,
            status: step.status,
            output: step.output.clone(),
            attempts: step.attempts,
            started_at: starting.then_some(now),
            finished_at: (!starting && step.status != StepStatus::Running).then_some(now),
        }));
    }
}
