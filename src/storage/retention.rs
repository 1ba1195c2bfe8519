//! The retention sweep's read: which finished tasks ended before a cutoff (the writer removes them).

use chrono::{DateTime, Utc};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};

use super::entities::task;
use super::{Storage, StorageError};
use crate::domain::{TaskId, TaskStatus};

impl Storage {
    /// At most `limit` finished tasks (completed, failed or cancelled) that finished before `cutoff`, oldest
    /// first. A row whose id does not parse is skipped (it cannot be removed through the API either).
    pub async fn finished_before(
        &self,
        cutoff: DateTime<Utc>,
        limit: u64,
    ) -> Result<Vec<TaskId>, StorageError> {
        let finished = [
            TaskStatus::Completed,
            TaskStatus::Failed,
            TaskStatus::Cancelled,
        ]
        .map(|status| status.as_str());
        let ids: Vec<String> = task::Entity::find()
            .select_only()
            .column(task::Column::Id)
            .filter(task::Column::Status.is_in(finished))
            .filter(task::Column::FinishedAt.lt(cutoff))
            .order_by_asc(task::Column::FinishedAt)
            .limit(limit)
            .into_tuple()
            .all(&self.db)
            .await
            .map_err(StorageError::query("find tasks past retention"))?;
        Ok(ids.iter().filter_map(|id| id.parse().ok()).collect())
    }
}
