//! The `openai` and `groq` providers: any OpenAI-compatible chat-completions server (llama.cpp's
//! `llama-server`, Ollama, vLLM, LM Studio) and Groq's API, through async-openai with our own lenient wire
//! types ([`wire`]) and our own transport ([`transport`]: no hidden retries, response headers read).
//!
//! Every call streams. Structured outputs are asked for as `[llm] structured_output` says and always parsed
//! and checked against their schema (`domain::schema`); an answer that does not fit is asked for once more
//! with the problem, and a second miss is [`LlmError::Malformed`]. A choice is asked as the JSON object
//! `{"<key>": "<option>", "<reason key>": "..."}` under an enum; where the server returns `logprobs`, the
//! options' first tokens' log-probabilities at the token where the option starts are turned into
//! probabilities by the same softmax the embedded provider applies to its logits (`scored: true`). Where it
//! returns none (Groq), the choice is the option the model wrote, every probability is 0 and `scored` is false:
//! nothing is invented. The output text has the embedded provider's shape (`prefix + option + suffix + reason
//! + "}`), so callers read both alike.
//!
//! Retries ([`retry`]): 429, 5xx and connection errors before the first token, with exponential backoff and
//! full jitter or the server's `Retry-After`, at most `[llm] max_retries`, counted in
//! `troupe_llm_retries_total`; never once a stream has begun. Readiness is the last observation of the
//! server (a call's outcome or a background `GET /models` every [`PROBE_INTERVAL`]), never a call per probe.
//! The API key goes only into the `Authorization` header; it is scrubbed from every message that leaves.

mod choice;
pub mod retry;
pub mod transport;
pub mod wire;

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::Client;
use async_trait::async_trait;
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use self::choice::{choice_keys, read_choice, score_options};
use self::transport::{HttpFailure, Transport};
use self::wire::{ChatChunk, ChatRequest, ErrorBody, StreamOptions, TokenLogprob, WireMessage};
use super::{
    Alternative, ChatMessage, Choice, LlmError, LlmOutput, LlmProvider, LlmRequest, OutputSpec,
    Role, ScoredOption, TokenInfo, TokenPrices, TokenSink, Usage, TOP_ALTERNATIVES,
};
use crate::config::{LlmSettings, ModelEndpoint, ProviderKind, Secret, StructuredOutput};
use crate::domain::{excerpt, redact_url, schema};
use crate::telemetry::metrics::Metrics;

/// How often the server is probed (`GET /models`) for readiness.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(15);
/// Tokens allowed for a choice's JSON frame (`{"agent": "research", "reason": "` and `"}`), on top of the
/// request's budget for the reason.
const CHOICE_FRAME_TOKENS: u32 = 24;
/// Longest answer read, in bytes: a server streaming more is cut off with an error.
const MAX_ANSWER_BYTES: usize = 1 << 20;

/// What the provider last saw of its server.
#[derive(Debug, Clone, PartialEq)]
enum Readiness {
    /// Nothing yet (neither a probe nor a call has answered).
    Unknown,
    /// The last probe or call got an answer.
    Up,
    /// The last probe or call could not reach the server, or was refused; why.
    Down(String),
}

/// A client of one OpenAI-compatible server and model.
pub struct OpenAiProvider {
    name: &'static str,
    model: String,
    client: Client<OpenAIConfig>,
    structured: StructuredOutput,
    read_timeout: Duration,
    request_timeout: Duration,
    max_retries: u32,
    temperature: f32,
    seed: u32,
    logprobs: bool,
    /// Set when the server refused a request for the sampled tokens' log-probabilities (400): text and
    /// JSON calls stop asking (their tokens then carry no probability).
    refuses_logprobs: std::sync::atomic::AtomicBool,
    top_logprobs: u32,
    prices: TokenPrices,
    metrics: Metrics,
    key: Option<Secret>,
    readiness: Arc<Mutex<Readiness>>,
}

