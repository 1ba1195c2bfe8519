//! Unit tests of breakpoints: names, validation (each problem and its message), JSON shapes, matching.

use super::*;
use serde_json::json;

const TOOLS: [&str; 5] = [
    "run_code",
    "write_file",
    "read_file",
    "list_files",
    "search_memory",
];

fn spec(value: serde_json::Value) -> BreakpointSpec {
    serde_json::from_value(value).unwrap()
}

fn problem(value: serde_json::Value) -> String {
    spec(value).validate(&TOOLS).unwrap_err().to_string()
}

fn breakpoint(value: serde_json::Value) -> Breakpoint {
    let spec = spec(value);
    spec.validate(&TOOLS).unwrap();
    Breakpoint {
        id: BreakpointId::new(),
        spec,
        created_at: Utc::now(),
    }
}

#[test]
fn points_round_trip_through_their_names() {
    for on in BreakOn::ALL {
        assert_eq!(on.as_str().parse::<BreakOn>().unwrap(), on);
        assert_eq!(serde_json::to_value(on).unwrap(), json!(on.as_str()));
    }
    assert_eq!(
        "decisions".parse::<BreakOn>().unwrap_err().to_string(),
        "unknown breakpoint point 'decisions'; breakpoints are on decision, tool, step or llm"
    );
    let id = BreakpointId::new();
    assert_eq!(id.to_string().parse::<BreakpointId>().unwrap(), id);
    assert!(BreakpointId::new() > id, "ids sort by creation");
}

#[test]
fn good_specs_validate() {
    for value in [
        json!({ "on": "decision" }),
        json!({ "on": "decision", "kind": "assign_agent", "when": "confidence < 0.6" }),
        json!({ "on": "decision", "agent": "director", "kind": "assign_agent", "step": 2,
                "when": "chosen == 'code' or probability < 0.5" }),
        json!({ "on": "decision", "kind": "verdict", "when": "chosen == 'fail' and round == 1" }),
        json!({ "on": "decision", "agent": "qa" }),
        json!({ "on": "tool", "tool": "run_code", "agent": "qa",
                "when": "arguments.entry == 'step1_test.py' and attempt >= 2" }),
        json!({ "on": "step", "agent": "code", "step": 9 }),
        json!({ "on": "llm", "purpose": "work.2", "agent": "code", "when": "purpose != 'work.2.r2'" }),
        json!({ "on": "llm", "agent": "director", "purpose": "assign" }),
        json!({ "on": "tool", "task_id": TaskId::new() }),
    ] {
        let parsed = spec(value.clone());
        assert_eq!(parsed.validate(&TOOLS), Ok(()), "{value}");
    }
}

