//! The event log's rows: reads, the row of a new event, and a task's last `seq`.

use sea_orm::sea_query::Expr;
use sea_orm::ActiveValue::Set;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
};

use super::entities::event;
use super::records::PendingEvent;
use super::{Storage, StorageError};
use crate::domain::{Event, EventKind, TaskId};

impl Storage {
    /// Task `id`'s events with `seq > after`, in order.
    pub async fn events_after(&self, id: TaskId, after: i64) -> Result<Vec<Event>, StorageError> {
        Ok(self.events_page(id, after, None, &[]).await?.0)
    }

    /// Task `id`'s events with `seq > after`, in order, leaving out the kinds in `exclude` (in SQL), at most
    /// `limit` of them when given. The second value is the last returned event's `seq` when more matching
    /// events are stored after it (the next page's `after`), else `None`.
    pub async fn events_page(
        &self,
        id: TaskId,
        after: i64,
        limit: Option<u64>,
        exclude: &[EventKind],
    ) -> Result<(Vec<Event>, Option<i64>), StorageError> {
        let mut select = event::Entity::find()
            .filter(event::Column::TaskId.eq(id.to_string()))
            .filter(event::Column::Seq.gt(after))
            .order_by_asc(event::Column::Seq);
        if !exclude.is_empty() {
            select = select.filter(
                event::Column::Kind.is_not_in(exclude.iter().map(|kind| kind.as_str().to_owned())),
            );
        }
        if let Some(limit) = limit {
            // One more than asked for says whether another page exists.
            select = select.limit(limit.saturating_add(1));
        }
        let mut rows = select
            .all(&self.db)
            .await
            .map_err(StorageError::query("read events"))?;
        let more = limit.is_some_and(|limit| rows.len() as u64 > limit);
        if let Some(limit) = limit {
            rows.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        }
        let events = rows
            .into_iter()
            .map(|row| event_of_row(id, row))
            .collect::<Result<Vec<_>, _>>()?;
        let next = more.then(|| events.last().map(|event| event.seq)).flatten();
        Ok((events, next))
    }

    /// The `llm.token` events of task `id`'s model call `purpose`, in order, as `(seq, data)` only: the
    /// fewest columns, and the purpose picked in SQL (a task can stream thousands of tokens over many calls).
    pub async fn token_pieces(
        &self,
        id: TaskId,
        purpose: &str,
    ) -> Result<Vec<(i64, serde_json::Value)>, StorageError> {
        // The JSON path differs by backend; the purpose is bound, never spliced into the SQL.
        let of_purpose = match self.db.get_database_backend() {
            DbBackend::Postgres => Expr::cust_with_values("data->>'purpose' = $1", [purpose]),
            _ => Expr::cust_with_values("json_extract(data, '$.purpose') = ?", [purpose]),
        };
        event::Entity::find()
            .select_only()
            .column(event::Column::Seq)
            .column(event::Column::Data)
            .filter(event::Column::TaskId.eq(id.to_string()))
            .filter(event::Column::Kind.eq(EventKind::LlmToken.as_str()))
            .filter(of_purpose)
            .order_by_asc(event::Column::Seq)
            .into_tuple::<(i64, serde_json::Value)>()
            .all(&self.db)
            .await
            .map_err(StorageError::query("read token events"))
    }
}

/// An event as read from its row.
pub(super) fn event_of_row(id: TaskId, row: event::Model) -> Result<Event, StorageError> {
    let corrupt = |detail: String| StorageError::Corrupt {
        what: "event",
        detail,
    };
    Ok(Event {
        seq: row.seq,
        task_id: id,
        at: row.at,
        kind: row.kind.parse().map_err(|e| corrupt(format!("{e}")))?,
        agent: row
            .agent
            .map(|agent| agent.parse().map_err(|e| corrupt(format!("{e}"))))
            .transpose()?,
        trace_id: row.trace_id,
        span_id: row.span_id,
        data: row.data,
    })
}

/// The stored row of an event.
pub(super) fn event_row(pending: &PendingEvent, seq: i64) -> event::ActiveModel {
    event::ActiveModel {
        task_id: Set(pending.task_id.to_string()),
        seq: Set(seq),
        at: Set(pending.at),
        kind: Set(pending.kind.as_str().to_owned()),
        agent: Set(pending.agent.map(|agent| agent.as_str().to_owned())),
        trace_id: Set(pending.trace_id.clone()),
        span_id: Set(pending.span_id.clone()),
        data: Set(pending.data.clone()),
    }
}

/// The last `seq` of task `task_id`'s log (`None`: no events yet), read inside `db` (a transaction that is
/// about to append).
pub(super) async fn last_seq(
    db: &impl ConnectionTrait,
    task_id: TaskId,
) -> Result<Option<i64>, StorageError> {
    Ok(event::Entity::find()
        .select_only()
        .column_as(event::Column::Seq.max(), "max")
        .filter(event::Column::TaskId.eq(task_id.to_string()))
        .into_tuple::<Option<i64>>()
        .one(db)
        .await
        .map_err(StorageError::query("read last event"))?
        .flatten())
}
