//! Tool-call replay over HTTP (`POST /api/v1/tasks/{id}/tool-calls/{call_id}/replay`) through the real
//! sandbox (bubblewrap), on SQLite and PostgreSQL. The tasks are scripted replays (the model's answers from
//! a stored recording, so the files and runs are known): a run whose files a later attempt overwrote is
//! replayed with the old files; a run whose output is random differs and says where; the file tools replay
//! against the workspace as it was; the task's own workspace and finished log are left alone. Then seeded
//! logs (an unfinished task owned by a live lease, so no process takes it over): a replay there is logged;
//! calls recorded cut, unknown ids, bad ids, a sandbox that is off or busy get the 4xx or 503 that says so.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use troupe::domain::{AgentKind, EventKind, TaskId};
use troupe::events::Hub;
use troupe::storage::records::{NewTask, PendingEvent, WriteOp};
use troupe::storage::writer::Writer;
use troupe::storage::Storage;
use troupe::telemetry::metrics::Metrics;

use crate::helpers::{metric_value, spawn_app_with, TestApp};
use crate::postgres::TestDatabase;
use crate::scripts::{fixed_on_second_attempt, seed_recording, Output};

/// The database of one test: the test's own SQLite file or PostgreSQL database, and a folder for the
/// apps' task workspaces (so the test can look at a task's live files).
struct Place {
    url: String,
    workspaces: PathBuf,
    postgres: Option<TestDatabase>,
    _dir: tempfile::TempDir,
}

impl Place {
    async fn sqlite() -> Place {
        let dir = tempfile::tempdir().unwrap();
        Place {
            url: format!("sqlite://{}/replay.sqlite?mode=rwc", dir.path().display()),
            workspaces: dir.path().join("workspaces"),
            postgres: None,
            _dir: dir,
        }
    }

    async fn postgres() -> Place {
        let dir = tempfile::tempdir().unwrap();
        let database = TestDatabase::create().await;
        Place {
            url: database.url.clone(),
            workspaces: dir.path().join("workspaces"),
            postgres: Some(database),
            _dir: dir,
        }
    }

    /// An app on this database with the sandbox on (or off) and scripted code steps deciding.
    async fn app(&self, sandbox: bool, parallel_runs: usize) -> TestApp {
        let (url, workspaces) = (self.url.clone(), self.workspaces.clone());
        spawn_app_with(move |settings| {
            settings.database.url = url;
            settings.sandbox.enabled = sandbox;
            settings.sandbox.parallel_runs = parallel_runs;
            settings.sandbox.workspaces = workspaces;
            settings.director.code_attempts = 3;
            settings.director.qa_verdict = troupe::config::QaVerdictMode::Decides;
            settings.memory.enabled = false;
            // A seeded task's owner (a lease the test holds) stays alive for the whole test.
            settings.durability.lease_seconds = 600;
        })
        .await
    }

    async fn done(self) {
        if let Some(database) = self.postgres {
            database.drop_now().await;
        }
    }
}

/// Runs a task replaying `outputs` to its end; returns its id and events.
async fn scripted_task(app: &TestApp, url: &str, outputs: &[Output]) -> (String, Vec<Value>) {
    let source = seed_recording(url, outputs).await;
    let id = app
        .submit_with(json!({ "prompt": "Write add(a, b)", "options": { "replay_of": source } }))
        .await;
    let events = app.follow(&id, 0, Duration::from_secs(90)).await;
    assert_eq!(
        events.last().unwrap()["kind"],
        "task.completed",
        "{events:#?}"
    );
    (id, events)
}

async fn replay(app: &TestApp, id: &str, call_id: &str) -> (u16, Value) {
    app.post(&format!("/api/v1/tasks/{id}/tool-calls/{call_id}/replay"))
        .await
}

/// The replay of `call_id`, asserting 200.
async fn replayed(app: &TestApp, id: &str, call_id: &str) -> Value {
    let (status, body) = replay(app, id, call_id).await;
    assert_eq!(status, 200, "{call_id}: {body}");
    assert_eq!(body["call_id"], call_id);
    body
}