/// What a request asks for of the tokens' log-probabilities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Logprobs {
    /// Nothing.
    Off,
    /// The sampled tokens' with [`TOP_ALTERNATIVES`] alternatives each (a streamed piece's probability and
    /// alternatives, `p` and `top` of its `llm.token` event).
    Sampled,
    /// With `top_logprobs` alternatives per token (to score a choice's options).
    WithAlternatives,
}

/// The probability of a streamed piece from its tokens' log-probabilities: their product, `exp(Σ logprob)`
/// (the probability of the piece's text given what came before). `None` when the chunk carried none.
fn piece_probability(tokens: &[TokenLogprob]) -> Option<f64> {
    if tokens.is_empty() {
        return None;
    }
    let sum: f64 = tokens.iter().map(|token| token.logprob).sum();
    (!sum.is_nan()).then(|| sum.exp().clamp(0.0, 1.0))
}

/// What a chunk's log-probabilities say of its piece: its probability ([`piece_probability`]) and the
/// alternatives at its first token (the server's `top_logprobs` there, as probabilities, bounded). `top` is
/// `None` when the server sent none (Groq, or a server that ignores `top_logprobs`): nothing is invented.
fn piece_info(tokens: &[TokenLogprob]) -> TokenInfo {
    let top = tokens
        .first()
        .filter(|token| !token.top_logprobs.is_empty())
        .map(|token| {
            token
                .top_logprobs
                .iter()
                .map(|alternative| Alternative {
                    text: alternative.token.clone(),
                    p: alternative.logprob.exp(),
                })
                .collect()
        });
    TokenInfo {
        p: piece_probability(tokens),
        top,
    }
    .bounded()
}

/// One streamed answer.
#[derive(Debug, Default)]
struct Streamed {
    text: String,
    usage: Usage,
    generation_seconds: f64,
    logprobs: Vec<TokenLogprob>,
    finish_reason: Option<String>,
}

/// A failed attempt: the error, and whether (and why, for the metric) it may be retried.
struct Failure {
    error: LlmError,
    retry_reason: Option<&'static str>,
    retry_after: Option<Duration>,
}

