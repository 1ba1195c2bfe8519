//! Leases and task ownership (issue 15, tasks that survive a crash): each process holds a row in `leases`
//! whose heartbeat it renews; a task's `owner` is the lease of the process running it. At start-up a
//! process looks for unfinished tasks whose owner is gone ([`Storage::orphaned_tasks`]: no owner, an
//! unknown lease, or a heartbeat older than the lease time, [`is_orphaned`]), takes each with a
//! compare-and-set on its owner ([`Storage::claim_task`]), and reads what it needs to resume it
//! ([`Storage::resume_records`]).
//!
//! These writes go to the pool directly, not through the writer: a lease row is the process's own
//! bookkeeping, not part of any task's log, and a claim must answer at once whether it won. Both are
//! single-row statements, so they never hold SQLite's write lock for long.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::ActiveValue::Set;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};

use super::entities::{decision, event, lease, task};
use super::{Recording, StepRecord, Storage, StorageError};
use crate::domain::{EventKind, TaskId, TaskStatus};

/// This process's lease, as acquired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The lease id (a UUIDv7), stored as the owner of the tasks this process runs.
    pub id: String,
    /// The process id.
    pub pid: u32,
    /// The host name.
    pub host: String,
}

/// An unfinished task whose owner is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrphanedTask {
    /// The task.
    pub id: TaskId,
    /// Where it stood (`queued`, `running` or `paused`).
    pub status: TaskStatus,
    /// The lease that owned it, if any (the claim's expected value).
    pub owner: Option<String>,
}

/// What [`Storage::claim_delivered`] found of a task a queue delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This process owns it now (it was nobody's, a dead process's, or already this one's): where it
    /// stood and who owned it before.
    Claimed(OrphanedTask),
    /// It has ended already (its worker died after committing its end, before acknowledging it).
    Ended(TaskStatus),
    /// No such task (deleted, or never stored).
    Gone,
    /// A live process owns it: leave it to that process.
    Owned(String),
}

/// What is stored of a task that is to be resumed.
#[derive(Debug, Clone)]
pub struct ResumeRecords {
    /// The plan's steps as stored, in order (empty when the crash came before they were).
    pub steps: Vec<StepRecord>,
    /// The steps whose agent decision (`assign_agent`) is already stored.
    pub decided: Vec<i32>,
    /// The task's own recorded model calls.
    pub recording: Recording,
    /// Recorded sandbox runs (`run_code` calls that succeeded), by call id: the tool's full result.
    pub sandbox_runs: BTreeMap<String, serde_json::Value>,
    /// The data of the task's `code.attempt` events, in log order.
    pub code_attempts: Vec<serde_json::Value>,
    /// The task's `task.paused` and `task.resumed` events (kind and data), in log order: where debug mode
    /// paused it and how each pause was answered.
    pub pauses: Vec<(EventKind, serde_json::Value)>,
}

/// Whether a task with `owner` belongs to nobody alive, given the known leases' heartbeats, at `now`: no
/// owner, an owner with no lease row (released, or never known here), or one whose heartbeat is older than
/// `lease`. A task of `me` is never an orphan (this process is alive by definition).
pub fn is_orphaned(
    owner: Option<&str>,
    me: &str,
    heartbeats: &HashMap<String, DateTime<Utc>>,
    now: DateTime<Utc>,
    lease: Duration,
) -> bool {
    match owner {
        None => true,
        Some(owner) if owner == me => false,
        Some(owner) => heartbeats
            .get(owner)
            .is_none_or(|heartbeat| expired(*heartbeat, now, lease)),
    }
}

/// Whether a lease last renewed at `heartbeat` has expired at `now` (its age is more than `lease`).
pub fn expired(heartbeat: DateTime<Utc>, now: DateTime<Utc>, lease: Duration) -> bool {
    let age = now.signed_duration_since(heartbeat);
    age.to_std().is_ok_and(|age| age > lease)
}

/// The host name, as the kernel knows it ("unknown" where it cannot be read).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

const UNFINISHED: [TaskStatus; 3] = [TaskStatus::Queued, TaskStatus::Running, TaskStatus::Paused];

