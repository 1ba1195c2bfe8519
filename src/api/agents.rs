//! `/api/v1/agents`: the agents and their health, and the model's worker process.

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::error::ApiError;
use crate::messages::GetAgents;
use crate::service::Core;

/// `GET /api/v1/agents`.
pub async fn list_agents(core: web::Data<Core>) -> Result<HttpResponse, ApiError> {
    let agents = core
        .director
        .send(GetAgents)
        .await
        .map_err(|_| ApiError::Unavailable("the director is shutting down".into()))?;
    let model = json!({
        "provider": core.llm.provider_name(),
        "model": core.llm.model_name(),
        "worker": core.llm.worker(),
    });
    Ok(HttpResponse::Ok().json(json!({ "agents": agents, "model": model })))
}
