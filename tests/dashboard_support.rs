//! What the browser tests (`tests/browser.rs`) and the dashboard benchmark (`benches/dashboard.rs`) share:
//! a headless Chromium driven through `chromedriver` (a child process group killed on drop), and stored
//! tasks written through the core's writer (a big task of many events, many small tasks).

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use troupe::config::Settings;
use troupe::domain::{AgentKind, EventKind, StepStatus, TaskId, TaskStatus};
use troupe::events::Hub;
use troupe::storage::records::{
    LlmCallRecord, NewStep, NewTask, PendingEvent, StepUpdate, TaskEnd, WriteOp,
};
use troupe::storage::writer::Writer;
use troupe::storage::Storage;
use troupe::telemetry::metrics::Metrics;

/// `chromedriver` as a process group of its own; dropping it kills the group (the driver and every
/// Chromium it started), so a failed test leaves no browser behind.
pub struct Driver {
    child: Child,
    /// Its WebDriver URL.
    pub url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The group's id is the driver's pid (process_group(0)); `kill` the utility keeps this file free
        // of unsafe code.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Starts chromedriver on a free port and waits until it answers.
pub async fn start_driver() -> anyhow::Result<Driver> {
    use std::os::unix::process::CommandExt;
    let port = free_port()?;
    let mut command = Command::new("/usr/bin/chromedriver");
    command
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    let child = command.spawn().map_err(|error| {
        anyhow::anyhow!(
            "start /usr/bin/chromedriver (installed by `scripts/setup.sh test`): {error}"
        )
    })?;
    let driver = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "chromedriver did not listen within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(driver)
}

/// A headless Chromium session (1400x1000) through `driver`.
pub async fn start_browser(driver: &Driver) -> anyhow::Result<Client> {
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000",
                "--disable-dev-shm-usage", "--no-first-run", "--disable-extensions",
                "--disable-background-networking", "--disable-component-update",
            ],
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let client = ClientBuilder::new(connector)
        .capabilities(capabilities)
        .connect(&driver.url)
        .await?;
    Ok(client)
}

/// Waits (bounded) for the page's first render: `document.body.dataset.ready`.
pub async fn wait_ready(client: &Client, limit: Duration) -> anyhow::Result<()> {
    client
        .wait()
        .at_most(limit)
        .for_element(Locator::Css("body[data-ready='1']"))
        .await?;
    Ok(())
}

/// Milliseconds from navigation start to the page's `troupe-ready` mark.
pub async fn ready_ms(client: &Client) -> anyhow::Result<f64> {
    let value = client
        .execute(
            "const m = performance.getEntriesByName('troupe-ready')[0]; return m ? m.startTime : null;",
            vec![],
        )
        .await?;
    value
        .as_f64()
        .ok_or_else(|| anyhow::anyhow!("no troupe-ready mark"))
}

/// A writer on the SQLite database at `url` (the app's own file), for seeding.
pub async fn writer_on(url: &str, settings: &Settings) -> anyhow::Result<Writer> {
    let mut settings = settings.clone();
    settings.database.url = url.to_owned();
    let storage = Storage::connect(&settings.database).await?;
    storage.migrate().await?;
    Ok(Writer::spawn(storage, Hub::new(), Metrics::new()?))
}

fn event(
    id: TaskId,
    at: DateTime<Utc>,
    kind: EventKind,
    agent: Option<AgentKind>,
    data: Value,
) -> PendingEvent {
    PendingEvent {
        task_id: id,
        at,
        kind,
        agent,
        trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
        span_id: "00f067aa0ba902b7".into(),
        data,
    }
}

/// Stores `count` finished tasks (a third failed) with prompts numbered from 0; a batch at a time so the
/// writer commits many per transaction.
pub async fn seed_tasks(writer: &Writer, count: usize) -> anyhow::Result<()> {
    let start = Utc::now() - chrono::Duration::seconds(count as i64 + 60);
    for chunk in (0..count).collect::<Vec<_>>().chunks(500) {
        let creates = chunk.iter().map(|&n| {
            let id = TaskId::new();
            let at = start + chrono::Duration::seconds(n as i64);
            let queued = event(
                id,
                at,
                EventKind::TaskQueued,
                None,
                json!({ "prompt": format!("stored task {n}") }),
            );
            let task = NewTask {
                id,
                prompt: format!("stored task {n}: write a function that adds two numbers"),
                options: json!({}),
                trace_id: "0".repeat(32),
                replay_of: None,
                created_at: at,
                owner: None,
            };
            async move { writer.create_task(task, queued).await.map(|()| (id, n, at)) }
        });
        let created = futures_util::future::join_all(creates).await;
        for result in created {
            let (id, n, at) = result?;
            let failed = n % 3 == 0;
            writer.send(WriteOp::MarkRunning(event(
                id,
                at,
                EventKind::TaskStarted,
                Some(AgentKind::Director),
                json!({}),
            )));
            writer.send(WriteOp::FinishTask {
                end: TaskEnd {
                    task_id: id,
                    status: if failed {
                        TaskStatus::Failed
                    } else {
                        TaskStatus::Completed
                    },
                    result: (!failed)
                        .then(|| json!({ "answer": "def add(a, b):\n    return a + b" })),
                    error: failed.then(|| "model call failed: timeout".to_owned()),
                    event: event(
                        id,
                        at + chrono::Duration::milliseconds(900),
                        if failed {
                            EventKind::TaskFailed
                        } else {
                            EventKind::TaskCompleted
                        },
                        None,
                        json!({}),
                    ),
                    memories: Vec::new(),
                },
                reply: None,
            });
        }
    }
    writer.flush().await?;
    Ok(())
}

