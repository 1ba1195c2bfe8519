//! The HTTP interface: the single route table. One file per resource under `api/`; errors map to HTTP in
//! `api/error.rs` only.
//!
//! Handlers validate input, call the [`Core`](crate::service::Core) and shape JSON; they never reach actors'
//! internals or the database except through the core and its storage reads.

pub mod access;
pub mod agents;
pub mod body_deadline;
pub mod breakpoints;
pub mod chat;
pub mod compare;
pub mod dashboard;
pub mod debug;
pub mod error;
pub mod events;
pub mod experiments;
pub mod fork;
pub mod health;
pub mod http_metrics;
pub mod llm_calls;
pub mod memory;
pub mod stats;
pub mod tasks;
pub mod tool_calls;

use std::net::TcpListener;
use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::{web, App, HttpResponse, HttpServer, Resource};
use tracing_actix_web::TracingLogger;

use crate::service::Core;
use error::ApiError;

/// The OpenAPI document of this API.
pub const OPENAPI: &str = include_str!("api/openapi.json");

/// Builds the HTTP server on `listener` around `core`.
pub fn server(listener: TcpListener, core: Arc<Core>) -> std::io::Result<Server> {
    let workers = match core.settings.server.workers {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    };
    let max_body = core.settings.server.max_body_bytes;
    let access = web::Data::new(access::Access::new(&core.settings.server));
    let body_timeout = web::Data::new(body_deadline::BodyTimeout(std::time::Duration::from_secs(
        core.settings.server.body_timeout_seconds,
    )));
    let streams = web::Data::new(events::StreamSlots::new(
        core.settings.server.max_websockets,
        std::time::Duration::from_secs(core.settings.server.websocket_send_timeout_seconds),
    ));
    let document = web::Data::new(OpenApi(document_for(&core)));
    let core = web::Data::from(core);
    let server = HttpServer::new(move || {
        App::new()
            .wrap(actix_web::middleware::from_fn(body_deadline::limit))
            // Innermost but for the body's deadline, so that refused requests are still counted and traced.
            .wrap(actix_web::middleware::from_fn(access::check))
            .wrap(actix_web::middleware::from_fn(http_metrics::record))
            .wrap(TracingLogger::default())
            .app_data(core.clone())
            .app_data(access.clone())
            .app_data(body_timeout.clone())
            .app_data(streams.clone())
            .app_data(document.clone())
            .app_data(
                web::FormConfig::default()
                    .limit(4096)
                    .error_handler(|error, _request| {
                        ApiError::InvalidBody(error.to_string()).into()
                    }),
            )
            .app_data(
                web::JsonConfig::default()
                    .limit(max_body)
                    .error_handler(|error, _request| ApiError::from(error).into()),
            )
            .app_data(
                web::QueryConfig::default().error_handler(|error, _request| {
                    ApiError::InvalidQuery(error.to_string()).into()
                }),
            )
            .service(
                web::scope("/api/v1")
                    .service(
                        resource("/tasks")
                            .route(web::post().to(tasks::create_task))
                            .route(web::get().to(tasks::list_tasks)),
                    )
                    .service(
                        resource("/tasks/{id}")
                            .route(web::get().to(tasks::get_task))
                            .route(web::delete().to(tasks::delete_task)),
                    )
                    .service(
                        resource("/tasks/{id}/cancel").route(web::post().to(tasks::cancel_task)),
                    )
                    .service(
                        resource("/tasks/{id}/confirm").route(web::post().to(tasks::confirm_task)),
                    )
                    .service(resource("/tasks/{id}/fork").route(web::post().to(fork::fork_task)))
                    .service(
                        resource("/tasks/{a}/compare/{b}")
                            .route(web::get().to(compare::compare_tasks)),
                    )
                    .service(
                        resource("/tasks/{id}/events").route(web::get().to(events::task_events)),
                    )
                    .service(resource("/tasks/{id}/state").route(web::get().to(debug::task_state)))
                    .service(
                        resource("/tasks/{id}/resume").route(web::post().to(debug::resume_task)),
                    )
                    .service(
                        resource("/tasks/{id}/memory").route(web::get().to(memory::task_memory)),
                    )
                    .service(
                        resource("/tasks/{id}/llm-calls")
                            .route(web::get().to(llm_calls::list_llm_calls)),
                    )
                    .service(
                        resource("/tasks/{id}/llm-calls/{purpose}/tokens")
                            .route(web::get().to(llm_calls::call_tokens)),
                    )
                    .service(
                        resource("/tasks/{id}/tool-calls/{call_id}/replay")
                            .route(web::post().to(tool_calls::replay_tool_call)),
                    )
                    .service(
                        resource("/breakpoints")
                            .route(web::post().to(breakpoints::create_breakpoint))
                            .route(web::get().to(breakpoints::list_breakpoints)),
                    )
                    .service(
                        resource("/breakpoints/{id}")
                            .route(web::get().to(breakpoints::get_breakpoint))
                            .route(web::delete().to(breakpoints::delete_breakpoint)),
                    )
                    .service(resource("/events").route(web::get().to(events::all_events)))
                    .service(
                        resource("/experiments")
                            .route(web::post().to(experiments::create_experiment))
                            .route(web::get().to(experiments::list_experiments)),
                    )
                    .service(
                        resource("/experiments/{id}")
                            .route(web::get().to(experiments::get_experiment)),
                    )
                    .service(resource("/stats").route(web::get().to(stats::get_stats)))
                    .service(resource("/collaboration").route(web::get().to(stats::collaboration)))
                    .service(resource("/learning").route(web::get().to(stats::learning)))
                    .service(resource("/memory/search").route(web::get().to(memory::search)))
                    .service(resource("/agents").route(web::get().to(agents::list_agents)))
                    .service(resource("/openapi.json").route(web::get().to(openapi))),
            )
            .service(
                web::scope("/v1")
                    .service(
                        resource("/chat/completions").route(web::post().to(chat::chat_completions)),
                    )
                    .service(resource("/models").route(web::get().to(chat::list_models))),
            )
            .service(
                resource("/login")
                    .route(web::get().to(access::login_page))
                    .route(web::post().to(access::login)),
            )
            .service(resource("/logout").route(web::post().to(access::logout)))
            .configure(dashboard::routes)
            .service(resource("/metrics").route(web::get().to(health::metrics)))
            .service(resource("/healthz").route(web::get().to(health::healthz)))
            .service(resource("/readyz").route(web::get().to(health::readyz)))
            .default_service(web::to(|| async { ApiError::NotFound }))
    })
    .workers(workers)
    .listen(listener)?
    .run();
    Ok(server)
}

