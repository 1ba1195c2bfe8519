//! The Code/QA self-correction loop over the API, with the model's answers scripted through the replay
//! provider: a recording is stored for a source task (plan, assignment, each attempt's code and test, QA's
//! tool calls, the verdict), and a task replaying it runs for real: the files are written, the tests run in
//! the real sandbox, and the failures go back to Code. Last, learning across two tasks on one core whose
//! default model is such a script.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use troupe::domain::{AgentKind, EventKind, MemoryKind, TaskId, TaskOptions, TaskStatus};
use troupe::events::Hub;
use troupe::llm::models::Models;
use troupe::llm::replay::ReplayProvider;
use troupe::llm::{LlmOutput, Usage};
use troupe::memory::MemoryParts;
use troupe::sandbox::Sandbox;
use troupe::service::Core;
use troupe::storage::records::{LlmCallRecord, PendingEvent, TaskEnd, WriteOp};
use troupe::storage::writer::Writer;
use troupe::storage::Storage;
use troupe::telemetry::metrics::Metrics;

use crate::helpers::{metric_value, spawn_app_with, TestApp};
use crate::postgres::store_queued_task;

/// Stores a finished source task whose recorded model outputs are `outputs` (purpose, text, choice) in the
/// SQLite database at `url`; returns its id.
async fn seed_recording(url: &str, outputs: &[(&str, String, Option<Value>)]) -> TaskId {
    let mut settings = crate::helpers::test_settings(&tempfile::tempdir().unwrap());
    settings.database.url = url.to_owned();
    let storage = Storage::connect(&settings.database).await.unwrap();
    storage.migrate().await.unwrap();
    let hub = Hub::new();
    let writer = Writer::spawn(storage, hub, Metrics::new().unwrap());
    let id = store_queued_task(&writer).await;
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

fn code(code: &str) -> String {
    json!({ "code": code, "test": "assert add(2, 3) == 5" }).to_string()
}

fn run_test_call() -> String {
    json!({ "tool": "run_code", "arguments": { "language": "python", "file": "step1_test.py" } })
        .to_string()
}

/// The plan (one step), its assignment to Code, and the final verdict.
fn frame() -> Vec<(&'static str, String, Option<Value>)> {
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
fn failing_first_attempt() -> Vec<(&'static str, String, Option<Value>)> {
    let mut outputs = frame();
    outputs.extend([
        ("work.1", code("def add(a, b):\n    return a - b"), None),
        ("test.1", run_test_call(), None),
    ]);
    outputs
}

/// [`failing_first_attempt`] and a second attempt that adds (its test passes).
fn fixed_on_second_attempt() -> Vec<(&'static str, String, Option<Value>)> {
    let mut outputs = failing_first_attempt();
    outputs.extend([
        ("work.1.r2", code("def add(a, b):\n    return a + b"), None),
        ("test.1.r2", run_test_call(), None),
    ]);
    outputs
}

async fn app_on(dir: &tempfile::TempDir, attempts: u32) -> (TestApp, String) {
    let url = format!("sqlite://{}/scripted.sqlite?mode=rwc", dir.path().display());
    let app_url = url.clone();
    let app = spawn_app_with(move |settings| {
        settings.sandbox.enabled = true;
        settings.database.url = app_url;
        settings.director.code_attempts = attempts;
        settings.memory.enabled = false;
    })
    .await;
    (app, url)
}

fn events_of<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["kind"] == kind).collect()
}

