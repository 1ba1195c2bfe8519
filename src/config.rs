//! Typed settings and their layered loading: built-in `config/default.toml`, then `config/<profile>.toml`
//! (profile from `TROUPE_PROFILE`), then `TROUPE__SECTION__KEY` environment variables.
//!
//! This is the only module that reads the environment. `Settings::validate` reports every problem at once,
//! before anything starts. Modules receive their own section, never the whole tree.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::domain::{limits as bounds, redact_url, AgentKind};

mod llm;
mod queue;

pub use llm::{
    BudgetSettings, FallbackMode, FallbackTarget, GroqSettings, LlmLimits, LlmSettings,
    ModelEndpoint, ModelOverride, OnExceed, PriceSettings, ProviderKind, SamplingSettings, Secret,
    StructuredOutput,
};
pub use queue::{QueueBackend, QueueSettings, Role};

/// The built-in defaults, compiled in so that the binary runs from any directory.
const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// The whole settings tree.
#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    /// HTTP server.
    pub server: ServerSettings,
    /// Long-term storage.
    pub database: DatabaseSettings,
    /// Short-term memory in Redis (in-process when the URL is empty).
    pub redis: RedisSettings,
    /// Long-term and semantic memory, and the short-term tier's retention.
    pub memory: MemorySettings,
    /// Model providers.
    pub llm: LlmSettings,
    /// What a task may spend on models.
    pub budget: BudgetSettings,
    /// Planning and task lifecycle.
    pub director: DirectorSettings,
    /// The specialists' pools of supervised instances.
    pub agents: AgentsSettings,
    /// The jail generated code runs in, and its limits.
    pub sandbox: SandboxSettings,
    /// Restart policy of supervised agents.
    pub supervision: SupervisionSettings,
    /// Deliberate faults for watching supervision work.
    pub chaos: ChaosSettings,
    /// Logs and traces.
    pub telemetry: TelemetrySettings,
    /// The dashboard's data: the in-process metrics history and links to other tools.
    pub dashboard: DashboardSettings,
    /// How long finished tasks are kept.
    pub retention: RetentionSettings,
    /// Leases and resuming the tasks of a process that died.
    pub durability: DurabilitySettings,
    /// Where tasks wait for a process to run them (in this process, or a Redis Stream for workers).
    pub queue: QueueSettings,
    /// Secret keys that a configuration file sets (secrets come only from the environment); filled by
    /// [`Settings::load_from`], reported by [`Settings::validate`].
    #[serde(skip)]
    secrets_in_files: Vec<&'static str>,
}

/// `[dashboard]`
#[derive(Debug, Clone, Deserialize)]
pub struct DashboardSettings {
    /// Seconds between two samples of the in-process metrics history (`GET /api/v1/stats`).
    pub sample_seconds: u64,
    /// Samples the history keeps (the oldest go first).
    pub history_samples: usize,
    /// Jaeger's UI root (e.g. `http://localhost:16686`); a task's trace links to `{jaeger_url}/trace/{id}`.
    /// Empty: no link.
    pub jaeger_url: String,
    /// Grafana's root (e.g. `http://localhost:3000`); a task's logs link to Grafana Explore on the Loki
    /// datasource, filtered by the task's trace id. Empty: no link.
    pub grafana_url: String,
}

/// `[retention]`
#[derive(Debug, Clone, Deserialize)]
pub struct RetentionSettings {
    /// Finished tasks older than this many days (by when they finished) are removed with their events,
    /// steps, decisions and model calls; their memories stay. 0 keeps every task.
    pub days: u32,
    /// Seconds between two sweeps (the first runs at start-up).
    pub sweep_seconds: u64,
}

/// `[durability]`
#[derive(Debug, Clone, Deserialize)]
pub struct DurabilitySettings {
    /// Seconds between two heartbeats of this process's lease.
    pub heartbeat_seconds: u64,
    /// A lease whose last heartbeat is older than this many seconds has expired: its process is taken for
    /// dead and its unfinished tasks may be resumed by another.
    pub lease_seconds: u64,
    /// Resume, at start-up, the unfinished tasks of processes whose lease expired; `false` fails them
    /// instead (`interrupted`, as before leases).
    pub resume: bool,
}

/// The keys of every secret, as a configuration file would spell them.
const SECRET_KEYS: [&str; 3] = ["server.auth_token", "llm.api_key", "llm.groq.api_key"];

/// The environment variable the server's auth token comes from.
pub const AUTH_TOKEN_VARIABLE: &str = "TROUPE__SERVER__AUTH_TOKEN";

