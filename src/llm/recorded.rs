//! The recorded model call ([`Recorder::call`]): what every agent and the Director use to ask the model.
//! One call is a `chat {model}` span, its streamed pieces `llm.token` events, its row in `llm_calls` (for
//! inspection and replay), an `llm.finished` event, and the token, latency, cost and error metrics.
//!
//! A resumed task's calls already recorded for it are answered from its recording ([`TaskModels::recorded`])
//! before any of that: no model call, no second row.
//!
//! A replay's or fork's calls in scope are answered from the source's recording ([`TaskModels::replayed`])
//! while they ask what the recorded call asked (recorded as a call of this task, provider `replay`); one
//! that asks something else, or was never recorded, is a divergence: a `replay.diverged` event, a span
//! event and `troupe_replay_divergences_total`, then the task stops (`LlmError::ReplayDiverged`) or the
//! call and every later one are made live.
//!
//! It also carries out the task's policy ([`TaskModels`]): the budget is reserved before the call and
//! settled after it (`budget.exceeded` and a downgrade or a failure when it would be passed), and a provider
//! failure goes to the fallback (`llm.fallback`), after a person's yes in `confirm` mode (`task.paused`,
//! `task.resumed`).

use std::sync::Arc;
use std::time::Instant;

use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::budget::estimate_tokens;
use super::confirm::Answer;
use super::divergence::{Divergence, RequestPrint};
use super::models::{named, Replayed, TaskModels};
use super::{LlmError, LlmOutput, LlmProvider, LlmRequest, TokenInfo, TokenSink};
use crate::domain::{AgentKind, EventKind, OnDivergence, TaskId, TaskStatus};
use crate::storage::records::{LlmCallRecord, PendingEvent, WriteOp};
use crate::storage::writer::Writer;
use crate::telemetry::metrics::Metrics;
use crate::telemetry::propagation;

