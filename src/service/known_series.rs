//! Exports at 0, from the start, every labelled counter and gauge whose label values are known when the
//! core is assembled (agents, outcomes, reasons, kinds, tools, the configured providers and models), so
//! that `rate()`, `increase()` and absence alerts see a series before its first event (the Prometheus
//! convention: avoid missing metrics).
//!
//! Deliberately left to appear on first use: histograms (a zero histogram is many bucket series with no
//! information), the HTTP metrics (routes times status codes are not known in advance), the rate-limit
//! gauges (0 would claim a provider's limit is used up; only its headers know), memory operations (which
//! tier, operation and outcome combine depends on the backends in use), and the gauges set at every scrape
//! (database pool, short-term store).

use std::sync::Arc;

use crate::config::Settings;
use crate::domain::{
    AgentKind, BreakOn, DecisionKind, EventKind, MemoryKind, OnDivergence, TaskStatus,
};
use crate::llm::models::Models;
use crate::llm::LlmError;
use crate::sandbox::{Language, Outcome, ViolationKind};
use crate::supervision::RestartReason;
use crate::telemetry::metrics::Metrics;
use crate::tools::Tools;

/// `troupe_code_attempts_total`'s outcomes (`director/flow/code_loop.rs`).
const CODE_ATTEMPT_OUTCOMES: [&str; 4] = ["passed", "failed", "vacuous", "off_task"];
/// `troupe_qa_revisions_total`'s outcomes (`director/flow.rs`).
const QA_REVISION_OUTCOMES: [&str; 3] = ["passed", "failed", "advisory"];
/// `troupe_decisions_total`'s (agent, kind) pairs (`director/flow.rs`, `director/flow/consensus.rs`).
const DECISIONS: [(AgentKind, &str); 3] = [
    (AgentKind::Director, "assign_agent"),
    (AgentKind::Qa, "verdict"),
    (AgentKind::Qa, "vote"),
];
/// `troupe_consensus_total`'s outcomes (`director/flow/consensus.rs`).
const CONSENSUS_OUTCOMES: [&str; 3] = ["pass", "fail", "none"];
/// `troupe_budget_exceeded_total`'s actions (`llm/recorded.rs`).
const BUDGET_ACTIONS: [&str; 2] = ["fail", "downgrade"];
/// `troupe_llm_retries_total`'s reasons (`llm/openai.rs`), for the providers that retry.
const RETRY_REASONS: [&str; 3] = ["rate_limited", "http_5xx", "connect"];
/// Providers whose calls are retried (`llm/openai.rs`; named by `provider_name`).
const RETRYING_PROVIDERS: [&str; 2] = ["openai", "groq"];
/// The embedded provider's name; its worker's restarts are counted as agent `model_worker`.
const EMBEDDED_PROVIDER: &str = "llama.cpp";

