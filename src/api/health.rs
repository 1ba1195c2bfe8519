//! `/healthz` (the process answers), `/readyz` (database, model, short-term store, sandbox and task queue
//! usable) and
//! `/metrics`.

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::error::ApiError;
use crate::sandbox::SandboxError;
use crate::service::Core;

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
    let problems: Vec<String> = core
        .llm
        .distinct()
        .into_iter()
        .filter_map(|provider| provider.check_ready().err())
        .map(|error| error.to_string())
        .collect();
    let model = if problems.is_empty() {
        "ok".to_owned()
    } else {
        problems.join("; ")
    };
    let short_term = core.memory.short_term();
    let short_term_check = match short_term.ping().await {
        Ok(()) => "ok".to_owned(),
        Err(error) => format!(
            "{error} (short-term memory is served in-process until {} answers)",
            short_term.backend()
        ),
    };
    // A sandbox turned off by configuration is the user's choice, not a fault.
    let sandbox = match core.tools.sandbox().check_ready() {
        Ok(()) => "ok".to_owned(),
        Err(SandboxError::Disabled) => "disabled".to_owned(),
        Err(error) => error.to_string(),
    };
    // The Redis queue (scale-out): without it an api node cannot take tasks and a worker cannot read any.
    let queue = match &core.queue {
        None => "local".to_owned(),
        Some(queue) => match queue.ping().await {
            Ok(()) => {
                core.metrics.queue_up.set(1);
                "ok".to_owned()
            }
            Err(error) => {
                core.metrics.queue_up.set(0);
                format!("{error} (submissions get 503 and workers pause reading until it answers)")
            }
        },
    };
    let ready = database == "ok"
        && model == "ok"
        && short_term_check == "ok"
        && (sandbox == "ok" || sandbox == "disabled")
        && (queue == "ok" || queue == "local");
    let body = json!({
        "status": if ready { "ready" } else { "unavailable" },
        "checks": {
            "database": database,
            "model": model,
            "short_term_memory": short_term_check,
            "sandbox": sandbox,
            "queue": queue,
        },
        "short_term_backend": short_term.backend(),
        "role": core.settings.server.role.as_str(),
    });
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// `GET /metrics`: Prometheus text format. Gauges read from elsewhere (the database pool, the model worker)
/// are refreshed first.
pub async fn metrics(core: web::Data<Core>) -> Result<HttpResponse, ApiError> {
    let metrics = &core.metrics;
    let pool = core.storage.pool_stats();
    metrics
        .db_pool_connections
        .with_label_values(&["in_use"])
        .set(i64::from(pool.in_use));
    metrics
        .db_pool_connections
        .with_label_values(&["idle"])
        .set(i64::from(pool.idle));
    metrics.db_pool_max_connections.set(i64::from(pool.max));
    // Up when every embedded model's worker is ready (a remote provider has none).
    let workers: Vec<_> = core
        .llm
        .distinct()
        .into_iter()
        .filter_map(|provider| provider.worker())
        .collect();
    let worker_up = !workers.is_empty() && workers.iter().all(|worker| worker.state == "ready");
    metrics.model_worker_up.set(i64::from(worker_up));
    let short_term = core.memory.short_term();
    let store_up = short_term.ping().await.is_ok();
    metrics
        .short_term_store_up
        .with_label_values(&[short_term.backend()])
        .set(i64::from(store_up));
    let text = core
        .metrics
        .render()
        .map_err(|e| ApiError::Internal(format!("render metrics: {e}")))?;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(text))
}
