//! `[llm]` and `[budget]`: which models serve the agents (the primary provider, per-agent overrides, the
//! opt-in Groq fallback), how the embedded model samples, what tokens cost, and what a task may spend.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use crate::domain::{redact_url, AgentKind};

/// A secret (an API key): `Debug` never shows it, and it is not serialized back.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// A secret from its text.
    pub fn new(text: impl Into<String>) -> Self {
        Secret(text.into())
    }

    /// The secret itself, for the one place that sends it (an `Authorization` header).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// Which model provider serves a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// llama.cpp in a supervised child process; `model` is a GGUF file.
    Embedded,
    /// Any OpenAI-compatible server (Ollama, llama.cpp's server, vLLM, LM Studio); `model` is the server's
    /// model name, `base_url` its API root including `/v1`.
    Openai,
    /// Groq's cloud API (OpenAI wire format), only when `[llm.groq] enabled`; key from `GROQ_API_KEY`.
    Groq,
}

impl ProviderKind {
    /// The configured name.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Embedded => "embedded",
            ProviderKind::Openai => "openai",
            ProviderKind::Groq => "groq",
        }
    }
}

/// How the `openai` provider asks for structured output (a plan, Code's `{code, test}`, a verdict, a tool
/// call). Whatever the mode, the answer is parsed and checked against the schema, and an answer that does not
/// fit is asked for once more with the error; a second miss is an error, never a silent unparsed answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StructuredOutput {
    /// `response_format: {"type": "json_schema", ...}` (OpenAI, Groq, vLLM, recent Ollama, llama.cpp's server).
    ResponseFormat,
    /// llama.cpp's own top-level `json_schema` request field (older llama.cpp servers).
    LlamaCpp,
    /// No constraint on the server: the schema is in the prompt and the answer is validated (and retried once).
    Prompt,
}

/// One model: the provider, the model and, for `openai`, the server. In `[llm.agents.<agent>]` and
/// `[budget.downgrade]` every key is optional and defaults to the `[llm]` value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
pub struct ModelOverride {
    /// Provider.
    #[serde(default)]
    pub provider: Option<ProviderKind>,
    /// Model: a GGUF file for `embedded`, the server's model name otherwise.
    #[serde(default)]
    pub model: Option<String>,
    /// API root of an `openai` server, including `/v1`.
    #[serde(default)]
    pub base_url: Option<String>,
}

/// A model fully resolved: which provider, which model, which server.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModelEndpoint {
    /// Provider.
    pub provider: ProviderKind,
    /// A GGUF file for `embedded`, the server's model name otherwise.
    pub model: String,
    /// API root for `openai` and `groq`; empty for `embedded`.
    pub base_url: String,
}

impl ModelEndpoint {
    /// The embedded model file.
    pub fn model_path(&self) -> PathBuf {
        PathBuf::from(&self.model)
    }
}

/// Whether falling back to the cloud needs a person's yes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FallbackMode {
    /// Fall back at once (counted, an `llm.fallback` event).
    Auto,
    /// Pause the task (`task.paused`, reason `cloud_fallback`, the estimated cost) until
    /// `POST /api/v1/tasks/{id}/confirm`; declined or unanswered in `confirm_timeout_seconds`: the task fails.
    Confirm,
}

/// Where a failing call may go instead of the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FallbackTarget {
    /// No fallback: a provider error is the call's error.
    None,
    /// Groq (needs `[llm.groq] enabled = true`).
    Groq,
}

/// `[llm.groq]`: the opt-in cloud provider. Off by default: nothing leaves the machine unless configured.
#[derive(Debug, Clone, Deserialize)]
pub struct GroqSettings {
    /// false: Groq is never called, whatever else says so (and naming it is a configuration error).
    pub enabled: bool,
    /// Groq's model name.
    pub model: String,
    /// Groq's OpenAI-compatible API root (overridable, e.g. for tests).
    pub base_url: String,
    /// From `GROQ_API_KEY` (or `TROUPE__LLM__GROQ__API_KEY`); never logged.
    #[serde(default)]
    pub api_key: Option<Secret>,
}

