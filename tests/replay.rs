//! Replay: a finished task replayed with the `replay` provider (its recorded model outputs, no model)
//! produces the same plan, the same decisions with the same probabilities, and the same result.

use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::{of_kind, spawn_app};

#[actix_rt::test]
async fn a_replayed_task_makes_the_same_plan_and_decisions() {
    let app = spawn_app().await;
    let original = app
        .submit("Write a Python function that returns the largest of three numbers")
        .await;
    let first = app.follow(&original, 0, Duration::from_secs(120)).await;
    assert_eq!(first.last().unwrap()["kind"], "task.completed");

    let replay = app.submit_with(json!({ "prompt": "Write a Python function that returns the largest of three numbers", "options": { "replay_of": original } })).await;
    let second = app.follow(&replay, 0, Duration::from_secs(30)).await;
    assert_eq!(second.last().unwrap()["kind"], "task.completed");
    // It asked what the original asked (its plan sees memory as the original did, without the
    // original's own summary), so nothing diverged.
    assert!(
        of_kind(&second, "replay.diverged").is_empty(),
        "{second:#?}"
    );

    assert_eq!(
        of_kind(&first, "plan.created")[0]["data"],
        of_kind(&second, "plan.created")[0]["data"]
    );
    let decisions = |events: &[Value]| -> Vec<Value> {
        of_kind(events, "decision.made")
            .into_iter()
            .map(|d| {
                json!([
                    d["data"]["step"],
                    d["data"]["chosen"],
                    d["data"]["options"],
                    d["data"]["reasoning"]
                ])
            })
            .collect()
    };
    assert!(!decisions(&first).is_empty());
    assert_eq!(decisions(&first), decisions(&second));

    let (_, a) = app.get(&format!("/api/v1/tasks/{original}")).await;
    let (_, b) = app.get(&format!("/api/v1/tasks/{replay}")).await;
    assert_eq!(b["replay_of"], original.as_str());
    assert_eq!(a["result"]["answer"], b["result"]["answer"]);
    assert_eq!(b["result"]["provider"], "replay");
    assert_eq!(a["result"]["verdict"], b["result"]["verdict"]);
}
