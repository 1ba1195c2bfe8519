//! The same migrations and storage code on real PostgreSQL: each test gets its own database (created here,
//! dropped at the end). The server is found at `TROUPE_TEST_POSTGRES_URL` (default: the local one that
//! `scripts/setup.sh test` makes sure runs).

use sea_orm::{ConnectionTrait, Database};
use serde_json::json;
use troupe::config::DatabaseSettings;
use troupe::domain::{EventKind, TaskId, TaskStatus};
use troupe::events::{EventLog, Hub};
use troupe::storage::records::{NewTask, PendingEvent, TaskEnd, WriteOp};
use troupe::storage::writer::Writer;
use troupe::storage::Storage;
use troupe::telemetry::metrics::Metrics;

pub fn server_url() -> String {
    std::env::var("TROUPE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".into())
}

/// A fresh database; dropped when the guard goes.
pub struct TestDatabase {
    name: String,
    pub url: String,
}

impl TestDatabase {
    pub async fn create() -> Self {
        let server = server_url();
        let admin = Database::connect(&server)
            .await
            .expect("PostgreSQL reachable (scripts/setup.sh test)");
        let name = format!("troupe_test_{}", uuid::Uuid::new_v4().simple());
        admin
            .execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        let base = server
            .rsplit_once('/')
            .map_or(server.as_str(), |(base, _)| base)
            .to_owned();
        TestDatabase {
            url: format!("{base}/{name}"),
            name,
        }
    }

    /// A migrated storage on this database.
    pub async fn storage(&self, max_connections: u32) -> Storage {
        let settings = DatabaseSettings {
            url: self.url.clone(),
            max_connections,
            writer_queue: troupe::storage::writer::DEFAULT_QUEUE,
        };
        let storage = Storage::connect(&settings).await.unwrap();
        storage.migrate().await.unwrap();
        storage
    }

    pub async fn drop_now(self) {
        let admin = Database::connect(&server_url()).await.unwrap();
        admin
            .execute_unprepared(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .await
            .unwrap();
    }
}

/// Stores a queued task (row and `task.queued` event) and returns its id.
pub async fn store_queued_task(writer: &Writer) -> TaskId {
    let id = TaskId::new();
    let queued = PendingEvent::now(id, EventKind::TaskQueued, None, json!({ "prompt": "p" }));
    let task = NewTask {
        id,
        prompt: "p".into(),
        options: json!({}),
        trace_id: "0".repeat(32),
        replay_of: None,
        created_at: queued.at,
        owner: None,
    };
    writer.create_task(task, queued).await.unwrap();
    id
}

#[actix_rt::test]
async fn migrations_and_the_event_log_work_on_postgres() {
    let database = TestDatabase::create().await;
    let storage = database.storage(4).await;
    assert_eq!(storage.backend_name(), "postgres");
    storage.migrate().await.unwrap(); // idempotent

    let metrics = Metrics::new().unwrap();
    let hub = Hub::new();
    let writer = Writer::spawn(storage.clone(), hub.clone(), metrics);
    let log = EventLog::new(writer.clone(), hub.clone(), storage.clone());

    let id = store_queued_task(&writer).await;
    let mut subscription = log.subscribe(id, 0).await.unwrap();
    writer.send(WriteOp::MarkRunning(PendingEvent::now(
        id,
        EventKind::TaskStarted,
        None,
        json!({}),
    )));
    for n in 0..50 {
        log.emit(
            id,
            EventKind::LlmToken,
            None,
            json!({ "text": n.to_string() }),
        );
    }
    writer
        .finish_task(TaskEnd {
            task_id: id,
            status: TaskStatus::Completed,
            result: Some(json!({ "answer": 42 })),
            error: None,
            event: PendingEvent::now(id, EventKind::TaskCompleted, None, json!({})),
            memories: Vec::new(),
        })
        .await
        .unwrap();
    // A late event after the end is dropped, never appended after the terminal event.
    log.emit(id, EventKind::LlmToken, None, json!({ "text": "late" }));
    writer.flush().await.unwrap();

    let mut streamed = Vec::new();
    while let Some(event) = subscription.next().await.unwrap() {
        streamed.push(event);
    }
    drop(subscription);
    assert_eq!(
        hub.open_channels(),
        0,
        "the finished task's channel is retired"
    );
    let stored = storage.events_after(id, 0).await.unwrap();
    assert_eq!(stored.len(), 53);
    assert_eq!(streamed, stored);
    assert!(stored
        .iter()
        .enumerate()
        .all(|(i, e)| e.seq == i as i64 + 1));
    assert_eq!(stored.last().unwrap().kind, EventKind::TaskCompleted);
    let task = storage.task(id).await.unwrap().unwrap();
    assert_eq!(task.status, TaskStatus::Completed);
    assert_eq!(task.result, Some(json!({ "answer": 42 })));
    assert!(task.started_at.is_some() && task.finished_at.is_some());
    let usage = storage.usage(id).await.unwrap();
    assert_eq!(usage.llm_calls, 0);
    database.drop_now().await;
}

#[actix_rt::test]
async fn tasks_left_by_a_dead_process_are_resumed_or_failed_with_the_reason_at_start_up_on_postgres(
) {
    let database = TestDatabase::create().await;
    crate::resume::a_dead_owners_tasks_are_resumed_or_failed_with_the_reason(&database.url).await;
    database.drop_now().await;
}
