//! The Research agent: states the facts a step needs, briefly. Before working it recalls related memories
//! (summaries of earlier tasks and facts stated before) through the `search_memory` tool, so the recall is a
//! tool call like any other (`execute_tool search_memory` span, `tool.called` event); what it states is kept
//! as a fact.

use futures_util::future::BoxFuture;
use serde_json::json;

use super::{attempt_purpose, text_output, work_request, AgentDeps, Specialist, SpecialistAgent};
use crate::config::LlmLimits;
use crate::domain::{AgentKind, MemoryKind, TaskId};
use crate::llm::{LlmOutput, LlmRequest};
use crate::memory::{MemoryDraft, MemoryHit, RecallSpec, SearchFilter};
use crate::messages::{AgentError, StepKind, StepOutput, StepSpec};
use crate::tools::{ToolCall, ToolContext};

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

    fn prepare<'a>(
        deps: &'a AgentDeps,
        task_id: TaskId,
        step: &'a mut StepSpec,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if !deps.memory.enabled() {
                return;
            }
            let Some(spec) = Self::recall(step) else {
                return;
            };
            let kinds: Vec<&str> = spec.filter.kinds.iter().map(|kind| kind.as_str()).collect();
            let call = ToolCall {
                tool: "search_memory".into(),
                arguments: json!({
                    "query": crate::domain::shorten(&spec.query, crate::memory::MAX_QUERY_CHARS - 1),
                    "kinds": kinds,
                }),
            };
            let context = ToolContext {
                task_id,
                agent: AgentKind::Research,
                step: step.idx,
            };
            let call_id = format!(
                "{}.search",
                attempt_purpose("work", step.idx, step.round, 1)
            );
            // A failed call is a `tool.called` event with its error; the step goes on without memories.
            if let Ok(value) = deps.tools.invoke(context, &call_id, call).await {
                step.recalled = serde_json::from_value::<Vec<MemoryHit>>(value["hits"].clone())
                    .unwrap_or_default();
            }
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
