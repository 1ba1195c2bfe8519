//! Several machines, one system (issue 17): real processes on this machine — PostgreSQL (a database per
//! test), Redis (a key prefix per test), one `troupe serve --role api` and two `troupe worker`s — on the
//! real model, so a step lasts long enough to kill a worker in.
//!
//! A worker killed with SIGKILL in its task's second step: the other worker takes the entry once it is
//! idle (`XAUTOCLAIM`), resumes the task from its records without running the first step or any recorded
//! model call again, and the task ends; a WebSocket on the API node streams every event, with no gap and
//! no duplicate, though none was committed there; and the OTLP receiver in the test gets one trace with
//! spans from the API and from both workers. A task whose entry is delivered more than
//! `queue.max_deliveries` times, and an entry that names no task, go to the dead-letter stream (its three
//! nodes start at once on an empty database: their migrations take turns).

use std::collections::BTreeSet;
use std::time::Duration;

use deadpool_redis::redis;
use serde_json::Value;
use troupe::domain::{EventKind, TaskId, TaskStatus};
use troupe::queue::TaskQueue;
use troupe::storage::Storage;

use crate::helpers::client_for;
use crate::otlp::{hex, start_receiver, string_attribute, Received};
use crate::postgres::TestDatabase;
use crate::resume::{
    assert_ended_by_its_flow, assert_no_gap, assert_resumed_after_step_one, ended, open, purposes,
    wait_for_events, wait_for_kind, wait_for_step_two, Server,
};

