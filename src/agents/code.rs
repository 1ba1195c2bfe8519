//! The Code agent: writes the code for a step together with a test for it (JSON `{code, test}` under a
//! grammar), and writes both to the task's workspace with the `write_file` tool: `step<N>.py` (the code) and
//! `step<N>_test.py` (the code followed by the test, runnable alone), which QA then runs in the sandbox.
//! After a failed attempt the Director sends the failing code and its failure output back (and fixes
//! learned from earlier tasks with similar failures); each attempt has its own model-call purpose
//! (`work.N`, then `work.N.r2`, ...), so a replay answers every attempt. Before working it recalls snippets
//! it wrote for similar steps; what it writes is kept as a snippet.

use futures_util::future::BoxFuture;
use serde_json::json;

use super::{earlier_work, recalled_memories, AgentDeps, Specialist, SpecialistAgent};
use crate::config::LlmLimits;
use crate::domain::{shorten, AgentKind, MemoryKind, TaskId};
use crate::llm::{ChatMessage, LlmOutput, LlmRequest, OutputSpec};
use crate::memory::{MemoryDraft, RecallSpec, SearchFilter};
use crate::messages::{AgentError, CodeSubmission, StepKind, StepOutput, StepSpec};
use crate::tools::{ToolCall, ToolContext};

/// The Code role.
pub struct Code;

/// The Code actor.
pub type CodeAgent = SpecialistAgent<Code>;

/// Longest code the grammar allows, in characters.
pub const MAX_CODE_CHARS: u32 = 1500;
/// Longest test the grammar allows, in characters.
pub const MAX_TEST_CHARS: u32 = 600;
/// Longest failure output shown back to Code, in characters.
const FEEDBACK_CHARS: usize = 600;

/// Code's instructions. They describe the answer's two fields and give no example: the small embedded
/// model copied a one-line example verbatim as its answer to unrelated steps.
pub const CODE_INSTRUCTIONS: &str = "You are the Code agent of a small team. Write Python for the step \
     of the task below, and nothing else. Answer in JSON with two fields: \"code\", one complete Python \
     function that does what the step asks, named after what it does; and \"test\", Python assert \
     statements that call that function on inputs chosen for this step and check its results.";

/// The JSON schema of Code's answer.
pub fn submission_schema() -> serde_json::Value {
    json!({
        "type": "object",
        "properties": {
            "code": { "type": "string", "minLength": 1, "maxLength": MAX_CODE_CHARS },
            "test": { "type": "string", "minLength": 1, "maxLength": MAX_TEST_CHARS }
        },
        "required": ["code", "test"],
        "additionalProperties": false
    })
}

/// The model-call purpose of attempt `revision` of step `idx`.
pub fn purpose(idx: i32, revision: u32) -> String {
    super::attempt_purpose("work", idx, revision)
}

/// The workspace files of step `idx`: (code, code followed by its test).
pub fn file_names(idx: i32) -> (String, String) {
    (format!("step{idx}.py"), format!("step{idx}_test.py"))
}

impl Specialist for Code {
    const KIND: AgentKind = AgentKind::Code;

    fn request(step: &StepSpec, limits: &LlmLimits) -> LlmRequest {
        let mut user = format!(
            "Task: {}\nStep: {}{}{}",
            step.prompt,
            step.instruction,
            recalled_memories(step),
            earlier_work(step)
        );
        if let Some(feedback) = &step.feedback {
            user.push_str(&format!(
                "\nYour previous code:\n{}\nIts test failed with:\n{}\n",
                shorten(&feedback.code, FEEDBACK_CHARS),
                shorten(&feedback.failure, FEEDBACK_CHARS)
            ));
            for fix in &feedback.known_fixes {
                user.push_str(&format!(
                    "A fix that worked for a similar failure:\n{}\n",
                    shorten(fix, FEEDBACK_CHARS)
                ));
            }
            user.push_str("Fix the code.");
        }
        LlmRequest {
            purpose: purpose(step.idx, step.revision),
            messages: vec![
                ChatMessage::system(CODE_INSTRUCTIONS),
                ChatMessage::user(user),
            ],
            max_tokens: limits.code_tokens,
            output: OutputSpec::Json {
                schema: submission_schema(),
            },
        }
    }