impl OpenAiProvider {
    /// A provider for `endpoint` (an `openai` or `groq` one) with the `[llm]` timeouts, retries, sampling,
    /// structured-output mode and prices, sending `key` (if any) as a bearer token. Makes no call; starts the
    /// background readiness probe when a tokio runtime is running.
    pub fn new(
        settings: &LlmSettings,
        endpoint: &ModelEndpoint,
        key: Option<&Secret>,
        metrics: Metrics,
    ) -> Result<Self, LlmError> {
        let name = match endpoint.provider {
            ProviderKind::Groq => "groq",
            ProviderKind::Openai | ProviderKind::Embedded => "openai",
        };
        if let Some(key) = key {
            if reqwest::header::HeaderValue::from_str(&format!("Bearer {}", key.expose())).is_err()
            {
                return Err(LlmError::InvalidRequest(format!(
                    "the {name} API key is not a valid HTTP header value (printable ASCII only)"
                )));
            }
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(settings.connect_timeout_seconds))
            .read_timeout(Duration::from_secs(settings.read_timeout_seconds))
            .build()
            .map_err(|e| LlmError::Unavailable(format!("build the HTTP client: {e}")))?;
        let base = endpoint.base_url.trim_end_matches('/').to_owned();
        // org and project emptied: OpenAIConfig's defaults read OPENAI_ORG_ID/OPENAI_PROJECT_ID, and only
        // `config` reads the environment here.
        let config = OpenAIConfig::new()
            .with_api_base(base.clone())
            .with_api_key(key.map(|key| key.expose().to_owned()).unwrap_or_default())
            .with_org_id("")
            .with_project_id("");
        let client = Client::build(http.clone(), config).with_http_service(Transport::new(
            http.clone(),
            name,
            metrics.clone(),
        ));
        let price = settings.price_of(&endpoint.model);
        let readiness = Arc::new(Mutex::new(Readiness::Unknown));
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(probe(
                Arc::downgrade(&readiness),
                http,
                format!("{base}/models"),
                key.cloned(),
            ));
        }
        Ok(OpenAiProvider {
            name,
            model: endpoint.model.clone(),
            client,
            structured: settings.structured_output,
            read_timeout: Duration::from_secs(settings.read_timeout_seconds),
            request_timeout: Duration::from_secs(settings.request_timeout_seconds),
            max_retries: settings.max_retries,
            temperature: settings.temperature,
            seed: settings.seed,
            // Groq refuses requests that ask for logprobs (400); its choices are unscored.
            logprobs: endpoint.provider != ProviderKind::Groq,
            refuses_logprobs: std::sync::atomic::AtomicBool::new(false),
            top_logprobs: settings.top_logprobs,
            prices: price.into(),
            metrics,
            key: key.cloned(),
            readiness,
        })
    }

    /// Runs a call to its end (the caller bounds it by time and cancellation).
    async fn run(&self, request: &LlmRequest, on_token: &TokenSink) -> Result<LlmOutput, LlmError> {
        match &request.output {
            OutputSpec::Text => {
                let messages = wire_messages(&request.messages, None);
                let logprobs = self.sampled_logprobs();
                let body = self.body(messages, request.max_tokens, None, logprobs);
                let streamed = self.stream(&body, logprobs, on_token).await?;
                Ok(LlmOutput {
                    text: streamed.text,
                    choice: None,
                    usage: streamed.usage,
                    generation_seconds: streamed.generation_seconds,
                })
            }
            OutputSpec::Json { schema } => {
                let hint =
                    (self.structured == StructuredOutput::Prompt).then(|| schema_hint(schema));
                let (_, streamed, usage, seconds) = self
                    .structured_call(
                        request,
                        schema,
                        hint,
                        request.max_tokens,
                        self.sampled_logprobs(),
                        on_token,
                        |s| read_json(schema, &s.text),
                    )
                    .await?;
                Ok(LlmOutput {
                    text: streamed.text.trim().to_owned(),
                    choice: None,
                    usage,
                    generation_seconds: seconds,
                })
            }
            OutputSpec::Choice {
                prefix,
                options,
                suffix,
            } => {
                self.choose(request, prefix, options, suffix, on_token)
                    .await
            }
        }
    }

    async fn choose(
        &self,
        request: &LlmRequest,
        prefix: &str,
        options: &[String],
        suffix: &str,
        on_token: &TokenSink,
    ) -> Result<LlmOutput, LlmError> {
        if options.is_empty() {
            return Err(LlmError::InvalidRequest("a choice needs options".into()));
        }
        let (key, reason_key) = choice_keys(prefix, suffix).ok_or_else(|| {
            LlmError::InvalidRequest(format!(
                "a choice's prefix and suffix must name its JSON keys (got {prefix:?} and {suffix:?})"
            ))
        })?;
        let schema = json!({
            "type": "object",
            "properties": {
                key.as_str(): { "type": "string", "enum": options },
                reason_key.as_str(): { "type": "string" }
            },
            "required": [key, reason_key],
            "additionalProperties": false
        });
        // The embedded provider prefills the object's start; a server cannot be prefilled, so it is told.
        let mut hint = format!(
            "Reply with only a JSON object: {{\"{key}\": \"<one of: {}>\", \"{reason_key}\": \"<a short reason>\"}}.",
            options.join(", ")
        );
        if self.structured == StructuredOutput::Prompt {
            hint = format!("{hint} {}", schema_hint(&schema));
        }
        let ((chosen, reasoning), streamed, usage, seconds) = self
            .structured_call(
                request,
                &schema,
                Some(hint),
                request.max_tokens.saturating_add(CHOICE_FRAME_TOKENS),
                if self.logprobs {
                    Logprobs::WithAlternatives
                } else {
                    Logprobs::Off
                },
                on_token,
                |s| {
                    read_choice(
                        &schema,
                        &s.text,
                        s.finish_reason.as_deref(),
                        &key,
                        &reason_key,
                        options,
                    )
                },
            )
            .await?;
        let scores = score_options(&streamed.logprobs, &streamed.text, &key, options);
        let scored = scores.is_some();
        let probabilities = scores.unwrap_or_else(|| vec![0.0; options.len()]);
        let choice = Choice {
            options: options
                .iter()
                .zip(probabilities)
                .map(|(name, probability)| ScoredOption {
                    name: name.clone(),
                    probability,
                    raw_probability: None,
                })
                .collect(),
            chosen,
            reasoning,
            scored,
        };
        Ok(LlmOutput {
            text: format!("{prefix}{}{suffix}{}\"}}", choice.chosen, choice.reasoning),
            choice: Some(choice),
            usage,
            generation_seconds: seconds,
        })
    }

    /// A structured call: streams an answer, reads it with `read`; an answer that does not fit is asked for
    /// once more with the problem appended, and a second miss is [`LlmError::Malformed`]. Returns what `read`
    /// made of the accepted answer, that answer, and the usage and generation time of both attempts. Both
    /// attempts stream to `on_token` (the event log shows the rejected answer, then the second).
    #[allow(clippy::too_many_arguments)]
    async fn structured_call<T>(
        &self,
        request: &LlmRequest,
        schema: &Value,
        hint: Option<String>,
        max_tokens: u32,
        logprobs: Logprobs,
        on_token: &TokenSink,
        read: impl Fn(&Streamed) -> Result<T, String>,
    ) -> Result<(T, Streamed, Usage, f64), LlmError> {
        let mut messages = wire_messages(&request.messages, hint.as_deref());
        let mut usage = Usage::default();
        let mut seconds = 0.0;
        for attempt in 0..2 {
            let body = self.body(messages.clone(), max_tokens, Some(schema), logprobs);
            let streamed = self.stream(&body, logprobs, on_token).await?;
            usage.input_tokens += streamed.usage.input_tokens;
            usage.output_tokens += streamed.usage.output_tokens;
            seconds += streamed.generation_seconds;
            match read(&streamed) {
                Ok(value) => return Ok((value, streamed, usage, seconds)),
                Err(problem) if attempt == 0 => {
                    tracing::info!(purpose = %request.purpose, %problem, "structured answer does not fit its schema; asking once more");
                    messages.push(WireMessage {
                        role: "assistant",
                        content: streamed.text,
                    });
                    messages.push(WireMessage {
                        role: "user",
                        content: format!(
                            "That answer does not fit the required JSON schema: {problem}. Reply again with only the corrected JSON object."
                        ),
                    });
                }
                Err(problem) => {
                    return Err(LlmError::Malformed(format!(
                        "the answer did not fit its schema twice: {problem}; answer: {}",
                        excerpt(&streamed.text)
                    )))
                }
            }
        }
        Err(LlmError::Malformed("no answer".into()))
    }

    /// How text and JSON calls ask for log-probabilities: the sampled tokens' only, unless the provider
    /// is Groq (which refuses them) or the server refused them before.
    fn sampled_logprobs(&self) -> Logprobs {
        if self.logprobs
            && !self
                .refuses_logprobs
                .load(std::sync::atomic::Ordering::Relaxed)
        {
            Logprobs::Sampled
        } else {
            Logprobs::Off
        }
    }

    /// The request body.
    fn body(
        &self,
        messages: Vec<WireMessage>,
        max_tokens: u32,
        schema: Option<&Value>,
        logprobs: Logprobs,
    ) -> ChatRequest {
        let (response_format, json_schema) = match (schema, self.structured) {
            (Some(schema), StructuredOutput::ResponseFormat) => (
                Some(json!({
                    "type": "json_schema",
                    "json_schema": { "name": "answer", "schema": schema, "strict": true }
                })),
                None,
            ),
            (Some(schema), StructuredOutput::LlamaCpp) => (None, Some(schema.clone())),
            _ => (None, None),
        };
        ChatRequest {
            model: self.model.clone(),
            messages,
            stream: true,
            stream_options: StreamOptions {
                include_usage: true,
            },
            max_tokens,
            temperature: self.temperature,
            seed: Some(self.seed),
            response_format,
            json_schema,
            logprobs: (logprobs != Logprobs::Off).then_some(true),
            top_logprobs: match logprobs {
                Logprobs::Off => None,
                // The token view's alternatives (llama-server also reports the sampled token's only when
                // asked for at least one).
                Logprobs::Sampled => u32::try_from(TOP_ALTERNATIVES).ok(),
                Logprobs::WithAlternatives => Some(self.top_logprobs),
            },
        }
    }

    /// Streams one answer: every content piece to `on_token` with its probability and alternatives where
    /// the server gives them, the usage from the last chunk (or, where the server sends none, the number of
    /// pieces as output tokens), the time from the first piece to the end. `logprobs` is what `body` asks.
    async fn stream(
        &self,
        body: &ChatRequest,
        logprobs: Logprobs,
        on_token: &TokenSink,
    ) -> Result<Streamed, LlmError> {
        let sampled_only = logprobs == Logprobs::Sampled;
        let mut stream = match self.open(body).await {
            // A server that refuses log-probabilities still answers without them (tokens without `p`).
            Err(LlmError::Http { status: 400, .. }) if sampled_only => {
                self.refuses_logprobs
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                tracing::info!(
                    provider = self.name,
                    "the server refused logprobs; asking without"
                );
                let plain = ChatRequest {
                    logprobs: None,
                    top_logprobs: None,
                    ..body.clone()
                };
                self.open(&plain).await?
            }
            opened => opened?,
        };
        let mut streamed = Streamed::default();
        let mut reported = None;
        let mut pieces = 0u64;
        let mut first_piece: Option<Instant> = None;
        loop {
            let next = tokio::time::timeout(self.read_timeout, stream.next())
                .await
                .map_err(|_| LlmError::Timeout(self.read_timeout.as_secs()))?;
            let Some(item) = next else { break };
            let chunk: ChatChunk = item.map_err(|e| self.classify(e).error)?;
            if let Some(error) = &chunk.error {
                let body = ErrorBody::from_value(error).unwrap_or_default();
                let status = body
                    .code
                    .as_deref()
                    .and_then(|code| code.parse::<u16>().ok())
                    .filter(|status| (400..600).contains(status))
                    .unwrap_or(500);
                return Err(LlmError::Http {
                    status,
                    message: self.scrub(format!(
                        "error inside the stream after {pieces} pieces: {}",
                        body.describe()
                    )),
                });
            }
            if let Some(usage) = chunk.reported_usage() {
                reported = Some(usage);
            }
            if let Some(choice) = chunk.choices.into_iter().next() {
                let tokens = choice.logprobs.and_then(|l| l.content).unwrap_or_default();
                if let Some(content) = choice.delta.content.filter(|c| !c.is_empty()) {
                    first_piece.get_or_insert_with(Instant::now);
                    pieces += 1;
                    on_token(&content, piece_info(&tokens));
                    streamed.text.push_str(&content);
                    if streamed.text.len() > MAX_ANSWER_BYTES {
                        return Err(LlmError::Malformed(format!(
                            "the answer exceeds {MAX_ANSWER_BYTES} bytes"
                        )));
                    }
                    // The log-probabilities are kept aligned with the text: a piece whose tokens do not
                    // spell it stands as one token without alternatives (nothing to score there).
                    let spelled = tokens.iter().map(|t| t.token.len()).sum::<usize>()
                        == content.len()
                        && tokens.iter().map(|t| t.token.as_str()).collect::<String>() == content;
                    if spelled {
                        streamed.logprobs.extend(tokens);
                    } else if !streamed.logprobs.is_empty() || !tokens.is_empty() {
                        streamed.logprobs.push(TokenLogprob {
                            token: content,
                            ..TokenLogprob::default()
                        });
                    }
                }
                // Tokens of a chunk without content (llama.cpp sends one with the role) are not text.
                if choice.finish_reason.is_some() {
                    streamed.finish_reason = choice.finish_reason;
                }
            }
        }
        streamed.generation_seconds = first_piece.map_or(0.0, |t| t.elapsed().as_secs_f64());
        streamed.usage = match reported {
            Some(usage) => Usage {
                input_tokens: usage.prompt_tokens,
                output_tokens: usage.completion_tokens,
            },
            None => Usage {
                input_tokens: 0,
                output_tokens: pieces,
            },
        };
        Ok(streamed)
    }

    /// Sends the request until a stream begins: retries 429, 5xx and connection errors with backoff (or the
    /// server's `Retry-After`), at most `max_retries` times, each counted.
    async fn open(
        &self,
        body: &ChatRequest,
    ) -> Result<
        std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<ChatChunk, OpenAIError>> + Send>>,
        LlmError,
    > {
        let mut retry = 0;
        loop {
            let failure = match self
                .client
                .chat()
                .create_stream_byot::<&ChatRequest, ChatChunk>(body)
                .await
            {
                Ok(stream) => return Ok(stream),
                Err(error) => self.classify(error),
            };
            match failure.retry_reason {
                Some(reason) if retry < self.max_retries => {
                    let wait = retry::delay(retry, failure.retry_after, retry::jitter_unit());
                    self.metrics
                        .llm_retries
                        .with_label_values(&[self.name, reason])
                        .inc();
                    tracing::warn!(
                        provider = self.name,
                        reason,
                        retry = retry + 1,
                        wait_ms = wait.as_millis() as u64,
                        error = %failure.error,
                        "model call failed before its first token; retrying"
                    );
                    tokio::time::sleep(wait).await;
                    retry += 1;
                }
                _ => return Err(failure.error),
            }
        }
    }

    /// What an async-openai error means here, and whether it may be retried.
    fn classify(&self, error: OpenAIError) -> Failure {
        let plain = |error: LlmError| Failure {
            error,
            retry_reason: None,
            retry_after: None,
        };
        match error {
            OpenAIError::Boxed(boxed) => match boxed.downcast::<HttpFailure>() {
                Ok(http) => self.http_failure(*http),
                Err(other) => plain(LlmError::Model(self.scrub(other.to_string()))),
            },
            OpenAIError::ApiError(api) => self.http_failure(HttpFailure {
                status: api.status_code.as_u16(),
                retry_after: None,
                body: ErrorBody {
                    message: api.api_error.message,
                    kind: api.api_error.r#type,
                    code: api.api_error.code,
                },
            }),
            OpenAIError::Reqwest(error) if error.is_builder() => {
                plain(LlmError::InvalidRequest(self.scrub(error.to_string())))
            }
            OpenAIError::Reqwest(error) => Failure {
                error: LlmError::Connect(self.scrub(error_chain(&error.without_url()))),
                retry_reason: Some("connect"),
                retry_after: None,
            },
            OpenAIError::JSONDeserialize(error, content) => plain(LlmError::Malformed(
                self.scrub(format!("unreadable chunk ({error}): {}", excerpt(&content))),
            )),
            OpenAIError::StreamError(error) => plain(LlmError::Connect(
                self.scrub(format!("stream broke: {error}")),
            )),
            OpenAIError::InvalidArgument(message) => {
                plain(LlmError::InvalidRequest(self.scrub(message)))
            }
            other => plain(LlmError::Model(self.scrub(other.to_string()))),
        }
    }

    fn http_failure(&self, http: HttpFailure) -> Failure {
        let message = self.scrub(http.body.describe());
        let (error, retry_reason) = match http.status {
            429 => (
                LlmError::RateLimited {
                    retry_after_seconds: http.retry_after.map(|wait| wait.as_secs()),
                    message,
                },
                Some("rate_limited"),
            ),
            401 | 403 => (LlmError::Auth(format!("{}: {message}", http.status)), None),
            status @ 500..=599 => (LlmError::Http { status, message }, Some("http_5xx")),
            status => (LlmError::Http { status, message }, None),
        };
        Failure {
            error,
            retry_reason,
            retry_after: http.retry_after,
        }
    }

    /// `text` with the API key, should a server echo it, replaced.
    fn scrub(&self, text: String) -> String {
        match &self.key {
            Some(key) if !key.expose().is_empty() && text.contains(key.expose()) => {
                text.replace(key.expose(), "[redacted]")
            }
            _ => text,
        }
    }

    /// Notes what a call showed of the server.
    fn observe(&self, result: &Result<LlmOutput, LlmError>) {
        let seen = match result {
            Ok(_) => Readiness::Up,
            Err(LlmError::Connect(reason)) => Readiness::Down(format!("unreachable: {reason}")),
            Err(LlmError::Auth(reason)) => Readiness::Down(reason.clone()),
            Err(LlmError::Http { status, message }) if *status >= 500 => {
                Readiness::Down(format!("answered {status}: {message}"))
            }
            // Rate limits, timeouts, bad answers and cancellations say the server is there.
            Err(_) => Readiness::Up,
        };
        set_readiness(&self.readiness, seen);
    }
}

