//! The Director's model requests and how their outputs are read: the plan (JSON under a grammar built from
//! a schema) and the agent assignment (a choice scored by the model's own probabilities).

use serde::Deserialize;
use serde_json::json;

use crate::config::LlmLimits;
use crate::domain::limits::MAX_INSTRUCTION_CHARS;
use crate::domain::{excerpt, AgentKind};
use crate::llm::{ChatMessage, LlmRequest, OutputSpec};
use crate::memory::{recalled_list, MemoryHit, RecallLayout};

/// A parsed plan: a graph of steps, each after the earlier steps it depends on.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The steps in order; step `n` (from 1) is `steps[n - 1]`.
    pub steps: Vec<PlanStep>,
}

/// One planned step.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanStep {
    /// What to do.
    pub instruction: String,
    /// The earlier steps (numbers from 1, ascending, each once) whose results it needs; it runs once they
    /// are done, at the same time as any other step whose dependencies are done.
    pub depends_on: Vec<i32>,
}

impl Plan {
    /// The instructions in order.
    pub fn instructions(&self) -> Vec<String> {
        self.steps
            .iter()
            .map(|step| step.instruction.clone())
            .collect()
    }

    /// Each step's dependencies, in step order.
    pub fn dependencies(&self) -> Vec<Vec<i32>> {
        self.steps
            .iter()
            .map(|step| step.depends_on.clone())
            .collect()
    }
}

/// The plan could not be read.
#[derive(Debug, Clone, thiserror::Error)]
#[error("malformed plan: {0}")]
pub struct MalformedPlan(pub String);

/// The schema of step `n` (from 1) of a plan: its instruction and the earlier steps it depends on.
fn step_schema(n: u32) -> serde_json::Value {
    let depends_on = if n == 1 {
        json!({ "const": [] })
    } else {
        json!({
            "type": "array",
            "items": { "enum": (1..n).collect::<Vec<u32>>() },
            "maxItems": n - 1
        })
    };
    json!({
        "type": "object",
        "properties": {
            "instruction": { "type": "string", "minLength": 3, "maxLength": MAX_INSTRUCTION_CHARS },
            "depends_on": depends_on
        },
        "required": ["instruction", "depends_on"],
        "additionalProperties": false
    })
}

/// The JSON schema of a plan of 1..=`max_steps` steps, each naming the earlier steps it depends on. A
/// step can only name steps before it, so the plan is a graph without cycles by construction: the steps
/// are one alternative per plan length, each a tuple of the positions' own schemas (the GBNF grammar made
/// from it allows nothing else).
pub fn plan_schema(max_steps: u32) -> serde_json::Value {
    let plans: Vec<serde_json::Value> = (1..=max_steps)
        .map(|length| {
            json!({
                "type": "array",
                "prefixItems": (1..=length).map(step_schema).collect::<Vec<_>>(),
                "minItems": length,
                "maxItems": length
            })
        })
        .collect();
    json!({
        "type": "object",
        "properties": { "steps": { "anyOf": plans } },
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
                 steps. Each step is one short instruction in your own words, without a number, and \
                 depends_on lists the numbers of the earlier steps whose results it needs (none: it can \
                 start at once, beside the others). A question of fact needs one step. Reply in JSON."
            )),
            ChatMessage::user(user),
        ],
        max_tokens: limits.plan_tokens,
        output: OutputSpec::Json { schema: plan_schema(max_steps) },
    }
}

/// One step as written: an object (the grammar's form) or, in recordings made before plans were graphs,
/// a bare instruction (it then depends on the step before it: those plans ran in order).
#[derive(Deserialize)]
#[serde(untagged)]
enum Written {
    Step {
        instruction: String,
        #[serde(default)]
        depends_on: Vec<i64>,
    },
    Bare(String),
}

#[derive(Deserialize)]
struct WrittenPlan {
    steps: Vec<Written>,
}