/// `[server]`
#[derive(Debug, Clone, Deserialize)]
pub struct ServerSettings {
    /// Listen address of `troupe serve`.
    pub bind: String,
    /// What this process does with tasks: takes them (`api`), runs them (`worker`) or both (`all`).
    pub role: Role,
    /// Longest a request body may take to arrive after its head, in seconds (408 beyond).
    pub body_timeout_seconds: u64,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Longest prompt accepted, in characters.
    pub max_prompt_chars: usize,
    /// HTTP worker threads; 0 means one per core.
    pub workers: usize,
    /// WebSocket streams open at once (a task's events and the all-tasks stream together); one more gets
    /// 429 with `Retry-After`.
    pub max_websockets: usize,
    /// Longest a WebSocket stream waits to hand the client a frame (its buffers full: a client that does
    /// not read) before it drops the connection.
    pub websocket_send_timeout_seconds: u64,
    /// The token every request must carry (`Authorization: Bearer` or the dashboard's `troupe_token`
    /// cookie), from `TROUPE__SERVER__AUTH_TOKEN` only; `None` (unset or empty): no authentication, which
    /// `troupe serve` accepts only on a loopback address.
    #[serde(skip)]
    pub auth_token: Option<Secret>,
    /// Host names accepted in the `Host` header besides loopback names and addresses and the bind
    /// address's own IP (exact names, no port); `"*"` accepts any host and needs an auth token.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Whether `/metrics` stays open when an auth token is required (false: it needs the token too).
    pub metrics_public: bool,
}

impl ServerSettings {
    /// The IP of `bind` (`None` when it does not parse; `validate` reports that).
    pub fn bind_ip(&self) -> Option<IpAddr> {
        self.bind
            .parse::<SocketAddr>()
            .ok()
            .map(|address| address.ip())
    }

    /// Whether `bind` is a loopback address (127.0.0.0/8, ::1, or ::ffff:127.x.y.z) or `localhost`, reachable
    /// only from this machine.
    pub fn binds_loopback(&self) -> bool {
        match self.bind_ip() {
            Some(ip) => is_loopback(ip),
            // `troupe serve --bind` is not validated like the file; a name binds what it resolves to.
            None => self
                .bind
                .rsplit_once(':')
                .is_some_and(|(host, _)| host.eq_ignore_ascii_case("localhost")),
        }
    }

    /// What is wrong with the access settings, if anything.
    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(token) = &self.auth_token {
            let token = token.expose();
            if token.len() < 16 {
                problems.push(format!(
                    "server.auth_token: too short; {AUTH_TOKEN_VARIABLE} must hold at least 16 characters"
                ));
            }
            // It travels in a header and a cookie, unencoded.
            if !token
                .bytes()
                .all(|b| b.is_ascii_graphic() && !matches!(b, b';' | b',' | b'"' | b'\\'))
            {
                problems.push(format!(
                    "server.auth_token: {AUTH_TOKEN_VARIABLE} must be printable ASCII without spaces, quotes, commas, semicolons or backslashes"
                ));
            }
        }
        for host in &self.allowed_hosts {
            if host == "*" {
                if self.auth_token.is_none() {
                    problems.push(format!(
                        "server.allowed_hosts: \"*\" (any host) needs an auth token; set {AUTH_TOKEN_VARIABLE}"
                    ));
                }
            } else if !is_host_name(host) {
                problems.push(format!(
                    "server.allowed_hosts: '{host}' is not a host name (a name or IP address, without scheme or port)"
                ));
            }
        }
        problems
    }
}

/// Whether `ip` is a loopback address, IPv4-mapped IPv6 (`::ffff:127.0.0.1`) included.
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// Whether `text` is a bare host name or IP address: letters, digits, `-`, `.` (a name) or an IPv6 address,
/// with no scheme, port, path or space.
fn is_host_name(text: &str) -> bool {
    if text.parse::<Ipv6Addr>().is_ok() {
        return true;
    }
    !text.is_empty()
        && text.len() <= 253
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
}

/// `[database]`
#[derive(Debug, Clone, Deserialize)]
pub struct DatabaseSettings {
    /// `sqlite://path?mode=rwc` or `postgres://...`.
    pub url: String,
    /// Pool size.
    pub max_connections: u32,
    /// Ops the storage writer's channel holds (see `storage::writer`): awaited writes wait for room, a
    /// fire-and-forget write that finds it full is dropped and fails its task.
    pub writer_queue: usize,
}

/// `[redis]`
#[derive(Debug, Clone, Deserialize)]
pub struct RedisSettings {
    /// Empty: in-process short-term memory.
    pub url: String,
    /// Prefix of every key Troupe writes.
    pub key_prefix: String,
}

