//! `search_memory`: the memories closest in meaning to a text (semantic memory) that are similar enough to
//! be used (`memory.min_score`), with their scores. A call is a recall for the calling agent's step: the
//! search is also a `memory.read` event in the task's log with every hit and which were used.

use async_trait::async_trait;
use serde_json::{json, Value};

use super::{Tool, ToolContext, ToolError, ToolSpec, Workspaces};
use crate::domain::MemoryKind;
use crate::memory::{Memory, RecallSpec, SearchFilter};

/// The `search_memory` tool.
pub struct SearchMemory {
    memory: Memory,
}

impl SearchMemory {
    /// The tool over `memory`.
    pub fn new(memory: Memory) -> Self {
        SearchMemory { memory }
    }
}

#[async_trait]
impl Tool for SearchMemory {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "search_memory",
            description:
                "Search long-term memory (task summaries, facts, code snippets, learned fixes) by \
                          meaning; returns the memories similar enough to use, with their similarity scores.",
            input_schema: json!({
                "type": "object",
                "properties": {
                    "query": { "type": "string", "minLength": 1, "maxLength": crate::memory::MAX_QUERY_CHARS },
                    "k": { "type": "integer", "minimum": 1, "maximum": 10 },
                    "kinds": {
                        "type": "array",
                        "items": { "type": "string", "enum": ["fact", "summary", "snippet", "pattern"] },
                        "maxItems": 4
                    }
                },
                "required": ["query"],
                "additionalProperties": false
            }),
        }
    }

    async fn call(&self, context: ToolContext, arguments: Value) -> Result<Value, ToolError> {
        let (spec, k) = self.search_of(&arguments)?;
        let hits = self
            .memory
            .recall_k(context.task_id, context.agent, context.step, &spec, k)
            .await;
        Ok(json!({ "hits": hits }))
    }

    async fn replay(
        &self,
        _context: ToolContext,
        _workspace: &Workspaces,
        arguments: Value,
    ) -> Result<Value, ToolError> {
        // The same search now (memories may have come and gone since: that is what a replay shows), with
        // the same cut at `memory.min_score`, but as a plain search: no `memory.read` event in the task's
        // log and no reuse counted, since the replay is no recall of the task's.
        let (spec, k) = self.search_of(&arguments)?;
        let hits = self
            .memory
            .search(&spec.query, &spec.filter, k)
            .await
            .map_err(|e| ToolError::Failed(format!("search memory: {e}")))?;
        let min_score = self.memory.settings().min_score;
        let used: Vec<_> = hits
            .into_iter()
            .filter(|hit| hit.score >= min_score)
            .collect();
        Ok(json!({ "hits": used }))
    }
}

impl SearchMemory {
    /// The search a call asks for (arguments checked against the schema) and how many hits it retrieves.
    fn search_of(&self, arguments: &Value) -> Result<(RecallSpec, usize), ToolError> {
        if !self.memory.enabled() {
            return Err(ToolError::Failed(
                "memory is disabled (memory.enabled = false)".into(),
            ));
        }
        let query = arguments["query"].as_str().unwrap_or_default().to_owned();
        let k = arguments["k"]
            .as_u64()
            .and_then(|k| usize::try_from(k).ok())
            .unwrap_or(self.memory.settings().recall_k);
        let kinds = arguments["kinds"]
            .as_array()
            .map(|kinds| {
                kinds
                    .iter()
                    .filter_map(|kind| kind.as_str()?.parse::<MemoryKind>().ok())
                    .collect()
            })
            .unwrap_or_default();
        let spec = RecallSpec {
            purpose: "search_memory tool",
            query,
            filter: SearchFilter {
                kinds,
                ..SearchFilter::default()
            },
        };
        Ok((spec, k))
    }
}
