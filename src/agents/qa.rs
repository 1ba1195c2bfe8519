//! The QA agent: reviews a step when the Director assigns one to it, and gives the verdict on the whole
//! task at the end (a JSON verdict under a grammar). Running tests in a sandbox comes with the sandbox.

use serde_json::json;

use super::{
    earlier_work, text_output, work_request, AgentError, AgentKind, Specialist, SpecialistAgent,
};
use crate::config::LlmLimits;
use crate::llm::excerpt;
use crate::llm::{ChatMessage, LlmOutput, LlmRequest, OutputSpec};
use crate::messages::{StepKind, StepOutput, StepSpec, Verdict};

/// The QA role.
pub struct Qa;

/// The QA actor.
pub type QaAgent = SpecialistAgent<Qa>;

/// Longest verdict feedback, in characters (the grammar enforces it).
pub const MAX_FEEDBACK_CHARS: u32 = 48;

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
            StepKind::Verify => LlmRequest {
                purpose: "verify".to_owned(),
                messages: vec![
                    ChatMessage::system(
                        "You are the QA agent of a small team. Decide whether the work answers the task. \
                         Reply in JSON with a verdict (pass or fail) and short feedback.",
                    ),
                    ChatMessage::user(format!("Task: {}{}", step.prompt, earlier_work(step))),
                ],
                max_tokens: limits.verdict_tokens,
                output: OutputSpec::Json { schema: verdict_schema() },
            },
        }
    }

    fn interpret(output: LlmOutput) -> Result<StepOutput, AgentError> {
        let text = output.text.trim();
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
                memories: Vec::new(),
            });
        }
        text_output(output, "review")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::Usage;

    fn output(text: &str) -> LlmOutput {
        LlmOutput {
            text: text.into(),
            choice: None,
            usage: Usage::default(),
            generation_seconds: 0.0,
        }
    }

    #[test]
    fn a_json_verdict_is_parsed() {
        let step = Qa::interpret(output(r#"{"verdict":"fail","feedback":"no test"}"#)).unwrap();
        assert_eq!(step.verdict.unwrap().verdict, "fail");
    }

    #[test]
    fn a_malformed_verdict_is_an_error_with_an_excerpt() {
        let error = Qa::interpret(output(r#"{"verdict":"maybe","#)).unwrap_err();
        assert!(
            matches!(error, AgentError::MalformedOutput(ref m) if m.contains("verdict")),
            "{error}"
        );
    }

    #[test]
    fn an_unknown_verdict_is_refused() {
        let error = Qa::interpret(output(r#"{"verdict":"maybe","feedback":"x"}"#)).unwrap_err();
        assert!(error.to_string().contains("pass or fail"));
    }
}