/// `[memory]`
#[derive(Debug, Clone, Deserialize)]
pub struct MemorySettings {
    /// false: no embedding model, no long-term memories, no recall (short-term memory still works).
    pub enabled: bool,
    /// Folder of the all-MiniLM-L6-v2 files (config.json, tokenizer.json, model.safetensors).
    pub embedding_model: PathBuf,
    /// Memories an agent's recall retrieves.
    pub recall_k: usize,
    /// Least cosine similarity for a retrieved memory to be given to the agent.
    pub min_score: f32,
    /// Least similarity for a learned pattern to match a failure.
    pub pattern_min_score: f32,
    /// Seconds a task's short-term memory lives after its last write.
    pub short_term_ttl_seconds: u64,
    /// Conversation entries kept per task in short-term memory.
    pub window_size: usize,
    /// pgvector's `hnsw.ef_search` for each search (higher: better recall, slower).
    pub hnsw_ef_search: u32,
}

/// `[sandbox]`
#[derive(Debug, Clone, Deserialize)]
pub struct SandboxSettings {
    /// false: no code runs at all (the Code/QA loop is skipped and `run_code` refuses).
    pub enabled: bool,
    /// The bubblewrap executable (a name on PATH or a path).
    pub bwrap: String,
    /// The Python interpreter inside the jail (an absolute path under a read-only system directory).
    pub python: PathBuf,
    /// The shell inside the jail.
    pub shell: PathBuf,
    /// Wall-clock limit of one run; past it the whole process group is killed.
    pub timeout_seconds: f64,
    /// CPU-time limit (RLIMIT_CPU soft limit; the hard limit is one second more).
    pub cpu_seconds: u64,
    /// Address-space limit (RLIMIT_AS) in bytes.
    pub memory_bytes: u64,
    /// Processes the run may have at once, the jail's own included (RLIMIT_NPROC, per-run user id).
    pub max_processes: u64,
    /// Largest file the run may write (RLIMIT_FSIZE), in bytes.
    pub max_file_bytes: u64,
    /// Open files per process (RLIMIT_NOFILE).
    pub max_open_files: u64,
    /// Output kept per stream (stdout, stderr); a run that writes more is killed.
    pub output_limit_bytes: usize,
    /// Size of the private tmpfs workspace (and of /tmp), in bytes.
    pub workspace_bytes: u64,
    /// Runs at once; each has its own user id while Troupe runs as root.
    pub parallel_runs: usize,
    /// First user id of the per-run ids (uid_base .. uid_base + parallel_runs), used when running as root.
    pub uid_base: u32,
    /// Where each task's files live (`read_file`/`write_file`), one folder per task.
    pub workspaces: PathBuf,
}

impl SandboxSettings {
    /// What is wrong with these limits, if anything.
    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !(self.timeout_seconds > 0.0 && self.timeout_seconds <= 3600.0) {
            problems.push("sandbox.timeout_seconds: must be within (0, 3600]".into());
        }
        for (name, value, least) in [
            ("cpu_seconds", self.cpu_seconds, 1),
            ("memory_bytes", self.memory_bytes, 32 << 20),
            ("max_processes", self.max_processes, 4),
            ("max_file_bytes", self.max_file_bytes, 4096),
            ("max_open_files", self.max_open_files, 16),
            ("workspace_bytes", self.workspace_bytes, 1 << 20),
        ] {
            if value < least {
                problems.push(format!("sandbox.{name}: must be at least {least}"));
            }
        }
        if self.output_limit_bytes < 1024 {
            problems.push("sandbox.output_limit_bytes: must be at least 1024".into());
        }
        if !(1..=64).contains(&self.parallel_runs) {
            problems.push("sandbox.parallel_runs: must be within 1..=64".into());
        }
        if self.uid_base < 1000 || self.uid_base.checked_add(64).is_none() {
            problems
                .push("sandbox.uid_base: must be at least 1000 and leave room for 64 ids".into());
        }
        for (name, path) in [("python", &self.python), ("shell", &self.shell)] {
            if !path.is_absolute() {
                problems.push(format!(
                    "sandbox.{name}: '{}' must be an absolute path",
                    path.display()
                ));
            }
        }
        problems
    }
}

/// `[director]`
#[derive(Debug, Clone, Deserialize)]
pub struct DirectorSettings {
    /// Most steps in a plan.
    pub max_steps: u32,
    /// Tasks running at once.
    pub max_concurrent_tasks: usize,
    /// Tasks waiting for a slot; a submission beyond running plus waiting gets 429.
    pub max_queued_tasks: usize,
    /// Seconds before a step's agent is treated as stuck.
    pub step_timeout_seconds: u64,
    /// Retries of a step after its agent was restarted.
    pub step_retries: u32,
    /// Attempts Code gets at a code step: its code and test run in the sandbox, and a failure goes back to
    /// Code with the output until the test passes or the attempts run out.
    pub code_attempts: u32,
    /// Whether QA's final verdict decides the task's end or is only recorded.
    pub qa_verdict: QaVerdictMode,
    /// Revisions a `fail` verdict sends the work back for (0..=3), each re-verified; a verdict still
    /// `fail` after them fails the task with QA's feedback. Only with `qa_verdict = "decides"`.
    pub qa_revisions: u32,
    /// Calibrate the agent choice (contextual calibration): divide each option's probability by its
    /// probability for a content-free input and renormalise; the choice is made by the calibrated one.
    pub calibrate_routing: bool,
    /// Least similarity (cosine, all-MiniLM-L6-v2) of an accepted attempt's code to the task prompt or the
    /// step instruction, whichever is closer; below it the code is rejected as not for the task. 0: off. Needs
    /// memory's embedding model (without it the check is skipped).
    pub min_code_relevance: f32,
    /// QA's verification by several voters (one: the plain verdict) and the rule combining their votes.
    pub consensus: crate::domain::ConsensusSpec,
}

