//! Plans as graphs over the API (issue 18): a scripted plan (the replay provider) of two independent code
//! steps and a third that depends on both, run for real (files, tests in the real sandbox, each test taking a
//! second and a half so that the steps' times can be compared): the two run at once, each on its own
//! instance of Code, and the third starts only after both; a task asking for more steps than
//! `director.max_steps` is refused.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::helpers::of_kind;
use crate::scripts::{diamond, seed_recording, three_steps};
use crate::self_correction::{app_on, app_on_with};

fn at(value: &Value) -> DateTime<Utc> {
    value
        .as_str()
        .and_then(|text| text.parse().ok())
        .unwrap_or_else(|| panic!("not a time: {value}"))
}

#[actix_rt::test]
async fn independent_steps_run_at_once_and_a_dependent_one_after_both() {
    let dir = tempfile::tempdir().unwrap();
    let (app, url) = app_on_with(&dir, 1, three_steps).await;
    let source = seed_recording(&url, &diamond()).await;
    let id = app
        .submit_with(json!({
            "prompt": "Write add(a, b) and mul(a, b), then explain them",
            "options": { "replay_of": source }
        }))
        .await;
    let events = app.follow(&id, 0, Duration::from_secs(90)).await;
    assert_eq!(
        events.last().unwrap()["kind"],
        "task.completed",
        "{events:#?}"
    );
    let plan = of_kind(&events, "plan.created");
    assert_eq!(plan[0]["data"]["depends_on"], json!([[], [], [1, 2]]));

    let (_, task) = app.get(&format!("/api/v1/tasks/{id}")).await;
    let steps = task["steps"].as_array().unwrap();
    let shape: Vec<(i64, &str, Value)> = steps
        .iter()
        .map(|step| {
            (
                step["idx"].as_i64().unwrap(),
                step["agent"].as_str().unwrap(),
                step["depends_on"].clone(),
            )
        })
        .collect();
    assert_eq!(
        shape,
        vec![
            (1, "code", json!([])),
            (2, "code", json!([])),
            (3, "research", json!([1, 2])),
            (4, "qa", json!([1, 2, 3])),
        ]
    );
    // Steps 1 and 2 ran at once: each started before the other ended (each took over 3 s: its test and the
    // stub check each sleep 1.5 s); step 3 started after both had ended, and the verification after it.
    let span = |step: &Value| (at(&step["started_at"]), at(&step["finished_at"]));
    let (one_start, one_end) = span(&steps[0]);
    let (two_start, two_end) = span(&steps[1]);
    assert!(
        one_start < two_end && two_start < one_end,
        "steps 1 and 2 did not overlap: {steps:#?}"
    );
    assert!(
        one_end - one_start > chrono::Duration::seconds(3),
        "{steps:#?}"
    );
    let (three_start, three_end) = span(&steps[2]);
    assert!(
        three_start >= one_end.max(two_end),
        "step 3 started before its dependencies ended: {steps:#?}"
    );
    assert!(at(&steps[3]["started_at"]) >= three_end, "{steps:#?}");

    // Each code step went to its own instance of Code, and step 3 was shown what it waits for.
    let started: Vec<&Value> = of_kind(&events, "agent.started")
        .into_iter()
        .filter(|event| event["data"]["kind"] == "work")
        .collect();
    let instance_of = |step: i64| {
        started
            .iter()
            .find(|event| event["data"]["step"] == step)
            .map(|event| event["data"]["instance"].clone())
            .unwrap()
    };
    assert_ne!(instance_of(1), instance_of(2), "{started:#?}");
    let third = started
        .iter()
        .find(|event| event["data"]["step"] == 3)
        .unwrap();
    assert_eq!(third["data"]["after"], json!([1, 2]));
    let (_, agents) = app.get("/api/v1/agents").await;
    let code = agents["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|agent| agent["name"] == "code")
        .unwrap();
    assert_eq!(code["instances"], 2, "{agents}");
    // The research step's table is in the result, read as a table with its numeric column.
    assert_eq!(
        task["result"]["tables"],
        json!([{ "step": 3, "table": {
            "columns": ["function", "f(2, 3)"],
            "rows": [["add", "5"], ["mul", "6"]],
            "numeric": [false, true]
        } }])
    );
    assert_eq!(code["busy"], json!([0, 0]), "{agents}");
}

#[actix_rt::test]
async fn more_steps_than_the_configured_bound_is_refused_not_clamped() {
    let dir = tempfile::tempdir().unwrap();
    let (app, _url) = app_on(&dir, 1).await;
    // The test profile's bound is 2.
    let (status, body) = app
        .post_task(&json!({ "prompt": "Write add(a, b)", "options": { "max_steps": 3 } }))
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_option", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("1..=2 (director.max_steps), got 3"),
        "{message}"
    );
    let (_, page) = app.get("/api/v1/tasks").await;
    assert_eq!(page["tasks"], json!([]), "nothing stored: {page}");
    // The document served says the same bound.
    let (_, document) = app.get("/api/v1/openapi.json").await;
    assert_eq!(
        document["components"]["schemas"]["TaskOptions"]["properties"]["max_steps"]["maximum"],
        2
    );
}