impl Storage {
    /// Acquires a new lease for this process (a fresh row, heartbeat now).
    pub async fn acquire_lease(&self) -> Result<Lease, StorageError> {
        let lease = Lease {
            id: uuid::Uuid::now_v7().to_string(),
            pid: std::process::id(),
            host: host_name(),
        };
        let now = Utc::now();
        lease::Entity::insert(lease::ActiveModel {
            id: Set(lease.id.clone()),
            pid: Set(i64::from(lease.pid)),
            host: Set(lease.host.clone()),
            started_at: Set(now),
            heartbeat_at: Set(now),
        })
        .exec(&self.db)
        .await
        .map_err(StorageError::query("acquire lease"))?;
        Ok(lease)
    }

    /// Renews `lease`'s heartbeat; a row that is gone (deleted by hand) is written again, so a live
    /// process keeps its tasks.
    pub async fn heartbeat(&self, lease: &Lease) -> Result<(), StorageError> {
        let now = Utc::now();
        let renewed = lease::Entity::update_many()
            .col_expr(lease::Column::HeartbeatAt, Expr::value(now))
            .filter(lease::Column::Id.eq(lease.id.as_str()))
            .exec(&self.db)
            .await
            .map_err(StorageError::query("renew lease"))?;
        if renewed.rows_affected == 0 {
            lease::Entity::insert(lease::ActiveModel {
                id: Set(lease.id.clone()),
                pid: Set(i64::from(lease.pid)),
                host: Set(lease.host.clone()),
                started_at: Set(now),
                heartbeat_at: Set(now),
            })
            .exec(&self.db)
            .await
            .map_err(StorageError::query("write lease again"))?;
        }
        Ok(())
    }

    /// Deletes lease `id` (a clean shutdown): the tasks it still owns are orphans at once.
    pub async fn release_lease(&self, id: &str) -> Result<(), StorageError> {
        lease::Entity::delete_by_id(id.to_owned())
            .exec(&self.db)
            .await
            .map_err(StorageError::query("release lease"))?;
        Ok(())
    }

    /// Lease `id` as acquired (`None`: released, or never known).
    pub async fn lease(&self, id: &str) -> Result<Option<Lease>, StorageError> {
        Ok(lease::Entity::find_by_id(id.to_owned())
            .one(&self.db)
            .await
            .map_err(StorageError::query("read lease"))?
            .map(|row| Lease {
                id: row.id,
                pid: u32::try_from(row.pid).unwrap_or(0),
                host: row.host,
            }))
    }

    /// Every lease row: id and last heartbeat.
    pub async fn lease_heartbeats(&self) -> Result<HashMap<String, DateTime<Utc>>, StorageError> {
        Ok(lease::Entity::find()
            .all(&self.db)
            .await
            .map_err(StorageError::query("read leases"))?
            .into_iter()
            .map(|row| (row.id, row.heartbeat_at))
            .collect())
    }

    /// The unfinished tasks (queued, running, paused) whose owner is gone ([`is_orphaned`]), oldest first.
    /// A row whose id or status does not parse is skipped (logged): nothing could resume it.
    pub async fn orphaned_tasks(
        &self,
        me: &str,
        lease: Duration,
    ) -> Result<Vec<OrphanedTask>, StorageError> {
        let heartbeats = self.lease_heartbeats().await?;
        let now = Utc::now();
        let rows = task::Entity::find()
            .filter(task::Column::Status.is_in(UNFINISHED.map(TaskStatus::as_str)))
            .order_by_asc(task::Column::CreatedAt)
            .all(&self.db)
            .await
            .map_err(StorageError::query("find unfinished tasks"))?;
        let mut orphans = Vec::new();
        for row in rows {
            if !is_orphaned(row.owner.as_deref(), me, &heartbeats, now, lease) {
                continue;
            }
            match (row.id.parse::<TaskId>(), row.status.parse::<TaskStatus>()) {
                (Ok(id), Ok(status)) => orphans.push(OrphanedTask {
                    id,
                    status,
                    owner: row.owner,
                }),
                _ => {
                    tracing::warn!(task = %row.id, status = %row.status, "an unfinished task's row does not parse; left alone")
                }
            }
        }
        Ok(orphans)
    }

