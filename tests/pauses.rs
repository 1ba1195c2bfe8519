//! Debug mode's pauses (issue 16) on the real app: a breakpoint pauses a task before a decision takes
//! effect, before a step is sent, before a tool runs or before the model is called; the state is inspected
//! at the pause; a person continues, steps to the next point, aborts, or overrides what is pending (another
//! option of the decision, the step's instruction, the tool call's arguments, checked against its schema),
//! and the override changes what happens next. A paused task survives a kill -9 of its server: the next
//! server pauses it again at the same point.
//!
//! Deterministic: the model's answers are a stored recording, replayed (`options.replay_of`, see
//! `scripts.rs`); the files are written and the tests run in the real sandbox.

use std::time::Duration;

use serde_json::{json, Value};

use crate::breakpoints::troupe_debug;
use crate::helpers::{client_for, kinds, metric_value, of_kind, TestApp};
use crate::resume::Server;
use crate::scripts::{code, failing_first_attempt, frame, seed_recording};
use crate::self_correction::app_on;

/// Sets a breakpoint (asserting 201); its id.
async fn set(app: &TestApp, body: Value) -> String {
    let (status, breakpoint) = app.post_json("/api/v1/breakpoints", &body).await;
    assert_eq!(status, 201, "{body} -> {breakpoint}");
    breakpoint["id"].as_str().unwrap().to_owned()
}

/// Waits until task `id` is paused at a point whose key is not `previous`; its `/state`.
async fn paused(app: &TestApp, id: &str, previous: Option<&str>) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (status, state) = app.get(&format!("/api/v1/tasks/{id}/state")).await;
        assert_eq!(status, 200, "{state}");
        let key = state["pending"]["key"].as_str();
        if state["status"] == "paused" && key.is_some() && key != previous {
            return state;
        }
        assert!(
            !["completed", "failed", "cancelled"].contains(&state["status"].as_str().unwrap_or("")),
            "task {id} ended instead of pausing: {state}"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "task {id} did not pause: {state}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn resume(app: &TestApp, id: &str, body: Value) -> (u16, Value) {
    app.post_json(&format!("/api/v1/tasks/{id}/resume"), &body)
        .await
}

/// Takes `body`'s action at task `id`'s pause, asserting 200; the answer.
async fn act(app: &TestApp, id: &str, body: Value) -> Value {
    let (status, answer) = resume(app, id, body.clone()).await;
    assert_eq!(status, 200, "{body} -> {answer}");
    answer
}

/// A task replaying a recording on an app of its own (the real sandbox, one code attempt).
struct Replaying {
    app: TestApp,
    /// The breakpoint set before the task was submitted.
    breakpoint: String,
    /// The task.
    id: String,
    /// The app's database is in it: bind it (`_dir`) to keep it for the test.
    _dir: tempfile::TempDir,
}

/// Stores the recording `outputs`, sets `breakpoint`, then submits a task replaying the recording.
async fn replaying(outputs: &[crate::scripts::Output], breakpoint: Value) -> Replaying {
    let dir = tempfile::tempdir().unwrap();
    let (app, url) = app_on(&dir, 1).await;
    let source = seed_recording(&url, outputs).await;
    let breakpoint = set(&app, breakpoint).await;
    let id = submit_replay(&app, source).await;
    Replaying {
        app,
        breakpoint,
        id,
        _dir: dir,
    }
}

/// Submits a task replaying `source`; its id.
async fn submit_replay(app: &TestApp, source: impl std::fmt::Display) -> String {
    app.submit_with(
        json!({ "prompt": "Write add(a, b)", "options": { "replay_of": source.to_string() } }),
    )
    .await
}

/// The recording of a one-step code task whose code passes its test.
fn passing() -> Vec<crate::scripts::Output> {
    let mut outputs = frame();
    outputs.extend([
        ("work.1", code("def add(a, b):\n    return a + b"), None),
        ("test.1", crate::scripts::run_test_call(), None),
    ]);
    outputs
}

