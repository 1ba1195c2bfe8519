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
    let primary = core.llm.primary();
    let model = json!({
        "provider": primary.provider_name(),
        "model": primary.model_name(),
        "worker": primary.worker(),
    });
    Ok(HttpResponse::Ok()
        .json(json!({ "agents": agents, "model": model, "models": core.llm.describe() })))
}