fn redis_url() -> String {
    std::env::var("TROUPE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// One deployment: the settings every node shares, on a database and a key prefix of its own.
pub(crate) struct Deployment {
    pub(crate) database: TestDatabase,
    redis: String,
    prefix: String,
    otlp: String,
    dir: tempfile::TempDir,
    max_deliveries: u32,
}

impl Deployment {
    pub(crate) async fn new(otlp: &str, max_deliveries: u32) -> Deployment {
        Self::on_redis(otlp, max_deliveries, &redis_url()).await
    }

    async fn on_redis(otlp: &str, max_deliveries: u32, redis: &str) -> Deployment {
        Deployment {
            database: TestDatabase::create().await,
            redis: redis.to_owned(),
            prefix: format!("troupe-test-{}", uuid::Uuid::new_v4().simple()),
            otlp: otlp.to_owned(),
            dir: tempfile::tempdir().unwrap(),
            max_deliveries,
        }
    }

    /// A node: `args` (serve --role api, or worker), its name as its consumer and instance id.
    pub(crate) async fn node(&self, args: &[&str], name: &str) -> Server {
        let redis = self.redis.clone();
        let max_deliveries = self.max_deliveries.to_string();
        let instance = format!("service.instance.id={name}");
        let env = [
            ("TROUPE__QUEUE__BACKEND", "redis"),
            ("TROUPE__REDIS__URL", redis.as_str()),
            ("TROUPE__REDIS__KEY_PREFIX", self.prefix.as_str()),
            ("TROUPE__QUEUE__CONSUMER", name),
            ("TROUPE__QUEUE__RENEW_SECONDS", "1"),
            ("TROUPE__QUEUE__CLAIM_IDLE_SECONDS", "5"),
            ("TROUPE__QUEUE__BLOCK_MS", "200"),
            ("TROUPE__QUEUE__MAX_DELIVERIES", max_deliveries.as_str()),
            ("TROUPE__TELEMETRY__OTLP_ENDPOINT", self.otlp.as_str()),
            ("TROUPE__TELEMETRY__RESOURCE_ATTRIBUTES", instance.as_str()),
            // Spans leave within a fifth of a second: a worker killed later has exported what ended.
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        ];
        Server::start_as(&self.database.url, &self.dir, args, &env).await
    }

    /// The API node (`serve --role api`).
    pub(crate) async fn api(&self) -> Server {
        self.node(&["serve", "--role", "api", "--bind", "127.0.0.1:0"], "api")
            .await
    }

    /// A worker named `name`.
    pub(crate) async fn worker(&self, name: &str) -> Server {
        self.node(&["worker", "--bind", "127.0.0.1:0"], name).await
    }

    fn queue(&self) -> TaskQueue {
        TaskQueue::connect(&self.redis, &self.prefix, "tasks", "workers", "test").unwrap()
    }

    /// Waits until the queue holds nothing: no entry waiting, pending or dead (bounded).
    pub(crate) async fn wait_for_empty_queue(&self) {
        let queue = self.queue();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let depth = queue.depth().await;
            if let Ok(depth) = &depth {
                if (depth.waiting, depth.pending, depth.dead) == (0, 0, 0) {
                    return;
                }
            }
            assert!(std::time::Instant::now() < deadline, "the queue: {depth:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub(crate) async fn finish(self) {
        let prefix = self.prefix.clone();
        if let Ok(client) = redis::Client::open(self.redis.clone()) {
            if let Ok(mut connection) = client.get_multiplexed_async_connection().await {
                let stream = format!("{prefix}:tasks");
                let _: Result<(), _> = redis::cmd("DEL")
                    .arg(&stream)
                    .arg(format!("{stream}:dead"))
                    .query_async(&mut connection)
                    .await;
            }
        }
        self.database.drop_now().await;
    }
}

/// The worker whose lease owns task `id` now.
async fn holder(storage: &Storage, id: TaskId, workers: &[&Server]) -> usize {
    let task = storage.task(id).await.unwrap().unwrap();
    let owner = task.owner.expect("a running task has an owner");
    let lease = storage
        .lease(&owner)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("no lease {owner}"));
    workers
        .iter()
        .position(|worker| worker.pid() == lease.pid)
        .unwrap_or_else(|| panic!("lease {owner} (pid {}) is no worker's", lease.pid))
}

/// Waits until `received` holds spans of `trace` from each of `instances` (bounded).
async fn wait_for_spans(received: &Received, trace: &str, instances: &[&str]) -> BTreeSet<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let seen: BTreeSet<String> = received
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, spans)| spans.iter().any(|span| hex(&span.trace_id) == trace))
            .filter_map(|(resource, _)| string_attribute(resource, "service.instance.id"))
            .collect();
        if instances.iter().all(|instance| seen.contains(*instance)) {
            return seen;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "trace {trace} has spans from {seen:?}, not from each of {instances:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[actix_rt::test]
async fn a_worker_killed_mid_task_costs_only_time_and_one_trace_spans_the_nodes() {
    let (otlp, received, receiver) = start_receiver();
    let deployment = Deployment::new(&otlp, 3).await;
    let storage = open(&deployment.database.url).await;
    let api = deployment.api().await;
    let mut workers = vec![
        deployment.worker("worker-a").await,
        deployment.worker("worker-b").await,
    ];
    let id = api
        .submit("List three facts about the river Danube, then summarise them in one sentence")
        .await;
    // The API node's WebSocket, open before anything runs: every event it streams was committed on a
    // worker.
    let watcher = client_for(api.port, tempfile::tempdir().unwrap());
    let streamed = actix_rt::spawn(async move {
        watcher
            .follow(&id.to_string(), 0, Duration::from_secs(600))
            .await
    });
    wait_for_step_two(&storage, id).await;
    let killed = holder(&storage, id, &workers.iter().collect::<Vec<_>>()).await;
    let calls_before = purposes(&storage, id).await;
    workers[killed].kill_9();
    let survivor = &workers[1 - killed];

    let events = wait_for_events(&storage, id, Duration::from_secs(300), "the end", ended).await;
    let task = storage.task(id).await.unwrap().unwrap();
    assert_ended_by_its_flow(&task);
    assert_no_gap(&events);
    assert_resumed_after_step_one(&events, &calls_before);

    // The API node streamed the whole log, in order, once each.
    let streamed: Vec<Value> = streamed.await.unwrap();
    let seqs: Vec<i64> = streamed.iter().filter_map(|e| e["seq"].as_i64()).collect();
    let stored: Vec<i64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs, stored,
        "the API node's WebSocket missed or repeated events"
    );

    // The survivor took the entry from the dead worker and acknowledged it once the end was committed.
    let depth = deployment.queue().depth().await.unwrap();
    assert_eq!(
        (depth.waiting, depth.pending, depth.dead),
        (0, 0, 0),
        "{depth:?}"
    );
    let metrics = client_for(survivor.port, tempfile::tempdir().unwrap())
        .metrics()
        .await;
    assert!(
        crate::helpers::metric_value(&metrics, "troupe_queue_reclaimed_total") >= 1.0,
        "{metrics}"
    );
    assert_eq!(
        crate::helpers::metric_value(
            &metrics,
            "troupe_queue_deliveries_total{outcome=\"resumed\"}"
        ),
        1.0
    );

    // One trace: the API's request, and both workers' spans under it.
    let trace = task.trace_id.clone().expect("the task has a trace");
    let instances = wait_for_spans(&received, &trace, &["api", "worker-a", "worker-b"]).await;
    assert!(instances.len() >= 3, "{instances:?}");

    drop(workers);
    drop(api);
    receiver.stop(false).await;
    deployment.finish().await;
}

