//! The Code agent: writes a short piece of code for a step. (Running it in a sandbox comes with the
//! sandbox; here the code is produced and handed on to QA.)

use super::{earlier_work, AgentError, AgentKind, Specialist, SpecialistAgent};
use crate::config::LlmLimits;
use crate::llm::{ChatMessage, LlmOutput, LlmRequest, OutputSpec};
use crate::messages::{StepOutput, StepSpec};

/// The Code role.
pub struct Code;

/// The Code actor.
pub type CodeAgent = SpecialistAgent<Code>;

impl Specialist for Code {
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
