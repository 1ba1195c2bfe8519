//! Troupe as an OpenAI-compatible model: `POST /v1/chat/completions` with `model: "troupe"` runs the last user
//! message as a task and answers with its result, and `GET /v1/models` lists the one model. Any OpenAI client
//! or chat UI pointed at this server's `/v1` (its API key, beyond loopback, is a Troupe API token) can use it.
//!
//! - Without `stream`: the answer comes when the task ends, as one `chat.completion` (the task's answer as the
//!   assistant's message; a task that failed or was cancelled says so in the message, with
//!   `troupe.status`). Usage is the task's model usage summed over its calls.
//! - With `stream: true`: `chat.completion.chunk` server-sent events. The agents' progress (the plan, each
//!   assignment, each step starting and ending, each test, QA's verdict) comes as `reasoning_content`
//!   deltas as it happens, the answer as `content` at the end, then `finish_reason: "stop"`, the usage chunk
//!   when `stream_options.include_usage` asks for it, and `data: [DONE]`.
//! - A client that goes away before the end (a chat UI's stop button closes the connection) cancels the task.
//! - Errors have OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, with the status Troupe's
//!   API gives the same problem. Earlier turns of the conversation are not part of the task (a task is one
//!   prompt); sampling fields (`temperature`, `max_tokens`, ...) are accepted and not used: the task's
//!   models are Troupe's configuration.

use std::time::{SystemTime, UNIX_EPOCH};

use actix_web::http::StatusCode;
use actix_web::web::Bytes;
use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::{ApiError, OpenAiError as ChatError};
use crate::domain::{shorten, EventKind, TaskId, TaskOptions, TaskStatus};
use crate::events::Subscription;
use crate::service::Core;

/// The one model this front offers.
pub const MODEL: &str = "troupe";

/// One message of the conversation.
#[derive(Debug, Deserialize)]
struct Message {
    role: String,
    #[serde(default)]
    content: Value,
}

/// `stream_options`.
#[derive(Debug, Default, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// The fields of a chat completion request this front reads; others (sampling) are accepted and not used.
#[derive(Debug, Deserialize)]
struct ChatRequest {
    model: String,
    messages: Vec<Message>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    n: Option<u64>,
}

/// The text of a message's content: a string, or the text parts of an array of parts.
fn text_of(content: &Value) -> Result<String, ChatError> {
    match content {
        Value::String(text) => Ok(text.clone()),
        Value::Array(parts) => {
            let mut text = String::new();
            for part in parts {
                match (part.get("type").and_then(Value::as_str), part.get("text")) {
                    (Some("text"), Some(Value::String(piece))) => {
                        if !text.is_empty() {
                            text.push('\n');
                        }
                        text.push_str(piece);
                    }
                    (Some(other), _) => {
                        return Err(ChatError::invalid(
                            "messages",
                            format!("a content part of type '{other}' cannot be a task: only text parts can"),
                        ))
                    }
                    (None, _) => {
                        return Err(ChatError::invalid(
                            "messages",
                            "each content part needs a type (only text parts are read)",
                        ))
                    }
                }
            }
            Ok(text)
        }
        _ => Err(ChatError::invalid(
            "messages",
            "the last user message's content must be a string or an array of text parts",
        )),
    }
}

/// Reads the request: the prompt (the last user message) and whether to stream (and include usage).
fn read_request(body: &[u8]) -> Result<(String, bool, bool), ChatError> {
    let request: ChatRequest = serde_json::from_slice(body).map_err(|error| {
        let code = if error.is_data() {
            "invalid_body"
        } else {
            "invalid_json"
        };
        ChatError::new(
            StatusCode::BAD_REQUEST,
            None,
            code,
            format!("the request is not a chat completion request: {error}"),
        )
    })?;
    if request.model != MODEL {
        return Err(ChatError::new(
            StatusCode::NOT_FOUND,
            Some("model"),
            "model_not_found",
            format!(
                "The model `{}` does not exist; this server offers `{MODEL}` (GET /v1/models)",
                shorten(&request.model, 80)
            ),
        ));
    }
    if request.n.is_some_and(|n| n != 1) {
        return Err(ChatError::invalid(
            "n",
            "n must be 1: a task has one answer",
        ));
    }
    let last = request
        .messages
        .iter()
        .rev()
        .find(|message| message.role == "user")
        .ok_or_else(|| {
            ChatError::invalid(
                "messages",
                "messages holds no user message; the last user message is the task",
            )
        })?;
    let prompt = text_of(&last.content)?;
    let stream = request.stream.unwrap_or(false);
    let usage = request.stream_options.unwrap_or_default().include_usage;
    Ok((prompt, stream, usage))
}

