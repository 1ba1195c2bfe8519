//! `/api/v1/experiments`: create an experiment (prompts under variants, repeated) and read experiments with
//! their reports (`service/experiments.rs`).

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::error::ApiError;
use crate::domain::experiment::{ExperimentId, ExperimentSpec};
use crate::domain::json_types::Object;
use crate::service::Core;

/// `POST /api/v1/experiments`: 201 with the experiment's id, its runs' number and where to read it.
pub async fn create_experiment(
    core: web::Data<Core>,
    body: web::Json<Object<ExperimentSpec>>,
) -> Result<HttpResponse, ApiError> {
    let spec = body.into_inner().into_inner();
    let experiment = core.into_inner().create_experiment(spec).await?;
    Ok(HttpResponse::Created()
        .insert_header(("Location", format!("/api/v1/experiments/{}", experiment.id)))
        .json(json!({
            "id": experiment.id,
            "status": experiment.status,
            "runs": experiment.runs.len(),
        })))
}

/// `GET /api/v1/experiments`: the latest 50, newest first.
pub async fn list_experiments(core: web::Data<Core>) -> Result<HttpResponse, ApiError> {
    let experiments = core.storage.experiments(50).await?;
    let listed: Vec<serde_json::Value> = experiments
        .iter()
        .map(|experiment| {
            json!({
                "id": experiment.id,
                "name": experiment.spec.name,
                "status": experiment.status,
                "created_at": experiment.created_at,
                "finished_at": experiment.finished_at,
                "runs": experiment.runs.len(),
                "variants": experiment.spec.variants.iter().map(|variant| variant.name.clone()).collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "experiments": listed })))
}

/// `GET /api/v1/experiments/{id}`: the experiment, its runs and its report so far.
pub async fn get_experiment(
    core: web::Data<Core>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let text = path.into_inner();
    let id: ExperimentId = text
        .parse()
        .map_err(|_| ApiError::InvalidId(text.clone()))?;
    Ok(HttpResponse::Ok().json(core.experiment_report(id).await?))
}
