//! Metric names, each defined once: the constants every registration and every test names.

/// Messages sent to an agent and not yet picked up by its handler.
pub const MAILBOX_DEPTH: &str = "troupe_mailbox_depth";
/// Work an agent has accepted and not finished (async handlers run concurrently).
pub const AGENT_IN_FLIGHT: &str = "troupe_agent_in_flight";
/// Tasks accepted and waiting for a free slot.
pub const TASK_QUEUE_DEPTH: &str = "troupe_task_queue_depth";
/// Tasks being worked on.
pub const TASKS_RUNNING: &str = "troupe_tasks_running";
/// Time from sending a message to its handler starting.
pub const MESSAGE_LATENCY: &str = "troupe_message_latency_seconds";
/// Duration of one step on one agent.
pub const STEP_DURATION: &str = "troupe_step_duration_seconds";
/// Duration of a task from start to its terminal state.
pub const TASK_DURATION: &str = "troupe_task_duration_seconds";
/// Finished tasks by outcome.
pub const TASKS_TOTAL: &str = "troupe_tasks_total";
/// Finished tasks removed with their records, by reason.
pub const TASKS_DELETED: &str = "troupe_tasks_deleted_total";
/// Unfinished tasks of a dead process taken over at start-up, by what became of them.
pub const TASKS_RESUMED: &str = "troupe_tasks_resumed_total";
/// Tasks paused in debug mode, by kind of point and why.
pub const DEBUG_PAUSES: &str = "troupe_debug_pauses_total";
/// A person's actions at a pause, by action.
pub const DEBUG_ACTIONS: &str = "troupe_debug_actions_total";
/// Agent restarts by the supervisor.
pub const SUPERVISOR_RESTARTS: &str = "troupe_supervisor_restarts_total";
/// Tokens by provider, model and type (input/output).
pub const LLM_TOKENS: &str = "troupe_llm_tokens_total";
/// Model call duration.
pub const LLM_REQUEST_DURATION: &str = "troupe_llm_request_duration_seconds";
/// Failed model calls by provider and kind of failure.
pub const LLM_ERRORS: &str = "troupe_llm_errors_total";
/// Decisions by deciding agent and kind.
pub const DECISIONS: &str = "troupe_decisions_total";
/// Events appended to task logs, by kind.
pub const EVENTS: &str = "troupe_events_total";
/// Storage writer failures by `op`: `batch` (retried op by op), `task` (a task failed by storage), `queue_full`.
pub const STORE_WRITE_ERRORS: &str = "troupe_store_write_errors_total";
/// 1 while the storage writer finds the database unreachable and waits for it.
pub const STORE_DOWN: &str = "troupe_store_down";
/// Always 1; the label carries the running version.
pub const BUILD_INFO: &str = "troupe_build_info";
/// Money spent on model calls, from the configured prices.
pub const LLM_COST: &str = "troupe_llm_cost_usd_total";
/// Model calls sent to the fallback provider after the primary failed.
pub const LLM_FALLBACKS: &str = "troupe_llm_fallbacks_total";
/// Model calls that would have taken their task over its budget.
pub const BUDGET_EXCEEDED: &str = "troupe_budget_exceeded_total";
/// Time from sending a model call to its first streamed piece.
pub const LLM_TIME_TO_FIRST_TOKEN: &str = "troupe_llm_time_to_first_token_seconds";
/// Retries of remote model calls before their first token, by provider and reason (rate_limited, http_5xx,
/// connect).
pub const LLM_RETRIES: &str = "troupe_llm_retries_total";
/// A remote provider's rate limit left, from its last `x-ratelimit-remaining-*` headers, by kind (requests,
/// tokens).
pub const LLM_RATE_LIMIT_REMAINING: &str = "troupe_llm_rate_limit_remaining";
/// A remote provider's rate limit, from its last `x-ratelimit-limit-*` headers, by kind.
pub const LLM_RATE_LIMIT_LIMIT: &str = "troupe_llm_rate_limit_limit";
/// Seconds until a remote provider's rate limit resets, from its last `x-ratelimit-reset-*` headers, by kind.
pub const LLM_RATE_LIMIT_RESET: &str = "troupe_llm_rate_limit_reset_seconds";
/// 1 while the embedded model's worker process is ready.
pub const MODEL_WORKER_UP: &str = "troupe_model_worker_up";
/// Duration of one commit of the storage writer's batch.
pub const STORE_COMMIT_DURATION: &str = "troupe_store_commit_duration_seconds";
/// Database pool connections by state (in_use, idle).
pub const DB_POOL_CONNECTIONS: &str = "troupe_db_pool_connections";
/// The database pool's size limit.
pub const DB_POOL_MAX_CONNECTIONS: &str = "troupe_db_pool_max_connections";
/// HTTP requests by method, route pattern and status.
pub const HTTP_REQUESTS: &str = "troupe_http_requests_total";
/// HTTP request duration by method and route pattern.
pub const HTTP_REQUEST_DURATION: &str = "troupe_http_request_duration_seconds";
/// Open WebSocket event streams.
pub const WEBSOCKET_CONNECTIONS: &str = "troupe_websocket_connections";
/// WebSocket streams dropped because the client stopped reading (`server.websocket_send_timeout_seconds`).
pub const WEBSOCKET_SLOW_CLIENTS: &str = "troupe_websocket_slow_clients_total";
/// Memory operations by tier (short_term, long_term, semantic), operation and outcome.
pub const MEMORY_OPERATIONS: &str = "troupe_memory_operations_total";
/// Memory operation duration by tier and operation.
pub const MEMORY_OPERATION_DURATION: &str = "troupe_memory_operation_duration_seconds";
/// Cosine similarity of the best hit of each semantic search that found something.
pub const MEMORY_SEARCH_TOP_SCORE: &str = "troupe_memory_search_top_score_ratio";
/// Memories offered to an agent (at or above the recall threshold), by kind.
pub const MEMORY_REUSES: &str = "troupe_memory_reuses_total";
/// Texts embedded, by model.
pub const EMBEDDINGS: &str = "troupe_embeddings_total";
/// Duration of one embedding batch, by model.
pub const EMBEDDING_DURATION: &str = "troupe_embedding_duration_seconds";
/// Attempts to learn a pattern from a failed run and its fix, by outcome (extracted, no_signature).
pub const PATTERN_EXTRACTIONS: &str = "troupe_memory_pattern_extractions_total";
/// Runs that used a retrieved pattern, by outcome (passed, failed).
pub const PATTERN_OUTCOMES: &str = "troupe_memory_pattern_outcomes_total";
/// 1 while the configured short-term store answers (backend redis or local); 0 while Redis is down
/// and short-term memory falls back to the process.
pub const SHORT_TERM_STORE_UP: &str = "troupe_short_term_store_up";
/// Sandbox runs by language and outcome (ok, error, timeout, oom, killed, violation, refused).
pub const SANDBOX_RUNS: &str = "troupe_sandbox_runs_total";
/// Wall-clock duration of a sandbox run, by language.
pub const SANDBOX_RUN_DURATION: &str = "troupe_sandbox_run_duration_seconds";
/// CPU time of a sandbox run, by language.
pub const SANDBOX_CPU: &str = "troupe_sandbox_cpu_seconds";
/// Peak resident memory of a sandbox run, by language.
pub const SANDBOX_PEAK_RSS: &str = "troupe_sandbox_peak_rss_bytes";
/// What the sandbox contained, by kind.
pub const SANDBOX_VIOLATIONS: &str = "troupe_sandbox_violations_total";
/// 1 when the sandbox can run code (bubblewrap works), 0 when it refuses.
pub const SANDBOX_UP: &str = "troupe_sandbox_up";
/// Sandbox slots in use now (runs going; a cancelled task's are freed at once).
pub const SANDBOX_SLOTS_BUSY: &str = "troupe_sandbox_slots_busy";
/// Tool calls by tool and outcome (ok, error).
pub const TOOL_CALLS: &str = "troupe_tool_calls_total";
/// Tool call duration by tool.
pub const TOOL_CALL_DURATION: &str = "troupe_tool_call_duration_seconds";
/// Replays of recorded tool calls by tool and outcome (same, different, error).
pub const TOOL_REPLAYS: &str = "troupe_tool_replays_total";
/// Code attempts of the Code/QA loop by attempt number and outcome (passed, failed).
pub const CODE_ATTEMPTS: &str = "troupe_code_attempts_total";
/// Revisions QA's `fail` verdict asked for, by outcome (passed, failed, advisory).
pub const QA_REVISIONS: &str = "troupe_qa_revisions_total";
/// Code/QA attempts after a failure, by whether a learned fix was offered and how they ended.
pub const CODE_FIX_OUTCOMES: &str = "troupe_code_fix_outcomes_total";
/// Verifications by several voters, by rule and outcome (pass, fail, none: no consensus, which fails).
pub const CONSENSUS: &str = "troupe_consensus_total";
/// The share of voters whose vote was the outcome, per verification by several voters.
pub const CONSENSUS_AGREEMENT: &str = "troupe_consensus_agreement_ratio";
/// Replay and fork model calls whose request differed from the recorded one (or was never recorded), by
/// what the task did (stop, live).
pub const REPLAY_DIVERGENCES: &str = "troupe_replay_divergences_total";
/// Forks of finished tasks accepted, by the decision they override (none, assign_agent).
pub const FORKS: &str = "troupe_forks_total";
/// Breakpoints set (in this process's registry: every task's and the task-attached ones).
pub const BREAKPOINTS: &str = "troupe_breakpoints";
/// Breakpoints that matched a point and paused a task, by kind of point (decision, tool, step, llm).
pub const BREAKPOINT_HITS: &str = "troupe_breakpoint_hits_total";
/// 1 for this process, labelled with its role (api, worker, all) and queue backend (local, redis).
pub const NODE_INFO: &str = "troupe_node_info";
/// 1 when the task queue (Redis) answered this process's last operation, 0 when it did not.
pub const QUEUE_UP: &str = "troupe_queue_up";
/// Entries of the task queue by state (waiting, pending, dead), as this worker last sampled them.
pub const QUEUE_ENTRIES: &str = "troupe_queue_entries";
/// Queue entries this worker took, by what came of them.
pub const QUEUE_DELIVERIES: &str = "troupe_queue_deliveries_total";
/// Queue entries this worker took from workers that stopped renewing them.
pub const QUEUE_RECLAIMED: &str = "troupe_queue_reclaimed_total";
/// Seconds a task's queue entry waited between its submission and its start on a worker.
pub const QUEUE_WAIT: &str = "troupe_queue_wait_seconds";
/// Unix time of this worker's last read of the task queue (its liveness as a consumer).
pub const QUEUE_LAST_READ: &str = "troupe_queue_last_read_timestamp_seconds";
