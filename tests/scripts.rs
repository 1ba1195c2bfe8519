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

/// One scripted model output: the call's purpose, its text, its choice (for decisions).
pub type Output = (&'static str, String, Option<Value>);

/// Stores a finished source task whose recorded model outputs are `outputs` (purpose, text, choice) in the
/// SQLite database at `url`; returns its id.
pub async fn seed_recording(url: &str, outputs: &[(&str, String, Option<Value>)]) -> TaskId {
    let mut settings = crate::helpers::test_settings(&tempfile::tempdir().unwrap());
    settings.database.url = url.to_owned();
    let storage = Storage::connect(&settings.database).await.unwrap();
    storage.migrate().await.unwrap();
    let hub = Hub::new();
    let writer = Writer::spawn(storage, hub, Metrics::new().unwrap());
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