/// Touches every known series once (a counter at 0 stays 0; a gauge is created at 0).
pub(super) fn export(metrics: &Metrics, settings: &Settings, models: &Models, tools: &Tools) {
    for agent in AgentKind::ALL {
        let name = agent.as_str();
        metrics.mailbox_depth.with_label_values(&[name]);
        metrics.agent_in_flight.with_label_values(&[name]);
    }
    for agent in AgentKind::SPECIALISTS {
        for reason in RestartReason::ALL {
            metrics
                .supervisor_restarts
                .with_label_values(&[agent.as_str(), reason.as_str()]);
        }
    }
    for status in TaskStatus::ALL.into_iter().filter(|s| s.is_terminal()) {
        metrics.tasks_total.with_label_values(&[status.as_str()]);
    }
    metrics.tasks_deleted.with_label_values(&["request"]);
    metrics.tasks_deleted.with_label_values(&["retention"]);
    for outcome in crate::service::RESUME_OUTCOMES {
        metrics.tasks_resumed.with_label_values(&[outcome]);
    }
    let queue = if settings.queue.is_redis() {
        "redis"
    } else {
        "local"
    };
    metrics
        .node_info
        .with_label_values(&[settings.server.role.as_str(), queue])
        .set(1);
    if settings.queue.is_redis() {
        for outcome in super::consumer::DELIVERY_OUTCOMES {
            metrics.queue_deliveries.with_label_values(&[outcome]);
        }
        for state in ["waiting", "pending", "dead"] {
            metrics.queue_entries.with_label_values(&[state]);
        }
    }
    for kind in EventKind::ALL {
        metrics.events.with_label_values(&[kind.as_str()]);
    }
    for op in ["batch", "task", "queue_full"] {
        metrics.store_write_errors.with_label_values(&[op]);
    }
    for (agent, kind) in DECISIONS {
        metrics.decisions.with_label_values(&[agent.as_str(), kind]);
    }
    for action in BUDGET_ACTIONS {
        metrics.budget_exceeded.with_label_values(&[action]);
    }
    for attempt in 1..=settings.director.code_attempts {
        for outcome in CODE_ATTEMPT_OUTCOMES {
            metrics
                .code_attempts
                .with_label_values(&[&attempt.to_string(), outcome]);
        }
    }
    for outcome in QA_REVISION_OUTCOMES {
        metrics.qa_revisions.with_label_values(&[outcome]);
    }
    for offered in ["true", "false"] {
        for outcome in ["passed", "failed"] {
            metrics
                .code_fix_outcomes
                .with_label_values(&[offered, outcome]);
        }
    }
    for rule in crate::domain::ConsensusRule::ALL {
        for outcome in CONSENSUS_OUTCOMES {
            metrics
                .consensus
                .with_label_values(&[rule.as_str(), outcome]);
        }
    }
    for action in OnDivergence::ALL {
        metrics
            .replay_divergences
            .with_label_values(&[action.as_str()]);
    }
    metrics.forks.with_label_values(&["none"]);
    metrics
        .forks
        .with_label_values(&[DecisionKind::AssignAgent.as_str()]);
    for on in BreakOn::ALL {
        metrics.breakpoint_hits.with_label_values(&[on.as_str()]);
    }
    for language in Language::ALL {
        let outcomes = Outcome::ALL.map(Outcome::as_str);
        for outcome in outcomes.into_iter().chain(["refused"]) {
            metrics
                .sandbox_runs
                .with_label_values(&[language.as_str(), outcome]);
        }
    }
    for kind in ViolationKind::ALL {
        metrics
            .sandbox_violations
            .with_label_values(&[kind.as_str()]);
    }
    for spec in tools.specs() {
        for outcome in ["ok", "error"] {
            metrics.tool_calls.with_label_values(&[spec.name, outcome]);
        }
        for outcome in crate::service::tool_replay::REPLAY_OUTCOMES {
            metrics
                .tool_replays
                .with_label_values(&[spec.name, outcome]);
        }
    }
    if settings.memory.enabled {
        for kind in MemoryKind::ALL {
            metrics.memory_reuses.with_label_values(&[kind.as_str()]);
        }
        metrics
            .embeddings
            .with_label_values(&[crate::memory::embedding::MODEL_NAME]);
        for outcome in ["extracted", "no_signature"] {
            metrics.pattern_extractions.with_label_values(&[outcome]);
        }
        for outcome in ["passed", "failed"] {
            metrics.pattern_outcomes.with_label_values(&[outcome]);
        }
    }
    export_models(metrics, models);
}

/// The series of the configured providers and models: tokens, cost, errors, retries, fallbacks, and the
/// embedded worker's restarts.
fn export_models(metrics: &Metrics, models: &Models) {
    let errors = LlmError::samples();
    let fallback = models.fallback();
    for provider in models.distinct() {
        let name = provider.provider_name();
        let model = provider.model_name();
        for kind in ["input", "output"] {
            metrics.llm_tokens.with_label_values(&[name, model, kind]);
        }
        metrics.llm_cost.with_label_values(&[name, model]);
        for error in &errors {
            metrics.llm_errors.with_label_values(&[name, error.kind()]);
        }
        if RETRYING_PROVIDERS.contains(&name) {
            for reason in RETRY_REASONS {
                metrics.llm_retries.with_label_values(&[name, reason]);
            }
        }
        if name == EMBEDDED_PROVIDER {
            metrics
                .supervisor_restarts
                .with_label_values(&["model_worker", RestartReason::Crash.as_str()]);
        }
        if let Some(fallback) = fallback.filter(|f| !Arc::ptr_eq(*f, provider)) {
            for error in errors.iter().filter(|error| error.falls_back()) {
                metrics.llm_fallbacks.with_label_values(&[
                    name,
                    fallback.provider_name(),
                    error.kind(),
                ]);
            }
        }
    }
}
