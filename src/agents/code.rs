//! The Code agent: writes a short piece of code for a step. (Running it in a sandbox comes with the
//! sandbox; here the code is produced and handed on to QA.)

use super::{text_output, work_request, AgentError, AgentKind, Specialist, SpecialistAgent};
use crate::config::LlmLimits;
use crate::llm::{LlmOutput, LlmRequest};
use crate::messages::{StepOutput, StepSpec};

/// The Code role.
pub struct Code;

/// The Code actor.
pub type CodeAgent = SpecialistAgent<Code>;

impl Specialist for Code {
    const KIND: AgentKind = AgentKind::Code;

    fn request(step: &StepSpec, limits: &LlmLimits) -> LlmRequest {
        work_request(
            step,
            limits,
            "You are the Code agent of a small team. Answer with a short Python code snippet for the \
                     step and nothing else.",
        )
    }

    fn interpret(output: LlmOutput) -> Result<StepOutput, AgentError> {
        text_output(output, "code")
    }
}
