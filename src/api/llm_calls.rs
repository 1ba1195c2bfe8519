//! `/api/v1/tasks/{id}/llm-calls`: a task's finished model calls (prompt, output, usage, the scored
//! choice), and `/llm-calls/{purpose}/tokens`: one call's streamed tokens with their probabilities, read
//! from the event log (so it works while the call streams).

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::error::{parse_task_id, ApiError};
use crate::service::Core;

/// Longest purpose key (the `llm_calls.purpose` column).
const MAX_PURPOSE_CHARS: usize = 64;

/// `GET /api/v1/tasks/{id}/llm-calls`: the finished calls in call order.
pub async fn list_llm_calls(
    core: web::Data<Core>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_task_id(&path)?;
    if core.storage.task(id).await?.is_none() {
        return Err(ApiError::TaskNotFound(id));
    }
    let calls: Vec<_> = core
        .storage
        .llm_calls(id)
        .await?
        .into_iter()
        .map(|call| {
            json!({
                "purpose": call.purpose,
                "agent": call.agent,
                "provider": call.provider,
                "model": call.model,
                "prompt": call.prompt,
                "output": call.output,
                "input_tokens": call.input_tokens,
                "output_tokens": call.output_tokens,
                "cost_usd": call.cost_usd,
                "duration_seconds": call.duration_seconds,
                "created_at": call.created_at,
                "choice": call.choice,
                "request_digest": call.request_digest,
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "calls": calls })))
}

/// `GET /api/v1/tasks/{id}/llm-calls/{purpose}/tokens`: the call's `llm.token` events as `{seq, text, p}`
/// (`p` null where the provider gave no probability); `finished` once the call is recorded or the task is
/// over (no more tokens will come).
pub async fn call_tokens(
    core: web::Data<Core>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (id, purpose) = path.into_inner();
    let id = parse_task_id(&id)?;
    let chars = purpose.chars().count();
    if chars == 0 || chars > MAX_PURPOSE_CHARS {
        return Err(ApiError::InvalidQuery(format!(
            "purpose must have 1..={MAX_PURPOSE_CHARS} characters, got {chars}"
        )));
    }
    let task = core
        .storage
        .task(id)
        .await?
        .ok_or(ApiError::TaskNotFound(id))?;
    // Read before the token events: a call recorded by now has all its tokens stored too (the writer
    // commits them in send order), so `finished` never claims an incomplete list.
    let finished =
        task.status.is_terminal() || core.storage.llm_call_recorded(id, &purpose).await?;
    let pieces = core.storage.token_pieces(id, &purpose).await?;
    let tokens: Vec<Token<'_>> = pieces
        .iter()
        .map(|(seq, data)| Token {
            seq: *seq,
            text: data.get("text").and_then(|t| t.as_str()).unwrap_or(""),
            p: data.get("p").and_then(|p| p.as_f64()),
        })
        .collect();
    // Serialised straight from the rows (no intermediate JSON tree: a call can stream thousands).
    Ok(HttpResponse::Ok().json(CallTokens {
        purpose: &purpose,
        tokens,
        finished,
    }))
}

/// The body of the tokens endpoint.
#[derive(serde::Serialize)]
struct CallTokens<'a> {
    purpose: &'a str,
    tokens: Vec<Token<'a>>,
    finished: bool,
}

/// One streamed piece.
#[derive(serde::Serialize)]
struct Token<'a> {
    seq: i64,
    text: &'a str,
    p: Option<f64>,
}
