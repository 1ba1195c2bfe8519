//! Bounds and retention on the real app: finished tasks past `retention.days` are swept at start-up (memories
//! and newer tasks stay) and `DELETE` removes one, on SQLite and on PostgreSQL; WebSocket streams beyond
//! `server.max_websockets` get 429; the JSON event history is never read whole; a step whose agent timed out
//! is stopped on the old incarnation, so its late model call never collides with the retry's.

use std::time::Duration;

use chrono::Utc;
use sea_orm::sea_query::{Alias, Expr, Query};
use sea_orm::{ConnectionTrait, Database};
use serde_json::{json, Value};
use troupe::config::DatabaseSettings;
use troupe::domain::{EventKind, TaskId, TaskStatus};
use troupe::events::Hub;
use troupe::storage::records::{PendingEvent, TaskEnd};
use troupe::storage::writer::Writer;
use troupe::storage::Storage;
use troupe::telemetry::metrics::Metrics;

use crate::helpers::{kinds, metric_value, spawn_app_with};
use crate::postgres::{store_queued_task, TestDatabase};

/// Stores a finished task on `url` that ended `days_ago` days ago; returns its id.
async fn finished_task(url: &str, days_ago: i64) -> TaskId {
    use sea_orm::sea_query::ExprTrait;
    let storage = Storage::connect(&DatabaseSettings {
        url: url.to_owned(),
        max_connections: 2,
        writer_queue: troupe::storage::writer::DEFAULT_QUEUE,
    })
    .await
    .unwrap();
    storage.migrate().await.unwrap();
    let writer = Writer::spawn(storage, Hub::new(), Metrics::new().unwrap());
    let id = store_queued_task(&writer).await;
    writer
        .finish_task(TaskEnd {
            task_id: id,
            status: TaskStatus::Completed,
            result: Some(json!({ "answer": "done" })),
            error: None,
            event: PendingEvent::now(id, EventKind::TaskCompleted, None, json!({})),
            memories: Vec::new(),
        })
        .await
        .unwrap();
    let db = Database::connect(url).await.unwrap();
    let ended = Utc::now() - chrono::Duration::days(days_ago);
    let update = Query::update()
        .table(Alias::new("tasks"))
        .value(Alias::new("finished_at"), ended)
        .and_where(Expr::col(Alias::new("id")).eq(id.to_string()))
        .to_owned();
    let statement = db.get_database_backend().build(&update);
    db.execute_raw(statement).await.unwrap();
    db.close().await.unwrap();
    id
}

/// The sweep at start-up removes the task past retention, keeps the newer one, counts what it removed; a
/// `DELETE` then removes the newer one.
async fn retention_and_delete(url: String) {
    let old = finished_task(&url, 40).await;
    let recent = finished_task(&url, 2).await;
    let app = spawn_app_with(move |settings| {
        settings.database.url = url;
        settings.retention.days = 30;
    })
    .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (status, _) = app.get(&format!("/api/v1/tasks/{old}")).await;
        if status == 404 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the old task was not swept"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, _) = app.get(&format!("/api/v1/tasks/{old}/events")).await;
    assert_eq!(status, 404);
    let (status, task) = app.get(&format!("/api/v1/tasks/{recent}")).await;
    assert_eq!(status, 200, "a task within retention stays: {task}");
    let scrape = app.metrics().await;
    assert_eq!(
        metric_value(&scrape, "troupe_tasks_deleted_total{reason=\"retention\"}"),
        1.0,
        "{scrape}"
    );

    let mut response = app
        .client
        .delete(format!("{}/api/v1/tasks/{recent}", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["deleted"], true);
    let (status, _) = app.get(&format!("/api/v1/tasks/{recent}")).await;
    assert_eq!(status, 404);
    let scrape = app.metrics().await;
    assert_eq!(
        metric_value(&scrape, "troupe_tasks_deleted_total{reason=\"request\"}"),
        1.0
    );
}

#[actix_rt::test]
async fn old_finished_tasks_are_swept_and_one_can_be_deleted_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/kept.sqlite?mode=rwc", dir.path().display());
    retention_and_delete(url).await;
}

#[actix_rt::test]
async fn old_finished_tasks_are_swept_and_one_can_be_deleted_on_postgres() {
    let database = TestDatabase::create().await;
    retention_and_delete(database.url.clone()).await;
    database.drop_now().await;
}

