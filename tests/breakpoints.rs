//! Breakpoints (issue 16, debug mode) on the real app: set, listed, shown and removed over HTTP, and in
//! force in the core's registry (what the pause engine asks); every kind of bad input is a 4xx naming the
//! problem and stores nothing; breakpoints survive a restart (a second app on the same database lists them)
//! and go with their task's deletion (`DELETE /api/v1/tasks/{id}` and the retention sweep), on SQLite and
//! PostgreSQL; the `troupe debug break` CLI against a running app.
//!
//! Pausing is not tested here (it is the Director's, built on `Breakpoints::matching`).

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use troupe::app::Application;
use troupe::config::DatabaseSettings;
use troupe::domain::{
    AgentKind, BreakOn, Breakpoint, BreakpointId, BreakpointSpec, Condition, EventKind, PausePoint,
    TaskId, TaskStatus,
};
use troupe::events::Hub;
use troupe::storage::records::{PendingEvent, TaskEnd};
use troupe::storage::writer::Writer;
use troupe::storage::Storage;
use troupe::telemetry::metrics::Metrics;

use crate::helpers::{metric_value, root, spawn_app_with, test_settings, TestApp};
use crate::postgres::{store_queued_task, TestDatabase};

/// Sets a breakpoint (asserting 201) and returns it.
async fn set(app: &TestApp, body: Value) -> Value {
    let (status, breakpoint) = app.post_json("/api/v1/breakpoints", &body).await;
    assert_eq!(status, 201, "{body} -> {breakpoint}");
    breakpoint
}

/// The breakpoints `GET /api/v1/breakpoints` lists.
async fn listed(app: &TestApp) -> Vec<Value> {
    let (status, body) = app.get("/api/v1/breakpoints").await;
    assert_eq!(status, 200, "{body}");
    body["breakpoints"].as_array().unwrap().clone()
}

#[actix_rt::test]
async fn breakpoints_are_set_listed_shown_removed_and_in_force_in_the_core() {
    let dir = tempfile::tempdir().unwrap();
    let application = Application::build(test_settings(&dir)).await.unwrap();
    let core = application.core();
    let port = application.port();
    actix_rt::spawn(application.run_until_stopped());
    let app = TestApp::at(port, dir);

    let mut response = app
        .client
        .post(format!("{}/api/v1/breakpoints", app.address))
        .send_json(&json!({ "on": "decision", "kind": "assign_agent", "when": "confidence<0.6" }))
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);
    let unsure: Value = response.json().await.unwrap();
    let id = unsure["id"].as_str().unwrap().to_owned();
    assert_eq!(
        response
            .headers()
            .get("location")
            .unwrap()
            .to_str()
            .unwrap(),
        format!("/api/v1/breakpoints/{id}")
    );
    assert_eq!(unsure["on"], "decision");
    assert_eq!(unsure["kind"], "assign_agent");
    assert_eq!(
        unsure["when"], "confidence < 0.6",
        "stored in canonical form"
    );
    for key in ["agent", "tool", "step", "purpose", "task_id"] {
        assert_eq!(unsure[key], Value::Null, "{key}: {unsure}");
    }
    assert!(unsure["created_at"].is_string());
    let second_attempt = set(
        &app,
        json!({ "on": "tool", "tool": "run_code", "agent": "qa", "when": "attempt >= 2" }),
    )
    .await;

    assert_eq!(
        listed(&app).await,
        vec![unsure.clone(), second_attempt.clone()]
    );
    let (status, shown) = app.get(&format!("/api/v1/breakpoints/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(shown, unsure);

    // In force in the core's registry, the one the pause engine asks, first match in creation order.
    let task = TaskId::new();
    let low = PausePoint::decision(AgentKind::Director, "assign_agent")
        .at_step(1)
        .with("confidence", json!(0.41));
    let matched = core.breakpoints.matching(task, &low).unwrap();
    assert_eq!(matched.id.to_string(), id);
    assert!(core
        .breakpoints
        .matching(task, &low.clone().with("confidence", json!(0.9)))
        .is_none());
    let retry = PausePoint::tool(AgentKind::Qa, "run_code").with("attempt", json!(2));
    assert_eq!(
        core.breakpoints
            .matching(task, &retry)
            .map(|b| b.id.to_string()),
        second_attempt["id"].as_str().map(str::to_owned)
    );
    core.breakpoints.record_hit(&matched);

    let scrape = app.metrics().await;
    assert_eq!(metric_value(&scrape, "troupe_breakpoints"), 2.0, "{scrape}");
    assert_eq!(
        metric_value(&scrape, "troupe_breakpoint_hits_total{on=\"decision\"}"),
        1.0
    );
    assert!(
        scrape.contains("troupe_breakpoint_hits_total{on=\"llm\"} 0"),
        "every kind of point exported at 0"
    );

    let (status, body) = app.delete(&format!("/api/v1/breakpoints/{id}")).await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(body, Value::Null, "204 has no body");
    let (status, body) = app.get(&format!("/api/v1/breakpoints/{id}")).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "breakpoint_not_found");
    let (status, body) = app.delete(&format!("/api/v1/breakpoints/{id}")).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(
        body["error"]["message"],
        format!("breakpoint {id} does not exist")
    );
    assert_eq!(listed(&app).await, vec![second_attempt]);
    assert!(core.breakpoints.matching(task, &low).is_none());
    assert_eq!(
        metric_value(&app.metrics().await, "troupe_breakpoints"),
        1.0
    );

    let (_, doc) = app.get("/api/v1/openapi.json").await;
    for (route, methods) in [
        ("/api/v1/breakpoints", &["post", "get"][..]),
        ("/api/v1/breakpoints/{id}", &["get", "delete"][..]),
    ] {
        for method in methods {
            assert!(doc["paths"][route][method].is_object(), "{method} {route}");
        }
    }
}