#[actix_rt::test]
async fn an_assign_agent_breakpoint_pauses_the_state_is_shown_and_an_override_sends_the_step_elsewhere(
) {
    let Replaying {
        app,
        breakpoint,
        id,
        _dir,
        ..
    } = replaying(
        &passing(),
        json!({ "on": "decision", "kind": "assign_agent", "when": "confidence > 0.5" }),
    )
    .await;
    let state = paused(&app, &id, None).await;
    let pending = &state["pending"];
    assert_eq!(pending["key"], "decision:assign_agent:1", "{state}");
    assert_eq!(pending["reason"], "breakpoint");
    assert_eq!(pending["breakpoint"]["id"], breakpoint.as_str());
    assert_eq!(pending["point"]["on"], "decision");
    assert_eq!(pending["detail"]["chosen"], "code");
    assert_eq!(pending["detail"]["confidence"], 0.8);
    let options: Vec<&str> = pending["detail"]["options"]
        .as_array()
        .unwrap()
        .iter()
        .map(|option| option["name"].as_str().unwrap())
        .collect();
    assert_eq!(options.len(), 3, "{state}");
    // The state at the pause: the plan in the scratchpad; no step stored yet (the steps are stored once
    // every one has its agent), no file.
    assert!(
        state["scratchpad"]["plan"]
            .as_str()
            .is_some_and(|plan| plan.contains("Write add")),
        "{state}"
    );
    assert_eq!(state["steps"], json!([]), "{state}");
    assert_eq!(state["files"], json!([]), "{state}");
    let (_, task) = app.get(&format!("/api/v1/tasks/{id}")).await;
    assert_eq!(task["status"], "paused");

    // A bad override is refused, says why, and leaves the task paused.
    let (status, refused) = resume(
        &app,
        &id,
        json!({ "action": "override", "chosen": "nobody" }),
    )
    .await;
    assert_eq!(status, 400, "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("not an option") && m.contains("research")),
        "{refused}"
    );
    for (body, says) in [
        (json!({ "action": "fly" }), "unknown action"),
        (json!({ "action": "continue", "chosen": "qa" }), "goes with"),
        (json!({ "action": "override" }), "needs one of"),
        (
            json!({ "action": "override", "chosen": "qa", "instruction": "x" }),
            "changes one thing",
        ),
    ] {
        let (status, refused) = resume(&app, &id, body.clone()).await;
        assert_eq!(status, 400, "{body} -> {refused}");
        assert!(
            refused["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(says)),
            "{body} -> {refused}"
        );
    }
    assert_eq!(
        paused(&app, &id, None).await["pending"]["key"],
        "decision:assign_agent:1"
    );

    let body = act(
        &app,
        &id,
        json!({ "action": "override", "chosen": "research" }),
    )
    .await;
    assert_eq!(body["action"], "override");
    let task = app.ended(&id).await;
    assert_eq!(task["status"], "completed", "{task}");

    // The step went to Research, not to the model's Code; the log says a person intervened.
    let events = app.events(&id).await;
    let decision = of_kind(&events, "decision.made")
        .into_iter()
        .find(|e| e["data"]["kind"] == "assign_agent")
        .unwrap();
    assert_eq!(decision["data"]["chosen"], "research", "{decision}");
    assert_eq!(decision["data"]["overridden"], true);
    assert_eq!(decision["data"]["override"]["before"], "code");
    assert_eq!(decision["data"]["override"]["by"], "person");
    let started: Vec<&Value> = of_kind(&events, "agent.started")
        .into_iter()
        .filter(|e| e["data"]["step"] == 1)
        .collect();
    assert!(
        !started.is_empty() && started.iter().all(|e| e["agent"] == "research"),
        "{started:#?}"
    );
    let overridden = of_kind(&events, "decision.overridden");
    assert_eq!(overridden.len(), 1, "{overridden:#?}");
    assert_eq!(overridden[0]["data"]["before"], "code");
    assert_eq!(overridden[0]["data"]["after"], "research");
    let paused_events = of_kind(&events, "task.paused");
    assert_eq!(paused_events.len(), 1);
    assert_eq!(
        paused_events[0]["data"]["breakpoint"]["id"],
        breakpoint.as_str()
    );
    assert!(of_kind(&events, "task.resumed")
        .iter()
        .any(|e| e["data"]["action"] == "override"));
    assert!(
        !kinds(&events).contains(&"code.attempt".to_owned()),
        "Code never ran: {:?}",
        kinds(&events)
    );
    let scrape = app.metrics().await;
    assert_eq!(
        metric_value(
            &scrape,
            r#"troupe_debug_pauses_total{on="decision",reason="breakpoint"}"#
        ),
        1.0
    );
    assert_eq!(
        metric_value(&scrape, r#"troupe_debug_actions_total{action="override"}"#),
        1.0
    );
    assert_eq!(
        metric_value(&scrape, r#"troupe_breakpoint_hits_total{on="decision"}"#),
        1.0
    );

    // Not paused any more: 409 with the status.
    let (status, refused) = resume(&app, &id, json!({ "action": "continue" })).await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["error"]["code"], "not_paused");
    let (status, _) = resume(
        &app,
        "01a2355f-9a4e-74b1-8487-b91aa3b419b9",
        json!({ "action": "continue" }),
    )
    .await;
    assert_eq!(status, 404);
}

#[actix_rt::test]
async fn step_pauses_at_each_next_point_and_an_edited_instruction_reaches_the_model() {
    let Replaying { app, id, _dir, .. } = replaying(
        &passing(),
        json!({ "on": "decision", "kind": "assign_agent" }),
    )
    .await;
    let first = paused(&app, &id, None).await;
    let first_key = first["pending"]["key"].as_str().unwrap().to_owned();

    // step: the next point is the step, before it is sent to Code.
    act(&app, &id, json!({ "action": "step" })).await;
    let at_step = paused(&app, &id, Some(&first_key)).await;
    let pending = &at_step["pending"];
    assert_eq!(pending["reason"], "step", "{at_step}");
    assert_eq!(pending["point"]["on"], "step");
    assert_eq!(pending["point"]["agent"], "code");
    assert_eq!(pending["detail"]["instruction"], "Write add(a, b)");
    let step_key = pending["key"].as_str().unwrap().to_owned();
    let (status, refused) = resume(
        &app,
        &id,
        json!({ "action": "override", "instruction": " " }),
    )
    .await;
    assert_eq!(status, 400, "{refused}");
    act(
        &app,
        &id,
        json!({ "action": "override", "instruction": "Write add(a, b) and nothing else" }),
    )
    .await;

    // After an override the task goes on to the next breakpoint (none here, as it was not a step).
    let task = app.ended(&id).await;
    assert_eq!(task["status"], "completed", "{task}");
    let events = app.events(&id).await;
    let overridden = of_kind(&events, "decision.overridden");
    assert_eq!(overridden.len(), 1, "{overridden:#?}");
    assert_eq!(overridden[0]["data"]["what"], "instruction");
    assert_eq!(overridden[0]["data"]["key"], step_key.as_str());
    assert_eq!(overridden[0]["data"]["before"], "Write add(a, b)");
    // The model was asked with the new instruction: the recorded request of the step's work holds it.
    let (status, calls) = app
        .get(&format!("/api/v1/tasks/{id}/llm-calls?tokens=false"))
        .await;
    assert_eq!(status, 200, "{calls}");
    let work = calls["calls"]
        .as_array()
        .unwrap()
        .iter()
        .find(|call| call["purpose"] == "work.1")
        .unwrap();
    assert!(
        work["prompt"].to_string().contains("and nothing else"),
        "{work}"
    );
    let paused_events = of_kind(&events, "task.paused");
    assert_eq!(
        paused_events
            .iter()
            .map(|e| e["data"]["reason"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["breakpoint", "step"]
    );
}

#[actix_rt::test]
async fn stepping_reaches_the_model_call_and_abort_cancels_the_paused_task() {
    let Replaying { app, id, _dir, .. } =
        replaying(&passing(), json!({ "on": "step", "agent": "code" })).await;
    let at_step = paused(&app, &id, None).await;
    assert_eq!(at_step["pending"]["point"]["on"], "step", "{at_step}");
    let key = at_step["pending"]["key"].as_str().unwrap().to_owned();
    act(&app, &id, json!({ "action": "step" })).await;
    let at_call = paused(&app, &id, Some(&key)).await;
    let pending = &at_call["pending"];
    assert_eq!(pending["point"]["on"], "llm", "{at_call}");
    assert_eq!(pending["key"], "llm:work.1");
    assert!(pending["detail"]["messages"]
        .to_string()
        .contains("Write add"));
    // A model call takes no override.
    let (status, refused) = resume(
        &app,
        &id,
        json!({ "action": "override", "instruction": "x" }),
    )
    .await;
    assert_eq!(status, 400, "{refused}");

    act(&app, &id, json!({ "action": "abort" })).await;
    let task = app.ended(&id).await;
    assert_eq!(task["status"], "cancelled", "{task}");
    let events = app.events(&id).await;
    assert!(
        of_kind(&events, "llm.finished")
            .iter()
            .all(|e| e["data"]["purpose"] != "work.1"),
        "the model was not called for the aborted step"
    );
    let (status, refused) = resume(&app, &id, json!({ "action": "continue" })).await;
    assert_eq!(status, 409, "{refused}");
}

#[actix_rt::test]
async fn a_tool_call_pauses_and_its_arguments_are_overridden_within_the_schema() {
    let Replaying { app, id, _dir, .. } = replaying(
        &failing_first_attempt(),
        json!({ "on": "tool", "tool": "run_code", "agent": "qa" }),
    )
    .await;
    let state = paused(&app, &id, None).await;
    let pending = &state["pending"];
    assert_eq!(pending["point"]["on"], "tool", "{state}");
    assert_eq!(pending["point"]["tool"], "run_code");
    assert_eq!(pending["detail"]["arguments"]["file"], "step1_test.py");
    assert!(pending["detail"]["input_schema"]["properties"]["language"].is_object());
    // The workspace at the pause: the code and its test, written before the run.
    let names: Vec<&str> = state["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|file| file["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"step1_test.py"), "{state}");

    for arguments in [
        json!({ "language": "ruby", "file": "step1_test.py" }),
        json!({ "file": "step1_test.py" }),
        json!({ "language": "python", "other": 1 }),
    ] {
        let (status, refused) = resume(
            &app,
            &id,
            json!({ "action": "override", "arguments": arguments }),
        )
        .await;
        assert_eq!(status, 400, "{arguments} -> {refused}");
        assert!(
            refused["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("arguments")),
            "{refused}"
        );
    }
    act(&app, &id, json!({ "action": "override", "arguments": { "language": "python", "code": "print('checked by hand')" } })).await;
    let task = app.ended(&id).await;
    assert_eq!(task["status"], "completed", "{task}");
    let events = app.events(&id).await;
    let call = of_kind(&events, "tool.called")
        .into_iter()
        .find(|e| e["data"]["tool"] == "run_code")
        .unwrap();
    assert_eq!(call["data"]["overridden"], true, "{call}");
    let overridden = of_kind(&events, "decision.overridden");
    assert_eq!(overridden[0]["data"]["what"], "arguments");
    assert_eq!(overridden[0]["data"]["before"]["file"], "step1_test.py");
    assert_eq!(
        overridden[0]["data"]["after"]["code"],
        "print('checked by hand')"
    );
}

/// What the pause tests' `troupe serve` runs with: the real sandbox, no long-term memory, one attempt.
const SERVE_ENV: [(&str, &str); 3] = [
    ("TROUPE__SANDBOX__ENABLED", "true"),
    ("TROUPE__MEMORY__ENABLED", "false"),
    ("TROUPE__DIRECTOR__CODE_ATTEMPTS", "1"),
];

#[actix_rt::test]
async fn a_paused_task_is_paused_at_the_same_point_after_its_server_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let database = format!("sqlite://{}/paused.sqlite?mode=rwc", dir.path().display());
    let source = seed_recording(&database, &passing()).await;
    let mut first = Server::start_with(&database, &dir, &SERVE_ENV).await;
    let app = client_for(first.port, tempfile::tempdir().unwrap());
    set(&app, json!({ "on": "decision", "kind": "assign_agent" })).await;
    let id = submit_replay(&app, source).await;
    let before = paused(&app, &id, None).await;
    first.kill_9();

    let second = Server::start_with(&database, &dir, &SERVE_ENV).await;
    let app = client_for(second.port, tempfile::tempdir().unwrap());
    // Taken over once the first server's lease expires, rebuilt, and paused again at the same point.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let after = loop {
        let events = app.events(&id).await;
        if of_kind(&events, "task.paused").len() >= 2 {
            break paused(&app, &id, None).await;
        }
        assert!(std::time::Instant::now() < deadline, "{events:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(after["pending"]["key"], before["pending"]["key"], "{after}");
    assert_eq!(after["pending"]["reason"], "restart");
    assert_eq!(
        after["pending"]["detail"]["options"],
        before["pending"]["detail"]["options"]
    );
    let log = app.events(&id).await;
    assert!(of_kind(&log, "task.resumed")
        .iter()
        .any(|e| e["data"]["reason"] != "debug"));
    act(
        &app,
        &id,
        json!({ "action": "override", "chosen": "research" }),
    )
    .await;
    let task = app.ended(&id).await;
    assert_eq!(task["status"], "completed", "{task}");
    let log = app.events(&id).await;
    let decision = of_kind(&log, "decision.made")
        .into_iter()
        .rfind(|e| e["data"]["kind"] == "assign_agent")
        .unwrap();
    assert_eq!(decision["data"]["chosen"], "research", "{decision}");

    // The breakpoint, set before the restart, pauses a new task on the new server too.
    let next = submit_replay(&app, source).await;
    let state = paused(&app, &next, None).await;
    assert_eq!(state["pending"]["reason"], "breakpoint", "{state}");
    assert_eq!(state["pending"]["key"], "decision:assign_agent:1");
    act(&app, &next, json!({ "action": "abort" })).await;
    assert_eq!(app.ended(&next).await["status"], "cancelled");
}

#[actix_rt::test]
async fn the_debug_cli_shows_a_paused_task_and_resumes_it_with_an_override() {
    let Replaying { app, id, _dir, .. } = replaying(
        &passing(),
        json!({ "on": "decision", "kind": "assign_agent" }),
    )
    .await;
    paused(&app, &id, None).await;
    let server = app.address.as_str();

    let (code, out, err) = troupe_debug(server, &["state", &id]).await;
    assert_eq!(code, 0, "{err}");
    let state: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        state["pending"]["key"], "decision:assign_agent:1",
        "{state}"
    );

    let (code, _, err) = troupe_debug(server, &["resume", &id, "--chosen", "nobody"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("not an option"), "{err}");
    let (code, _, err) = troupe_debug(server, &["resume", &id, "--arguments", "{"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("not JSON"), "{err}");
    let (code, out, err) = troupe_debug(server, &["resume", &id, "--chosen", "research"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "override");
    let task = app.ended(&id).await;
    assert_eq!(task["status"], "completed", "{task}");
    let (code, _, err) = troupe_debug(server, &["resume", &id]).await;
    assert_eq!(code, 1);
    assert!(err.contains("not paused"), "{err}");
}

/// `troupe run --break decision` pauses its own task and reads what to do from stdin (piped here): an
/// answer it cannot read is asked again, an override is taken, and the task ends as the answers made it.
#[actix_rt::test]
async fn troupe_run_with_break_asks_on_stdin_at_each_decision() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let database = format!("sqlite://{}/run.sqlite?mode=rwc", dir.path().display());
    let source = seed_recording(&database, &passing()).await.to_string();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_troupe"))
        .args([
            "run",
            "--json",
            "--break",
            "decision",
            "--replay-of",
            &source,
            "Write add(a, b)",
        ])
        .env("TROUPE_CONFIG_DIR", crate::helpers::root().join("config"))
        .env("TROUPE_PROFILE", "test")
        .env("TROUPE__DATABASE__URL", &database)
        .env("TROUPE__MEMORY__ENABLED", "false")
        .env("TROUPE__DIRECTOR__CODE_ATTEMPTS", "1")
        .env("TROUPE__SANDBOX__WORKSPACES", dir.path().join("workspaces"))
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The assignment: a word it cannot read, then the override; QA's verdict: continue.
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"maybe\no research\nc\n").await.unwrap();
    drop(stdin);
    let output = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("troupe run ends")
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("not an answer"), "{stderr}");
    let events: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    let paused: Vec<&Value> = of_kind(&events, "task.paused");
    assert_eq!(paused.len(), 2, "{events:#?}");
    assert_eq!(paused[0]["data"]["point"]["kind"], "assign_agent");
    assert_eq!(paused[1]["data"]["point"]["kind"], "verdict");
    let overridden = of_kind(&events, "decision.overridden");
    assert_eq!(overridden.len(), 1, "{events:#?}");
    assert_eq!(overridden[0]["data"]["after"], "research");
    assert_eq!(events.last().unwrap()["kind"], "task.completed");
}

/// A pause inside a step (at its model call, after the Director sent it) does not count against the step's
/// timeout: paused three times as long as the timeout, the step is not given up on.
#[actix_rt::test]
async fn a_pause_longer_than_the_step_timeout_does_not_time_the_step_out() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/scripted.sqlite?mode=rwc", dir.path().display());
    let app_url = url.clone();
    let app = crate::helpers::spawn_app_with(move |settings| {
        settings.sandbox.enabled = true;
        settings.database.url = app_url;
        settings.director.code_attempts = 1;
        settings.director.step_timeout_seconds = 1;
        settings.memory.enabled = false;
    })
    .await;
    let source = seed_recording(&url, &passing()).await;
    set(&app, json!({ "on": "llm", "purpose": "work" })).await;
    let id = submit_replay(&app, source).await;
    let state = paused(&app, &id, None).await;
    assert_eq!(state["pending"]["key"], "llm:work.1", "{state}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    act(&app, &id, json!({ "action": "continue" })).await;
    let task = app.ended(&id).await;
    assert_eq!(task["status"], "completed", "{task}");
    let events = app.events(&id).await;
    assert!(
        of_kind(&events, "agent.restarted").is_empty(),
        "{:?}",
        kinds(&events)
    );
}
