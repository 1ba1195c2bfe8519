//! The model layer: the [`LlmProvider`] trait, request and output types, and the providers.
//!
//! - [`embedded`]: llama.cpp in a supervised child process (`troupe model-worker`, see [`worker`]), so that
//!   an abort inside llama.cpp (a `GGML_ASSERT` on some grammar states) kills the worker, never the server.
//! - [`openai`]: any OpenAI-compatible server (llama.cpp's `llama-server`, Ollama, vLLM) and Groq, through
//!   async-openai; [`start_provider`] builds the provider of a [`ModelEndpoint`](crate::config::ModelEndpoint).
//! - [`replay`]: the recorded outputs of an earlier task, for deterministic replay and benchmarks;
//!   [`divergence`]: what a call asked, recorded so that a replay can tell when it asks something else.
//! - [`recorded`]: the recorded, traced, metered call every caller makes ([`recorded::Recorder::call`]).
//! - [`models`]: which provider serves which agent, for the process and for one task; [`budget`] and
//!   [`confirm`]: a task's spending limit and the person's yes a cloud fallback may wait for.
//!
//! The providers know nothing of storage; `recorded` writes each call and its events through the storage
//! writer, and `replay` reads a recording's rows. Nothing here knows agents or the event hub.

pub mod absent;
pub mod budget;
pub mod confirm;
pub mod divergence;
pub mod embedded;
pub mod models;
pub mod openai;
pub mod protocol;
pub mod recorded;
pub mod replay;
pub mod worker;

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::config::{
    BudgetSettings, FallbackTarget, LlmSettings, ModelEndpoint, OnExceed, PriceSettings,
    ProviderKind,
};
use crate::telemetry::metrics::Metrics;

/// Who speaks a chat message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions.
    System,
    /// The request.
    User,
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Speaker.
    pub role: Role,
    /// Text.
    pub content: String,
}

impl ChatMessage {
    /// A system message.
    pub fn system(content: impl Into<String>) -> Self {
        ChatMessage {
            role: Role::System,
            content: content.into(),
        }
    }
    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        ChatMessage {
            role: Role::User,
            content: content.into(),
        }
    }
}

/// The shape the output must take.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum OutputSpec {
    /// Free text, ended by the model or the token budget.
    Text,
    /// A JSON document valid for `schema`, enforced by a grammar built from the schema.
    Json {
        /// JSON Schema of the document.
        schema: serde_json::Value,
    },
    /// A choice among `options`, scored by the model's own probabilities: the answer starts with `prefix`
    /// (prefilled), the options' first-token logits at that point are turned into probabilities (softmax over
    /// the candidates), the most probable option is taken, then `suffix` is prefilled and a short free-text
    /// reason is generated under a grammar up to a closing `"}`.
    Choice {
        /// Prefilled text before the option, e.g. `{"agent": "`.
        prefix: String,
        /// The candidates; their first tokens must differ.
        options: Vec<String>,
        /// Prefilled text after the option, e.g. `", "reason": "`.
        suffix: String,
    },
}

/// One model call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlmRequest {
    /// A key for this call that is the same in every run of the same task ("plan", "assign.1", "work.1",
    /// "verify"); the replay provider answers by it.
    pub purpose: String,
    /// The conversation; the provider applies the model's chat template.
    pub messages: Vec<ChatMessage>,
    /// Generation budget.
    pub max_tokens: u32,
    /// Required shape of the output.
    pub output: OutputSpec,
}

/// One scored candidate of a choice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoredOption {
    /// The candidate.
    pub name: String,
    /// The probability the choice is made by, normalised over the candidates: the model's own, or the
    /// calibrated one where the caller calibrates (then the model's own is `raw_probability`).
    pub probability: f64,
    /// The model's own probability before calibration, where the choice was calibrated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_probability: Option<f64>,
}

/// The outcome of a [`OutputSpec::Choice`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Choice {
    /// Every candidate with its probability, in the order requested.
    pub options: Vec<ScoredOption>,
    /// The chosen candidate.
    pub chosen: String,
    /// The model's stated reason.
    pub reasoning: String,
    /// Whether the probabilities are the model's own. A server that returns no `logprobs` (Groq) gives an
    /// unscored choice: the option the model wrote, every probability 0, and this false; nothing invented.
    #[serde(default = "scored_by_default")]
    pub scored: bool,
}

fn scored_by_default() -> bool {
    true
}

