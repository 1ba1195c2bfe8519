//! The storage writer on SQLite and on PostgreSQL: a batch with one bad op commits every other task's ops
//! and fails only the bad op's task; a model call's streamed pieces are a handful of rows yet read (and
//! broadcast) one event per piece; a full queue fails the task that lost a write.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sea_orm::{ColumnTrait, Database, EntityTrait, PaginatorTrait, QueryFilter};
use serde_json::json;
use tokio::sync::oneshot;
use troupe::config::DatabaseSettings;
use troupe::domain::{AgentKind, Event, EventKind, TaskId, TaskStatus};
use troupe::events::{EventLog, Hub};
use troupe::storage::entities::{event, llm_call};
use troupe::storage::records::{LlmCallRecord, PendingEvent, TaskEnd, WriteOp};
use troupe::storage::writer::{Writer, DEFAULT_QUEUE};
use troupe::storage::Storage;
use troupe::telemetry::metrics::Metrics;

use crate::postgres::{store_queued_task, TestDatabase};

/// A database of one backend for one test.
enum Backend {
    Sqlite(tempfile::TempDir),
    Postgres(TestDatabase),
}

impl Backend {
    async fn sqlite() -> Backend {
        Backend::Sqlite(tempfile::tempdir().unwrap())
    }

    async fn postgres() -> Backend {
        Backend::Postgres(TestDatabase::create().await)
    }

    fn url(&self) -> String {
        match self {
            Backend::Sqlite(dir) => {
                format!("sqlite://{}/writer.sqlite?mode=rwc", dir.path().display())
            }
            Backend::Postgres(database) => database.url.clone(),
        }
    }

    async fn storage(&self) -> Storage {
        let storage = Storage::connect(&DatabaseSettings {
            url: self.url(),
            max_connections: 4,
            writer_queue: DEFAULT_QUEUE,
        })
        .await
        .unwrap();
        storage.migrate().await.unwrap();
        storage
    }

    async fn done(self) {
        if let Backend::Postgres(database) = self {
            database.drop_now().await;
        }
    }
}

/// What the writer published, in order.
type Published = Arc<Mutex<Vec<Arc<Event>>>>;

/// Every event the writer publishes, kept (and passed on to `hub`).
fn recording(hub: Hub) -> (impl Fn(Arc<Event>) + Send + 'static, Published) {
    let seen: Published = Arc::default();
    let kept = Arc::clone(&seen);
    let publish = move |event: Arc<Event>| {
        kept.lock().unwrap().push(Arc::clone(&event));
        hub.publish(event);
    };
    (publish, seen)
}

/// A publisher that passes every event on to `then` and, once `armed`, holds the writer (on its own thread)
/// inside the next publish: it says so on `entered` and waits for `release`. While it is held, ops sent to
/// the writer queue up, so they are one batch when it is released.
struct Gate {
    armed: Arc<std::sync::atomic::AtomicBool>,
    entered: std::sync::mpsc::Receiver<()>,
    release: std::sync::mpsc::Sender<()>,
}

fn gate(
    then: impl Fn(Arc<Event>) + Send + 'static,
) -> (impl Fn(Arc<Event>) + Send + 'static, Gate) {
    let armed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (entered_tx, entered) = std::sync::mpsc::channel();
    let (release, release_rx) = std::sync::mpsc::channel::<()>();
    let release_rx = Mutex::new(release_rx);
    let trigger = Arc::clone(&armed);
    let publish = move |event: Arc<Event>| {
        then(event);
        if trigger.swap(false, std::sync::atomic::Ordering::SeqCst) {
            let _ = entered_tx.send(());
            let _ = release_rx.lock().unwrap().recv();
        }
    };
    (
        publish,
        Gate {
            armed,
            entered,
            release,
        },
    )
}