#[actix_rt::test]
async fn every_kind_of_bad_breakpoint_gets_a_4xx_naming_the_problem_and_stores_nothing() {
    let app = spawn_app_with(|_| {}).await;
    let unknown_task = TaskId::new();
    let cases: Vec<(Value, u16, &str, String)> = vec![
        (json!({}), 400, "invalid_body", "missing field `on`".into()),
        (json!({ "on": "model" }), 400, "invalid_body", "unknown variant `model`".into()),
        (
            json!({ "on": "decision", "colour": "red" }),
            400,
            "invalid_body",
            "unknown field `colour`".into(),
        ),
        (json!({ "on": "decision", "agent": "coder" }), 400, "invalid_body", "unknown variant `coder`".into()),
        (json!({ "on": "step", "step": "two" }), 400, "invalid_body", "invalid type".into()),
        (json!({ "on": "step", "task_id": "nope" }), 400, "invalid_body", "UUID".into()),
        (
            json!({ "on": "decision", "kind": "route" }),
            400,
            "invalid_breakpoint",
            "unknown decision kind 'route'; the decision kinds are assign_agent".into(),
        ),
        (
            json!({ "on": "tool", "tool": "rm_rf" }),
            400,
            "invalid_breakpoint",
            "unknown tool 'rm_rf'; the tools are".into(),
        ),
        (
            json!({ "on": "decision", "kind": "assign_agent", "when": "confidence 0.6" }),
            400,
            "invalid_breakpoint",
            "when: expected a comparison operator (<, <=, >, >=, ==, !=) after 'confidence', found the number 0.6 at column 12".into(),
        ),
        (
            json!({ "on": "decision", "when": "confidence < 0.6 and" }),
            400,
            "invalid_breakpoint",
            "at column 21".into(),
        ),
        (
            json!({ "on": "decision", "when": format!("step == {}", "1".repeat(300)) }),
            400,
            "invalid_breakpoint",
            "at most 256 are allowed".into(),
        ),
        (
            json!({ "on": "step", "tool": "run_code" }),
            400,
            "invalid_breakpoint",
            "'tool' does not apply to breakpoints on step".into(),
        ),
        (
            json!({ "on": "step", "step": 0 }),
            400,
            "invalid_breakpoint",
            "step must be within 1..=9".into(),
        ),
        (
            json!({ "on": "llm", "purpose": "p".repeat(65) }),
            400,
            "invalid_breakpoint",
            "purpose has 65 characters; at most 64 are allowed".into(),
        ),
        (
            json!({ "on": "tool", "when": "confidence < 0.5" }),
            400,
            "invalid_breakpoint",
            "'confidence' is not known at tool points".into(),
        ),
        (
            json!({ "on": "decision", "kind": "verdict", "agent": "director" }),
            400,
            "invalid_breakpoint",
            "verdict decisions are made by qa, not director".into(),
        ),
        (
            json!({ "on": "decision", "task_id": unknown_task }),
            404,
            "task_not_found",
            format!("task {unknown_task} does not exist"),
        ),
    ];
    for (body, status, code, message) in cases {
        let (got, answer) = app.post_json("/api/v1/breakpoints", &body).await;
        assert_eq!(got, status, "{body} -> {answer}");
        assert_eq!(answer["error"]["code"], code, "{body} -> {answer}");
        let text = answer["error"]["message"].as_str().unwrap();
        assert!(
            text.contains(&message),
            "{body}: '{text}' lacks '{message}'"
        );
    }

    // Not JSON, not declared JSON.
    let mut response = app
        .client
        .post(format!("{}/api/v1/breakpoints", app.address))
        .insert_header(("content-type", "application/json"))
        .send_body("{\"on\": ")
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_json", "{body}");
    let mut response = app
        .client
        .post(format!("{}/api/v1/breakpoints", app.address))
        .insert_header(("content-type", "text/plain"))
        .send_body("on decision")
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 415);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unsupported_media_type");

    // Bad ids and queries.
    let missing = BreakpointId::new();
    for (path, status, code) in [
        ("/api/v1/breakpoints/abc".to_owned(), 400, "invalid_id"),
        (
            format!("/api/v1/breakpoints/{missing}"),
            404,
            "breakpoint_not_found",
        ),
        (
            "/api/v1/breakpoints?task_id=abc".to_owned(),
            400,
            "invalid_query",
        ),
        (
            format!("/api/v1/breakpoints?task_id={unknown_task}"),
            404,
            "task_not_found",
        ),
        (
            "/api/v1/breakpoints?colour=red".to_owned(),
            400,
            "invalid_query",
        ),
    ] {
        let (got, body) = app.get(&path).await;
        assert_eq!(got, status, "{path}: {body}");
        assert_eq!(body["error"]["code"], code, "{path}: {body}");
    }
    let (status, body) = app.get("/api/v1/breakpoints/abc").await;
    assert_eq!(status, 400);
    assert_eq!(
        body["error"]["message"],
        "'abc' is not a breakpoint id (a UUID)"
    );
    let (status, body) = app.delete(&format!("/api/v1/breakpoints/{missing}")).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("breakpoint_not_found"))
    );
    let mut response = app
        .client
        .put(format!("{}/api/v1/breakpoints", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 405);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "method_not_allowed");

    assert!(listed(&app).await.is_empty(), "nothing was stored");
    assert_eq!(
        metric_value(&app.metrics().await, "troupe_breakpoints"),
        0.0
    );
}

