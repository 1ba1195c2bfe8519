//! The Director's model requests and how their outputs are read: the plan (JSON under a grammar built from
//! a schema) and the agent assignment (a choice scored by the model's own probabilities).

use serde::Deserialize;
use serde_json::json;

use crate::config::LlmLimits;
use crate::domain::limits::MAX_INSTRUCTION_CHARS;
use crate::domain::{excerpt, AgentKind};
use crate::llm::{ChatMessage, LlmRequest, OutputSpec};
use crate::memory::{recalled_list, MemoryHit, RecallLayout};

/// A parsed plan.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Plan {
    /// Step instructions in order.
    pub steps: Vec<String>,
}

/// The plan could not be read.
#[derive(Debug, Clone, thiserror::Error)]
#[error("malformed plan: {0}")]
pub struct MalformedPlan(pub String);

/// The JSON schema of a plan with at most `max_steps` steps.
pub fn plan_schema(max_steps: u32) -> serde_json::Value {
    json!({
        "type": "object",
        "properties": {
            "steps": {
                "type": "array",
                "items": { "type": "string", "minLength": 3, "maxLength": MAX_INSTRUCTION_CHARS },
                "minItems": 1,
                "maxItems": max_steps
            }
        },
        "required": ["steps"],
        "additionalProperties": false
    })
}

/// Longest recalled summary shown to the planner, in characters.
const RECALLED_CHARS: usize = 160;

/// The request for a plan of `prompt`; `recalled` are summaries of earlier related tasks, best first.
pub fn plan_request(
    prompt: &str,
    max_steps: u32,
    limits: &LlmLimits,
    recalled: &[MemoryHit],
) -> LlmRequest {
    let mut user = prompt.to_owned();
    if !recalled.is_empty() {
        user.push_str("\n\nEarlier related tasks:\n");
        user.push_str(&recalled_list(
            recalled,
            RECALLED_CHARS,
            RecallLayout::OneLine,
        ));
    }
    LlmRequest {
        purpose: "plan".to_owned(),
        messages: vec![
            ChatMessage::system(format!(
                "You are the Director of a small team (research, code, qa). Break the user's task into at \
                 most {max_steps} short steps. Reply in JSON."
            )),
            ChatMessage::user(user),
        ],
        max_tokens: limits.plan_tokens,
        output: OutputSpec::Json { schema: plan_schema(max_steps) },
    }
}

/// Reads a plan from the model's output: valid JSON, 1..=`max_steps` non-blank steps.
pub fn parse_plan(text: &str, max_steps: u32) -> Result<Plan, MalformedPlan> {
    let plan: Plan = serde_json::from_str(text.trim())
        .map_err(|e| MalformedPlan(format!("{e}: {}", excerpt(text))))?;
    let steps: Vec<String> = plan
        .steps
        .into_iter()
        .map(|step| step.trim().to_owned())
        .filter(|step| !step.is_empty())
        .collect();
    if steps.is_empty() {
        return Err(MalformedPlan(format!("no steps: {}", excerpt(text))));
    }
    if steps.len() > max_steps as usize {
        return Err(MalformedPlan(format!(
            "{} steps where at most {max_steps} are allowed",
            steps.len()
        )));
    }
    Ok(Plan { steps })
}

/// The request choosing the agent for step `idx`.
pub fn assign_request(prompt: &str, idx: i32, instruction: &str, limits: &LlmLimits) -> LlmRequest {
    LlmRequest {
        purpose: format!("assign.{idx}"),
        messages: vec![
            ChatMessage::system(
                "You are the Director of a small team. research finds facts, code writes code, qa reviews \
                 work. Pick the agent for the step and give a short reason. Reply in JSON.",
            ),
            ChatMessage::user(format!("Task: {prompt}\nStep: {instruction}")),
        ],
        max_tokens: limits.decision_reason_tokens,
        output: OutputSpec::Choice {
            prefix: "{\"agent\": \"".to_owned(),
            options: AgentKind::SPECIALISTS.iter().map(|agent| agent.as_str().to_owned()).collect(),
            suffix: "\", \"reason\": \"".to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_parses_and_is_trimmed() {
        let plan = parse_plan(r#"{"steps": [" find facts ", "write code"]}"#, 3).unwrap();
        assert_eq!(plan.steps, vec!["find facts", "write code"]);
    }

    #[test]
    fn a_truncated_plan_is_malformed_with_an_excerpt() {
        let error = parse_plan(r#"{"steps": ["find"#, 3).unwrap_err();
        assert!(error.0.contains("{\"steps\""), "{error}");
    }

    #[test]
    fn too_many_or_no_steps_are_refused() {
        assert!(parse_plan(r#"{"steps": ["a b", "c d", "e f"]}"#, 2).is_err());
        assert!(parse_plan(r#"{"steps": ["  "]}"#, 2).is_err());
    }

    #[test]
    fn the_schema_bounds_steps_and_their_length() {
        let schema = plan_schema(2);
        assert_eq!(schema["properties"]["steps"]["maxItems"], 2);
        assert_eq!(
            schema["properties"]["steps"]["items"]["maxLength"],
            MAX_INSTRUCTION_CHARS
        );
    }

    #[test]
    fn assignment_options_are_the_specialists() {
        let limits = LlmLimits {
            plan_tokens: 1,
            decision_reason_tokens: 1,
            work_tokens: 1,
            verdict_tokens: 1,
            code_tokens: 1,
        };
        let request = assign_request("p", 2, "s", &limits);
        assert_eq!(request.purpose, "assign.2");
        let OutputSpec::Choice { options, .. } = request.output else {
            panic!("not a choice")
        };
        assert_eq!(options, vec!["research", "code", "qa"]);
    }
}
