//! `GET /api/v1/tasks/{a}/compare/{b}`: what differs between two runs (decisions, model outputs, steps,
//! result, status) and what only one has, structured for a side-by-side view (`Core::compare`).

use actix_web::{web, HttpResponse};

use super::error::{parse_task_id, ApiError};
use crate::service::Core;

/// `GET /api/v1/tasks/{a}/compare/{b}`: 200 with the comparison, 404 for an unknown task, 400 for an id
/// that is not one.
pub async fn compare_tasks(
    core: web::Data<Core>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (a, b) = path.into_inner();
    let a = parse_task_id(&a)?;
    let b = parse_task_id(&b)?;
    let compared = core.compare(a, b).await?;
    Ok(HttpResponse::Ok().json(compared))
}