impl Gate {
    /// Holds the writer inside publishing an event it is sent now (for `task`).
    fn hold(&self, writer: &Writer, task: TaskId) {
        self.armed.store(true, std::sync::atomic::Ordering::SeqCst);
        writer.emit(task, EventKind::ToolCalled, None, json!({ "n": "held" }));
        self.entered
            .recv_timeout(Duration::from_secs(30))
            .expect("the writer (on its own thread) publishes the held event");
    }

    fn release(&self) {
        self.release.send(()).unwrap();
    }
}

fn call(task_id: TaskId, purpose: &str) -> WriteOp {
    WriteOp::LlmCall(LlmCallRecord {
        task_id,
        purpose: purpose.into(),
        agent: AgentKind::Code,
        provider: "replay".into(),
        model: "m".into(),
        prompt: "[]".into(),
        output: format!("output of {purpose}"),
        choice: None,
        prompt_tokens: 3,
        completion_tokens: 2,
        cost_usd: 0.0,
        duration_seconds: 0.01,
        request: None,
        request_digest: None,
    })
}

fn started(task_id: TaskId) -> WriteOp {
    WriteOp::MarkRunning(PendingEvent::now(
        task_id,
        EventKind::TaskStarted,
        None,
        json!({}),
    ))
}

fn piece(task_id: TaskId, purpose: &str, n: usize) -> WriteOp {
    WriteOp::Event(PendingEvent::now(
        task_id,
        EventKind::LlmToken,
        Some(AgentKind::Code),
        json!({ "purpose": purpose, "text": format!("t{n} "), "p": (n % 100) as f64 / 100.0 }),
    ))
}

/// A task's completion, sent without waiting (so, while a [`Gate`] holds the writer, it lands in
/// the batch of the ops before it); its answer comes on the receiver.
fn finish(
    writer: &Writer,
    task_id: TaskId,
) -> oneshot::Receiver<Result<(), troupe::storage::StorageError>> {
    let (reply, answer) = oneshot::channel();
    writer.send(WriteOp::FinishTask {
        end: TaskEnd {
            task_id,
            status: TaskStatus::Completed,
            result: Some(json!({ "answer": 42 })),
            error: None,
            event: PendingEvent::now(task_id, EventKind::TaskCompleted, None, json!({})),
            memories: Vec::new(),
        },
        reply: Some(reply),
    });
    answer
}

fn counter(metrics: &Metrics, op: &str) -> u64 {
    metrics.store_write_errors.with_label_values(&[op]).get()
}

