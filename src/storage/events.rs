//! Reads of the event log.

use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};

use super::entities::event;
use super::{Storage, StorageError};
use crate::events::Event;
use crate::task::TaskId;

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
