//! Middleware counting every HTTP request in `troupe_http_requests_total` and timing it in
//! `troupe_http_request_duration_seconds`, labelled by method, route *pattern* (never the raw path: ids
//! would make the label set unbounded) and status.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, Error};

use crate::service::Core;

/// Route label for requests that match no route.
const UNMATCHED: &str = "unmatched";

/// Records one request.
pub async fn record(
    request: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let metrics = request
        .app_data::<web::Data<Core>>()
        .map(|core| core.metrics.clone());
    let method = method_label(request.method());
    let route = request
        .match_pattern()
        .unwrap_or_else(|| UNMATCHED.to_owned());
    let started = Instant::now();
    let result = next.call(request).await;
    if let Some(metrics) = metrics {
        let status = match &result {
            Ok(response) => response.status(),
            Err(error) => error.as_response_error().status_code(),
        };
        metrics
            .http_requests
            .with_label_values(&[method, &route, status.as_str()])
            .inc();
        metrics
            .http_request_duration
            .with_label_values(&[method, &route])
            .observe(started.elapsed().as_secs_f64());
    }
    result
}

/// The method as a label: the standard ones by name, anything else as "other" (methods are client input).
fn method_label(method: &actix_web::http::Method) -> &'static str {
    use actix_web::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}
