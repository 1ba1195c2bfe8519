//! Supervision on the real model: with `chaos.panic_once = ["qa"]` the QA agent panics on its first step;
//! the Director restarts it, counts the restart, emits `agent.restarted`, retries the step, and the task
//! completes. With no restarts allowed, the same panic fails the task with the supervisor's reason.
//! (QA is the agent chaos targets because every task ends with a QA step, whatever the model decides.)

use std::time::Duration;

use crate::helpers::{kinds, metric_value, spawn_app_with};

#[actix_rt::test]
async fn a_panicking_agent_is_restarted_and_the_task_still_completes() {
    let app = spawn_app_with(|settings| settings.chaos.panic_once = vec!["qa".into()]).await;
    let id = app.submit("Explain what a linked list is").await;
    let events = app.follow(&id, 0, Duration::from_secs(120)).await;
    let kinds = kinds(&events);
    assert_eq!(kinds.last().unwrap(), "task.completed", "{kinds:?}");
    let restarted: Vec<_> = events
        .iter()
        .filter(|e| e["kind"] == "agent.restarted")
        .collect();
    assert_eq!(restarted.len(), 1, "{kinds:?}");
    assert_eq!(restarted[0]["agent"], "qa");
    assert_eq!(restarted[0]["data"]["reason"], "panic");
    assert!(restarted[0]["data"]["detail"]
        .as_str()
        .unwrap()
        .contains("chaos"));

    let scrape = app.metrics().await;
    assert_eq!(
        metric_value(
            &scrape,
            "troupe_supervisor_restarts_total{agent=\"qa\",reason=\"panic\"}"
        ),
        1.0,
        "{scrape}"
    );
    let (_, task) = app.get(&format!("/api/v1/tasks/{id}")).await;
    let verify = task["steps"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(verify["agent"], "qa");
    assert_eq!(verify["attempts"], 2, "{task}");
    assert_eq!(verify["status"], "done");
    let (_, agents) = app.get("/api/v1/agents").await;
    let qa = agents["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "qa")
        .unwrap()
        .clone();
    assert_eq!(qa["restarts"], 1);
}

#[actix_rt::test]
async fn exceeding_the_restart_intensity_fails_the_task_with_a_clear_reason() {
    let app = spawn_app_with(|settings| {
        settings.chaos.panic_once = vec!["qa".into()];
        settings.supervision.max_restarts = 0;
    })
    .await;
    let id = app.submit("Explain what a stack is").await;
    let events = app.follow(&id, 0, Duration::from_secs(120)).await;
    let last = events.last().unwrap();
    assert_eq!(last["kind"], "task.failed", "{:?}", kinds(&events));
    let error = last["data"]["error"].as_str().unwrap();
    assert!(error.contains("supervisor gave up on qa"), "{error}");
    let (_, task) = app.get(&format!("/api/v1/tasks/{id}")).await;
    assert_eq!(task["status"], "failed");
    assert_eq!(task["error"], error);
    let scrape = app.metrics().await;
    assert_eq!(
        metric_value(&scrape, "troupe_tasks_total{outcome=\"failed\"}"),
        1.0
    );
}