#[async_trait]
impl LlmProvider for OpenAiProvider {
    fn provider_name(&self) -> &'static str {
        self.name
    }

    fn model_name(&self) -> &str {
        &self.model
    }

    fn model_config(&self) -> serde_json::Value {
        // The server's address is left out: it may carry credentials, and the same model served elsewhere
        // answers the same.
        serde_json::json!({
            "provider": self.name,
            "model": self.model,
            "temperature": self.temperature,
            "seed": self.seed,
        })
    }

    async fn complete(
        &self,
        request: LlmRequest,
        on_token: TokenSink,
        cancel: CancellationToken,
    ) -> Result<LlmOutput, LlmError> {
        // Dropping the call's future drops the response stream and with it the connection: cancellation and
        // the deadline stop generation at once.
        let result = tokio::select! {
            biased;
            () = cancel.cancelled() => Err(LlmError::Cancelled),
            outcome = tokio::time::timeout(self.request_timeout, self.run(&request, &on_token)) => {
                outcome.unwrap_or(Err(LlmError::Timeout(self.request_timeout.as_secs())))
            }
        };
        self.observe(&result);
        result
    }

    fn check_ready(&self) -> Result<(), LlmError> {
        let readiness = self
            .readiness
            .lock()
            .map(|r| r.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone());
        match readiness {
            Readiness::Up => Ok(()),
            Readiness::Unknown => Err(LlmError::Unavailable(format!(
                "{} server not reached yet",
                self.name
            ))),
            Readiness::Down(reason) => Err(LlmError::Unavailable(format!(
                "{} server: {reason}",
                self.name
            ))),
        }
    }

    fn price_per_million_tokens(&self) -> TokenPrices {
        self.prices
    }
}