impl Choice {
    /// The probability of the chosen option.
    pub fn confidence(&self) -> f64 {
        self.options
            .iter()
            .find(|option| option.name == self.chosen)
            .map_or(0.0, |option| option.probability)
    }
}

/// Token counts of one call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Generated tokens.
    pub output_tokens: u64,
}

/// What a call produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlmOutput {
    /// The whole output text (for a choice, the JSON object `prefix + option + suffix + reason + "}`).
    pub text: String,
    /// Set for [`OutputSpec::Choice`].
    pub choice: Option<Choice>,
    /// Token counts.
    pub usage: Usage,
    /// Seconds spent generating (after the prompt), for tokens/s.
    pub generation_seconds: f64,
}

#[cfg(test)]
impl LlmOutput {
    /// A plain output of `text`, for tests of how agents read outputs.
    pub fn of_text(text: &str) -> Self {
        LlmOutput {
            text: text.into(),
            choice: None,
            usage: Usage::default(),
            generation_seconds: 0.0,
        }
    }
}

pub use crate::domain::limits::{MAX_ALTERNATIVE_CHARS, TOP_ALTERNATIVES};

/// A token the model could have produced at a position, with its probability there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alternative {
    /// The token's text (lossy UTF-8 for a token that is part of a character; special tokens by name).
    pub text: String,
    /// Its probability at that position, in [0, 1].
    pub p: f64,
}

/// What the provider knows of one streamed piece besides its text.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TokenInfo {
    /// The piece's probability given what came before (the product of its tokens' probabilities); `None`:
    /// the provider gave none (replay, Groq, text the worker forced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p: Option<f64>,
    /// The most probable tokens at the position of the piece's first token, most probable first, at most
    /// [`TOP_ALTERNATIVES`]: the model's own distribution (softmax of the raw logits over the whole
    /// vocabulary, before grammar, penalties or temperature; a server's `top_logprobs`), so under a grammar
    /// it may hold tokens the grammar did not allow. The sampled token is among them when it ranks in the
    /// top five (for a one-token piece its entry's `p` is the piece's `p`). `None`: the provider gave none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top: Option<Vec<Alternative>>,
}

impl TokenInfo {
    /// A piece the provider knows nothing more of.
    pub fn unknown() -> Self {
        TokenInfo::default()
    }

    /// The same within bounds, whoever produced it: probabilities that are not numbers in [0, 1] are
    /// dropped (never guessed), at most [`TOP_ALTERNATIVES`] alternatives of at most
    /// [`MAX_ALTERNATIVE_CHARS`] characters each are kept, most probable first.
    pub fn bounded(self) -> Self {
        let valid = |p: f64| (0.0..=1.0).contains(&p).then_some(p);
        let top = self.top.map(|alternatives| {
            let mut kept: Vec<Alternative> = alternatives
                .into_iter()
                .filter_map(|alternative| {
                    Some(Alternative {
                        p: valid(alternative.p)?,
                        text: if alternative.text.chars().count() > MAX_ALTERNATIVE_CHARS {
                            alternative
                                .text
                                .chars()
                                .take(MAX_ALTERNATIVE_CHARS)
                                .collect()
                        } else {
                            alternative.text
                        },
                    })
                })
                .collect();
            // Stable: equal probabilities keep the provider's order.
            kept.sort_by(|a, b| b.p.total_cmp(&a.p));
            kept.truncate(TOP_ALTERNATIVES);
            kept
        });
        TokenInfo {
            p: self.p.and_then(valid),
            top,
        }
    }
}

/// Receives streamed text pieces as the model produces them, each with what the provider knows of it
/// ([`TokenInfo`]: its probability and the top alternatives, where known).
pub type TokenSink = Arc<dyn Fn(&str, TokenInfo) + Send + Sync>;