impl DirectorSettings {
    /// These settings with a task's own `options.director` over them.
    pub fn for_task(&self, options: Option<&crate::domain::DirectorOptions>) -> DirectorSettings {
        let mut settings = self.clone();
        if let Some(options) = options {
            if let Some(attempts) = options.code_attempts {
                settings.code_attempts = attempts;
            }
            if let Some(mode) = options.qa_verdict {
                settings.qa_verdict = mode;
            }
            if let Some(revisions) = options.qa_revisions {
                settings.qa_revisions = revisions;
            }
            if let Some(calibrate) = options.calibrate_routing {
                settings.calibrate_routing = calibrate;
            }
            if let Some(relevance) = options.min_code_relevance {
                settings.min_code_relevance = relevance;
            }
        }
        settings
    }
}

/// `[agents]`: how many supervised instances of each specialist run (`agents.<agent>.instances`). Steps of a
/// plan that run at once go to different instances where there are enough (the least busy first); each
/// instance is restarted on its own.
#[derive(Debug, Clone, Deserialize)]
pub struct AgentsSettings {
    /// `[agents.research]`
    pub research: PoolSettings,
    /// `[agents.code]`
    pub code: PoolSettings,
    /// `[agents.qa]`
    pub qa: PoolSettings,
}

/// One specialist's pool.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct PoolSettings {
    /// Supervised instances, 1..=[`AgentsSettings::MAX_INSTANCES`].
    pub instances: usize,
}

impl AgentsSettings {
    /// Most instances of one specialist.
    pub const MAX_INSTANCES: usize = 16;

    /// The instances of `agent` (the Director is one).
    pub fn instances(&self, agent: AgentKind) -> usize {
        match agent {
            AgentKind::Research => self.research.instances,
            AgentKind::Code => self.code.instances,
            AgentKind::Qa => self.qa.instances,
            AgentKind::Director => 1,
        }
    }
}

pub use crate::domain::QaVerdictMode;

/// `[supervision]`
#[derive(Debug, Clone, Deserialize)]
pub struct SupervisionSettings {
    /// Restarts allowed within the window.
    pub max_restarts: u32,
    /// The window, in seconds.
    pub window_seconds: u64,
}

/// `[chaos]`
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ChaosSettings {
    /// Agents that panic once on their first step.
    pub panic_once: Vec<String>,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// For a terminal.
    Human,
    /// JSON lines.
    Json,
}

/// `[telemetry]`
#[derive(Debug, Clone, Deserialize)]
pub struct TelemetrySettings {
    /// Log format.
    pub log_format: LogFormat,
    /// tracing-subscriber filter.
    pub log_level: String,
    /// Whether spans are created at all.
    pub tracing: bool,
    /// OTLP/HTTP (protobuf) endpoint, the collector's base URL (`/v1/traces` is added) or the full traces
    /// URL; empty: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT`, and without them no
    /// export at all.
    pub otlp_endpoint: String,
    /// Share of new traces sampled (0..=1, parent-based); unset: `OTEL_TRACES_SAMPLER(_ARG)`, else 1.
    #[serde(default)]
    pub sampling_ratio: Option<f64>,
    /// `service.name` of exported spans; empty: `OTEL_SERVICE_NAME`, else "troupe".
    pub service_name: String,
    /// Extra resource attributes as `key=value,key=value` (the `OTEL_RESOURCE_ATTRIBUTES` syntax), applied
    /// over that variable's.
    #[serde(default)]
    pub resource_attributes: String,
}

