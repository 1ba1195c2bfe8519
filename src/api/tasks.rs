//! `/api/v1/tasks`: submit, list, show, cancel.

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::error::{parse_task_id, ApiError};
use crate::domain::{TaskOptions, TaskStatus};
use crate::service::Core;

/// Body of `POST /api/v1/tasks`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTask {
    /// What to do.
    pub prompt: String,
    /// Per-task options.
    #[serde(default)]
    pub options: Option<TaskOptions>,
}

/// `POST /api/v1/tasks`: stores the task (before answering) and queues it.
pub async fn create_task(
    core: web::Data<Core>,
    body: web::Json<CreateTask>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
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
}

/// `GET /api/v1/tasks`: newest first.
pub async fn list_tasks(
    core: web::Data<Core>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
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
    let tasks = core.storage.list_tasks(limit, status).await?;
    let tasks: Vec<_> = tasks
        .into_iter()
        .map(|task| {
            json!({
                "id": task.id,
                "prompt": task.prompt,
                "status": task.status,
                "created_at": task.created_at,
                "finished_at": task.finished_at,
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "tasks": tasks })))
}

/// `GET /api/v1/tasks/{id}`: status, steps, result, usage, trace id.
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
    body: web::Json<Confirm>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_task_id(&path)?;
    let allow = body.into_inner().allow;
    core.confirm(id, allow).await?;
    Ok(HttpResponse::Ok().json(json!({ "id": id, "allow": allow })))
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
