//! The event log's rows: reads, the row of a new event, and a task's last `seq`.

use sea_orm::ActiveValue::Set;
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};

use super::entities::event;
use super::records::PendingEvent;
use super::{Storage, StorageError};
use crate::domain::{Event, TaskId};

impl Storage {
    /// Task `id`'s events with `seq > after`, in order.
    pub async fn events_after(&self, id: TaskId, after: i64) -> Result<Vec<Event>, StorageError> {
        event::Entity::find()
            .filter(event::Column::TaskId.eq(id.to_string()))
            .filter(event::Column::Seq.gt(after))
            .order_by_asc(event::Column::Seq)
            .all(&self.db)
            .await
            .map_err(StorageError::query("read events"))?
            .into_iter()
            .map(|row| {
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
            })
            .collect()
    }
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
