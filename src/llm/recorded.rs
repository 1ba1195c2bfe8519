//! The recorded model call ([`Recorder::call`]): what every agent and the Director use to ask the model.
//! One call is a `chat {model}` span, its streamed pieces `llm.token` events, its row in `llm_calls` (for
//! inspection and replay), an `llm.finished` event, and the token, latency, cost and error metrics.

use std::sync::Arc;
use std::time::Instant;

use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{LlmError, LlmOutput, LlmProvider, LlmRequest, TokenSink};
use crate::domain::{AgentKind, EventKind, TaskId};
use crate::storage::records::{LlmCallRecord, PendingEvent, WriteOp};
use crate::storage::writer::Writer;
use crate::telemetry::metrics::Metrics;
use crate::telemetry::propagation;

/// A count as a span attribute value: OpenTelemetry attributes are signed 64-bit integers.
fn as_int(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

/// Where a model call's records go: the writer (the call's row, its `llm.token` and `llm.finished`
/// events) and the metrics.
#[derive(Clone, Copy)]
pub struct Recorder<'a> {
    /// The write path of every record.
    pub writer: &'a Writer,
    /// Token, latency, cost and error metrics.
    pub metrics: &'a Metrics,
}

impl Recorder<'_> {
    /// Makes one model call on behalf of `agent` for `task_id`: a `chat {model}` span with the GenAI
    /// attributes, every streamed piece an `llm.token` event, the call stored (prompt, output, usage,
    /// duration) for inspection and replay, an `llm.finished` event, and the token and latency metrics.
    pub async fn call(
        self,
        llm: &dyn LlmProvider,
        task_id: TaskId,
        agent: AgentKind,
        request: LlmRequest,
        cancel: CancellationToken,
    ) -> Result<LlmOutput, LlmError> {
        let provider = llm.provider_name();
        let model = llm.model_name().to_owned();
        let span = tracing::info_span!(
            "chat",
            otel.name = %format!("chat {model}"),
            otel.kind = "client",
            gen_ai.operation.name = "chat",
            gen_ai.provider.name = provider,
            gen_ai.request.model = %model,
            gen_ai.request.max_tokens = i64::from(request.max_tokens),
            gen_ai.agent.name = agent.as_str(),
            gen_ai.conversation.id = %task_id,
            troupe.llm.purpose = %request.purpose,
            gen_ai.usage.input_tokens = tracing::field::Empty,
            gen_ai.usage.output_tokens = tracing::field::Empty,
            error.type = tracing::field::Empty,
        );
        async move {
            let purpose = request.purpose.clone();
            let prompt = serde_json::to_string(&request.messages).unwrap_or_default();
            // Token pieces arrive on the provider's task: capture this span's ids now.
            let (trace_id, span_id) = propagation::ids(&propagation::current());
            let writer = self.writer.clone();
            let token_purpose = purpose.clone();
            let started = Instant::now();
            let first_token = self
                .metrics
                .llm_time_to_first_token
                .with_label_values(&[provider, &model]);
            let seen_first = std::sync::atomic::AtomicBool::new(false);
            let on_token: TokenSink = Arc::new(move |text: &str| {
                if !seen_first.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    first_token.observe(started.elapsed().as_secs_f64());
                }
                writer.send(WriteOp::Event(PendingEvent {
                    task_id,
                    at: chrono::Utc::now(),
                    kind: EventKind::LlmToken,
                    agent: Some(agent),
                    trace_id: trace_id.clone(),
                    span_id: span_id.clone(),
                    data: json!({ "purpose": token_purpose, "text": text }),
                }));
            });
            let result = llm.complete(request, on_token, cancel).await;
            let elapsed = started.elapsed().as_secs_f64();
            self.metrics
                .llm_request_duration
                .with_label_values(&[provider, &model])
                .observe(elapsed);
            let span = tracing::Span::current();
            match &result {
                Ok(output) => {
                    // As i64: the OpenTelemetry layer exports u64 fields as strings, and GenAI usage is an int.
                    span.record(
                        "gen_ai.usage.input_tokens",
                        as_int(output.usage.input_tokens),
                    );
                    span.record(
                        "gen_ai.usage.output_tokens",
                        as_int(output.usage.output_tokens),
                    );
                    let tokens = &self.metrics.llm_tokens;
                    tokens
                        .with_label_values(&[provider, &model, "input"])
                        .inc_by(output.usage.input_tokens);
                    tokens
                        .with_label_values(&[provider, &model, "output"])
                        .inc_by(output.usage.output_tokens);
                    // Added even when zero, so that a local model's cost shows as 0 rather than absent.
                    self.metrics
                        .llm_cost
                        .with_label_values(&[provider, &model])
                        .inc_by(
                            llm.price_per_million_tokens()
                                .cost(output.usage.input_tokens, output.usage.output_tokens),
                        );
                    self.writer.send(WriteOp::LlmCall(LlmCallRecord {
                        task_id,
                        purpose: purpose.clone(),
                        agent,
                        provider: provider.to_owned(),
                        model: model.clone(),
                        prompt,
                        output: output.text.clone(),
                        choice: output
                            .choice
                            .as_ref()
                            .and_then(|c| serde_json::to_value(c).ok()),
                        prompt_tokens: i64::try_from(output.usage.input_tokens).unwrap_or(i64::MAX),
                        completion_tokens: i64::try_from(output.usage.output_tokens)
                            .unwrap_or(i64::MAX),
                        duration_seconds: elapsed,
                    }));
                    self.writer.emit(
                        task_id,
                        EventKind::LlmFinished,
                        Some(agent),
                        json!({
                            "purpose": purpose,
                            "provider": provider,
                            "model": model,
                            "input_tokens": output.usage.input_tokens,
                            "output_tokens": output.usage.output_tokens,
                            "duration_seconds": elapsed,
                        }),
                    );
                }
                Err(error) => {
                    span.record("error.type", error.kind());
                    self.metrics
                        .llm_errors
                        .with_label_values(&[provider, error.kind()])
                        .inc();
                }
            }
            result
        }
        .instrument(span)
        .await
    }
}
