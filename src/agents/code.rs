//! The Code agent: writes the code for a step together with a test for it (JSON `{code, test}` under a
//! grammar), and writes both to the task's workspace with the `write_file` tool: `step<N>.py` (the code) and
//! `step<N>_test.py` (the code followed by the test, runnable alone), which QA then runs in the sandbox.
//! After a failed attempt the Director sends the failing code and its failure output back (and fixes
//! learned from earlier tasks with similar failures); each attempt has its own model-call purpose
//! (`work.N`, then `work.N.r2`, ...), so a replay answers every attempt. Before working it recalls snippets
//! it wrote for similar steps; what it writes is kept as a snippet.

use futures_util::future::BoxFuture;
use serde_json::json;

use super::{earlier_work, AgentDeps, Specialist, SpecialistAgent};
use crate::config::LlmLimits;
use crate::domain::{shorten, AgentKind, MemoryKind, TaskId};
use crate::llm::{ChatMessage, LlmOutput, LlmRequest, OutputSpec};
use crate::memory::{MemoryDraft, RecallSpec, SearchFilter};
use crate::messages::{
    AgentError, CodeSubmission, Feedback, FeedbackKind, StepKind, StepOutput, StepSpec,
};
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

/// Longest recalled snippet shown as a reference, in characters.
const REFERENCE_CHARS: usize = 300;
/// Longest earlier step's file shown, in characters.
const EARLIER_FILE_CHARS: usize = 600;
/// Most earlier steps' files read.
const EARLIER_FILES: usize = 3;

/// The model-call purpose of attempt `revision` of step `idx` in QA round `round`.
pub fn purpose(idx: i32, round: u32, revision: u32) -> String {
    super::attempt_purpose("work", idx, round, revision)
}

/// The prompt lines for recalled snippets: shown as references to similar earlier work, not as the answer
/// (a recalled `is_even` once stood in for every later easy task's code).
pub fn recalled_references(step: &StepSpec) -> String {
    let mut text = String::new();
    for hit in &step.recalled {
        text.push_str(
            "\nA similar earlier task's code, for reference only; write the function the step asks for:\n",
        );
        text.push_str(&shorten(&hit.memory.content, REFERENCE_CHARS));
        text.push('\n');
    }
    text
}

/// The prompt lines for earlier steps' files in the workspace.
fn earlier_files(step: &StepSpec) -> String {
    let mut text = String::new();
    for (name, content) in &step.earlier_files {
        text.push_str(&format!("\nFile {name} from an earlier step:\n{content}\n"));
    }
    text
}

/// What Code is told about its rejected attempt.
fn feedback_lines(feedback: &Feedback) -> String {
    let mut text = format!(
        "\nYour previous code:\n{}\n",
        shorten(&feedback.code, FEEDBACK_CHARS)
    );
    let failure = shorten(&feedback.failure, FEEDBACK_CHARS);
    match feedback.kind {
        FeedbackKind::TestFailed => {
            text.push_str(&format!("Its test failed with:\n{failure}\n"));
            for fix in &feedback.known_fixes {
                text.push_str(&format!(
                    "A fix that worked for a similar failure:\n{}\n",
                    shorten(fix, FEEDBACK_CHARS)
                ));
            }
            text.push_str("Fix the code.");
        }
        FeedbackKind::VacuousTest => text.push_str(&format!(
            "Its test cannot fail: {failure}\nWrite a test that calls the function and asserts its result."
        )),
        FeedbackKind::OffTask => text.push_str(&format!(
            "It is not for this task: {failure}\nWrite the function the step asks for, with a test that calls it."
        )),
        FeedbackKind::QaVerdict => text.push_str(&format!(
            "QA rejected it: {failure}\nWrite the function the step asks for, with a test that calls it."
        )),
    }
    text
}

/// The workspace files of step `idx`: (code, code followed by its test).
pub fn file_names(idx: i32) -> (String, String) {
    (format!("step{idx}.py"), format!("step{idx}_test.py"))
}

impl Specialist for Code {
    const KIND: AgentKind = AgentKind::Code;

