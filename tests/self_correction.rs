//! The Code/QA self-correction loop over the API, with the model's answers scripted through the replay
//! provider: a recording is stored for a source task (plan, assignment, each attempt's code and test, QA's
//! tool calls, the verdict), and a task replaying it runs for real: the files are written, the tests run in
//! the real sandbox, and the failures go back to Code. Last, learning across two tasks on one core whose
//! default model is such a script.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use troupe::domain::{EventKind, MemoryKind, TaskId, TaskOptions, TaskStatus};
use troupe::llm::models::Models;
use troupe::llm::replay::ReplayProvider;
use troupe::llm::{LlmOutput, Usage};
use troupe::memory::MemoryParts;
use troupe::sandbox::Sandbox;
use troupe::service::Core;
use troupe::storage::Storage;
use troupe::telemetry::metrics::Metrics;

use crate::helpers::{metric_value, spawn_app_with, TestApp};
use crate::scripts::{
    code, failing_first_attempt, fixed_on_second_attempt, frame, run_test_call, seed_recording,
};

pub(crate) async fn app_on(dir: &tempfile::TempDir, attempts: u32) -> (TestApp, String) {
    app_on_with(dir, attempts, |_| {}).await
}

/// [`app_on`] with more settings changed by `adjust`.
pub(crate) async fn app_on_with(
    dir: &tempfile::TempDir,
    attempts: u32,
    adjust: impl FnOnce(&mut troupe::config::Settings),
) -> (TestApp, String) {
    let url = format!("sqlite://{}/scripted.sqlite?mode=rwc", dir.path().display());
    let app_url = url.clone();
    let app = spawn_app_with(move |settings| {
        settings.sandbox.enabled = true;
        settings.database.url = app_url;
        settings.director.code_attempts = attempts;
        settings.director.qa_verdict = troupe::config::QaVerdictMode::Decides;
        settings.memory.enabled = false;
        adjust(settings);
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
            // The passing test was also run against a stub of the code, and failed there: it can fail.
            ("run_code", "ok"),
        ]
    );
    assert_eq!(attempts[1]["data"]["vacuous"], false);
    assert_eq!(
        attempts[1]["data"]["stub_check"]["functions"],
        json!(["add(a, b)"])
    );
    assert_eq!(attempts[1]["data"]["stub_check"]["calls"], json!(["add"]));

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
        3.0
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

/// A core whose default model answers from `outputs` (the replay provider; tasks not started with
/// `replay_of` learn), with real memory (SQLite, the embedding model) and the real sandbox.
async fn scripted_core(
    dir: &tempfile::TempDir,
    outputs: Vec<(&'static str, String, Option<Value>)>,
) -> Core {
    let mut settings = crate::helpers::test_settings(dir);
    settings.sandbox.enabled = true;
    settings.director.code_attempts = 3;
    settings.director.qa_verdict = troupe::config::QaVerdictMode::Decides;
    settings.memory.enabled = true;
    let metrics = Metrics::new().unwrap();
    let storage = Storage::connect(&settings.database).await.unwrap();
    storage.migrate().await.unwrap();
    let memory = MemoryParts::start(&settings.memory, &settings.redis, &metrics)
        .await
        .unwrap();
    let sandbox = Sandbox::start(settings.sandbox.clone(), metrics.clone()).await;
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
    Core::assemble(
        settings,
        storage,
        metrics,
        Models::single(Arc::new(script)),
        memory,
        sandbox,
    )
}

/// Waits (bounded) for task `id` of `core` to end; returns its status and events.
async fn end_of(core: &Core, id: TaskId) -> (TaskStatus, Vec<troupe::domain::Event>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let task = core.storage.task(id).await.unwrap().unwrap();
        if task.status.is_terminal() {
            return (task.status, core.storage.events_after(id, 0).await.unwrap());
        }
        assert!(Instant::now() < deadline, "task {id} did not finish");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Learning across tasks: a task whose second attempt fixes its first learns the fix; a later task whose
/// first attempt fails the same way is offered it with its feedback, and the offer is scored by how that
/// attempt ends. Both tasks run on one core whose default model answers from a script (the replay provider;
/// tasks not started with `replay_of` learn), with real memory (SQLite, the embedding model) and the real
/// sandbox.
#[actix_rt::test]
async fn a_fix_learned_in_one_task_is_offered_to_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let core = scripted_core(&dir, fixed_on_second_attempt()).await;

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
    assert!(
        scrape
            .contains("troupe_code_fix_outcomes_total{fix_offered=\"true\",outcome=\"passed\"} 1"),
        "{scrape}"
    );

    // The learning curve: two loops of one error signature, each passing at its second attempt, once
    // with the learned fix offered and once without.
    let learning = core.learning(1, 1).await.unwrap();
    let total = &learning["total"];
    assert_eq!(total["loops"], 2, "{learning:#}");
    assert_eq!(total["mean_attempts_to_pass"], 2.0);
    assert_eq!(
        total["with_fix"],
        json!({ "attempts": 1, "passed": 1, "pass_rate": 1.0 })
    );
    assert_eq!(
        total["without_fix"],
        json!({ "attempts": 1, "passed": 1, "pass_rate": 1.0 })
    );
    let signature = &learning["signatures"][0];
    assert_eq!(signature["loops"], 2);
    assert!(
        signature["signature"]
            .as_str()
            .unwrap()
            .contains("AssertionError"),
        "{signature}"
    );
    assert_eq!(learning["curve"].as_array().unwrap().len(), 1);
}

/// `outputs` with the verdict of round 1 replaced by `verdict`.
fn with_verdict(
    mut outputs: Vec<(&'static str, String, Option<Value>)>,
    verdict: &str,
    feedback: &str,
) -> Vec<(&'static str, String, Option<Value>)> {
    for output in &mut outputs {
        if output.0 == "verify" {
            output.1 = json!({ "verdict": verdict, "feedback": feedback }).to_string();
        }
    }
    outputs
}

/// A code step that passes at once, and QA's verdict `fail` on it.
fn rejected_by_qa() -> Vec<(&'static str, String, Option<Value>)> {
    let mut outputs = with_verdict(frame(), "fail", "add must add");
    outputs.extend([
        ("work.1", code("def add(a, b):\n    return a + b"), None),
        ("test.1", run_test_call(), None),
    ]);
    outputs
}

/// The revision QA's `fail` asks for (round 2: the code again, its test run, the second verdict).
fn revision(verdict: &str) -> Vec<(&'static str, String, Option<Value>)> {
    vec![
        ("work.1.q2", code("def add(a, b):\n    return b + a"), None),
        ("test.1.q2", run_test_call(), None),
        (
            "verify.q2",
            json!({ "verdict": verdict, "feedback": "still not what the task asks" }).to_string(),
            None,
        ),
    ]
}

/// QA's verdict decides (the default): a `fail` sends the work back once with QA's feedback, QA verifies
/// again, and a second `fail` fails the task with QA's feedback; a `pass` of the revision completes it.
/// Deterministic model answers through a replay script; the tests run in the real sandbox.
#[actix_rt::test]
async fn qa_fail_sends_the_work_back_once_then_fails_the_task() {
    let dir = tempfile::tempdir().unwrap();
    let (app, url) = app_on(&dir, 2).await;
    let mut outputs = rejected_by_qa();
    outputs.extend(revision("fail"));
    let failing = seed_recording(&url, &outputs).await;
    let mut outputs = rejected_by_qa();
    outputs.extend(revision("pass"));
    let passing = seed_recording(&url, &outputs).await;

    let id = app
        .submit_with(json!({ "prompt": "Write add(a, b)", "options": { "replay_of": failing } }))
        .await;
    let events = app.follow(&id, 0, Duration::from_secs(60)).await;
    let last = events.last().unwrap();
    assert_eq!(last["kind"], "task.failed", "{events:#?}");
    let error = last["data"]["error"].as_str().unwrap();
    assert!(
        error.contains("QA's verdict is fail after 1 revision"),
        "{error}"
    );
    assert!(error.contains("still not what the task asks"), "{error}");
    let verdicts: Vec<_> = events_of(&events, "qa.verdict")
        .iter()
        .map(|e| (e["data"]["verdict"].clone(), e["data"]["round"].clone()))
        .collect();
    assert_eq!(
        verdicts,
        [(json!("fail"), json!(1)), (json!("fail"), json!(2))]
    );
    let revisions = events_of(&events, "qa.revision");
    assert_eq!(revisions.len(), 2, "{revisions:#?}");
    assert_eq!(revisions[0]["data"]["outcome"], "revising");
    assert_eq!(revisions[0]["data"]["feedback"], "add must add");
    assert_eq!(revisions[0]["data"]["step"], 1);
    assert_eq!(revisions[1]["data"]["outcome"], "task_failed");
    // The code step ran again in round 2 (its own purposes: work.1.q2, test.1.q2).
    let attempts = events_of(&events, "code.attempt");
    let rounds: Vec<_> = attempts
        .iter()
        .map(|a| a["data"]["round"].clone())
        .collect();
    assert_eq!(rounds, [json!(1), json!(2)], "{attempts:#?}");
    let (_, task) = app.get(&format!("/api/v1/tasks/{id}")).await;
    assert_eq!(task["status"], "failed");

    let id = app
        .submit_with(json!({ "prompt": "Write add(a, b)", "options": { "replay_of": passing } }))
        .await;
    let events = app.follow(&id, 0, Duration::from_secs(60)).await;
    assert_eq!(
        events.last().unwrap()["kind"],
        "task.completed",
        "{events:#?}"
    );
    let (_, task) = app.get(&format!("/api/v1/tasks/{id}")).await;
    assert_eq!(task["result"]["verdict"]["verdict"], "pass", "{task}");
    assert!(task["result"]["answer"].as_str().unwrap().contains("b + a"));

    let scrape = app.metrics().await;
    assert_eq!(
        metric_value(&scrape, "troupe_qa_revisions_total{outcome=\"failed\"}"),
        1.0
    );
    assert_eq!(
        metric_value(&scrape, "troupe_qa_revisions_total{outcome=\"passed\"}"),
        1.0
    );
}

/// With `director.qa_verdict = "advisory"` QA's `fail` is recorded and the task completes, as before.
#[actix_rt::test]
async fn an_advisory_qa_verdict_is_recorded_and_not_acted_on() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/scripted.sqlite?mode=rwc", dir.path().display());
    let app_url = url.clone();
    let app = spawn_app_with(move |settings| {
        settings.sandbox.enabled = true;
        settings.database.url = app_url;
        settings.memory.enabled = false;
        settings.director.qa_verdict = troupe::config::QaVerdictMode::Advisory;
    })
    .await;
    let source = seed_recording(&url, &rejected_by_qa()).await;
    let id = app
        .submit_with(json!({ "prompt": "Write add(a, b)", "options": { "replay_of": source } }))
        .await;
    let events = app.follow(&id, 0, Duration::from_secs(60)).await;
    assert_eq!(
        events.last().unwrap()["kind"],
        "task.completed",
        "{events:#?}"
    );
    assert!(events_of(&events, "qa.revision").is_empty());
    let (_, task) = app.get(&format!("/api/v1/tasks/{id}")).await;
    assert_eq!(task["result"]["verdict"]["verdict"], "fail", "{task}");
    let scrape = app.metrics().await;
    assert_eq!(
        metric_value(&scrape, "troupe_qa_revisions_total{outcome=\"advisory\"}"),
        1.0
    );
}

/// A test that cannot fail (it asserts something that does not involve the code) passes in the sandbox,
/// then passes against a stub of the code too: it is rejected as vacuous and sent back to Code as feedback;
/// the next attempt's test calls the function and is accepted.
#[actix_rt::test]
async fn a_vacuous_test_is_rejected_and_sent_back() {
    let dir = tempfile::tempdir().unwrap();
    let (app, url) = app_on(&dir, 3).await;
    let mut outputs = frame();
    outputs.extend([
        (
            "work.1",
            json!({ "code": "def add(a, b):\n    return a + b", "test": "assert 2 + 3 == 5" })
                .to_string(),
            None,
        ),
        ("test.1", run_test_call(), None),
        (
            "work.1.r2",
            json!({ "code": "def add(a, b):\n    return a + b", "test": "print(add(2, 3))" })
                .to_string(),
            None,
        ),
        ("test.1.r2", run_test_call(), None),
        ("work.1.r3", code("def add(a, b):\n    return a + b"), None),
        ("test.1.r3", run_test_call(), None),
    ]);
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
    assert_eq!(attempts.len(), 3, "{attempts:#?}");
    // 1: passes in the sandbox, and against the stub: it never calls add.
    assert_eq!(attempts[0]["data"]["run_outcome"], "ok");
    assert_eq!(attempts[0]["data"]["vacuous"], true);
    assert_eq!(attempts[0]["data"]["passed"], false);
    assert_eq!(
        attempts[0]["data"]["stub_check"]["passes_against_stub"],
        true
    );
    let failure = attempts[0]["data"]["failure"].as_str().unwrap();
    assert!(failure.contains("never calls add(a, b)"), "{failure}");
    // 2: calls add (so it fails against the stub) but asserts nothing.
    assert_eq!(attempts[1]["data"]["vacuous"], true);
    assert_eq!(
        attempts[1]["data"]["stub_check"]["passes_against_stub"],
        false
    );
    let failure = attempts[1]["data"]["failure"].as_str().unwrap();
    assert!(failure.contains("no assert"), "{failure}");
    // 3: a real test.
    assert_eq!(attempts[2]["data"]["passed"], true);
    assert_eq!(attempts[2]["data"]["vacuous"], false);
    // The stub check runs jailed, as a run_code tool call of the Director.
    let stub_runs = events_of(&events, "tool.called")
        .into_iter()
        .filter(|e| e["data"]["call_id"].as_str().unwrap().ends_with(".stub"))
        .count();
    assert_eq!(stub_runs, 3);
    let scrape = app.metrics().await;
    assert_eq!(
        metric_value(
            &scrape,
            "troupe_code_attempts_total{attempt=\"1\",outcome=\"vacuous\"}"
        ),
        1.0
    );
    assert_eq!(
        metric_value(
            &scrape,
            "troupe_code_attempts_total{attempt=\"3\",outcome=\"passed\"}"
        ),
        1.0
    );
}

/// Research recalls through the tool registry: its `search_memory` call is a `tool.called` event (and an
/// `execute_tool search_memory` span), and the search a `memory.read` event of that step. Real memory
/// (SQLite, the embedding model); the model's answers from a replay script.
#[actix_rt::test]
async fn research_searches_memory_through_the_tool_registry() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/scripted.sqlite?mode=rwc", dir.path().display());
    let app_url = url.clone();
    let app = spawn_app_with(move |settings| {
        settings.database.url = app_url;
        settings.memory.enabled = true;
        settings.director.qa_verdict = troupe::config::QaVerdictMode::Decides;
    })
    .await;
    let mut outputs = frame();
    outputs[1] = (
        "assign.1",
        r#"{"agent": "research", "reason": "facts"}"#.into(),
        Some(json!({
            "options": [
                { "name": "research", "probability": 0.8 },
                { "name": "code", "probability": 0.1 },
                { "name": "qa", "probability": 0.1 }
            ],
            "chosen": "research",
            "reasoning": "facts"
        })),
    );
    outputs.push(("work.1", "Paris is the capital of France.".into(), None));
    let source = seed_recording(&url, &outputs).await;
    let id = app
        .submit_with(json!({ "prompt": "What is the capital of France?", "options": { "replay_of": source } }))
        .await;
    let events = app.follow(&id, 0, Duration::from_secs(60)).await;
    assert_eq!(
        events.last().unwrap()["kind"],
        "task.completed",
        "{events:#?}"
    );
    let calls = events_of(&events, "tool.called");
    assert_eq!(calls.len(), 1, "{calls:#?}");
    assert_eq!(calls[0]["agent"], "research");
    assert_eq!(calls[0]["data"]["tool"], "search_memory");
    assert_eq!(calls[0]["data"]["outcome"], "ok");
    assert_eq!(calls[0]["data"]["call_id"], "work.1.search");
    let arguments = calls[0]["data"]["arguments"].as_str().unwrap();
    assert!(arguments.contains("capital of France"), "{arguments}");
    let reads: Vec<_> = events_of(&events, "memory.read")
        .into_iter()
        .filter(|e| e["agent"] == "research")
        .collect();
    assert_eq!(reads.len(), 1, "{reads:#?}");
    assert_eq!(reads[0]["data"]["purpose"], "search_memory tool");
    assert_eq!(reads[0]["data"]["step"], 1);
    let scrape = app.metrics().await;
    assert_eq!(
        metric_value(
            &scrape,
            "troupe_tool_calls_total{outcome=\"ok\",tool=\"search_memory\"}"
        ),
        1.0
    );
}

/// A learned fix commits with the task's end: a task that learns one (its second attempt fixes the first)
/// and then fails (QA's verdict stays `fail`) leaves no pattern, nor any other memory.
#[actix_rt::test]
async fn a_task_that_learns_a_fix_and_then_fails_leaves_no_pattern() {
    let dir = tempfile::tempdir().unwrap();
    let mut outputs = with_verdict(fixed_on_second_attempt(), "fail", "add must add");
    outputs.extend(revision("fail"));
    let core = scripted_core(&dir, outputs).await;
    let id = core
        .submit("Write add(a, b)", TaskOptions::default())
        .await
        .unwrap();
    let (status, events) = end_of(&core, id).await;
    assert_eq!(status, TaskStatus::Failed, "{events:#?}");
    // It did learn (the first round's second attempt fixed the first) ...
    let scrape = core.metrics.render().unwrap();
    assert_eq!(
        metric_value(
            &scrape,
            "troupe_memory_pattern_extractions_total{outcome=\"extracted\"}"
        ),
        1.0
    );
    // ... and keeps nothing: no pattern of this task, and none for the same failure.
    assert!(core.storage.task_memories(id).await.unwrap().is_empty());
    let memory = &core.memory;
    let found = memory.patterns_for("AssertionError", 3).await.unwrap();
    assert!(found.is_empty(), "{found:#?}");
}

/// The same for a cancelled task: step 1 learns a fix, step 2's test is still running in the sandbox when the
/// task is cancelled, and the task leaves no pattern.
#[actix_rt::test]
async fn a_task_that_learns_a_fix_and_is_cancelled_leaves_no_pattern() {
    let dir = tempfile::tempdir().unwrap();
    let mut outputs = fixed_on_second_attempt();
    let assign = outputs
        .iter()
        .find(|output| output.0 == "assign.1")
        .cloned()
        .unwrap();
    for output in &mut outputs {
        if output.0 == "plan" {
            output.1 = json!({ "steps": ["Write add(a, b)", "Write wait()"] }).to_string();
        }
    }
    outputs.extend([
        ("assign.2", assign.1, assign.2),
        (
            "work.2",
            json!({
                "code": "import time\ndef wait():\n    time.sleep(30)",
                "test": "wait()\nassert True"
            })
            .to_string(),
            None,
        ),
        (
            "test.2",
            json!({ "tool": "run_code", "arguments": { "language": "python", "file": "step2_test.py" } })
                .to_string(),
            None,
        ),
    ]);
    let core = scripted_core(&dir, outputs).await;
    let id = core
        .submit("Write add(a, b), then wait", TaskOptions::default())
        .await
        .unwrap();
    // Bounded wait until step 2's test run has started (step 1 has learned its fix by then).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let events = core.storage.events_after(id, 0).await.unwrap();
        let running = events.iter().any(|e| {
            e.kind == EventKind::AgentStarted && e.data["kind"] == "test" && e.data["step"] == 2
        });
        if running {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "step 2's test never started: {events:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    core.cancel(id).await.unwrap();
    let (status, events) = end_of(&core, id).await;
    assert_eq!(status, TaskStatus::Cancelled, "{events:#?}");
    let scrape = core.metrics.render().unwrap();
    assert_eq!(
        metric_value(
            &scrape,
            "troupe_memory_pattern_extractions_total{outcome=\"extracted\"}"
        ),
        1.0
    );
    assert!(core.storage.task_memories(id).await.unwrap().is_empty());
    assert!(core
        .memory
        .patterns_for("AssertionError", 3)
        .await
        .unwrap()
        .is_empty());
}

/// Code that passes a real test but is not for the task (the prompt example's `double` for "average") is
/// rejected as off the task (its similarity to the prompt and the step is below
/// `director.min_code_relevance`) and sent back; the next attempt's `average` is accepted. Real embedding
/// model and sandbox; the model's answers from a script.
#[actix_rt::test]
async fn code_that_is_not_for_the_task_is_sent_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut outputs = frame();
    outputs[0].1 = json!({ "steps": ["Write average(numbers)"] }).to_string();
    outputs.extend([
        (
            "work.1",
            json!({ "code": "def double(x): return 2 * x", "test": "assert double(3) == 6" })
                .to_string(),
            None,
        ),
        ("test.1", run_test_call(), None),
        (
            "work.1.r2",
            json!({
                "code": "def average(numbers): return sum(numbers) / len(numbers)",
                "test": "assert average([1, 2, 3]) == 2"
            })
            .to_string(),
            None,
        ),
        ("test.1.r2", run_test_call(), None),
    ]);
    let core = scripted_core(&dir, outputs).await;
    let id = core
        .submit(
            "Write a Python function that returns the average of a list of numbers",
            TaskOptions::default(),
        )
        .await
        .unwrap();
    let (status, events) = end_of(&core, id).await;
    assert_eq!(status, TaskStatus::Completed, "{events:#?}");
    let attempts: Vec<_> = events
        .iter()
        .filter(|e| e.kind == EventKind::CodeAttempt)
        .collect();
    assert_eq!(attempts.len(), 2, "{attempts:#?}");
    assert_eq!(attempts[0].data["run_outcome"], "ok");
    assert_eq!(attempts[0].data["off_task"], true);
    assert_eq!(attempts[0].data["passed"], false);
    let bar = f64::from(core.settings.director.min_code_relevance);
    assert!(attempts[0].data["relevance"].as_f64().unwrap() < bar);
    let failure = attempts[0].data["failure"].as_str().unwrap();
    assert!(failure.contains("double(x)"), "{failure}");
    assert_eq!(attempts[1].data["passed"], true);
    assert!(attempts[1].data["relevance"].as_f64().unwrap() >= bar);
    let scrape = core.metrics.render().unwrap();
    assert_eq!(
        metric_value(
            &scrape,
            "troupe_code_attempts_total{attempt=\"1\",outcome=\"off_task\"}"
        ),
        1.0
    );
    // The rejected attempt's code is not kept as a snippet; the accepted one is.
    let memories = core.storage.task_memories(id).await.unwrap();
    let snippets: Vec<_> = memories
        .iter()
        .filter(|m| m.kind == MemoryKind::Snippet)
        .collect();
    assert_eq!(snippets.len(), 1, "{memories:#?}");
    assert!(snippets[0].content.contains("def average"));
}
