//! Budgets and confirmations over the API, on the real embedded model: a task whose budget cannot hold its
//! next model call fails before the call (or, with `on_exceed = "downgrade"`, goes on on the cheaper model),
//! bad budgets are refused, and a confirmation for a task that waits for nothing is a clear 409.

use std::time::Duration;

use serde_json::{json, Value};
use troupe::config::{ModelOverride, OnExceed, PriceSettings};

use crate::helpers::{kinds, metric_value, root, spawn_app, spawn_app_with};

const TERMINAL: [&str; 3] = ["completed", "failed", "cancelled"];

fn events_of(body: &Value) -> Vec<Value> {
    body["events"].as_array().cloned().unwrap_or_default()
}

#[actix_rt::test]
async fn a_budget_too_small_for_the_plan_fails_the_task_before_any_model_call() {
    let app = spawn_app().await;
    let id = app
        .submit_with(json!({
            "prompt": "Write a Python function that reverses a string",
            "options": { "budget": { "max_tokens": 100 } }
        }))
        .await;
    let task = app
        .wait_for_task(&id, Duration::from_secs(60), |t| {
            TERMINAL.contains(&t["status"].as_str().unwrap_or(""))
        })
        .await;
    assert_eq!(task["status"], "failed", "{task}");
    let error = task["error"].as_str().unwrap();
    assert!(
        error.contains("budget exceeded: tokens limit 100"),
        "{error}"
    );
    // Refused before it was made: no model call at all.
    assert_eq!(task["usage"]["llm_calls"], 0, "{task}");
    assert_eq!(task["usage"]["cost_usd"], 0.0, "{task}");
    let (_, body) = app.get(&format!("/api/v1/tasks/{id}/events")).await;
    let events = events_of(&body);
    let exceeded = events
        .iter()
        .find(|e| e["kind"] == "budget.exceeded")
        .unwrap_or_else(|| panic!("no budget.exceeded in {:?}", kinds(&events)));
    assert_eq!(exceeded["data"]["action"], "fail");
    assert_eq!(exceeded["data"]["limit"], "tokens");
    assert_eq!(exceeded["data"]["allowed"], 100.0);
    assert_eq!(exceeded["data"]["purpose"], "plan");
    let scrape = app.metrics().await;
    assert_eq!(
        metric_value(&scrape, "troupe_budget_exceeded_total{action=\"fail\"}"),
        1.0
    );
}

#[actix_rt::test]
async fn bad_budgets_are_refused_with_a_clear_error_and_nothing_is_stored() {
    let app = spawn_app().await;
    for (budget, needle) in [
        (json!({ "max_tokens": 0 }), "options.budget.max_tokens"),
        (
            json!({ "max_cost_usd": -1.0 }),
            "options.budget.max_cost_usd",
        ),
        (json!({ "max_cost_usd": 0 }), "options.budget.max_cost_usd"),
        (json!({ "max_tokens": -5 }), "integer `-5`"),
        (json!({ "tokens": 10 }), "unknown field `tokens`"),
    ] {
        let (status, body) = app
            .post_task(&json!({ "prompt": "hello", "options": { "budget": budget } }))
            .await;
        assert_eq!(status, 400, "{budget}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{budget}: {message}");
    }
    let (_, body) = app.get("/api/v1/tasks").await;
    assert!(body["tasks"].as_array().unwrap().is_empty(), "{body}");
}

#[actix_rt::test]
async fn over_its_budget_a_task_goes_on_on_the_downgrade_model() {
    // Two names for the same GGUF file, so that the primary can be priced and the downgrade model not (a
    // price belongs to a model name): "Priced" costs $1000 per million tokens, "Local" nothing.
    let models = tempfile::tempdir().unwrap();
    let gguf = root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    for name in ["Priced", "Local"] {
        std::os::unix::fs::symlink(&gguf, models.path().join(format!("{name}.gguf"))).unwrap();
    }
    let priced = models.path().join("Priced.gguf").display().to_string();
    let local = models.path().join("Local.gguf").display().to_string();
    let app = spawn_app_with(|settings| {
        settings.llm.model = priced;
        settings.llm.prices.insert(
            "Priced".into(),
            PriceSettings {
                input_per_million: 1000.0,
                output_per_million: 1000.0,
            },
        );
        settings.budget.on_exceed = OnExceed::Downgrade;
        settings.budget.downgrade = ModelOverride {
            model: Some(local),
            ..ModelOverride::default()
        };
    })
    .await;
    let (_, agents) = app.get("/api/v1/agents").await;
    assert_eq!(agents["models"]["downgrade"]["model"], "Local", "{agents}");
    assert_eq!(agents["models"]["code"]["model"], "Priced", "{agents}");
    // One cent: the plan's reservation alone (hundreds of tokens at $0.001 each) is more.
    let id = app
        .submit_with(json!({
            "prompt": "Name three prime numbers",
            "options": { "max_steps": 1, "budget": { "max_cost_usd": 0.01 } }
        }))
        .await;
    let task = app
        .wait_for_task(&id, Duration::from_secs(600), |t| {
            TERMINAL.contains(&t["status"].as_str().unwrap_or(""))
        })
        .await;
    if let Some(error) = task["error"].as_str() {
        assert!(!error.contains("budget"), "{task}");
    }
    assert!(task["usage"]["llm_calls"].as_i64().unwrap() > 0, "{task}");
    assert_eq!(task["usage"]["cost_usd"], 0.0, "{task}");
    let (_, body) = app.get(&format!("/api/v1/tasks/{id}/events")).await;
    let events = events_of(&body);
    let exceeded: Vec<&Value> = events
        .iter()
        .filter(|e| e["kind"] == "budget.exceeded")
        .collect();
    assert_eq!(exceeded.len(), 1, "{:?}", kinds(&events));
    assert_eq!(exceeded[0]["data"]["action"], "downgrade");
    assert_eq!(exceeded[0]["data"]["to"]["model"], "Local");
    // Every call the task made ran on the downgrade model.
    let finished: Vec<&Value> = events
        .iter()
        .filter(|e| e["kind"] == "llm.finished")
        .collect();
    assert!(!finished.is_empty());
    for call in finished {
        assert_eq!(call["data"]["model"], "Local", "{call}");
        assert_eq!(call["data"]["cost_usd"], 0.0, "{call}");
    }
    let scrape = app.metrics().await;
    assert_eq!(
        metric_value(
            &scrape,
            "troupe_budget_exceeded_total{action=\"downgrade\"}"
        ),
        1.0
    );
}

#[actix_rt::test]
async fn a_confirmation_for_a_task_that_waits_for_nothing_is_refused() {
    let app = spawn_app().await;
    let id = app.submit("Name three prime numbers").await;
    let client = &app;
    let confirm = move |id: &str, body: Value| {
        let path = format!("/api/v1/tasks/{id}/confirm");
        async move { client.post_json(&path, &body).await }
    };
    let (status, body) = confirm(&id, json!({ "allow": true })).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "not_awaiting_confirmation");
    let (status, body) = confirm(&id, json!({ "allow": "yes" })).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = confirm(
        "0193a1f2-7c4e-7b8a-9d3e-5f6a7b8c9d0e",
        json!({ "allow": true }),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "task_not_found");
    let (status, _) = app.post(&format!("/api/v1/tasks/{id}/cancel")).await;
    assert!(status == 202 || status == 409);
}
