//! Experiments over the API (issue 18): two variants over two prompts, twice each, each variant replaying a
//! scripted recording (the replay provider), so that the figures are known: variant `fixed` replays code that
//! passes its test, `broken` code that fails it (one attempt). The report gives 4/4 against 0/4 with their
//! Wilson intervals, Fisher's exact p = 2/70 with a difference of 1, and a latency test; bad specifications
//! get 400 saying what is wrong, and nothing is stored. An experiment whose process died is run on by a live
//! one.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::TestApp;
use troupe::domain::experiment::{Experiment, ExperimentSpec};

use crate::scripts::{
    failing_first_attempt, passing_first_attempt as scripts_passing, seed_recording, writer_on,
};
use crate::self_correction::app_on_with;

/// Posts experiment `spec`; returns its `Location` and body.
async fn create(app: &TestApp, spec: &Value) -> (String, Value) {
    let mut response = app
        .client
        .post(format!("{}/api/v1/experiments", app.address))
        .send_json(spec)
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);
    let location = response
        .headers()
        .get("Location")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    (location, response.json().await.unwrap())
}

fn close(value: &Value, expected: f64) -> bool {
    value
        .as_f64()
        .is_some_and(|found| (found - expected).abs() < 1e-4)
}

/// Reads the experiment at `location` until it is completed, at most `limit`.
pub(crate) async fn wait_until_completed(app: &TestApp, location: &str, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let (status, experiment) = app.get(location).await;
        assert_eq!(status, 200, "{experiment}");
        if experiment["status"] == "completed" {
            return experiment;
        }
        assert!(Instant::now() < deadline, "not completed: {experiment:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[actix_rt::test]
async fn two_variants_are_compared_with_intervals_and_a_p_value() {
    let dir = tempfile::tempdir().unwrap();
    let (app, url) = app_on_with(&dir, 1, |_| {}).await;
    // A passing first attempt: the frame and the fixed code as attempt 1.
    let fixed = seed_recording(&url, &scripts_passing()).await;
    let broken = seed_recording(&url, &failing_first_attempt()).await;

    let spec = json!({
        "name": "fixed against broken",
        "prompts": ["Write add(a, b)", "Write a function add(a, b) that adds"],
        "repetitions": 2,
        "variants": [
            { "name": "fixed", "options": { "replay_of": fixed } },
            { "name": "broken", "prompt_template": "Careful: {prompt}", "options": { "replay_of": broken } }
        ]
    });
    let (location, created) = create(&app, &spec).await;
    assert_eq!(created["runs"], 8);
    let report = wait_until_completed(&app, &location, Duration::from_secs(180)).await;

    let variants = report["variants"].as_array().unwrap();
    let (fixed, broken) = (&variants[0], &variants[1]);
    assert_eq!(
        (fixed["ended"].as_u64(), fixed["passed"].as_u64()),
        (Some(4), Some(4)),
        "{report:#}"
    );
    assert_eq!(
        (broken["ended"].as_u64(), broken["passed"].as_u64()),
        (Some(4), Some(0)),
        "{report:#}"
    );
    assert!(close(&fixed["pass_rate"], 1.0) && close(&broken["pass_rate"], 0.0));
    assert!(close(&fixed["pass_rate_ci95"][0], 0.510_109), "{fixed}");
    assert!(close(&fixed["pass_rate_ci95"][1], 1.0));
    assert!(close(&broken["pass_rate_ci95"][0], 0.0));
    assert!(close(&broken["pass_rate_ci95"][1], 0.489_891), "{broken}");
    assert_eq!(
        (
            fixed["code_steps"].as_u64(),
            fixed["code_steps_passed"].as_u64()
        ),
        (Some(4), Some(4))
    );
    assert_eq!(
        (
            broken["code_steps"].as_u64(),
            broken["code_steps_passed"].as_u64()
        ),
        (Some(4), Some(0))
    );
    assert!(
        fixed["latency_p50_seconds"].as_f64().unwrap() > 0.0,
        "{fixed}"
    );
    assert!(fixed["tokens"].as_u64().unwrap() > 0, "{fixed}");

    let pair = &report["pairs"][0];
    assert_eq!(
        (pair["a"].as_str(), pair["b"].as_str()),
        (Some("fixed"), Some("broken"))
    );
    assert!(close(&pair["pass_rate"]["p_value"], 2.0 / 70.0), "{pair}");
    assert!(close(&pair["pass_rate"]["difference"], 1.0));
    assert!(close(&pair["pass_rate"]["cohens_h"], std::f64::consts::PI));
    assert_eq!(pair["pass_rate"]["significant_at_0_05"], true);
    let latency = pair["latency"]["p_value"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&latency), "{pair}");

    // Each run's task is listed; the variant's template reached its prompt.
    let runs = report["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 8);
    let broken_run = runs.iter().find(|run| run["variant"] == "broken").unwrap();
    let (_, task) = app
        .get(&format!(
            "/api/v1/tasks/{}",
            broken_run["task"].as_str().unwrap()
        ))
        .await;
    assert!(
        task["prompt"].as_str().unwrap().starts_with("Careful: "),
        "{task}"
    );
    let (_, listed) = app.get("/api/v1/experiments").await;
    assert_eq!(listed["experiments"][0]["name"], "fixed against broken");
}

#[actix_rt::test]
async fn a_specification_that_cannot_run_is_refused_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let (app, _url) = app_on_with(&dir, 1, |_| {}).await;
    let unknown = "01a20ed9-190e-71e7-b819-dccc4404e287";
    for (spec, code, expected) in [
        (
            json!({ "prompts": ["p"], "variants": [{ "name": "only" }] }),
            "invalid_experiment",
            "2..=4 variants",
        ),
        (
            json!({ "prompts": ["p"], "variants": [{ "name": "a" }, { "name": "b", "model": "gpt" }] }),
            "invalid_body",
            "unknown field `model`",
        ),
        (
            json!({ "prompts": ["p"], "variants": [{ "name": "a" }, { "name": "b", "options": { "replay_of": unknown } }] }),
            "invalid_experiment",
            "variant 'b', prompt 1",
        ),
        (
            json!({ "prompts": ["p"], "variants": [{ "name": "a" }, { "name": "b", "options": { "max_steps": 7 } }] }),
            "invalid_experiment",
            "director.max_steps",
        ),
    ] {
        let mut response = app
            .client
            .post(format!("{}/api/v1/experiments", app.address))
            .send_json(&spec)
            .await
            .unwrap();
        let body: Value = response.json().await.unwrap();
        assert_eq!(response.status().as_u16(), 400, "{body}");
        assert_eq!(body["error"]["code"], code, "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains(expected),
            "{body}"
        );
    }
    let (_, listed) = app.get("/api/v1/experiments").await;
    assert_eq!(listed["experiments"], json!([]));
    let (_, page) = app.get("/api/v1/tasks").await;
    assert_eq!(page["tasks"], json!([]));
    let (status, body) = app.get(&format!("/api/v1/experiments/{unknown}")).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "experiment_not_found");
}

