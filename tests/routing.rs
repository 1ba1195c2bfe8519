//! Calibrated routing on the real embedded model: every agent decision records the calibrated probability it
//! was made by, the model's own (`raw_probability`) and the content-free one, and they agree with the
//! arithmetic; a second task reuses the process's content-free scores (no second content-free model call)
//! and still replays to the same decisions, because the cached scores are recorded with the task; with
//! `director.calibrate_routing = false` decisions are the model's own.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::{spawn_app, spawn_app_with, TestApp};

/// The floor of a content-free probability (`director::calibration::CONTENT_FREE_FLOOR`).
const FLOOR: f64 = 0.02;

/// Waits until every planned step of task `id` has its `decision.made` event, then cancels the task (its
/// steps are not needed here) and waits for its end; returns the decisions.
async fn decisions_then_cancel(app: &TestApp, id: &str) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(300);
    let decisions = loop {
        let (status, body) = app.get(&format!("/api/v1/tasks/{id}/events")).await;
        assert_eq!(status, 200, "{body}");
        let events = body["events"].as_array().unwrap();
        let planned = events
            .iter()
            .find(|e| e["kind"] == "plan.created")
            .map(|e| e["data"]["steps"].as_array().unwrap().len());
        let decisions: Vec<Value> = events
            .iter()
            .filter(|e| e["kind"] == "decision.made" && e["data"]["kind"] == "assign_agent")
            .map(|e| e["data"].clone())
            .collect();
        if planned.is_some_and(|steps| steps == decisions.len()) {
            break decisions;
        }
        assert!(
            !events.iter().any(|e| e["kind"] == "task.failed"),
            "task {id} failed before its decisions: {events:?}"
        );
        assert!(
            Instant::now() < deadline,
            "no decisions for {id}: {events:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    app.post(&format!("/api/v1/tasks/{id}/cancel")).await;
    app.wait_for_task(id, Duration::from_secs(120), |t| {
        ["cancelled", "completed", "failed"].contains(&t["status"].as_str().unwrap_or(""))
    })
    .await;
    decisions
}

fn number(value: &Value, key: &str) -> f64 {
    value[key]
        .as_f64()
        .unwrap_or_else(|| panic!("no {key}: {value}"))
}

/// A calibrated decision's figures agree with `raw / max(content_free, floor)`, renormalised, and the
/// choice is the most probable calibrated option.
fn assert_calibrated(decision: &Value) {
    assert_eq!(decision["calibration"], "calibrated", "{decision}");
    let options = decision["options"].as_array().unwrap();
    assert_eq!(options.len(), 3, "{decision}");
    let weights: Vec<f64> = options
        .iter()
        .map(|o| number(o, "raw_probability") / number(o, "content_free_probability").max(FLOOR))
        .collect();
    let total: f64 = weights.iter().sum();
    for (option, weight) in options.iter().zip(&weights) {
        assert!(
            (number(option, "probability") - weight / total).abs() < 1e-9,
            "{decision}"
        );
    }
    let raw_sum: f64 = options.iter().map(|o| number(o, "raw_probability")).sum();
    assert!((raw_sum - 1.0).abs() < 1e-6, "{decision}");
    let best = options
        .iter()
        .max_by(|a, b| number(a, "probability").total_cmp(&number(b, "probability")))
        .unwrap();
    assert_eq!(decision["chosen"], best["name"], "{decision}");
    assert_eq!(decision["confidence"], best["probability"], "{decision}");
    assert!(
        decision["reasoning"]
            .as_str()
            .unwrap()
            .contains("calibrated"),
        "{decision}"
    );
}

fn content_free(decision: &Value) -> Vec<Value> {
    decision["options"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| json!([o["name"], o["content_free_probability"]]))
        .collect()
}

#[actix_rt::test]
async fn decisions_are_calibrated_cached_per_process_and_replay_the_same() {
    let app = spawn_app().await;
    let first_id = app.submit("What is the capital of France?").await;
    let first = decisions_then_cancel(&app, &first_id).await;
    assert!(!first.is_empty());
    first.iter().for_each(assert_calibrated);

    let second_id = app.submit("Who wrote the novel Pride and Prejudice?").await;
    let second = decisions_then_cancel(&app, &second_id).await;
    second.iter().for_each(assert_calibrated);
    // The same prior: the content-free scores came from the cache, not from a second model call.
    assert_eq!(content_free(&first[0]), content_free(&second[0]));
    let calibration_calls = |events: Value| {
        events["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "llm.finished" && e["data"]["purpose"] == "assign.calibration")
            .count()
    };
    let (_, events) = app.get(&format!("/api/v1/tasks/{first_id}/events")).await;
    assert_eq!(calibration_calls(events), 1);
    let (_, events) = app.get(&format!("/api/v1/tasks/{second_id}/events")).await;
    assert_eq!(calibration_calls(events), 0);

    // The second task's recording holds the cached scores: its replay makes the same decisions.
    let replay_id = app
        .submit_with(json!({ "prompt": "Who wrote the novel Pride and Prejudice?", "options": { "replay_of": second_id } }))
        .await;
    let replayed = decisions_then_cancel(&app, &replay_id).await;
    let comparable = |decisions: &[Value]| -> Vec<Value> {
        decisions
            .iter()
            .map(|d| {
                json!([
                    d["step"],
                    d["chosen"],
                    d["options"],
                    d["reasoning"],
                    d["calibration"]
                ])
            })
            .collect()
    };
    assert_eq!(comparable(&second), comparable(&replayed));
}

#[actix_rt::test]
async fn with_calibration_off_decisions_are_the_models_own() {
    let app = spawn_app_with(|settings| settings.director.calibrate_routing = false).await;
    let id = app.submit("What is the capital of France?").await;
    let decisions = decisions_then_cancel(&app, &id).await;
    for decision in &decisions {
        assert_eq!(decision["calibration"], "off", "{decision}");
        for option in decision["options"].as_array().unwrap() {
            assert!(option.get("raw_probability").is_none(), "{decision}");
            assert!(
                option.get("content_free_probability").is_none(),
                "{decision}"
            );
        }
    }
}
