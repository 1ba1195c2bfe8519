//! A request body must arrive within `server.body_timeout_seconds` of its request's head: a client that
//! sends the head and then trickles the body (or stops) gets 408 `request_timeout` and its connection is
//! closed, instead of holding a connection and a handler for as long as it likes. actix-web bounds only the
//! head (`client_request_timeout`).
//!
//! Only the body's arrival is timed, never the handler's work: a handler is not cut off half way (a
//! submission whose row is committed always reaches its Director). WebSocket upgrades are left alone: their
//! "body" is the client's messages for as long as the stream lives.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::error::PayloadError;
use actix_web::middleware::Next;
use actix_web::web::Bytes;
use actix_web::{web, Error};
use futures_util::Stream;

/// The longest a request body may take to arrive.
#[derive(Debug, Clone, Copy)]
pub struct BodyTimeout(pub Duration);

/// What the body stream answers when time is up; the JSON and form extractors pass it on as their
/// payload error, which `ApiError` turns into 408.
pub fn timed_out(limit: Duration) -> PayloadError {
    PayloadError::Io(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!(
            "the request body did not arrive within {} s (server.body_timeout_seconds)",
            limit.as_secs()
        ),
    ))
}

/// The middleware: puts a deadline on the request's body stream.
pub async fn limit<B: MessageBody + 'static>(
    request: ServiceRequest,
    next: Next<B>,
) -> Result<ServiceResponse<B>, Error> {
    let upgrade = request
        .headers()
        .contains_key(actix_web::http::header::UPGRADE);
    let Some(limit) = request
        .app_data::<web::Data<BodyTimeout>>()
        .map(|timeout| timeout.0)
        .filter(|_| !upgrade)
    else {
        return next.call(request).await;
    };
    let (head, payload) = request.into_parts();
    let timed = Deadline {
        inner: payload,
        sleep: Box::pin(tokio::time::sleep(limit)),
        limit,
        done: false,
    };
    let stream: Pin<Box<dyn Stream<Item = Result<Bytes, PayloadError>>>> = Box::pin(timed);
    next.call(ServiceRequest::from_parts(head, Payload::from(stream)))
        .await
}

/// A body stream that fails once its deadline passes before it ended.
struct Deadline {
    inner: Payload,
    sleep: Pin<Box<tokio::time::Sleep>>,
    limit: Duration,
    done: bool,
}

impl Stream for Deadline {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        // What has arrived is handed on first: a whole body is never cut by the clock.
        match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(None)
            }
            Poll::Ready(some) => Poll::Ready(some),
            Poll::Pending => match self.sleep.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    self.done = true;
                    Poll::Ready(Some(Err(timed_out(self.limit))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    fn payload(stream: impl Stream<Item = Result<Bytes, PayloadError>> + 'static) -> Payload {
        let stream: Pin<Box<dyn Stream<Item = Result<Bytes, PayloadError>>>> = Box::pin(stream);
        Payload::from(stream)
    }

    #[actix_rt::test]
    async fn a_body_that_stops_coming_fails_at_the_deadline_and_a_whole_one_passes() {
        // A first piece, then nothing more, ever.
        let stalled = futures_util::stream::once(async { Ok(Bytes::from_static(b"{\"prompt\"")) })
            .chain(futures_util::stream::pending());
        let mut slow = Deadline {
            inner: payload(stalled),
            sleep: Box::pin(tokio::time::sleep(Duration::from_millis(50))),
            limit: Duration::from_millis(50),
            done: false,
        };
        assert_eq!(slow.next().await.unwrap().unwrap(), "{\"prompt\"");
        let error = slow.next().await.unwrap().unwrap_err();
        assert!(error.to_string().contains("did not arrive"), "{error}");
        assert!(slow.next().await.is_none());

        let whole_body = futures_util::stream::iter([Ok(Bytes::from_static(b"{}"))]);
        let mut whole = Deadline {
            inner: payload(whole_body),
            sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
            limit: Duration::ZERO,
            done: false,
        };
        assert_eq!(whole.next().await.unwrap().unwrap(), "{}");
        assert!(whole.next().await.is_none());
    }
}