/// A model call failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LlmError {
    /// The caller cancelled the call.
    #[error("model call cancelled")]
    Cancelled,
    /// The call took longer than its deadline.
    #[error("model call timed out after {0} s")]
    Timeout(u64),
    /// The model worker process died during the call (it is restarted for the next call).
    #[error("model worker died: {0}")]
    WorkerCrashed(String),
    /// The model worker is not running and could not be started.
    #[error("model worker unavailable: {0}")]
    Unavailable(String),
    /// The output schema could not be turned into a grammar.
    #[error("build grammar: {0}")]
    Grammar(String),
    /// The request itself is unusable (a prompt too long for the context, a choice whose options share a
    /// first token).
    #[error("invalid model request: {0}")]
    InvalidRequest(String),
    /// llama.cpp reported an error.
    #[error("model error: {0}")]
    Model(String),
    /// The replayed task has no recorded output for this call.
    #[error("replay has no recorded model output for '{purpose}'")]
    ReplayMissing {
        /// The call's purpose key.
        purpose: String,
    },
    /// A replay's call asks something else than the recorded call (or one never recorded), and the task
    /// stops there (`options.on_divergence = "stop"`).
    #[error("replay of task {source_task} diverged: {detail}")]
    ReplayDiverged {
        /// The task being replayed.
        source_task: String,
        /// The call's purpose key.
        purpose: String,
        /// What differed, with excerpts.
        detail: String,
    },
    /// The worker spoke something that is not the protocol.
    #[error("model worker protocol: {0}")]
    Protocol(String),
    /// The call would take the task over its budget (`budget.on_exceed = "fail"`, or no model to downgrade to).
    #[error("{0}")]
    BudgetExceeded(String),
    /// The primary failed and the cloud fallback was not confirmed (declined, or nobody answered in time).
    #[error("cloud fallback {answer} after the primary model failed: {cause}")]
    FallbackRefused {
        /// `declined` or `timed_out`.
        answer: &'static str,
        /// The primary's error.
        cause: String,
    },
    /// A remote server kept answering 429 (too many requests) through every retry.
    #[error("rate limited by the model server: {message}")]
    RateLimited {
        /// Seconds the server last asked to wait (`Retry-After`), if it said.
        retry_after_seconds: Option<u64>,
        /// The server's message.
        message: String,
    },
    /// A remote server answered with an HTTP error status (other than 401/403/429).
    #[error("model server answered {status}: {message}")]
    Http {
        /// The HTTP status.
        status: u16,
        /// The server's message.
        message: String,
    },
    /// A remote server could not be reached, or the connection broke before an answer began.
    #[error("connect to the model server: {0}")]
    Connect(String),
    /// A remote server refused the credentials (401/403). The key itself is never in the message.
    #[error("model server refused the credentials: {0}")]
    Auth(String),
    /// A remote server's answer is not the protocol, or a structured output did not fit its schema even
    /// after one more try.
    #[error("malformed model output: {0}")]
    Malformed(String),
}

impl LlmError {
    /// One error of each kind (placeholder contents; an `Http` one of status 500), for exporting the error
    /// and fallback counters at 0 from the start. A new variant belongs here too.
    pub fn samples() -> Vec<LlmError> {
        let text = String::new;
        vec![
            LlmError::Cancelled,
            LlmError::Timeout(0),
            LlmError::WorkerCrashed(text()),
            LlmError::Unavailable(text()),
            LlmError::Grammar(text()),
            LlmError::InvalidRequest(text()),
            LlmError::Model(text()),
            LlmError::ReplayMissing { purpose: text() },
            LlmError::ReplayDiverged {
                source_task: text(),
                purpose: text(),
                detail: text(),
            },
            LlmError::Protocol(text()),
            LlmError::BudgetExceeded(text()),
            LlmError::FallbackRefused {
                answer: "declined",
                cause: text(),
            },
            LlmError::RateLimited {
                retry_after_seconds: None,
                message: text(),
            },
            LlmError::Http {
                status: 500,
                message: text(),
            },
            LlmError::Connect(text()),
            LlmError::Auth(text()),
            LlmError::Malformed(text()),
        ]
    }

    /// A short, bounded label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            LlmError::Cancelled => "cancelled",
            LlmError::Timeout(_) => "timeout",
            LlmError::WorkerCrashed(_) => "worker_crashed",
            LlmError::Unavailable(_) => "unavailable",
            LlmError::Grammar(_) => "grammar",
            LlmError::InvalidRequest(_) => "invalid_request",
            LlmError::Model(_) => "model",
            LlmError::ReplayMissing { .. } => "replay_missing",
            LlmError::ReplayDiverged { .. } => "replay_diverged",
            LlmError::Protocol(_) => "protocol",
            LlmError::BudgetExceeded(_) => "budget_exceeded",
            LlmError::FallbackRefused { .. } => "fallback_refused",
            LlmError::RateLimited { .. } => "rate_limited",
            LlmError::Http { .. } => "http",
            LlmError::Connect(_) => "connect",
            LlmError::Auth(_) => "auth",
            LlmError::Malformed(_) => "malformed",
        }
    }

    /// Whether the provider failed (down, crashed, timed out, overloaded), so that another provider may
    /// serve the call; not for the caller's cancellation, a request no provider could serve, a replay's gap,
    /// a policy's refusal or refused credentials (a configuration to fix, not to hide behind a paid fallback).
    pub fn falls_back(&self) -> bool {
        match self {
            LlmError::Timeout(_)
            | LlmError::WorkerCrashed(_)
            | LlmError::Unavailable(_)
            | LlmError::Model(_)
            | LlmError::Protocol(_)
            | LlmError::RateLimited { .. }
            | LlmError::Connect(_)
            | LlmError::Malformed(_) => true,
            LlmError::Http { status, .. } => *status >= 500,
            LlmError::Auth(_) => false,
            LlmError::Cancelled
            | LlmError::Grammar(_)
            | LlmError::InvalidRequest(_)
            | LlmError::ReplayMissing { .. }
            | LlmError::ReplayDiverged { .. }
            | LlmError::BudgetExceeded(_)
            | LlmError::FallbackRefused { .. } => false,
        }
    }
}