/// Stores a completed three-step task with about `events` events, nine in ten of them `llm.token`
/// (spread over several model calls, each token with a probability), plus decisions, memory reads, tool
/// calls, code attempts and a QA verdict. Returns its id.
pub async fn seed_big_task(writer: &Writer, events: usize) -> anyhow::Result<TaskId> {
    let id = TaskId::new();
    let start = Utc::now() - chrono::Duration::seconds(120);
    let clock = std::cell::Cell::new(start);
    let tick = |millis: i64| {
        clock.set(clock.get() + chrono::Duration::milliseconds(millis));
        clock.get()
    };
    let queued = event(
        id,
        start,
        EventKind::TaskQueued,
        None,
        json!({ "prompt": "big" }),
    );
    writer
        .create_task(
            NewTask {
                id,
                prompt: "Write is_prime(n) in Python and test it (a big task: many events)".into(),
                options: json!({}),
                trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
                replay_of: None,
                created_at: start,
                owner: None,
            },
            queued,
        )
        .await?;
    let director = Some(AgentKind::Director);
    writer.send(WriteOp::MarkRunning(event(
        id,
        tick(5),
        EventKind::TaskStarted,
        director,
        json!({}),
    )));
    let steps = [
        (1, AgentKind::Research, "Find how to test primality"),
        (2, AgentKind::Code, "Write is_prime(n) with a test"),
        (3, AgentKind::Qa, "Verify the code"),
    ];
    writer.send(WriteOp::InsertSteps {
        task_id: id,
        steps: steps
            .iter()
            .map(|(idx, agent, text)| NewStep {
                idx: *idx,
                agent: *agent,
                instruction: (*text).to_owned(),
                depends_on: (*idx > 1).then_some(idx - 1).into_iter().collect(),
            })
            .collect(),
    });
    writer.send(WriteOp::Event(event(
        id,
        tick(800),
        EventKind::PlanCreated,
        director,
        json!({ "steps": steps.iter().map(|s| s.2).collect::<Vec<_>>() }),
    )));
    // Tokens: what is left after the other events, split over the calls.
    let calls_per_step = 6usize;
    let calls = steps.len() * calls_per_step;
    let others = 18 + calls * 2;
    let tokens_per_call = events.saturating_sub(others).max(calls) / calls;
    let mut call = 0usize;
    for (idx, agent, text) in steps {
        let chosen = agent.as_str();
        let options: Vec<Value> = ["research", "code", "qa"]
            .iter()
            .map(|name| {
                json!({
                    "name": name,
                    "probability": if *name == chosen { 0.82 } else { 0.09 },
                    "raw_probability": if *name == chosen { 0.64 } else { 0.18 },
                })
            })
            .collect();
        writer.send(WriteOp::Event(event(
            id,
            tick(300),
            EventKind::DecisionMade,
            director,
            json!({
                "kind": "assign_agent", "step": idx, "instruction": text, "chosen": chosen,
                "options": options,
                "confidence": 0.82, "scored": true, "reasoning": format!("step {idx} is {chosen} work"),
                "tokens": 120,
            }),
        )));
        writer.send(WriteOp::UpdateStep(StepUpdate {
            task_id: id,
            idx,
            agent,
            status: StepStatus::Done,
            output: Some(format!("output of step {idx}")),
            attempts: 1,
            started_at: Some(clock.get()),
            finished_at: Some(clock.get()),
        }));
        writer.send(WriteOp::Event(event(
            id,
            tick(20),
            EventKind::AgentStarted,
            Some(agent),
            json!({ "step": idx, "kind": if agent == AgentKind::Qa { "verify" } else { "work" },
                    "instruction": text, "attempt": 1, "revision": 1 }),
        )));
        writer.send(WriteOp::Event(event(
            id,
            tick(15),
            EventKind::MemoryRead,
            Some(agent),
            json!({ "step": idx, "purpose": "recall", "query": text, "k": 3, "min_score": 0.5,
                    "backend": "sqlite", "used": 1, "error": null,
                    "hits": [
                        { "id": 1, "kind": "fact", "score": 0.71, "used": true, "content": "a prime has two divisors" },
                        { "id": 2, "kind": "snippet", "score": 0.32, "used": false, "content": "def add(a, b): ..." },
                    ] }),
        )));
        for n in 0..calls_per_step {
            let purpose = format!("work.{idx}.call{n}");
            let call_start = clock.get();
            for t in 0..tokens_per_call {
                let p = 0.05 + ((t * 37 + call * 11) % 95) as f64 / 100.0;
                let text = if t % 9 == 8 {
                    "\n".to_owned()
                } else {
                    format!("tok{t} ")
                };
                // The five likeliest tokens there: the sampled one and four others sharing what is left.
                let rest = (1.0 - p) / 4.0;
                let top: Vec<Value> = std::iter::once(json!({ "text": text, "p": p }))
                    .chain((1..5).map(|k| json!({ "text": format!("alt{k} "), "p": rest })))
                    .collect();
                writer.send(WriteOp::Event(event(
                    id,
                    tick(4),
                    EventKind::LlmToken,
                    Some(agent),
                    json!({ "purpose": purpose, "text": text, "p": p, "top": top }),
                )));
            }
            let seconds = (clock.get() - call_start).num_milliseconds() as f64 / 1000.0;
            writer.send(WriteOp::LlmCall(LlmCallRecord {
                task_id: id,
                purpose: purpose.clone(),
                agent,
                provider: "embedded".into(),
                model: "SmolLM2-135M-Instruct".into(),
                prompt: json!([{ "role": "user", "content": text }]).to_string(),
                output: format!("output of {purpose}"),
                choice: None,
                prompt_tokens: 200,
                completion_tokens: tokens_per_call as i64,
                cost_usd: 0.0,
                duration_seconds: seconds,
                request: None,
                request_digest: None,
            }));
            writer.send(WriteOp::Event(event(
                id,
                tick(1),
                EventKind::LlmFinished,
                Some(agent),
                json!({ "purpose": purpose, "provider": "embedded", "model": "SmolLM2-135M-Instruct",
                        "input_tokens": 200, "output_tokens": tokens_per_call, "cost_usd": 0.0,
                        "duration_seconds": seconds }),
            )));
            writer.send(WriteOp::Event(event(
                id,
                tick(30),
                EventKind::ToolCalled,
                Some(agent),
                json!({ "tool": if agent == AgentKind::Qa { "run_code" } else { "write_file" },
                        "call_id": format!("c{call}"),
                        "arguments": json!({ "language": "python", "code": "def is_prime(n):\n    return n > 1\n" }).to_string(),
                        "outcome": "ok", "duration_seconds": 0.028,
                        "result": json!({ "outcome": "ok", "exit_code": 0, "wall_seconds": 0.03, "cpu_seconds": 0.02,
                                          "peak_rss_bytes": 9_000_000, "stdout": "ok\n", "stderr": "", "violations": [] }).to_string() }),
            )));
            call += 1;
        }
        if agent == AgentKind::Code {
            writer.send(WriteOp::Event(event(
                id,
                tick(10),
                EventKind::CodeAttempt,
                director,
                json!({ "step": idx, "attempt": 1, "of": 3, "round": 1, "passed": true, "vacuous": false,
                        "off_task": false, "run_outcome": "ok", "wall_seconds": 0.03, "cpu_seconds": 0.02,
                        "peak_rss_bytes": 9_000_000 }),
            )));
        }
        writer.send(WriteOp::Event(event(
            id,
            tick(10),
            EventKind::AgentFinished,
            Some(agent),
            json!({ "step": idx, "output": format!("output of step {idx}"), "duration_seconds": 1.0 }),
        )));
    }
    writer.send(WriteOp::Event(event(
        id,
        tick(5),
        EventKind::QaVerdict,
        Some(AgentKind::Qa),
        json!({ "verdict": "pass", "feedback": "the test covers primes and non-primes", "round": 1 }),
    )));
    let result = json!({
        "answer": "```python\ndef is_prime(n):\n    if n < 2:\n        return False\n    return all(n % d for d in range(2, int(n ** 0.5) + 1))\n```",
        "verdict": { "verdict": "pass", "feedback": "the test covers primes and non-primes" },
        "steps": [], "tests": [],
    });
    writer
        .finish_task(TaskEnd {
            task_id: id,
            status: TaskStatus::Completed,
            result: Some(result.clone()),
            error: None,
            event: event(
                id,
                tick(5),
                EventKind::TaskCompleted,
                None,
                json!({ "result": result }),
            ),
            memories: Vec::new(),
        })
        .await?;
    Ok(id)
}
