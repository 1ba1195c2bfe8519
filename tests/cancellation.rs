//! Cancellation on the real model: a running task ends `cancelled` within two seconds, its model call is
//! stopped (counted as a cancelled model call), nothing is appended after the terminal event, and no step
//! is left running. And during a long sandbox run (a scripted task whose test runs a 31 s `sleep`): the
//! run's processes are killed and its slot is free within a second of the cancel, and `task.cancelled`
//! says what was stopped and what was kept.

use std::time::{Duration, Instant};

use awc::ws::Frame;
use futures_util::StreamExt;
use serde_json::Value;

use crate::helpers::{kinds, metric_value, of_kind, spawn_app, spawn_app_with};
use crate::scripts::{frame, seed_recording};

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

/// The pids of the processes whose command line is exactly `sleep 31.4159` (the scripted test's child).
fn marked_sleeps() -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|line| line == b"sleep\x0031.4159\x00")
        })
        .collect()
}

#[actix_rt::test]
async fn cancelling_during_a_long_sandbox_run_kills_it_and_frees_its_slot_within_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/scripted.sqlite?mode=rwc", dir.path().display());
    let app_url = url.clone();
    let app = spawn_app_with(move |settings| {
        settings.sandbox.enabled = true;
        settings.sandbox.timeout_seconds = 60.0;
        settings.database.url = app_url;
        settings.director.code_attempts = 1;
        settings.memory.enabled = false;
    })
    .await;
    let mut outputs = frame();
    let test = "import subprocess\nsubprocess.run(['sleep', '31.4159'])\nassert add(2, 3) == 5";
    outputs.extend([
        (
            "work.1",
            serde_json::json!({ "code": "def add(a, b):\n    return a + b", "test": test })
                .to_string(),
            None,
        ),
        ("test.1", crate::scripts::run_test_call(), None),
    ]);
    let source = seed_recording(&url, &outputs).await;
    let id = app
        .submit_with(
            serde_json::json!({ "prompt": "Write add(a, b)", "options": { "replay_of": source } }),
        )
        .await;
    // Wait until the test's `sleep` runs in the jail.
    let deadline = Instant::now() + Duration::from_secs(60);
    while marked_sleeps().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the scripted test never started its sleep"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        metric_value(&app.metrics().await, "troupe_sandbox_slots_busy"),
        1.0
    );

    let asked = Instant::now();
    let (status, body) = app.post(&format!("/api/v1/tasks/{id}/cancel")).await;
    assert_eq!(status, 202, "{body}");
    // The run's processes are gone and its slot is free.
    loop {
        let gone = marked_sleeps().is_empty();
        let free = metric_value(&app.metrics().await, "troupe_sandbox_slots_busy") == 0.0;
        if gone && free {
            break;
        }
        assert!(
            asked.elapsed() < Duration::from_secs(1),
            "after {:?}: processes gone {gone}, slot free {free}",
            asked.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = asked.elapsed();
    eprintln!("cancel to the last sandbox process gone and its slot free: {took:?}");
    let events = app.follow(&id, 0, Duration::from_secs(10)).await;
    let cancelled = of_kind(&events, "task.cancelled");
    assert_eq!(cancelled.len(), 1, "{events:#?}");
    let data = &cancelled[0]["data"];
    assert_eq!(data["stopped"]["steps"], serde_json::json!([1]), "{data}");
    assert_eq!(data["stopped"]["sandbox_runs"], 1, "{data}");
    assert_eq!(data["not_started"], serde_json::json!([2]), "{data}");
    let scrape = app.metrics().await;
    assert_eq!(
        metric_value(
            &scrape,
            "troupe_sandbox_runs_total{language=\"python\",outcome=\"cancelled\"}"
        ),
        1.0,
        "{scrape}"
    );
    // The partial result is kept (no step was done yet; the code step had written its files).
    let (_, task) = app.get(&format!("/api/v1/tasks/{id}")).await;
    assert_eq!(task["status"], "cancelled");
    assert_eq!(task["result"]["partial"], true, "{task}");
}