    /// Makes `me` the owner of task `id` if it is still unfinished and still owned by `expected`
    /// (compare-and-set: of two processes claiming one task, one wins). Whether this claim won.
    pub async fn claim_task(
        &self,
        id: TaskId,
        expected: Option<&str>,
        me: &str,
    ) -> Result<bool, StorageError> {
        let owner = match expected {
            Some(expected) => task::Column::Owner.eq(expected),
            None => task::Column::Owner.is_null(),
        };
        let claimed = task::Entity::update_many()
            .col_expr(task::Column::Owner, Expr::value(me))
            .filter(task::Column::Id.eq(id.to_string()))
            .filter(task::Column::Status.is_in(UNFINISHED.map(TaskStatus::as_str)))
            .filter(owner)
            .exec(&self.db)
            .await
            .map_err(StorageError::query("claim task"))?;
        Ok(claimed.rows_affected == 1)
    }

    /// Claims task `id`, delivered by the task queue, for `me` unless a live process (its lease renewed
    /// within `lease`) owns it: compare-and-set on the owner, as [`Storage::claim_task`].
    pub async fn claim_delivered(
        &self,
        id: TaskId,
        me: &str,
        lease: Duration,
    ) -> Result<Claim, StorageError> {
        let Some(row) = task::Entity::find_by_id(id.to_string())
            .one(&self.db)
            .await
            .map_err(StorageError::query("read task"))?
        else {
            return Ok(Claim::Gone);
        };
        let status = row
            .status
            .parse::<TaskStatus>()
            .map_err(|error| StorageError::Corrupt {
                what: "task status",
                detail: format!("task {id} has status '{}': {error}", row.status),
            })?;
        if status.is_terminal() {
            return Ok(Claim::Ended(status));
        }
        let claimed = OrphanedTask {
            id,
            status,
            owner: row.owner.clone(),
        };
        if row.owner.as_deref() == Some(me) {
            return Ok(Claim::Claimed(claimed));
        }
        let heartbeats = self.lease_heartbeats().await?;
        if !is_orphaned(row.owner.as_deref(), me, &heartbeats, Utc::now(), lease) {
            return Ok(Claim::Owned(row.owner.unwrap_or_default()));
        }
        if self.claim_task(id, row.owner.as_deref(), me).await? {
            return Ok(Claim::Claimed(claimed));
        }
        // Another process claimed it (or it ended) between the read and the claim: ask again, once.
        let again = task::Entity::find_by_id(id.to_string())
            .one(&self.db)
            .await
            .map_err(StorageError::query("read task"))?;
        Ok(match again {
            None => Claim::Gone,
            Some(row) => match row.status.parse::<TaskStatus>() {
                Ok(status) if status.is_terminal() => Claim::Ended(status),
                _ => Claim::Owned(row.owner.unwrap_or_default()),
            },
        })
    }

    /// What is stored of task `id` for resuming it: its steps, which agent decisions are stored, its
    /// recorded model calls, its recorded sandbox runs and its code attempts.
    pub async fn resume_records(&self, id: TaskId) -> Result<ResumeRecords, StorageError> {
        let steps = self.steps(id).await?;
        let decided = decision::Entity::find()
            .filter(decision::Column::TaskId.eq(id.to_string()))
            .filter(decision::Column::Kind.eq("assign_agent"))
            .all(&self.db)
            .await
            .map_err(StorageError::query("read decisions"))?
            .into_iter()
            .filter_map(|row| row.step_idx)
            .collect();
        let recording = self.recording(id).await?;
        let rows = event::Entity::find()
            .filter(event::Column::TaskId.eq(id.to_string()))
            .filter(event::Column::Kind.is_in([
                EventKind::ToolCalled.as_str(),
                EventKind::CodeAttempt.as_str(),
                EventKind::TaskPaused.as_str(),
                EventKind::TaskResumed.as_str(),
            ]))
            .order_by_asc(event::Column::Seq)
            .all(&self.db)
            .await
            .map_err(StorageError::query("read the task's tool calls"))?;
        let mut sandbox_runs = BTreeMap::new();
        let mut code_attempts = Vec::new();
        let mut pauses = Vec::new();
        for row in rows {
            if row.kind == EventKind::CodeAttempt.as_str() {
                code_attempts.push(row.data);
                continue;
            }
            if let Ok(kind @ (EventKind::TaskPaused | EventKind::TaskResumed)) =
                row.kind.parse::<EventKind>()
            {
                pauses.push((kind, row.data));
                continue;
            }
            if let Some((call_id, run)) = recorded_run(&row.data) {
                sandbox_runs.entry(call_id).or_insert(run);
            }
        }
        Ok(ResumeRecords {
            steps,
            decided,
            recording,
            sandbox_runs,
            code_attempts,
            pauses,
        })
    }
}

