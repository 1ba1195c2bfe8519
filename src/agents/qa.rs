//! The QA agent: reviews a step when the Director assigns one to it, runs the test of each attempt of a
//! code step in the sandbox, and gives the verdict on the whole task at the end (a JSON verdict under a
//! grammar).
//!
//! A test run is a tool call the model writes under a grammar that allows exactly `run_code` on the step's
//! test file (`{"tool": "run_code", "arguments": {"language": "python", "file": "step<N>_test.py"}}`); the
//! tool registry runs it, and the run decides: it passes when it exits 0 with nothing contained. The
//! failure output goes back to Code through the Director.

use futures_util::future::BoxFuture;
use serde_json::json;

use super::{
    earlier_work, text_output, verify_purpose, work_request, AgentDeps, Specialist, SpecialistAgent,
};
use crate::config::LlmLimits;
use crate::domain::limits::MAX_FEEDBACK_CHARS;
use crate::domain::{excerpt, AgentKind, TaskId};
use crate::llm::{ChatMessage, LlmOutput, LlmRequest, OutputSpec};
use crate::messages::{AgentError, StepKind, StepOutput, StepSpec, TestResult, Verdict};
use crate::sandbox::{Outcome, RunReport};
use crate::tools::{call_schema, ToolCall, ToolContext};

/// The QA role.
pub struct Qa;

/// The QA actor.
pub type QaAgent = SpecialistAgent<Qa>;

/// Longest failure output sent back to Code, in characters.
pub const FAILURE_CHARS: usize = 1500;

/// The model-call purpose of the test run of attempt `revision` of step `idx` in QA round `round`.
pub fn test_purpose(idx: i32, round: u32, revision: u32) -> String {
    super::attempt_purpose("test", idx, round, revision)
}

/// The grammar's schema for QA's test call: `run_code` on exactly `file`, in Python.
pub fn test_call_schema(file: &str) -> serde_json::Value {
    call_schema(
        "run_code",
        json!({
            "type": "object",
            "properties": {
                "language": { "type": "string", "enum": ["python"] },
                "file": { "type": "string", "enum": [file] }
            },
            "required": ["language", "file"],
            "additionalProperties": false
        }),
    )
}

/// The JSON schema of a verdict; the grammar built from it bounds the feedback's length.
pub fn verdict_schema() -> serde_json::Value {
    json!({
        "type": "object",
        "properties": {
            "verdict": { "type": "string", "enum": ["pass", "fail"] },
            "feedback": { "type": "string", "minLength": 1, "maxLength": MAX_FEEDBACK_CHARS }
        },
        "required": ["verdict", "feedback"],
        "additionalProperties": false
    })
}

impl Specialist for Qa {
    const KIND: AgentKind = AgentKind::Qa;

    fn request(step: &StepSpec, limits: &LlmLimits) -> LlmRequest {
        match step.kind {
            StepKind::Work => work_request(
                step,
                limits,
                "You are the QA agent of a small team. Review the work for the step in one short sentence.",
            ),
            StepKind::Test => {
                let file = step.test_file.clone().unwrap_or_default();
                LlmRequest {
                    purpose: test_purpose(step.idx, step.round, step.revision),
                    messages: vec![
                        ChatMessage::system(
                            "You are the QA agent of a small team. Run the test of the step with the \
                             run_code tool. Reply with the tool call in JSON.",
                        ),
                        ChatMessage::user(format!(
                            "Task: {}\nStep: {}\nTest file: {file}",
                            step.prompt, step.instruction
                        )),
                    ],
                    max_tokens: limits.verdict_tokens,
                    output: OutputSpec::Json {
                        schema: test_call_schema(&file),
                    },
                }
            }
            StepKind::Verify if step.voter.is_some() => vote_request(step, limits),
            StepKind::Verify => LlmRequest {
                purpose: verify_purpose(step.round),
                messages: vec![
                    ChatMessage::system(
                        "You are the QA agent of a small team. Decide whether the work answers the task: \
                         for code, whether the functions are the ones the steps ask for and the tests call \
                         them. Reply in JSON with a verdict (pass or fail) and short feedback.",
                    ),
                    ChatMessage::user(verification_input(step)),
                ],
                max_tokens: limits.verdict_tokens,
                output: OutputSpec::Json { schema: verdict_schema() },
            },
        }
    }

