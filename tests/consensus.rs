//! Swarm consensus over the API (issue 18): a scripted code task (the replay provider) whose verification
//! goes to three voters, one of whom dissents. By majority the work passes, with two thirds agreeing and the
//! dissent named with its reason; each vote is a decision with its probabilities; the outcome is counted.
//! Unanimously, the same votes are no consensus, and the task fails with the dissent's feedback.

use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::{metric_value, of_kind};
use crate::scripts::{code, frame, run_test_call, seed_recording, Output};
use crate::self_correction::app_on_with;

fn vote(voter: u32, verdict: &str, p_pass: f64, feedback: &str) -> Output {
    let purpose: &'static str = match voter {
        1 => "verify.v1",
        2 => "verify.v2",
        _ => "verify.v3",
    };
    (
        purpose,
        json!({ "verdict": verdict, "feedback": feedback }).to_string(),
        Some(json!({
            "options": [
                { "name": "pass", "probability": p_pass },
                { "name": "fail", "probability": 1.0 - p_pass }
            ],
            "chosen": verdict,
            "reasoning": feedback
        })),
    )
}

/// One code step that passes its test, then three votes: pass, pass, and a dissenting fail.
fn voted() -> Vec<Output> {
    let mut outputs = frame();
    outputs.extend([
        ("work.1", code("def add(a, b):\n    return a + b"), None),
        ("test.1", run_test_call(), None),
        vote(1, "pass", 0.9, "add adds"),
        vote(2, "pass", 0.7, "covers the task"),
        vote(3, "fail", 0.2, "no test of negative numbers"),
    ]);
    outputs
}

async fn run(app: &crate::helpers::TestApp, source: &str, rule: &str) -> Vec<Value> {
    let id = app
        .submit_with(json!({
            "prompt": "Write add(a, b)",
            "options": { "replay_of": source, "consensus": { "voters": 3, "rule": rule } }
        }))
        .await;
    app.follow(&id, 0, Duration::from_secs(60)).await
}

#[actix_rt::test]
async fn three_voters_with_one_dissent_pass_by_majority_and_fail_unanimously() {
    let dir = tempfile::tempdir().unwrap();
    let (app, url) = app_on_with(&dir, 1, |settings| settings.director.qa_revisions = 0).await;
    let source = seed_recording(&url, &voted()).await.to_string();

    let events = run(&app, &source, "majority").await;
    assert_eq!(
        events.last().unwrap()["kind"],
        "task.completed",
        "{events:#?}"
    );
    let votes: Vec<&Value> = of_kind(&events, "decision.made")
        .into_iter()
        .filter(|event| event["data"]["kind"] == "vote")
        .collect();
    assert_eq!(votes.len(), 3, "{events:#?}");
    let mut seen: Vec<(i64, String, f64)> = votes
        .iter()
        .map(|event| {
            (
                event["data"]["voter"].as_i64().unwrap(),
                event["data"]["chosen"].as_str().unwrap().to_owned(),
                event["data"]["confidence"].as_f64().unwrap(),
            )
        })
        .collect();
    seen.sort_by_key(|vote| vote.0);
    assert_eq!(
        seen,
        vec![
            (1, "pass".to_owned(), 0.9),
            (2, "pass".to_owned(), 0.7),
            (3, "fail".to_owned(), 0.8)
        ]
    );
    assert!(votes.iter().all(|event| event["data"]["lens"].is_string()));
    let reached = of_kind(&events, "consensus.reached");
    assert_eq!(reached.len(), 1);
    let data = &reached[0]["data"];
    assert_eq!(data["outcome"], "pass", "{data}");
    assert_eq!(data["reached"], true);
    assert_eq!(data["rule"], "majority");
    assert!(
        (data["agreement"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-9,
        "{data}"
    );
    assert_eq!(
        data["dissent"],
        json!([{ "voter": 3, "verdict": "fail", "feedback": "no test of negative numbers" }])
    );
    // QA's verdict is the outcome; the vote came before it.
    let verdict = of_kind(&events, "qa.verdict");
    assert_eq!(verdict[0]["data"]["verdict"], "pass");
    assert!(reached[0]["seq"].as_i64() < verdict[0]["seq"].as_i64());

    // Unanimously, one dissent is no consensus: the verification fails, and with no revision left, the task.
    let events = run(&app, &source, "unanimous").await;
    assert_eq!(events.last().unwrap()["kind"], "task.failed", "{events:#?}");
    let data = &of_kind(&events, "consensus.reached")[0]["data"];
    assert_eq!(data["outcome"], "fail", "{data}");
    assert_eq!(data["reached"], false);
    let error = events.last().unwrap()["data"]["error"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(error.contains("no test of negative numbers"), "{error}");

    let scrape = app.metrics().await;
    assert_eq!(
        metric_value(
            &scrape,
            "troupe_consensus_total{outcome=\"pass\",rule=\"majority\"}"
        ),
        1.0,
        "{scrape}"
    );
    assert_eq!(
        metric_value(
            &scrape,
            "troupe_consensus_total{outcome=\"none\",rule=\"unanimous\"}"
        ),
        1.0
    );
    assert_eq!(
        metric_value(&scrape, "troupe_consensus_agreement_ratio_count"),
        2.0
    );
}

#[actix_rt::test]
async fn a_consensus_of_too_many_voters_or_an_unknown_rule_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (app, _url) = app_on_with(&dir, 1, |_| {}).await;
    for (consensus, expected) in [
        (
            json!({ "voters": 9 }),
            "options.consensus.voters must be within 1..=5, got 9",
        ),
        (
            json!({ "voters": 3, "rule": "loudest" }),
            "unknown variant `loudest`",
        ),
    ] {
        let (status, body) = app
            .post_task(
                &json!({ "prompt": "Write add(a, b)", "options": { "consensus": consensus } }),
            )
            .await;
        assert_eq!(status, 400, "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(expected), "{message}");
    }
}
