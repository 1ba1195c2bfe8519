//! Reads of the task aggregate: tasks, their steps and their usage; and the start-up repair of tasks left
//! unfinished by a previous process.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, EntityTrait, FromQueryResult, QueryFilter, QueryOrder, QuerySelect,
    TransactionTrait,
};
use serde::Serialize;

use super::entities::{event, llm_call, step, task};
use super::events::last_seq;
use super::records::PendingEvent;
use super::{Storage, StorageError};
use crate::domain::{AgentKind, EventKind, StepStatus, TaskId, TaskOptions, TaskStatus};

/// A task as stored.
#[derive(Debug, Clone, Serialize)]
pub struct TaskRecord {
    /// Id.
    pub id: TaskId,
    /// The user's prompt.
    pub prompt: String,
    /// Lifecycle state.
    pub status: TaskStatus,
    /// Options given at submission.
    pub options: TaskOptions,
    /// The assembled result of a completed task.
    pub result: Option<serde_json::Value>,
    /// Why a task failed.
    pub error: Option<String>,
    /// The task's trace id (hex).
    pub trace_id: Option<String>,
    /// The task whose model outputs this one replays.
    pub replay_of: Option<TaskId>,
    /// Accepted at.
    pub created_at: DateTime<Utc>,
    /// Started at.
    pub started_at: Option<DateTime<Utc>>,
    /// Finished at.
    pub finished_at: Option<DateTime<Utc>>,
}

/// One step of a task's plan.
#[derive(Debug, Clone, Serialize)]
pub struct StepRecord {
    /// Position in the plan, from 1.
    pub idx: i32,
    /// The agent that works it.
    pub agent: AgentKind,
    /// What to do.
    pub instruction: String,
    /// Where it stands.
    pub status: StepStatus,
    /// The agent's output.
    pub output: Option<String>,
    /// How many times it was tried.
    pub attempts: i32,
}

/// A task's model usage.
#[derive(Debug, Clone, Copy, Default, Serialize, FromQueryResult)]
pub struct TaskUsage {
    /// Prompt tokens over all calls.
    pub prompt_tokens: i64,
    /// Generated tokens over all calls.
    pub completion_tokens: i64,
    /// Number of model calls.
    pub llm_calls: i64,
    /// US dollars over all calls, at the configured prices.
    pub cost_usd: f64,
}

impl TryFrom<task::Model> for TaskRecord {
    type Error = StorageError;
    fn try_from(row: task::Model) -> Result<Self, StorageError> {
        let corrupt = |detail: String| StorageError::Corrupt {
            what: "task",
            detail,
        };
        Ok(TaskRecord {
            id: row
                .id
                .parse()
                .map_err(|e| corrupt(format!("id '{}': {e}", row.id)))?,
            status: row.status.parse().map_err(|e| corrupt(format!("{e}")))?,
            options: match row.options {
                Some(options) => {
                    serde_json::from_value(options).map_err(|e| corrupt(format!("options: {e}")))?
                }
                None => TaskOptions::default(),
            },
            replay_of: row
                .replay_of
                .map(|id| {
                    id.parse()
                        .map_err(|e| corrupt(format!("replay_of '{id}': {e}")))
                })
                .transpose()?,
            prompt: row.prompt,
            result: row.result,
            error: row.error,
            trace_id: row.trace_id,
            created_at: row.created_at,
            started_at: row.started_at,
            finished_at: row.finished_at,
        })
    }
}

impl Storage {
    /// One task, if it exists.
    pub async fn task(&self, id: TaskId) -> Result<Option<TaskRecord>, StorageError> {
        task::Entity::find_by_id(id.to_string())
            .one(&self.db)
            .await
            .map_err(StorageError::query("read task"))?
            .map(TaskRecord::try_from)
            .transpose()
    }

    /// The newest tasks first, optionally only those in `status`.
    pub async fn list_tasks(
        &self,
        limit: u64,
        status: Option<TaskStatus>,
    ) -> Result<Vec<TaskRecord>, StorageError> {
        let mut query = task::Entity::find()
            .order_by_desc(task::Column::CreatedAt)
            .limit(limit);
        if let Some(status) = status {
            query = query.filter(task::Column::Status.eq(status.as_str()));
        }
        query
            .all(&self.db)
            .await
            .map_err(StorageError::query("list tasks"))?
            .into_iter()
            .map(TaskRecord::try_from)
            .collect()
    }

