//! The Code agent: writes a short piece of code for a step. Before working it recalls snippets it wrote
//! for similar steps; what it writes is kept as a snippet. (Running the code in a sandbox comes with the
//! sandbox; here the code is produced and handed on to QA.)

use serde_json::json;

use super::{text_output, work_request, AgentError, AgentKind, Specialist, SpecialistAgent};
use crate::config::LlmLimits;
use crate::llm::{LlmOutput, LlmRequest};
use crate::memory::{MemoryDraft, MemoryKind, RecallSpec, SearchFilter};
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

    fn recall(step: &StepSpec) -> Option<RecallSpec> {
        Some(RecallSpec {
            purpose: "snippets written before",
            query: format!("{}\n{}", step.prompt, step.instruction),
            filter: SearchFilter {
                kinds: vec![MemoryKind::Snippet],
                agent: Some(AgentKind::Code),
            },
        })
    }

    fn remember(step: &StepSpec, output: &StepOutput) -> Vec<MemoryDraft> {
        vec![MemoryDraft {
            kind: MemoryKind::Snippet,
            content: format!("{}\n{}", step.instruction, output.text),
            detail: Some(json!({
                "prompt": step.prompt,
                "instruction": step.instruction,
                "code": output.text,
            })),
            agent: AgentKind::Code,
            step: Some(step.idx),
        }]
    }
}
