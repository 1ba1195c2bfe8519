//! Scale-out through the Redis queue, with real processes on this machine: one `troupe serve --role api` and
//! 1, 2, then 3 `troupe worker`s on one PostgreSQL database and one Redis, tasks replayed from a recording
//! (no model time), against one `troupe serve` with the local queue (the baseline) in the same run.
//!
//! Reported (JSON on stdout, one object):
//! - `baseline` and `workers.{1,2,3}`: tasks/s with `IN_FLIGHT` clients, each submitting a task over HTTP,
//!   following its WebSocket to the end (on the API node: every event crosses nodes), then the next;
//! - `hop_ms`: per task, `task.queued` (committed by the API node) to `task.started` (on a worker), p50/p99,
//!   measured from the stored events of a sample of the run's tasks: the baseline's is the local queue's;
//! - `reclaim_s`: a worker killed with SIGKILL while its task's first step runs on the real model, at the
//!   default queue timings: seconds from the kill to the task's `task.resumed` on the other worker, and to
//!   its end.
//!
//! The PostgreSQL server: `TROUPE_BENCH_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`;
//! a database is created and dropped per run); Redis: `TROUPE_BENCH_REDIS_URL` (default
//! `redis://127.0.0.1:6379`, under a key prefix of its own); tasks per figure: `TROUPE_BENCH_SCALE_TASKS`
//! (default 600).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use awc::ws::Frame;
use futures_util::{SinkExt, StreamExt};
use sea_orm::{ConnectionTrait, Database};
use serde_json::{json, Value};
use troupe::config::DatabaseSettings;
use troupe::domain::{EventKind, TaskId};
use troupe::storage::Storage;

const IN_FLIGHT: usize = 64;
const TASKS: usize = 600;
const HOP_SAMPLE: usize = 200;
const PROMPT: &str = "Write a Python function that adds two numbers";

/// A `troupe` process; killed when dropped.
struct Node {
    child: Child,
    port: u16,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Everything the nodes of one deployment share.
struct Deployment {
    root: PathBuf,
    /// Its database's name (dropped at the end), and its URL.
    name: String,
    database: String,
    redis: String,
    prefix: String,
    queue: bool,
    work: tempfile::TempDir,
}

impl Deployment {
    /// A deployment on a fresh database `troupe_bench_{suffix}` of the server at `base`, its Redis keys
    /// under a prefix of its own; `queue`: the Redis queue, else the local one.
    async fn create(
        admin: &sea_orm::DatabaseConnection,
        base: &str,
        suffix: &str,
        redis: &str,
        queue: bool,
    ) -> anyhow::Result<Deployment> {
        let name = format!("troupe_bench_{suffix}");
        admin
            .execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await?;
        Ok(Deployment {
            root: PathBuf::from(env!("CARGO_MANIFEST_DIR")),
            database: format!("{base}/{name}"),
            name,
            redis: redis.to_owned(),
            prefix: format!("troupe-bench-{suffix}"),
            queue,
            work: tempfile::tempdir()?,
        })
    }