/// Waits (bounded) until task `id` has finished; returns its status.
async fn finished(app: &TestApp, id: &str) -> String {
    let task = app
        .wait_for_task(id, Duration::from_secs(120), |task| {
            ["completed", "failed", "cancelled"].contains(&task["status"].as_str().unwrap_or(""))
        })
        .await;
    task["status"].as_str().unwrap().to_owned()
}

/// Breakpoints set on one app are listed, equal, by another app started on the same database; a task's
/// deletion there removes its attached breakpoint from the database, so a third app does not list it.
async fn breakpoints_survive_a_restart(url: String) {
    let first = {
        let url = url.clone();
        spawn_app_with(move |settings| settings.database.url = url).await
    };
    let every_decision = set(&first, json!({ "on": "decision" })).await;
    let unsure = set(
        &first,
        json!({ "on": "decision", "kind": "assign_agent", "step": 2, "when": "(confidence < 0.6 or probability < 0.5) and round == 1" }),
    )
    .await;
    let task = first.submit("Name three prime numbers").await;
    let attached = set(
        &first,
        json!({ "on": "llm", "purpose": "work", "task_id": task }),
    )
    .await;
    assert_eq!(attached["task_id"], task);
    let (status, body) = first.post(&format!("/api/v1/tasks/{task}/cancel")).await;
    assert!(status == 202 || status == 409, "{status} {body}");
    finished(&first, &task).await;
    let (_, events) = first.get(&format!("/api/v1/tasks/{task}/events")).await;
    let set_events: Vec<&Value> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|event| event["kind"] == "breakpoint.set")
        .collect();
    assert_eq!(set_events.len(), 1, "{events}");
    assert_eq!(set_events[0]["data"]["breakpoint"], attached);
    // A finished task takes no more.
    let (status, body) = first
        .post_json(
            "/api/v1/breakpoints",
            &json!({ "on": "step", "task_id": task }),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("task_finished")),
        "{body}"
    );

    let second = {
        let url = url.clone();
        spawn_app_with(move |settings| settings.database.url = url).await
    };
    assert_eq!(
        listed(&second).await,
        vec![every_decision.clone(), unsure.clone(), attached.clone()],
        "the same breakpoints, in the same order, after a restart"
    );
    let (status, only) = second
        .get(&format!("/api/v1/breakpoints?task_id={task}"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(only["breakpoints"], json!([attached]));
    assert_eq!(
        metric_value(&second.metrics().await, "troupe_breakpoints"),
        3.0
    );

    // The task's deletion takes its breakpoint along; removing one by id is stored too.
    let (status, body) = second.delete(&format!("/api/v1/tasks/{task}")).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = second
        .get(&format!(
            "/api/v1/breakpoints/{}",
            attached["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(status, 404);
    let (status, _) = second
        .delete(&format!(
            "/api/v1/breakpoints/{}",
            every_decision["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(status, 204);
    assert_eq!(listed(&second).await, vec![unsure.clone()]);

    let third = spawn_app_with(move |settings| settings.database.url = url).await;
    assert_eq!(listed(&third).await, vec![unsure]);
}

#[actix_rt::test]
async fn breakpoints_survive_a_restart_and_go_with_their_task_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/kept.sqlite?mode=rwc", dir.path().display());
    breakpoints_survive_a_restart(url).await;
}

#[actix_rt::test]
async fn breakpoints_survive_a_restart_and_go_with_their_task_on_postgres() {
    let database = TestDatabase::create().await;
    breakpoints_survive_a_restart(database.url.clone()).await;
    database.drop_now().await;
}

/// The retention sweep at start-up removes an old finished task with its breakpoint; a recent task's
/// breakpoint stays.
async fn retention_takes_breakpoints_along(url: String) {
    let storage = Storage::connect(&DatabaseSettings {
        url: url.clone(),
        max_connections: 2,
        writer_queue: troupe::storage::writer::DEFAULT_QUEUE,
    })
    .await
    .unwrap();
    storage.migrate().await.unwrap();
    let writer = Writer::spawn(storage.clone(), Hub::new(), Metrics::new().unwrap());
    let mut kept = Vec::new();
    for days_ago in [40, 2] {
        let id = store_queued_task(&writer).await;
        // Attached while the task is queued, straight through the writer (the API checks the same).
        let breakpoint = Breakpoint {
            id: BreakpointId::new(),
            spec: BreakpointSpec {
                when: Some(Condition::parse("attempt > 1").unwrap()),
                task_id: Some(id),
                ..BreakpointSpec::on(BreakOn::Step)
            },
            created_at: chrono::Utc::now(),
        };
        writer.insert_breakpoint(breakpoint.clone()).await.unwrap();
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
        age(&url, id, days_ago).await;
        kept.push((id, breakpoint));
    }
    let [(old, old_breakpoint), (recent, recent_breakpoint)] = <[_; 2]>::try_from(kept).unwrap();
    let app = {
        let url = url.clone();
        spawn_app_with(move |settings| {
            settings.database.url = url;
            settings.retention.days = 30;
        })
        .await
    };
    // The sweep deletes, then takes the breakpoint out of force: wait for both.
    let deadline = Instant::now() + Duration::from_secs(20);
    let recent_only = vec![json!(recent_breakpoint.id.to_string())];
    loop {
        let (status, _) = app.get(&format!("/api/v1/tasks/{old}")).await;
        let ids: Vec<Value> = listed(&app).await.iter().map(|b| b["id"].clone()).collect();
        if status == 404 && ids == recent_only {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the old task ({status}) or its breakpoint ({ids:?}) was not swept"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(storage.breakpoint(old_breakpoint.id).await.unwrap(), None);
    assert_eq!(
        storage
            .breakpoint(recent_breakpoint.id)
            .await
            .unwrap()
            .map(|b| b.id),
        Some(recent_breakpoint.id)
    );
    let (status, _) = app.get(&format!("/api/v1/tasks/{recent}")).await;
    assert_eq!(status, 200);
}

/// Moves task `id`'s end `days_ago` days into the past.
async fn age(url: &str, id: TaskId, days_ago: i64) {
    use sea_orm::sea_query::{Alias, Expr, ExprTrait, Query};
    use sea_orm::{ConnectionTrait, Database};
    let db = Database::connect(url).await.unwrap();
    let ended = chrono::Utc::now() - chrono::Duration::days(days_ago);
    let update = Query::update()
        .table(Alias::new("tasks"))
        .value(Alias::new("finished_at"), ended)
        .and_where(Expr::col(Alias::new("id")).eq(id.to_string()))
        .to_owned();
    let statement = db.get_database_backend().build(&update);
    db.execute_raw(statement).await.unwrap();
    db.close().await.unwrap();
}

#[actix_rt::test]
async fn the_retention_sweep_takes_a_tasks_breakpoints_along_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/swept.sqlite?mode=rwc", dir.path().display());
    retention_takes_breakpoints_along(url).await;
}

#[actix_rt::test]
async fn the_retention_sweep_takes_a_tasks_breakpoints_along_on_postgres() {
    let database = TestDatabase::create().await;
    retention_takes_breakpoints_along(database.url.clone()).await;
    database.drop_now().await;
}

/// `troupe debug break ...` with `args` against `server`: exit code, stdout, stderr.
async fn cli(server: &str, args: &[&str]) -> (i32, String, String) {
    let args: Vec<&str> = ["break"].into_iter().chain(args.iter().copied()).collect();
    troupe_debug(server, &args).await
}

/// `troupe debug ...` with `args` against `server`: exit code, stdout, stderr.
pub(crate) async fn troupe_debug(server: &str, args: &[&str]) -> (i32, String, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_troupe"))
        .arg("debug")
        .args(args)
        .args(["--server", server])
        .env("TROUPE_CONFIG_DIR", root().join("config"))
        .env("TROUPE_PROFILE", "test")
        .env_remove("TROUPE__SERVER__AUTH_TOKEN")
        .env_remove("RUST_LOG")
        .output()
        .await
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[actix_rt::test]
async fn the_debug_break_cli_adds_lists_and_removes_breakpoints_on_a_running_server() {
    let app = spawn_app_with(|_| {}).await;
    let server = app.address.clone();

    let (code, out, err) = cli(
        &server,
        &[
            "add",
            "--on",
            "decision",
            "--kind",
            "assign_agent",
            "--when",
            "confidence<0.6",
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let id = out.trim().to_owned();
    assert!(
        id.parse::<BreakpointId>().is_ok(),
        "add prints the id: {out}"
    );
    let (status, stored) = app.get(&format!("/api/v1/breakpoints/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(stored["when"], "confidence < 0.6");
    assert_eq!(stored["kind"], "assign_agent");

    let (code, out, err) = cli(
        &server,
        &[
            "add", "--on", "tool", "--tool", "run_code", "--agent", "qa", "--step", "3", "--json",
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let tool: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (tool["tool"].as_str(), tool["step"].as_i64()),
        (Some("run_code"), Some(3))
    );

    let (code, out, err) = cli(&server, &["list"]).await;
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(
        lines[0].starts_with("ID") && lines[0].ends_with("WHEN"),
        "{out}"
    );
    assert!(
        lines[1].starts_with(&id) && lines[1].ends_with("confidence < 0.6"),
        "{out}"
    );
    assert!(
        lines[2].contains("run_code") && lines[2].contains(" qa "),
        "{out}"
    );
    // Aligned: every column starts where its heading does.
    let on_column = lines[0].find("ON").unwrap();
    assert_eq!(&lines[1][on_column..on_column + 8], "decision", "{out}");
    assert_eq!(&lines[2][on_column..on_column + 4], "tool", "{out}");

    // The server's refusals, printed plainly, exit 1.
    let (code, out, err) = cli(
        &server,
        &["add", "--on", "decision", "--when", "confidence 0.6"],
    )
    .await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.is_empty(), "{out}");
    assert!(
        err.contains("expected a comparison operator (<, <=, >, >=, ==, !=) after 'confidence'")
            && err.contains("at column 12"),
        "{err}"
    );
    let (code, _, err) = cli(&server, &["add", "--on", "breakfast"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("unknown variant `breakfast`"), "{err}");

    let (code, out, err) = cli(&server, &["rm", &id]).await;
    assert_eq!(code, 0, "{out}{err}");
    let (code, _, err) = cli(&server, &["rm", &id]).await;
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!("breakpoint {id} does not exist")),
        "{err}"
    );
    let (code, _, err) = cli(&server, &["rm", "not-an-id"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("'not-an-id' is not a breakpoint id"), "{err}");
    let (code, out, _) = cli(&server, &["list", "--json"]).await;
    assert_eq!(code, 0);
    let remaining: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(remaining.as_array().map(Vec::len), Some(1), "{remaining}");
    let unknown = TaskId::new();
    let (code, out, err) = cli(&server, &["list", "--task", &unknown.to_string()]).await;
    assert_eq!(code, 1, "an unknown task is refused: {out}");
    assert!(
        out.is_empty() && err.contains(&format!("task {unknown} does not exist")),
        "{err}"
    );

    // No server there: an error, exit 2.
    let (code, _, err) = cli("http://127.0.0.1:9", &["list"]).await;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("reach the Troupe server at http://127.0.0.1:9"),
        "{err}"
    );
}
