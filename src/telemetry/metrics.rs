//! Every Prometheus metric Troupe exports: names (one constant each), help texts, labels and buckets in one
//! place, registered in a registry owned by the application (so that tests running several apps in one
//! process do not share counters).
//!
//! Conventions: `troupe_` prefix, base units (`_seconds`), `_total` on counters, bounded label values only
//! (agent names, outcomes, providers; never task ids).

use prometheus::{
    CounterVec, Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Metric names, each defined once.
pub mod names;

/// A metric's kind, as in the Prometheus text format's `# TYPE` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A value that only goes up.
    Counter,
    /// A value that goes up and down.
    Gauge,
    /// Observations in buckets.
    Histogram,
}

impl Kind {
    /// The name used in `# TYPE` lines.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One entry of the catalogue: what `/metrics` may contain (documented in `observability/METRICS.md`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Full metric name.
    pub name: String,
    /// Its kind.
    pub kind: Kind,
    /// Its label names, in order.
    pub labels: Vec<String>,
    /// Its help text.
    pub help: String,
}

/// Buckets for work that lasts from a millisecond to five minutes (steps, tasks, model calls), dense enough
/// for p50/p95/p99 across that range.
const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0,
    120.0, 300.0,
];

/// Buckets for memory sizes: 1 MiB to 4 GiB.
const RSS_BUCKETS: &[f64] = &[
    1_048_576.0,
    4_194_304.0,
    16_777_216.0,
    33_554_432.0,
    67_108_864.0,
    134_217_728.0,
    268_435_456.0,
    536_870_912.0,
    1_073_741_824.0,
    4_294_967_296.0,
];

/// Buckets for a mailbox hop: a microsecond to a second.
const HOP_BUCKETS: &[f64] = &[
    0.000_001,
    0.000_002_5,
    0.000_005,
    0.000_01,
    0.000_025,
    0.000_05,
    0.000_1,
    0.000_25,
    0.000_5,
    0.001,
    0.002_5,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    1.0,
];