#[test]
fn every_kind_of_bad_spec_says_what_is_wrong() {
    assert_eq!(
        problem(json!({ "on": "decision", "kind": "route" })),
        "unknown decision kind 'route'; the decision kinds are assign_agent (the Director's choice of agent for a step, scored by the model's probabilities); verdict (QA's verdict on the work, pass or fail)"
    );
    assert_eq!(
        problem(json!({ "on": "tool", "tool": "rm_rf" })),
        "unknown tool 'rm_rf'; the tools are run_code, write_file, read_file, list_files, search_memory"
    );
    assert_eq!(
        problem(json!({ "on": "step", "tool": "run_code" })),
        "'tool' does not apply to breakpoints on step (they take: on, agent, step, when, task_id)"
    );
    assert_eq!(
        problem(json!({ "on": "tool", "kind": "verdict" })),
        "'kind' does not apply to breakpoints on tool (they take: on, agent, tool, step, when, task_id)"
    );
    assert_eq!(
        problem(json!({ "on": "decision", "purpose": "plan" })),
        "'purpose' does not apply to breakpoints on decision (they take: on, agent, kind, step, when, task_id)"
    );
    assert_eq!(
        problem(json!({ "on": "step", "step": 0 })),
        "step must be within 1..=9 (a plan's steps and QA's verification), got 0"
    );
    assert!(problem(json!({ "on": "step", "step": 10 })).ends_with("got 10"));
    assert_eq!(
        problem(json!({ "on": "llm", "purpose": "p".repeat(65) })),
        "purpose has 65 characters; at most 64 are allowed"
    );
    assert_eq!(
        problem(json!({ "on": "llm", "purpose": "work 2" })),
        "purpose 'work 2' is not a model call purpose (letters, digits, '.', '_' and '-', such as work.2 or verify)"
    );
    assert!(problem(json!({ "on": "llm", "purpose": "" })).starts_with("purpose '' is not"));
    assert_eq!(
        problem(json!({ "on": "decision", "agent": "research" })),
        "research makes no decisions; decisions are made by director (assign_agent) and qa (verdict)"
    );
    assert_eq!(
        problem(json!({ "on": "decision", "kind": "verdict", "agent": "director" })),
        "verdict decisions are made by qa, not director"
    );
    assert_eq!(
        problem(json!({ "on": "decision", "kind": "verdict", "step": 2 })),
        "step does not apply to verdict decisions (QA's verdict on the work, pass or fail): they are about the whole task, not one step"
    );
    assert_eq!(
        problem(json!({ "on": "step", "agent": "director" })),
        "the director runs no steps; steps are run by research, code, qa"
    );
    assert_eq!(
        problem(json!({ "on": "tool", "when": "confidence < 0.5" })),
        "when: 'confidence' is not known at tool points (at tool points: step, attempt, revision, round, agent, tool, arguments.<name>)"
    );
    assert_eq!(
        problem(json!({ "on": "step", "when": "arguments.code == 'x'" })),
        "when: 'arguments.code' is not known at step points (at step points: step, attempt, revision, round, agent)"
    );
    assert_eq!(
        problem(json!({ "on": "decision", "kind": "verdict", "when": "confidence < 0.5" })),
        "when: verdict decisions have no 'confidence' (QA's verdict on the work, pass or fail)"
    );
    assert_eq!(
        problem(json!({ "on": "decision", "when": "agent == 'coder'" })),
        "when: there is no agent 'coder' (agent is one of director, research, code, qa)"
    );
    assert_eq!(
        problem(json!({ "on": "tool", "when": "tool == 'shell'" })),
        "when: there is no tool 'shell' (tool is one of run_code, write_file, read_file, list_files, search_memory)"
    );
    assert_eq!(
        problem(json!({ "on": "decision", "kind": "verdict", "when": "chosen == 'maybe'" })),
        "when: 'maybe' is not a possible choice (chosen is one of pass, fail)"
    );
    assert_eq!(
        problem(json!({ "on": "decision", "when": "kind == 'plan'" })),
        "when: there is no decision kind 'plan' (kind is one of assign_agent, verdict)"
    );
}

#[test]
fn a_spec_from_json_rejects_unknown_fields_and_bad_conditions() {
    let unknown = serde_json::from_value::<BreakpointSpec>(json!({ "on": "tool", "tools": "x" }))
        .unwrap_err()
        .to_string();
    assert!(unknown.contains("unknown field `tools`"), "{unknown}");
    let condition =
        serde_json::from_value::<BreakpointSpec>(json!({ "on": "tool", "when": "step >" }))
            .unwrap_err()
            .to_string();
    assert!(condition.contains("after '>'"), "{condition}");
    let on = serde_json::from_value::<BreakpointSpec>(json!({ "on": "model" }))
        .unwrap_err()
        .to_string();
    assert!(on.contains("unknown variant `model`"), "{on}");
}

