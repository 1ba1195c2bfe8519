//! Reads of recorded model calls: what the replay provider answers with (`llm::replay` reads the rows).

use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};

use super::entities::llm_call;
use super::{Storage, StorageError};
use crate::domain::TaskId;

/// The recorded model calls of one task, oldest first.
#[derive(Debug, Clone)]
pub struct Recording {
    /// The model that produced them.
    pub model: String,
    /// The calls.
    pub calls: Vec<RecordedCall>,
}

/// One recorded model call, as stored.
#[derive(Debug, Clone)]
pub struct RecordedCall {
    /// Its purpose key (unique per task).
    pub purpose: String,
    /// The output text.
    pub output: String,
    /// The scored choice (JSON), for choices.
    pub choice: Option<serde_json::Value>,
    /// Prompt tokens.
    pub prompt_tokens: i64,
    /// Generated tokens.
    pub completion_tokens: i64,
    /// Duration.
    pub duration_seconds: f64,
}

impl Storage {
    /// Task `id`'s model calls, oldest first; empty when it made none.
    pub async fn recording(&self, id: TaskId) -> Result<Recording, StorageError> {
        let rows = llm_call::Entity::find()
            .filter(llm_call::Column::TaskId.eq(id.to_string()))
            .order_by_asc(llm_call::Column::CreatedAt)
            .all(&self.db)
            .await
            .map_err(StorageError::query("read recorded model calls"))?;
        let model = rows
            .first()
            .map(|row| row.model.clone())
            .unwrap_or_default();
        let calls = rows
            .into_iter()
            .map(|row| RecordedCall {
                purpose: row.purpose,
                output: row.output,
                choice: row.choice,
                prompt_tokens: row.prompt_tokens,
                completion_tokens: row.completion_tokens,
                duration_seconds: row.duration_seconds,
            })
            .collect();
        Ok(Recording { model, calls })
    }
}
