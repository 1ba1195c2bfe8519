//! Reads of a task's stored decisions (the Director's agent assignments), as `compare` lines two runs up.

use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};
use serde::Serialize;

use super::entities::decision;
use super::{Storage, StorageError};
use crate::domain::TaskId;

/// A decision as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredDecision {
    /// What kind ("assign_agent").
    pub kind: String,
    /// The step it is about, if any.
    pub step: Option<i32>,
    /// The option taken.
    pub chosen: String,
    /// Its probability.
    pub confidence: f64,
    /// The options weighed (JSON, with their probabilities).
    pub options: serde_json::Value,
    /// The stated reason.
    pub reasoning: String,
}

impl Storage {
    /// Task `id`'s stored decisions, oldest first.
    pub async fn decisions(&self, id: TaskId) -> Result<Vec<StoredDecision>, StorageError> {
        Ok(decision::Entity::find()
            .filter(decision::Column::TaskId.eq(id.to_string()))
            .order_by_asc(decision::Column::CreatedAt)
            .order_by_asc(decision::Column::Id)
            .all(&self.db)
            .await
            .map_err(StorageError::query("read decisions"))?
            .into_iter()
            .map(|row| StoredDecision {
                kind: row.kind,
                step: row.step_idx,
                chosen: row.chosen,
                confidence: row.confidence,
                options: row.options,
                reasoning: row.reasoning,
            })
            .collect())
    }
}