#[actix_rt::test]
async fn a_websocket_beyond_the_limit_gets_429_and_a_freed_place_is_reused() {
    let app = spawn_app_with(|settings| settings.server.max_websockets = 2).await;
    let url = format!("ws://127.0.0.1:{}/api/v1/events", app.port);
    let (_, first) = awc::Client::new().ws(&url).connect().await.unwrap();
    let (_, second) = awc::Client::new().ws(&url).connect().await.unwrap();
    let refused = awc::Client::new().ws(&url).connect().await;
    let Err(awc::error::WsClientError::InvalidResponseStatus(status)) = refused else {
        panic!("a third stream was accepted")
    };
    assert_eq!(status.as_u16(), 429);
    // The body says why, as JSON, with a Retry-After.
    let mut plain = app
        .client
        .get(&url.replace("ws://", "http://"))
        .insert_header(("Connection", "Upgrade"))
        .insert_header(("Upgrade", "websocket"))
        .insert_header(("Sec-WebSocket-Version", "13"))
        .insert_header(("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="))
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status().as_u16(), 429);
    assert_eq!(
        plain
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let body: Value = plain.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_connections", "{body}");
    drop(first);
    // The server notices the closed socket and gives its place back.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if awc::Client::new().ws(&url).connect().await.is_ok() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the place of a closed stream was not given back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(second);
}

#[actix_rt::test]
async fn the_json_history_comes_in_bounded_pages_with_a_next_cursor() {
    let app = spawn_app_with(|_| {}).await;
    let id = app.submit("Explain what a queue is in one sentence").await;
    let events = app.follow(&id, 0, Duration::from_secs(120)).await;
    let (status, page) = app.get(&format!("/api/v1/tasks/{id}/events")).await;
    assert_eq!(status, 200);
    // Under the default page size the whole log fits, and `next` says nothing follows.
    assert_eq!(page["events"].as_array().unwrap().len(), events.len());
    assert!(page["next"].is_null(), "{}", page["next"]);
    let (_, first) = app.get(&format!("/api/v1/tasks/{id}/events?limit=2")).await;
    assert_eq!(first["events"].as_array().unwrap().len(), 2);
    assert_eq!(first["next"], 2);
    let (_, rest) = app.get(&format!("/api/v1/tasks/{id}/events?after=2")).await;
    assert_eq!(rest["events"].as_array().unwrap().len(), events.len() - 2);
    assert_eq!(rest["events"][0]["seq"], 3);
}

#[actix_rt::test]
async fn a_timed_out_step_is_stopped_on_the_old_incarnation_and_its_retry_records_its_own_calls() {
    // The real model takes seconds per step: with a one-second step timeout every try of the first step
    // times out. Before the fix the replaced incarnation kept generating and recorded its call afterwards,
    // under the purpose the retry used too.
    let app = spawn_app_with(|settings| {
        settings.director.step_timeout_seconds = 1;
        settings.director.step_retries = 1;
        settings.supervision.max_restarts = 10;
    })
    .await;
    let id = app
        .submit("Write a detailed essay about the history of computing")
        .await;
    let events = app.follow(&id, 0, Duration::from_secs(180)).await;
    let kinds = kinds(&events);
    let timeouts: Vec<_> = events
        .iter()
        .filter(|e| e["kind"] == "agent.restarted" && e["data"]["reason"] == "timeout")
        .collect();
    // Both tries of the step that fails time out; on a fast machine an earlier step may time out once and
    // pass on its retry.
    assert!(
        timeouts.len() >= 2,
        "both tries of the step time out: {kinds:?}"
    );
    assert_eq!(kinds.last().unwrap(), "task.failed", "{kinds:?}");
    let (_, task) = app.get(&format!("/api/v1/tasks/{id}")).await;
    assert!(
        task["error"]
            .as_str()
            .unwrap()
            .contains("no answer within 1 s"),
        "{task}"
    );
    // Give a still-working incarnation the time to finish its call, then look at what was recorded and
    // whether any write failed.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let (_, calls) = app.get(&format!("/api/v1/tasks/{id}/llm-calls")).await;
    let purposes: Vec<&str> = calls["calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|call| call["purpose"].as_str().unwrap())
        .collect();
    // The step whose tries all timed out, from the task's error ("step N on <agent>: ..."): an earlier step
    // the model finished within the second is recorded as it should be; nothing of this one may be.
    let error = task["error"].as_str().unwrap();
    let step: i64 = error
        .strip_prefix("step ")
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the error names its step: {error}"));
    let own = |purpose: &&str| {
        [format!("work.{step}"), format!("test.{step}")]
            .iter()
            .any(|prefix| purpose == prefix || purpose.starts_with(&format!("{prefix}.")))
            || purpose.starts_with("verify")
    };
    assert!(
        !purposes.iter().any(own),
        "a stopped incarnation recorded a call for step {step}: {purposes:?}"
    );
    let scrape = app.metrics().await;
    let batch_errors = "troupe_store_write_errors_total{op=\"batch\"}";
    assert!(scrape.contains(batch_errors), "{scrape}");
    assert_eq!(metric_value(&scrape, batch_errors), 0.0, "{scrape}");
}
