//! A task end to end on the real embedded model: REST submit, WebSocket to the end, event order, final
//! state over REST, one trace id across every event (the caller's, when it sends a `traceparent`).

use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::{kinds, metric_value, spawn_app};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

#[actix_rt::test]
async fn a_task_runs_end_to_end_as_one_trace_with_ordered_events() {
    let app = spawn_app().await;
    let mut response = app
        .client
        .post(format!("{}/api/v1/tasks", app.address))
        .insert_header(("traceparent", format!("00-{TRACE_ID}-00f067aa0ba902b7-01")))
        .send_json(&json!({ "prompt": "Write a Python function that adds two numbers" }))
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 202);
    let body: Value = response.json().await.unwrap();
    let id = body["id"].as_str().unwrap().to_owned();

    // The task row exists as soon as the API answered.
    let (status, task) = app.get(&format!("/api/v1/tasks/{id}")).await;
    assert_eq!(status, 200);
    assert!(
        ["queued", "running"].contains(&task["status"].as_str().unwrap()),
        "{task}"
    );

    let events = app.follow(&id, 0, Duration::from_secs(120)).await;
    let kinds = kinds(&events);

    // seq: 1, 2, 3, ... without gaps.
    for (index, event) in events.iter().enumerate() {
        assert_eq!(
            event["seq"].as_i64().unwrap(),
            index as i64 + 1,
            "{kinds:?}"
        );
        assert_eq!(event["task_id"], id.as_str());
    }
    assert_eq!(kinds[0], "task.queued");
    let plan = kinds
        .iter()
        .position(|k| k == "plan.created")
        .expect("plan.created");
    let first_agent_step = kinds
        .iter()
        .position(|k| k == "agent.started")
        .expect("agent.started");
    assert!(plan < first_agent_step, "{kinds:?}");
    let terminal: Vec<_> = kinds
        .iter()
        .filter(|k| {
            k.starts_with("task.")
                && ["task.completed", "task.failed", "task.cancelled"].contains(&k.as_str())
        })
        .collect();
    assert_eq!(terminal, vec!["task.completed"], "{kinds:?}");
    assert_eq!(kinds.last().unwrap(), "task.completed");
    assert!(kinds.contains(&"llm.token".to_owned()));
    assert!(kinds.contains(&"qa.verdict".to_owned()));

    // One trace: the caller's.
    for event in &events {
        assert_eq!(event["trace_id"], TRACE_ID, "{event}");
        assert_eq!(event["span_id"].as_str().unwrap().len(), 16);
    }

    // Every decision carries the model's probabilities over the candidates and picks the likeliest.
    let decisions: Vec<&Value> = events
        .iter()
        .filter(|e| e["kind"] == "decision.made")
        .collect();
    let plan_steps = events[plan]["data"]["steps"].as_array().unwrap().len();
    assert_eq!(decisions.len(), plan_steps);
    for decision in &decisions {
        let options = decision["data"]["options"].as_array().unwrap();
        assert_eq!(options.len(), 3);
        let sum: f64 = options
            .iter()
            .map(|o| o["probability"].as_f64().unwrap())
            .sum();
        assert!((sum - 1.0).abs() < 1e-6, "{decision}");
        let best = options
            .iter()
            .max_by(|a, b| {
                a["probability"]
                    .as_f64()
                    .unwrap()
                    .total_cmp(&b["probability"].as_f64().unwrap())
            })
            .unwrap();
        assert_eq!(decision["data"]["chosen"], best["name"]);
        assert_eq!(decision["data"]["confidence"], best["probability"]);
    }

    // The final state over REST.
    let (status, task) = app.get(&format!("/api/v1/tasks/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(task["status"], "completed");
    assert_eq!(task["trace_id"], TRACE_ID);
    assert!(task["result"]["answer"].is_string(), "{task}");
    let steps = task["steps"].as_array().unwrap();
    assert_eq!(steps.len(), plan_steps + 1, "{task}");
    assert!(steps.iter().all(|s| s["status"] == "done"), "{task}");
    assert_eq!(steps.last().unwrap()["agent"], "qa");
    assert!(task["usage"]["llm_calls"].as_i64().unwrap() >= 3);
    assert!(task["usage"]["completion_tokens"].as_i64().unwrap() > 0);

    // The stored history is what the socket streamed; resuming gives the rest.
    let (status, history) = app.get(&format!("/api/v1/tasks/{id}/events")).await;
    assert_eq!(status, 200);
    assert_eq!(history["events"].as_array().unwrap(), &events);
    let resumed = app.follow(&id, 3, Duration::from_secs(10)).await;
    assert_eq!(resumed, events[3..].to_vec());

    // Listed, and measured.
    let (_, list) = app.get("/api/v1/tasks?status=completed").await;
    assert!(list["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["id"] == id.as_str()));
    let scrape = app.metrics().await;
    assert_eq!(
        metric_value(&scrape, "troupe_tasks_total{outcome=\"completed\"}"),
        1.0
    );
    assert!(metric_value(&scrape, "troupe_llm_tokens_total{model=\"SmolLM2-135M-Instruct.Q4_1\",provider=\"llama.cpp\",type=\"output\"}") > 0.0, "{scrape}");
    assert_eq!(
        metric_value(&scrape, "troupe_mailbox_depth{agent=\"qa\"}"),
        0.0
    );
    assert!(scrape.contains("troupe_message_latency_seconds_bucket{agent=\"qa\""));
    assert!(scrape.contains("troupe_task_duration_seconds_count{outcome=\"completed\"} 1"));
    let (_, agents) = app.get("/api/v1/agents").await;
    assert_eq!(agents["agents"].as_array().unwrap().len(), 4);
    let (status, ready) = app.get("/readyz").await;
    assert_eq!(status, 200, "{ready}");
}
