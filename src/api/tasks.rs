//! `/api/v1/tasks`: submit, list (paged, filtered, with each task's agents and usage), show (with links to
//! the trace and logs in other tools), cancel.

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::error::{parse_task_id, ApiError};
use crate::config::DashboardSettings;
use crate::domain::json_types::Object;
use crate::domain::{TaskOptions, TaskStatus};
use crate::service::Core;
use crate::storage::{TaskQuery, TaskRecord};

/// Body of `POST /api/v1/tasks`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTask {
    /// What to do.
    pub prompt: String,
    /// Per-task options.
    #[serde(
        default,
        deserialize_with = "crate::domain::json_types::optional_object"
    )]
    pub options: Option<TaskOptions>,
}

/// `POST /api/v1/tasks`: stores the task (before answering) and queues it.
pub async fn create_task(
    core: web::Data<Core>,
    body: web::Json<Object<CreateTask>>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner().into_inner();
    let id = core
        .submit(&body.prompt, body.options.unwrap_or_default())
        .await?;
    Ok(HttpResponse::Accepted()
        .insert_header(("Location", format!("/api/v1/tasks/{id}")))
        .json(json!({ "id": id, "status": TaskStatus::Queued })))
}

/// Query of `GET /api/v1/tasks`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// 1..=200, default 50.
    pub limit: Option<u64>,
    /// Only tasks in this status.
    pub status: Option<String>,
    /// Only tasks whose prompt contains this text, ignoring case.
    pub q: Option<String>,
    /// Only tasks created before this one (the previous page's `next`).
    pub before: Option<String>,
}

/// Longest `q` accepted, in characters (a prompt is at most `server.max_prompt_chars`).
const MAX_QUERY_CHARS: usize = 1000;

/// `GET /api/v1/tasks`: newest first, keyset-paged with `before`, filtered by `status` and `q`.
pub async fn list_tasks(
    core: web::Data<Core>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    let limit = query.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::InvalidQuery(format!(
            "limit must be within 1..=200, got {limit}"
        )));
    }
    let status = query
        .status
        .as_deref()
        .map(|text| text.parse::<TaskStatus>())
        .transpose()
        .map_err(|e| ApiError::InvalidQuery(e.to_string()))?;
    if let Some(text) = &query.q {
        let chars = text.chars().count();
        if chars > MAX_QUERY_CHARS {
            return Err(ApiError::InvalidQuery(format!(
                "q has {chars} characters; at most {MAX_QUERY_CHARS} are allowed"
            )));
        }
    }
    let before = match query.before.as_deref() {
        None => None,
        Some(text) => {
            let id = text.parse().map_err(|_| {
                ApiError::InvalidQuery(format!(
                    "before must be a task id, got '{}'",
                    text.chars().take(64).collect::<String>()
                ))
            })?;
            let task = core
                .storage
                .task(id)
                .await?
                // A cursor naming no task (deleted since, or never one): 404, like the task itself.
                .ok_or(ApiError::TaskNotFound(id))?;
            Some((task.created_at, task.id))
        }
    };
    let page = core
        .storage
        .task_page(&TaskQuery {
            limit,
            status,
            text: query.q,
            before,
        })
        .await?;
    let now = chrono::Utc::now();
    let tasks: Vec<_> = page
        .tasks
        .into_iter()
        .map(|summary| {
            let task = summary.task;
            json!({
                "id": task.id,
                "prompt": task.prompt,
                "status": task.status,
                "created_at": task.created_at,
                "started_at": task.started_at,
                "finished_at": task.finished_at,
                "duration_seconds": duration_seconds(&task, now),
                "agents": summary.agents,
                "tokens": { "input": summary.input_tokens, "output": summary.output_tokens },
                "cost_usd": summary.cost_usd,
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "tasks": tasks, "next": page.next })))
}

/// Seconds from start to finish, or to `now` while it runs; `None` before it started.
fn duration_seconds(task: &TaskRecord, now: chrono::DateTime<chrono::Utc>) -> Option<f64> {
    let started = task.started_at?;
    let end = task.finished_at.unwrap_or(now);
    Some(((end - started).num_microseconds().unwrap_or(0) as f64 / 1e6).max(0.0))
}

