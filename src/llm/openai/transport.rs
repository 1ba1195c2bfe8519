//! The HTTP transport under async-openai's client (its `middleware` hook, `Client::with_http_service`):
//! plain reqwest with a connect and a read timeout, and nothing else that decides. It replaces the client's
//! default transport, which retries 429 and 5xx on its own: Troupe's retries are the provider's, counted and
//! only before the first token.
//!
//! It is also the one place that sees the responses' headers (async-openai hands the provider only bodies):
//! every response's `x-ratelimit-*` headers go to the rate-limit gauges, and an error status becomes an
//! [`HttpFailure`] (status, `Retry-After`, the body's message) passed up through async-openai as its boxed
//! middleware error, which the provider takes back out by downcasting.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use async_openai::error::OpenAIError;
use async_openai::middleware::HttpRequestFactory;
use reqwest::header::HeaderMap;

use super::retry::{parse_reset, parse_retry_after};
use super::wire::ErrorBody;
use crate::telemetry::metrics::Metrics;

/// Largest error body read, in bytes (the rest is not waited for).
const MAX_ERROR_BODY: usize = 16 * 1024;

/// A server answered with an error status.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("model server answered {status}: {}", body.describe())]
pub struct HttpFailure {
    /// The HTTP status.
    pub status: u16,
    /// The server's `Retry-After`, if any.
    pub retry_after: Option<Duration>,
    /// What the body says.
    pub body: ErrorBody,
}

/// The transport: a reqwest client, and where the rate-limit headers go.
#[derive(Clone)]
pub struct Transport {
    http: reqwest::Client,
    rate_limits: RateLimitGauges,
}

impl Transport {
    /// A transport over `http` that reports `provider`'s rate limits to `metrics`.
    pub fn new(http: reqwest::Client, provider: &'static str, metrics: Metrics) -> Self {
        Transport {
            http,
            rate_limits: RateLimitGauges { provider, metrics },
        }
    }
}

type ResponseFuture =
    Pin<Box<dyn Future<Output = Result<reqwest::Response, OpenAIError>> + Send + 'static>>;

impl tower::Service<HttpRequestFactory> for Transport {
    type Response = reqwest::Response;
    type Error = OpenAIError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, factory: HttpRequestFactory) -> Self::Future {
        let http = self.http.clone();
        let rate_limits = self.rate_limits.clone();
        Box::pin(async move {
            let request = factory.build().await?;
            let response = http
                .execute(request)
                .await
                .map_err(|e| OpenAIError::Reqwest(e.without_url()))?;
            rate_limits.record(response.headers());
            if response.status().is_success() {
                return Ok(response);
            }
            Err(OpenAIError::Boxed(Box::new(failure_of(response).await)))
        })
    }
}

/// Reads an error response: status, `Retry-After`, and at most [`MAX_ERROR_BODY`] bytes of its body.
async fn failure_of(mut response: reqwest::Response) -> HttpFailure {
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| parse_retry_after(value, chrono::Utc::now()));
    let mut body = Vec::new();
    while body.len() < MAX_ERROR_BODY {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    body.truncate(MAX_ERROR_BODY);
    HttpFailure {
        status,
        retry_after,
        body: ErrorBody::parse(&body),
    }
}

/// The rate-limit gauges of one provider.
#[derive(Clone)]
struct RateLimitGauges {
    provider: &'static str,
    metrics: Metrics,
}

impl RateLimitGauges {
    /// Sets the gauges from `x-ratelimit-{remaining,limit,reset}-{requests,tokens}`, where present.
    fn record(&self, headers: &HeaderMap) {
        for kind in ["requests", "tokens"] {
            let header = |name: &str| {
                headers
                    .get(format!("x-ratelimit-{name}-{kind}"))
                    .and_then(|value| value.to_str().ok())
                    .map(str::trim)
            };
            let labels = [self.provider, kind];
            if let Some(value) = header("remaining").and_then(|v| v.parse::<f64>().ok()) {
                self.metrics
                    .llm_rate_limit_remaining
                    .with_label_values(&labels)
                    .set(value);
            }
            if let Some(value) = header("limit").and_then(|v| v.parse::<f64>().ok()) {
                self.metrics
                    .llm_rate_limit_limit
                    .with_label_values(&labels)
                    .set(value);
            }
            if let Some(reset) = header("reset").and_then(parse_reset) {
                self.metrics
                    .llm_rate_limit_reset
                    .with_label_values(&labels)
                    .set(reset.as_secs_f64());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn groq_rate_limit_headers_set_the_gauges() {
        let metrics = Metrics::new().unwrap();
        let gauges = RateLimitGauges {
            provider: "groq",
            metrics: metrics.clone(),
        };
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("x-ratelimit-limit-requests", "14400"),
            ("x-ratelimit-limit-tokens", "18000"),
            ("x-ratelimit-remaining-requests", "14370"),
            ("x-ratelimit-remaining-tokens", "17997.0"),
            ("x-ratelimit-reset-requests", "2m59.56s"),
            ("x-ratelimit-reset-tokens", "7.66s"),
        ] {
            headers.insert(name, HeaderValue::from_static(value));
        }
        gauges.record(&headers);
        let get = |gauge: &prometheus::GaugeVec, kind: &str| {
            gauge.with_label_values(&["groq", kind]).get()
        };
        assert_eq!(get(&metrics.llm_rate_limit_remaining, "requests"), 14370.0);
        assert_eq!(get(&metrics.llm_rate_limit_remaining, "tokens"), 17997.0);
        assert_eq!(get(&metrics.llm_rate_limit_limit, "tokens"), 18000.0);
        assert!((get(&metrics.llm_rate_limit_reset, "requests") - 179.56).abs() < 1e-6);
    }
}