/// A count as a span attribute value: OpenTelemetry attributes are signed 64-bit integers.
fn as_int(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

/// The data of a streamed piece's `llm.token` event: `{purpose, text, p?, top?}`, `top` as `[{text, p}]`
/// (what the storage coalesces; see `storage::events`). Absent fields: the provider gave none.
fn token_data(purpose: &str, text: &str, info: TokenInfo) -> serde_json::Value {
    let info = info.bounded();
    let mut data = serde_json::Map::with_capacity(4);
    data.insert("purpose".into(), purpose.into());
    data.insert("text".into(), text.into());
    if let Some(p) = info.p {
        data.insert("p".into(), p.into());
    }
    if let Some(top) = info.top {
        data.insert(
            "top".into(),
            top.into_iter()
                .map(|alternative| json!({ "text": alternative.text, "p": alternative.p }))
                .collect(),
        );
    }
    serde_json::Value::Object(data)
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

/// The characters of a request's messages, for the budget's estimate.
fn prompt_chars(request: &LlmRequest) -> usize {
    request
        .messages
        .iter()
        .map(|message| message.content.chars().count())
        .sum()
}

impl Recorder<'_> {
    /// Makes one model call on behalf of `agent` for `task_id` under the task's budget and fallback
    /// policy (see the module documentation); each provider call is recorded by [`Recorder::attempt`].
    pub async fn call(
        self,
        models: &TaskModels,
        task_id: TaskId,
        agent: AgentKind,
        request: LlmRequest,
        cancel: CancellationToken,
    ) -> Result<LlmOutput, LlmError> {
        let provider = models.for_agent(agent);
        if let Some(output) = models.recorded(&request.purpose) {
            // A resumed task's call that its dead process already made and recorded: answered from the
            // recording, so no model runs, and no second row or events are written (its own are in the
            // log). Its usage counts against the task's budget again, which starts from nothing here.
            let cost = provider
                .price_per_million_tokens()
                .cost(output.usage.input_tokens, output.usage.output_tokens);
            models.budget().charge(output.usage, cost);
            return Ok(output);
        }
        let print = RequestPrint::of(&request, provider.model_config());
        match models.replayed(&request.purpose, &print) {
            Replayed::Live => {}
            Replayed::Recorded {
                provider: recording,
                model,
            } => {
                // No model runs and nothing is spent; the call is still this task's, recorded like any
                // other, so that the task is self-contained and can be replayed in turn.
                return self
                    .attempt(
                        recording.as_ref(),
                        task_id,
                        agent,
                        request,
                        cancel,
                        Some(model),
                    )
                    .await;
            }
            Replayed::Diverged(divergence) => {
                let action = models.diverge();
                self.diverged(models, task_id, agent, &divergence, action);
                if action == OnDivergence::Stop {
                    return Err(LlmError::ReplayDiverged {
                        source_task: models
                            .replay_source()
                            .map(|id| id.to_string())
                            .unwrap_or_default(),
                        purpose: divergence.purpose.clone(),
                        detail: divergence.describe(),
                    });
                }
            }
        }
        let (provider, result) = self
            .within_budget(models, provider, task_id, agent, &request, &cancel)
            .await;
        let error = match result {
            Ok(output) => return Ok(output),
            Err(error) => error,
        };
        let fallback = match models.fallback_for(&provider) {
            Some(fallback) if error.falls_back() && !cancel.is_cancelled() => fallback,
            _ => return Err(error),
        };
        if models.needs_confirmation() {
            match self
                .confirm(
                    models, &provider, &fallback, task_id, agent, &request, &error, &cancel,
                )
                .await
            {
                Answer::Allowed => models.allow_fallback(),
                Answer::Cancelled => return Err(LlmError::Cancelled),
                refused @ (Answer::Declined | Answer::TimedOut) => {
                    return Err(LlmError::FallbackRefused {
                        answer: refused.as_str(),
                        cause: error.to_string(),
                    })
                }
            }
        }
        models.fall_back();
        self.metrics
            .llm_fallbacks
            .with_label_values(&[
                provider.provider_name(),
                fallback.provider_name(),
                error.kind(),
            ])
            .inc();
        self.writer.emit(
            task_id,
            EventKind::LlmFallback,
            Some(agent),
            json!({
                "purpose": request.purpose,
                "from": named(&provider),
                "to": named(&fallback),
                "reason": error.kind(),
                "error": error.to_string(),
            }),
        );
        let (_, result) = self
            .within_budget(models, fallback, task_id, agent, &request, &cancel)
            .await;
        result
    }

    /// Announces a divergence of a replay from its recording: a span event on the caller's span, the
    /// `replay.diverged` event (what differed, the excerpts, what the task does) and the metric.
    fn diverged(
        self,
        models: &TaskModels,
        task_id: TaskId,
        agent: AgentKind,
        divergence: &Divergence,
        action: OnDivergence,
    ) {
        let source = models.replay_source();
        tracing::info!(
            troupe.replay.source = source.map(|id| id.to_string()),
            troupe.llm.purpose = %divergence.purpose,
            troupe.replay.part = divergence.part.as_str(),
            troupe.replay.action = action.as_str(),
            "replay diverged"
        );
        self.metrics
            .replay_divergences
            .with_label_values(&[action.as_str()])
            .inc();
        let mut data = serde_json::to_value(divergence).unwrap_or_else(|_| json!({}));
        data["source"] = json!(source);
        data["action"] = json!(action);
        data["detail"] = json!(divergence.describe());
        self.writer
            .emit(task_id, EventKind::ReplayDiverged, Some(agent), data);
    }

    /// Reserves the call's most against the task's budget (downgrading the task or refusing the call when
    /// it would be passed), makes it, and settles the budget with its real usage. Returns the provider that
    /// was called (the downgrade model after a downgrade).
    async fn within_budget(
        self,
        models: &TaskModels,
        provider: Arc<dyn LlmProvider>,
        task_id: TaskId,
        agent: AgentKind,
        request: &LlmRequest,
        cancel: &CancellationToken,
    ) -> (Arc<dyn LlmProvider>, Result<LlmOutput, LlmError>) {
        let chars = prompt_chars(request);
        let budget = models.budget();
        let reserved = budget.reserve(
            chars,
            request.max_tokens,
            provider.price_per_million_tokens(),
            !models.is_downgraded(),
        );
        let (provider, reservation) = match reserved {
            Ok(reservation) => (provider, reservation),
            Err(exceeded) => {
                let downgrade = models.downgrade();
                let action = if downgrade.is_some() {
                    "downgrade"
                } else {
                    "fail"
                };
                self.metrics
                    .budget_exceeded
                    .with_label_values(&[action])
                    .inc();
                self.writer.emit(
                    task_id,
                    EventKind::BudgetExceeded,
                    Some(agent),
                    json!({
                        "purpose": request.purpose,
                        "limit": exceeded.limit,
                        "allowed": exceeded.allowed,
                        "used": exceeded.used,
                        "asked": exceeded.asked,
                        "action": action,
                        "model": named(&provider),
                        "to": downgrade.as_ref().map(named),
                    }),
                );
                let Some(downgrade) = downgrade else {
                    return (
                        provider,
                        Err(LlmError::BudgetExceeded(exceeded.to_string())),
                    );
                };
                // On the downgrade model only the cost limit still applies (a local model costs nothing).
                match budget.reserve(
                    chars,
                    request.max_tokens,
                    downgrade.price_per_million_tokens(),
                    false,
                ) {
                    Ok(reservation) => (downgrade, reservation),
                    Err(exceeded) => {
                        return (
                            downgrade,
                            Err(LlmError::BudgetExceeded(exceeded.to_string())),
                        )
                    }
                }
            }
        };
        let result = self
            .attempt(
                provider.as_ref(),
                task_id,
                agent,
                request.clone(),
                cancel.clone(),
                None,
            )
            .await;
        let used = result.as_ref().ok().map(|output| {
            let cost = provider
                .price_per_million_tokens()
                .cost(output.usage.input_tokens, output.usage.output_tokens);
            (output.usage, cost)
        });
        budget.settle(reservation, used);
        (provider, result)
    }

    /// Pauses the task until a person allows or declines sending the call to `fallback` (or the time runs
    /// out, or the task is cancelled): `task.paused` with the estimated cost, the task's status `paused`,
    /// then `task.resumed` with the answer.
    #[allow(clippy::too_many_arguments)]
    async fn confirm(
        self,
        models: &TaskModels,
        provider: &Arc<dyn LlmProvider>,
        fallback: &Arc<dyn LlmProvider>,
        task_id: TaskId,
        agent: AgentKind,
        request: &LlmRequest,
        error: &LlmError,
        cancel: &CancellationToken,
    ) -> Answer {
        let policy = models.policy();
        let estimated_cost = fallback.price_per_million_tokens().cost(
            estimate_tokens(prompt_chars(request)),
            u64::from(request.max_tokens),
        );
        // The wait opens before the pause is told, so an answer to `task.paused` always finds it.
        let waiting = policy.confirmations.open(task_id);
        models.pause();
        self.writer.send(WriteOp::SetStatus {
            status: TaskStatus::Paused,
            event: PendingEvent::now(
                task_id,
                EventKind::TaskPaused,
                Some(agent),
                json!({
                    "reason": "cloud_fallback",
                    "purpose": request.purpose,
                    "from": named(provider),
                    "to": named(fallback),
                    "error": error.to_string(),
                    "estimated_cost_usd": estimated_cost,
                    "timeout_seconds": policy.confirm_timeout.as_secs(),
                    "confirm": format!("POST /api/v1/tasks/{task_id}/confirm {{\"allow\": true|false}}"),
                }),
            ),
        });
        let answer = waiting.wait(policy.confirm_timeout, cancel).await;
        models.resume();
        self.writer.send(WriteOp::SetStatus {
            status: TaskStatus::Running,
            event: PendingEvent::now(
                task_id,
                EventKind::TaskResumed,
                Some(agent),
                json!({ "reason": "cloud_fallback", "answer": answer.as_str() }),
            ),
        });
        answer
    }

    /// Makes one call to `llm` on behalf of `agent` for `task_id`: a `chat {model}` span with the GenAI
    /// attributes, every streamed piece an `llm.token` event, the call stored (prompt, what else was asked
    /// and its digest, output, usage, cost, duration) for inspection and replay, an `llm.finished` event,
    /// and the token, cost and latency metrics. `recorded_model` is the model configuration a replayed
    /// output came from (else `llm`'s own is recorded).
    async fn attempt(
        self,
        llm: &dyn LlmProvider,
        task_id: TaskId,
        agent: AgentKind,
        request: LlmRequest,
        cancel: CancellationToken,
        recorded_model: Option<serde_json::Value>,
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
            let print = RequestPrint::of(
                &request,
                recorded_model.unwrap_or_else(|| llm.model_config()),
            );
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
            let on_token: TokenSink = Arc::new(move |text: &str, info: TokenInfo| {
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
                    data: token_data(&token_purpose, text, info),
                }));
            });
            let stopped = cancel.clone();
            let result = llm.complete(request, on_token, cancel).await;
            // A call that ended as its try was given up on (a timed-out step's old incarnation, a cancelled
            // task) is not recorded, even when its last token came before the cancellation did: its try is
            // over, and a retry records its own call.
            let result = match result {
                Ok(_) if stopped.is_cancelled() => Err(LlmError::Cancelled),
                other => other,
            };
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
                    let cost_usd = llm
                        .price_per_million_tokens()
                        .cost(output.usage.input_tokens, output.usage.output_tokens);
                    // Added even when zero, so that a local model's cost shows as 0 rather than absent.
                    self.metrics
                        .llm_cost
                        .with_label_values(&[provider, &model])
                        .inc_by(cost_usd);
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
                        cost_usd,
                        duration_seconds: elapsed,
                        request: Some(print.asked_json()),
                        request_digest: Some(print.digest()),
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
                            "cost_usd": cost_usd,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::Alternative;

    #[test]
    fn a_pieces_event_data_has_only_what_the_provider_knew() {
        assert_eq!(
            token_data("plan", "{", TokenInfo::unknown()),
            json!({ "purpose": "plan", "text": "{" })
        );
        let info = TokenInfo {
            p: Some(0.75),
            top: Some(vec![
                Alternative {
                    text: "{".into(),
                    p: 0.75,
                },
                Alternative {
                    text: "[".into(),
                    p: 0.2,
                },
            ]),
        };
        assert_eq!(
            token_data("plan", "{", info),
            json!({ "purpose": "plan", "text": "{", "p": 0.75,
                    "top": [{ "text": "{", "p": 0.75 }, { "text": "[", "p": 0.2 }] })
        );
    }
}