/// The embedded model's sampler chain (llama.cpp), applied before greedy or seeded sampling. Penalties
/// keep greedy decoding out of loops (`0, 0, 0, ...` to the token budget).
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct SamplingSettings {
    /// Repetition penalty on tokens seen in the last `repeat_last_n` (1.0: off).
    pub repeat_penalty: f32,
    /// Window of the repetition penalty, in tokens (0: off, -1: the whole context).
    pub repeat_last_n: i32,
    /// DRY ("don't repeat yourself") multiplier (0: off): penalises extending a sequence already seen.
    pub dry_multiplier: f32,
    /// DRY base: how fast the penalty grows with the repeated sequence's length.
    pub dry_base: f32,
    /// DRY: repeats up to this long are free.
    pub dry_allowed_length: i32,
    /// DRY window, in tokens (-1: the whole context).
    pub dry_penalty_last_n: i32,
}

/// US dollars per million tokens of one model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
pub struct PriceSettings {
    /// Per million input (prompt) tokens.
    pub input_per_million: f64,
    /// Per million output (completion) tokens.
    pub output_per_million: f64,
}

/// `[llm]`
#[derive(Debug, Clone, Deserialize)]
pub struct LlmSettings {
    /// Primary provider of every agent without its own `[llm.agents.<agent>]`.
    pub provider: ProviderKind,
    /// The primary model: a GGUF file for `embedded`, the server's model name for `openai`.
    pub model: String,
    /// API root of the `openai` server, including `/v1` (e.g. `http://127.0.0.1:11434/v1` for Ollama).
    pub base_url: String,
    /// The `openai` server's key, from `OPENAI_API_KEY` or `TROUPE__LLM__API_KEY`; never logged.
    #[serde(default)]
    pub api_key: Option<Secret>,
    /// How structured outputs are asked of an `openai` server.
    pub structured_output: StructuredOutput,
    /// Seconds to establish a connection to a remote server.
    pub connect_timeout_seconds: u64,
    /// Longest silence while reading a remote server's answer (between streamed pieces), in seconds.
    pub read_timeout_seconds: u64,
    /// Alternatives a remote server is asked for per token when a choice is scored from `logprobs`: an option
    /// whose first token is not among them gets probability 0, and a choice none of whose options is among
    /// them is unscored. OpenAI allows at most 20; llama.cpp's server takes more (a small model ranks the
    /// options lower, so it needs more).
    pub top_logprobs: u32,
    /// Retries of a remote call that failed before its first token (429, 5xx, connection errors), with
    /// exponential backoff and jitter, honouring `Retry-After`. Never after a stream has begun.
    pub max_retries: u32,
    /// Inference threads (embedded).
    pub threads: u32,
    /// Context window in tokens (embedded).
    pub context_size: u32,
    /// 0 is greedy.
    pub temperature: f32,
    /// Sampling seed.
    pub seed: u32,
    /// Program hosting the embedded model; empty means this executable.
    pub worker_command: String,
    /// Longest a model call may take, in seconds.
    pub request_timeout_seconds: u64,
    /// Calls waiting for the embedded model at once; a call beyond them waits (raced against its task's
    /// cancellation) until one leaves, so the queue never grows past this.
    pub max_queued_calls: usize,
    /// Token budgets.
    pub limits: LlmLimits,
    /// The embedded model's sampler chain.
    pub sampling: SamplingSettings,
    /// Per-agent models (`[llm.agents.code] model = "..."`), over the primary.
    #[serde(default)]
    pub agents: BTreeMap<String, ModelOverride>,
    /// Named models a task may run on instead (`[llm.models.<name>]`, each over the primary; a task's
    /// `options.model`, an experiment's variant): every agent of that task uses it.
    #[serde(default)]
    pub models: BTreeMap<String, ModelOverride>,
    /// The opt-in cloud provider.
    pub groq: GroqSettings,
    /// Where a call goes when the primary fails.
    pub fallback: FallbackTarget,
    /// Whether that needs a person's yes.
    pub fallback_mode: FallbackMode,
    /// How long a task waits for a confirmation, in seconds.
    pub confirm_timeout_seconds: u64,
    /// Prices by model name; a model not listed costs nothing (local).
    #[serde(default)]
    pub prices: BTreeMap<String, PriceSettings>,
}