#[test]
fn a_breakpoint_is_one_flat_json_object_that_reads_back() {
    let stored =
        breakpoint(json!({ "on": "decision", "kind": "assign_agent", "when": "confidence<0.6" }));
    let value = serde_json::to_value(&stored).unwrap();
    let keys: Vec<&str> = value
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut expected = vec![
        "id",
        "on",
        "agent",
        "kind",
        "tool",
        "step",
        "purpose",
        "when",
        "task_id",
        "created_at",
    ];
    expected.sort_unstable();
    let mut sorted = keys.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, expected);
    assert_eq!(value["when"], "confidence < 0.6");
    assert_eq!(value["agent"], serde_json::Value::Null);
    let back: Breakpoint = serde_json::from_value(value).unwrap();
    assert_eq!(back, stored);
}

#[test]
fn matching_needs_the_point_kind_every_given_field_and_the_condition() {
    let task = TaskId::new();
    let low = PausePoint::decision(AgentKind::Director, "assign_agent")
        .at_step(2)
        .with("confidence", json!(0.4));
    let high = low.clone().with("confidence", json!(0.8));

    let any_decision = breakpoint(json!({ "on": "decision" }));
    assert!(any_decision.matches(task, &low));
    assert!(!any_decision.matches(task, &PausePoint::step(AgentKind::Code, 2)));

    let unsure =
        breakpoint(json!({ "on": "decision", "kind": "assign_agent", "when": "confidence < 0.6" }));
    assert!(unsure.matches(task, &low));
    assert!(!unsure.matches(task, &high));
    assert!(!unsure.matches(task, &PausePoint::decision(AgentKind::Qa, "verdict")));

    let step_three = breakpoint(json!({ "on": "decision", "kind": "assign_agent", "step": 3 }));
    assert!(!step_three.matches(task, &low));
    assert!(step_three.matches(task, &low.clone().at_step(3)));
    let qa = breakpoint(json!({ "on": "decision", "agent": "qa" }));
    assert!(!qa.matches(task, &low));

    // Task-attached: only its own task.
    let other = TaskId::new();
    let attached = breakpoint(json!({ "on": "decision", "task_id": task }));
    assert!(attached.matches(task, &low));
    assert!(!attached.matches(other, &low));

    let run_code = breakpoint(
        json!({ "on": "tool", "tool": "run_code", "when": "arguments.entry == 'a.py'" }),
    );
    let call =
        PausePoint::tool(AgentKind::Qa, "run_code").with("arguments", json!({ "entry": "a.py" }));
    assert!(run_code.matches(task, &call));
    assert!(!run_code.matches(
        task,
        &call.clone().with("arguments", json!({ "entry": "b.py" }))
    ));
    assert!(!run_code.matches(task, &PausePoint::tool(AgentKind::Code, "write_file")));

    let work = breakpoint(json!({ "on": "llm", "purpose": "work" }));
    let work_two = breakpoint(json!({ "on": "llm", "purpose": "work.2" }));
    let call = |purpose: &str| PausePoint::llm(AgentKind::Code, purpose);
    assert!(work.matches(task, &call("work.2")) && work.matches(task, &call("work.2.r2")));
    assert!(!work.matches(task, &call("workshop")) && !work.matches(task, &call("plan")));
    assert!(work_two.matches(task, &call("work.2")) && work_two.matches(task, &call("work.2.q2")));
    assert!(!work_two.matches(task, &call("work.20")));
    let mut no_purpose = call("work.2");
    no_purpose.purpose = None;
    assert!(!work.matches(task, &no_purpose));

    let code_steps = breakpoint(json!({ "on": "step", "agent": "code", "when": "attempt > 1" }));
    assert!(code_steps.matches(
        task,
        &PausePoint::step(AgentKind::Code, 2).with("attempt", json!(2))
    ));
    assert!(!code_steps.matches(
        task,
        &PausePoint::step(AgentKind::Code, 2).with("attempt", json!(1))
    ));
    assert!(
        !code_steps.matches(task, &PausePoint::step(AgentKind::Code, 2)),
        "no attempt: false"
    );
    assert!(!code_steps.matches(
        task,
        &PausePoint::step(AgentKind::Qa, 2).with("attempt", json!(2))
    ));
}