/// Starts the provider of `endpoint`: the embedded worker on its GGUF file, or a client of an OpenAI-compatible
/// server (`openai`, with `[llm] api_key`; `groq`, with `[llm.groq] api_key`). Remote providers make no call
/// here; their readiness is their last call's outcome and a background probe of the server's `/models`.
pub async fn start_provider(
    settings: &LlmSettings,
    endpoint: &ModelEndpoint,
    metrics: Metrics,
) -> Result<Arc<dyn LlmProvider>, LlmError> {
    Ok(match endpoint.provider {
        ProviderKind::Embedded => Arc::new(
            embedded::EmbeddedProvider::start_model(settings, &endpoint.model_path(), metrics)
                .await?,
        ),
        ProviderKind::Openai => Arc::new(openai::OpenAiProvider::new(
            settings,
            endpoint,
            settings.api_key.as_ref(),
            metrics,
        )?),
        ProviderKind::Groq => Arc::new(openai::OpenAiProvider::new(
            settings,
            endpoint,
            settings.groq.api_key.as_ref(),
            metrics,
        )?),
    })
}

/// Starts every configured model once: the primary (`[llm]`), the agents' own (`[llm.agents.<agent>]`), the
/// named ones a task may pick (`[llm.models.<name>]`), the
/// cloud fallback (`llm.fallback`, only with `[llm.groq] enabled`) and the budget's downgrade model
/// (`budget.on_exceed = "downgrade"`); an endpoint named twice shares one provider.
pub async fn start_models(
    settings: &LlmSettings,
    budget: &BudgetSettings,
    metrics: &Metrics,
) -> Result<models::Models, LlmError> {
    let mut started: Vec<(ModelEndpoint, Arc<dyn LlmProvider>)> = Vec::new();
    let mut start = async |endpoint: ModelEndpoint| -> Result<Arc<dyn LlmProvider>, LlmError> {
        if let Some((_, provider)) = started.iter().find(|(known, _)| *known == endpoint) {
            return Ok(Arc::clone(provider));
        }
        let provider = start_provider(settings, &endpoint, metrics.clone()).await?;
        started.push((endpoint, Arc::clone(&provider)));
        Ok(provider)
    };
    let mut models = models::Models::single(start(settings.primary()).await?);
    let mut agents = std::collections::BTreeMap::new();
    for agent in crate::domain::AgentKind::ALL {
        if settings.agents.contains_key(agent.as_str()) {
            agents.insert(agent, start(settings.for_agent(agent)).await?);
        }
    }
    models = models.with_agents(agents);
    let mut named = std::collections::BTreeMap::new();
    for (name, over) in &settings.models {
        named.insert(name.clone(), start(settings.resolve(over)).await?);
    }
    models = models.with_named(named);
    if settings.fallback == FallbackTarget::Groq && settings.groq.enabled {
        models = models.with_fallback(start(settings.groq_endpoint()).await?);
    }
    if budget.on_exceed == OnExceed::Downgrade {
        models = models.with_downgrade(start(settings.resolve(&budget.downgrade)).await?);
    }
    Ok(models)
}