    fn interpret(_kind: StepKind, output: LlmOutput) -> Result<StepOutput, AgentError> {
        let text = output.text.trim();
        // An answer that is not the JSON asked for (cut off at the token budget, say) is not an error of the
        // step: it is an attempt without code, and the Director's loop tells Code so.
        let code = serde_json::from_str::<serde_json::Value>(text)
            .ok()
            .and_then(|value| {
                Some(CodeSubmission {
                    code: value.get("code")?.as_str()?.to_owned(),
                    test: value.get("test")?.as_str()?.to_owned(),
                    test_file: String::new(),
                })
            })
            .filter(|submission| !submission.code.trim().is_empty());
        if text.is_empty() {
            return Err(AgentError::MalformedOutput(
                "the model produced no code".into(),
            ));
        }
        Ok(StepOutput {
            text: code
                .as_ref()
                .map_or_else(|| text.to_owned(), |submission| submission.code.clone()),
            code,
            ..StepOutput::default()
        })
    }

    fn act<'a>(
        deps: &'a AgentDeps,
        task_id: TaskId,
        step: &'a StepSpec,
        mut output: StepOutput,
    ) -> BoxFuture<'a, Result<StepOutput, AgentError>> {
        Box::pin(async move {
            let Some((code, test)) = output
                .code
                .as_ref()
                .map(|submission| (submission.code.clone(), submission.test.clone()))
            else {
                return Ok(output);
            };
            let (code_file, test_file) = file_names(step.idx);
            let context = ToolContext {
                task_id,
                agent: AgentKind::Code,
            };
            let runnable = format!("{code}\n\n{test}\n");
            for (n, (path, content)) in [(code_file, code), (test_file.clone(), runnable)]
                .into_iter()
                .enumerate()
            {
                let call = ToolCall {
                    tool: "write_file".into(),
                    arguments: json!({ "path": path, "content": content }),
                };
                let call_id = format!("{}.write{}", purpose(step.idx, step.revision), n + 1);
                deps.tools
                    .invoke(context, &call_id, call)
                    .await
                    .map_err(|e| AgentError::Tool(e.to_string()))?;
            }
            if let Some(submission) = output.code.as_mut() {
                submission.test_file = test_file;
            }
            Ok(output)
        })
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
        let Some(submission) = &output.code else {
            return Vec::new();
        };
        vec![MemoryDraft {
            kind: MemoryKind::Snippet,
            content: format!("{}\n{}", step.instruction, submission.code),
            detail: Some(json!({
                "prompt": step.prompt,
                "instruction": step.instruction,
                "code": submission.code,
                "test": submission.test,
            })),
            agent: AgentKind::Code,
            step: Some(step.idx),
        }]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output(text: &str) -> LlmOutput {
        LlmOutput::of_text(text)
    }

    #[test]
    fn a_submission_is_read_and_a_cut_off_one_is_an_attempt_without_code() {
        let step = Code::interpret(
            StepKind::Work,
            output(r#"{"code":"def f(): return 1","test":"assert f() == 1"}"#),
        )
        .unwrap();
        assert_eq!(step.code.unwrap().test, "assert f() == 1");
        let cut = Code::interpret(StepKind::Work, output(r#"{"code":"def f(): ret"#)).unwrap();
        assert!(cut.code.is_none());
        assert!(Code::interpret(StepKind::Work, output("  ")).is_err());
    }

    #[test]
    fn each_attempt_has_its_own_purpose() {
        assert_eq!(purpose(2, 1), "work.2");
        assert_eq!(purpose(2, 3), "work.2.r3");
    }
}