fn live_file(workspaces: &Path, id: &str, name: &str) -> String {
    std::fs::read_to_string(workspaces.join(id).join(name)).unwrap()
}

async fn a_replayed_run_uses_the_files_it_ran_with(place: Place) {
    let app = place.app(true, 4).await;
    let (id, events) = scripted_task(&app, &place.url, &fixed_on_second_attempt()).await;
    // The second attempt overwrote step1.py: the task's files now hold the fixed code.
    assert!(live_file(&place.workspaces, &id, "step1.py").contains("a + b"));

    // The first test run failed against `a - b`; replayed, it runs against `a - b` again, so it fails the
    // same way (with the task's live files it would pass).
    let first = replayed(&app, &id, "test.1").await;
    assert_eq!(first["tool"], "run_code");
    assert_eq!(first["same"], true, "{first}");
    assert_eq!(first["differences"], json!([]));
    assert_eq!(first["workspace"], json!(["step1.py", "step1_test.py"]));
    let run = &first["replayed"]["result"];
    assert_eq!(first["replayed"]["outcome"], "ok");
    assert_eq!(run["exit_code"], 1, "{first}");
    assert!(
        run["stderr"].as_str().unwrap().contains("AssertionError"),
        "{first}"
    );
    assert_eq!(first["recorded"]["result"]["exit_code"], 1);
    assert_eq!(first["arguments"]["file"], "step1_test.py");
    assert_eq!(first["logged"], false, "a finished task's log is closed");
    let seq = first["seq"].as_i64().unwrap();
    let recorded = events.iter().find(|e| e["seq"] == seq).unwrap();
    assert_eq!(recorded["kind"], "tool.called");
    assert_eq!(recorded["data"]["call_id"], "test.1");

    // The passing run passes again, and so does the stub check's run of the Director.
    for call in ["test.1.r2", "test.1.r2.stub"] {
        let again = replayed(&app, &id, call).await;
        assert_eq!(again["same"], true, "{again}");
    }
    let passing = replayed(&app, &id, "test.1.r2").await;
    assert_eq!(passing["replayed"]["result"]["exit_code"], 0);

    // A write replays into the temporary workspace: the task's file keeps its content.
    let write = replayed(&app, &id, "work.1.write1").await;
    assert_eq!(write["tool"], "write_file");
    assert_eq!(write["same"], true, "{write}");
    assert_eq!(write["replayed"]["result"]["path"], "step1.py");
    assert!(live_file(&place.workspaces, &id, "step1.py").contains("a + b"));
    // The first write ran in an empty workspace.
    assert_eq!(write["workspace"], json!([]));

    // Nothing was added to the finished task's log.
    let (_, after) = app.get(&format!("/api/v1/tasks/{id}/events")).await;
    assert_eq!(after["events"].as_array().unwrap().len(), events.len());
    let scrape = app.metrics().await;
    assert_eq!(
        metric_value(
            &scrape,
            "troupe_tool_replays_total{outcome=\"same\",tool=\"run_code\"}"
        ),
        4.0
    );
    assert_eq!(
        metric_value(
            &scrape,
            "troupe_tool_replays_total{outcome=\"same\",tool=\"write_file\"}"
        ),
        1.0
    );
    place.done().await;
}

#[actix_rt::test]
async fn a_replayed_run_uses_the_files_it_ran_with_on_sqlite() {
    a_replayed_run_uses_the_files_it_ran_with(Place::sqlite().await).await;
}

#[actix_rt::test]
async fn a_replayed_run_uses_the_files_it_ran_with_on_postgres() {
    a_replayed_run_uses_the_files_it_ran_with(Place::postgres().await).await;
}

