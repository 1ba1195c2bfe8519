//! The Research agent: states the facts a step needs, briefly.

use super::{text_output, work_request, AgentError, AgentKind, Specialist, SpecialistAgent};
use crate::config::LlmLimits;
use crate::llm::{LlmOutput, LlmRequest};
use crate::messages::{StepOutput, StepSpec};

/// The Research role.
pub struct Research;

/// The Research actor.
pub type ResearchAgent = SpecialistAgent<Research>;

impl Specialist for Research {
    const KIND: AgentKind = AgentKind::Research;

    fn request(step: &StepSpec, limits: &LlmLimits) -> LlmRequest {
        work_request(
            step,
            limits,
            "You are the Research agent of a small team. State the key facts needed for the step, \
                     in one or two short sentences.",
        )
    }

    fn interpret(output: LlmOutput) -> Result<StepOutput, AgentError> {
        text_output(output, "text")
    }
}
