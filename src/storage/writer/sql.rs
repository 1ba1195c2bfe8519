//! A [`Plan`] in SQL: table by table, multi-row statements, chunked under the backends' limit of bound
//! parameters, inside the caller's transaction. The same statements serve SQLite and PostgreSQL.

use std::collections::HashMap;

use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseTransaction, DbBackend, EntityTrait,
    QueryFilter, Statement, Value,
};

use super::super::breakpoints;
use super::super::entities::{breakpoint, decision, event, experiment, llm_call, step, task};
use super::super::memories::{insert_memories, mark_succeeded, mark_used};
use super::super::statement::Sql;
use super::super::StorageError;
use super::plan::{Plan, TaskRow};
use crate::domain::{BreakpointId, TaskId, TaskStatus};

/// Most parameters bound in one statement: well under SQLite's 32,766 (and PostgreSQL's 65,535).
const MAX_PARAMETERS: usize = 16_384;

/// What a plan's deletions removed, for their waiters.
#[derive(Debug, Default)]
pub(super) struct Deletions {
    /// Per deleted task: whether a finished task was removed.
    pub tasks: HashMap<TaskId, bool>,
    /// Per deleted breakpoint: whether it existed.
    pub breakpoints: HashMap<BreakpointId, bool>,
}

/// Writes `plan` in `txn`. Returns what its deletions removed.
pub(super) async fn execute(
    txn: &DatabaseTransaction,
    plan: &Plan,
) -> Result<Deletions, StorageError> {
    insert_rows(txn, &plan.tasks, 12, "insert tasks").await?;
    // After the tasks: a breakpoint may be attached to a task created in the same batch.
    insert_rows(
        txn,
        &plan.breakpoints,
        breakpoints::COLUMNS,
        "insert breakpoints",
    )
    .await?;
    insert_rows(txn, &plan.steps, 10, "insert steps").await?;
    upsert_steps(txn, plan).await?;
    insert_rows(txn, &plan.llm_calls, 16, "insert model calls").await?;
    insert_rows(txn, &plan.decisions, 9, "insert decisions").await?;
    if !plan.memories.is_empty() {
        insert_memories(txn, &plan.memories).await?;
    }
    insert_rows(txn, &plan.events, 9, "append events").await?;
    update_tasks(txn, &plan.task_rows).await?;
    upsert_experiments(txn, &plan.experiments).await?;
    for ids in &plan.memories_used {
        mark_used(txn, ids).await?;
    }
    for id in &plan.patterns {
        mark_succeeded(txn, id).await?;
    }
    let mut deletions = Deletions::default();
    for task_id in &plan.deletes {
        let removed = delete_finished_task(txn, *task_id).await?;
        deletions.tasks.insert(*task_id, removed);
    }
    for id in &plan.breakpoint_deletes {
        let removed = breakpoint::Entity::delete_by_id(id.to_string())
            .exec(txn)
            .await
            .map_err(StorageError::query("delete breakpoint"))?;
        deletions.breakpoints.insert(*id, removed.rows_affected > 0);
    }
    Ok(deletions)
}

/// Appends event rows alone (a task's storage failure).
pub(super) async fn append_events(
    txn: &DatabaseTransaction,
    rows: &[event::ActiveModel],
) -> Result<(), StorageError> {
    insert_rows(txn, rows, 9, "append events").await
}

/// Inserts `rows` (of `columns` columns each) with as few statements as the parameter limit allows.
async fn insert_rows<A>(
    txn: &DatabaseTransaction,
    rows: &[A],
    columns: usize,
    action: &'static str,
) -> Result<(), StorageError>
where
    A: ActiveModelTrait + Clone + Send,
{
    for chunk in rows.chunks((MAX_PARAMETERS / columns).max(1)) {
        <A::Entity as EntityTrait>::insert_many(chunk.iter().cloned())
            .exec_without_returning(txn)
            .await
            .map_err(StorageError::query(action))?;
    }
    Ok(())
}