    fn interpret(kind: StepKind, output: LlmOutput) -> Result<StepOutput, AgentError> {
        let text = output.text.trim();
        // A test step's output is a tool call, run by `act`.
        if kind == StepKind::Test {
            return Ok(StepOutput {
                text: text.to_owned(),
                ..StepOutput::default()
            });
        }
        // A voter's verification is a scored choice of pass or fail, its feedback the reason after it.
        if let (StepKind::Verify, Some(choice)) = (kind, &output.choice) {
            return Ok(StepOutput {
                text: text.to_owned(),
                verdict: Some(Verdict {
                    verdict: choice.chosen.clone(),
                    feedback: choice.reasoning.trim().to_owned(),
                }),
                vote: Some(choice.clone()),
                ..StepOutput::default()
            });
        }
        // A verification's output is JSON; a review's is free text.
        if text.starts_with('{') {
            let verdict: Verdict = serde_json::from_str(text).map_err(|e| {
                AgentError::MalformedOutput(format!("verdict: {e}: {}", excerpt(text)))
            })?;
            if verdict.verdict != "pass" && verdict.verdict != "fail" {
                return Err(AgentError::MalformedOutput(format!(
                    "verdict must be pass or fail, got '{}'",
                    excerpt(&verdict.verdict)
                )));
            }
            return Ok(StepOutput {
                text: text.to_owned(),
                verdict: Some(verdict),
                ..StepOutput::default()
            });
        }
        text_output(output, "review")
    }

    fn act<'a>(
        deps: &'a AgentDeps,
        task_id: TaskId,
        step: &'a StepSpec,
        output: StepOutput,
    ) -> BoxFuture<'a, Result<StepOutput, AgentError>> {
        Box::pin(async move {
            if step.kind != StepKind::Test {
                return Ok(output);
            }
            let call =
                ToolCall::parse(&output.text).map_err(|e| AgentError::Tool(e.to_string()))?;
            let context = ToolContext {
                task_id,
                agent: AgentKind::Qa,
                step: step.idx,
            };
            let call_id = step.own(test_purpose(step.idx, step.round, step.revision));
            let value = deps
                .tools
                .invoke(context, &call_id, call)
                .await
                .map_err(AgentError::from)?;
            let report: RunReport = serde_json::from_value(value)
                .map_err(|e| AgentError::Tool(format!("run_code report: {e}")))?;
            Ok(test_output(step, report))
        })
    }
}

/// The model-call purpose of voter `voter`'s verification in QA round `round`: `verify.v2`, `verify.q2.v2`.
pub fn vote_purpose(round: u32, voter: u32) -> String {
    format!("{}.v{voter}", verify_purpose(round))
}

/// A voter's verification: the verdict as a choice between pass and fail, scored by the model's own
/// probabilities (so that each vote says how sure it is), looked at through the voter's lens, then short
/// feedback.
fn vote_request(step: &StepSpec, limits: &LlmLimits) -> LlmRequest {
    let voter = step.voter.unwrap_or(1);
    let lens = crate::domain::consensus::LENSES
        .get(usize::try_from(voter.saturating_sub(1)).unwrap_or(0))
        .copied()
        .unwrap_or(crate::domain::consensus::LENSES[0]);
    LlmRequest {
        purpose: vote_purpose(step.round, voter),
        messages: vec![
            ChatMessage::system(format!(
                "You are one of several QA reviewers of a small team, and you look first at {lens}. Decide whether the work answers the task: pass or fail, then short feedback. Reply in JSON."
            )),
            ChatMessage::user(verification_input(step)),
        ],
        max_tokens: limits.verdict_tokens,
        output: OutputSpec::Choice {
            prefix: "{\"verdict\": \"".to_owned(),
            options: vec!["pass".to_owned(), "fail".to_owned()],
            suffix: "\", \"feedback\": \"".to_owned(),
        },
    }
}

