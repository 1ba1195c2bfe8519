//! `/healthz` (the process answers), `/readyz` (database and model usable) and `/metrics`.

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::error::ApiError;
use crate::app::Core;

/// `GET /healthz`: the process is up.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

/// `GET /readyz`: 200 when the database answers and the model is loaded, else 503 naming what is not.
pub async fn readyz(core: web::Data<Core>) -> HttpResponse {
    let database = match core.storage.ping().await {
        Ok(()) => "ok".to_owned(),
        Err(error) => error.to_string(),
    };
    let model = match core.llm.check_ready() {
        Ok(()) => "ok".to_owned(),
        Err(error) => error.to_string(),
    };
    let ready = database == "ok" && model == "ok";
    let body = json!({
        "status": if ready { "ready" } else { "unavailable" },
        "checks": { "database": database, "model": model },
    });
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(core: web::Data<Core>) -> Result<HttpResponse, ApiError> {
    let text = core
        .metrics
        .render()
        .map_err(|e| ApiError::Internal(format!("render metrics: {e}")))?;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(text))
}
