//! Reads of recorded model calls: what the replay provider answers with.

use std::collections::HashMap;

use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};

use super::entities::llm_call;
use super::{Storage, StorageError};
use crate::llm::{Choice, LlmOutput, Usage};
use crate::task::TaskId;

/// The recorded model outputs of one task, by call purpose.
#[derive(Debug, Clone)]
pub struct Recording {
    /// The model that produced them.
    pub model: String,
    /// Output per purpose.
    pub outputs: HashMap<String, LlmOutput>,
}

impl Storage {
    /// Task `id`'s model outputs, keyed by purpose; empty when it made no calls.
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
        let mut outputs = HashMap::with_capacity(rows.len());
        for row in rows {
            let choice = row
                .choice
                .map(serde_json::from_value::<Choice>)
                .transpose()
                .map_err(|e| StorageError::Corrupt {
                    what: "model call",
                    detail: format!("choice: {e}"),
                })?;
            let output = LlmOutput {
                text: row.output,
                choice,
                usage: Usage {
                    input_tokens: u64::try_from(row.prompt_tokens).unwrap_or(0),
                    output_tokens: u64::try_from(row.completion_tokens).unwrap_or(0),
                },
                generation_seconds: row.duration_seconds,
            };
            outputs.insert(row.purpose, output);
        }
        Ok(Recording { model, outputs })
    }
}