/// Buckets for one database commit: 100 µs to 10 s.
const COMMIT_BUCKETS: &[f64] = &[
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Buckets for a cosine similarity.
const SCORE_BUCKETS: &[f64] = &[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0];

/// Metrics could not be registered (a programming error: a duplicate name).
#[derive(Debug, thiserror::Error)]
#[error("register metrics")]
pub struct MetricsError(#[from] prometheus::Error);

/// All of Troupe's metrics and the registry that exports them.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    catalogue: std::sync::Arc<Vec<Entry>>,
    /// See [`names::MAILBOX_DEPTH`]; label `agent`.
    pub mailbox_depth: IntGaugeVec,
    /// See [`names::AGENT_IN_FLIGHT`]; label `agent`.
    pub agent_in_flight: IntGaugeVec,
    /// See [`names::TASK_QUEUE_DEPTH`].
    pub task_queue_depth: IntGauge,
    /// See [`names::TASKS_RUNNING`].
    pub tasks_running: IntGauge,
    /// See [`names::MESSAGE_LATENCY`]; label `agent`.
    pub message_latency: HistogramVec,
    /// See [`names::STEP_DURATION`]; labels `agent`, `outcome`.
    pub step_duration: HistogramVec,
    /// See [`names::TASK_DURATION`]; label `outcome`.
    pub task_duration: HistogramVec,
    /// See [`names::TASKS_TOTAL`]; label `outcome`.
    pub tasks_total: IntCounterVec,
    /// See [`names::TASKS_DELETED`]; label `reason` (`request`).
    pub tasks_deleted: IntCounterVec,
    /// See [`names::TASKS_RESUMED`]; label `outcome` (`resumed`, `requeued`, `unresumable`, `interrupted`).
    pub tasks_resumed: IntCounterVec,
    /// See [`names::DEBUG_PAUSES`]; labels `on` (decision, tool, step, llm), `reason` (breakpoint, step,
    /// restart).
    pub debug_pauses: IntCounterVec,
    /// See [`names::DEBUG_ACTIONS`]; label `action` (continue, step, abort, override).
    pub debug_actions: IntCounterVec,
    /// See [`names::SUPERVISOR_RESTARTS`]; labels `agent`, `reason`.
    pub supervisor_restarts: IntCounterVec,
    /// See [`names::LLM_TOKENS`]; labels `provider`, `model`, `type`.
    pub llm_tokens: IntCounterVec,
    /// See [`names::LLM_COST`]; labels `provider`, `model`.
    pub llm_cost: CounterVec,
    /// See [`names::LLM_FALLBACKS`]; labels `from`, `to`, `reason`.
    pub llm_fallbacks: IntCounterVec,
    /// See [`names::BUDGET_EXCEEDED`]; label `action`.
    pub budget_exceeded: IntCounterVec,
    /// See [`names::LLM_REQUEST_DURATION`]; labels `provider`, `model`.
    pub llm_request_duration: HistogramVec,
    /// See [`names::LLM_TIME_TO_FIRST_TOKEN`]; labels `provider`, `model`.
    pub llm_time_to_first_token: HistogramVec,
    /// See [`names::LLM_ERRORS`]; labels `provider`, `kind`.
    pub llm_errors: IntCounterVec,
    /// See [`names::LLM_RETRIES`]; labels `provider`, `reason`.
    pub llm_retries: IntCounterVec,
    /// See [`names::LLM_RATE_LIMIT_REMAINING`]; labels `provider`, `kind`.
    pub llm_rate_limit_remaining: GaugeVec,
    /// See [`names::LLM_RATE_LIMIT_LIMIT`]; labels `provider`, `kind`.
    pub llm_rate_limit_limit: GaugeVec,
    /// See [`names::LLM_RATE_LIMIT_RESET`]; labels `provider`, `kind`.
    pub llm_rate_limit_reset: GaugeVec,
    /// See [`names::MODEL_WORKER_UP`].
    pub model_worker_up: IntGauge,
    /// See [`names::DECISIONS`]; labels `agent`, `kind`.
    pub decisions: IntCounterVec,
    /// See [`names::EVENTS`]; label `kind`.
    pub events: IntCounterVec,
    /// See [`names::STORE_WRITE_ERRORS`]; label `op`.
    pub store_write_errors: IntCounterVec,
    /// See [`names::STORE_COMMIT_DURATION`].
    pub store_commit_duration: Histogram,
    /// See [`names::STORE_DOWN`].
    pub store_down: IntGauge,
    /// See [`names::DB_POOL_CONNECTIONS`]; label `state`.
    pub db_pool_connections: IntGaugeVec,
    /// See [`names::DB_POOL_MAX_CONNECTIONS`].
    pub db_pool_max_connections: IntGauge,
    /// See [`names::HTTP_REQUESTS`]; labels `method`, `route`, `status`.
    pub http_requests: IntCounterVec,
    /// See [`names::HTTP_REQUEST_DURATION`]; labels `method`, `route`.
    pub http_request_duration: HistogramVec,
    /// See [`names::WEBSOCKET_CONNECTIONS`].
    pub websocket_connections: IntGauge,
    /// See [`names::WEBSOCKET_SLOW_CLIENTS`].
    pub websocket_slow_clients: prometheus::IntCounter,
    /// See [`names::MEMORY_OPERATIONS`]; labels `tier`, `op`, `outcome`.
    pub memory_operations: IntCounterVec,
    /// See [`names::MEMORY_OPERATION_DURATION`]; labels `tier`, `op`.
    pub memory_operation_duration: HistogramVec,
    /// See [`names::MEMORY_SEARCH_TOP_SCORE`].
    pub memory_search_top_score: Histogram,
    /// See [`names::MEMORY_REUSES`]; label `kind`.
    pub memory_reuses: IntCounterVec,
    /// See [`names::EMBEDDINGS`]; label `model`.
    pub embeddings: IntCounterVec,
    /// See [`names::EMBEDDING_DURATION`]; label `model`.
    pub embedding_duration: HistogramVec,
    /// See [`names::PATTERN_EXTRACTIONS`]; label `outcome`.
    pub pattern_extractions: IntCounterVec,
    /// See [`names::PATTERN_OUTCOMES`]; label `outcome`.
    pub pattern_outcomes: IntCounterVec,
    /// See [`names::SHORT_TERM_STORE_UP`]; label `backend`.
    pub short_term_store_up: IntGaugeVec,
    /// See [`names::SANDBOX_RUNS`]; labels `language`, `outcome`.
    pub sandbox_runs: IntCounterVec,
    /// See [`names::SANDBOX_RUN_DURATION`]; label `language`.
    pub sandbox_run_duration: HistogramVec,
    /// See [`names::SANDBOX_CPU`]; label `language`.
    pub sandbox_cpu: HistogramVec,
    /// See [`names::SANDBOX_PEAK_RSS`]; label `language`.
    pub sandbox_peak_rss: HistogramVec,
    /// See [`names::SANDBOX_VIOLATIONS`]; label `kind`.
    pub sandbox_violations: IntCounterVec,
    /// See [`names::SANDBOX_UP`].
    pub sandbox_up: IntGauge,
    /// See [`names::SANDBOX_SLOTS_BUSY`].
    pub sandbox_slots_busy: IntGauge,
    /// See [`names::TOOL_CALLS`]; labels `tool`, `outcome`.
    pub tool_calls: IntCounterVec,
    /// See [`names::TOOL_CALL_DURATION`]; label `tool`.
    pub tool_call_duration: HistogramVec,
    /// See [`names::TOOL_REPLAYS`]; labels `tool`, `outcome`.
    pub tool_replays: IntCounterVec,
    /// See [`names::CODE_ATTEMPTS`]; labels `attempt`, `outcome`.
    pub code_attempts: IntCounterVec,
    /// See [`names::QA_REVISIONS`]; label `outcome`.
    pub qa_revisions: IntCounterVec,
    /// See [`names::CODE_FIX_OUTCOMES`]; labels `fix_offered`, `outcome`.
    pub code_fix_outcomes: IntCounterVec,
    /// See [`names::CONSENSUS`]; labels `rule`, `outcome`.
    pub consensus: IntCounterVec,
    /// See [`names::CONSENSUS_AGREEMENT`].
    pub consensus_agreement: Histogram,
    /// See [`names::REPLAY_DIVERGENCES`]; label `on_divergence` (`stop`, `live`).
    pub replay_divergences: IntCounterVec,
    /// See [`names::FORKS`]; label `override` (`none`, `assign_agent`).
    pub forks: IntCounterVec,
    /// See [`names::BREAKPOINTS`].
    pub breakpoints: IntGauge,
    /// See [`names::BREAKPOINT_HITS`]; label `on`.
    pub breakpoint_hits: IntCounterVec,
    /// See [`names::NODE_INFO`]; labels `role`, `queue`.
    pub node_info: IntGaugeVec,
    /// See [`names::QUEUE_UP`].
    pub queue_up: IntGauge,
    /// See [`names::QUEUE_ENTRIES`]; label `state` (`waiting`, `pending`, `dead`).
    pub queue_entries: IntGaugeVec,
    /// See [`names::QUEUE_DELIVERIES`]; label `outcome`.
    pub queue_deliveries: IntCounterVec,
    /// See [`names::QUEUE_RECLAIMED`].
    pub queue_reclaimed: prometheus::IntCounter,
    /// See [`names::QUEUE_WAIT`].
    pub queue_wait: Histogram,
    /// See [`names::QUEUE_LAST_READ`].
    pub queue_last_read: IntGauge,
}

/// Registers metrics and writes the catalogue as it goes, so the catalogue cannot miss one.
struct Registrar<'a> {
    registry: &'a Registry,
    catalogue: Vec<Entry>,
}

