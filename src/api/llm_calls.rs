//! `/api/v1/tasks/{id}/llm-calls`: a task's finished model calls (prompt, output, usage, the scored
//! choice) with their streamed tokens (probabilities and alternatives), and `/llm-calls/{purpose}/tokens`:
//! one call's streamed tokens, read from the event log (so it works while the call streams).

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::error::{parse_task_id, ApiError};
use crate::service::Core;

/// Longest purpose key (the `llm_calls.purpose` column).
const MAX_PURPOSE_CHARS: usize = 64;
/// Most tokens `GET /llm-calls` serves inline (over all its calls): a call whose tokens lie past it gets
/// `tokens: null` and `tokens_truncated: true`, and its tokens come from its `tokens_url`.
pub const MAX_INLINE_TOKENS: usize = 10_000;

/// The query of `GET /llm-calls`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallsQuery {
    /// Whether each call carries its tokens inline (default true; false: only `tokens_url`).
    tokens: Option<bool>,
}

/// `GET /api/v1/tasks/{id}/llm-calls`: the finished calls in call order, each with its streamed tokens
/// `[{seq, text, p, top}]` inline (bounded by [`MAX_INLINE_TOKENS`] over the whole answer; `?tokens=false`
/// leaves them out) and the URL of its token stream.
pub async fn list_llm_calls(
    core: web::Data<Core>,
    path: web::Path<String>,
    query: web::Query<CallsQuery>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_task_id(&path)?;
    if core.storage.task(id).await?.is_none() {
        return Err(ApiError::TaskNotFound(id));
    }
    let calls = core.storage.llm_calls(id).await?;
    let inline = query.tokens.unwrap_or(true);
    // Each call's tokens in call order while the bound allows: the first call that would pass it, and every
    // later one, is served without them (truncated), so the answer stays bounded however long the task.
    let mut budget = MAX_INLINE_TOKENS;
    let mut exhausted = false;
    let mut listed = Vec::with_capacity(calls.len());
    for call in calls {
        let pieces = if inline && !exhausted {
            core.storage.token_pieces(id, &call.purpose).await?
        } else {
            Vec::new()
        };
        exhausted = exhausted || pieces.len() > budget;
        let truncated = inline && exhausted;
        let tokens = if inline && !truncated {
            budget -= pieces.len();
            json!(pieces
                .iter()
                .map(|(seq, data)| Token::of(*seq, data))
                .collect::<Vec<_>>())
        } else {
            serde_json::Value::Null
        };
        listed.push(json!({
            "tokens_url": format!("/api/v1/tasks/{id}/llm-calls/{}/tokens", path_segment(&call.purpose)),
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
            "tokens": tokens,
            "tokens_truncated": truncated,
        }));
    }
    Ok(HttpResponse::Ok().json(json!({ "calls": listed })))
}

/// `text` as one URL path segment: unreserved characters as they are, every other byte percent-encoded.
fn path_segment(text: &str) -> String {
    let mut segment = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            segment.push(char::from(byte));
        } else {
            segment.push_str(&format!("%{byte:02X}"));
        }
    }
    segment
}

/// `GET /api/v1/tasks/{id}/llm-calls/{purpose}/tokens`: the call's `llm.token` events as `{seq, text, p,
/// top}` (`p` null where the provider gave no probability, `top` null where it gave no alternatives);
/// `finished` once the call is recorded or the task is over (no more tokens will come).
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
        .map(|(seq, data)| Token::of(*seq, data))
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
    /// The stored alternatives `[{text, p}]` as they are (the writer checked their shape: `storage::events`).
    top: Option<&'a serde_json::Value>,
}

impl<'a> Token<'a> {
    /// The piece of the `llm.token` event `seq` whose data is `data`.
    fn of(seq: i64, data: &'a serde_json::Value) -> Self {
        Token {
            seq,
            text: data.get("text").and_then(|t| t.as_str()).unwrap_or(""),
            p: data.get("p").and_then(|p| p.as_f64()),
            top: data.get("top").filter(|top| top.is_array()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_purpose_becomes_one_path_segment() {
        assert_eq!(path_segment("work.1.r2"), "work.1.r2");
        assert_eq!(path_segment("a/b c"), "a%2Fb%20c");
        assert_eq!(path_segment("é"), "%C3%A9");
    }
}
