//! `POST /api/v1/tasks/{id}/fork`: a new task that re-runs a finished one from one of its steps, the model
//! calls before that step answered from the source's recording and the rest live (`Core::fork`).

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::error::{parse_task_id, ApiError};
use crate::domain::json_types::Object;
use crate::domain::TaskStatus;
use crate::service::{Core, ForkRequest};

/// `POST /api/v1/tasks/{id}/fork` with `{"from_step", "override"?, "prompt"?, "on_divergence"?}`: 202 with
/// the new task (as `POST /api/v1/tasks`), 404 for an unknown source, 409 for one that has not finished,
/// 400 for a step or override the source does not have.
pub async fn fork_task(
    core: web::Data<Core>,
    path: web::Path<String>,
    body: web::Json<Object<ForkRequest>>,
) -> Result<HttpResponse, ApiError> {
    let source = parse_task_id(&path)?;
    let request = body.into_inner().into_inner();
    let from_step = request.from_step;
    let id = core.fork(source, request).await?;
    Ok(HttpResponse::Accepted()
        .insert_header(("Location", format!("/api/v1/tasks/{id}")))
        .json(json!({
            "id": id,
            "status": TaskStatus::Queued,
            "fork_of": { "task": source, "from_step": from_step },
        })))
}