async fn a_bad_op_fails_only_its_task(backend: Backend) {
    let storage = backend.storage().await;
    let metrics = Metrics::new().unwrap();
    let (recorder, published) = recording(Hub::new());
    let (publish, gate) = gate(recorder);
    let writer = Writer::spawn(storage.clone(), publish, metrics.clone());
    let bad = store_queued_task(&writer).await;
    let good = store_queued_task(&writer).await;
    let holder = store_queued_task(&writer).await;

    // One batch (the writer is held while they are sent): the bad task's second model call reuses a purpose,
    // which the unique index on (task_id, purpose) refuses.
    gate.hold(&writer, holder);
    writer.send(started(bad));
    writer.send(started(good));
    writer.send(call(bad, "plan"));
    writer.send(call(good, "plan"));
    for n in 0..10 {
        writer.send(piece(good, "work.1", n));
    }
    writer.send(call(bad, "plan"));
    writer.send(call(good, "work.1"));
    writer.emit(
        bad,
        EventKind::ToolCalled,
        None,
        json!({ "after": "the bad op" }),
    );
    let bad_end = finish(&writer, bad);
    let good_end = finish(&writer, good);
    gate.release();
    writer.flush().await.unwrap();
    good_end.await.unwrap().unwrap();
    // The flow's own end after the storage failure is a late write: dropped, and it overwrites nothing.
    bad_end.await.unwrap().unwrap();

    let task = storage.task(good).await.unwrap().unwrap();
    assert_eq!(task.status, TaskStatus::Completed);
    let events = storage.events_after(good, 0).await.unwrap();
    assert_eq!(events.len(), 1 + 1 + 10 + 1, "{events:?}");
    assert!(events
        .iter()
        .enumerate()
        .all(|(i, e)| e.seq == i as i64 + 1));
    assert_eq!(storage.usage(good).await.unwrap().llm_calls, 2);

    let task = storage.task(bad).await.unwrap().unwrap();
    assert_eq!(task.status, TaskStatus::Failed);
    let error = task.error.unwrap();
    assert!(error.contains("insert model calls"), "{error}");
    assert!(task.finished_at.is_some());
    let events = storage.events_after(bad, 0).await.unwrap();
    let kinds: Vec<EventKind> = events.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [
            EventKind::TaskQueued,
            EventKind::TaskStarted,
            EventKind::TaskFailed
        ],
        "the ops after the bad one are dropped"
    );
    assert!(events
        .iter()
        .enumerate()
        .all(|(i, e)| e.seq == i as i64 + 1));
    let failed = &events[2];
    assert_eq!(failed.data["storage"], true);
    assert_eq!(failed.data["error"].as_str(), Some(error.as_str()));
    // The good op before the bad one committed.
    assert_eq!(storage.usage(bad).await.unwrap().llm_calls, 1);

    assert_eq!(counter(&metrics, "batch"), 1);
    assert_eq!(counter(&metrics, "task"), 1);
    let told: Vec<Arc<Event>> = published
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.task_id == bad && e.kind == EventKind::TaskFailed)
        .cloned()
        .collect();
    assert_eq!(told.len(), 1);
    assert!(troupe::storage::writer::failed_by_storage(&told[0]));
    backend.done().await;
}

#[actix_rt::test]
async fn a_bad_op_fails_only_its_task_on_sqlite() {
    a_bad_op_fails_only_its_task(Backend::sqlite().await).await;
}

#[actix_rt::test]
async fn a_bad_op_fails_only_its_task_on_postgres() {
    a_bad_op_fails_only_its_task(Backend::postgres().await).await;
}

async fn a_long_answer_is_a_handful_of_rows(backend: Backend) {
    let storage = backend.storage().await;
    let hub = Hub::new();
    let (publish, published) = recording(hub.clone());
    let writer = Writer::spawn(storage.clone(), publish, Metrics::new().unwrap());
    let log = EventLog::new(writer.clone(), hub, storage.clone());
    let id = store_queued_task(&writer).await;
    let mut subscription = log.subscribe(id, 0).await.unwrap();
    writer.send(started(id));
    for n in 0..300 {
        writer.send(piece(id, "work.1", n));
    }
    writer.send(call(id, "work.1"));
    writer.emit(
        id,
        EventKind::LlmFinished,
        Some(AgentKind::Code),
        json!({ "purpose": "work.1" }),
    );
    finish(&writer, id).await.unwrap().unwrap();

    let db = Database::connect(backend.url()).await.unwrap();
    let rows = event::Entity::find()
        .filter(event::Column::TaskId.eq(id.to_string()))
        .count(&db)
        .await
        .unwrap();
    // queued, started, 300 pieces in rows of at most 64, finished, completed.
    assert_eq!(rows, 2 + 5 + 2, "rows of the task's log");
    assert_eq!(
        llm_call::Entity::find()
            .filter(llm_call::Column::TaskId.eq(id.to_string()))
            .count(&db)
            .await
            .unwrap(),
        1
    );
    db.close().await.unwrap();

    let events = storage.events_after(id, 0).await.unwrap();
    assert_eq!(events.len(), 304);
    assert!(events
        .iter()
        .enumerate()
        .all(|(i, e)| e.seq == i as i64 + 1));
    for (n, event) in events[2..302].iter().enumerate() {
        assert_eq!(event.kind, EventKind::LlmToken);
        assert_eq!(event.agent, Some(AgentKind::Code));
        assert_eq!(
            event.data,
            json!({ "purpose": "work.1", "text": format!("t{n} "), "p": (n % 100) as f64 / 100.0 })
        );
    }
    // Published one by one, exactly as stored (time to the microsecond included).
    let broadcast: Vec<Event> = published
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.task_id == id)
        .map(|e| (**e).clone())
        .collect();
    assert_eq!(broadcast, events);
    let mut streamed = Vec::new();
    while let Some(event) = subscription.next().await.unwrap() {
        streamed.push(event);
    }
    assert_eq!(streamed, events);

    // From the middle of a coalesced row (pieces are seq 3..=66, 67..=130, ...).
    let after = storage.events_after(id, 40).await.unwrap();
    assert_eq!(after.first().map(|e| e.seq), Some(41));
    assert_eq!(after, events[40..]);
    // A page counts events, not rows.
    let (page, next) = storage.events_page(id, 40, Some(30), &[]).await.unwrap();
    assert_eq!(page, events[40..70]);
    assert_eq!(next, Some(70));
    let (page, next) = storage.events_page(id, 300, Some(10), &[]).await.unwrap();
    assert_eq!(page, events[300..]);
    assert_eq!(next, None);
    let (page, _) = storage
        .events_page(id, 0, Some(5), &[EventKind::LlmToken])
        .await
        .unwrap();
    let kinds: Vec<EventKind> = page.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [
            EventKind::TaskQueued,
            EventKind::TaskStarted,
            EventKind::LlmFinished,
            EventKind::TaskCompleted
        ]
    );
    let pieces = storage.token_pieces(id, "work.1").await.unwrap();
    assert_eq!(pieces.len(), 300);
    assert_eq!(pieces[64], (67, events[66].data.clone()));
    assert!(storage.token_pieces(id, "plan").await.unwrap().is_empty());
    backend.done().await;
}

