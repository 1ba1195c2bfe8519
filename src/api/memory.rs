//! Memory inspection: what a task's agents read and wrote (`GET /api/v1/tasks/{id}/memory`) and semantic
//! search over all memories (`GET /api/v1/memory/search?q=...&k=...`).

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::error::{parse_task_id, ApiError};
use crate::domain::{AgentKind, EventKind, MemoryKind};
use crate::memory::short_term::WindowEntry;
use crate::memory::{SearchFilter, MAX_QUERY_CHARS, MAX_SEARCH_K};
use crate::service::Core;

/// `GET /api/v1/tasks/{id}/memory`: the task's `memory.read` events (queries, hits, scores), the memories it
/// wrote (with provenance), and its short-term memory while that lives (scratchpad and window).
pub async fn task_memory(
    core: web::Data<Core>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_task_id(&path)?;
    core.storage
        .task(id)
        .await?
        .ok_or(ApiError::TaskNotFound(id))?;
    let reads: Vec<_> = core
        .storage
        .events_after(id, 0)
        .await?
        .into_iter()
        .filter(|event| event.kind == EventKind::MemoryRead)
        .map(|event| {
            json!({
                "seq": event.seq,
                "at": event.at,
                "agent": event.agent,
                "span_id": event.span_id,
                "read": event.data,
            })
        })
        .collect();
    let writes = core.memory.written_by(id).await?;
    let short_term = core.memory.short_term();
    // Short-term memory is best effort here: when its store is down the answer says so instead of failing.
    let (scratchpad, window, error) =
        match (short_term.scratchpad(id).await, short_term.window(id).await) {
            (Ok(scratchpad), Ok(window)) => (scratchpad, window, None),
            (Err(error), _) | (_, Err(error)) => {
                (Default::default(), Vec::new(), Some(error.to_string()))
            }
        };
    let window: Vec<serde_json::Value> = window
        .iter()
        .map(|entry| {
            serde_json::from_str::<WindowEntry>(entry)
                .map_or_else(|_| json!(entry), |entry| json!(entry))
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({
        "task_id": id,
        "reads": reads,
        "writes": writes,
        "short_term": {
            "backend": short_term.backend(),
            "scratchpad": scratchpad,
            "window": window,
            "error": error,
        },
    })))
}

/// Query of `GET /api/v1/memory/search`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchQuery {
    /// The text to find memories close to.
    pub q: Option<String>,
    /// Hits wanted, 1..=50 (default 5).
    pub k: Option<usize>,
    /// Only these kinds, comma-separated (fact, summary, snippet, pattern).
    pub kind: Option<String>,
    /// Only memories written by this agent.
    pub agent: Option<String>,
}

/// `GET /api/v1/memory/search`: the closest memories with their similarity scores, best first.
pub async fn search(
    core: web::Data<Core>,
    query: web::Query<SearchQuery>,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    let text = query.q.as_deref().map(str::trim).unwrap_or("");
    if text.is_empty() {
        return Err(ApiError::InvalidQuery(
            "q (the text to search for) is required".into(),
        ));
    }
    let chars = text.chars().count();
    if chars > MAX_QUERY_CHARS {
        return Err(ApiError::InvalidQuery(format!(
            "q has {chars} characters; at most {MAX_QUERY_CHARS} are allowed"
        )));
    }
    let k = query.k.unwrap_or(5);
    if !(1..=MAX_SEARCH_K).contains(&k) {
        return Err(ApiError::InvalidQuery(format!(
            "k must be within 1..={MAX_SEARCH_K}, got {k}"
        )));
    }
    let kinds = match query.kind.as_deref() {
        None | Some("") => Vec::new(),
        Some(list) => list
            .split(',')
            .map(|kind| kind.trim().parse::<MemoryKind>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ApiError::InvalidQuery(e.to_string()))?,
    };
    let agent = query
        .agent
        .as_deref()
        .map(str::parse::<AgentKind>)
        .transpose()
        .map_err(|e| ApiError::InvalidQuery(e.to_string()))?;
    if !core.memory.enabled() {
        return Err(ApiError::from(crate::memory::MemoryError::Disabled));
    }
    let filter = SearchFilter {
        kinds,
        agent,
        ..SearchFilter::default()
    };
    let hits = core.memory.search(text, &filter, k).await?;
    Ok(HttpResponse::Ok().json(json!({
        "query": text,
        "k": k,
        "backend": core.storage.backend_name(),
        "hits": hits,
    })))
}