    /// A task's steps in plan order.
    pub async fn steps(&self, id: TaskId) -> Result<Vec<StepRecord>, StorageError> {
        step::Entity::find()
            .filter(step::Column::TaskId.eq(id.to_string()))
            .order_by_asc(step::Column::Idx)
            .all(&self.db)
            .await
            .map_err(StorageError::query("read steps"))?
            .into_iter()
            .map(|row| {
                let corrupt = |detail: String| StorageError::Corrupt {
                    what: "step",
                    detail,
                };
                Ok(StepRecord {
                    agent: row.agent.parse().map_err(|e| corrupt(format!("{e}")))?,
                    idx: row.idx,
                    instruction: row.instruction,
                    status: row.status.parse().map_err(|e| corrupt(format!("{e}")))?,
                    output: row.output,
                    attempts: row.attempts,
                })
            })
            .collect()
    }

    /// Token and call counts of a task's model calls.
    pub async fn usage(&self, id: TaskId) -> Result<TaskUsage, StorageError> {
        let usage = llm_call::Entity::find()
            .select_only()
            .column_as(llm_call::Column::PromptTokens.sum(), "prompt_tokens")
            .column_as(
                llm_call::Column::CompletionTokens.sum(),
                "completion_tokens",
            )
            .column_as(llm_call::Column::Id.count(), "llm_calls")
            .column_as(llm_call::Column::CostUsd.sum(), "cost_usd")
            .filter(llm_call::Column::TaskId.eq(id.to_string()))
            .into_tuple::<(Option<i64>, Option<i64>, i64, Option<f64>)>()
            .one(&self.db)
            .await
            .map_err(StorageError::query("sum model usage"))?;
        Ok(
            usage.map_or_else(TaskUsage::default, |(prompt, completion, calls, cost)| {
                TaskUsage {
                    prompt_tokens: prompt.unwrap_or(0),
                    completion_tokens: completion.unwrap_or(0),
                    llm_calls: calls,
                    cost_usd: cost.unwrap_or(0.0),
                }
            }),
        )
    }

    /// Marks every task a previous process left queued or running as failed, with a terminal event, so
    /// that no task waits forever and every log ends. Returns the ids repaired.
    pub async fn fail_interrupted(&self) -> Result<Vec<TaskId>, StorageError> {
        let unfinished = task::Entity::find()
            .filter(task::Column::Status.is_in([
                TaskStatus::Queued.as_str(),
                TaskStatus::Running.as_str(),
                TaskStatus::Paused.as_str(),
            ]))
            .all(&self.db)
            .await
            .map_err(StorageError::query("find interrupted tasks"))?;
        let mut repaired = Vec::with_capacity(unfinished.len());
        for row in unfinished {
            let Ok(id) = row.id.parse::<TaskId>() else {
                continue;
            };
            let error = "interrupted: the server stopped while the task was unfinished";
            let txn = self
                .db
                .begin()
                .await
                .map_err(StorageError::query("begin repair"))?;
            let last_seq = last_seq(&txn, id).await?;
            let pending = PendingEvent::now(
                id,
                EventKind::TaskFailed,
                Some(AgentKind::Director),
                serde_json::json!({ "error": error }),
            );
            event::Entity::insert(super::events::event_row(
                &pending,
                last_seq.unwrap_or(0) + 1,
            ))
            .exec(&txn)
            .await
            .map_err(StorageError::query("append repair event"))?;
            task::Entity::update_many()
                .col_expr(
                    task::Column::Status,
                    Expr::value(TaskStatus::Failed.as_str()),
                )
                .col_expr(task::Column::Error, Expr::value(error))
                .col_expr(task::Column::FinishedAt, Expr::value(pending.at))
                .filter(task::Column::Id.eq(row.id.clone()))
                .exec(&txn)
                .await
                .map_err(StorageError::query("mark task interrupted"))?;
            txn.commit()
                .await
                .map_err(StorageError::query("commit repair"))?;
            repaired.push(id);
        }
        Ok(repaired)
    }
}
