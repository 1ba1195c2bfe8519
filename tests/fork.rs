//! Fork, replay divergence and compare over the API (issue 16), deterministic: the app is assembled around
//! a core whose live model is a script (a provider answering by purpose that counts its calls, and whose
//! second answer to a step's work differs from its first, so that a live call can be told from a replayed
//! one). A source task runs live on it; forks and replays of it then show which calls were answered from
//! the recording (no provider call, a `replay` row) and which went live. SQLite, and PostgreSQL for the
//! fork and its rows.

use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use troupe::config::Settings;
use troupe::domain::{EventKind, TaskId};
use troupe::llm::models::Models;
use troupe::llm::{LlmError, LlmOutput, LlmProvider, LlmRequest, TokenSink, Usage};
use troupe::memory::MemoryParts;
use troupe::sandbox::Sandbox;
use troupe::service::Core;
use troupe::storage::records::{NewTask, PendingEvent};
use troupe::storage::Storage;
use troupe::telemetry::metrics::Metrics;

use crate::helpers::{client_for, metric_value, of_kind, test_settings, TestApp};

/// A live model that answers by purpose from a script and counts its calls: the n-th call of a purpose
/// gets the n-th answer listed for it (the last one again after that).
struct Script {
    answers: HashMap<&'static str, Vec<LlmOutput>>,
    calls: Mutex<HashMap<String, usize>>,
}

impl Script {
    fn calls(&self, purpose: &str) -> usize {
        self.calls
            .lock()
            .unwrap()
            .get(purpose)
            .copied()
            .unwrap_or(0)
    }

    fn total(&self) -> usize {
        self.calls.lock().unwrap().values().sum()
    }
}

#[async_trait]
impl LlmProvider for Script {
    fn provider_name(&self) -> &'static str {
        "script"
    }

    fn model_name(&self) -> &str {
        "script-model"
    }

    async fn complete(
        &self,
        request: LlmRequest,
        on_token: TokenSink,
        _cancel: CancellationToken,
    ) -> Result<LlmOutput, LlmError> {
        let n = {
            let mut calls = self.calls.lock().unwrap();
            let count = calls.entry(request.purpose.clone()).or_insert(0);
            *count += 1;
            *count
        };
        let answers =
            self.answers
                .get(request.purpose.as_str())
                .ok_or(LlmError::ReplayMissing {
                    purpose: request.purpose.clone(),
                })?;
        let output = answers[(n - 1).min(answers.len() - 1)].clone();
        on_token(&output.text, troupe::llm::TokenInfo::unknown());
        Ok(output)
    }

    fn check_ready(&self) -> Result<(), LlmError> {
        Ok(())
    }
}

fn text(text: &str) -> LlmOutput {
    LlmOutput {
        text: text.to_owned(),
        choice: None,
        usage: Usage {
            input_tokens: 10,
            output_tokens: 5,
        },
        generation_seconds: 0.01,
    }
}