#[actix_rt::test]
async fn a_long_answer_is_a_handful_of_rows_on_sqlite() {
    a_long_answer_is_a_handful_of_rows(Backend::sqlite().await).await;
}

#[actix_rt::test]
async fn a_long_answer_is_a_handful_of_rows_on_postgres() {
    a_long_answer_is_a_handful_of_rows(Backend::postgres().await).await;
}

/// A piece with alternatives: `{purpose, text, p, top}`, `top` of `alternatives` entries.
fn piece_with_top(task_id: TaskId, n: usize, alternatives: usize) -> WriteOp {
    let top: Vec<serde_json::Value> = (0..alternatives)
        .map(|k| json!({ "text": format!("a{k}"), "p": 0.5 / (k + 1) as f64 }))
        .collect();
    WriteOp::Event(PendingEvent::now(
        task_id,
        EventKind::LlmToken,
        Some(AgentKind::Code),
        json!({ "purpose": "work.1", "text": format!("t{n} "), "p": 0.5, "top": top }),
    ))
}

/// Pieces with their top five alternatives (or none) are coalesced like any piece and read back exactly;
/// a piece whose `top` is beyond the bound (six alternatives) is stored as a row of its own.
async fn alternatives_are_coalesced_within_bounds(backend: Backend) {
    let storage = backend.storage().await;
    let writer = Writer::spawn(storage.clone(), Hub::new(), Metrics::new().unwrap());
    let id = store_queued_task(&writer).await;
    writer.send(started(id));
    let mut sent = Vec::new();
    for n in 0..100 {
        let op = match n {
            50 => piece_with_top(id, n, 6),
            n if n % 3 == 0 => piece(id, "work.1", n),
            n => piece_with_top(id, n, 5),
        };
        if let WriteOp::Event(pending) = &op {
            sent.push(pending.data.clone());
        }
        writer.send(op);
    }
    finish(&writer, id).await.unwrap().unwrap();

    let db = Database::connect(backend.url()).await.unwrap();
    let rows = event::Entity::find()
        .filter(event::Column::TaskId.eq(id.to_string()))
        .count(&db)
        .await
        .unwrap();
    // queued, started, pieces 0..=49 (one row), 50 alone, 51..=99 (one row), completed.
    assert_eq!(rows, 2 + 3 + 1, "rows of the task's log");
    db.close().await.unwrap();
    let pieces = storage.token_pieces(id, "work.1").await.unwrap();
    let data: Vec<serde_json::Value> = pieces.into_iter().map(|(_, data)| data).collect();
    assert_eq!(data, sent);
    let events = storage.events_after(id, 0).await.unwrap();
    let from_events: Vec<serde_json::Value> = events
        .iter()
        .filter(|e| e.kind == EventKind::LlmToken)
        .map(|e| e.data.clone())
        .collect();
    assert_eq!(from_events, sent);
    backend.done().await;
}