fn now_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// Cancels its task when dropped before the task ended (the client went away).
struct CancelOnDrop {
    core: web::Data<Core>,
    id: TaskId,
    ended: bool,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        let core = self.core.clone();
        let id = self.id;
        tracing::info!(task_id = %id, "the chat client went away: cancelling its task");
        actix_rt::spawn(async move {
            if let Err(error) = core.cancel(id).await {
                tracing::debug!(task_id = %id, %error, "cancel a chat completion's task");
            }
        });
    }
}

/// The end of a task as the chat answer: the message text, the task's status, and its usage.
async fn answer_of(core: &Core, id: TaskId) -> Result<(String, TaskStatus, Value), ChatError> {
    let task = core
        .storage
        .task(id)
        .await
        .map_err(ApiError::from)?
        .ok_or(ApiError::TaskNotFound(id))?;
    let text = match task.status {
        TaskStatus::Completed => task
            .result
            .as_ref()
            .and_then(|result| result.get("answer"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned(),
        TaskStatus::Cancelled => format!("The task was cancelled (task {id})."),
        _ => format!(
            "The task failed: {} (task {id}).",
            task.error.as_deref().unwrap_or("no reason was recorded")
        ),
    };
    let usage = core.storage.usage(id).await.map_err(ApiError::from)?;
    let usage = json!({
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    });
    Ok((text, task.status, usage))
}

/// What Troupe adds to each response: the task, its status, its page.
fn troupe_field(id: TaskId, status: Option<TaskStatus>) -> Value {
    json!({ "task_id": id, "status": status, "dashboard": format!("/tasks/{id}") })
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(
    core: web::Data<Core>,
    body: Bytes,
) -> Result<HttpResponse, ChatError> {
    let (prompt, stream, include_usage) = read_request(&body)?;
    let id = core
        .submit(&prompt, TaskOptions::default())
        .await
        .map_err(ApiError::from)?;
    let subscription = core.events.subscribe(id, 0).await.map_err(ApiError::from)?;
    let guard = CancelOnDrop {
        core: core.clone(),
        id,
        ended: false,
    };
    let created = now_seconds();
    if stream {
        let state = Streaming {
            subscription,
            guard,
            created,
            include_usage,
            phase: Phase::Start,
        };
        let body = futures_util::stream::unfold(state, |mut state| async move {
            let chunk = state.next_chunk().await?;
            Some((Ok::<_, actix_web::Error>(chunk), state))
        });
        return Ok(HttpResponse::Ok()
            .content_type("text/event-stream")
            .insert_header(("Cache-Control", "no-cache"))
            .streaming(body));
    }
    let mut subscription = subscription;
    let mut guard = guard;
    while let Some(_event) = subscription.next().await.map_err(ApiError::from)? {}
    guard.ended = true;
    let (text, status, usage) = answer_of(&core, id).await?;
    Ok(HttpResponse::Ok().json(json!({
        "id": format!("chatcmpl-{id}"),
        "object": "chat.completion",
        "created": created,
        "model": MODEL,
        "choices": [{
            "index": 0,
            "message": { "role": "assistant", "content": text },
            "finish_reason": "stop",
            "logprobs": null,
        }],
        "usage": usage,
        "troupe": troupe_field(id, Some(status)),
    })))
}

/// Where a stream stands.
enum Phase {
    /// The role chunk is next.
    Start,
    /// Following the task's events.
    Progress,
    /// The task ended: the usage chunk (when asked for) and `[DONE]` are left.
    Usage(Value),
    /// `[DONE]` is next.
    Done,
    /// Nothing more.
    Over,
}

struct Streaming {
    subscription: Subscription,
    guard: CancelOnDrop,
    created: u64,
    include_usage: bool,
    phase: Phase,
}

impl Streaming {
    /// A `chat.completion.chunk` event of `choices`, with one more field (`troupe` or `usage`).
    fn frame(&self, choices: Value, (key, value): (&str, Value)) -> Bytes {
        let mut chunk = json!({
            "id": format!("chatcmpl-{}", self.guard.id),
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": MODEL,
            "choices": choices,
        });
        chunk[key] = value;
        sse(&chunk)
    }

    /// A chunk of one choice's `delta`, ending with `finish` when given; `status` once the task ended.
    fn chunk(&self, delta: Value, finish: Option<&str>, status: Option<TaskStatus>) -> Bytes {
        self.frame(
            json!([{ "index": 0, "delta": delta, "finish_reason": finish, "logprobs": null }]),
            ("troupe", troupe_field(self.guard.id, status)),
        )
    }

    /// The next server-sent event, `None` after `[DONE]`.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            match std::mem::replace(&mut self.phase, Phase::Over) {
                Phase::Start => {
                    self.phase = Phase::Progress;
                    return Some(self.chunk(
                        json!({ "role": "assistant", "content": "" }),
                        None,
                        None,
                    ));
                }
                Phase::Progress => match self.subscription.next().await {
                    Ok(Some(event)) => {
                        self.phase = Phase::Progress;
                        if event.kind.is_terminal() {
                            continue;
                        }
                        if let Some(line) = progress_line(event.kind, event.agent, &event.data) {
                            return Some(self.chunk(
                                json!({ "reasoning_content": line }),
                                None,
                                None,
                            ));
                        }
                    }
                    Ok(None) => {
                        self.guard.ended = true;
                        let (text, status, usage) =
                            match answer_of(&self.guard.core, self.guard.id).await {
                                Ok(answer) => answer,
                                Err(error) => (error.to_string(), TaskStatus::Failed, Value::Null),
                            };
                        self.phase = Phase::Usage(usage);
                        let mut joined =
                            self.chunk(json!({ "content": text }), None, None).to_vec();
                        joined.extend_from_slice(&self.chunk(
                            json!({}),
                            Some("stop"),
                            Some(status),
                        ));
                        return Some(Bytes::from(joined));
                    }
                    Err(error) => {
                        tracing::warn!(task_id = %self.guard.id, %error, "read a chat completion's events");
                        self.guard.ended = true;
                        self.phase = Phase::Done;
                        return Some(self.chunk(
                            json!({ "content": format!("Troupe could not read the task's events: {error}") }),
                            Some("stop"),
                            None,
                        ));
                    }
                },
                Phase::Usage(usage) => {
                    self.phase = Phase::Done;
                    if self.include_usage {
                        return Some(self.frame(json!([]), ("usage", usage)));
                    }
                }
                Phase::Done => {
                    self.phase = Phase::Over;
                    return Some(Bytes::from_static(b"data: [DONE]\n\n"));
                }
                Phase::Over => return None,
            }
        }
    }
}