/// A task's links to other tools: its trace in Jaeger, its log lines in Grafana Explore (Loki), each `None`
/// when the tool's URL is not configured or the task has no trace id.
fn links(settings: &DashboardSettings, task: &TaskRecord) -> serde_json::Value {
    let trace_id = task
        .trace_id
        .as_deref()
        .filter(|id| !id.is_empty() && id.bytes().any(|b| b != b'0'));
    let jaeger = settings.jaeger_url.trim_end_matches('/');
    let grafana = settings.grafana_url.trim_end_matches('/');
    let trace = trace_id
        .filter(|_| !jaeger.is_empty())
        .map(|id| format!("{jaeger}/trace/{id}"));
    let logs = trace_id.filter(|_| !grafana.is_empty()).map(|id| {
        let from = (task.created_at - chrono::Duration::minutes(5)).timestamp_millis();
        let to = (task.finished_at.unwrap_or_else(chrono::Utc::now) + chrono::Duration::minutes(5))
            .timestamp_millis();
        let panes = json!({
            "troupe": {
                "datasource": "loki",
                "queries": [{
                    "refId": "A",
                    "datasource": { "type": "loki", "uid": "loki" },
                    "expr": format!("{{service=\"troupe\"}} | trace_id=\"{id}\""),
                }],
                "range": { "from": from.to_string(), "to": to.to_string() },
            }
        });
        format!(
            "{grafana}/explore?schemaVersion=1&orgId=1&panes={}",
            percent_encode(&panes.to_string())
        )
    });
    json!({ "trace": trace, "logs": logs })
}

/// `text` percent-encoded for a query value (everything but unreserved characters).
fn percent_encode(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len() * 3);
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// `GET /api/v1/tasks/{id}`: status, steps, result, usage, trace id and links.
pub async fn get_task(
    core: web::Data<Core>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_task_id(&path)?;
    let task = core
        .storage
        .task(id)
        .await?
        .ok_or(ApiError::TaskNotFound(id))?;
    let steps = core.storage.steps(id).await?;
    let usage = core.storage.usage(id).await?;
    Ok(HttpResponse::Ok().json(json!({
        "id": task.id,
        "prompt": task.prompt,
        "status": task.status,
        "options": task.options,
        "created_at": task.created_at,
        "started_at": task.started_at,
        "finished_at": task.finished_at,
        "result": task.result,
        "error": task.error,
        "trace_id": task.trace_id,
        "replay_of": task.replay_of,
        "steps": steps,
        "usage": usage,
        "links": links(&core.settings.dashboard, &task),
    })))
}

/// Body of `POST /api/v1/tasks/{id}/confirm`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Confirm {
    /// true: the paused call may go to the cloud fallback; false: the task fails.
    pub allow: bool,
}

/// `POST /api/v1/tasks/{id}/confirm`: answers a task paused for a cloud fallback (`task.paused`, reason
/// `cloud_fallback`). 409 when the task waits for nothing.
pub async fn confirm_task(
    core: web::Data<Core>,
    path: web::Path<String>,
    body: web::Json<Object<Confirm>>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_task_id(&path)?;
    let allow = body.into_inner().into_inner().allow;
    core.confirm(id, allow).await?;
    Ok(HttpResponse::Ok().json(json!({ "id": id, "allow": allow })))
}

/// `DELETE /api/v1/tasks/{id}`: removes a finished task and its records (409 while it is queued, running or
/// paused); its memories stay.
pub async fn delete_task(
    core: web::Data<Core>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_task_id(&path)?;
    core.delete(id).await?;
    Ok(HttpResponse::Ok().json(json!({ "id": id, "deleted": true })))
}

/// `POST /api/v1/tasks/{id}/cancel`.
pub async fn cancel_task(
    core: web::Data<Core>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_task_id(&path)?;
    core.cancel(id).await?;
    Ok(HttpResponse::Accepted().json(json!({ "id": id, "status": "cancelling" })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(
            percent_encode("a b{\"c\"}|=/"),
            "a%20b%7B%22c%22%7D%7C%3D%2F"
        );
        assert_eq!(percent_encode("plain-text_1.0~"), "plain-text_1.0~");
    }
}