#[actix_rt::test]
async fn alternatives_are_coalesced_within_bounds_on_sqlite() {
    alternatives_are_coalesced_within_bounds(Backend::sqlite().await).await;
}

#[actix_rt::test]
async fn alternatives_are_coalesced_within_bounds_on_postgres() {
    alternatives_are_coalesced_within_bounds(Backend::postgres().await).await;
}

#[actix_rt::test]
async fn pieces_held_back_are_written_and_published_within_a_moment() {
    let backend = Backend::sqlite().await;
    let storage = backend.storage().await;
    let hub = Hub::new();
    let writer = Writer::spawn(storage.clone(), hub.clone(), Metrics::new().unwrap());
    let log = EventLog::new(writer.clone(), hub, storage.clone());
    let id = store_queued_task(&writer).await;
    let mut subscription = log.subscribe(id, 0).await.unwrap();
    for n in 0..10 {
        writer.send(piece(id, "plan", n));
    }
    // No other op follows: the writer's timer writes the run.
    let mut seen = Vec::new();
    while seen.len() < 11 {
        let event = tokio::time::timeout(Duration::from_secs(5), subscription.next())
            .await
            .expect("held-back pieces are published within the hold time")
            .unwrap()
            .unwrap();
        seen.push(event.seq);
    }
    assert_eq!(seen, (1..=11).collect::<Vec<i64>>());
    assert_eq!(storage.events_after(id, 0).await.unwrap().len(), 11);
    backend.done().await;
}

#[actix_rt::test]
async fn a_write_dropped_on_a_full_queue_fails_its_task() {
    let backend = Backend::sqlite().await;
    let storage = backend.storage().await;
    let metrics = Metrics::new().unwrap();
    let (publish, gate) = gate(|_| {});
    let writer = Writer::spawn_with(storage.clone(), publish, metrics.clone(), 4);
    let id = store_queued_task(&writer).await;
    let other = store_queued_task(&writer).await;
    // The writer is held inside publishing one event, so it takes nothing from its queue meanwhile: four of
    // the next ten fit, the rest are dropped.
    gate.hold(&writer, id);
    for n in 0..10 {
        writer.emit(id, EventKind::ToolCalled, None, json!({ "n": n }));
    }
    gate.release();
    writer.flush().await.unwrap();
    writer.flush().await.unwrap();
    assert_eq!(counter(&metrics, "queue_full"), 6);
    let task = storage.task(id).await.unwrap().unwrap();
    assert_eq!(task.status, TaskStatus::Failed);
    assert!(task.error.unwrap().contains("queue full"));
    let events = storage.events_after(id, 0).await.unwrap();
    assert_eq!(events.last().map(|e| e.kind), Some(EventKind::TaskFailed));
    assert!(events
        .iter()
        .enumerate()
        .all(|(i, e)| e.seq == i as i64 + 1));
    // Awaited writes wait for room instead: the other task is untouched and ends normally.
    finish(&writer, other).await.unwrap().unwrap();
    let task = storage.task(other).await.unwrap().unwrap();
    assert_eq!(task.status, TaskStatus::Completed);
    backend.done().await;
}