fn sse(value: &Value) -> Bytes {
    Bytes::from(format!("data: {value}\n\n"))
}

/// One line of the agents' progress for an event, or `None` for events not worth a line (tokens, memory
/// reads, ...).
fn progress_line(
    kind: EventKind,
    agent: Option<crate::domain::AgentKind>,
    data: &Value,
) -> Option<String> {
    let number = |key: &str| data.get(key).and_then(Value::as_i64).unwrap_or(0);
    let text = |key: &str| {
        data.get(key)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    let agent = agent.map_or("", |agent| agent.as_str());
    Some(match kind {
        EventKind::TaskStarted => "Troupe started the task.\n".to_owned(),
        EventKind::PlanCreated => {
            let steps: Vec<String> = data
                .get("steps")
                .and_then(Value::as_array)
                .map(|steps| {
                    steps
                        .iter()
                        .enumerate()
                        .map(|(index, step)| {
                            let after = data
                                .pointer(&format!("/depends_on/{index}"))
                                .and_then(Value::as_array)
                                .filter(|after| !after.is_empty())
                                .map(|after| {
                                    let list: Vec<String> =
                                        after.iter().map(Value::to_string).collect();
                                    format!(" (after {})", list.join(", "))
                                })
                                .unwrap_or_default();
                            format!("{}. {}{after}", index + 1, step.as_str().unwrap_or(""))
                        })
                        .collect()
                })
                .unwrap_or_default();
            format!("Plan: {}\n", steps.join("; "))
        }
        EventKind::DecisionMade
            if data.get("kind").and_then(Value::as_str) == Some("assign_agent") =>
        {
            let confidence = data
                .get("confidence")
                .and_then(Value::as_f64)
                .map(|p| format!(" (p = {p:.2})"))
                .unwrap_or_default();
            format!(
                "Step {} goes to {}{confidence}.\n",
                number("step"),
                text("chosen")
            )
        }
        EventKind::AgentStarted => format!(
            "Step {}: {agent} starts ({}).\n",
            number("step"),
            text("kind")
        ),
        EventKind::AgentFinished => format!("Step {}: {agent} is done.\n", number("step")),
        EventKind::CodeAttempt => format!(
            "Step {}, attempt {}: the test {}.\n",
            number("step"),
            number("attempt"),
            if data.get("passed").and_then(Value::as_bool) == Some(true) {
                "passed"
            } else {
                "failed"
            }
        ),
        EventKind::QaVerdict => format!("QA's verdict: {} {}\n", text("verdict"), text("feedback")),
        EventKind::QaRevision => format!("QA sends the work back: {}\n", text("feedback")),
        EventKind::TaskPaused => {
            "The task is paused; resume it in Troupe's dashboard.\n".to_owned()
        }
        EventKind::TaskResumed => "The task goes on.\n".to_owned(),
        _ => return None,
    })
}

/// `GET /v1/models`.
pub async fn list_models() -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "object": "list",
        "data": [{ "id": MODEL, "object": "model", "created": 0, "owned_by": "troupe" }],
    }))
}