fn set_readiness(readiness: &Mutex<Readiness>, seen: Readiness) {
    match readiness.lock() {
        Ok(mut guard) => *guard = seen,
        Err(poisoned) => *poisoned.into_inner() = seen,
    }
}

/// Probes `models_url` every [`PROBE_INTERVAL`] until the provider is dropped.
async fn probe(
    readiness: Weak<Mutex<Readiness>>,
    http: reqwest::Client,
    models_url: String,
    key: Option<Secret>,
) {
    loop {
        let mut request = http.get(&models_url).timeout(PROBE_INTERVAL);
        if let Some(key) = key.as_ref().filter(|key| !key.expose().is_empty()) {
            request = request.bearer_auth(key.expose());
        }
        let seen = match request.send().await {
            Ok(response) if response.status().is_success() => Readiness::Up,
            Ok(response) => Readiness::Down(format!(
                "GET {} answered {}",
                redact_url(&models_url),
                response.status()
            )),
            Err(error) => Readiness::Down(format!(
                "GET {}: {}",
                redact_url(&models_url),
                error_chain(&error.without_url())
            )),
        };
        let Some(readiness) = readiness.upgrade() else {
            return;
        };
        set_readiness(&readiness, seen);
        drop(readiness);
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
}

/// An error with its sources, `: `-joined.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The request's messages on the wire, with `hint` appended to the system message (or first, if none).
fn wire_messages(messages: &[ChatMessage], hint: Option<&str>) -> Vec<WireMessage> {
    let mut wire: Vec<WireMessage> = messages
        .iter()
        .map(|message| WireMessage {
            role: match message.role {
                Role::System => "system",
                Role::User => "user",
            },
            content: message.content.clone(),
        })
        .collect();
    if let Some(hint) = hint {
        match wire.iter_mut().find(|message| message.role == "system") {
            Some(system) => {
                system.content.push(' ');
                system.content.push_str(hint);
            }
            None => wire.insert(
                0,
                WireMessage {
                    role: "system",
                    content: hint.to_owned(),
                },
            ),
        }
    }
    wire
}

/// The schema told in the prompt (`structured_output = "prompt"`).
fn schema_hint(schema: &Value) -> String {
    format!("Reply with only a JSON object valid for this JSON Schema: {schema}")
}

/// Parses a JSON answer and checks it against its schema.
fn read_json(schema: &Value, text: &str) -> Result<Value, String> {
    let value: Value =
        serde_json::from_str(text.trim()).map_err(|e| format!("the answer is not JSON ({e})"))?;
    match schema::problem(schema, &value, "answer") {
        Some(problem) => Err(problem),
        None => Ok(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_answers_are_checked_against_their_schema() {
        let schema = json!({
            "type": "object",
            "properties": { "steps": { "type": "array", "items": { "type": "string" }, "minItems": 1 } },
            "required": ["steps"]
        });
        assert!(read_json(&schema, " {\"steps\": [\"a\"]} ").is_ok());
        assert_eq!(
            read_json(&schema, "{\"steps\": []}"),
            Err("answer.steps must have at least 1 items".into())
        );
        assert!(read_json(&schema, "{\"steps\": [")
            .unwrap_err()
            .contains("not JSON"));
    }

    #[test]
    fn a_piece_carries_the_servers_alternatives_at_its_first_token_or_none() {
        use super::wire::TopLogprob;
        let token = |text: &str, logprob: f64, top: &[(&str, f64)]| TokenLogprob {
            token: text.into(),
            logprob,
            top_logprobs: top
                .iter()
                .map(|(token, logprob)| TopLogprob {
                    token: (*token).into(),
                    logprob: *logprob,
                })
                .collect(),
        };
        let tokens = [
            token(
                " sea",
                -0.5,
                &[
                    (" ocean", -0.4),
                    (" sea", -0.5),
                    (" lake", -2.0),
                    (" river", -3.0),
                    (" pond", -4.0),
                    (" bay", -5.0),
                ],
            ),
            token("s", -0.1, &[("s", -0.1)]),
        ];
        let info = piece_info(&tokens);
        assert!((info.p.unwrap() - (-0.6_f64).exp()).abs() < 1e-12);
        let top = info.top.unwrap();
        let texts: Vec<&str> = top.iter().map(|a| a.text.as_str()).collect();
        assert_eq!(texts, [" ocean", " sea", " lake", " river", " pond"]);
        assert!((top[1].p - (-0.5_f64).exp()).abs() < 1e-12);
        // No log-probabilities (Groq), or none of the alternatives: nothing invented.
        assert_eq!(piece_info(&[]), TokenInfo::unknown());
        let bare = piece_info(&[token("x", -1.0, &[])]);
        assert!(bare.p.is_some() && bare.top.is_none());
    }

    #[test]
    fn the_hint_joins_the_system_message() {
        let messages = vec![ChatMessage::system("Be brief."), ChatMessage::user("hi")];
        let wire = wire_messages(&messages, Some("Reply in JSON."));
        assert_eq!(wire[0].content, "Be brief. Reply in JSON.");
        assert_eq!(wire[1].role, "user");
        let wire = wire_messages(&[ChatMessage::user("hi")], Some("Reply in JSON."));
        assert_eq!((wire[0].role, wire.len()), ("system", 2));
    }
}