#[actix_rt::test]
async fn troupe_experiment_run_prints_the_comparison_as_aligned_tables() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/cli.sqlite?mode=rwc", dir.path().display());
    let fixed = seed_recording(&url, &scripts_passing()).await;
    let broken = seed_recording(&url, &failing_first_attempt()).await;
    let spec = dir.path().join("experiment.json");
    std::fs::write(
        &spec,
        json!({
            "prompts": ["Write add(a, b)"],
            "repetitions": 3,
            "variants": [
                { "name": "fixed", "options": { "replay_of": fixed } },
                { "name": "broken", "options": { "replay_of": broken } }
            ]
        })
        .to_string(),
    )
    .unwrap();
    let base =
        troupe::config::Settings::load_from(&crate::helpers::root().join("config"), Some("test"))
            .unwrap()
            .sandbox
            .uid_base;
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_troupe"))
        .args(["experiment", "run"])
        .arg(&spec)
        .current_dir(crate::helpers::root())
        .env("TROUPE_PROFILE", "test")
        .env("TROUPE__DATABASE__URL", &url)
        .env("TROUPE__MEMORY__ENABLED", "false")
        .env("TROUPE__SANDBOX__ENABLED", "true")
        // Ids of its own: the test apps use base + 1000 and up, the sandbox tests below base + 100.
        .env("TROUPE__SANDBOX__UID_BASE", (base + 600).to_string())
        .env("TROUPE__SANDBOX__WORKSPACES", dir.path().join("workspaces"))
        .env("TROUPE__DIRECTOR__CODE_ATTEMPTS", "1")
        .env("TROUPE__DIRECTOR__QA_VERDICT", "decides")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].starts_with("variant  passed  pass rate"),
        "{stdout}"
    );
    let row = |name: &str| {
        lines
            .iter()
            .find(|line| line.starts_with(name))
            .unwrap_or_else(|| panic!("no row {name}: {stdout}"))
            .split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        &row("fixed ")[1..4],
        ["3/3", "100.0%", "43.9%–100.0%"],
        "{stdout}"
    );
    assert_eq!(
        &row("broken ")[1..4],
        ["0/3", "0.0%", "0.0%–56.1%"],
        "{stdout}"
    );
    // Fisher's exact p of 3/3 against 0/3 is 0.1 (not significant with three runs each).
    let pair = row("fixed vs broken");
    assert_eq!(pair[3], "1.000", "{stdout}");
    assert_eq!(pair[4], "0.1000", "{stdout}");
}

