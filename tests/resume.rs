//! Tasks survive a crash (issue 15): real `troupe serve` and `troupe run` processes on one database.
//! A server killed with SIGKILL while its task's second step runs, then a new server on the same database:
//! the task is taken over (its owner's lease expires), resumed from its records, and ends; the first
//! step's model calls are not made again, and the log's `seq` has no gap. A `troupe run` beside a live
//! server leaves the server's task alone. A dead owner's task is resumed, and one whose records cannot be
//! continued from fails with the reason. On SQLite and on PostgreSQL.
//!
//! The model is the real embedded SmolLM2 (a step takes a second or more), so there is time to kill the
//! server between the second step's start and its end.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::{json, Value};
use troupe::config::DatabaseSettings;
use troupe::domain::{AgentKind, Event, EventKind, StepStatus, TaskId, TaskStatus};
use troupe::events::Hub;
use troupe::storage::records::{NewStep, NewTask, PendingEvent, WriteOp};
use troupe::storage::writer::Writer;
use troupe::storage::Storage;
use troupe::telemetry::metrics::Metrics;

use crate::helpers::{root, spawn_app_with};
use crate::postgres::TestDatabase;

/// Seconds between heartbeats and of a lease, for these tests: a killed server's lease expires quickly.
const HEARTBEAT_SECONDS: &str = "1";
const LEASE_SECONDS: &str = "3";

/// The environment of a `troupe` process on `database` with the test profile and the real model.
pub(crate) fn troupe(database: &str, dir: &tempfile::TempDir, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_troupe"));
    command
        .args(args)
        .env("TROUPE_PROFILE", "test")
        .env("TROUPE_CONFIG_DIR", root().join("config"))
        .env("TROUPE__DATABASE__URL", database)
        .env(
            "TROUPE__LLM__MODEL",
            root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf"),
        )
        .env(
            "TROUPE__MEMORY__EMBEDDING_MODEL",
            root().join("models/all-MiniLM-L6-v2"),
        )
        // A task on the real model: its code steps are not run (see helpers::test_settings).
        .env("TROUPE__SANDBOX__ENABLED", "false")
        .env("TROUPE__SANDBOX__WORKSPACES", dir.path().join("workspaces"))
        // Longer work steps, so that the second one runs long enough to be killed in.
        .env("TROUPE__LLM__LIMITS__WORK_TOKENS", "160")
        .env("TROUPE__DURABILITY__HEARTBEAT_SECONDS", HEARTBEAT_SECONDS)
        .env("TROUPE__DURABILITY__LEASE_SECONDS", LEASE_SECONDS)
        .env("TROUPE__TELEMETRY__LOG_LEVEL", "warn")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

/// A `troupe serve` process; killed if the test ends before it does.
pub(crate) struct Server {
    child: Child,
    pub(crate) port: u16,
    client: awc::Client,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Starts `troupe serve` on `database` and waits until it says which port it serves.
    pub(crate) async fn start(database: &str, dir: &tempfile::TempDir) -> Server {
        Self::start_with(database, dir, &[]).await
    }

    /// [`Server::start`] with these environment variables as well.
    pub(crate) async fn start_with(
        database: &str,
        dir: &tempfile::TempDir,
        env: &[(&str, &str)],
    ) -> Server {
        Self::start_as(database, dir, &["serve", "--bind", "127.0.0.1:0"], env).await
    }

    /// A `troupe` process with these arguments (a subcommand that serves on a port it prints) and
    /// environment variables.
    pub(crate) async fn start_as(
        database: &str,
        dir: &tempfile::TempDir,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Server {
        let mut child = troupe(database, dir, args)
            .envs(env.iter().copied())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let lines: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(120);
        let port = loop {
            let found = lines.lock().unwrap().iter().find_map(|line| {
                line.strip_prefix("troupe serving on port ")?
                    .trim()
                    .parse::<u16>()
                    .ok()
            });
            if let Some(port) = found {
                break port;
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "troupe serve exited with {status} before serving: {:?}",
                    lines.lock().unwrap()
                );
            }
            assert!(Instant::now() < deadline, "troupe serve did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        Server {
            child,
            port,
            client: awc::Client::builder()
                .timeout(Duration::from_secs(30))
                .finish(),
        }
    }

    /// How the process ended, if it has.
    pub(crate) fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) async fn submit(&self, prompt: &str) -> TaskId {
        let mut response = self
            .client
            .post(format!("http://127.0.0.1:{}/api/v1/tasks", self.port))
            .send_json(&json!({ "prompt": prompt }))
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 202);
        let body: Value = response.json().await.unwrap();
        body["id"].as_str().unwrap().parse().unwrap()
    }

    /// SIGKILL: no clean shutdown, no lease released, the task left `running`.
    pub(crate) fn kill_9(&mut self) {
        self.child.kill().unwrap();
        let status = self.child.wait().unwrap();
        assert!(!status.success(), "{status}");
    }
}