/// A resource whose unmatched methods get a JSON 405.
fn resource(path: &str) -> Resource {
    web::resource(path).default_service(web::to(method_not_allowed))
}

/// 405 with the `Allow` header (RFC 9110) listing the methods the OpenAPI document gives the route: the
/// document is the one list of them (a test checks every route answers as it says).
async fn method_not_allowed(request: actix_web::HttpRequest) -> HttpResponse {
    use actix_web::ResponseError;
    let mut response = ApiError::MethodNotAllowed.error_response();
    let allowed = request
        .match_pattern()
        .and_then(|pattern| allowed_methods().get(pattern.as_str()).cloned());
    if let Some(allow) = allowed {
        if let Ok(value) = actix_web::http::header::HeaderValue::from_str(&allow) {
            response
                .headers_mut()
                .insert(actix_web::http::header::ALLOW, value);
        }
    }
    response
}

/// Each documented path's methods, as an `Allow` value ("GET, POST"), read from the OpenAPI document once.
pub fn allowed_methods() -> &'static std::collections::HashMap<String, String> {
    static ALLOWED: std::sync::OnceLock<std::collections::HashMap<String, String>> =
        std::sync::OnceLock::new();
    ALLOWED.get_or_init(|| {
        let document: serde_json::Value = serde_json::from_str(OPENAPI).unwrap_or_default();
        let mut allowed = std::collections::HashMap::new();
        if let Some(paths) = document["paths"].as_object() {
            for (path, item) in paths {
                let methods: Vec<String> = ["get", "post", "put", "patch", "delete"]
                    .into_iter()
                    .filter(|method| item.get(*method).is_some())
                    .map(str::to_uppercase)
                    .collect();
                allowed.insert(path.clone(), methods.join(", "));
            }
        }
        allowed
    })
}

/// The OpenAPI document as this server serves it.
struct OpenApi(String);

/// [`OPENAPI`] with what depends on the settings filled in, so that the document says what the server
/// checks: the most steps a task may ask for (the configured `director.max_steps`) and the named models it
/// may pick (`[llm.models.<name>]`).
fn document_for(core: &Core) -> String {
    let Ok(mut document) = serde_json::from_str::<serde_json::Value>(OPENAPI) else {
        return OPENAPI.to_owned();
    };
    let max_steps = core.settings.director.max_steps;
    if let Some(bound) =
        document.pointer_mut("/components/schemas/TaskOptions/properties/max_steps")
    {
        bound["maximum"] = serde_json::json!(max_steps);
    }
    if let Some(model) = document.pointer_mut("/components/schemas/TaskOptions/properties/model") {
        let mut names: Vec<serde_json::Value> = core
            .llm
            .names()
            .into_iter()
            .map(serde_json::Value::from)
            .collect();
        names.push(serde_json::Value::Null);
        model["enum"] = serde_json::Value::Array(names);
    }
    document.to_string()
}

async fn openapi(document: web::Data<OpenApi>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(document.0.clone())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_allowed_methods_come_from_the_document() {
        let allowed = super::allowed_methods();
        assert_eq!(
            allowed.get("/api/v1/tasks").map(String::as_str),
            Some("GET, POST")
        );
        assert_eq!(
            allowed.get("/api/v1/tasks/{id}").map(String::as_str),
            Some("GET, DELETE")
        );
        assert!(allowed.len() > 20, "{allowed:?}");
    }

    #[test]
    fn the_documented_event_and_memory_kinds_are_the_ones_the_server_knows() {
        let document: serde_json::Value = serde_json::from_str(super::OPENAPI).unwrap();
        let names = |list: &serde_json::Value| -> Vec<String> {
            list.as_array()
                .unwrap()
                .iter()
                .filter_map(|name| name.as_str().map(str::to_owned))
                .collect()
        };
        let exclude = document["paths"]["/api/v1/tasks/{id}/events"]["get"]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|parameter| parameter["name"] == "exclude")
            .unwrap();
        let known: Vec<String> = crate::domain::EventKind::ALL
            .iter()
            .map(|kind| kind.as_str().to_owned())
            .collect();
        assert_eq!(names(&exclude["schema"]["items"]["enum"]), known);
        let known: Vec<String> = crate::domain::MemoryKind::ALL
            .iter()
            .map(|kind| kind.as_str().to_owned())
            .collect();
        assert_eq!(
            names(&document["components"]["schemas"]["MemoryKind"]["enum"]),
            known
        );
    }
}