#[actix_rt::test]
async fn a_director_setting_is_a_variant() {
    let dir = tempfile::tempdir().unwrap();
    let (app, url) = app_on_with(&dir, 3, |_| {}).await;
    // Code that fails its test once, then passes: it needs two attempts.
    let source = seed_recording(&url, &crate::scripts::fixed_on_second_attempt()).await;
    let (location, _) = create(
        &app,
        &json!({
            "prompts": ["Write add(a, b)"],
            "repetitions": 2,
            "variants": [
                { "name": "one attempt", "options": { "replay_of": source, "director": { "code_attempts": 1 } } },
                { "name": "two attempts", "options": { "replay_of": source, "director": { "code_attempts": 2 } } }
            ]
        }),
    )
    .await;
    let report = wait_until_completed(&app, &location, Duration::from_secs(180)).await;
    let passed: Vec<Option<u64>> = report["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|variant| variant["passed"].as_u64())
        .collect();
    assert_eq!(passed, vec![Some(0), Some(2)], "{report:#}");
    // Out of its bounds, the setting is refused like any option.
    let (status, body) = app
        .post_task(&json!({ "prompt": "p", "options": { "director": { "code_attempts": 11 } } }))
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("options.director.code_attempts"));
}

#[actix_rt::test]
async fn an_experiment_whose_process_died_is_run_on_by_a_live_one() {
    let dir = tempfile::tempdir().unwrap();
    let (app, url) = app_on_with(&dir, 1, |settings| {
        // Orphans are looked for every lease_seconds.
        settings.durability.heartbeat_seconds = 1;
        settings.durability.lease_seconds = 2;
    })
    .await;
    let fixed = seed_recording(&url, &scripts_passing()).await;
    // The process that died had submitted the first of three runs; the other two it never reached.
    let submitted = app
        .submit_with(json!({ "prompt": "Write add(a, b)", "options": { "replay_of": fixed } }))
        .await;
    let spec: ExperimentSpec = serde_json::from_value(json!({
        "name": "left by a dead process",
        "prompts": ["Write add(a, b)"],
        "repetitions": 1,
        "variants": [
            { "name": "a", "options": { "replay_of": fixed } },
            { "name": "b", "options": { "replay_of": fixed } },
            { "name": "c", "options": { "replay_of": fixed } }
        ]
    }))
    .unwrap();
    let mut orphan = Experiment::new(spec);
    orphan.runs[0].task = Some(submitted.parse().unwrap());
    // A lease no process holds: its owner is gone.
    orphan.owner = Some(uuid::Uuid::now_v7().to_string());
    let id = orphan.id;
    writer_on(&url)
        .await
        .create_experiment(orphan)
        .await
        .unwrap();

    let location = format!("/api/v1/experiments/{id}");
    let report = wait_until_completed(&app, &location, Duration::from_secs(120)).await;
    let runs = report["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 3, "{report:#}");
    // The submitted run was waited for, not submitted again; the others were submitted by the live process.
    assert_eq!(runs[0]["task"], submitted.as_str(), "{report:#}");
    assert!(runs.iter().all(|run| run["task"].is_string()), "{report:#}");
    let tasks: std::collections::HashSet<&str> =
        runs.iter().filter_map(|run| run["task"].as_str()).collect();
    assert_eq!(tasks.len(), 3, "{report:#}");
    for variant in report["variants"].as_array().unwrap() {
        assert_eq!(
            (variant["ended"].as_u64(), variant["passed"].as_u64()),
            (Some(1), Some(1)),
            "{report:#}"
        );
    }
}
