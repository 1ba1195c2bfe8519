//! Reads of the task aggregate: tasks, their steps and their usage.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, ExprTrait, Func, LikeExpr};
use sea_orm::{
    ColumnTrait, Condition, EntityTrait, FromQueryResult, QueryFilter, QueryOrder, QuerySelect,
};
use serde::Serialize;

use super::entities::{llm_call, step, task};
use super::{Storage, StorageError};
use crate::domain::{AgentKind, StepStatus, TaskId, TaskOptions, TaskStatus};

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
    /// The lease of the process that runs it (none: nobody's yet). Not part of the API's task.
    #[serde(skip)]
    pub owner: Option<String>,
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
    /// The earlier steps it waits for (a step stored before plans were graphs waits for the one before it).
    pub depends_on: Vec<i32>,
    /// When it (last) started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
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

/// What a page of the task list asks for (`GET /api/v1/tasks`).
#[derive(Debug, Clone, Default)]
pub struct TaskQuery {
    /// Most tasks on the page.
    pub limit: u64,
    /// Only tasks in this status.
    pub status: Option<TaskStatus>,
    /// Only tasks whose prompt contains this text, ignoring case (`%` and `_` are literal).
    pub text: Option<String>,
    /// Only tasks created before this one (keyset pagination: its `created_at` and id).
    pub before: Option<(DateTime<Utc>, TaskId)>,
}

/// One page of the task list, each task with its agents and model usage.
#[derive(Debug, Clone)]
pub struct TaskPage {
    /// Newest first.
    pub tasks: Vec<TaskSummary>,
    /// The last task's id when older tasks exist (the next page's `before`), else `None`.
    pub next: Option<TaskId>,
}

/// A task in the list: the row, the distinct agents of its steps and its model usage.
#[derive(Debug, Clone)]
pub struct TaskSummary {
    /// The task.
    pub task: TaskRecord,
    /// Distinct agents of its steps, in plan order.
    pub agents: Vec<AgentKind>,
    /// Prompt tokens over its model calls.
    pub input_tokens: i64,
    /// Generated tokens over its model calls.
    pub output_tokens: i64,
    /// US dollars over its model calls.
    pub cost_usd: f64,
}

/// `SUM(column)` as a 64-bit integer: PostgreSQL sums a `bigint` column as `numeric`, which does not
/// decode as `i64`; SQLite's sum already is one.
fn sum_of_integers(column: llm_call::Column) -> Expr {
    Func::cast_as(
        Func::sum(Expr::col((llm_call::Entity, column))),
        sea_orm::sea_query::Alias::new("BIGINT"),
    )
    .into()
}