#[actix_rt::test]
async fn a_failing_attempt_is_fixed_from_the_feedback() {
    let dir = tempfile::tempdir().unwrap();
    let (app, url) = app_on(&dir, 3).await;
    let outputs = fixed_on_second_attempt();
    let source = seed_recording(&url, &outputs).await;

    let id = app
        .submit_with(json!({ "prompt": "Write add(a, b)", "options": { "replay_of": source } }))
        .await;
    let events = app.follow(&id, 0, Duration::from_secs(60)).await;
    assert_eq!(
        events.last().unwrap()["kind"],
        "task.completed",
        "{events:#?}"
    );

    let attempts = events_of(&events, "code.attempt");
    assert_eq!(attempts.len(), 2, "{attempts:#?}");
    assert_eq!(attempts[0]["data"]["attempt"], 1);
    assert_eq!(attempts[0]["data"]["passed"], false);
    assert_eq!(attempts[0]["data"]["run_outcome"], "error");
    let failure = attempts[0]["data"]["failure"].as_str().unwrap();
    assert!(failure.contains("AssertionError"), "{failure}");
    assert_eq!(attempts[1]["data"]["attempt"], 2);
    assert_eq!(attempts[1]["data"]["passed"], true);
    assert!(attempts[1]["data"]["wall_seconds"].as_f64().unwrap() > 0.0);

    // Code's files and QA's runs are tool calls.
    let tools: Vec<(&str, &str)> = events_of(&events, "tool.called")
        .iter()
        .map(|e| {
            (
                e["data"]["tool"].as_str().unwrap(),
                e["data"]["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        tools,
        vec![
            ("write_file", "ok"),
            ("write_file", "ok"),
            ("run_code", "ok"),
            ("write_file", "ok"),
            ("write_file", "ok"),
            ("run_code", "ok"),
        ]
    );

    let (_, task) = app.get(&format!("/api/v1/tasks/{id}")).await;
    assert_eq!(task["status"], "completed");
    assert_eq!(
        task["result"]["tests"].as_array().unwrap().len(),
        2,
        "{task}"
    );
    assert!(task["result"]["answer"]
        .as_str()
        .unwrap()
        .contains("return a + b"));
    let code_step = &task["steps"][0];
    assert_eq!(code_step["agent"], "code");
    assert_eq!(code_step["attempts"], 2, "{task}");

    let scrape = app.metrics().await;
    assert_eq!(
        metric_value(
            &scrape,
            "troupe_code_attempts_total{attempt=\"1\",outcome=\"failed\"}"
        ),
        1.0
    );
    assert_eq!(
        metric_value(
            &scrape,
            "troupe_code_attempts_total{attempt=\"2\",outcome=\"passed\"}"
        ),
        1.0
    );
    assert_eq!(
        metric_value(
            &scrape,
            "troupe_tool_calls_total{outcome=\"ok\",tool=\"run_code\"}"
        ),
        2.0
    );
}

#[actix_rt::test]
async fn code_that_never_passes_fails_the_task_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (app, url) = app_on(&dir, 2).await;
    let mut outputs = failing_first_attempt();
    outputs.extend([
        (
            "work.1.r2",
            code("import socket\nsocket.getaddrinfo('example.com', 80)\ndef add(a, b):\n    return a * b"),
            None,
        ),
        ("test.1.r2", run_test_call(), None),
    ]);
    let source = seed_recording(&url, &outputs).await;

    let id = app
        .submit_with(json!({ "prompt": "Write add(a, b)", "options": { "replay_of": source } }))
        .await;
    let events = app.follow(&id, 0, Duration::from_secs(60)).await;
    let last = events.last().unwrap();
    assert_eq!(last["kind"], "task.failed", "{events:#?}");
    let error = last["data"]["error"].as_str().unwrap();
    assert!(
        error.contains("failed its test after 2 attempts"),
        "{error}"
    );
    assert!(error.contains("violation"), "{error}");

    let attempts = events_of(&events, "code.attempt");
    assert_eq!(attempts.len(), 2);
    assert!(attempts.iter().all(|a| a["data"]["passed"] == false));
    assert_eq!(attempts[1]["data"]["run_outcome"], "violation");
    // The second attempt tried the network: contained, evented and counted.
    let violations = events_of(&events, "sandbox.violation");
    assert_eq!(violations.len(), 1, "{violations:#?}");
    assert_eq!(violations[0]["data"]["kind"], "network");
    assert!(events_of(&events, "qa.verdict").is_empty());

    let (_, task) = app.get(&format!("/api/v1/tasks/{id}")).await;
    assert_eq!(task["status"], "failed");
    assert_eq!(task["steps"][0]["status"], "failed", "{task}");
    let scrape = app.metrics().await;
    assert_eq!(
        metric_value(
            &scrape,
            "troupe_code_attempts_total{attempt=\"2\",outcome=\"failed\"}"
        ),
        1.0
    );
    assert_eq!(
        metric_value(&scrape, "troupe_sandbox_violations_total{kind=\"network\"}"),
        1.0
    );
}

#[actix_rt::test]
async fn readyz_reports_a_sandbox_that_cannot_run_code() {
    let app = spawn_app_with(|settings| {
        settings.sandbox.enabled = true;
        settings.sandbox.bwrap = "/nonexistent/bwrap".into();
    })
    .await;
    let (status, ready) = app.get("/readyz").await;
    assert_eq!(status, 503, "{ready}");
    let check = ready["checks"]["sandbox"].as_str().unwrap();
    assert!(check.contains("bubblewrap"), "{check}");
    let scrape = app.metrics().await;
    assert_eq!(metric_value(&scrape, "troupe_sandbox_up"), 0.0);

    let disabled = spawn_app_with(|settings| settings.sandbox.enabled = false).await;
    let (status, ready) = disabled.get("/readyz").await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["checks"]["sandbox"], "disabled");
}

/// Learning across tasks: a task whose second attempt fixes its first learns the fix; a later task whose
/// first attempt fails the same way is offered it with its feedback, and the offer is scored by how that
/// attempt ends. Both tasks run on one core whose default model answers from a script (the replay provider;
/// tasks not started with `replay_of` learn), with real memory (SQLite, the embedding model) and the real
/// sandbox.
#[actix_rt::test]
async fn a_fix_learned_in_one_task_is_offered_to_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = crate::helpers::test_settings(&dir);
    settings.sandbox.enabled = true;
    settings.director.code_attempts = 3;
    settings.memory.enabled = true;
    let metrics = Metrics::new().unwrap();
    let storage = Storage::connect(&settings.database).await.unwrap();
    storage.migrate().await.unwrap();
    let memory = MemoryParts::start(&settings.memory, &settings.redis, &metrics)
        .await
        .unwrap();
    let sandbox = Sandbox::start(settings.sandbox.clone(), metrics.clone()).await;
    let outputs = fixed_on_second_attempt();
    let recorded = outputs
        .into_iter()
        .map(|(purpose, text, choice)| {
            let output = LlmOutput {
                text,
                choice: choice.map(|choice| serde_json::from_value(choice).unwrap()),
                usage: Usage::default(),
                generation_seconds: 0.0,
            };
            (purpose.to_owned(), output)
        })
        .collect();
    let script = ReplayProvider::new(TaskId::new(), "script".into(), recorded);
    let core = Core::assemble(
        settings,
        storage,
        metrics,
        Models::single(Arc::new(script)),
        memory,
        sandbox,
    );

    let finish = |id: TaskId| {
        let storage = core.storage.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let task = storage.task(id).await.unwrap().unwrap();
                if task.status.is_terminal() {
                    assert_eq!(task.status, TaskStatus::Completed, "{task:?}");
                    return storage.events_after(id, 0).await.unwrap();
                }
                assert!(Instant::now() < deadline, "task {id} did not finish");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let offered = |events: &[troupe::domain::Event]| -> Vec<u64> {
        events
            .iter()
            .filter(|e| e.kind == EventKind::CodeAttempt)
            .map(|e| e.data["known_fixes_offered"].as_u64().unwrap())
            .collect()
    };

    let first = core
        .submit("Write add(a, b)", TaskOptions::default())
        .await
        .unwrap();
    let first_events = finish(first).await;
    // Nothing learned yet: the second attempt came from the failure alone.
    assert_eq!(offered(&first_events), [0, 0]);
    let learned = core.storage.task_memories(first).await.unwrap();
    let pattern = learned
        .iter()
        .find(|m| m.kind == MemoryKind::Pattern)
        .unwrap_or_else(|| panic!("no pattern learned: {learned:#?}"));
    let fix = pattern.detail.as_ref().unwrap()["fix"].as_str().unwrap();
    assert!(fix.contains("return a + b"), "{pattern:#?}");
    assert!(pattern.content.contains("AssertionError"), "{pattern:#?}");

    let second = core
        .submit("Write add(a, b) once more", TaskOptions::default())
        .await
        .unwrap();
    let second_events = finish(second).await;
    assert_eq!(offered(&second_events), [0, 1], "{second_events:#?}");
    // The offer was counted, and scored as a success: the attempt it went with passed.
    let scored = core.storage.memory(&pattern.id).await.unwrap().unwrap();
    assert_eq!((scored.uses, scored.successes), (1, 1), "{scored:#?}");
    let scrape = core.metrics.render().unwrap();
    assert!(
        scrape.contains("troupe_code_attempts_total{attempt=\"2\",outcome=\"passed\"} 2"),
        "{scrape}"
    );
}
