//! The Research agent: states the facts a step needs, briefly.

use super::{earlier_work, AgentError, AgentKind, Specialist, SpecialistAgent};
use crate::config::LlmLimits;
use crate::llm::{ChatMessage, LlmOutput, LlmRequest, OutputSpec};
use crate::messages::{StepOutput, StepSpec};

/// The Research role.
pub struct Research;

/// The Research actor.
pub type ResearchAgent = SpecialistAgent<Research>;

impl Specialist for Research {
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
