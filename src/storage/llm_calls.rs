//! Reads of recorded model calls: what the replay provider answers with (`llm::replay` reads the rows), and
//! the calls of a task as the dashboard shows them.

use chrono::{DateTime, Utc};
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder};

use super::entities::llm_call;
use super::{Storage, StorageError};
use crate::domain::{AgentKind, TaskId};

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
    /// The messages sent, as stored (JSON text).
    pub prompt: String,
    /// What was asked beside the messages (JSON text), where recorded.
    pub request: Option<String>,
    /// SHA-256 (hex) of the whole request, where recorded.
    pub request_digest: Option<String>,
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

/// A finished model call of a task, as stored.
#[derive(Debug, Clone)]
pub struct CallRecord {
    /// Its purpose key (unique per task).
    pub purpose: String,
    /// The agent it was made for.
    pub agent: AgentKind,
    /// The provider that answered.
    pub provider: String,
    /// The model that answered.
    pub model: String,
    /// The messages sent, as JSON (a string when the stored text is not JSON).
    pub prompt: serde_json::Value,
    /// The output text.
    pub output: String,
    /// The scored choice (JSON), for choices.
    pub choice: Option<serde_json::Value>,
    /// Prompt tokens.
    pub input_tokens: i64,
    /// Generated tokens.
    pub output_tokens: i64,
    /// US dollars at the configured price.
    pub cost_usd: f64,
    /// Duration.
    pub duration_seconds: f64,
    /// When it was recorded (as it finished).
    pub created_at: DateTime<Utc>,
    /// SHA-256 (hex) of the whole request (messages, `max_tokens`, output spec, model configuration),
    /// where recorded: two calls with the same digest asked the same.
    pub request_digest: Option<String>,
}

impl Storage {
    /// Task `id`'s finished model calls in call order.
    pub async fn llm_calls(&self, id: TaskId) -> Result<Vec<CallRecord>, StorageError> {
        llm_call::Entity::find()
            .filter(llm_call::Column::TaskId.eq(id.to_string()))
            .order_by_asc(llm_call::Column::CreatedAt)
            .all(&self.db)
            .await
            .map_err(StorageError::query("read model calls"))?
            .into_iter()
            .map(|row| {
                Ok(CallRecord {
                    agent: row.agent.parse().map_err(|e| StorageError::Corrupt {
                        what: "model call",
                        detail: format!("{e}"),
                    })?,
                    prompt: serde_json::from_str(&row.prompt)
                        .unwrap_or(serde_json::Value::String(row.prompt)),
                    purpose: row.purpose,
                    provider: row.provider,
                    model: row.model,
                    output: row.output,
                    choice: row.choice,
                    input_tokens: row.prompt_tokens,
                    output_tokens: row.completion_tokens,
                    cost_usd: row.cost_usd,
                    duration_seconds: row.duration_seconds,
                    created_at: row.created_at,
                    request_digest: row.request_digest,
                })
            })
            .collect()
    }

    /// Whether task `id`'s call `purpose` has finished (its row is stored).
    pub async fn llm_call_recorded(&self, id: TaskId, purpose: &str) -> Result<bool, StorageError> {
        let count = llm_call::Entity::find()
            .filter(llm_call::Column::TaskId.eq(id.to_string()))
            .filter(llm_call::Column::Purpose.eq(purpose))
            .count(&self.db)
            .await
            .map_err(StorageError::query("find model call"))?;
        Ok(count > 0)
    }

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
                prompt: row.prompt,
                request: row.request,
                request_digest: row.request_digest,
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
