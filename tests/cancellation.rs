//! Cancellation on the real model: a running task ends `cancelled` within two seconds, its model call is
//! stopped (counted as a cancelled model call), nothing is appended after the terminal event, and no step
//! is left running.

use std::time::{Duration, Instant};

use awc::ws::Frame;
use futures_util::StreamExt;
use serde_json::Value;

use crate::helpers::{kinds, metric_value, spawn_app};

#[actix_rt::test]
async fn cancelling_a_running_task_stops_it_within_two_seconds() {
    let app = spawn_app().await;
    let id = app
        .submit("Write a Python class for a bank account with deposit and withdraw")
        .await;

    // Wait until the model is generating for this task.
    let mut socket = app.socket_after_first_token(&id).await;

    let asked = Instant::now();
    let (status, body) = app.post(&format!("/api/v1/tasks/{id}/cancel")).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "cancelling");
    let mut last_kind = String::new();
    while let Ok(Some(Ok(Frame::Text(bytes)))) =
        tokio::time::timeout(Duration::from_secs(5), socket.next()).await
    {
        let event: Value = serde_json::from_slice(&bytes).unwrap();
        last_kind = event["kind"].as_str().unwrap().to_owned();
        if last_kind == "task.cancelled" {
            break;
        }
    }
    let took = asked.elapsed();
    assert_eq!(last_kind, "task.cancelled");
    assert!(took < Duration::from_secs(2), "cancellation took {took:?}");

    let task = app
        .wait_for_task(&id, Duration::from_secs(5), |t| t["status"] == "cancelled")
        .await;
    assert!(
        task["steps"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["status"] != "running"),
        "{task}"
    );

    // The model call in flight was stopped, not run to its end.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let scrape = app.metrics().await;
        if metric_value(
            &scrape,
            "troupe_llm_errors_total{kind=\"cancelled\",provider=\"llama.cpp\"}",
        ) >= 1.0
        {
            assert_eq!(
                metric_value(&scrape, "troupe_tasks_total{outcome=\"cancelled\"}"),
                1.0
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no cancelled model call recorded: {scrape}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Nothing follows the terminal event, even after the agents wound down.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, history) = app.get(&format!("/api/v1/tasks/{id}/events")).await;
    let events = history["events"].as_array().unwrap().clone();
    assert_eq!(kinds(&events).last().unwrap(), "task.cancelled");

    // Cancelling again is a conflict, not a success.
    let (status, body) = app.post(&format!("/api/v1/tasks/{id}/cancel")).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "task_finished");
}