/// A source of model outputs.
#[async_trait]
pub trait LlmProvider: Send + Sync {
    /// `gen_ai.provider.name` of this provider ("llama.cpp", "openai", "groq", "replay").
    fn provider_name(&self) -> &'static str;
    /// `gen_ai.request.model`.
    fn model_name(&self) -> &str;
    /// Runs one call, streaming text pieces to `on_token`; stops early when `cancel` fires.
    async fn complete(
        &self,
        request: LlmRequest,
        on_token: TokenSink,
        cancel: CancellationToken,
    ) -> Result<LlmOutput, LlmError>;
    /// Whether the provider can serve calls now (for `/readyz`).
    fn check_ready(&self) -> Result<(), LlmError>;
    /// The process hosting the model, for providers that run one (for `GET /api/v1/agents`).
    fn worker(&self) -> Option<WorkerStatus> {
        None
    }
    /// US dollars per million input and output tokens (for `troupe_llm_cost_usd_total`). Local models and
    /// replays cost nothing; paid remote providers will report their configured prices.
    fn price_per_million_tokens(&self) -> TokenPrices {
        TokenPrices::default()
    }
    /// What, besides the request, decides this provider's answers (provider, model and, where it has them,
    /// sampling settings), as JSON: recorded with every call, so that a replay whose live model is
    /// configured otherwise says it diverges (`llm::divergence`). The default names provider and model.
    fn model_config(&self) -> serde_json::Value {
        serde_json::json!({ "provider": self.provider_name(), "model": self.model_name() })
    }
}

/// Prices of a provider's tokens, in US dollars per million.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TokenPrices {
    /// Per million input (prompt) tokens.
    pub input: f64,
    /// Per million output (completion) tokens.
    pub output: f64,
}

impl From<PriceSettings> for TokenPrices {
    fn from(price: PriceSettings) -> Self {
        TokenPrices {
            input: price.input_per_million,
            output: price.output_per_million,
        }
    }
}

impl TokenPrices {
    /// The cost of a call with this usage.
    pub fn cost(&self, input_tokens: u64, output_tokens: u64) -> f64 {
        (input_tokens as f64 * self.input + output_tokens as f64 * self.output) / 1_000_000.0
    }
}

/// The model's worker process as its supervisor sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkerStatus {
    /// "starting", "ready" or "down".
    pub state: &'static str,
    /// Its process id, while one runs.
    pub pid: Option<u32>,
    /// Restarts since start-up.
    pub restarts: u64,
}

/// Probabilities from logits by softmax, computed stably.
pub fn softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f64> = logits
        .iter()
        .map(|&logit| f64::from(logit - max).exp())
        .collect();
    let sum: f64 = exps.iter().sum();
    if sum > 0.0 && sum.is_finite() {
        exps.into_iter().map(|e| e / sum).collect()
    } else {
        vec![1.0 / logits.len().max(1) as f64; logits.len()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_sums_to_one_and_keeps_order() {
        let probabilities = softmax(&[2.0, 1.0, 0.0]);
        let sum: f64 = probabilities.iter().sum();
        assert!((sum - 1.0).abs() < 1e-9);
        assert!(probabilities[0] > probabilities[1] && probabilities[1] > probabilities[2]);
    }

    #[test]
    fn softmax_is_stable_for_large_logits() {
        let probabilities = softmax(&[1000.0, 1000.0]);
        assert!((probabilities[0] - 0.5).abs() < 1e-9);
    }

    #[test]
    fn token_info_is_bounded_and_sorted_without_inventing_anything() {
        let alternative = |text: &str, p: f64| Alternative {
            text: text.into(),
            p,
        };
        let info = TokenInfo {
            p: Some(f64::NAN),
            top: Some(vec![
                alternative("a", 0.1),
                alternative("b", 0.4),
                alternative(&"c".repeat(100), 0.2),
                alternative("d", 1.5),
                alternative("e", 0.05),
                alternative("f", 0.01),
                alternative("g", 0.02),
            ]),
        }
        .bounded();
        assert_eq!(info.p, None);
        let top = info.top.unwrap();
        let texts: Vec<&str> = top.iter().map(|a| a.text.as_str()).collect();
        assert_eq!(
            texts,
            ["b", &"c".repeat(MAX_ALTERNATIVE_CHARS), "a", "e", "g"]
        );
        assert_eq!(TokenInfo::unknown().bounded(), TokenInfo::unknown());
        let some = TokenInfo {
            p: Some(0.5),
            top: Some(Vec::new()),
        };
        assert_eq!(some.clone().bounded(), some);
    }

    #[test]
    fn confidence_is_the_chosen_probability() {
        let choice = Choice {
            options: vec![
                ScoredOption {
                    name: "code".into(),
                    probability: 0.7,
                    raw_probability: None,
                },
                ScoredOption {
                    name: "qa".into(),
                    probability: 0.3,
                    raw_probability: None,
                },
            ],
            chosen: "code".into(),
            reasoning: String::new(),
            scored: true,
        };
        assert!((choice.confidence() - 0.7).abs() < 1e-12);
    }
}