pub(crate) async fn open(database: &str) -> Storage {
    let storage = Storage::connect(&DatabaseSettings {
        url: database.to_owned(),
        max_connections: 2,
        writer_queue: troupe::storage::writer::DEFAULT_QUEUE,
    })
    .await
    .unwrap();
    storage.migrate().await.unwrap();
    storage
}

/// Waits (up to 240 s) until the stored log of `id` holds an event of `kind`; returns the log.
pub(crate) async fn wait_for_kind(storage: &Storage, id: TaskId, kind: EventKind) -> Vec<Event> {
    wait_for_events(
        storage,
        id,
        Duration::from_secs(240),
        kind.as_str(),
        |events| events.iter().any(|e| e.kind == kind),
    )
    .await
}

/// Polls the stored log of `id` until `until` holds for it (bounded); returns the log.
pub(crate) async fn wait_for_events(
    storage: &Storage,
    id: TaskId,
    limit: Duration,
    what: &str,
    until: impl Fn(&[Event]) -> bool,
) -> Vec<Event> {
    let deadline = Instant::now() + limit;
    loop {
        let events = storage.events_after(id, 0).await.unwrap();
        if until(&events) {
            return events;
        }
        assert!(
            Instant::now() < deadline,
            "task {id}: {what} did not happen within {limit:?}; kinds: {:?}",
            events.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (bounded) until task `id`'s second step has started (committed in the log): its agent works on it
/// now. Fails if the task ends first.
pub(crate) async fn wait_for_step_two(storage: &Storage, id: TaskId) {
    wait_for_events(
        storage,
        id,
        Duration::from_secs(240),
        "step 2 starting",
        |events| {
            assert!(
                !ended(events),
                "the task ended before its second step could be killed in"
            );
            events
                .iter()
                .any(|e| e.kind == EventKind::AgentStarted && step_of(e) == Some(2))
        },
    )
    .await;
}

/// The purposes of task `id`'s recorded model calls.
pub(crate) async fn purposes(storage: &Storage, id: TaskId) -> Vec<String> {
    storage
        .llm_calls(id)
        .await
        .unwrap()
        .into_iter()
        .map(|call| call.purpose)
        .collect()
}

/// Asserts the log has one `task.resumed` that reused step 1, after which step 1 was not sent to an agent
/// again and no call among `calls_before` was made again (a made call ends with `llm.finished`); returns
/// that event.
pub(crate) fn assert_resumed_after_step_one<'a>(
    events: &'a [Event],
    calls_before: &[String],
) -> &'a Event {
    let resumed: Vec<&Event> = events
        .iter()
        .filter(|e| e.kind == EventKind::TaskResumed)
        .collect();
    assert_eq!(resumed.len(), 1, "one task.resumed event");
    let resumed = resumed[0];
    assert_eq!(resumed.data["steps_reused"], json!([1]), "{}", resumed.data);
    let after: Vec<&Event> = events.iter().filter(|e| e.seq > resumed.seq).collect();
    assert!(
        !after
            .iter()
            .any(|e| e.kind == EventKind::AgentStarted && step_of(e) == Some(1)),
        "step 1 ran again"
    );
    let remade: Vec<&str> = after
        .iter()
        .filter(|e| e.kind == EventKind::LlmFinished)
        .filter_map(|e| e.data["purpose"].as_str())
        .filter(|purpose| calls_before.iter().any(|p| p == purpose))
        .collect();
    assert!(remade.is_empty(), "recorded calls made again: {remade:?}");
    resumed
}

pub(crate) fn step_of(event: &Event) -> Option<i64> {
    event.data.get("step").and_then(Value::as_i64)
}

pub(crate) fn ended(events: &[Event]) -> bool {
    events.last().is_some_and(|event| event.kind.is_terminal())
}

/// Asserts the log's `seq` is 1, 2, ..., N.
pub(crate) fn assert_no_gap(events: &[Event]) {
    let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
    let expected: Vec<i64> = (1..=i64::try_from(events.len()).unwrap()).collect();
    assert_eq!(seqs, expected, "the log's seq has a gap or a repeat");
}

/// The task ended on its own terms: not `interrupted`, and not unresumable.
pub(crate) fn assert_ended_by_its_flow(storage_task: &troupe::storage::TaskRecord) {
    assert!(
        storage_task.status.is_terminal(),
        "{:?}",
        storage_task.status
    );
    let error = storage_task.error.clone().unwrap_or_default();
    assert!(
        !error.contains("interrupted") && !error.contains("cannot resume"),
        "the task ended with {error}"
    );
}

async fn kill_9_in_the_second_step_then_restart(database: &str) {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(database).await;
    let mut first = Server::start(database, &dir).await;
    let id = first
        .submit("List three facts about the river Danube, then summarise them in one sentence")
        .await;
    // The second step has started (committed in the log): its agent works on it now.
    wait_for_step_two(&storage, id).await;
    first.kill_9();
    let killed_at = Utc::now();
    let before = storage.events_after(id, 0).await.unwrap();
    let task = storage.task(id).await.unwrap().unwrap();
    assert!(!task.status.is_terminal(), "{:?}", task.status);
    let calls_before = purposes(&storage, id).await;
    assert!(calls_before.iter().any(|p| p == "plan"), "{calls_before:?}");
    assert!(
        calls_before.iter().any(|p| p == "work.1"),
        "{calls_before:?}"
    );

    // A new server on the same database: at start-up the old lease is still fresh, so the task is taken
    // over by the periodic look once the lease expires.
    let second = Server::start(database, &dir).await;
    let events = wait_for_events(&storage, id, Duration::from_secs(300), "the end", ended).await;
    drop(second);

    let task = storage.task(id).await.unwrap().unwrap();
    assert_ended_by_its_flow(&task);
    // Nothing lost: what was stored before the kill is the log's beginning, and the log has no gap.
    assert_eq!(&events[..before.len()], &before[..]);
    assert_no_gap(&events);
    let resumed = assert_resumed_after_step_one(&events, &calls_before);
    assert_eq!(resumed.data["after_crash"], json!(true));
    assert!(resumed.data["llm_calls_reused"].as_u64().unwrap() >= 2);
    // In the database: one row per purpose, and each call recorded before the kill kept its row from then.
    let calls = storage.llm_calls(id).await.unwrap();
    for purpose in &calls_before {
        let rows: Vec<_> = calls.iter().filter(|c| &c.purpose == purpose).collect();
        assert_eq!(rows.len(), 1, "{purpose}");
        assert!(
            rows[0].created_at <= killed_at,
            "{purpose} was recorded again"
        );
    }
    let step_one = calls.iter().filter(|c| c.purpose.ends_with(".1")).count();
    assert!(step_one >= 2, "assign.1 and work.1 at least: {step_one}");
    let steps = storage.steps(id).await.unwrap();
    assert_eq!(steps[0].status, StepStatus::Done);
}

#[actix_rt::test]
async fn a_task_killed_in_its_second_step_resumes_on_restart_without_repeating_the_first_on_sqlite()
{
    let dir = tempfile::tempdir().unwrap();
    let database = format!("sqlite://{}/troupe.sqlite?mode=rwc", dir.path().display());
    kill_9_in_the_second_step_then_restart(&database).await;
}

#[actix_rt::test]
async fn a_task_killed_in_its_second_step_resumes_on_restart_without_repeating_the_first_on_postgres(
) {
    let database = TestDatabase::create().await;
    kill_9_in_the_second_step_then_restart(&database.url).await;
    database.drop_now().await;
}

async fn troupe_run_beside_a_server_leaves_its_task_alone(database: &str) {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(database).await;
    let server = Server::start(database, &dir).await;
    let id = server
        .submit("Name two uses of copper and explain one of them")
        .await;
    wait_for_events(
        &storage,
        id,
        Duration::from_secs(120),
        "the start",
        |events| events.iter().any(|e| e.kind == EventKind::TaskStarted),
    )
    .await;
    let owner = storage
        .orphaned_tasks("nobody", Duration::from_secs(3))
        .await
        .unwrap();
    assert!(
        owner.iter().all(|orphan| orphan.id != id),
        "a live server's task is nobody's orphan"
    );
    // `troupe run` starts (and looks for orphans) while the server's task runs.
    let run = troupe(database, &dir, &["run", "--json", "Say hello in French"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let output = tokio::task::spawn_blocking(move || run.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let lines = String::from_utf8_lossy(&output.stdout);
    assert!(
        lines.lines().any(|line| line.contains("\"task.queued\"")),
        "troupe run ran its own task: {lines}"
    );
    let events = wait_for_events(&storage, id, Duration::from_secs(300), "the end", ended).await;
    let task = storage.task(id).await.unwrap().unwrap();
    assert_ended_by_its_flow(&task);
    assert!(
        !events.iter().any(|e| e.kind == EventKind::TaskResumed),
        "the server's task was taken over"
    );
    assert_no_gap(&events);
    drop(server);
}

#[actix_rt::test]
async fn troupe_run_beside_a_running_server_leaves_the_servers_task_alone_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let database = format!("sqlite://{}/troupe.sqlite?mode=rwc", dir.path().display());
    troupe_run_beside_a_server_leaves_its_task_alone(&database).await;
}

#[actix_rt::test]
async fn troupe_run_beside_a_running_server_leaves_the_servers_task_alone_on_postgres() {
    let database = TestDatabase::create().await;
    troupe_run_beside_a_server_leaves_its_task_alone(&database.url).await;
    database.drop_now().await;
}

/// A task left `status` by a process whose lease is gone, with `steps` stored and no model call recorded.
async fn store_orphan(
    storage: &Storage,
    status: TaskStatus,
    steps: Vec<(i32, AgentKind, String)>,
) -> TaskId {
    let writer = Writer::spawn(storage.clone(), Hub::new(), Metrics::new().unwrap());
    let dead = storage.acquire_lease().await.unwrap();
    let id = TaskId::new();
    let queued = PendingEvent::now(
        id,
        EventKind::TaskQueued,
        None,
        json!({ "prompt": "What is 2 + 2?" }),
    );
    writer
        .create_task(
            NewTask {
                id,
                prompt: "What is 2 + 2?".into(),
                options: json!({}),
                trace_id: "0".repeat(32),
                replay_of: None,
                created_at: queued.at,
                owner: Some(dead.id.clone()),
            },
            queued,
        )
        .await
        .unwrap();
    if status != TaskStatus::Queued {
        writer.send(WriteOp::MarkRunning(PendingEvent::now(
            id,
            EventKind::TaskStarted,
            Some(AgentKind::Director),
            json!({}),
        )));
        let steps = steps
            .into_iter()
            .map(|(idx, agent, instruction)| NewStep {
                idx,
                agent,
                instruction,
                depends_on: (idx > 1).then_some(idx - 1).into_iter().collect(),
            })
            .collect();
        writer.send(WriteOp::InsertSteps { task_id: id, steps });
    }
    writer.flush().await.unwrap();
    // Its process stopped: the lease is gone.
    storage.release_lease(&dead.id).await.unwrap();
    id
}

pub async fn a_dead_owners_tasks_are_resumed_or_failed_with_the_reason(database: &str) {
    let storage = open(database).await;
    let queued = store_orphan(&storage, TaskStatus::Queued, Vec::new()).await;
    let unresumable = store_orphan(
        &storage,
        TaskStatus::Running,
        vec![
            (1, AgentKind::Research, "Find the answer".into()),
            (2, AgentKind::Qa, "Check the work against the task".into()),
        ],
    )
    .await;
    let url = database.to_owned();
    let app = spawn_app_with(move |settings| settings.database.url = url).await;
    // The steps are stored but the plan's model call is not: nothing to continue from.
    let failed = storage.task(unresumable).await.unwrap().unwrap();
    assert_eq!(failed.status, TaskStatus::Failed);
    let error = failed.error.unwrap();
    assert!(
        error.contains("cannot resume") && error.contains("\"plan\""),
        "{error}"
    );
    let events = storage.events_after(unresumable, 0).await.unwrap();
    assert_eq!(events.last().unwrap().kind, EventKind::TaskFailed);
    assert_no_gap(&events);
    // The queued one had not started: it runs now, on this process, to its end.
    let task = app
        .wait_for_task(&queued.to_string(), Duration::from_secs(240), |task| {
            ["completed", "failed", "cancelled"].contains(&task["status"].as_str().unwrap_or(""))
        })
        .await;
    let record = storage.task(queued).await.unwrap().unwrap();
    assert_ended_by_its_flow(&record);
    assert_eq!(task["status"], record.status.as_str());
    let events = storage.events_after(queued, 0).await.unwrap();
    assert_eq!(events[1].kind, EventKind::TaskStarted);
    assert_no_gap(&events);
    let scrape = app.metrics().await;
    for (outcome, count) in [("requeued", 1.0), ("unresumable", 1.0), ("resumed", 0.0)] {
        assert_eq!(
            crate::helpers::metric_value(
                &scrape,
                &format!("troupe_tasks_resumed_total{{outcome=\"{outcome}\"}}")
            ),
            count,
            "{outcome}"
        );
    }
}

#[actix_rt::test]
async fn a_dead_owners_tasks_are_resumed_or_failed_with_the_reason_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let database = format!("sqlite://{}/troupe.sqlite?mode=rwc", dir.path().display());
    a_dead_owners_tasks_are_resumed_or_failed_with_the_reason(&database).await;
}

/// Sandbox runs recorded before a crash are not run again: a scripted task (a replay of a seeded recording,
/// the real sandbox) runs to its end on one app; its records are then cut back to what a process killed in
/// its code step, right after the stub check, would have left (the log's tail after that run, QA's
/// verification call and the end removed, the task `running` under a lease that is gone); a second app on
/// the same database takes it over at start-up. Every model call and every sandbox run of the code step is
/// answered from the recording, the verification runs, and the task completes.
#[actix_rt::test]
async fn recorded_sandbox_runs_and_model_calls_are_reused_when_a_code_step_resumes() {
    use sea_orm::{ConnectionTrait, Database};

    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/scripted.sqlite?mode=rwc", dir.path().display());
    let scripted = |settings: &mut troupe::config::Settings, url: String| {
        settings.sandbox.enabled = true;
        settings.database.url = url;
        settings.director.code_attempts = 3;
        settings.director.qa_verdict = troupe::config::QaVerdictMode::Decides;
        settings.memory.enabled = false;
    };
    let first_url = url.clone();
    // This app's own look for orphans comes only after an hour: the take-over is the second app's.
    let first = spawn_app_with(move |settings| {
        scripted(settings, first_url);
        settings.durability.lease_seconds = 3600;
    })
    .await;
    let source =
        crate::scripts::seed_recording(&url, &crate::scripts::fixed_on_second_attempt()).await;
    let id = first
        .submit_with(json!({ "prompt": "Write add(a, b)", "options": { "replay_of": source } }))
        .await;
    let original = first.follow(&id, 0, Duration::from_secs(60)).await;
    assert_eq!(
        original.last().unwrap()["kind"],
        "task.completed",
        "{original:#?}"
    );
    let runs: Vec<&Value> = original
        .iter()
        .filter(|e| e["kind"] == "tool.called" && e["data"]["tool"] == "run_code")
        .collect();
    assert_eq!(runs.len(), 3, "two test runs and the stub check");
    let last_run = runs[2]["seq"].as_i64().unwrap();
    let task_id: TaskId = id.parse().unwrap();

    // The crash, as the records show it.
    let storage = open(&url).await;
    let dead = storage.acquire_lease().await.unwrap();
    storage.release_lease(&dead.id).await.unwrap();
    let db = Database::connect(&url).await.unwrap();
    for statement in [
        format!("DELETE FROM events WHERE task_id = '{id}' AND seq > {last_run}"),
        format!("DELETE FROM llm_calls WHERE task_id = '{id}' AND purpose = 'verify'"),
        format!(
            "UPDATE steps SET status = 'running', output = NULL WHERE task_id = '{id}' AND idx = 1"
        ),
        format!(
            "UPDATE steps SET status = 'pending', output = NULL, attempts = 0 WHERE task_id = '{id}' AND idx = 2"
        ),
        format!(
            "UPDATE tasks SET status = 'running', result = NULL, finished_at = NULL, owner = '{}' WHERE id = '{id}'",
            dead.id
        ),
    ] {
        db.execute_unprepared(&statement).await.unwrap();
    }
    db.close().await.unwrap();
    let calls_before: Vec<String> = storage
        .llm_calls(task_id)
        .await
        .unwrap()
        .into_iter()
        .map(|call| call.purpose)
        .collect();

    let second_url = url.clone();
    let second = spawn_app_with(move |settings| scripted(settings, second_url)).await;
    let events =
        wait_for_events(&storage, task_id, Duration::from_secs(60), "the end", ended).await;
    assert_eq!(
        events.last().unwrap().kind,
        EventKind::TaskCompleted,
        "{events:#?}"
    );
    assert_no_gap(&events);
    let resumed = events
        .iter()
        .find(|e| e.kind == EventKind::TaskResumed)
        .expect("task.resumed");
    assert_eq!(resumed.data["steps_reused"], json!([]));
    assert_eq!(resumed.data["sandbox_runs_reused"], json!(3));
    let after: Vec<&Event> = events.iter().filter(|e| e.seq > resumed.seq).collect();
    let rerun: Vec<(&str, bool)> = after
        .iter()
        .filter(|e| e.kind == EventKind::ToolCalled && e.data["tool"] == "run_code")
        .map(|e| {
            (
                e.data["call_id"].as_str().unwrap(),
                e.data["reused"] == json!(true),
            )
        })
        .collect();
    assert_eq!(
        rerun,
        vec![
            ("test.1", true),
            ("test.1.r2", true),
            ("test.1.r2.stub", true)
        ]
    );
    // No sandbox ran a Python program in the second app: every run was the recorded one.
    let scrape = second.metrics().await;
    let python_runs: f64 = scrape
        .lines()
        .filter(|line| line.starts_with("troupe_sandbox_runs_total{language=\"python\""))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(python_runs, 0.0, "{scrape}");
    // The loop reached the same outcome from the same recorded answers.
    let attempts: Vec<bool> = after
        .iter()
        .filter(|e| e.kind == EventKind::CodeAttempt)
        .map(|e| e.data["passed"] == json!(true))
        .collect();
    assert_eq!(attempts, vec![false, true]);
    // Only the verification's call was made; the code step's were answered from the recording.
    let made: Vec<&str> = after
        .iter()
        .filter(|e| e.kind == EventKind::LlmFinished)
        .filter_map(|e| e.data["purpose"].as_str())
        .collect();
    assert_eq!(made, vec!["verify"]);
    assert!(!calls_before.iter().any(|p| p == "verify"));
    let calls = storage.llm_calls(task_id).await.unwrap();
    assert_eq!(calls.len(), calls_before.len() + 1);
    drop(first);
}