/// Reads a plan from the model's output: valid JSON, 1..=`max_steps` non-blank steps, each depending only
/// on steps before it (repeats dropped, ascending). A blank step is dropped and the numbers after it are
/// renumbered; a step that depended only on a dropped one depends on what that one depended on.
pub fn parse_plan(text: &str, max_steps: u32) -> Result<Plan, MalformedPlan> {
    let written: WrittenPlan = serde_json::from_str(text.trim())
        .map_err(|e| MalformedPlan(format!("{e}: {}", excerpt(text))))?;
    let mut kept: Vec<PlanStep> = Vec::new();
    // For each written step (from 1): its number in the plan kept, or the kept steps it stands for.
    let mut renumbered: Vec<Vec<i32>> = Vec::new();
    for (position, step) in written.steps.into_iter().enumerate() {
        let number = i64::try_from(position + 1).unwrap_or(i64::MAX);
        let (instruction, depends_on) = match step {
            Written::Step {
                instruction,
                depends_on,
            } => (instruction, depends_on),
            Written::Bare(instruction) => (
                instruction,
                (number > 1).then_some(number - 1).into_iter().collect(),
            ),
        };
        let mut after: Vec<i32> = Vec::new();
        for dependency in depends_on {
            if dependency < 1 || dependency >= number {
                return Err(MalformedPlan(format!(
                    "step {number} depends on step {dependency}, which is not an earlier step"
                )));
            }
            let index = usize::try_from(dependency - 1).unwrap_or(usize::MAX);
            after.extend(renumbered.get(index).into_iter().flatten());
        }
        after.sort_unstable();
        after.dedup();
        let instruction = instruction.trim().to_owned();
        if instruction.is_empty() {
            renumbered.push(after);
            continue;
        }
        kept.push(PlanStep {
            instruction,
            depends_on: after,
        });
        renumbered.push(vec![i32::try_from(kept.len()).unwrap_or(i32::MAX)]);
    }
    if kept.is_empty() {
        return Err(MalformedPlan(format!("no steps: {}", excerpt(text))));
    }
    if kept.len() > max_steps as usize {
        return Err(MalformedPlan(format!(
            "{} steps where at most {max_steps} are allowed",
            kept.len()
        )));
    }
    Ok(Plan { steps: kept })
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
        let plan = parse_plan(
            r#"{"steps": [{"instruction": " find facts ", "depends_on": []},
                          {"instruction": "write code", "depends_on": [1, 1]}]}"#,
            3,
        )
        .unwrap();
        assert_eq!(plan.instructions(), vec!["find facts", "write code"]);
        assert_eq!(plan.dependencies(), vec![vec![], vec![1]]);
    }

    #[test]
    fn a_plan_recorded_before_graphs_runs_in_order() {
        let plan = parse_plan(r#"{"steps": ["find facts", "write code", "test it"]}"#, 3).unwrap();
        assert_eq!(plan.dependencies(), vec![vec![], vec![1], vec![2]]);
    }

    #[test]
    fn a_dependency_on_a_later_step_or_itself_is_malformed() {
        for steps in [
            r#"[{"instruction": "a b", "depends_on": [2]}, {"instruction": "c d", "depends_on": []}]"#,
            r#"[{"instruction": "a b", "depends_on": []}, {"instruction": "c d", "depends_on": [2]}]"#,
            r#"[{"instruction": "a b", "depends_on": [0]}]"#,
        ] {
            let error = parse_plan(&format!(r#"{{"steps": {steps}}}"#), 3).unwrap_err();
            assert!(error.0.contains("not an earlier step"), "{error}");
        }
    }

    #[test]
    fn a_blank_step_is_dropped_and_the_graph_renumbered() {
        let plan = parse_plan(
            r#"{"steps": [{"instruction": "a b", "depends_on": []},
                          {"instruction": "   ", "depends_on": [1]},
                          {"instruction": "c d", "depends_on": [2]}]}"#,
            3,
        )
        .unwrap();
        assert_eq!(plan.instructions(), vec!["a b", "c d"]);
        assert_eq!(plan.dependencies(), vec![vec![], vec![1]]);
    }

    #[test]
    fn a_truncated_plan_is_malformed_with_an_excerpt() {
        let error = parse_plan(r#"{"steps": [{"instruction": "find"#, 3).unwrap_err();
        assert!(error.0.contains("{\"steps\""), "{error}");
    }

    #[test]
    fn too_many_or_no_steps_are_refused() {
        assert!(parse_plan(r#"{"steps": ["a b", "c d", "e f"]}"#, 2).is_err());
        assert!(parse_plan(r#"{"steps": ["  "]}"#, 2).is_err());
    }

    #[test]
    fn the_schema_allows_only_earlier_steps_and_bounds_the_length() {
        let schema = plan_schema(3);
        let plans = schema["properties"]["steps"]["anyOf"].as_array().unwrap();
        assert_eq!(plans.len(), 3);
        let longest = &plans[2]["prefixItems"];
        assert_eq!(longest[0]["properties"]["depends_on"]["const"], json!([]));
        assert_eq!(
            longest[2]["properties"]["depends_on"]["items"]["enum"],
            json!([1, 2])
        );
        assert_eq!(
            longest[1]["properties"]["instruction"]["maxLength"],
            MAX_INSTRUCTION_CHARS
        );
        let fits = |text: &str| {
            crate::domain::schema::problem(&schema, &serde_json::from_str(text).unwrap(), "plan")
        };
        assert_eq!(
            fits(
                r#"{"steps": [{"instruction": "abc", "depends_on": []}, {"instruction": "def", "depends_on": [1]}]}"#
            ),
            None
        );
        assert!(fits(r#"{"steps": [{"instruction": "abc", "depends_on": [1]}]}"#).is_some());
        assert!(fits(r#"{"steps": [{"instruction": "abc", "depends_on": []}, {"instruction": "def", "depends_on": [2]}]}"#).is_some());
        let four = r#"{"instruction": "abc", "depends_on": []}"#;
        assert!(fits(&format!(r#"{{"steps": [{four}, {four}, {four}, {four}]}}"#)).is_some());
        assert!(fits(r#"{"steps": []}"#).is_some());
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
        assert!(system.contains("depends_on"), "{system}");
        assert!(ASSIGN_INSTRUCTIONS.contains("research answers questions of fact"));
        // No example output in either prompt: the small model copies examples as answers.
        for text in [system.as_str(), ASSIGN_INSTRUCTIONS] {
            assert!(!text.contains("Example"), "{text}");
            assert!(!text.contains('{'), "{text}");
        }
    }
}
