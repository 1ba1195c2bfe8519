//! Scripted model outputs for replays, shared by `tests/main.rs` (the self-correction loop, the dashboard's
//! data) and `tests/browser.rs`: a finished source task whose recording is the script, and the scripts of
//! one Code step (plan, assignment, attempts, QA's tool calls, the verdict).

use serde_json::{json, Value};
use troupe::domain::{AgentKind, EventKind, TaskId, TaskStatus};
use troupe::events::Hub;
use troupe::storage::records::{LlmCallRecord, NewTask, PendingEvent, TaskEnd, WriteOp};
use troupe::storage::writer::Writer;
use troupe::storage::Storage;
use troupe::telemetry::metrics::Metrics;

/// A writer of its own on the (migrated) database at `url`, as another process would have.
pub async fn writer_on(url: &str) -> Writer {
    let mut settings = crate::helpers::test_settings(&tempfile::tempdir().unwrap());
    settings.database.url = url.to_owned();
    let storage = Storage::connect(&settings.database).await.unwrap();
    storage.migrate().await.unwrap();
    Writer::spawn(storage, Hub::new(), Metrics::new().unwrap())
}

/// One scripted model output: the call's purpose, its text, its choice (for decisions).
pub type Output = (&'static str, String, Option<Value>);

/// Stores a finished source task whose recorded model outputs are `outputs` (purpose, text, choice) in the
/// SQLite database at `url`; returns its id.
pub async fn seed_recording(url: &str, outputs: &[(&str, String, Option<Value>)]) -> TaskId {
    let writer = writer_on(url).await;
    let id = TaskId::new();
    let queued = PendingEvent::now(id, EventKind::TaskQueued, None, json!({ "prompt": "p" }));
    let task = NewTask {
        id,
        prompt: "recorded".into(),
        options: json!({}),
        trace_id: "0".repeat(32),
        replay_of: None,
        created_at: queued.at,
        owner: None,
    };
    writer.create_task(task, queued).await.unwrap();
    for (purpose, text, choice) in outputs {
        writer.send(WriteOp::LlmCall(LlmCallRecord {
            task_id: id,
            purpose: (*purpose).to_owned(),
            agent: AgentKind::Director,
            provider: "script".into(),
            model: "script".into(),
            prompt: "[]".into(),
            output: text.clone(),
            choice: choice.clone(),
            prompt_tokens: 1,
            completion_tokens: 1,
            cost_usd: 0.0,
            duration_seconds: 0.0,
            request: None,
            request_digest: None,
        }));
    }
    // The end commits after the calls (the writer keeps order), so the recording is complete on return.
    writer
        .finish_task(TaskEnd {
            task_id: id,
            status: TaskStatus::Completed,
            result: Some(json!({})),
            error: None,
            event: PendingEvent::now(id, EventKind::TaskCompleted, None, json!({})),
            memories: Vec::new(),
        })
        .await
        .unwrap();
    id
}

pub fn code(code: &str) -> String {
    json!({ "code": code, "test": "assert add(2, 3) == 5" }).to_string()
}

pub fn run_test_call() -> String {
    json!({ "tool": "run_code", "arguments": { "language": "python", "file": "step1_test.py" } })
        .to_string()
}

/// The plan (one step), its assignment to Code, and the final verdict.
pub fn frame() -> Vec<Output> {
    vec![
        (
            "plan",
            json!({ "steps": ["Write add(a, b)"] }).to_string(),
            None,
        ),
        (
            "assign.1",
            r#"{"agent": "code", "reason": "it is code"}"#.into(),
            Some(json!({
                "options": [
                    { "name": "research", "probability": 0.1 },
                    { "name": "code", "probability": 0.8 },
                    { "name": "qa", "probability": 0.1 }
                ],
                "chosen": "code",
                "reasoning": "it is code"
            })),
        ),
        (
            "verify",
            json!({ "verdict": "pass", "feedback": "tested" }).to_string(),
            None,
        ),
    ]
}

/// The frame and a first attempt whose `add` adds (its test passes at once).
pub fn passing_first_attempt() -> Vec<Output> {
    let mut outputs = frame();
    outputs.extend([
        ("work.1", code("def add(a, b):\n    return a + b"), None),
        ("test.1", run_test_call(), None),
    ]);
    outputs
}

/// The frame and a first attempt whose `add` subtracts (its test fails with an AssertionError).
pub fn failing_first_attempt() -> Vec<Output> {
    let mut outputs = frame();
    outputs.extend([
        ("work.1", code("def add(a, b):\n    return a - b"), None),
        ("test.1", run_test_call(), None),
    ]);
    outputs
}

/// [`failing_first_attempt`] and a second attempt that adds (its test passes).
pub fn fixed_on_second_attempt() -> Vec<Output> {
    let mut outputs = failing_first_attempt();
    outputs.extend([
        ("work.1.r2", code("def add(a, b):\n    return a + b"), None),
        ("test.1.r2", run_test_call(), None),
    ]);
    outputs
}

/// Code that defines `name` with `op` and a test that sleeps before checking it.
fn slow_code(name: &str, op: &str, expected: i64) -> String {
    json!({
        "code": format!("def {name}(a, b):\n    return a {op} b"),
        "test": format!("import time\ntime.sleep(1.5)\nassert {name}(2, 3) == {expected}"),
    })
    .to_string()
}

fn assignment(agent: &str) -> Option<Value> {
    Some(json!({
        "options": [
            { "name": "research", "probability": if agent == "research" { 0.8 } else { 0.1 } },
            { "name": "code", "probability": if agent == "code" { 0.8 } else { 0.1 } },
            { "name": "qa", "probability": 0.1 }
        ],
        "chosen": agent,
        "reasoning": "scripted"
    }))
}

fn run_test(step: i32) -> String {
    json!({ "tool": "run_code", "arguments": { "language": "python", "file": format!("step{step}_test.py") } })
        .to_string()
}

/// The settings a three-step plan needs beyond the test profile's two (`director.max_steps` and the plan's
/// token budget, which must cover what the grammar allows).
pub fn three_steps(settings: &mut troupe::config::Settings) {
    settings.director.max_steps = 3;
    settings.llm.limits.plan_tokens = troupe::domain::limits::plan_token_bound(3);
}

/// Two code steps that wait for nothing, a research step after both, QA's pass (a plan of three steps:
/// see [`three_steps`]).
pub fn diamond() -> Vec<Output> {
    vec![
        (
            "plan",
            json!({ "steps": [
                { "instruction": "Write add(a, b)", "depends_on": [] },
                { "instruction": "Write mul(a, b)", "depends_on": [] },
                { "instruction": "Explain both functions", "depends_on": [1, 2] }
            ] })
            .to_string(),
            None,
        ),
        (
            "assign.1",
            r#"{"agent": "code", "reason": "scripted"}"#.into(),
            assignment("code"),
        ),
        (
            "assign.2",
            r#"{"agent": "code", "reason": "scripted"}"#.into(),
            assignment("code"),
        ),
        (
            "assign.3",
            r#"{"agent": "research", "reason": "scripted"}"#.into(),
            assignment("research"),
        ),
        ("work.1", slow_code("add", "+", 5), None),
        ("test.1", run_test(1), None),
        ("work.2", slow_code("mul", "*", 6), None),
        ("test.2", run_test(2), None),
        (
            "work.3",
            "add adds its arguments and mul multiplies them:\n\n| function | f(2, 3) |\n|---|---|\n| add | 5 |\n| mul | 6 |".into(),
            None,
        ),
        (
            "verify",
            json!({ "verdict": "pass", "feedback": "both tested" }).to_string(),
            None,
        ),
    ]
}