/// Applies the batch's step updates as multi-row upserts on `(task_id, idx)`: agent, status, output and
/// attempts are replaced, `started_at` and `finished_at` only when the update sets them. The instruction and
/// the dependencies of an existing step are never touched (the upsert's row carries empty ones).
async fn upsert_steps(txn: &DatabaseTransaction, plan: &Plan) -> Result<(), StorageError> {
    if plan.step_updates.is_empty() {
        return Ok(());
    }
    let rows: Vec<step::ActiveModel> = plan
        .step_updates
        .iter()
        .map(|update| step::ActiveModel {
            task_id: sea_orm::Set(update.task_id.to_string()),
            idx: sea_orm::Set(update.idx),
            agent: sea_orm::Set(update.agent.as_str().to_owned()),
            instruction: sea_orm::Set(String::new()),
            status: sea_orm::Set(update.status.as_str().to_owned()),
            output: sea_orm::Set(update.output.clone()),
            attempts: sea_orm::Set(update.attempts),
            started_at: sea_orm::Set(update.started_at),
            finished_at: sea_orm::Set(update.finished_at),
            depends_on: sea_orm::Set(None),
        })
        .collect();
    for chunk in rows.chunks(MAX_PARAMETERS / 10) {
        let mut on_conflict = OnConflict::columns([step::Column::TaskId, step::Column::Idx]);
        on_conflict
            .update_columns([
                step::Column::Agent,
                step::Column::Status,
                step::Column::Output,
                step::Column::Attempts,
            ])
            .value(
                step::Column::StartedAt,
                Expr::cust("COALESCE(excluded.started_at, steps.started_at)"),
            )
            .value(
                step::Column::FinishedAt,
                Expr::cust("COALESCE(excluded.finished_at, steps.finished_at)"),
            );
        step::Entity::insert_many(chunk.iter().cloned())
            .on_conflict(on_conflict)
            .exec_without_returning(txn)
            .await
            .map_err(StorageError::query("update steps"))?;
    }
    Ok(())
}

/// Inserts or replaces experiment rows (each id once per batch; experiments are few and written rarely). The
/// owner is written by the insert and then only by a claim (`Storage::claim_experiment`): a runner's writes
/// never take an experiment back from the process that took it over.
async fn upsert_experiments(
    txn: &DatabaseTransaction,
    rows: &[experiment::ActiveModel],
) -> Result<(), StorageError> {
    for row in rows {
        let mut on_conflict = OnConflict::column(experiment::Column::Id);
        on_conflict.update_columns([
            experiment::Column::Name,
            experiment::Column::Spec,
            experiment::Column::Runs,
            experiment::Column::Status,
            experiment::Column::FinishedAt,
        ]);
        experiment::Entity::insert(row.clone())
            .on_conflict(on_conflict)
            .exec_without_returning(txn)
            .await
            .map_err(StorageError::query("store experiment"))?;
    }
    Ok(())
}

/// Tasks per multi-row task update (each binds up to 13 parameters).
const TASK_ROWS_PER_UPDATE: usize = 500;

/// Applies the batch's task-row changes, many tasks per `UPDATE ... SET col = CASE ... END`: a status
/// marked conditional moves only a row still running or paused.
async fn update_tasks(txn: &DatabaseTransaction, rows: &[TaskRow]) -> Result<(), StorageError> {
    let backend = txn.get_database_backend();
    for chunk in rows.chunks(TASK_ROWS_PER_UPDATE) {
        let mut sql = Sql::new(backend);
        let mut sets = Vec::new();
        let statuses: Vec<String> = chunk
            .iter()
            .filter_map(|row| {
                let (status, conditional) = row.status?;
                let id = sql.bind(row.task_id.to_string());
                let value = sql.bind(status.as_str());
                Some(if conditional {
                    format!(
                        "WHEN id = {id} AND status IN ('{}', '{}') THEN {value}",
                        TaskStatus::Running.as_str(),
                        TaskStatus::Paused.as_str()
                    )
                } else {
                    format!("WHEN id = {id} THEN {value}")
                })
            })
            .collect();
        if !statuses.is_empty() {
            sets.push(format!(
                "status = CASE {} ELSE status END",
                statuses.join(" ")
            ));
        }
        let started: Vec<String> = chunk
            .iter()
            .filter_map(|row| {
                let at = row.started_at?;
                let id = sql.bind(row.task_id.to_string());
                let value = sql.bind(at);
                Some(format!("WHEN id = {id} THEN {value}"))
            })
            .collect();
        if !started.is_empty() {
            sets.push(format!(
                "started_at = CASE {} ELSE started_at END",
                started.join(" ")
            ));
        }
        let finished: Vec<&TaskRow> = chunk
            .iter()
            .filter(|row| row.finished_at.is_some())
            .collect();
        if !finished.is_empty() {
            // Bound in the order of the text: SQLite's `?` are positional.
            let mut at = Vec::new();
            for row in &finished {
                let id = sql.bind(row.task_id.to_string());
                let value = sql.bind(row.finished_at);
                at.push(format!("WHEN id = {id} THEN {value}"));
            }
            let mut results = Vec::new();
            for row in &finished {
                let id = sql.bind(row.task_id.to_string());
                let value = sql.bind_json(row.result.clone());
                results.push(format!("WHEN id = {id} THEN {value}"));
            }
            let mut errors = Vec::new();
            for row in &finished {
                let id = sql.bind(row.task_id.to_string());
                let value = sql.bind(row.error.clone());
                errors.push(format!("WHEN id = {id} THEN {value}"));
            }
            sets.push(format!(
                "finished_at = CASE {} ELSE finished_at END",
                at.join(" ")
            ));
            sets.push(format!(
                "result = CASE {} ELSE result END",
                results.join(" ")
            ));
            sets.push(format!("error = CASE {} ELSE error END", errors.join(" ")));
        }
        if sets.is_empty() {
            continue;
        }
        let ids: Vec<String> = chunk
            .iter()
            .map(|row| sql.bind(row.task_id.to_string()))
            .collect();
        let text = format!(
            "UPDATE tasks SET {} WHERE id IN ({})",
            sets.join(", "),
            ids.join(", ")
        );
        txn.execute_raw(Statement::from_sql_and_values(backend, text, sql.values))
            .await
            .map_err(StorageError::query("update tasks"))?;
    }
    Ok(())
}

