//! The Code agent: writes a short piece of code for a step. (Running it in a sandbox comes with the
//! sandbox; here the code is produced and handed on to QA.)

use actix::{Actor, Context, Handler, ResponseFuture};

use super::{earlier_work, run_step, AgentDeps, AgentError, AgentKind, Specialist};
use crate::config::LlmLimits;
use crate::llm::{ChatMessage, LlmOutput, LlmRequest, OutputSpec};
use crate::messages::{Envelope, RunStep, StepOutput, StepSpec};

/// The Code actor. Its state (steps handled) is lost on restart, by design.
pub struct CodeAgent {
    deps: AgentDeps,
    steps_handled: u64,
}

impl CodeAgent {
    /// A fresh Code agent.
    pub fn new(deps: AgentDeps) -> Self {
        CodeAgent {
            deps,
            steps_handled: 0,
        }
    }
}

impl Actor for CodeAgent {
    type Context = Context<Self>;
}

impl Handler<Envelope<RunStep>> for CodeAgent {
    type Result = ResponseFuture<Result<StepOutput, AgentError>>;

    fn handle(&mut self, envelope: Envelope<RunStep>, _ctx: &mut Context<Self>) -> Self::Result {
        self.steps_handled += 1;
        tracing::debug!(steps_handled = self.steps_handled, "code step");
        Box::pin(run_step::<Self>(&self.deps, envelope))
    }
}

impl Specialist for CodeAgent {
    const KIND: AgentKind = AgentKind::Code;

    fn request(step: &StepSpec, limits: &LlmLimits) -> LlmRequest {
        LlmRequest {
            purpose: format!("work.{}", step.idx),
            messages: vec![
                ChatMessage::system(
                    "You are the Code agent of a small team. Answer with a short Python code snippet for the \
                     step and nothing else.",
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
                "the model produced no code".into(),
            ));
        }
        Ok(StepOutput {
            text: text.to_owned(),
            verdict: None,
        })
    }
}
