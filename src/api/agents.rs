//! `/api/v1/agents`: the agents and their health.

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::error::ApiError;
use crate::app::Core;
use crate::messages::GetAgents;

/// `GET /api/v1/agents`.
pub async fn list_agents(core: web::Data<Core>) -> Result<HttpResponse, ApiError> {
    let agents = core
        .director
        .send(GetAgents)
        .await
        .map_err(|_| ApiError::Unavailable("the director is shutting down".into()))?;
    Ok(HttpResponse::Ok().json(json!({ "agents": agents })))
}
