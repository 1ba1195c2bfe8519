//! Bad input gets a 4xx with `{"error": {"code", "message"}}`, and the server keeps serving.

use serde_json::{json, Value};

use crate::helpers::{spawn_app, TestApp};

async fn raw_post(app: &TestApp, path: &str, content_type: &str, body: String) -> (u16, Value) {
    let mut response = app
        .client
        .post(format!("{}{path}", app.address))
        .insert_header(("content-type", content_type))
        .send_body(body)
        .await
        .unwrap();
    (
        response.status().as_u16(),
        response.json::<Value>().await.unwrap_or(Value::Null),
    )
}

fn assert_error(status: u16, body: &Value, expected_status: u16, code: &str) {
    assert_eq!(status, expected_status, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        !body["error"]["message"].as_str().unwrap().is_empty(),
        "{body}"
    );
}

#[actix_rt::test]
async fn every_kind_of_bad_input_gets_a_clear_4xx() {
    let app = spawn_app().await;
    let json = "application/json";

    let (s, b) = raw_post(&app, "/api/v1/tasks", json, r#"{"prompt": "#.into()).await;
    assert_error(s, &b, 400, "invalid_json");
    let (s, b) = raw_post(&app, "/api/v1/tasks", json, "{}".into()).await;
    assert_error(s, &b, 400, "invalid_body");
    assert!(
        b["error"]["message"].as_str().unwrap().contains("prompt"),
        "{b}"
    );
    let (s, b) = raw_post(&app, "/api/v1/tasks", json, r#"{"prompt": 7}"#.into()).await;
    assert_error(s, &b, 400, "invalid_body");
    let (s, b) = raw_post(&app, "/api/v1/tasks", json, r#"{"promt": "typo"}"#.into()).await;
    assert_error(s, &b, 400, "invalid_body");
    let (s, b) = raw_post(
        &app,
        "/api/v1/tasks",
        "text/plain",
        r#"{"prompt": "x"}"#.into(),
    )
    .await;
    assert_error(s, &b, 415, "unsupported_media_type");

    let (s, b) = app.post_task(&json!({ "prompt": "" })).await;
    assert_error(s, &b, 400, "empty_prompt");
    let (s, b) = app.post_task(&json!({ "prompt": " \n\t " })).await;
    assert_error(s, &b, 400, "empty_prompt");
    let (s, b) = app.post_task(&json!({ "prompt": "x".repeat(4001) })).await;
    assert_error(s, &b, 413, "prompt_too_large");
    let (s, b) = raw_post(
        &app,
        "/api/v1/tasks",
        json,
        json!({ "prompt": "x".repeat(70_000) }).to_string(),
    )
    .await;
    assert_error(s, &b, 413, "payload_too_large");
    let (s, b) = app
        .post_task(&json!({ "prompt": "ok", "options": { "max_steps": 0 } }))
        .await;
    assert_error(s, &b, 400, "invalid_option");
    let (s, b) = app
        .post_task(&json!({ "prompt": "ok", "options": { "colour": "red" } }))
        .await;
    assert_error(s, &b, 400, "invalid_body");
    let unknown = "01a20ed9-190e-71e7-b819-dccc4404e287";
    let (s, b) = app
        .post_task(&json!({ "prompt": "ok", "options": { "replay_of": unknown } }))
        .await;
    assert_error(s, &b, 404, "task_not_found");

    for path in [
        "/api/v1/tasks/not-a-uuid",
        "/api/v1/tasks/not-a-uuid/events",
    ] {
        let (s, b) = app.get(path).await;
        assert_error(s, &b, 400, "invalid_id");
    }
    let (s, b) = app.post("/api/v1/tasks/not-a-uuid/cancel").await;
    assert_error(s, &b, 400, "invalid_id");
    for path in [
        format!("/api/v1/tasks/{unknown}"),
        format!("/api/v1/tasks/{unknown}/events"),
    ] {
        let (s, b) = app.get(&path).await;
        assert_error(s, &b, 404, "task_not_found");
    }
    let (s, b) = app.post(&format!("/api/v1/tasks/{unknown}/cancel")).await;
    assert_error(s, &b, 404, "task_not_found");

    for path in [
        "/api/v1/tasks?limit=0",
        "/api/v1/tasks?limit=abc",
        "/api/v1/tasks?status=done",
    ] {
        let (s, b) = app.get(path).await;
        assert_error(s, &b, 400, "invalid_query");
    }
    let (s, b) = app.get("/api/v1/nothing-here").await;
    assert_error(s, &b, 404, "not_found");
    let mut response = app
        .client
        .delete(format!("{}/api/v1/tasks", app.address))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    assert_error(
        status,
        &response.json::<Value>().await.unwrap(),
        405,
        "method_not_allowed",
    );

    // Nothing was stored by any of it, and the server still serves.
    let (s, b) = app.get("/api/v1/tasks").await;
    assert_eq!(s, 200);
    assert!(b["tasks"].as_array().unwrap().is_empty(), "{b}");
    let (s, _) = app.get("/healthz").await;
    assert_eq!(s, 200);
    let (s, doc) = app.get("/api/v1/openapi.json").await;
    assert_eq!(s, 200);
    assert!(doc["paths"]["/api/v1/tasks"].is_object());
}

#[actix_rt::test]
async fn events_of_a_task_reject_a_negative_after_and_cancel_of_a_finished_task_conflicts() {
    let app = spawn_app().await;
    let id = app.submit("Name three prime numbers").await;
    let (s, b) = app
        .get(&format!("/api/v1/tasks/{id}/events?after=-1"))
        .await;
    assert_error(s, &b, 400, "invalid_query");
    let (s, _) = app.post(&format!("/api/v1/tasks/{id}/cancel")).await;
    assert_eq!(s, 202);
    app.wait_for_task(&id, std::time::Duration::from_secs(10), |t| {
        t["status"] == "cancelled"
    })
    .await;
    let (s, b) = app.post(&format!("/api/v1/tasks/{id}/cancel")).await;
    assert_error(s, &b, 409, "task_finished");
}

/// With one task running and one waiting (the limits set to 1 and 1), a third submission gets 429
/// `too_many_tasks` with `Retry-After` and stores nothing; once the admitted tasks end, a submission is
/// accepted again.
#[actix_rt::test]
async fn a_submission_beyond_the_running_and_waiting_limit_gets_429_and_stores_nothing() {
    let app = crate::helpers::spawn_app_with(|settings| {
        settings.director.max_concurrent_tasks = 1;
        settings.director.max_queued_tasks = 1;
    })
    .await;
    let running = app.submit("Explain recursion in one sentence").await;
    let waiting = app.submit("Explain iteration in one sentence").await;

    let mut refused = app
        .client
        .post(format!("{}/api/v1/tasks", app.address))
        .send_json(&json!({ "prompt": "One task too many" }))
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 429);
    let retry_after = refused
        .headers()
        .get("retry-after")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    assert_eq!(retry_after, Some(1));
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_tasks", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("max_queued_tasks"), "{message}");
    let (_, list) = app.get("/api/v1/tasks").await;
    let stored: Vec<&str> = list["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|task| task["id"].as_str())
        .collect();
    assert_eq!(stored.len(), 2, "the refused task left no row: {list}");

    // The admitted tasks end (cancelled); their places are given back.
    for id in [&waiting, &running] {
        let (status, body) = app.post(&format!("/api/v1/tasks/{id}/cancel")).await;
        assert!(status == 202 || status == 409, "{status} {body}");
    }
    for id in [&waiting, &running] {
        let events = app.follow(id, 0, std::time::Duration::from_secs(120)).await;
        let last = events.last().unwrap();
        assert!(
            ["task.cancelled", "task.completed", "task.failed"]
                .contains(&last["kind"].as_str().unwrap()),
            "{last}"
        );
    }
    // The place is given back once the flow has ended, just after the terminal event: allow it a moment.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (status, body) = app
            .post_task(&json!({ "prompt": "Explain a loop in one sentence" }))
            .await;
        if status == 202 {
            break;
        }
        assert_eq!(status, 429, "{body}");
        assert!(std::time::Instant::now() < deadline, "no place given back");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// `DELETE /api/v1/tasks/{id}`: 409 while the task runs, then (once it has ended) 200, after which the task,
/// its events and its model calls are gone and the deletion is counted; unknown and malformed ids are 404
/// and 400.
#[actix_rt::test]
async fn a_finished_task_can_be_deleted_and_an_unfinished_one_cannot() {
    let app = spawn_app().await;
    let id = app.submit("Explain recursion in one sentence").await;
    let mut running = app
        .client
        .delete(format!("{}/api/v1/tasks/{id}", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(
        running.status().as_u16(),
        409,
        "a running task is not deleted"
    );
    let body: Value = running.json().await.unwrap();
    assert_eq!(body["error"]["code"], "task_unfinished", "{body}");
    let (status, _) = app.post(&format!("/api/v1/tasks/{id}/cancel")).await;
    assert!(status == 202 || status == 409, "{status}");
    let events = app
        .follow(&id, 0, std::time::Duration::from_secs(120))
        .await;
    assert!(!events.is_empty());

    let delete = |path: String| {
        let client = app.client.clone();
        async move {
            let mut response = client.delete(path).send().await.unwrap();
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            (status, body)
        }
    };
    let (status, body) = delete(format!("{}/api/v1/tasks/{id}", app.address)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["deleted"], true);
    let (status, body) = app.get(&format!("/api/v1/tasks/{id}")).await;
    assert_eq!(status, 404, "{body}");
    let (status, _) = app.get(&format!("/api/v1/tasks/{id}/events")).await;
    assert_eq!(status, 404);
    let (_, list) = app.get("/api/v1/tasks").await;
    assert!(list["tasks"].as_array().unwrap().is_empty(), "{list}");
    let scrape = app.metrics().await;
    assert_eq!(
        crate::helpers::metric_value(&scrape, "troupe_tasks_deleted_total{reason=\"request\"}"),
        1.0
    );

    let (status, body) = delete(format!("{}/api/v1/tasks/{id}", app.address)).await;
    assert_eq!(status, 404, "deleted twice: {body}");
    assert_eq!(body["error"]["code"], "task_not_found");
    let (status, body) = delete(format!("{}/api/v1/tasks/not-a-task", app.address)).await;
    assert_eq!(status, 400, "{body}");
}
