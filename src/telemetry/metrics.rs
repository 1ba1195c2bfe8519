//! Every Prometheus metric Troupe exports: names (one constant each), help texts, labels and buckets in one
//! place, registered in a registry owned by the application (so that tests running several apps in one
//! process do not share counters).
//!
//! Conventions: `troupe_` prefix, base units (`_seconds`), `_total` on counters, bounded label values only
//! (agent names, outcomes, providers; never task ids).

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Metric names, each defined once.
pub mod names {
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
    /// Event-log batches that failed to commit.
    pub const STORE_WRITE_ERRORS: &str = "troupe_store_write_errors_total";
}

/// Buckets for work that lasts from a millisecond to five minutes (steps, tasks, model calls), dense enough
/// for p50/p95/p99 across that range.
const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0,
    120.0, 300.0,
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

/// Metrics could not be registered (a programming error: a duplicate name).
#[derive(Debug, thiserror::Error)]
#[error("register metrics")]
pub struct MetricsError(#[from] prometheus::Error);

/// All of Troupe's metrics and the registry that exports them.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
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
    /// See [`names::SUPERVISOR_RESTARTS`]; labels `agent`, `reason`.
    pub supervisor_restarts: IntCounterVec,
    /// See [`names::LLM_TOKENS`]; labels `provider`, `model`, `type`.
    pub llm_tokens: IntCounterVec,
    /// See [`names::LLM_REQUEST_DURATION`]; labels `provider`, `model`.
    pub llm_request_duration: HistogramVec,
    /// See [`names::LLM_ERRORS`]; labels `provider`, `kind`.
    pub llm_errors: IntCounterVec,
    /// See [`names::DECISIONS`]; labels `agent`, `kind`.
    pub decisions: IntCounterVec,
    /// See [`names::EVENTS`]; label `kind`.
    pub events: IntCounterVec,
    /// See [`names::STORE_WRITE_ERRORS`].
    pub store_write_errors: IntCounterVec,
}

impl Metrics {
    /// Creates and registers every metric in a fresh registry, with the process collector.
    pub fn new() -> Result<Self, MetricsError> {
        let registry = Registry::new();
        let gauge_vec =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntGaugeVec, MetricsError> {
                let metric = IntGaugeVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(metric.clone()))?;
                Ok(metric)
            };
        let counter_vec =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, MetricsError> {
                let metric = IntCounterVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(metric.clone()))?;
                Ok(metric)
            };
        let histogram_vec = |name: &str,
                             help: &str,
                             labels: &[&str],
                             buckets: &[f64]|
         -> Result<HistogramVec, MetricsError> {
            let metric = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(buckets.to_vec()),
                labels,
            )?;
            registry.register(Box::new(metric.clone()))?;
            Ok(metric)
        };
        let gauge = |name: &str, help: &str| -> Result<IntGauge, MetricsError> {
            let metric = IntGauge::new(name, help)?;
            registry.register(Box::new(metric.clone()))?;
            Ok(metric)
        };

        let metrics = Metrics {
            mailbox_depth: gauge_vec(
                names::MAILBOX_DEPTH,
                "Messages sent to an agent and not yet picked up by its handler.",
                &["agent"],
            )?,
            agent_in_flight: gauge_vec(
                names::AGENT_IN_FLIGHT,
                "Work an agent has accepted and not finished.",
                &["agent"],
            )?,
            task_queue_depth: gauge(
                names::TASK_QUEUE_DEPTH,
                "Tasks accepted and waiting for a free slot.",
            )?,
            tasks_running: gauge(names::TASKS_RUNNING, "Tasks being worked on.")?,
            message_latency: histogram_vec(
                names::MESSAGE_LATENCY,
                "Time from sending a message to an agent to its handler starting.",
                &["agent"],
                HOP_BUCKETS,
            )?,
            step_duration: histogram_vec(
                names::STEP_DURATION,
                "Duration of one step on one agent.",
                &["agent", "outcome"],
                DURATION_BUCKETS,
            )?,
            task_duration: histogram_vec(
                names::TASK_DURATION,
                "Duration of a task from start to its terminal state.",
                &["outcome"],
                DURATION_BUCKETS,
            )?,
            tasks_total: counter_vec(
                names::TASKS_TOTAL,
                "Finished tasks by outcome.",
                &["outcome"],
            )?,
            supervisor_restarts: counter_vec(
                names::SUPERVISOR_RESTARTS,
                "Agent restarts by the supervisor.",
                &["agent", "reason"],
            )?,
            llm_tokens: counter_vec(
                names::LLM_TOKENS,
                "Model tokens by provider, model and type (input, output).",
                &["provider", "model", "type"],
            )?,
            llm_request_duration: histogram_vec(
                names::LLM_REQUEST_DURATION,
                "Model call duration.",
                &["provider", "model"],
                DURATION_BUCKETS,
            )?,
            llm_errors: counter_vec(
                names::LLM_ERRORS,
                "Failed model calls by provider and kind of failure.",
                &["provider", "kind"],
            )?,
            decisions: counter_vec(
                names::DECISIONS,
                "Decisions by deciding agent and kind.",
                &["agent", "kind"],
            )?,
            events: counter_vec(
                names::EVENTS,
                "Events appended to task logs, by kind.",
                &["kind"],
            )?,
            store_write_errors: counter_vec(
                names::STORE_WRITE_ERRORS,
                "Event-log batches that failed to commit, by operation.",
                &["op"],
            )?,
            registry,
        };
        metrics.registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(metrics)
    }

    /// The registry, for exporters.
    pub fn registry(&self) -> &Registry {
        &self.registry
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
}
