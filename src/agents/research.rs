//! The Research agent: states the facts a step needs, briefly.

use actix::{Actor, Context, Handler, ResponseFuture};

use super::{earlier_work, run_step, AgentDeps, AgentError, AgentKind, Specialist};
use crate::config::LlmLimits;
use crate::llm::{ChatMessage, LlmOutput, LlmRequest, OutputSpec};
use crate::messages::{Envelope, RunStep, StepOutput, StepSpec};

/// The Research actor. Its state (steps handled) is lost on restart, by design.
pub struct ResearchAgent {
    deps: AgentDeps,
    steps_handled: u64,
}

impl ResearchAgent {
    /// A fresh Research agent.
    pub fn new(deps: AgentDeps) -> Self {
        ResearchAgent {
            deps,
            steps_handled: 0,
        }
    }
}

impl Actor for ResearchAgent {
    type Context = Context<Self>;
}

impl Handler<Envelope<RunStep>> for ResearchAgent {
    type Result = ResponseFuture<Result<StepOutput, AgentError>>;

    fn handle(&mut self, envelope: Envelope<RunStep>, _ctx: &mut Context<Self>) -> Self::Result {
        self.steps_handled += 1;
        tracing::debug!(steps_handled = self.steps_handled, "research step");
        Box::pin(run_step::<Self>(&self.deps, envelope))
    }
}

impl Specialist for ResearchAgent {
    const KIND: AgentKind = AgentKind::Research;

    fn request(step: &StepSpec, limits: &LlmLimits) -> LlmRequest {
        LlmRequest {
            purpose: format!("work.{}", step.idx),
            messages: vec![
                ChatMessage::system(
                    "You are the Research agent of a small team. State the key facts needed for the step, \
                     in one or two short sentences.",
                ),
                ChatMessage::user(format!(
                    "Task: {}\nStep: {}{}",
                    step.prompt,
                    step.instruction,
                    earlier_work(step)
                )),
            ],
            max_tokens: limits.work_tokens,
            output: OutputSpec::Text,
        }
    }

    fn interpret(output: LlmOutput) -> Result<StepOutput, AgentError> {
        let text = output.text.trim();
        if text.is_empty() {
            return Err(AgentError::MalformedOutput(
                "the model produced no text".into(),
            ));
        }
        Ok(StepOutput {
            text: text.to_owned(),
            verdict: None,
        })
    }
}