#[cfg(test)]
mod tests {
    use actix_web::ResponseError;

    use super::*;

    fn read(body: Value) -> Result<(String, bool, bool), ChatError> {
        read_request(body.to_string().as_bytes())
    }

    #[test]
    fn the_last_user_message_is_the_task() {
        let (prompt, stream, usage) = read(json!({
            "model": "troupe",
            "messages": [
                { "role": "system", "content": "be brief" },
                { "role": "user", "content": "first" },
                { "role": "assistant", "content": "ok" },
                { "role": "user", "content": [{ "type": "text", "text": "Name a prime" }] }
            ],
            "stream": true,
            "stream_options": { "include_usage": true },
            "temperature": 0.2
        }))
        .unwrap();
        assert_eq!(prompt, "Name a prime");
        assert!(stream && usage);
    }

    #[test]
    fn bad_requests_say_what_is_wrong_in_openai_shape() {
        let other = read(json!({ "model": "gpt-4o", "messages": [] })).unwrap_err();
        assert_eq!(other.status_code(), StatusCode::NOT_FOUND);
        assert_eq!(other.code(), "model_not_found");
        let none =
            read(json!({ "model": "troupe", "messages": [{ "role": "system", "content": "x" }] }))
                .unwrap_err();
        assert!(none.to_string().contains("no user message"), "{none}");
        let image = read(json!({
            "model": "troupe",
            "messages": [{ "role": "user", "content": [{ "type": "image_url", "image_url": {} }] }]
        }))
        .unwrap_err();
        assert!(image.to_string().contains("image_url"), "{image}");
        let many = read(
            json!({ "model": "troupe", "n": 2, "messages": [{ "role": "user", "content": "x" }] }),
        )
        .unwrap_err();
        assert_eq!(many.param(), Some("n"));
        let broken = read_request(b"{\"model\":").unwrap_err();
        assert_eq!(broken.code(), "invalid_json");
        let response = broken.error_response();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn progress_names_the_plan_and_its_dependencies() {
        let line = progress_line(
            EventKind::PlanCreated,
            None,
            &json!({ "steps": ["find", "write", "check"], "depends_on": [[], [], [1, 2]] }),
        )
        .unwrap();
        assert_eq!(line, "Plan: 1. find; 2. write; 3. check (after 1, 2)\n");
        assert!(progress_line(EventKind::LlmToken, None, &json!({})).is_none());
    }
}