impl Registrar<'_> {
    fn add<C: prometheus::core::Collector + Clone + 'static>(
        &mut self,
        metric: C,
        kind: Kind,
    ) -> Result<C, MetricsError> {
        for desc in metric.desc() {
            self.catalogue.push(Entry {
                name: desc.fq_name.clone(),
                kind,
                labels: desc.variable_labels.clone(),
                help: desc.help.clone(),
            });
        }
        self.registry.register(Box::new(metric.clone()))?;
        Ok(metric)
    }

    fn gauge(&mut self, name: &str, help: &str) -> Result<IntGauge, MetricsError> {
        self.add(IntGauge::new(name, help)?, Kind::Gauge)
    }

    fn gauge_vec(
        &mut self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> Result<IntGaugeVec, MetricsError> {
        self.add(
            IntGaugeVec::new(Opts::new(name, help), labels)?,
            Kind::Gauge,
        )
    }

    fn float_gauge_vec(
        &mut self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> Result<GaugeVec, MetricsError> {
        self.add(GaugeVec::new(Opts::new(name, help), labels)?, Kind::Gauge)
    }

    fn counter(&mut self, name: &str, help: &str) -> Result<prometheus::IntCounter, MetricsError> {
        self.add(prometheus::IntCounter::new(name, help)?, Kind::Counter)
    }

    fn counter_vec(
        &mut self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> Result<IntCounterVec, MetricsError> {
        self.add(
            IntCounterVec::new(Opts::new(name, help), labels)?,
            Kind::Counter,
        )
    }

    fn float_counter_vec(
        &mut self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> Result<CounterVec, MetricsError> {
        self.add(
            CounterVec::new(Opts::new(name, help), labels)?,
            Kind::Counter,
        )
    }

    fn histogram(
        &mut self,
        name: &str,
        help: &str,
        buckets: &[f64],
    ) -> Result<Histogram, MetricsError> {
        let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
        self.add(Histogram::with_opts(opts)?, Kind::Histogram)
    }

    fn histogram_vec(
        &mut self,
        name: &str,
        help: &str,
        labels: &[&str],
        buckets: &[f64],
    ) -> Result<HistogramVec, MetricsError> {
        let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
        self.add(HistogramVec::new(opts, labels)?, Kind::Histogram)
    }
}

impl Metrics {
    /// Creates and registers every metric in a fresh registry, with the process collector.
    pub fn new() -> Result<Self, MetricsError> {
        let registry = Registry::new();
        let mut r = Registrar {
            registry: &registry,
            catalogue: Vec::new(),
        };
        let build_info = r.gauge_vec(
            names::BUILD_INFO,
            "Always 1; the version label says which Troupe is running.",
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        // The standard process metrics; the crate's collector does not say their kinds, the names do.
        let process = prometheus::process_collector::ProcessCollector::for_self();
        for desc in prometheus::core::Collector::desc(&process) {
            let kind = if desc.fq_name.ends_with("_total") {
                Kind::Counter
            } else {
                Kind::Gauge
            };
            r.catalogue.push(Entry {
                name: desc.fq_name.clone(),
                kind,
                labels: desc.variable_labels.clone(),
                help: desc.help.clone(),
            });
        }
        r.registry.register(Box::new(process))?;
        Ok(Metrics {
            mailbox_depth: r.gauge_vec(
                names::MAILBOX_DEPTH,
                "Messages sent to an agent and not yet picked up by its handler.",
                &["agent"],
            )?,
            agent_in_flight: r.gauge_vec(
                names::AGENT_IN_FLIGHT,
                "Work an agent has accepted and not finished.",
                &["agent"],
            )?,
            task_queue_depth: r.gauge(
                names::TASK_QUEUE_DEPTH,
                "Tasks accepted and waiting for a free slot.",
            )?,
            tasks_running: r.gauge(names::TASKS_RUNNING, "Tasks being worked on.")?,
            message_latency: r.histogram_vec(
                names::MESSAGE_LATENCY,
                "Time from sending a message to an agent to its handler starting.",
                &["agent"],
                HOP_BUCKETS,
            )?,
            step_duration: r.histogram_vec(
                names::STEP_DURATION,
                "Duration of one step on one agent.",
                &["agent", "outcome"],
                DURATION_BUCKETS,
            )?,
            task_duration: r.histogram_vec(
                names::TASK_DURATION,
                "Duration of a task from start to its terminal state.",
                &["outcome"],
                DURATION_BUCKETS,
            )?,
            tasks_total: r.counter_vec(
                names::TASKS_TOTAL,
                "Finished tasks by outcome.",
                &["outcome"],
            )?,
            tasks_deleted: r.counter_vec(
                names::TASKS_DELETED,
                "Finished tasks removed with their records, by reason.",
                &["reason"],
            )?,
            tasks_resumed: r.counter_vec(
                names::TASKS_RESUMED,
                "Unfinished tasks of a dead process taken over at start-up, by what became of them.",
                &["outcome"],
            )?,
            debug_pauses: r.counter_vec(
                names::DEBUG_PAUSES,
                "Tasks paused in debug mode, by kind of point and why.",
                &["on", "reason"],
            )?,
            debug_actions: r.counter_vec(
                names::DEBUG_ACTIONS,
                "A person's actions at a pause, by action.",
                &["action"],
            )?,
            supervisor_restarts: r.counter_vec(
                names::SUPERVISOR_RESTARTS,
                "Agent restarts by the supervisor.",
                &["agent", "reason"],
            )?,
            llm_tokens: r.counter_vec(
                names::LLM_TOKENS,
                "Model tokens by provider, model and type (input, output).",
                &["provider", "model", "type"],
            )?,
            llm_cost: r.float_counter_vec(
                names::LLM_COST,
                "Money spent on model calls in US dollars, from the configured prices (0 for local models).",
                &["provider", "model"],
            )?,
            llm_fallbacks: r.counter_vec(
                names::LLM_FALLBACKS,
                "Model calls sent to the fallback provider, by provider they left, provider they went to, and the primary's error kind.",
                &["from", "to", "reason"],
            )?,
            budget_exceeded: r.counter_vec(
                names::BUDGET_EXCEEDED,
                "Model calls that would have taken their task over its budget, by what was done (fail, downgrade).",
                &["action"],
            )?,
            llm_request_duration: r.histogram_vec(
                names::LLM_REQUEST_DURATION,
                "Model call duration.",
                &["provider", "model"],
                DURATION_BUCKETS,
            )?,
            llm_time_to_first_token: r.histogram_vec(
                names::LLM_TIME_TO_FIRST_TOKEN,
                "Time from sending a model call to its first streamed piece.",
                &["provider", "model"],
                DURATION_BUCKETS,
            )?,
            llm_errors: r.counter_vec(
                names::LLM_ERRORS,
                "Failed model calls by provider and kind of failure.",
                &["provider", "kind"],
            )?,
            llm_retries: r.counter_vec(
                names::LLM_RETRIES,
                "Retries of remote model calls before their first token, by provider and reason (rate_limited, http_5xx, connect).",
                &["provider", "reason"],
            )?,
            llm_rate_limit_remaining: r.float_gauge_vec(
                names::LLM_RATE_LIMIT_REMAINING,
                "A remote provider's rate limit left (x-ratelimit-remaining-*), by kind (requests, tokens).",
                &["provider", "kind"],
            )?,
            llm_rate_limit_limit: r.float_gauge_vec(
                names::LLM_RATE_LIMIT_LIMIT,
                "A remote provider's rate limit (x-ratelimit-limit-*), by kind (requests, tokens).",
                &["provider", "kind"],
            )?,
            llm_rate_limit_reset: r.float_gauge_vec(
                names::LLM_RATE_LIMIT_RESET,
                "Seconds until a remote provider's rate limit resets (x-ratelimit-reset-*), by kind (requests, tokens).",
                &["provider", "kind"],
            )?,
            model_worker_up: r.gauge(
                names::MODEL_WORKER_UP,
                "1 while the embedded model's worker process is ready, 0 while it starts or is down.",
            )?,
            decisions: r.counter_vec(
                names::DECISIONS,
                "Decisions by deciding agent and kind.",
                &["agent", "kind"],
            )?,
            events: r.counter_vec(
                names::EVENTS,
                "Events appended to task logs, by kind.",
                &["kind"],
            )?,
            store_write_errors: r.counter_vec(
                names::STORE_WRITE_ERRORS,
                "Storage writer failures: a batch retried op by op, a task failed by storage, a write dropped on a full queue, an outage of the database.",
                &["op"],
            )?,
            store_commit_duration: r.histogram(
                names::STORE_COMMIT_DURATION,
                "Duration of one commit of the storage writer's batch.",
                COMMIT_BUCKETS,
            )?,
            store_down: r.gauge(
                names::STORE_DOWN,
                "1 while the storage writer finds the database unreachable: writes wait, new requests get 503.",
            )?,
            db_pool_connections: r.gauge_vec(
                names::DB_POOL_CONNECTIONS,
                "Database pool connections by state (in_use, idle).",
                &["state"],
            )?,
            db_pool_max_connections: r.gauge(
                names::DB_POOL_MAX_CONNECTIONS,
                "The database pool's size limit.",
            )?,
            http_requests: r.counter_vec(
                names::HTTP_REQUESTS,
                "HTTP requests by method, route pattern and status code.",
                &["method", "route", "status"],
            )?,
            http_request_duration: r.histogram_vec(
                names::HTTP_REQUEST_DURATION,
                "HTTP request duration (to the response head) by method and route pattern.",
                &["method", "route"],
                DURATION_BUCKETS,
            )?,
            websocket_connections: r.gauge(
                names::WEBSOCKET_CONNECTIONS,
                "Open WebSocket event streams.",
            )?,
            websocket_slow_clients: r.counter(
                names::WEBSOCKET_SLOW_CLIENTS,
                "WebSocket streams dropped because the client stopped reading.",
            )?,
            memory_operations: r.counter_vec(
                names::MEMORY_OPERATIONS,
                "Memory operations by tier (short_term, long_term, semantic), operation and outcome (ok, hit, miss, fallback, error).",
                &["tier", "op", "outcome"],
            )?,
            memory_operation_duration: r.histogram_vec(
                names::MEMORY_OPERATION_DURATION,
                "Memory operation duration by tier and operation.",
                &["tier", "op"],
                COMMIT_BUCKETS,
            )?,
            memory_search_top_score: r.histogram(
                names::MEMORY_SEARCH_TOP_SCORE,
                "Cosine similarity of the best hit of each semantic search that found something.",
                SCORE_BUCKETS,
            )?,
            memory_reuses: r.counter_vec(
                names::MEMORY_REUSES,
                "Memories offered to an agent (at or above the recall threshold), by kind.",
                &["kind"],
            )?,
            embeddings: r.counter_vec(
                names::EMBEDDINGS,
                "Texts embedded, by model.",
                &["model"],
            )?,
            embedding_duration: r.histogram_vec(
                names::EMBEDDING_DURATION,
                "Duration of one embedding batch, by model.",
                &["model"],
                COMMIT_BUCKETS,
            )?,
            pattern_extractions: r.counter_vec(
                names::PATTERN_EXTRACTIONS,
                "Attempts to learn a pattern from a failed run and its fix, by outcome (extracted, no_signature).",
                &["outcome"],
            )?,
            pattern_outcomes: r.counter_vec(
                names::PATTERN_OUTCOMES,
                "Runs that used a retrieved pattern, by outcome (passed, failed).",
                &["outcome"],
            )?,
            short_term_store_up: r.gauge_vec(
                names::SHORT_TERM_STORE_UP,
                "1 while the configured short-term memory store answers (backend redis or local), 0 while Redis is down and memory falls back to the process.",
                &["backend"],
            )?,
            sandbox_runs: r.counter_vec(
                names::SANDBOX_RUNS,
                "Sandbox runs by language and outcome (ok, error, timeout, oom, killed, violation, cancelled, refused).",
                &["language", "outcome"],
            )?,
            sandbox_run_duration: r.histogram_vec(
                names::SANDBOX_RUN_DURATION,
                "Wall-clock duration of a sandbox run, start to exit, by language.",
                &["language"],
                DURATION_BUCKETS,
            )?,
            sandbox_cpu: r.histogram_vec(
                names::SANDBOX_CPU,
                "CPU time (user plus system) of a sandbox run, by language.",
                &["language"],
                DURATION_BUCKETS,
            )?,
            sandbox_peak_rss: r.histogram_vec(
                names::SANDBOX_PEAK_RSS,
                "Peak resident memory of a sandbox run, by language.",
                &["language"],
                RSS_BUCKETS,
            )?,
            sandbox_violations: r.counter_vec(
                names::SANDBOX_VIOLATIONS,
                "What the sandbox contained, by kind (network, filesystem, fork_bomb, memory, runaway, output).",
                &["kind"],
            )?,
            sandbox_up: r.gauge(
                names::SANDBOX_UP,
                "1 when the sandbox can run code (bubblewrap works), 0 when it refuses every run.",
            )?,
            sandbox_slots_busy: r.gauge(
                names::SANDBOX_SLOTS_BUSY,
                "Sandbox slots in use now (of sandbox.parallel_runs); a cancelled task's runs are killed and their slots freed at once.",
            )?,
            tool_calls: r.counter_vec(
                names::TOOL_CALLS,
                "Tool calls by tool and outcome (ok, error).",
                &["tool", "outcome"],
            )?,
            tool_call_duration: r.histogram_vec(
                names::TOOL_CALL_DURATION,
                "Tool call duration by tool.",
                &["tool"],
                DURATION_BUCKETS,
            )?,
            tool_replays: r.counter_vec(
                names::TOOL_REPLAYS,
                "Replays of recorded tool calls by tool and outcome (same, different: what the recorded and replayed call gave compared; error: it could not be replayed).",
                &["tool", "outcome"],
            )?,
            code_attempts: r.counter_vec(
                names::CODE_ATTEMPTS,
                "Attempts of the Code/QA loop by attempt number and outcome (passed, failed, vacuous: the test also passed against a stub of the code; off_task: the code is not for the task): the success rate by attempt is the learning curve.",
                &["attempt", "outcome"],
            )?,
            qa_revisions: r.counter_vec(
                names::QA_REVISIONS,
                "QA `fail` verdicts by what followed: passed (the revised work passed re-verification), failed (still fail: the task failed), advisory (not acted on, director.qa_verdict = advisory).",
                &["outcome"],
            )?,
            code_fix_outcomes: r.counter_vec(
                names::CODE_FIX_OUTCOMES,
                "Code/QA attempts after a failed one, by whether a learned fix was offered with the feedback (fix_offered true/false) and whether the attempt passed (passed/failed): the pass rate with a fix against without is how much learning helps.",
                &["fix_offered", "outcome"],
            )?,
            consensus: r.counter_vec(
                names::CONSENSUS,
                "QA verifications by several voters (director.consensus or a task's options.consensus), by rule (majority, unanimous, weighted) and outcome (pass, fail, none: the rule was not met, which fails).",
                &["rule", "outcome"],
            )?,
            consensus_agreement: r.histogram(
                names::CONSENSUS_AGREEMENT,
                "The share of voters whose vote was the outcome, per verification by several voters (1: unanimous).",
                &[0.2, 0.34, 0.5, 0.6, 0.67, 0.75, 0.8, 0.99, 1.0],
            )?,
            replay_divergences: r.counter_vec(
                names::REPLAY_DIVERGENCES,
                "Replay and fork model calls whose request differed from the recorded one, or that were never recorded, by what the task did: stop (failed with what differed) or live (that call and every later one made live).",
                &["on_divergence"],
            )?,
            forks: r.counter_vec(
                names::FORKS,
                "Forks of finished tasks accepted (POST /api/v1/tasks/{id}/fork), by the decision they override: none or assign_agent.",
                &["override"],
            )?,
            breakpoints: r.gauge(
                names::BREAKPOINTS,
                "Breakpoints set (every task's and the task-attached ones), as this process's registry holds them.",
            )?,
            breakpoint_hits: r.counter_vec(
                names::BREAKPOINT_HITS,
                "Breakpoints that matched and paused a task, by kind of point (decision, tool, step, llm).",
                &["on"],
            )?,
            node_info: r.gauge_vec(
                names::NODE_INFO,
                "1 for this process, by role (api: takes tasks; worker: runs them; all: both) and queue backend (local, redis).",
                &["role", "queue"],
            )?,
            queue_up: r.gauge(
                names::QUEUE_UP,
                "1 when the task queue (Redis) answered this process's last operation on it, 0 when it did not (workers pause reading, the API refuses submissions with 503).",
            )?,
            queue_entries: r.gauge_vec(
                names::QUEUE_ENTRIES,
                "Entries of the task queue by state, as this worker last sampled them (every queue.renew_seconds): waiting (not read by any worker), pending (read, not yet acknowledged: running, or left by a worker that stopped), dead (in the dead-letter stream).",
                &["state"],
            )?,
            queue_deliveries: r.counter_vec(
                names::QUEUE_DELIVERIES,
                "Queue entries this worker took, by what came of them: started, resumed (from its records: its worker had stopped), ended (it had ended already: acknowledged), waiting (a live process owns it: held and asked again), dead_lettered (malformed, its task gone, or delivered more than queue.max_deliveries times).",
                &["outcome"],
            )?,
            queue_reclaimed: r.counter(
                names::QUEUE_RECLAIMED,
                "Queue entries this worker took from workers that stopped renewing them (XAUTOCLAIM after queue.claim_idle_seconds).",
            )?,
            queue_wait: r.histogram(
                names::QUEUE_WAIT,
                "Seconds a task's queue entry waited between its submission (XADD) and its start on this worker.",
                DURATION_BUCKETS,
            )?,
            queue_last_read: r.gauge(
                names::QUEUE_LAST_READ,
                "Unix time of this worker's last successful read of the task queue: its liveness as a consumer.",
            )?,
            catalogue: std::sync::Arc::new(r.catalogue),
            registry,
        })
    }

    /// Counts one memory operation of `tier` with its `outcome` and observes its duration since `started`.
    pub fn observe_memory_op(
        &self,
        tier: &str,
        op: &str,
        outcome: &str,
        started: std::time::Instant,
    ) {
        self.memory_operations
            .with_label_values(&[tier, op, outcome])
            .inc();
        self.memory_operation_duration
            .with_label_values(&[tier, op])
            .observe(started.elapsed().as_secs_f64());
    }

    /// The registry, for exporters.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Every metric this registry can export, in registration order.
    pub fn catalogue(&self) -> &[Entry] {
        &self.catalogue
    }

    /// Renders every metric in the Prometheus text format.
    pub fn render(&self) -> Result<String, MetricsError> {
        let mut buffer = Vec::with_capacity(16 * 1024);
        TextEncoder::new().encode(&self.registry.gather(), &mut buffer)?;
        // The text encoder writes only UTF-8.
        Ok(String::from_utf8_lossy(&buffer).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_registers_and_renders_with_its_name() {
        let metrics = Metrics::new().unwrap();
        metrics.tasks_total.with_label_values(&["completed"]).inc();
        metrics
            .supervisor_restarts
            .with_label_values(&["research", "panic"])
            .inc();
        let text = metrics.render().unwrap();
        assert!(text.contains("troupe_tasks_total{outcome=\"completed\"} 1"));
        assert!(text
            .contains("troupe_supervisor_restarts_total{agent=\"research\",reason=\"panic\"} 1"));
        assert!(text.contains("# TYPE troupe_task_queue_depth gauge"));
    }

    #[test]
    fn two_instances_do_not_share_counters() {
        let first = Metrics::new().unwrap();
        let second = Metrics::new().unwrap();
        first.tasks_total.with_label_values(&["failed"]).inc();
        assert!(!second
            .render()
            .unwrap()
            .contains("troupe_tasks_total{outcome=\"failed\"}"));
    }

    /// `observability/METRICS.md` catalogue rows (those whose second cell is a metric type): (name, type,
    /// labels).
    fn documented() -> Vec<(String, String, Vec<String>)> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/observability/METRICS.md");
        let text = std::fs::read_to_string(path).unwrap();
        text.lines()
            .filter(|line| line.starts_with("| `"))
            .map(|line| {
                let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
                let name = cells[0].trim_matches('`').to_owned();
                let labels = cells[2]
                    .split(',')
                    .map(|label| label.trim().trim_matches('`').to_owned())
                    .filter(|label| !label.is_empty() && label != "–" && label != "-")
                    .collect();
                (name, cells[1].to_owned(), labels)
            })
            .filter(|(_, kind, _)| ["counter", "gauge", "histogram"].contains(&kind.as_str()))
            .collect()
    }

    #[test]
    fn metrics_md_documents_exactly_the_exported_metrics() {
        let metrics = Metrics::new().unwrap();
        let mut exported: Vec<(String, String, Vec<String>)> = metrics
            .catalogue()
            .iter()
            .map(|entry| {
                let mut labels = entry.labels.clone();
                labels.sort();
                (entry.name.clone(), entry.kind.as_str().to_owned(), labels)
            })
            .collect();
        let mut documented: Vec<(String, String, Vec<String>)> = documented()
            .into_iter()
            .map(|(name, kind, mut labels)| {
                labels.sort();
                (name, kind, labels)
            })
            .collect();
        exported.sort();
        documented.sort();
        let missing: Vec<_> = exported
            .iter()
            .filter(|e| !documented.contains(e))
            .collect();
        let stale: Vec<_> = documented
            .iter()
            .filter(|d| !exported.contains(d))
            .collect();
        assert!(
            missing.is_empty() && stale.is_empty(),
            "exported but not documented (or documented differently): {missing:#?}\n\
             documented but not exported: {stale:#?}"
        );
    }

    #[test]
    fn the_catalogue_covers_every_family_a_scrape_can_show() {
        let metrics = Metrics::new().unwrap();
        metrics.llm_cost.with_label_values(&["p", "m"]).inc_by(0.5);
        metrics.websocket_connections.set(2);
        let names: Vec<&str> = metrics
            .catalogue()
            .iter()
            .map(|e| e.name.as_str())
            .collect();
        for family in metrics.registry().gather() {
            assert!(
                names.contains(&family.name()),
                "{} not in the catalogue",
                family.name()
            );
        }
        assert!(names.contains(&names::HTTP_REQUESTS));
        assert!(names.contains(&"process_resident_memory_bytes"));
    }
}
