//! `search_memory`: the memories closest in meaning to a text (semantic memory), with their scores.

use async_trait::async_trait;
use serde_json::{json, Value};

use super::{Tool, ToolContext, ToolError, ToolSpec};
use crate::domain::shorten;
use crate::memory::{Memory, SearchFilter};

/// Longest memory content returned, in characters.
const CONTENT_CHARS: usize = 400;

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
                          meaning; returns the closest memories with their similarity scores.",
            input_schema: json!({
                "type": "object",
                "properties": {
                    "query": { "type": "string", "minLength": 1, "maxLength": 500 },
                    "k": { "type": "integer", "minimum": 1, "maximum": 10 }
                },
                "required": ["query"],
                "additionalProperties": false
            }),
        }
    }

    async fn call(&self, _context: ToolContext, arguments: Value) -> Result<Value, ToolError> {
        let query = arguments["query"].as_str().unwrap_or_default();
        let k = arguments["k"]
            .as_u64()
            .and_then(|k| usize::try_from(k).ok())
            .unwrap_or(3);
        let hits = self
            .memory
            .search(query, &SearchFilter::default(), k)
            .await
            .map_err(|e| ToolError::Failed(e.to_string()))?;
        Ok(json!({
            "hits": hits.iter().map(|hit| json!({
                "id": hit.memory.id,
                "kind": hit.memory.kind,
                "content": shorten(&hit.memory.content, CONTENT_CHARS),
                "score": hit.score,
            })).collect::<Vec<_>>()
        }))
    }
}