/// A `tool.called` event's sandbox run, when it is one that succeeded and its whole arguments and result
/// are stored: (call id, `{"arguments": <JSON text>, "result": ...}`).
fn recorded_run(data: &serde_json::Value) -> Option<(String, serde_json::Value)> {
    if data.get("tool")?.as_str()? != "run_code" || data.get("outcome")?.as_str()? != "ok" {
        return None;
    }
    let call_id = data.get("call_id")?.as_str()?.to_owned();
    let result = match data.get("result_full") {
        Some(full) => full.clone(),
        // A result that fit the event is its whole JSON text; one that was cut does not parse.
        None => serde_json::from_str(data.get("result")?.as_str()?).ok()?,
    };
    let arguments = data
        .get("arguments_full")
        .or_else(|| data.get("arguments"))?
        .clone();
    Some((
        call_id,
        serde_json::json!({ "arguments": arguments, "result": result }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp(1_800_000_000 + seconds, 0).unwrap_or_default()
    }

    #[test]
    fn a_lease_expires_only_after_its_whole_time() {
        let lease = Duration::from_secs(10);
        assert!(!expired(at(0), at(0), lease));
        assert!(
            !expired(at(0), at(10), lease),
            "exactly the lease time is still alive"
        );
        assert!(expired(at(0), at(11), lease));
        // A heartbeat from the future (a clock ahead of ours) is alive, not expired.
        assert!(!expired(at(30), at(0), lease));
    }

    #[test]
    fn only_tasks_of_no_one_an_unknown_or_an_expired_lease_are_orphans() {
        let lease = Duration::from_secs(10);
        let now = at(100);
        let heartbeats = HashMap::from([("alive".to_owned(), at(95)), ("dead".to_owned(), at(80))]);
        let orphaned = |owner: Option<&str>| is_orphaned(owner, "me", &heartbeats, now, lease);
        assert!(orphaned(None));
        assert!(orphaned(Some("dead")));
        assert!(orphaned(Some("released")));
        assert!(!orphaned(Some("alive")));
        assert!(!orphaned(Some("me")), "a process never takes its own tasks");
    }

    #[test]
    fn a_sandbox_run_is_reused_only_when_it_succeeded_and_is_whole() {
        let whole = json!({
            "tool": "run_code", "call_id": "test.1", "outcome": "ok", "arguments": "{\"file\":\"a\"}",
            "result": "{\"outcome\":\"ok\"}",
        });
        let (call_id, run) = recorded_run(&whole).unwrap();
        assert_eq!(call_id, "test.1");
        assert_eq!(run["result"], json!({ "outcome": "ok" }));
        let cut = json!({
            "tool": "run_code", "call_id": "test.1", "outcome": "ok", "arguments": "{}",
            "result": "{\"outcome\":\"ok\", \"stdout\": \"aaaa…",
        });
        assert!(recorded_run(&cut).is_none());
        let full = json!({
            "tool": "run_code", "call_id": "test.1", "outcome": "ok", "arguments": "{}",
            "result": "{\"outcome\":\"ok\", \"stdout\": \"aaaa…", "result_full": { "outcome": "ok" },
        });
        assert_eq!(
            recorded_run(&full).unwrap().1["result"],
            json!({ "outcome": "ok" })
        );
        let failed =
            json!({ "tool": "run_code", "call_id": "x", "outcome": "error", "arguments": "{}" });
        assert!(recorded_run(&failed).is_none());
        let other = json!({ "tool": "write_file", "call_id": "x", "outcome": "ok", "arguments": "{}", "result": "{}" });
        assert!(recorded_run(&other).is_none());
    }

    async fn storage() -> (tempfile::TempDir, Storage) {
        let dir = tempfile::tempdir().unwrap();
        let settings = crate::config::DatabaseSettings {
            url: format!("sqlite://{}/t.sqlite?mode=rwc", dir.path().display()),
            max_connections: 4,
            writer_queue: crate::storage::writer::DEFAULT_QUEUE,
        };
        let storage = Storage::connect(&settings).await.unwrap();
        storage.migrate().await.unwrap();
        (dir, storage)
    }

    async fn insert_task(storage: &Storage, status: TaskStatus, owner: Option<&str>) -> TaskId {
        let id = TaskId::new();
        task::Entity::insert(task::ActiveModel {
            id: Set(id.to_string()),
            prompt: Set("p".into()),
            status: Set(status.as_str().to_owned()),
            options: Set(None),
            result: Set(None),
            error: Set(None),
            trace_id: Set(None),
            replay_of: Set(None),
            created_at: Set(Utc::now()),
            started_at: Set(None),
            finished_at: Set(None),
            owner: Set(owner.map(str::to_owned)),
        })
        .exec(&storage.db)
        .await
        .unwrap();
        id
    }

    #[tokio::test]
    async fn of_two_claims_on_one_orphan_only_one_wins() {
        let (_dir, storage) = storage().await;
        let dead = storage.acquire_lease().await.unwrap();
        let id = insert_task(&storage, TaskStatus::Running, Some(&dead.id)).await;
        storage.release_lease(&dead.id).await.unwrap();
        let first = storage.acquire_lease().await.unwrap();
        let second = storage.acquire_lease().await.unwrap();
        // Both see the orphan, with the same expected owner.
        let seen_first = storage
            .orphaned_tasks(&first.id, Duration::from_secs(10))
            .await
            .unwrap();
        let seen_second = storage
            .orphaned_tasks(&second.id, Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(seen_first, seen_second);
        assert_eq!(seen_first.len(), 1);
        let expected = seen_first[0].owner.clone();
        let (won_first, won_second) = tokio::join!(
            storage.claim_task(id, expected.as_deref(), &first.id),
            storage.claim_task(id, expected.as_deref(), &second.id),
        );
        assert!(
            won_first.unwrap() ^ won_second.unwrap(),
            "exactly one claim wins"
        );
        // The winner's lease is alive: the task is nobody's orphan now.
        assert!(storage
            .orphaned_tasks(&first.id, Duration::from_secs(10))
            .await
            .unwrap()
            .is_empty());
        assert!(storage
            .orphaned_tasks(&second.id, Duration::from_secs(10))
            .await
            .unwrap()
            .is_empty());
    }

    #[tokio::test]
    async fn a_live_owner_keeps_its_task_and_a_finished_task_is_never_claimed() {
        let (_dir, storage) = storage().await;
        let alive = storage.acquire_lease().await.unwrap();
        let me = storage.acquire_lease().await.unwrap();
        let live = insert_task(&storage, TaskStatus::Running, Some(&alive.id)).await;
        let done = insert_task(&storage, TaskStatus::Completed, None).await;
        let unowned = insert_task(&storage, TaskStatus::Queued, None).await;
        storage.heartbeat(&alive).await.unwrap();
        let orphans = storage
            .orphaned_tasks(&me.id, Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(
            orphans.iter().map(|o| o.id).collect::<Vec<_>>(),
            vec![unowned]
        );
        // A claim that expects the wrong owner, or a finished task, changes nothing.
        assert!(!storage.claim_task(live, None, &me.id).await.unwrap());
        assert!(!storage.claim_task(done, None, &me.id).await.unwrap());
        assert!(storage.claim_task(unowned, None, &me.id).await.unwrap());
        assert!(!storage.claim_task(unowned, None, &me.id).await.unwrap());
    }
}