    fn node(&self, args: &[&str], name: &str) -> anyhow::Result<Node> {
        let mut command = Command::new(env!("CARGO_BIN_EXE_troupe"));
        command
            .args(args)
            .args(["--bind", "127.0.0.1:0"])
            .env("TROUPE_PROFILE", "test")
            .env("TROUPE_CONFIG_DIR", self.root.join("config"))
            .env("TROUPE__DATABASE__URL", &self.database)
            .env(
                "TROUPE__LLM__MODEL",
                self.root.join("models/SmolLM2-135M-Instruct.Q4_1.gguf"),
            )
            .env("TROUPE__MEMORY__ENABLED", "false")
            .env("TROUPE__SANDBOX__ENABLED", "false")
            .env("TROUPE__SANDBOX__WORKSPACES", self.work.path().join(name))
            .env(
                "TROUPE__DIRECTOR__MAX_CONCURRENT_TASKS",
                IN_FLIGHT.to_string(),
            )
            .env("TROUPE__REDIS__URL", &self.redis)
            .env("TROUPE__REDIS__KEY_PREFIX", &self.prefix)
            .env("TROUPE__TELEMETRY__LOG_LEVEL", "error")
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if self.queue {
            command
                .env("TROUPE__QUEUE__BACKEND", "redis")
                .env("TROUPE__QUEUE__CONSUMER", name);
        }
        let mut child = command.spawn()?;
        let stderr = child
            .stderr
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stderr"))?;
        let lines: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(mut lines) = sink.lock() {
                    lines.push(line);
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let port = lines.lock().ok().and_then(|lines| {
                lines.iter().find_map(|line| {
                    line.strip_prefix("troupe serving on port ")?
                        .trim()
                        .parse()
                        .ok()
                })
            });
            if let Some(port) = port {
                return Ok(Node { child, port });
            }
            if let Some(status) = child.try_wait()? {
                anyhow::bail!("{name} exited with {status}: {:?}", lines.lock().ok());
            }
            anyhow::ensure!(Instant::now() < deadline, "{name} did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn client() -> awc::Client {
    awc::Client::builder()
        .timeout(Duration::from_secs(60))
        .finish()
}

async fn submit(client: &awc::Client, port: u16, body: &Value) -> anyhow::Result<TaskId> {
    let mut response = client
        .post(format!("http://127.0.0.1:{port}/api/v1/tasks"))
        .send_json(body)
        .await
        .map_err(|e| anyhow::anyhow!("submit: {e}"))?;
    let answer: Value = response.json().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    anyhow::ensure!(response.status().as_u16() == 202, "submit: {answer}");
    Ok(answer["id"].as_str().unwrap_or_default().parse()?)
}

/// Follows the task's WebSocket to its end; the terminal event's kind.
async fn follow(port: u16, id: TaskId) -> anyhow::Result<String> {
    let url = format!("ws://127.0.0.1:{port}/api/v1/tasks/{id}/events");
    let (_, mut socket) = awc::Client::new()
        .ws(url)
        .connect()
        .await
        .map_err(|e| anyhow::anyhow!("websocket: {e}"))?;
    let mut last = String::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(120), socket.next()).await? {
            Some(Ok(Frame::Text(bytes))) => {
                let event: Value = serde_json::from_slice(&bytes)?;
                last = event["kind"].as_str().unwrap_or_default().to_owned();
            }
            Some(Ok(Frame::Ping(bytes))) => {
                socket
                    .send(awc::ws::Message::Pong(bytes))
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
            }
            Some(Ok(Frame::Close(_))) | None => return Ok(last),
            Some(Ok(_)) => {}
            Some(Err(error)) => anyhow::bail!("websocket: {error}"),
        }
    }
}

/// `tasks` replayed tasks through `port` by `IN_FLIGHT` clients; tasks/s and the ids.
async fn throughput(
    port: u16,
    replay_of: TaskId,
    tasks: usize,
) -> anyhow::Result<(f64, Vec<TaskId>)> {
    let body = json!({ "prompt": PROMPT, "options": { "replay_of": replay_of } });
    let claimed = std::rc::Rc::new(std::cell::Cell::new(0_usize));
    let ids = std::rc::Rc::new(std::cell::RefCell::new(Vec::with_capacity(tasks)));
    let started = Instant::now();
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..IN_FLIGHT {
        let (claimed, ids, body) = (claimed.clone(), ids.clone(), body.clone());
        clients.spawn_local(async move {
            let client = client();
            while claimed.get() < tasks {
                claimed.set(claimed.get() + 1);
                let id = submit(&client, port, &body).await?;
                let end = follow(port, id).await?;
                anyhow::ensure!(end == "task.completed", "task {id} ended {end}");
                ids.borrow_mut().push(id);
            }
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(result) = clients.join_next().await {
        result??;
    }
    let rate = tasks as f64 / started.elapsed().as_secs_f64();
    let ids = ids.borrow().clone();
    Ok((rate, ids))
}

/// `task.queued` to `task.started` of a sample of `ids`, in milliseconds: p50, p99.
async fn hop(storage: &Storage, ids: &[TaskId]) -> anyhow::Result<Value> {
    let mut hops = Vec::new();
    for id in ids.iter().rev().take(HOP_SAMPLE) {
        let events = storage.events_after(*id, 0).await?;
        let at = |kind: EventKind| events.iter().find(|e| e.kind == kind).map(|e| e.at);
        if let (Some(queued), Some(started)) =
            (at(EventKind::TaskQueued), at(EventKind::TaskStarted))
        {
            hops.push((started - queued).num_microseconds().unwrap_or(0) as f64 / 1e3);
        }
    }
    Ok(
        json!({ "p50": percentile(&mut hops, 0.50), "p99": percentile(&mut hops, 0.99), "n": hops.len() }),
    )
}

async fn wait_until(
    limit: Duration,
    mut done: impl AsyncFnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while !done().await? {
        anyhow::ensure!(Instant::now() < deadline, "not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// A task run on the real model through `port`, to its end: the recording later tasks replay.
async fn record(storage: &Storage, port: u16) -> anyhow::Result<TaskId> {
    let id = submit(&client(), port, &json!({ "prompt": PROMPT })).await?;
    let end = follow(port, id).await?;
    anyhow::ensure!(end == "task.completed", "the recorded task ended {end}");
    // Its end is on the socket once committed; the status row is in the same commit.
    let task = storage.task(id).await?;
    anyhow::ensure!(task.is_some(), "the recorded task is not stored");
    Ok(id)
}

fn main() -> anyhow::Result<()> {
    let server = std::env::var("TROUPE_BENCH_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let redis =
        std::env::var("TROUPE_BENCH_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let tasks = std::env::var("TROUPE_BENCH_SCALE_TASKS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(TASKS);
    actix_rt::System::new().block_on(async move {
        let admin = Database::connect(&server).await?;
        let base = server
            .rsplit_once('/')
            .map_or(server.as_str(), |(base, _)| base)
            .to_owned();
        let stamp = chrono::Utc::now().timestamp();
        let mut figures = json!({ "tasks": tasks, "in_flight": IN_FLIGHT });
        let mut databases = Vec::new();

        // Baseline: one process, the local queue.
        let local =
            Deployment::create(&admin, &base, &format!("local_{stamp}"), &redis, false).await?;
        databases.push(local.name.clone());
        let storage = open(&local.database).await?;
        {
            let node = local.node(&["serve"], "local")?;
            let recorded = record(&storage, node.port).await?;
            throughput(node.port, recorded, 20).await?;
            let (rate, ids) = throughput(node.port, recorded, tasks).await?;
            figures["baseline"] =
                json!({ "tasks_per_s": rate, "hop_ms": hop(&storage, &ids).await? });
            eprintln!("baseline: {rate:.0} tasks/s");
        }

        // The Redis queue: one API node, then 1, 2 and 3 workers.
        let queued =
            Deployment::create(&admin, &base, &format!("queue_{stamp}"), &redis, true).await?;
        databases.push(queued.name.clone());
        let storage = open(&queued.database).await?;
        let api = queued.node(&["serve", "--role", "api"], "api")?;
        let mut workers = vec![queued.node(&["worker"], "worker-1")?];
        let recorded = record(&storage, api.port).await?;
        for count in 1..=3 {
            while workers.len() < count {
                workers.push(queued.node(&["worker"], &format!("worker-{}", workers.len() + 1))?);
            }
            throughput(api.port, recorded, 20).await?;
            let (rate, ids) = throughput(api.port, recorded, tasks).await?;
            figures["workers"][count.to_string()] =
                json!({ "tasks_per_s": rate, "hop_ms": hop(&storage, &ids).await? });
            eprintln!("{count} worker(s): {rate:.0} tasks/s");
        }

        // A worker killed mid-task, at the default queue timings: two workers left running.
        workers.truncate(2);
        let id = submit(&client(), api.port, &json!({ "prompt": PROMPT })).await?;
        wait_until(Duration::from_secs(120), async || {
            Ok(storage
                .events_after(id, 0)
                .await?
                .iter()
                .any(|e| e.kind == EventKind::AgentStarted))
        })
        .await?;
        let owner = storage
            .task(id)
            .await?
            .and_then(|task| task.owner)
            .unwrap_or_default();
        let lease = storage
            .lease(&owner)
            .await?
            .ok_or_else(|| anyhow::anyhow!("no lease {owner}"))?;
        let holder = workers
            .iter()
            .position(|worker| worker.child.id() == lease.pid)
            .ok_or_else(|| anyhow::anyhow!("the task's owner is no worker"))?;
        let killed_at = Instant::now();
        drop(workers.remove(holder));
        wait_until(Duration::from_secs(300), async || {
            Ok(storage
                .events_after(id, 0)
                .await?
                .iter()
                .any(|e| e.kind == EventKind::TaskResumed))
        })
        .await?;
        let resumed = killed_at.elapsed().as_secs_f64();
        wait_until(Duration::from_secs(300), async || {
            Ok(storage
                .events_after(id, 0)
                .await?
                .last()
                .is_some_and(|e| e.kind.is_terminal()))
        })
        .await?;
        figures["reclaim_s"] = json!({
            "to_resumed": resumed,
            "to_end": killed_at.elapsed().as_secs_f64(),
            "claim_idle_seconds": 30,
            "renew_seconds": 5,
        });
        drop(workers);
        drop(api);
        for name in databases {
            admin
                .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .await?;
        }
        println!("{figures}");
        Ok(())
    })
}

async fn open(url: &str) -> anyhow::Result<Storage> {
    let storage = Storage::connect(&DatabaseSettings {
        url: url.to_owned(),
        max_connections: 4,
        writer_queue: troupe::storage::writer::DEFAULT_QUEUE,
    })
    .await?;
    storage.migrate().await?;
    Ok(storage)
}

fn percentile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((values.len() - 1) as f64 * q).round() as usize;
    values[rank]
}