impl Sql {
    /// Adds a JSON value for a `json` column (PostgreSQL types the parameter `jsonb`: cast back).
    fn bind_json(&mut self, value: Option<serde_json::Value>) -> String {
        let placeholder = self.bind(Value::Json(value.map(Box::new)));
        match self.backend {
            DbBackend::Postgres => format!("CAST({placeholder} AS json)"),
            _ => placeholder,
        }
    }
}

/// Removes task `task_id` and its events, steps, decisions, model calls and breakpoints when it is finished
/// (its row says completed, failed or cancelled); memories keep their provenance. Whether it was removed.
async fn delete_finished_task(
    txn: &DatabaseTransaction,
    task_id: TaskId,
) -> Result<bool, StorageError> {
    let id = task_id.to_string();
    let finished = [
        TaskStatus::Completed,
        TaskStatus::Failed,
        TaskStatus::Cancelled,
    ]
    .map(|status| status.as_str());
    let removed = task::Entity::delete_many()
        .filter(task::Column::Id.eq(id.clone()))
        .filter(task::Column::Status.is_in(finished))
        .exec(txn)
        .await
        .map_err(StorageError::query("delete task"))?;
    if removed.rows_affected == 0 {
        return Ok(false);
    }
    // Coalesced token rows go with the rest: they are rows of the task like any other.
    event::Entity::delete_many()
        .filter(event::Column::TaskId.eq(id.clone()))
        .exec(txn)
        .await
        .map_err(StorageError::query("delete task events"))?;
    step::Entity::delete_many()
        .filter(step::Column::TaskId.eq(id.clone()))
        .exec(txn)
        .await
        .map_err(StorageError::query("delete task steps"))?;
    decision::Entity::delete_many()
        .filter(decision::Column::TaskId.eq(id.clone()))
        .exec(txn)
        .await
        .map_err(StorageError::query("delete task decisions"))?;
    llm_call::Entity::delete_many()
        .filter(llm_call::Column::TaskId.eq(id.clone()))
        .exec(txn)
        .await
        .map_err(StorageError::query("delete task model calls"))?;
    // The foreign key cascades too; removed explicitly so that the rule holds whatever the backend's
    // foreign-key enforcement.
    breakpoint::Entity::delete_many()
        .filter(breakpoint::Column::TaskId.eq(id))
        .exec(txn)
        .await
        .map_err(StorageError::query("delete task breakpoints"))?;
    Ok(true)
}

/// Fails task `task_id` in `txn` unless its row has ended: whether the row moved (false: no such task, or
/// it had ended, and nothing else of the failure should be written).
pub(super) async fn fail_task_row(
    txn: &DatabaseTransaction,
    row: &TaskRow,
) -> Result<bool, StorageError> {
    let unfinished =
        [TaskStatus::Queued, TaskStatus::Running, TaskStatus::Paused].map(|status| status.as_str());
    let moved = task::Entity::update_many()
        .col_expr(
            task::Column::Status,
            Expr::value(TaskStatus::Failed.as_str()),
        )
        .col_expr(task::Column::Error, Expr::value(row.error.clone()))
        .col_expr(task::Column::FinishedAt, Expr::value(row.finished_at))
        .filter(task::Column::Id.eq(row.task_id.to_string()))
        .filter(task::Column::Status.is_in(unfinished))
        .exec(txn)
        .await
        .map_err(StorageError::query("fail task"))?;
    Ok(moved.rows_affected > 0)
}
