//! The server does not die with its model: killing the model worker process (as a llama.cpp abort would)
//! fails the call in flight, the worker is restarted and counted, and the next task completes.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::{metric_value, spawn_app, TestApp};

async fn worker(app: &TestApp) -> Value {
    let (status, body) = app.get("/api/v1/agents").await;
    assert_eq!(status, 200, "{body}");
    body["model"]["worker"].clone()
}

#[actix_rt::test]
async fn a_killed_model_worker_fails_its_call_and_is_replaced() {
    let app = spawn_app().await;
    let before = worker(&app).await;
    assert_eq!(before["state"], "ready", "{before}");
    let pid = before["pid"].as_u64().expect("worker pid");

    let id = app
        .submit("Write a Python function that multiplies two numbers")
        .await;
    let _socket = app.socket_after_first_token(&id).await;
    let status = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());

    let task = app
        .wait_for_task(&id, Duration::from_secs(30), |t| t["status"] == "failed")
        .await;
    assert!(
        task["error"]
            .as_str()
            .unwrap()
            .contains("model worker died"),
        "{task}"
    );

    let deadline = Instant::now() + Duration::from_secs(30);
    let after = loop {
        let after = worker(&app).await;
        if after["state"] == "ready" && after["pid"].as_u64().is_some_and(|p| p != pid) {
            break after;
        }
        assert!(Instant::now() < deadline, "worker not replaced: {after}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(after["restarts"], 1);
    let scrape = app.metrics().await;
    assert_eq!(
        metric_value(
            &scrape,
            "troupe_supervisor_restarts_total{agent=\"model_worker\",reason=\"crash\"}"
        ),
        1.0
    );
    assert!(
        metric_value(
            &scrape,
            "troupe_llm_errors_total{kind=\"worker_crashed\",provider=\"llama.cpp\"}"
        ) >= 1.0,
        "{scrape}"
    );

    let next = app.submit("Name a sorting algorithm").await;
    let events = app.follow(&next, 0, Duration::from_secs(120)).await;
    assert_eq!(events.last().unwrap()["kind"], "task.completed");
    let (status, _) = app.get("/readyz").await;
    assert_eq!(status, 200);
}
