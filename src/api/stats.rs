//! `/api/v1/stats`: the in-process history of Troupe's own metrics (the dashboard's charts), and
//! `/api/v1/collaboration`: who handed work to whom, counted from the event log.

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::error::{parse_task_id, ApiError};
use crate::service::Core;
use crate::storage::Scope;

/// `GET /api/v1/stats`: the sampling interval and the samples, oldest first (never empty: one is taken at
/// start-up).
pub async fn get_stats(core: web::Data<Core>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(json!({
        "interval_seconds": core.history.interval().as_secs(),
        "samples": core.history.samples(),
    })))
}

/// Query of `GET /api/v1/collaboration`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollaborationQuery {
    /// Only this task's hand-offs.
    pub task: Option<String>,
    /// Without `task`: the last this many hours (1..=720, default 24).
    pub hours: Option<u32>,
}

/// `GET /api/v1/collaboration[?task=ID|?hours=N]`.
pub async fn collaboration(
    core: web::Data<Core>,
    query: web::Query<CollaborationQuery>,
) -> Result<HttpResponse, ApiError> {
    let hours = query.hours.unwrap_or(24);
    if !(1..=720).contains(&hours) {
        return Err(ApiError::InvalidQuery(format!(
            "hours must be within 1..=720, got {hours}"
        )));
    }
    let scope = match query.task.as_deref() {
        Some(text) => {
            let id = parse_task_id(text)?;
            if core.storage.task(id).await?.is_none() {
                return Err(ApiError::TaskNotFound(id));
            }
            Scope::Task(id)
        }
        None => Scope::Since(chrono::Utc::now() - chrono::Duration::hours(i64::from(hours))),
    };
    let edges = core.storage.collaboration(scope).await?;
    Ok(HttpResponse::Ok().json(json!({ "edges": edges })))
}

/// Query of `GET /api/v1/learning`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LearningQuery {
    /// The last this many hours (1..=720, default 168).
    pub hours: Option<u32>,
    /// Hours per point of the curve (1..=720, default 24 or `hours` when smaller; one larger than the
    /// window makes a curve of one point).
    pub bucket_hours: Option<u32>,
}

/// `GET /api/v1/learning[?hours=N&bucket_hours=M]`: the Code/QA loop's learning curves (`service/learning.rs`).
pub async fn learning(
    core: web::Data<Core>,
    query: web::Query<LearningQuery>,
) -> Result<HttpResponse, ApiError> {
    let hours = query.hours.unwrap_or(168);
    if !(1..=720).contains(&hours) {
        return Err(ApiError::InvalidQuery(format!(
            "hours must be within 1..=720, got {hours}"
        )));
    }
    let bucket = query.bucket_hours.unwrap_or(24.min(hours));
    if !(1..=720).contains(&bucket) {
        return Err(ApiError::InvalidQuery(format!(
            "bucket_hours must be within 1..=720, got {bucket}"
        )));
    }
    Ok(HttpResponse::Ok().json(core.learning(i64::from(hours), i64::from(bucket)).await?))
}