/// What a verification (a voter's too) is shown: the task, the code steps' review lines, the earlier work.
fn verification_input(step: &StepSpec) -> String {
    format!(
        "Task: {}{}{}",
        step.prompt,
        review_lines(step),
        earlier_work(step)
    )
}

/// What the verification is told about the code steps (their instructions, the functions the code defines
/// and those the tests call).
fn review_lines(step: &StepSpec) -> String {
    if step.review.is_empty() {
        return String::new();
    }
    let mut text = String::from("\nCode steps:\n");
    for line in &step.review {
        text.push_str("- ");
        text.push_str(line);
        text.push('\n');
    }
    text
}

/// The output of a test step from its run.
fn test_output(step: &StepSpec, report: RunReport) -> StepOutput {
    let passed = report.outcome == Outcome::Ok;
    let failure = (!passed).then(|| {
        let mut failure = format!("outcome {}", report.outcome.as_str());
        if let Some(code) = report.exit_code {
            failure.push_str(&format!(", exit code {code}"));
        }
        for violation in &report.violations {
            failure.push_str(&format!(
                ", {} ({})",
                violation.kind.as_str(),
                violation.detail
            ));
        }
        failure.push_str(":\n");
        failure.push_str(&report.failure_output(FAILURE_CHARS));
        failure
    });
    let text = match &failure {
        None => format!(
            "The test of step {} passed ({:.2} s, {:.2} CPU s).",
            step.idx, report.wall_seconds, report.cpu_seconds
        ),
        Some(failure) => format!("The test of step {} failed: {failure}", step.idx),
    };
    StepOutput {
        text,
        test: Some(TestResult {
            passed,
            report,
            failure,
        }),
        ..StepOutput::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output(text: &str) -> LlmOutput {
        LlmOutput::of_text(text)
    }

    #[test]
    fn a_json_verdict_is_parsed() {
        let step = Qa::interpret(
            StepKind::Verify,
            output(r#"{"verdict":"fail","feedback":"no test"}"#),
        )
        .unwrap();
        assert_eq!(step.verdict.unwrap().verdict, "fail");
    }

    #[test]
    fn a_test_step_keeps_its_tool_call_for_act_and_gives_no_verdict() {
        let call =
            r#"{"tool":"run_code","arguments":{"language":"python","file":"step1_test.py"}}"#;
        let step = Qa::interpret(StepKind::Test, output(call)).unwrap();
        assert_eq!(step.text, call);
        assert!(step.verdict.is_none());
    }

    #[test]
    fn the_verification_sees_what_each_code_step_defines_and_tests() {
        let step = StepSpec {
            idx: 2,
            kind: StepKind::Verify,
            prompt: "Write a Python function that computes the factorial of n".into(),
            instruction: "Check the work against the task".into(),
            after: Vec::new(),
            earlier: Vec::new(),
            recalled: Vec::new(),
            attempt: 1,
            retry: 1,
            revision: 1,
            round: 2,
            feedback: None,
            test_file: None,
            review: vec![
                "Step \"Write factorial(n)\": the code defines is_even(num); its test calls is_even."
                    .into(),
            ],
            earlier_files: Vec::new(),
            voter: None,
        };
        let limits = crate::config::Settings::load_from(std::path::Path::new("config"), None)
            .unwrap()
            .llm
            .limits;
        let request = Qa::request(&step, &limits);
        assert_eq!(request.purpose, "verify.q2");
        let user = &request.messages[1].content;
        assert!(
            user.contains(
                "Code steps:\n- Step \"Write factorial(n)\": the code defines is_even(num)"
            ),
            "{user}"
        );
    }

    #[test]
    fn a_malformed_verdict_is_an_error_with_an_excerpt() {
        let error = Qa::interpret(StepKind::Verify, output(r#"{"verdict":"maybe","#)).unwrap_err();
        assert!(
            matches!(error, AgentError::MalformedOutput(ref m) if m.contains("verdict")),
            "{error}"
        );
    }

    #[test]
    fn an_unknown_verdict_is_refused() {
        let error = Qa::interpret(
            StepKind::Verify,
            output(r#"{"verdict":"maybe","feedback":"x"}"#),
        )
        .unwrap_err();
        assert!(error.to_string().contains("pass or fail"));
    }
}