#[actix_rt::test]
async fn an_entry_delivered_too_often_or_naming_no_task_goes_to_the_dead_letter_stream() {
    let (otlp, _received, receiver) = start_receiver();
    let deployment = Deployment::new(&otlp, 1).await;
    // The three start at once on the empty database: their migrations take turns.
    let (api, worker_a, worker_b) = futures_util::join!(
        deployment.node(&["serve", "--role", "api", "--bind", "127.0.0.1:0"], "api"),
        deployment.node(&["worker", "--bind", "127.0.0.1:0"], "worker-a"),
        deployment.node(&["worker", "--bind", "127.0.0.1:0"], "worker-b"),
    );
    let mut workers = vec![worker_a, worker_b];
    let storage = open(&deployment.database.url).await;
    // A malformed entry, as another program could write one.
    let client = redis::Client::open(redis_url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let stream = format!("{}:tasks", deployment.prefix);
    let _: String = redis::cmd("XADD")
        .arg(&stream)
        .arg("*")
        .arg("task")
        .arg("not-a-task")
        .query_async(&mut connection)
        .await
        .unwrap();

    let id = api
        .submit("Name two uses of copper and explain one of them")
        .await;
    wait_for_events(
        &storage,
        id,
        Duration::from_secs(240),
        "the first step starting",
        |events| {
            assert!(!ended(events), "the task ended before it could be killed");
            events.iter().any(|e| e.kind == EventKind::AgentStarted)
        },
    )
    .await;
    let killed = holder(&storage, id, &workers.iter().collect::<Vec<_>>()).await;
    workers[killed].kill_9();
    // The survivor takes the entry (its second delivery, one more than queue.max_deliveries = 1).
    let events = wait_for_events(&storage, id, Duration::from_secs(120), "the end", ended).await;
    let task = storage.task(id).await.unwrap().unwrap();
    assert_eq!(task.status, TaskStatus::Failed);
    let error = task.error.unwrap_or_default();
    assert!(
        error.contains("delivered 2 times") && error.contains("dead-letter"),
        "{error}"
    );
    assert_no_gap(&events);

    let queue = deployment.queue();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let dead = loop {
        let dead = queue.dead(10).await.unwrap();
        if dead.len() >= 2 {
            break dead;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "dead letters: {dead:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let poisoned = dead
        .iter()
        .find(|entry| entry.get("task").map(String::as_str) == Some(id.to_string().as_str()))
        .unwrap_or_else(|| panic!("{dead:?}"));
    assert_eq!(poisoned["deliveries"], "2");
    assert!(
        poisoned["reason"].contains("queue.max_deliveries"),
        "{poisoned:?}"
    );
    assert!(poisoned.contains_key("traceparent"), "{poisoned:?}");
    let malformed = dead
        .iter()
        .find(|entry| entry.get("task").map(String::as_str) == Some(""))
        .unwrap_or_else(|| panic!("{dead:?}"));
    assert!(
        malformed["reason"].contains("'not-a-task' is not a task id"),
        "{malformed:?}"
    );
    let depth = queue.depth().await.unwrap();
    assert_eq!(
        (depth.waiting, depth.pending, depth.dead),
        (0, 0, 2),
        "{depth:?}"
    );

    drop(workers);
    drop(api);
    receiver.stop(false).await;
    deployment.finish().await;
}

/// A Redis server of the test's own, so that it can be stopped: durable (appendonly) in `dir`, on `port`.
struct OwnRedis {
    child: std::process::Child,
    port: u16,
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl OwnRedis {
    async fn start(dir: &std::path::Path, port: u16) -> OwnRedis {
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "yes", "--daemonize", "no"])
            .arg("--dir")
            .arg(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (scripts/setup.sh test installs it)");
        let redis = OwnRedis { child, port };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let answered = match redis::Client::open(redis.url()) {
                Ok(client) => match client.get_multiplexed_async_connection().await {
                    Ok(mut connection) => redis::cmd("PING")
                        .query_async::<String>(&mut connection)
                        .await
                        .is_ok(),
                    Err(_) => false,
                },
                Err(_) => false,
            };
            if answered {
                return redis;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGTERM (Redis writes its append-only file and exits), then waits.
    fn stop(mut self) {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let status = self.child.wait().unwrap();
        assert!(status.success(), "redis-server stopped with {status}");
    }
}

/// A port nothing listens on now.
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[actix_rt::test]
async fn a_redis_outage_pauses_the_queue_loses_nothing_and_every_task_finishes() {
    let redis_dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let redis = OwnRedis::start(redis_dir.path(), port).await;
    let deployment = Deployment::on_redis("", 3, &redis.url()).await;
    let storage = open(&deployment.database.url).await;
    let api = deployment.api().await;
    let worker = deployment.worker("worker-a").await;
    let before = api
        .submit("List three facts about the river Danube, then summarise them in one sentence")
        .await;
    wait_for_kind(&storage, before, EventKind::AgentStarted).await;

    redis.stop();
    // The API says so, and takes nothing it could not queue: 503 with a JSON error, nothing stored.
    let client = client_for(api.port, tempfile::tempdir().unwrap());
    let (status, body) = client
        .post_task(&serde_json::json!({ "prompt": "What is 2 + 2?" }))
        .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("queue"),
        "{body}"
    );
    let (status, ready) = client.get("/readyz").await;
    assert_eq!(status, 503, "{ready}");
    assert_ne!(ready["checks"]["queue"], "ok", "{ready}");
    let (_, listed) = client.get("/api/v1/tasks").await;
    assert_eq!(
        listed["tasks"].as_array().map(Vec::len),
        Some(1),
        "{listed}"
    );
    // The task a worker holds runs on (it needs no Redis to run); its acknowledgement waits.
    let events =
        wait_for_events(&storage, before, Duration::from_secs(300), "the end", ended).await;
    assert_no_gap(&events);
    assert_ended_by_its_flow(&storage.task(before).await.unwrap().unwrap());

    // Redis back, from its append-only file: the acknowledgement lands, and new tasks run.
    let _redis = OwnRedis::start(redis_dir.path(), port).await;
    deployment.wait_for_empty_queue().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while client.get("/readyz").await.0 != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "the API did not become ready again"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let after = api.submit("What is 2 + 2?").await;
    wait_for_events(&storage, after, Duration::from_secs(300), "the end", ended).await;
    // Short-term memory has one home again: what the first task wrote in-process during the outage (a
    // window entry per finished step) was handed back to Redis, beside its plan written before it.
    let finished_steps = events
        .iter()
        .filter(|e| e.kind == EventKind::AgentFinished)
        .count();
    let mut redis = redis::Client::open(deployment.redis.clone())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let key = |part: &str| format!("{}:task:{before}:{part}", deployment.prefix);
    let window: Vec<String> = redis::cmd("LRANGE")
        .arg(key("window"))
        .arg(0)
        .arg(-1)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(window.len(), finished_steps, "{window:?}");
    let plan: Option<String> = redis::cmd("HGET")
        .arg(key("scratch"))
        .arg("plan")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(plan.is_some(), "the plan written before the outage");
    // Nothing ran twice: two first deliveries, no re-claim.
    let metrics = client_for(worker.port, tempfile::tempdir().unwrap())
        .metrics()
        .await;
    assert_eq!(
        crate::helpers::metric_value(
            &metrics,
            "troupe_queue_deliveries_total{outcome=\"started\"}"
        ),
        2.0,
        "{metrics}"
    );
    assert_eq!(
        crate::helpers::metric_value(&metrics, "troupe_queue_reclaimed_total"),
        0.0
    );
    drop(worker);
    drop(api);
    deployment.finish().await;
}

#[actix_rt::test]
async fn a_pause_on_a_worker_is_shown_and_resumed_through_the_api_node() {
    let deployment = Deployment::new("", 3).await;
    let storage = open(&deployment.database.url).await;
    let api = deployment.api().await;
    let worker = deployment.worker("worker-a").await;
    let client = client_for(api.port, tempfile::tempdir().unwrap());
    // The API node loads no model; the worker does.
    let (_, agents) = client.get("/api/v1/agents").await;
    assert_eq!(agents["model"]["provider"], "none", "{agents}");
    assert!(agents["model"]["worker"].is_null(), "{agents}");
    let (_, agents) = client_for(worker.port, tempfile::tempdir().unwrap())
        .get("/api/v1/agents")
        .await;
    assert_eq!(agents["model"]["provider"], "llama.cpp", "{agents}");
    // Set on the API node; the worker reloads the breakpoints when told.
    let (status, breakpoint) = client
        .post_json(
            "/api/v1/breakpoints",
            &serde_json::json!({ "on": "step", "step": 1 }),
        )
        .await;
    assert_eq!(status, 201, "{breakpoint}");
    let id = api.submit("What is 2 + 2?").await;
    wait_for_kind(&storage, id, EventKind::TaskPaused).await;

    // The API node shows what the worker holds it on, and its action reaches the worker.
    let (status, state) = client.get(&format!("/api/v1/tasks/{id}/state")).await;
    assert_eq!(status, 200, "{state}");
    assert_eq!(state["status"], "paused", "{state}");
    assert_eq!(state["pending"]["point"]["on"], "step", "{state}");
    assert_eq!(state["pending"]["reason"], "breakpoint", "{state}");
    let (status, bad) = client
        .post_json(
            &format!("/api/v1/tasks/{id}/resume"),
            &serde_json::json!({ "action": "override", "chosen": "research" }),
        )
        .await;
    assert_eq!(status, 400, "an override that does not fit a step: {bad}");
    let (status, resumed) = client
        .post_json(
            &format!("/api/v1/tasks/{id}/resume"),
            &serde_json::json!({ "action": "continue" }),
        )
        .await;
    assert_eq!(status, 200, "{resumed}");
    let events = wait_for_events(&storage, id, Duration::from_secs(300), "the end", ended).await;
    assert_no_gap(&events);
    assert_ended_by_its_flow(&storage.task(id).await.unwrap().unwrap());
    assert!(
        events.iter().any(|e| e.kind == EventKind::TaskResumed),
        "no task.resumed"
    );
    // Nobody holds a pause of it any more: the API node says so.
    let (status, late) = client
        .post_json(
            &format!("/api/v1/tasks/{id}/resume"),
            &serde_json::json!({ "action": "continue" }),
        )
        .await;
    assert_eq!(status, 409, "{late}");
    assert_eq!(late["error"]["code"], "not_paused", "{late}");
    drop(worker);
    drop(api);
    deployment.finish().await;
}
