//! Aggregates over the event log for the dashboard: who handed work to whom (the collaboration graph).
//!
//! Counted in SQL by kind (the `(kind, at)` index serves the time window; a task's own events are read by
//! its primary key); only the rare `qa.revision` events are read row by row, to find whose step went back.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QuerySelect, Select};

use super::entities::{event, step};
use super::{Storage, StorageError};
use crate::domain::{AgentKind, EventKind, TaskId};

/// Which events the collaboration graph is computed from.
#[derive(Debug, Clone, Copy)]
pub enum Scope {
    /// One task's.
    Task(TaskId),
    /// Every task's, from this time on.
    Since(DateTime<Utc>),
}

/// One edge of the collaboration graph: `from` handed work to `to`, `count` times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Handoff {
    /// Who handed the work over.
    pub from: AgentKind,
    /// Who received it.
    pub to: AgentKind,
    /// How many times.
    pub count: i64,
}

fn scoped(select: Select<event::Entity>, kind: EventKind, scope: Scope) -> Select<event::Entity> {
    let select = select.filter(event::Column::Kind.eq(kind.as_str()));
    match scope {
        Scope::Task(id) => select.filter(event::Column::TaskId.eq(id.to_string())),
        Scope::Since(since) => select.filter(event::Column::At.gte(since)),
    }
}

/// Most `code.attempt` events the learning report reads (the latest of the window).
pub const MAX_LEARNING_ATTEMPTS: u64 = 50_000;

impl Storage {
    /// The `code.attempt` events since `since` (task, time, data), oldest first, at most
    /// [`MAX_LEARNING_ATTEMPTS`] (the `(kind, at)` index serves the window).
    pub async fn code_attempts_since(
        &self,
        since: DateTime<Utc>,
    ) -> Result<Vec<(String, DateTime<Utc>, serde_json::Value)>, StorageError> {
        use sea_orm::QueryOrder;
        let mut rows = scoped(
            event::Entity::find(),
            EventKind::CodeAttempt,
            Scope::Since(since),
        )
        .select_only()
        .column(event::Column::TaskId)
        .column(event::Column::At)
        .column(event::Column::Data)
        .order_by_desc(event::Column::At)
        .limit(MAX_LEARNING_ATTEMPTS)
        .into_tuple::<(String, DateTime<Utc>, serde_json::Value)>()
        .all(&self.db)
        .await
        .map_err(StorageError::query("read code attempts"))?;
        rows.reverse();
        Ok(rows)
    }

    /// Who handed work to whom in `scope`: the Director to an agent for each `agent.started` (one per step
    /// attempt), Code to QA for each `code.attempt`, and QA to the agent whose step goes back for each
    /// `qa.revision` that sends work back. Edges in a stable order (by `from`, then `to`).
    pub async fn collaboration(&self, scope: Scope) -> Result<Vec<Handoff>, StorageError> {
        let corrupt = |detail: String| StorageError::Corrupt {
            what: "event",
            detail,
        };
        let mut edges: BTreeMap<(AgentKind, AgentKind), i64> = BTreeMap::new();
        let started = scoped(event::Entity::find(), EventKind::AgentStarted, scope)
            .select_only()
            .column(event::Column::Agent)
            .column_as(event::Column::Seq.count(), "count")
            .group_by(event::Column::Agent)
            .into_tuple::<(Option<String>, i64)>()
            .all(&self.db)
            .await
            .map_err(StorageError::query("count agent starts"))?;
        for (agent, count) in started {
            let Some(agent) = agent else { continue };
            let agent: AgentKind = agent.parse().map_err(|e| corrupt(format!("{e}")))?;
            *edges.entry((AgentKind::Director, agent)).or_default() += count;
        }
        let attempts = scoped(event::Entity::find(), EventKind::CodeAttempt, scope)
            .count(&self.db)
            .await
            .map_err(StorageError::query("count code attempts"))?;
        if attempts > 0 {
            *edges.entry((AgentKind::Code, AgentKind::Qa)).or_default() +=
                i64::try_from(attempts).unwrap_or(i64::MAX);
        }
        let revisions = scoped(event::Entity::find(), EventKind::QaRevision, scope)
            .select_only()
            .column(event::Column::TaskId)
            .column(event::Column::Data)
            .into_tuple::<(String, serde_json::Value)>()
            .all(&self.db)
            .await
            .map_err(StorageError::query("read qa revisions"))?;
        // Only a revision that sends work back names its step (one that fails the task does not).
        let sent_back: Vec<(String, i64)> = revisions
            .into_iter()
            .filter_map(|(task_id, data)| Some((task_id, data.get("step")?.as_i64()?)))
            .collect();
        if !sent_back.is_empty() {
            let mut task_ids: Vec<String> = sent_back.iter().map(|(id, _)| id.clone()).collect();
            task_ids.sort();
            task_ids.dedup();
            let steps = step::Entity::find()
                .select_only()
                .column(step::Column::TaskId)
                .column(step::Column::Idx)
                .column(step::Column::Agent)
                .filter(step::Column::TaskId.is_in(task_ids))
                .into_tuple::<(String, i32, String)>()
                .all(&self.db)
                .await
                .map_err(StorageError::query("read revised steps"))?;
            let agents: HashMap<(String, i64), String> = steps
                .into_iter()
                .map(|(task_id, idx, agent)| ((task_id, i64::from(idx)), agent))
                .collect();
            for key in sent_back {
                let Some(agent) = agents.get(&key) else {
                    continue;
                };
                let agent: AgentKind = agent.parse().map_err(|e| StorageError::Corrupt {
                    what: "step",
                    detail: format!("{e}"),
                })?;
                *edges.entry((AgentKind::Qa, agent)).or_default() += 1;
            }
        }
        Ok(edges
            .into_iter()
            .map(|((from, to), count)| Handoff { from, to, count })
            .collect())
    }
}
