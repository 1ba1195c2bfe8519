//! `/api/v1/tasks/{id}/events`: the task's event log as JSON, or live over a WebSocket when the request
//! asks for an upgrade (one event per text frame, resumable with `?after=SEQ`, closed normally after the
//! terminal event).

use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{CloseCode, CloseReason, Message};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;

use super::error::{parse_task_id, ApiError};
use crate::events::Subscription;
use crate::service::Core;

/// Query of the events endpoint.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Only events with a greater `seq` (default 0: all).
    pub after: Option<i64>,
}

/// `GET /api/v1/tasks/{id}/events[?after=SEQ]`.
pub async fn task_events(
    core: web::Data<Core>,
    request: HttpRequest,
    body: web::Payload,
    path: web::Path<String>,
    query: web::Query<EventsQuery>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_task_id(&path)?;
    let after = query.after.unwrap_or(0);
    if after < 0 {
        return Err(ApiError::InvalidQuery(format!(
            "after must not be negative, got {after}"
        )));
    }
    if core.storage.task(id).await?.is_none() {
        return Err(ApiError::TaskNotFound(id));
    }
    if !is_websocket_upgrade(&request) {
        let events = core.storage.events_after(id, after).await?;
        return Ok(HttpResponse::Ok().json(json!({ "events": events })));
    }
    let subscription = core.events.subscribe(id, after).await?;
    let (response, session, messages) = actix_ws::handle(&request, body)
        .map_err(|e| ApiError::InvalidBody(format!("websocket handshake: {e}")))?;
    let open = OpenStream::new(core.metrics.websocket_connections.clone());
    actix_web::rt::spawn(stream_events(subscription, session, messages, open));
    Ok(response)
}

fn is_websocket_upgrade(request: &HttpRequest) -> bool {
    request
        .headers()
        .get(actix_web::http::header::UPGRADE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.eq_ignore_ascii_case("websocket"))
}

/// Forwards events to the socket until the terminal event, the client leaving, or an error.
/// Counts an open WebSocket stream in `troupe_websocket_connections` for as long as it lives.
struct OpenStream(prometheus::IntGauge);

impl OpenStream {
    fn new(gauge: prometheus::IntGauge) -> Self {
        gauge.inc();
        OpenStream(gauge)
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.dec();
    }
}

async fn stream_events(
    mut subscription: Subscription,
    mut session: actix_ws::Session,
    mut messages: actix_ws::MessageStream,
    _open: OpenStream,
) {
    let close = loop {
        tokio::select! {
            next = subscription.next() => match next {
                Ok(Some(event)) => {
                    let Ok(text) = serde_json::to_string(&event) else { continue };
                    if session.text(text).await.is_err() {
                        return; // the client went away
                    }
                }
                Ok(None) => break CloseReason { code: CloseCode::Normal, description: None },
                Err(error) => {
                    tracing::error!(%error, "read events for a websocket");
                    break CloseReason {
                        code: CloseCode::Error,
                        description: Some("internal error reading events".into()),
                    };
                }
            },
            message = messages.next() => match message {
                Some(Ok(Message::Ping(bytes))) => {
                    if session.pong(&bytes).await.is_err() {
                        return;
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
        }
    };
    let _ = session.close(Some(close)).await;
}
