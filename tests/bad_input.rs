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