/// Loading or validation failed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A layer could not be read or merged, or a value has the wrong type.
    #[error("load configuration: {0}")]
    Load(#[from] config::ConfigError),
    /// Values that load but make no sense; every problem is listed.
    #[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

impl Settings {
    /// Loads the layers for the profile named by `TROUPE_PROFILE` (none: defaults and environment only),
    /// reading profile files from `TROUPE_CONFIG_DIR` or `./config`.
    pub fn load() -> Result<Self, ConfigError> {
        let profile = std::env::var("TROUPE_PROFILE").ok();
        let dir = std::env::var_os("TROUPE_CONFIG_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("config"));
        Self::load_from(&dir, profile.as_deref())
    }

    /// Loads defaults, then `<dir>/<profile>.toml` when a profile is given, then the environment.
    pub fn load_from(dir: &Path, profile: Option<&str>) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder().add_source(config::File::from_str(
            DEFAULT_TOML,
            config::FileFormat::Toml,
        ));
        if let Some(profile) = profile.filter(|p| !p.is_empty()) {
            builder = builder.add_source(config::File::from(dir.join(format!("{profile}.toml"))));
        }
        // Secrets come only from the environment: the files alone are read once more to find any set there.
        let files = builder.clone().build()?;
        let secrets_in_files: Vec<&'static str> = SECRET_KEYS
            .into_iter()
            .filter(|key| files.get::<config::Value>(key).is_ok())
            .collect();
        builder = builder.add_source(
            config::Environment::with_prefix("TROUPE")
                .prefix_separator("__")
                .separator("__")
                .list_separator(",")
                .with_list_parse_key("chaos.panic_once")
                .with_list_parse_key("server.allowed_hosts")
                .try_parsing(true),
        );
        let mut settings: Settings = builder.build()?.try_deserialize()?;
        settings.secrets_in_files = secrets_in_files;
        // Read directly rather than through the layers, whose type guessing would turn "0123" into 123.
        settings.server.auth_token = std::env::var(AUTH_TOKEN_VARIABLE)
            .ok()
            .filter(|token| !token.is_empty())
            .map(Secret::new);
        // The standard variables of the OpenAI and Groq clients, under Troupe's own names' precedence.
        if settings.llm.api_key.is_none() {
            settings.llm.api_key = std::env::var("OPENAI_API_KEY")
                .ok()
                .filter(|key| !key.is_empty())
                .map(Secret::new);
        }
        if settings.llm.groq.api_key.is_none() {
            settings.llm.groq.api_key = std::env::var("GROQ_API_KEY")
                .ok()
                .filter(|key| !key.is_empty())
                .map(Secret::new);
        }
        settings.validate()?;
        Ok(settings)
    }

    /// Checks every value and reports all problems at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if self.server.bind.parse::<SocketAddr>().is_err() {
            problems.push(format!(
                "server.bind: '{}' is not host:port",
                self.server.bind
            ));
        }
        if !(1..=3600).contains(&self.server.body_timeout_seconds) {
            problems.push("server.body_timeout_seconds: must be within 1..=3600".into());
        }
        if self.server.max_body_bytes < 256 {
            problems.push("server.max_body_bytes: must be at least 256".into());
        }
        if self.server.max_prompt_chars == 0 {
            problems.push("server.max_prompt_chars: must be positive".into());
        }
        problems.extend(self.server.problems());
        for key in &self.secrets_in_files {
            let variable = format!("TROUPE__{}", key.replace('.', "__").to_uppercase());
            problems.push(format!(
                "{key}: a secret must not be in a configuration file; set {variable} in the environment"
            ));
        }
        let url = self.database.url.as_str();
        if !(url.starts_with("sqlite:")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            problems.push(format!(
                "database.url: '{url}' is neither sqlite: nor postgres://"
            ));
        }
        if self.database.max_connections == 0 {
            problems.push("database.max_connections: must be positive".into());
        }
        if self.database.writer_queue == 0 {
            problems.push("database.writer_queue: must be positive".into());
        }
        let redis = self.redis.url.as_str();
        if !(redis.is_empty() || redis.starts_with("redis://")) {
            problems.push(format!(
                "redis.url: '{}' is not a redis:// URL (TLS is not built; leave it empty for in-process short-term memory)",
                redact_url(redis)
            ));
        }
        if self.redis.key_prefix.is_empty() {
            problems.push("redis.key_prefix: must not be empty".into());
        }
        let memory = &self.memory;
        if memory.recall_k == 0 || memory.recall_k > 100 {
            problems.push("memory.recall_k: must be within 1..=100".into());
        }
        for (name, value) in [
            ("min_score", memory.min_score),
            ("pattern_min_score", memory.pattern_min_score),
        ] {
            if !(-1.0..=1.0).contains(&value) {
                problems.push(format!("memory.{name}: {value} must be within -1..=1"));
            }
        }
        if memory.short_term_ttl_seconds == 0 {
            problems.push("memory.short_term_ttl_seconds: must be positive".into());
        }
        if memory.window_size == 0 {
            problems.push("memory.window_size: must be positive".into());
        }
        if memory.hnsw_ef_search == 0 || memory.hnsw_ef_search > 1000 {
            problems.push("memory.hnsw_ef_search: must be within 1..=1000".into());
        }
        problems.extend(self.llm.problems(&self.budget));
        let limits = &self.llm.limits;
        for (name, value) in [
            ("plan_tokens", limits.plan_tokens),
            ("decision_reason_tokens", limits.decision_reason_tokens),
            ("work_tokens", limits.work_tokens),
            ("verdict_tokens", limits.verdict_tokens),
            ("code_tokens", limits.code_tokens),
        ] {
            if value == 0 || value > self.llm.context_size / 2 {
                problems.push(format!(
                    "llm.limits.{name}: must be within 1..=context_size/2"
                ));
            }
        }
        // A structured output cut off by its budget would not parse: each budget must cover the most
        // its grammar allows (one token per character at worst, plus the JSON around the strings).
        let plan_bound = bounds::plan_token_bound(self.director.max_steps);
        if limits.plan_tokens < plan_bound {
            problems.push(format!(
                "llm.limits.plan_tokens: {} cannot hold a plan of director.max_steps = {} steps; at least {plan_bound}",
                limits.plan_tokens, self.director.max_steps
            ));
        }
        let verdict_bound = bounds::VERDICT_TOKEN_BOUND;
        if limits.verdict_tokens < verdict_bound {
            problems.push(format!(
                "llm.limits.verdict_tokens: {} cannot hold a verdict; at least {verdict_bound}",
                limits.verdict_tokens
            ));
        }
        if !(1..=bounds::MAX_PLAN_STEPS).contains(&self.director.max_steps) {
            problems.push(format!(
                "director.max_steps: must be within 1..={}",
                bounds::MAX_PLAN_STEPS
            ));
        }
        if !(1..=crate::domain::consensus::MAX_VOTERS).contains(&self.director.consensus.voters) {
            problems.push(format!(
                "director.consensus.voters: must be within 1..={}",
                crate::domain::consensus::MAX_VOTERS
            ));
        }
        for agent in AgentKind::SPECIALISTS {
            if !(1..=AgentsSettings::MAX_INSTANCES).contains(&self.agents.instances(agent)) {
                problems.push(format!(
                    "agents.{agent}.instances: must be within 1..={}",
                    AgentsSettings::MAX_INSTANCES
                ));
            }
        }
        if self.llm.max_queued_calls == 0 {
            problems.push("llm.max_queued_calls: must be positive".into());
        }
        if self.server.max_websockets == 0 {
            problems.push("server.max_websockets: must be positive".into());
        }
        if self.server.websocket_send_timeout_seconds == 0 {
            problems.push("server.websocket_send_timeout_seconds: must be positive".into());
        }
        if self.director.max_concurrent_tasks == 0 {
            problems.push("director.max_concurrent_tasks: must be positive".into());
        }
        if self.director.max_queued_tasks == 0 {
            problems.push("director.max_queued_tasks: must be positive".into());
        }
        if self.director.step_timeout_seconds == 0 {
            problems.push("director.step_timeout_seconds: must be positive".into());
        }
        problems.extend(
            crate::domain::DirectorOptions {
                code_attempts: Some(self.director.code_attempts),
                qa_revisions: Some(self.director.qa_revisions),
                min_code_relevance: Some(self.director.min_code_relevance),
                ..crate::domain::DirectorOptions::default()
            }
            .problems("director"),
        );
        problems.extend(self.sandbox.problems());
        if self.supervision.window_seconds == 0 {
            problems.push("supervision.window_seconds: must be positive".into());
        }
        for name in &self.chaos.panic_once {
            match name.parse::<AgentKind>() {
                Ok(kind) if kind.is_specialist() => {}
                _ => problems.push(format!(
                    "chaos.panic_once: '{name}' is not a specialist agent (research, code, qa)"
                )),
            }
        }
        let endpoint = self.telemetry.otlp_endpoint.as_str();
        if !endpoint.is_empty() && !endpoint.starts_with("http://") {
            problems.push(format!(
                "telemetry.otlp_endpoint: '{endpoint}' must be an http:// URL (OTLP over HTTP/protobuf; TLS and gRPC are not built)"
            ));
        }
        if self.retention.days > 36_500 {
            problems.push("retention.days: must be within 0..=36500 (0 keeps every task)".into());
        }
        if !(1..=86_400).contains(&self.retention.sweep_seconds) {
            problems.push("retention.sweep_seconds: must be within 1..=86400".into());
        }
        let durability = &self.durability;
        if !(1..=3600).contains(&durability.heartbeat_seconds) {
            problems.push("durability.heartbeat_seconds: must be within 1..=3600".into());
        }
        if durability.lease_seconds < durability.heartbeat_seconds.saturating_mul(2) {
            problems.push(format!(
                "durability.lease_seconds: {} must be at least twice durability.heartbeat_seconds ({}), so one late heartbeat does not expire a live process's lease",
                durability.lease_seconds, durability.heartbeat_seconds
            ));
        }
        problems.extend(self.queue.problems(
            &self.database.url,
            &self.redis.url,
            self.server.role,
            durability.lease_seconds,
        ));
        let dashboard = &self.dashboard;
        if !(1..=3600).contains(&dashboard.sample_seconds) {
            problems.push("dashboard.sample_seconds: must be within 1..=3600".into());
        }
        if !(1..=100_000).contains(&dashboard.history_samples) {
            problems.push("dashboard.history_samples: must be within 1..=100000".into());
        }
        for (name, url) in [
            ("jaeger_url", &dashboard.jaeger_url),
            ("grafana_url", &dashboard.grafana_url),
        ] {
            if !(url.is_empty() || url.starts_with("http://") || url.starts_with("https://")) {
                problems.push(format!(
                    "dashboard.{name}: '{url}' must be empty or an http:// or https:// URL"
                ));
            }
        }
        if let Some(ratio) = self.telemetry.sampling_ratio {
            if !(0.0..=1.0).contains(&ratio) {
                problems.push(format!(
                    "telemetry.sampling_ratio: {ratio} must be within 0..=1"
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// The specialists chaos makes panic once, parsed (validated by `validate`).
    pub fn chaos_agents(&self) -> Vec<AgentKind> {
        self.chaos
            .panic_once
            .iter()
            .filter_map(|name| name.parse().ok())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> Settings {
        Settings::load_from(Path::new("config"), None).unwrap()
    }

    #[test]
    fn built_in_defaults_are_valid() {
        let settings = defaults();
        assert_eq!(settings.llm.provider, ProviderKind::Embedded);
        assert!(settings.database.url.starts_with("sqlite:"));
        assert!(settings.chaos.panic_once.is_empty());
    }

    #[test]
    fn test_profile_overrides_defaults() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        let settings = Settings::load_from(&dir, Some("test")).unwrap();
        assert_eq!(settings.director.max_steps, 2);
        assert_eq!(settings.server.max_prompt_chars, 4000);
    }

    #[test]
    fn validate_reports_every_problem_at_once() {
        let mut settings = defaults();
        settings.server.bind = "nowhere".into();
        settings.llm.threads = 0;
        settings.chaos.panic_once = vec!["director".into(), "research".into()];
        let Err(ConfigError::Invalid(problems)) = settings.validate() else {
            panic!("expected invalid configuration");
        };
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems.iter().any(|p| p.starts_with("server.bind")));
        assert!(problems.iter().any(|p| p.contains("'director'")));
    }

    #[test]
    fn qa_verdict_settings_default_to_deciding_and_are_bounded() {
        let mut settings = defaults();
        assert_eq!(settings.director.qa_verdict, QaVerdictMode::Decides);
        assert_eq!(settings.director.qa_revisions, 1);
        settings.director.qa_revisions = 4;
        let err = settings.validate().unwrap_err().to_string();
        assert!(err.contains("director.qa_revisions"), "{err}");
        settings.director.qa_revisions = 0;
        settings.validate().unwrap();
        let dir = std::env::temp_dir().join(format!("troupe-config-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("odd.toml"),
            "[director]\nqa_verdict = \"sometimes\"\n",
        )
        .unwrap();
        assert!(Settings::load_from(&dir, Some("odd")).is_err());
        std::fs::write(
            dir.join("odd.toml"),
            "[director]\nqa_verdict = \"advisory\"\n",
        )
        .unwrap();
        let advisory = Settings::load_from(&dir, Some("odd")).unwrap();
        assert_eq!(advisory.director.qa_verdict, QaVerdictMode::Advisory);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let mut settings = defaults();
        settings.llm.api_key = Some(Secret::new("sk-very-secret"));
        let shown = format!("{settings:?}");
        assert!(!shown.contains("sk-very-secret"), "{shown}");
        assert!(shown.contains("Secret([redacted])"));
    }

    #[test]
    fn groq_is_refused_unless_enabled() {
        let mut settings = defaults();
        settings.llm.fallback = FallbackTarget::Groq;
        let err = settings.validate().unwrap_err().to_string();
        assert!(err.contains("[llm.groq] enabled = true"), "{err}");
        settings.llm.groq.enabled = true;
        settings.validate().unwrap();
    }

    #[test]
    fn an_openai_primary_needs_a_server() {
        let mut settings = defaults();
        settings.llm.provider = ProviderKind::Openai;
        let err = settings.validate().unwrap_err().to_string();
        assert!(err.contains("llm: base_url ''"), "{err}");
        settings.llm.base_url = "http://127.0.0.1:11434/v1".into();
        settings.llm.model = "qwen2.5:7b".into();
        settings.validate().unwrap();
    }

    #[test]
    fn per_agent_models_fill_in_from_the_primary() {
        let mut settings = defaults();
        settings.llm.agents.insert(
            "code".into(),
            ModelOverride {
                provider: Some(ProviderKind::Openai),
                model: Some("qwen2.5-coder:7b".into()),
                base_url: Some("http://127.0.0.1:11434/v1".into()),
            },
        );
        settings
            .llm
            .agents
            .insert("qa".into(), ModelOverride::default());
        settings.validate().unwrap();
        let code = settings.llm.for_agent(AgentKind::Code);
        assert_eq!(code.provider, ProviderKind::Openai);
        assert_eq!(code.model, "qwen2.5-coder:7b");
        assert_eq!(
            settings.llm.for_agent(AgentKind::Qa),
            settings.llm.primary()
        );
        // Another provider does not inherit the primary's GGUF path as its model name.
        settings.llm.agents.insert(
            "research".into(),
            ModelOverride {
                provider: Some(ProviderKind::Openai),
                model: None,
                base_url: Some("http://127.0.0.1:8000/v1".into()),
            },
        );
        settings
            .llm
            .agents
            .insert("planner".into(), ModelOverride::default());
        let Err(ConfigError::Invalid(problems)) = settings.validate() else {
            panic!("expected invalid configuration");
        };
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems
            .iter()
            .any(|p| p.starts_with("llm.agents.research: model must be named")));
        assert!(problems.iter().any(|p| p.starts_with("llm.agents.planner")));
    }

    #[test]
    fn access_settings_default_to_open_on_loopback() {
        let settings = defaults();
        assert!(settings.server.auth_token.is_none());
        assert!(settings.server.allowed_hosts.is_empty());
        assert!(settings.server.metrics_public);
        assert!(settings.server.binds_loopback());
    }

    #[test]
    fn loopback_binds_are_told_apart() {
        let mut server = defaults().server;
        for (bind, loopback) in [
            ("127.0.0.1:8080", true),
            ("127.3.4.5:0", true),
            ("[::1]:8080", true),
            ("[::ffff:127.0.0.1]:8080", true),
            ("0.0.0.0:8080", false),
            ("[::]:8080", false),
            ("192.168.1.20:8080", false),
            ("localhost:8080", true),
            ("localhost.evil.example:8080", false),
            ("nowhere", false),
        ] {
            server.bind = bind.into();
            assert_eq!(server.binds_loopback(), loopback, "{bind}");
        }
    }

    #[test]
    fn any_host_needs_a_token_and_hosts_are_bare_names() {
        let mut settings = defaults();
        settings.server.allowed_hosts = vec!["*".into()];
        let err = settings.validate().unwrap_err().to_string();
        assert!(err.contains("server.allowed_hosts: \"*\""), "{err}");
        assert!(err.contains("TROUPE__SERVER__AUTH_TOKEN"), "{err}");
        settings.server.auth_token = Some(Secret::new("a-long-enough-token-1234"));
        settings.validate().unwrap();
        settings.server.allowed_hosts = vec![
            "troupe.lan".into(),
            "10.0.0.7".into(),
            "fe80::1".into(),
            "troupe.lan:8080".into(),
            "http://troupe.lan".into(),
            "".into(),
        ];
        let Err(ConfigError::Invalid(problems)) = settings.validate() else {
            panic!("expected invalid configuration");
        };
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems
            .iter()
            .all(|p| p.starts_with("server.allowed_hosts")));
        settings.server.auth_token = Some(Secret::new("short"));
        settings.server.allowed_hosts.clear();
        let err = settings.validate().unwrap_err().to_string();
        assert!(err.contains("server.auth_token: too short"), "{err}");
        assert!(
            !err.contains("short\""),
            "the token itself is not shown: {err}"
        );
    }

    #[test]
    fn a_token_in_a_file_is_refused_and_never_shown() {
        let dir = std::env::temp_dir().join(format!("troupe-config-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("leaky.toml"),
            "[server]\nauth_token = \"file-token-0123456789\"\n\n[llm.groq]\napi_key = \"gsk-file-key\"\n",
        )
        .unwrap();
        let err = Settings::load_from(&dir, Some("leaky"))
            .unwrap_err()
            .to_string();
        std::fs::remove_dir_all(dir).unwrap();
        assert!(
            err.contains("server.auth_token: a secret must not be in a configuration file; set TROUPE__SERVER__AUTH_TOKEN"),
            "{err}"
        );
        assert!(err.contains("llm.groq.api_key"), "{err}");
        assert!(
            !err.contains("file-token") && !err.contains("gsk-file"),
            "{err}"
        );
    }

    #[test]
    fn the_auth_token_never_shows_in_debug_output() {
        let mut settings = defaults();
        settings.server.auth_token = Some(Secret::new("tok-very-secret-0123"));
        let shown = format!("{settings:?}");
        assert!(!shown.contains("tok-very-secret"), "{shown}");
    }

    #[test]
    fn shipped_prices_cover_the_groq_default() {
        let settings = defaults();
        let price = settings.llm.price_of(&settings.llm.groq.model);
        assert!(price.input_per_million > 0.0 && price.output_per_million > 0.0);
        assert_eq!(
            settings.llm.price_of("SmolLM2-135M-Instruct"),
            PriceSettings::default()
        );
    }
}