    fn request(step: &StepSpec, limits: &LlmLimits) -> LlmRequest {
        let mut user = format!(
            "Task: {}\nStep: {}{}{}{}",
            step.prompt,
            step.instruction,
            recalled_references(step),
            earlier_files(step),
            earlier_work(step)
        );
        if let Some(feedback) = &step.feedback {
            user.push_str(&feedback_lines(feedback));
        }
        LlmRequest {
            purpose: purpose(step.idx, step.round, step.revision),
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
                step: step.idx,
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
                let call_id = step.own(format!(
                    "{}.write{}",
                    purpose(step.idx, step.round, step.revision),
                    n + 1
                ));
                deps.tools
                    .invoke(context, &call_id, call)
                    .await
                    .map_err(AgentError::from)?;
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
            if let Some(spec) = Self::recall(step) {
                step.recalled = deps
                    .memory
                    .recall(task_id, AgentKind::Code, step.idx, &spec)
                    .await;
            }
            // A step after others may build on the code they left: Code looks at the workspace
            // (`list_files`) and reads the code files of the steps it waits for (`read_file`).
            if !step.after.is_empty() {
                step.earlier_files = read_earlier_files(deps, task_id, step).await;
            }
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

/// The code files of the steps `step` waits for in the task's workspace, through the file tools (a failed call is
/// a `tool.called` event with its error; the step goes on without the files).
async fn read_earlier_files(
    deps: &AgentDeps,
    task_id: TaskId,
    step: &StepSpec,
) -> Vec<(String, String)> {
    let context = ToolContext {
        task_id,
        agent: AgentKind::Code,
        step: step.idx,
    };
    let base = step.own(purpose(step.idx, step.round, step.revision));
    let listing = ToolCall {
        tool: "list_files".into(),
        arguments: json!({}),
    };
    let Ok(listed) = deps
        .tools
        .invoke(context, &format!("{base}.list"), listing)
        .await
    else {
        return Vec::new();
    };
    let earlier: Vec<String> = step.after.iter().map(|&idx| file_names(idx).0).collect();
    let names: Vec<String> = listed["files"]
        .as_array()
        .map(|files| {
            files
                .iter()
                .filter_map(|file| file["name"].as_str().or_else(|| file.as_str()))
                .filter(|name| earlier.iter().any(|wanted| wanted == name))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let mut files = Vec::new();
    for (n, name) in names.into_iter().take(EARLIER_FILES).enumerate() {
        let read = ToolCall {
            tool: "read_file".into(),
            arguments: json!({ "path": name }),
        };
        if let Ok(value) = deps
            .tools
            .invoke(context, &format!("{base}.read{}", n + 1), read)
            .await
        {
            if let Some(content) = value["content"].as_str() {
                files.push((name, shorten(content, EARLIER_FILE_CHARS)));
            }
        }
    }
    files
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

    fn step_with(recalled: Vec<crate::memory::MemoryHit>) -> StepSpec {
        StepSpec {
            idx: 1,
            kind: StepKind::Work,
            prompt: "Write a Python function that reverses a string".into(),
            instruction: "Write reverse(s)".into(),
            after: Vec::new(),
            earlier: Vec::new(),
            recalled,
            attempt: 1,
            retry: 1,
            revision: 1,
            round: 1,
            feedback: None,
            test_file: None,
            review: Vec::new(),
            earlier_files: Vec::new(),
            voter: None,
        }
    }

    #[test]
    fn recalled_snippets_are_shown_as_references_not_answers() {
        let hit = crate::memory::MemoryHit {
            memory: crate::memory::MemoryRecord {
                id: "m1".into(),
                kind: MemoryKind::Snippet,
                content: "Write is_even(num)\ndef is_even(num): return num % 2 == 0".into(),
                detail: None,
                task_id: None,
                agent: Some("code".into()),
                step: Some(1),
                uses: 0,
                successes: 0,
                created_at: chrono::Utc::now(),
            },
            score: 0.7,
        };
        let limits = crate::config::Settings::load_from(std::path::Path::new("config"), None)
            .unwrap()
            .llm
            .limits;
        let request = Code::request(&step_with(vec![hit]), &limits);
        let user = &request.messages[1].content;
        let reference = user
            .find("A similar earlier task's code, for reference only; write the function the step asks for:")
            .unwrap_or_else(|| panic!("no reference header in {user}"));
        let snippet = user.find("def is_even").unwrap();
        assert!(reference < snippet, "{user}");
        assert!(!user.contains("From memory"), "{user}");
        // Without recalled snippets there is no reference section.
        let plain = Code::request(&step_with(Vec::new()), &limits);
        assert!(!plain.messages[1].content.contains("for reference only"));
    }

    #[test]
    fn each_attempt_has_its_own_purpose() {
        assert_eq!(purpose(2, 1, 1), "work.2");
        assert_eq!(purpose(2, 1, 3), "work.2.r3");
        assert_eq!(purpose(2, 2, 1), "work.2.q2");
    }
}