/// Two Code steps: the first's test prints random bytes (a replay's stdout differs), the second lists the
/// workspace and reads the first's code before writing its own.
fn two_steps() -> Vec<Output> {
    let choice = json!({
        "options": [
            { "name": "research", "probability": 0.1 },
            { "name": "code", "probability": 0.8 },
            { "name": "qa", "probability": 0.1 }
        ],
        "chosen": "code",
        "reasoning": "it is code"
    });
    let run = |file: &str| {
        json!({ "tool": "run_code", "arguments": { "language": "python", "file": file } })
            .to_string()
    };
    vec![
        (
            "plan",
            json!({ "steps": ["Write add(a, b)", "Write sub(a, b)"] }).to_string(),
            None,
        ),
        (
            "assign.1",
            r#"{"agent": "code", "reason": "it is code"}"#.into(),
            Some(choice.clone()),
        ),
        (
            "assign.2",
            r#"{"agent": "code", "reason": "it is code"}"#.into(),
            Some(choice),
        ),
        (
            "work.1",
            json!({
                "code": "def add(a, b):\n    return a + b",
                "test": "import os\nprint(os.urandom(8).hex())\nassert add(2, 3) == 5"
            })
            .to_string(),
            None,
        ),
        ("test.1", run("step1_test.py"), None),
        (
            "work.2",
            json!({ "code": "def sub(a, b):\n    return a - b", "test": "assert sub(5, 3) == 2" })
                .to_string(),
            None,
        ),
        ("test.2", run("step2_test.py"), None),
        (
            "verify",
            json!({ "verdict": "pass", "feedback": "tested" }).to_string(),
            None,
        ),
    ]
}

