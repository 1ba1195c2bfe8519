//! `/api/v1/breakpoints`: set (`POST`), list (`GET`, `?task_id=` for one task's), show and remove the debug
//! mode's breakpoints. Everything goes through the core's registry (`Core::breakpoints`), which validates,
//! stores through the writer and keeps them in force; pausing is not this module's.

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::error::{parse_breakpoint_id, parse_task_id, ApiError};
use crate::domain::json_types::Object;
use crate::domain::{AgentKind, BreakOn, BreakpointError, BreakpointSpec, Condition, TaskId};
use crate::service::Core;

/// Body of `POST /api/v1/breakpoints`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBreakpoint {
    /// `decision`, `tool`, `step` or `llm`.
    pub on: BreakOn,
    /// Only this agent's points.
    #[serde(default)]
    pub agent: Option<AgentKind>,
    /// Only decisions of this kind (`assign_agent`, `verdict`).
    #[serde(default)]
    pub kind: Option<String>,
    /// Only calls of this tool.
    #[serde(default)]
    pub tool: Option<String>,
    /// Only this step.
    #[serde(
        default,
        deserialize_with = "crate::domain::json_types::optional_whole"
    )]
    pub step: Option<i32>,
    /// Only model calls of this purpose (or below it).
    #[serde(default)]
    pub purpose: Option<String>,
    /// A condition, e.g. `confidence < 0.6`.
    #[serde(default)]
    pub when: Option<String>,
    /// Only this task (unfinished).
    #[serde(default)]
    pub task_id: Option<TaskId>,
}

impl CreateBreakpoint {
    /// The spec it asks for; a condition that does not parse says where.
    pub fn into_spec(self) -> Result<BreakpointSpec, ApiError> {
        let when = self
            .when
            .as_deref()
            .map(Condition::parse)
            .transpose()
            .map_err(|error| {
                ApiError::InvalidBreakpoint(BreakpointError::from(error).to_string())
            })?;
        Ok(BreakpointSpec {
            on: self.on,
            agent: self.agent,
            kind: self.kind,
            tool: self.tool,
            step: self.step,
            purpose: self.purpose,
            when,
            task_id: self.task_id,
        })
    }
}

/// `POST /api/v1/breakpoints`: validates and stores the breakpoint; 201 with it once it is in force.
pub async fn create_breakpoint(
    core: web::Data<Core>,
    body: web::Json<Object<CreateBreakpoint>>,
) -> Result<HttpResponse, ApiError> {
    let spec = body.into_inner().into_inner().into_spec()?;
    let breakpoint = core.breakpoints.add(spec).await?;
    Ok(HttpResponse::Created()
        .insert_header(("Location", format!("/api/v1/breakpoints/{}", breakpoint.id)))
        .json(breakpoint))
}

/// Query of `GET /api/v1/breakpoints`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only the breakpoints attached to this task.
    pub task_id: Option<String>,
}

/// `GET /api/v1/breakpoints`: every breakpoint in force, in creation order, or (`?task_id=`) those attached
/// to one task.
pub async fn list_breakpoints(
    core: web::Data<Core>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let breakpoints = match query.into_inner().task_id {
        None => core.breakpoints.list(),
        Some(text) => {
            let task_id = parse_task_id(&text).map_err(|_| {
                ApiError::InvalidQuery(format!(
                    "task_id must be a task id (a UUID), got '{}'",
                    text.chars().take(64).collect::<String>()
                ))
            })?;
            core.storage
                .task(task_id)
                .await?
                .ok_or(ApiError::TaskNotFound(task_id))?;
            core.breakpoints.attached_to(task_id)
        }
    };
    Ok(HttpResponse::Ok().json(json!({ "breakpoints": breakpoints })))
}

/// `GET /api/v1/breakpoints/{id}`.
pub async fn get_breakpoint(
    core: web::Data<Core>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_breakpoint_id(&path)?;
    let breakpoint = core
        .breakpoints
        .get(id)
        .ok_or(ApiError::BreakpointNotFound(id))?;
    Ok(HttpResponse::Ok().json(breakpoint))
}

/// `DELETE /api/v1/breakpoints/{id}`: 204 once it is removed (404 when there is no such breakpoint).
pub async fn delete_breakpoint(
    core: web::Data<Core>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_breakpoint_id(&path)?;
    core.breakpoints.remove(id).await?;
    Ok(HttpResponse::NoContent().finish())
}
