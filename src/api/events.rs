//! `/api/v1/tasks/{id}/events`: the task's event log as JSON (paged with `limit`, kinds left out with
//! `exclude`), or live over a WebSocket when the request asks for an upgrade (one event per text frame,
//! resumable with `?after=SEQ`, closed normally after the terminal event). `/api/v1/events`: every task's
//! live events except tokens, over a WebSocket only (not resumable; closed with 1013 "lagged" when the
//! client falls behind).
//!
//! Both are bounded per client: a frame that cannot be handed to the connection within
//! `server.websocket_send_timeout_seconds` (a client that stopped reading: its socket's buffers and the
//! session's 32 frames are full) drops the stream, frees its place and is counted in
//! `troupe_websocket_slow_clients_total`; what such a client costs meanwhile is those buffers, never a
//! growing queue.

use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{CloseCode, CloseReason, Message};
use futures_util::StreamExt;
use serde::Deserialize;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;

use super::error::{parse_task_id, ApiError};
use crate::domain::{Event, EventKind};
use crate::events::{Shared, Subscription};
use crate::service::Core;
use crate::telemetry::metrics::Metrics;

/// Most events one page of the JSON history holds.
const MAX_EVENTS_LIMIT: u64 = 10_000;

/// Query of the events endpoint.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Only events with a greater `seq` (default 0: all).
    pub after: Option<i64>,
    /// At most this many events (1..=10000); absent: 10000 (the rest is on the next page).
    pub limit: Option<u64>,
    /// Comma-separated event kinds left out (JSON history only).
    pub exclude: Option<String>,
}

/// The JSON history's body: a page of events, and `next`, the `after` of the next page (null: no more).
#[derive(serde::Serialize)]
struct EventPage<'a> {
    events: &'a [Event],
    next: Option<i64>,
}