#[actix_rt::test]
async fn a_replay_that_differs_says_where_and_the_file_tools_see_the_workspace_of_their_time() {
    let place = Place::sqlite().await;
    let app = place.app(true, 4).await;
    let (id, _) = scripted_task(&app, &place.url, &two_steps()).await;

    // Random output: the run passes again, but its stdout differs, and only that is named.
    let random = replayed(&app, &id, "test.1").await;
    assert_eq!(random["same"], false, "{random}");
    let fields: Vec<&str> = random["differences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["stdout"], "{random}");
    let difference = &random["differences"][0];
    assert_ne!(difference["recorded"], difference["replayed"]);
    assert_eq!(random["replayed"]["result"]["exit_code"], 0);

    // Step 2 listed the workspace when it held step 1's files only; the task's holds step 2's too now.
    let listed = replayed(&app, &id, "work.2.list").await;
    assert_eq!(listed["tool"], "list_files");
    assert_eq!(listed["same"], true, "{listed}");
    assert_eq!(
        listed["replayed"]["result"]["files"],
        json!(["step1.py", "step1_test.py"])
    );
    let live: Vec<String> = {
        let mut names: Vec<String> = std::fs::read_dir(place.workspaces.join(&id))
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    };
    assert_eq!(
        live,
        ["step1.py", "step1_test.py", "step2.py", "step2_test.py"]
    );
    let read = replayed(&app, &id, "work.2.read1").await;
    assert_eq!(read["tool"], "read_file");
    assert_eq!(read["same"], true, "{read}");
    assert!(read["replayed"]["result"]["content"]
        .as_str()
        .unwrap()
        .contains("return a + b"));
    let second = replayed(&app, &id, "test.2").await;
    assert_eq!(second["same"], true, "{second}");
    assert_eq!(
        second["workspace"],
        json!(["step1.py", "step1_test.py", "step2.py", "step2_test.py"])
    );
    let scrape = app.metrics().await;
    assert_eq!(
        metric_value(
            &scrape,
            "troupe_tool_replays_total{outcome=\"different\",tool=\"run_code\"}"
        ),
        1.0
    );
    place.done().await;
}

/// A task stored directly through a writer, unfinished and owned by a lease the test holds (so the apps
/// leave it alone), whose log holds `calls`: `(tool, call_id, arguments, result)` as `tool.called` events
/// in order (each `ok`, `arguments` kept whole unless `cut`). Returns its id.
async fn seeded_task(url: &str, calls: &[(&str, &str, Value, Value, bool)]) -> TaskId {
    let mut settings = crate::helpers::test_settings(&tempfile::tempdir().unwrap());
    settings.database.url = url.to_owned();
    let storage = Storage::connect(&settings.database).await.unwrap();
    storage.migrate().await.unwrap();
    let lease = storage.acquire_lease().await.unwrap();
    let writer = Writer::spawn(storage, Hub::new(), Metrics::new().unwrap());
    let id = TaskId::new();
    let queued = PendingEvent::now(id, EventKind::TaskQueued, None, json!({ "prompt": "p" }));
    writer
        .create_task(
            NewTask {
                id,
                prompt: "seeded".into(),
                options: json!({}),
                trace_id: "0".repeat(32),
                replay_of: None,
                created_at: queued.at,
                owner: Some(lease.id.clone()),
            },
            queued,
        )
        .await
        .unwrap();
    writer.send(WriteOp::MarkRunning(PendingEvent::now(
        id,
        EventKind::TaskStarted,
        None,
        json!({}),
    )));
    for (tool, call_id, arguments, result, cut) in calls {
        let text = arguments.to_string();
        let shown: String = if *cut {
            format!("{}…", text.chars().take(2000).collect::<String>())
        } else {
            text
        };
        writer.emit(
            id,
            EventKind::ToolCalled,
            Some(AgentKind::Qa),
            json!({
                "tool": tool, "call_id": call_id, "arguments": shown, "outcome": "ok",
                "duration_seconds": 0.1, "result": result.to_string(),
            }),
        );
    }
    writer.flush().await.unwrap();
    id
}

/// The sandbox's report of a run that printed `stdout` and exited 0.
fn ok_report(stdout: &str) -> Value {
    json!({
        "language": "python", "outcome": "ok", "exit_code": 0, "signal": null, "wall_seconds": 0.05,
        "cpu_seconds": 0.03, "peak_rss_bytes": 9000000, "stdout": stdout, "stderr": "",
        "truncated": false, "violations": []
    })
}

fn assert_error(status: u16, body: &Value, expected: u16, code: &str) {
    assert_eq!(status, expected, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
}

async fn replays_of_an_unfinished_task_are_logged_and_bad_ones_refused(place: Place) {
    let app = place.app(true, 4).await;
    let long = "x".repeat(3000);
    let id = seeded_task(
        &place.url,
        &[
            (
                "write_file",
                "w1",
                json!({ "path": "hello.py", "content": "print('hello')" }),
                json!({ "path": "hello.py", "bytes": 14 }),
                false,
            ),
            (
                "run_code",
                "r1",
                json!({ "language": "python", "file": "hello.py" }),
                ok_report("hello\n"),
                false,
            ),
            (
                "write_file",
                "w2",
                json!({ "path": "big.py", "content": long }),
                json!({ "path": "big.py", "bytes": 3000 }),
                // As a build before whole arguments were kept for files recorded it.
                true,
            ),
            (
                "run_code",
                "r2",
                json!({ "language": "python", "file": "hello.py" }),
                ok_report("hello\n"),
                false,
            ),
        ],
    )
    .await;

    let first = replayed(&app, &id.to_string(), "r1").await;
    assert_eq!(first["same"], true, "{first}");
    assert_eq!(first["logged"], true, "{first}");
    // The unfinished task's log gets the replay (a person looked at a call of a task in progress).
    let deadline = Instant::now() + Duration::from_secs(10);
    let event = loop {
        let (_, events) = app.get(&format!("/api/v1/tasks/{id}/events")).await;
        let found = events["events"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["kind"] == "tool.replayed")
            .cloned();
        if let Some(event) = found {
            break event;
        }
        assert!(
            Instant::now() < deadline,
            "no tool.replayed event: {events}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(event["data"]["call_id"], "r1");
    assert_eq!(event["data"]["same"], true);
    assert_eq!(event["data"]["seq"], first["seq"]);

    // Its workspace cannot be rebuilt for r2: big.py was recorded cut.
    let (status, body) = replay(&app, &id.to_string(), "r2").await;
    assert_error(status, &body, 409, "not_replayable");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("w2"),
        "{body}"
    );
    // Ids and queries.
    let (status, body) = replay(&app, &id.to_string(), "nope").await;
    assert_error(status, &body, 404, "tool_call_not_found");
    let (status, body) = app
        .post(&format!("/api/v1/tasks/{id}/tool-calls/r1/replay?seq=1"))
        .await;
    assert_error(status, &body, 404, "tool_call_not_found");
    let (status, body) = app
        .post(&format!(
            "/api/v1/tasks/{id}/tool-calls/r1/replay?seq={}",
            first["seq"]
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    for query in ["seq=0", "seq=x", "other=1"] {
        let (status, body) = app
            .post(&format!("/api/v1/tasks/{id}/tool-calls/r1/replay?{query}"))
            .await;
        assert_error(status, &body, 400, "invalid_query");
    }
    let long_id = "a".repeat(129);
    for bad in ["a%20b", "a%2Fb", long_id.as_str()] {
        let (status, body) = replay(&app, &id.to_string(), bad).await;
        assert_error(status, &body, 400, "invalid_call_id");
    }
    let (status, body) = replay(&app, "not-a-task", "r1").await;
    assert_error(status, &body, 400, "invalid_id");
    let (status, body) = replay(&app, &TaskId::new().to_string(), "r1").await;
    assert_error(status, &body, 404, "task_not_found");
    let (status, body) = app
        .get(&format!("/api/v1/tasks/{id}/tool-calls/r1/replay"))
        .await;
    assert_error(status, &body, 405, "method_not_allowed");

    // On a server whose sandbox is off, a run cannot be replayed (not the client's fault: 503); a file
    // tool still can.
    let without = place.app(false, 4).await;
    let (status, body) = replay(&without, &id.to_string(), "r1").await;
    assert_error(status, &body, 503, "sandbox_unavailable");
    let write = replayed(&without, &id.to_string(), "w1").await;
    assert_eq!(write["same"], true, "{write}");
    let scrape = without.metrics().await;
    assert_eq!(
        metric_value(
            &scrape,
            "troupe_tool_replays_total{outcome=\"error\",tool=\"run_code\"}"
        ),
        1.0
    );
    // The route is documented.
    let (_, doc) = app.get("/api/v1/openapi.json").await;
    assert!(doc["paths"]["/api/v1/tasks/{id}/tool-calls/{call_id}/replay"]["post"].is_object());
    place.done().await;
}

#[actix_rt::test]
async fn replays_of_an_unfinished_task_are_logged_and_bad_ones_refused_on_sqlite() {
    replays_of_an_unfinished_task_are_logged_and_bad_ones_refused(Place::sqlite().await).await;
}

#[actix_rt::test]
async fn replays_of_an_unfinished_task_are_logged_and_bad_ones_refused_on_postgres() {
    replays_of_an_unfinished_task_are_logged_and_bad_ones_refused(Place::postgres().await).await;
}

#[actix_rt::test]
async fn a_replay_finding_every_sandbox_slot_busy_is_refused_with_retry_after() {
    let place = Place::sqlite().await;
    let app = place.app(true, 1).await;
    let id = seeded_task(
        &place.url,
        &[(
            "run_code",
            "slow",
            json!({ "language": "python", "code": "import time\ntime.sleep(8)" }),
            ok_report(""),
            false,
        )],
    )
    .await
    .to_string();
    let path = format!("{}/api/v1/tasks/{id}/tool-calls/slow/replay", app.address);
    let holder = async {
        let (status, body) = replay(&app, &id, "slow").await;
        assert_eq!(status, 200, "{body}");
        body
    };
    let refused = async {
        // The first replay holds the one slot for 8 s; this one waits 5 s for it, then is refused.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut response = app.client.post(&path).send().await.unwrap();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap();
        (status, body, retry_after)
    };
    let (held, (status, body, retry_after)) = futures_util::join!(holder, refused);
    assert_error(status, &body, 503, "sandbox_busy");
    assert_eq!(retry_after.as_deref(), Some("1"));
    assert_eq!(held["same"], true, "{held}");
    // The snippet ran as `main.py`, which is the whole rebuilt workspace besides it: none.
    assert_eq!(held["workspace"], json!([]));
    place.done().await;
}