/// `[llm.limits]`: token budgets per kind of call.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct LlmLimits {
    /// The Director's plan.
    pub plan_tokens: u32,
    /// The reasoning after an agent choice.
    pub decision_reason_tokens: u32,
    /// A Research or Code step.
    pub work_tokens: u32,
    /// A QA verdict (and QA's tool call to run a test).
    pub verdict_tokens: u32,
    /// Code's answer: code and a test as JSON. An answer cut off by this budget is an attempt without code.
    pub code_tokens: u32,
}

/// What happens when a model call would take a task over its budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnExceed {
    /// The task fails with the reason.
    Fail,
    /// The rest of the task runs on `[budget.downgrade]` (a cheaper or local model).
    Downgrade,
}

/// `[budget]`: what one task may spend, unless its `options.budget` says otherwise.
#[derive(Debug, Clone, Deserialize)]
pub struct BudgetSettings {
    /// Most tokens (input and output) per task; 0: no limit.
    pub max_tokens: u64,
    /// Most US dollars per task; 0: no limit.
    pub max_cost_usd: f64,
    /// What a call that would exceed the budget does.
    pub on_exceed: OnExceed,
    /// The model the rest of the task uses after a downgrade (keys default to `[llm]`'s).
    #[serde(default)]
    pub downgrade: ModelOverride,
}

impl LlmSettings {
    /// The primary model.
    pub fn primary(&self) -> ModelEndpoint {
        self.resolve(&ModelOverride::default())
    }

    /// A model override filled in from the primary (a provider switched to `groq` takes Groq's model and
    /// server unless named).
    pub fn resolve(&self, over: &ModelOverride) -> ModelEndpoint {
        let provider = over.provider.unwrap_or(self.provider);
        // The primary's model and server carry over only to the same provider: an embedded GGUF path is no
        // server's model name. Another provider without its own model is reported by `problems`.
        let inherited = |own: &Option<String>, primary: &String| {
            own.clone().unwrap_or_else(|| {
                if provider == self.provider {
                    primary.clone()
                } else {
                    String::new()
                }
            })
        };
        let (model, base_url) = match provider {
            ProviderKind::Groq => (
                over.model
                    .clone()
                    .unwrap_or_else(|| self.groq.model.clone()),
                over.base_url
                    .clone()
                    .unwrap_or_else(|| self.groq.base_url.clone()),
            ),
            ProviderKind::Embedded => (inherited(&over.model, &self.model), String::new()),
            ProviderKind::Openai => (
                inherited(&over.model, &self.model),
                inherited(&over.base_url, &self.base_url),
            ),
        };
        ModelEndpoint {
            provider,
            model,
            base_url,
        }
    }

    /// The model of `agent`: its `[llm.agents.<agent>]` over the primary.
    pub fn for_agent(&self, agent: AgentKind) -> ModelEndpoint {
        self.agents
            .get(agent.as_str())
            .map_or_else(|| self.primary(), |over| self.resolve(over))
    }

    /// The Groq model as a fallback target.
    pub fn groq_endpoint(&self) -> ModelEndpoint {
        ModelEndpoint {
            provider: ProviderKind::Groq,
            model: self.groq.model.clone(),
            base_url: self.groq.base_url.clone(),
        }
    }

    /// The configured price of `model`, if any.
    pub fn price_of(&self, model: &str) -> PriceSettings {
        self.prices.get(model).copied().unwrap_or_default()
    }

