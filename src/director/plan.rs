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
                "You are the Director of a small team: research answers questions of fact, code writes \
                 Python code, qa reviews and tests code. Break the user's task into at most {max_steps} \
                 steps. Each step is one short instruction in your own words, without a number. A \
                 question of fact needs one step. Reply in JSON."
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

/// The Director's instructions for an assignment: what each agent is for, in words a small model can
/// match against a step (facts and explanations, Python, review and tests of existing work).
pub const ASSIGN_INSTRUCTIONS: &str = "You are the Director of a small team. research answers questions \
     of fact and explains things in words; code writes Python code; qa reviews or tests code and work that \
     already exists. Pick the agent for the step and give a short reason. Reply in JSON.";

/// The assignment's input: the task and the step.
fn assign_input(prompt: &str, instruction: &str) -> String {
    format!("Task: {prompt}\nStep: {instruction}")
}

/// The request choosing the agent for step `idx`.
pub fn assign_request(prompt: &str, idx: i32, instruction: &str, limits: &LlmLimits) -> LlmRequest {
    LlmRequest {
        purpose: format!("assign.{idx}"),
        messages: vec![
            ChatMessage::system(ASSIGN_INSTRUCTIONS),
            ChatMessage::user(assign_input(prompt, instruction)),
        ],
        max_tokens: limits.decision_reason_tokens,
        output: OutputSpec::Choice {
            prefix: "{\"agent\": \"".to_owned(),
            options: AgentKind::SPECIALISTS
                .iter()
                .map(|agent| agent.as_str().to_owned())
                .collect(),
            suffix: "\", \"reason\": \"".to_owned(),
        },
    }
}

/// The purpose of the content-free assignment call that calibrates routing.
pub const CALIBRATION_PURPOSE: &str = "assign.calibration";

/// What stands in for the task and the step in the content-free call.
pub const CONTENT_FREE: &str = "N/A";

/// The assignment prompt with its content left out: what content-free scores are valid for.
pub fn assign_template() -> String {
    format!(
        "{ASSIGN_INSTRUCTIONS}\n{}",
        assign_input("{task}", "{step}")
    )
}

/// The content-free assignment call: the assignment prompt with the task and the step replaced by
/// [`CONTENT_FREE`], the same options; only its scores are used, so it generates a single reason token.
pub fn calibration_request(limits: &LlmLimits) -> LlmRequest {
    LlmRequest {
        purpose: CALIBRATION_PURPOSE.to_owned(),
        max_tokens: 1,
        ..assign_request(CONTENT_FREE, 0, CONTENT_FREE, limits)
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

    fn limits() -> LlmLimits {
        LlmLimits {
            plan_tokens: 1,
            decision_reason_tokens: 9,
            work_tokens: 1,
            verdict_tokens: 1,
            code_tokens: 1,
        }
    }

    #[test]
    fn the_content_free_call_is_the_assignment_without_its_content() {
        let real = assign_request("What is the capital of France?", 1, "Find it", &limits());
        let free = calibration_request(&limits());
        assert_eq!(free.purpose, "assign.calibration");
        assert_eq!(free.output, real.output);
        assert_eq!(free.messages[0], real.messages[0]);
        assert_eq!(free.messages[1].content, "Task: N/A\nStep: N/A");
        assert!(!free.messages[1].content.contains("France"));
        assert!(assign_template().contains("Task: {task}\nStep: {step}"));
    }

    #[test]
    fn prompts_name_what_each_agent_is_for_without_an_answer_to_copy() {
        let plan = plan_request("p", 3, &limits(), &[]);
        let system = &plan.messages[0].content;
        assert!(
            system.contains("research answers questions of fact"),
            "{system}"
        );
        assert!(system.contains("without a number"), "{system}");
        assert!(ASSIGN_INSTRUCTIONS.contains("research answers questions of fact"));
        // No example output in either prompt: the small model copies examples as answers.
        for text in [system.as_str(), ASSIGN_INSTRUCTIONS] {
            assert!(!text.contains("Example"), "{text}");
            assert!(!text.contains('{'), "{text}");
        }
    }
}