/// The kinds named in a comma-separated `exclude` (empty entries ignored); an unknown kind is a 400.
fn excluded_kinds(text: Option<&str>) -> Result<Vec<EventKind>, ApiError> {
    let mut kinds = Vec::new();
    for name in text.unwrap_or("").split(',').map(str::trim) {
        if name.is_empty() {
            continue;
        }
        let kind = name.parse::<EventKind>().map_err(|e| {
            ApiError::InvalidQuery(format!(
                "exclude: {}",
                e.to_string().chars().take(100).collect::<String>()
            ))
        })?;
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    Ok(kinds)
}

/// `GET /api/v1/tasks/{id}/events[?after=SEQ][&limit=N][&exclude=KIND,...]`.
pub async fn task_events(
    core: web::Data<Core>,
    slots: web::Data<StreamSlots>,
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
    if let Some(limit) = query.limit {
        if !(1..=MAX_EVENTS_LIMIT).contains(&limit) {
            return Err(ApiError::InvalidQuery(format!(
                "limit must be within 1..={MAX_EVENTS_LIMIT}, got {limit}"
            )));
        }
    }
    let exclude = excluded_kinds(query.exclude.as_deref())?;
    if core.storage.task(id).await?.is_none() {
        return Err(ApiError::TaskNotFound(id));
    }
    if !is_websocket_upgrade(&request) {
        // Never the whole log at once: without a limit, a page is the largest one allowed, and `next`
        // says where the rest starts.
        let limit = query.limit.unwrap_or(MAX_EVENTS_LIMIT);
        let (events, next) = core
            .storage
            .events_page(id, after, Some(limit), &exclude)
            .await?;
        // Serialised straight from the events (no intermediate JSON tree: a page can hold 10,000).
        return Ok(HttpResponse::Ok().json(EventPage {
            events: &events,
            next,
        }));
    }
    let open = OpenStream::admit(&slots, &core.metrics)?;
    let subscription = core.events.subscribe(id, after).await?;
    let (response, session, messages) = actix_ws::handle(&request, body)
        .map_err(|e| ApiError::InvalidBody(format!("websocket handshake: {e}")))?;
    actix_web::rt::spawn(stream_events(subscription, session, messages, open));
    Ok(response)
}

/// `GET /api/v1/events`: a WebSocket of every task's events as they commit, except `llm.token`; a plain
/// GET is a 400 saying an upgrade is required.
pub async fn all_events(
    core: web::Data<Core>,
    slots: web::Data<StreamSlots>,
    request: HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    if !is_websocket_upgrade(&request) {
        return Err(ApiError::UpgradeRequired);
    }
    let open = OpenStream::admit(&slots, &core.metrics)?;
    let live = core.events.subscribe_all();
    let (response, session, messages) = actix_ws::handle(&request, body)
        .map_err(|e| ApiError::InvalidBody(format!("websocket handshake: {e}")))?;
    actix_web::rt::spawn(stream_all(live, session, messages, open));
    Ok(response)
}

fn is_websocket_upgrade(request: &HttpRequest) -> bool {
    request
        .headers()
        .get(actix_web::http::header::UPGRADE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.eq_ignore_ascii_case("websocket"))
}

/// The places for open WebSocket streams (`server.max_websockets`), shared by every HTTP worker.
#[derive(Clone)]
pub struct StreamSlots {
    slots: Arc<tokio::sync::Semaphore>,
    limit: usize,
    send_timeout: Duration,
}

impl StreamSlots {
    /// Room for `limit` streams at once, each dropped when a frame waits `send_timeout` for its client.
    pub fn new(limit: usize, send_timeout: Duration) -> Self {
        StreamSlots {
            slots: Arc::new(tokio::sync::Semaphore::new(limit)),
            limit,
            send_timeout,
        }
    }
}

/// An open WebSocket stream: holds one of the [`StreamSlots`] and counts itself in
/// `troupe_websocket_connections` for as long as it lives.
struct OpenStream {
    gauge: prometheus::IntGauge,
    slow_clients: prometheus::IntCounter,
    send_timeout: Duration,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl OpenStream {
    /// Takes a place before the handshake; none left is a 429 (the upgrade is refused, nothing is opened).
    fn admit(slots: &StreamSlots, metrics: &Metrics) -> Result<Self, ApiError> {
        let slot = Arc::clone(&slots.slots).try_acquire_owned().map_err(|_| {
            ApiError::TooManyConnections(format!(
                "{} WebSocket streams are open, the most server.max_websockets allows; retry later",
                slots.limit
            ))
        })?;
        let gauge = metrics.websocket_connections.clone();
        gauge.inc();
        Ok(OpenStream {
            gauge,
            slow_clients: metrics.websocket_slow_clients.clone(),
            send_timeout: slots.send_timeout,
            _slot: slot,
        })
    }

    /// Hands `text` to the client: false when it went away or did not take it within the send timeout
    /// (then counted and logged; the caller ends the stream, which drops the connection).
    async fn send(&self, session: &mut actix_ws::Session, text: bytestring::ByteString) -> bool {
        match tokio::time::timeout(self.send_timeout, session.text(text)).await {
            Ok(sent) => sent.is_ok(),
            Err(_) => {
                self.slow_clients.inc();
                tracing::info!(timeout = ?self.send_timeout, "a WebSocket client stopped reading; its stream is dropped");
                false
            }
        }
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

async fn stream_events(
    mut subscription: Subscription,
    mut session: actix_ws::Session,
    mut messages: actix_ws::MessageStream,
    open: OpenStream,
) {
    let close = loop {
        tokio::select! {
            next = subscription.next_shared() => match next {
                Ok(Some(event)) => {
                    // Serialized once by the hub, shared by every subscriber of the task.
                    if !open.send(&mut session, event.json()).await {
                        return; // the client went away, or stopped reading
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
            message = messages.next() => if !keep_open(&mut session, message).await {
                return;
            },
        }
    };
    let _ = session.close(Some(close)).await;
}

/// Whether a stream goes on after the client's frame `message`: a ping is answered, a close or an error (or
/// the client gone) ends it, anything else is ignored.
async fn keep_open(
    session: &mut actix_ws::Session,
    message: Option<Result<Message, actix_ws::ProtocolError>>,
) -> bool {
    match message {
        Some(Ok(Message::Ping(bytes))) => session.pong(&bytes).await.is_ok(),
        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => false,
        Some(Ok(_)) => true,
    }
}

/// Forwards every task's live events to the socket until the client leaves; a client that falls behind is
/// closed with 1013 (try again) "lagged": it re-reads what it shows and reconnects.
async fn stream_all(
    mut live: broadcast::Receiver<Arc<Shared>>,
    mut session: actix_ws::Session,
    mut messages: actix_ws::MessageStream,
    open: OpenStream,
) {
    let close = loop {
        tokio::select! {
            next = live.recv() => match next {
                Ok(event) => {
                    if !open.send(&mut session, event.json()).await {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => break CloseReason {
                    code: CloseCode::Again,
                    description: Some("lagged".into()),
                },
                Err(broadcast::error::RecvError::Closed) => break CloseReason {
                    code: CloseCode::Away,
                    description: None,
                },
            },
            message = messages.next() => if !keep_open(&mut session, message).await {
                return;
            },
        }
    };
    let _ = session.close(Some(close)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclude_lists_parse_and_unknown_kinds_are_refused() {
        assert_eq!(excluded_kinds(None).unwrap(), vec![]);
        assert_eq!(
            excluded_kinds(Some("llm.token, tool.called,,llm.token")).unwrap(),
            vec![EventKind::LlmToken, EventKind::ToolCalled]
        );
        assert!(matches!(
            excluded_kinds(Some("llm.token,nope")),
            Err(ApiError::InvalidQuery(_))
        ));
    }
}