    /// What is wrong with these settings, if anything (`budget` is checked here too: its downgrade model is
    /// an `[llm]` model).
    pub(super) fn problems(&self, budget: &BudgetSettings) -> Vec<String> {
        let mut problems = Vec::new();
        let mut endpoints = vec![("llm".to_owned(), self.primary())];
        for (name, over) in &self.agents {
            match name.parse::<AgentKind>() {
                Ok(_) => endpoints.push((format!("llm.agents.{name}"), self.resolve(over))),
                Err(_) => problems.push(format!(
                    "llm.agents.{name}: '{name}' is not an agent (director, research, code, qa)"
                )),
            }
        }
        for (name, over) in &self.models {
            let fits = !name.is_empty()
                && name.len() <= 64
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
            if fits {
                endpoints.push((format!("llm.models.{name}"), self.resolve(over)));
            } else {
                problems.push(format!(
                    "llm.models.{name}: a model's name is 1..=64 letters, digits, '-', '_' or '.'"
                ));
            }
        }
        if budget.on_exceed == OnExceed::Downgrade {
            endpoints.push(("budget.downgrade".into(), self.resolve(&budget.downgrade)));
        }
        if self.fallback == FallbackTarget::Groq {
            if self.groq.enabled {
                endpoints.push(("llm.groq".into(), self.groq_endpoint()));
            } else {
                problems.push(
                    "llm.fallback: 'groq' needs [llm.groq] enabled = true (nothing goes to the cloud unless configured)"
                        .into(),
                );
            }
        }
        for (name, endpoint) in &endpoints {
            problems.extend(self.endpoint_problems(name, endpoint));
        }
        if self.threads == 0 {
            problems.push("llm.threads: must be positive".into());
        }
        if self.context_size < 512 {
            problems.push("llm.context_size: must be at least 512".into());
        }
        if !(0.0..=2.0).contains(&self.temperature) {
            problems.push("llm.temperature: must be within 0..=2".into());
        }
        if self.connect_timeout_seconds == 0 || self.read_timeout_seconds == 0 {
            problems.push(
                "llm.connect_timeout_seconds, llm.read_timeout_seconds: must be positive".into(),
            );
        }
        if !(1..=1000).contains(&self.top_logprobs) {
            problems.push("llm.top_logprobs: must be within 1..=1000".into());
        }
        if self.max_retries > 10 {
            problems.push("llm.max_retries: must be within 0..=10".into());
        }
        if self.confirm_timeout_seconds == 0 {
            problems.push("llm.confirm_timeout_seconds: must be positive".into());
        }
        let sampling = &self.sampling;
        if !(1.0..=2.0).contains(&sampling.repeat_penalty) {
            problems.push("llm.sampling.repeat_penalty: must be within 1..=2 (1: off)".into());
        }
        if !(0.0..=5.0).contains(&sampling.dry_multiplier) {
            problems.push("llm.sampling.dry_multiplier: must be within 0..=5 (0: off)".into());
        }
        if sampling.dry_multiplier > 0.0 && !(1.0..=4.0).contains(&sampling.dry_base) {
            problems.push("llm.sampling.dry_base: must be within 1..=4".into());
        }
        if sampling.repeat_last_n < -1 || sampling.dry_penalty_last_n < -1 {
            problems.push(
                "llm.sampling.repeat_last_n, dry_penalty_last_n: must be -1 (whole context), 0 (off) or a window"
                    .into(),
            );
        }
        if sampling.dry_allowed_length < 1 {
            problems.push("llm.sampling.dry_allowed_length: must be at least 1".into());
        }
        for (model, price) in &self.prices {
            let valid = |v: f64| v.is_finite() && v >= 0.0;
            if !valid(price.input_per_million) || !valid(price.output_per_million) {
                problems.push(format!(
                    "llm.prices.\"{model}\": prices must be finite and not negative"
                ));
            }
        }
        if !(budget.max_cost_usd.is_finite() && budget.max_cost_usd >= 0.0) {
            problems
                .push("budget.max_cost_usd: must be finite and not negative (0: no limit)".into());
        }
        problems
    }

    fn endpoint_problems(&self, name: &str, endpoint: &ModelEndpoint) -> Vec<String> {
        let mut problems = Vec::new();
        if endpoint.model.is_empty() {
            problems.push(format!(
                "{name}: model must be named (a {} model is not inherited from another provider)",
                endpoint.provider.as_str()
            ));
        }
        match endpoint.provider {
            ProviderKind::Embedded => {}
            ProviderKind::Openai | ProviderKind::Groq => {
                let url = endpoint.base_url.as_str();
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    problems.push(format!(
                        "{name}: base_url '{}' must be an http:// or https:// URL including /v1 (e.g. http://127.0.0.1:11434/v1 for Ollama)",
                        redact_url(url)
                    ));
                }
                if endpoint.provider == ProviderKind::Groq && !self.groq.enabled {
                    problems.push(format!(
                        "{name}: provider 'groq' needs [llm.groq] enabled = true (nothing goes to the cloud unless configured)"
                    ));
                }
            }
        }
        problems
    }
}