/// `text` with LIKE's wildcards and the escape character escaped (by `\`), so it matches literally.
fn escape_like(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len() + 2);
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
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
            owner: row.owner,
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

    /// One page of the task list, newest first: one query for the page (limit + 1 rows, to know whether an
    /// older page exists), one for the page's steps and one grouped query for its model usage.
    pub async fn task_page(&self, query: &TaskQuery) -> Result<TaskPage, StorageError> {
        let mut select = task::Entity::find()
            .order_by_desc(task::Column::CreatedAt)
            .order_by_desc(task::Column::Id)
            .limit(query.limit.saturating_add(1));
        if let Some(status) = query.status {
            select = select.filter(task::Column::Status.eq(status.as_str()));
        }
        if let Some(text) = query.text.as_deref().filter(|text| !text.is_empty()) {
            // lower() on both sides: SQLite's LIKE ignores ASCII case, PostgreSQL's does not.
            let pattern = format!("%{}%", escape_like(&text.to_lowercase()));
            select = select.filter(
                Expr::expr(Func::lower(Expr::col((task::Entity, task::Column::Prompt))))
                    .like(LikeExpr::new(pattern).escape('\\')),
            );
        }
        if let Some((created_at, id)) = query.before {
            select = select.filter(
                Condition::any()
                    .add(task::Column::CreatedAt.lt(created_at))
                    .add(
                        Condition::all()
                            .add(task::Column::CreatedAt.eq(created_at))
                            .add(task::Column::Id.lt(id.to_string())),
                    ),
            );
        }
        let mut rows = select
            .all(&self.db)
            .await
            .map_err(StorageError::query("list tasks"))?;
        let more = rows.len() as u64 > query.limit;
        rows.truncate(usize::try_from(query.limit).unwrap_or(usize::MAX));
        let tasks = rows
            .into_iter()
            .map(TaskRecord::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        let ids: Vec<String> = tasks.iter().map(|task| task.id.to_string()).collect();
        let mut agents: HashMap<String, Vec<AgentKind>> = HashMap::new();
        let mut usage: HashMap<String, (i64, i64, f64)> = HashMap::new();
        if !ids.is_empty() {
            let steps = step::Entity::find()
                .select_only()
                .column(step::Column::TaskId)
                .column(step::Column::Agent)
                .filter(step::Column::TaskId.is_in(ids.clone()))
                .order_by_asc(step::Column::TaskId)
                .order_by_asc(step::Column::Idx)
                .into_tuple::<(String, String)>()
                .all(&self.db)
                .await
                .map_err(StorageError::query("read the page's steps"))?;
            for (task_id, agent) in steps {
                let agent: AgentKind = agent.parse().map_err(|e| StorageError::Corrupt {
                    what: "step",
                    detail: format!("{e}"),
                })?;
                let list = agents.entry(task_id).or_default();
                if !list.contains(&agent) {
                    list.push(agent);
                }
            }
            let sums = llm_call::Entity::find()
                .select_only()
                .column(llm_call::Column::TaskId)
                .column_as(
                    sum_of_integers(llm_call::Column::PromptTokens),
                    "prompt_tokens",
                )
                .column_as(
                    sum_of_integers(llm_call::Column::CompletionTokens),
                    "completion_tokens",
                )
                .column_as(llm_call::Column::CostUsd.sum(), "cost_usd")
                .filter(llm_call::Column::TaskId.is_in(ids))
                .group_by(llm_call::Column::TaskId)
                .into_tuple::<(String, Option<i64>, Option<i64>, Option<f64>)>()
                .all(&self.db)
                .await
                .map_err(StorageError::query("sum the page's model usage"))?;
            for (task_id, input, output, cost) in sums {
                usage.insert(
                    task_id,
                    (input.unwrap_or(0), output.unwrap_or(0), cost.unwrap_or(0.0)),
                );
            }
        }
        let next = more.then(|| tasks.last().map(|task| task.id)).flatten();
        let tasks = tasks
            .into_iter()
            .map(|task| {
                let key = task.id.to_string();
                let (input_tokens, output_tokens, cost_usd) =
                    usage.get(&key).copied().unwrap_or((0, 0, 0.0));
                TaskSummary {
                    agents: agents.remove(&key).unwrap_or_default(),
                    input_tokens,
                    output_tokens,
                    cost_usd,
                    task,
                }
            })
            .collect();
        Ok(TaskPage { tasks, next })
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
                let depends_on = match &row.depends_on {
                    Some(text) => serde_json::from_str(text)
                        .map_err(|e| corrupt(format!("depends_on of step {}: {e}", row.idx)))?,
                    None if row.idx > 1 => vec![row.idx - 1],
                    None => Vec::new(),
                };
                Ok(StepRecord {
                    agent: row.agent.parse().map_err(|e| corrupt(format!("{e}")))?,
                    idx: row.idx,
                    instruction: row.instruction,
                    status: row.status.parse().map_err(|e| corrupt(format!("{e}")))?,
                    output: row.output,
                    attempts: row.attempts,
                    depends_on,
                    started_at: row.started_at,
                    finished_at: row.finished_at,
                })
            })
            .collect()
    }

    /// Token and call counts of a task's model calls.
    pub async fn usage(&self, id: TaskId) -> Result<TaskUsage, StorageError> {
        let usage = llm_call::Entity::find()
            .select_only()
            .column_as(
                sum_of_integers(llm_call::Column::PromptTokens),
                "prompt_tokens",
            )
            .column_as(
                sum_of_integers(llm_call::Column::CompletionTokens),
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_wildcards_and_the_escape_are_escaped() {
        assert_eq!(escape_like("50%_off\\"), "50\\%\\_off\\\\");
        assert_eq!(escape_like("plain"), "plain");
    }
}