fn choice(chosen: &str) -> LlmOutput {
    let probability = |name: &str| if name == chosen { 0.8 } else { 0.1 };
    let options: Vec<Value> = ["research", "code", "qa"]
        .iter()
        .map(|name| json!({ "name": name, "probability": probability(name) }))
        .collect();
    LlmOutput {
        choice: Some(
            serde_json::from_value(json!({
                "options": options,
                "chosen": chosen,
                "reasoning": "it fits",
            }))
            .unwrap(),
        ),
        ..text(&format!(r#"{{"agent": "{chosen}", "reason": "it fits"}}"#))
    }
}

/// Two research steps and QA's verdict; each step's work is answered differently the second time.
fn script() -> Arc<Script> {
    let uniform = LlmOutput {
        choice: Some(
            serde_json::from_value(json!({
                "options": [
                    { "name": "research", "probability": 0.34 },
                    { "name": "code", "probability": 0.33 },
                    { "name": "qa", "probability": 0.33 }
                ],
                "chosen": "research",
                "reasoning": "N/A",
            }))
            .unwrap(),
        ),
        ..text(r#"{"agent": "research", "reason": "N/A"}"#)
    };
    let answers = HashMap::from([
        (
            "plan",
            vec![text(
                &json!({ "steps": ["Find facts about otters", "Summarise the facts"] }).to_string(),
            )],
        ),
        ("assign.calibration", vec![uniform]),
        ("assign.1", vec![choice("research")]),
        ("assign.2", vec![choice("research")]),
        (
            "work.1",
            vec![
                text("Otters are mammals (first answer)."),
                text("Otters are mammals (second answer)."),
            ],
        ),
        (
            "work.2",
            vec![
                text("In short: otters are mammals (first answer)."),
                text("In short: otters are mammals (second answer)."),
            ],
        ),
        (
            "verify",
            vec![text(
                &json!({ "verdict": "pass", "feedback": "answers the task" }).to_string(),
            )],
        ),
    ]);
    Arc::new(Script {
        answers,
        calls: Mutex::default(),
    })
}

/// The real app (its route table on a random port) around a core whose live model is `script`, on
/// `database` (a PostgreSQL URL) or a SQLite file of its own; memory off, settings changed by `adjust`.
async fn script_app(
    script: Arc<Script>,
    database: Option<String>,
    adjust: impl FnOnce(&mut Settings),
) -> (TestApp, Arc<Core>) {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(&dir);
    if let Some(url) = database {
        settings.database.url = url;
    }
    settings.memory.enabled = false;
    adjust(&mut settings);
    let metrics = Metrics::new().unwrap();
    let storage = Storage::connect(&settings.database).await.unwrap();
    storage.migrate().await.unwrap();
    let memory = MemoryParts::start(&settings.memory, &settings.redis, &metrics)
        .await
        .unwrap();
    let sandbox = Sandbox::start(settings.sandbox.clone(), metrics.clone()).await;
    let core = Arc::new(Core::assemble(
        settings,
        storage,
        metrics,
        Models::single(script),
        memory,
        sandbox,
    ));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = troupe::api::server(listener, Arc::clone(&core)).unwrap();
    actix_rt::spawn(server);
    (client_for(port, dir), core)
}

const PROMPT: &str = "Tell me about otters";

/// Task `id`'s model calls by purpose.
async fn calls(app: &TestApp, id: &str) -> HashMap<String, Value> {
    let (status, body) = app.get(&format!("/api/v1/tasks/{id}/llm-calls")).await;
    assert_eq!(status, 200, "{body}");
    body["calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|call| (call["purpose"].as_str().unwrap().to_owned(), call.clone()))
        .collect()
}

/// Runs the source task live and checks it made each call once.
async fn source(app: &TestApp, script: &Script) -> String {
    let id = app.submit(PROMPT).await;
    let task = app.ended(&id).await;
    assert_eq!(task["status"], "completed", "{task}");
    for purpose in [
        "plan",
        "assign.calibration",
        "assign.1",
        "assign.2",
        "work.1",
        "work.2",
        "verify",
    ] {
        assert_eq!(script.calls(purpose), 1, "{purpose}");
    }
    id
}

/// What a fork from step 2 replays and what it makes live, checked on `app` (either database).
async fn fork_from_step_two(app: &TestApp, script: &Script) -> (String, String) {
    let source = source(app, script).await;
    let (status, body) = app
        .post_json(
            &format!("/api/v1/tasks/{source}/fork"),
            &json!({ "from_step": 2 }),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "queued");
    assert_eq!(body["fork_of"], json!({ "task": source, "from_step": 2 }));
    let fork = body["id"].as_str().unwrap().to_owned();
    let task = app.ended(&fork).await;
    assert_eq!(task["status"], "completed", "{task}");
    assert_eq!(task["options"]["fork_of"]["task"], source.as_str());
    assert_eq!(task["options"]["fork_of"]["from_step"], 2);

    // Step 1 and what came before it made no model call; step 2 and the verification did.
    for purpose in ["plan", "assign.calibration", "assign.1", "work.1"] {
        assert_eq!(script.calls(purpose), 1, "{purpose} was called again");
    }
    for purpose in ["assign.2", "work.2", "verify"] {
        assert_eq!(script.calls(purpose), 2, "{purpose} was not called live");
    }
    // Every call is the fork's own: the replayed ones as `replay` rows with the source's outputs.
    let recorded = calls(app, &source).await;
    let forked = calls(app, &fork).await;
    assert_eq!(forked.len(), 7, "{forked:#?}");
    for purpose in ["plan", "assign.calibration", "assign.1", "work.1"] {
        assert_eq!(forked[purpose]["provider"], "replay", "{purpose}");
        assert_eq!(forked[purpose]["output"], recorded[purpose]["output"]);
        assert_eq!(
            forked[purpose]["request_digest"], recorded[purpose]["request_digest"],
            "{purpose} asked another request"
        );
        assert!(forked[purpose]["request_digest"].is_string());
    }
    for purpose in ["assign.2", "work.2", "verify"] {
        assert_eq!(forked[purpose]["provider"], "script", "{purpose}");
    }
    assert_eq!(
        forked["work.2"]["output"],
        "In short: otters are mammals (second answer)."
    );
    assert_eq!(
        task["steps"][0]["output"],
        "Otters are mammals (first answer)."
    );
    assert_eq!(
        task["steps"][1]["output"],
        "In short: otters are mammals (second answer)."
    );

    let log = app.events(&fork).await;
    let forked_event = of_kind(&log, "task.forked");
    assert_eq!(forked_event.len(), 1, "{log:#?}");
    assert_eq!(forked_event[0]["data"]["source"], source.as_str());
    assert_eq!(forked_event[0]["data"]["from_step"], 2);
    assert_eq!(forked_event[0]["data"]["prompt_changed"], false);
    assert!(of_kind(&log, "replay.diverged").is_empty(), "{log:#?}");
    (source, fork)
}

#[actix_rt::test]
async fn a_fork_from_step_two_replays_step_one_and_runs_the_rest_live() {
    let script = script();
    let (app, _core) = script_app(Arc::clone(&script), None, |_| {}).await;
    let (source, fork) = fork_from_step_two(&app, &script).await;

    // Compare lists exactly what differs: step 2's work, its output and the answer.
    let (status, compared) = app
        .get(&format!("/api/v1/tasks/{source}/compare/{fork}"))
        .await;
    assert_eq!(status, 200, "{compared}");
    assert_eq!(compared["same"], false);
    assert_eq!(compared["status"], Value::Null);
    assert_eq!(compared["prompt"], Value::Null);
    assert_eq!(
        compared["decisions"]["different"],
        json!([]),
        "{compared:#}"
    );
    let outputs = &compared["model_outputs"];
    let purposes: Vec<&Value> = outputs["different"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| &entry["key"])
        .collect();
    assert_eq!(purposes, vec!["work.2"], "{compared:#}");
    assert_eq!(
        outputs["different"][0]["a"]["output"],
        "In short: otters are mammals (first answer)."
    );
    assert_eq!(
        outputs["different"][0]["b"]["output"],
        "In short: otters are mammals (second answer)."
    );
    assert_eq!(outputs["only_a"], json!([]));
    assert_eq!(outputs["only_b"], json!([]));
    let steps = compared["steps"]["different"].as_array().unwrap();
    assert_eq!(steps.len(), 1, "{compared:#}");
    assert_eq!(steps[0]["key"], 2);
    let keys: Vec<&Value> = compared["result"]["different"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| &entry["key"])
        .collect();
    assert_eq!(keys, vec!["answer", "steps"], "{compared:#}");

    // The fork is self-contained: a replay of it makes no call and does what it did.
    let before = script.total();
    let replay = app
        .submit_with(json!({ "prompt": PROMPT, "options": { "replay_of": fork } }))
        .await;
    let replayed = app.ended(&replay).await;
    assert_eq!(replayed["status"], "completed", "{replayed}");
    assert_eq!(replayed["result"]["provider"], "replay");
    assert_eq!(
        script.total(),
        before,
        "a replay of the fork called the model"
    );
    let (_, compared) = app
        .get(&format!("/api/v1/tasks/{fork}/compare/{replay}"))
        .await;
    assert_eq!(compared["same"], true, "{compared:#}");

    let scrape = app.metrics().await;
    assert_eq!(
        metric_value(&scrape, "troupe_forks_total{override=\"none\"}"),
        1.0
    );
    assert_eq!(
        metric_value(
            &scrape,
            "troupe_replay_divergences_total{on_divergence=\"stop\"}"
        ),
        0.0
    );
}

#[actix_rt::test]
async fn a_fork_with_an_agent_override_sends_the_step_to_the_chosen_agent() {
    let script = script();
    let (app, _core) = script_app(Arc::clone(&script), None, |_| {}).await;
    let source = source(&app, &script).await;
    let (status, body) = app
        .post_json(
            &format!("/api/v1/tasks/{source}/fork"),
            &json!({
                "from_step": 2,
                "override": { "decision": "assign_agent", "step": 2, "chosen": "qa" }
            }),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let fork = body["id"].as_str().unwrap().to_owned();
    let task = app.ended(&fork).await;
    assert_eq!(task["status"], "completed", "{task}");
    assert_eq!(task["steps"][0]["agent"], "research");
    assert_eq!(task["steps"][1]["agent"], "qa", "{task}");

    let log = app.events(&fork).await;
    let decisions = of_kind(&log, "decision.made");
    let step = |n: i64| {
        decisions
            .iter()
            .find(|d| d["data"]["step"] == n)
            .unwrap_or_else(|| panic!("no decision for step {n}: {decisions:#?}"))
    };
    assert_eq!(step(1)["data"]["overridden"], false);
    assert_eq!(step(2)["data"]["overridden"], true);
    assert_eq!(step(2)["data"]["chosen"], "qa");
    assert_eq!(step(2)["data"]["override"]["before"], "research");
    assert_eq!(step(2)["data"]["override"]["after"], "qa");
    // The step went to QA: its agent started it.
    let started: Vec<(&Value, &Value)> = of_kind(&log, "agent.started")
        .iter()
        .map(|e| (&e["agent"], &e["data"]["step"]))
        .collect();
    assert!(started.contains(&(&json!("qa"), &json!(2))), "{started:?}");
    assert!(
        !started.contains(&(&json!("research"), &json!(2))),
        "{started:?}"
    );
    assert_eq!(
        of_kind(&log, "task.forked")[0]["data"]["override"]["chosen"],
        "qa"
    );

    let (_, compared) = app
        .get(&format!("/api/v1/tasks/{source}/compare/{fork}"))
        .await;
    let decisions = compared["decisions"]["different"].as_array().unwrap();
    assert_eq!(decisions.len(), 1, "{compared:#}");
    assert_eq!(
        decisions[0]["key"],
        json!({ "kind": "assign_agent", "step": 2 })
    );
    assert_eq!(decisions[0]["a"]["chosen"], "research");
    assert_eq!(decisions[0]["b"]["chosen"], "qa");
    assert_eq!(compared["steps"]["different"][0]["b"]["agent"], "qa");
    let scrape = app.metrics().await;
    assert_eq!(
        metric_value(&scrape, "troupe_forks_total{override=\"assign_agent\"}"),
        1.0
    );
}

#[actix_rt::test]
async fn a_replay_that_asks_something_else_diverges_then_stops_or_goes_live() {
    let script = script();
    let (app, _core) = script_app(Arc::clone(&script), None, |_| {}).await;
    let source = source(&app, &script).await;

    // The same request: replayed whole, no call, no divergence.
    let same = app
        .submit_with(json!({ "prompt": PROMPT, "options": { "replay_of": source } }))
        .await;
    let task = app.ended(&same).await;
    assert_eq!(task["status"], "completed", "{task}");
    assert!(of_kind(&app.events(&same).await, "replay.diverged").is_empty());
    assert_eq!(script.total(), 7);

    // Another prompt: the plan's request differs; by default the replay stops there.
    let other = app
        .submit_with(
            json!({ "prompt": "Tell me about beavers", "options": { "replay_of": source } }),
        )
        .await;
    let task = app.ended(&other).await;
    assert_eq!(task["status"], "failed", "{task}");
    let error = task["error"].as_str().unwrap();
    assert!(error.contains("diverged"), "{error}");
    assert!(error.contains("'plan'"), "{error}");
    let log = app.events(&other).await;
    let diverged = of_kind(&log, "replay.diverged");
    assert_eq!(diverged.len(), 1, "{log:#?}");
    let data = &diverged[0]["data"];
    assert_eq!(data["purpose"], "plan");
    assert_eq!(data["part"], "prompt");
    assert_eq!(data["action"], "stop");
    assert_eq!(data["source"], source.as_str());
    assert_eq!(data["position"], 14, "{data}");
    assert_eq!(data["recorded"], PROMPT);
    assert_eq!(data["requested"], "Tell me about beavers");
    assert_eq!(script.total(), 7, "a stopped replay called the model");

    // The same with on_divergence = live: the plan and every later call are live.
    let live = app
        .submit_with(json!({
            "prompt": "Tell me about beavers",
            "options": { "replay_of": source, "on_divergence": "live" }
        }))
        .await;
    let task = app.ended(&live).await;
    assert_eq!(task["status"], "completed", "{task}");
    let log = app.events(&live).await;
    let diverged = of_kind(&log, "replay.diverged");
    assert_eq!(diverged.len(), 1, "{log:#?}");
    assert_eq!(diverged[0]["data"]["action"], "live");
    for purpose in ["plan", "assign.1", "work.1", "verify"] {
        assert_eq!(script.calls(purpose), 2, "{purpose}");
    }
    let rows = calls(&app, &live).await;
    assert!(
        rows.values().all(|row| row["provider"] == "script"),
        "{rows:#?}"
    );
    assert_eq!(
        task["steps"][0]["output"],
        "Otters are mammals (second answer)."
    );

    // Another option: fewer steps change the plan's instructions and schema.
    let fewer = app
        .submit_with(
            json!({ "prompt": PROMPT, "options": { "replay_of": source, "max_steps": 1 } }),
        )
        .await;
    assert_eq!(app.ended(&fewer).await["status"], "failed");
    let log = app.events(&fewer).await;
    let data = &of_kind(&log, "replay.diverged")[0]["data"];
    assert_eq!(data["part"], "system", "{data}");
    assert_eq!(data["parts"], json!(["system", "output"]));

    let scrape = app.metrics().await;
    assert_eq!(
        metric_value(
            &scrape,
            "troupe_replay_divergences_total{on_divergence=\"stop\"}"
        ),
        2.0
    );
    assert_eq!(
        metric_value(
            &scrape,
            "troupe_replay_divergences_total{on_divergence=\"live\"}"
        ),
        1.0
    );
}

/// A setting that changes a request (the work steps' token budget) on the server that replays: the replay
/// diverges at the first call it changes, and with `live` answers the calls before it from the recording.
#[actix_rt::test]
async fn a_replay_on_a_server_configured_otherwise_diverges_where_the_setting_shows() {
    let script = script();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/shared.sqlite?mode=rwc", dir.path().display());
    let (first, _core) = script_app(Arc::clone(&script), Some(url.clone()), |_| {}).await;
    let source = source(&first, &script).await;

    let (second, _other) = script_app(Arc::clone(&script), Some(url), |settings| {
        settings.llm.limits.work_tokens += 8;
    })
    .await;
    let replay = second
        .submit_with(json!({
            "prompt": PROMPT,
            "options": { "replay_of": source, "on_divergence": "live" }
        }))
        .await;
    let task = second.ended(&replay).await;
    assert_eq!(task["status"], "completed", "{task}");
    let log = second.events(&replay).await;
    let diverged = of_kind(&log, "replay.diverged");
    assert_eq!(diverged.len(), 1, "{log:#?}");
    assert_eq!(diverged[0]["data"]["purpose"], "work.1");
    assert_eq!(diverged[0]["data"]["part"], "max_tokens");
    // Before work.1 nothing was called; from it on, everything was.
    for purpose in ["plan", "assign.calibration", "assign.1", "assign.2"] {
        assert_eq!(script.calls(purpose), 1, "{purpose}");
    }
    for purpose in ["work.1", "work.2", "verify"] {
        assert_eq!(script.calls(purpose), 2, "{purpose}");
    }
}

#[actix_rt::test]
async fn bad_forks_and_comparisons_get_4xx_and_store_nothing() {
    let script = script();
    let (app, core) = script_app(Arc::clone(&script), None, |_| {}).await;
    let source = source(&app, &script).await;
    let fork = |body: Value| {
        let app = &app;
        let source = source.clone();
        async move {
            app.post_json(&format!("/api/v1/tasks/{source}/fork"), &body)
                .await
        }
    };
    let refused = |status: u16, body: &Value, expected: u16, code: &str| {
        assert_eq!(status, expected, "{body}");
        assert_eq!(body["error"]["code"], code, "{body}");
        assert!(!body["error"]["message"].as_str().unwrap().is_empty());
    };

    for (body, code, says) in [
        (json!({ "from_step": 0 }), "invalid_option", "1..=3"),
        (json!({ "from_step": 4 }), "invalid_option", "got 4"),
        (
            json!({ "from_step": 2, "override": { "decision": "assign_agent", "chosen": "nobody" } }),
            "invalid_option",
            "'nobody'",
        ),
        (
            json!({ "from_step": 2, "override": { "decision": "assign_agent", "chosen": "director" } }),
            "invalid_option",
            "specialist",
        ),
        (
            json!({ "from_step": 2, "override": { "decision": "assign_agent", "step": 1, "chosen": "qa" } }),
            "invalid_option",
            "fork's step (2)",
        ),
        (
            json!({ "from_step": 3, "override": { "decision": "assign_agent", "chosen": "qa" } }),
            "invalid_option",
            "verification",
        ),
        (
            json!({ "from_step": 2, "override": { "decision": "verdict", "chosen": "pass" } }),
            "invalid_body",
            "verdict",
        ),
        (
            json!({ "from_step": 1, "prompt": "Tell me about beavers", "on_divergence": "stop" }),
            "invalid_option",
            "on_divergence must be live",
        ),
        (
            json!({ "from_step": 1, "prompt": "   " }),
            "empty_prompt",
            "",
        ),
        (json!({ "from_step": "two" }), "invalid_body", ""),
        (
            json!({ "from_step": 1, "colour": "red" }),
            "invalid_body",
            "colour",
        ),
    ] {
        let (status, answer) = fork(body.clone()).await;
        refused(status, &answer, 400, code);
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{body}: {message}");
    }

    let unknown = TaskId::new();
    let (status, body) = app
        .post_json(
            &format!("/api/v1/tasks/{unknown}/fork"),
            &json!({ "from_step": 1 }),
        )
        .await;
    refused(status, &body, 404, "task_not_found");
    let (status, body) = app
        .post_json("/api/v1/tasks/not-a-task/fork", &json!({ "from_step": 1 }))
        .await;
    refused(status, &body, 400, "invalid_id");

    // A task that has not finished cannot be forked: its recording is not complete.
    let queued = TaskId::new();
    let event = PendingEvent::now(queued, EventKind::TaskQueued, None, json!({}));
    core.writer
        .create_task(
            NewTask {
                id: queued,
                prompt: "still waiting".into(),
                options: json!({}),
                trace_id: "0".repeat(32),
                replay_of: None,
                created_at: event.at,
                owner: None,
            },
            event,
        )
        .await
        .unwrap();
    let (status, body) = app
        .post_json(
            &format!("/api/v1/tasks/{queued}/fork"),
            &json!({ "from_step": 1 }),
        )
        .await;
    refused(status, &body, 409, "source_unfinished");

    // The options a fork sets are checked on `POST /api/v1/tasks` too.
    for (options, says) in [
        (
            json!({ "replay_of": source, "fork_of": { "task": source, "from_step": 1 } }),
            "exclude each other",
        ),
        (json!({ "on_divergence": "live" }), "replay or a fork"),
        (
            json!({ "fork_of": { "task": source, "from_step": 9 } }),
            "got 9",
        ),
        (
            json!({ "on_divergence": "sometimes", "replay_of": source }),
            "sometimes",
        ),
    ] {
        let (status, body) = app
            .post_task(&json!({ "prompt": PROMPT, "options": options }))
            .await;
        assert_eq!(status, 400, "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{options}: {message}");
    }

    let (status, body) = app
        .get(&format!("/api/v1/tasks/{source}/compare/{unknown}"))
        .await;
    refused(status, &body, 404, "task_not_found");
    let (status, body) = app
        .get(&format!("/api/v1/tasks/nope/compare/{source}"))
        .await;
    refused(status, &body, 400, "invalid_id");
    let (status, compared) = app
        .get(&format!("/api/v1/tasks/{source}/compare/{source}"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(compared["same"], true, "{compared:#}");

    // Nothing was stored but the source and the queued task; no model was called again.
    let (_, list) = app.get("/api/v1/tasks").await;
    assert_eq!(list["tasks"].as_array().unwrap().len(), 2, "{list}");
    assert_eq!(script.total(), 7);
    let (_, doc) = app.get("/api/v1/openapi.json").await;
    assert!(doc["paths"]["/api/v1/tasks/{id}/fork"]["post"].is_object());
    assert!(doc["paths"]["/api/v1/tasks/{a}/compare/{b}"]["get"].is_object());
    assert!(doc["components"]["schemas"]["TaskOptions"]["properties"]["fork_of"].is_object());
}

/// The fork and its rows (the new columns, the replayed calls recorded as its own) on PostgreSQL.
#[actix_rt::test]
async fn a_fork_on_postgres_replays_step_one_and_runs_the_rest_live() {
    let database = crate::postgres::TestDatabase::create().await;
    let script = script();
    let (app, _core) = script_app(Arc::clone(&script), Some(database.url.clone()), |_| {}).await;
    let (source, fork) = fork_from_step_two(&app, &script).await;
    let (_, compared) = app
        .get(&format!("/api/v1/tasks/{source}/compare/{fork}"))
        .await;
    assert_eq!(compared["same"], false);
    assert_eq!(compared["model_outputs"]["different"][0]["key"], "work.2");
    // A replay with another prompt stops at the plan there too.
    let other = app
        .submit_with(
            json!({ "prompt": "Tell me about beavers", "options": { "replay_of": source } }),
        )
        .await;
    assert_eq!(app.ended(&other).await["status"], "failed");
    assert_eq!(
        of_kind(&app.events(&other).await, "replay.diverged")[0]["data"]["part"],
        "prompt"
    );
    drop(app);
    database.drop_now().await;
}

/// A live A/B at one decision is an experiment of two forks: both fork the source at step 2, one keeping
/// the model's agent and one overriding it; each run goes live from step 2 and the report compares them.
#[actix_rt::test]
async fn an_experiment_of_two_forks_is_a_live_ab_at_one_decision() {
    let script = script();
    let (app, _core) = script_app(Arc::clone(&script), None, |_| {}).await;
    let source = source(&app, &script).await;
    let fork = |chosen: &str| {
        json!({ "task": source, "from_step": 2,
                "override": { "decision": "assign_agent", "step": 2, "chosen": chosen } })
    };
    let (status, body) = app
        .post_json(
            "/api/v1/experiments",
            &json!({
                "name": "step 2: research or qa",
                "prompts": [PROMPT],
                "variants": [
                    { "name": "research", "options": { "fork_of": fork("research") } },
                    { "name": "qa", "options": { "fork_of": fork("qa") } }
                ]
            }),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let location = format!("/api/v1/experiments/{}", body["id"].as_str().unwrap());
    let report = crate::experiments::wait_until_completed(
        &app,
        &location,
        std::time::Duration::from_secs(60),
    )
    .await;
    for run in report["runs"].as_array().unwrap() {
        let task = app.ended(run["task"].as_str().unwrap()).await;
        assert_eq!(task["steps"][1]["agent"], run["variant"], "{task}");
        let log = app.events(task["id"].as_str().unwrap()).await;
        assert_eq!(
            of_kind(&log, "task.forked")[0]["data"]["override"]["chosen"],
            run["variant"]
        );
    }
    let ended: Vec<u64> = report["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|variant| variant["ended"].as_u64().unwrap())
        .collect();
    assert_eq!(ended, vec![1, 1], "{report:#}");
    assert_eq!(report["pairs"].as_array().unwrap().len(), 1);
}
