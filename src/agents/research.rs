//! The Research agent: states the facts a step needs, briefly. Before working it recalls related memories
//! (summaries of earlier tasks and facts stated before); what it states is kept as a fact.

use serde_json::json;

use super::{text_output, work_request, Specialist, SpecialistAgent};
use crate::config::LlmLimits;
use crate::domain::{AgentKind, MemoryKind};
use crate::llm::{LlmOutput, LlmRequest};
use crate::memory::{MemoryDraft, RecallSpec, SearchFilter};
use crate::messages::{AgentError, StepKind, StepOutput, StepSpec};

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

    fn interpret(_kind: StepKind, output: LlmOutput) -> Result<StepOutput, AgentError> {
        text_output(output, "text")
    }

    fn recall(step: &StepSpec) -> Option<RecallSpec> {
        Some(RecallSpec {
            purpose: "related tasks and facts",
            query: format!("{}\n{}", step.prompt, step.instruction),
            filter: SearchFilter {
                kinds: vec![MemoryKind::Summary, MemoryKind::Fact],
                ..SearchFilter::default()
            },
        })
    }

    fn remember(step: &StepSpec, output: &StepOutput) -> Vec<MemoryDraft> {
        vec![MemoryDraft {
            kind: MemoryKind::Fact,
            content: format!("{}: {}", step.instruction, output.text),
            detail: Some(json!({ "prompt": step.prompt, "instruction": step.instruction })),
            agent: AgentKind::Research,
            step: Some(step.idx),
        }]
    }
}
