//! What agents share: their names ([`AgentKind`]), their errors, their dependencies, the chaos switch,
//! the recorded model call ([`call_llm`]) and the step runner every specialist's handler uses
//! ([`run_step`]). One file per specialist under `agents/`.
//!
//! Agents never touch HTTP or the database directly: they emit events and records through the event log.

pub mod code;
pub mod qa;
pub mod research;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use actix::{Actor, Context, Handler, ResponseFuture};
use futures_util::FutureExt;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::LlmLimits;
use crate::events::{EventKind, EventLog};
use crate::llm::{shorten, LlmError, LlmOutput, LlmProvider, LlmRequest, TokenSink};
use crate::memory::{Memory, MemoryDraft, RecallSpec};
use crate::messages::{Envelope, RunStep, StepKind, StepOutput, StepSpec};
use crate::storage::writer::{LlmCallRecord, PendingEvent, WriteOp};
use crate::task::{TaskId, TaskStatus};
use crate::telemetry::metrics::Metrics;
use crate::telemetry::propagation;
use crate::tools::Tools;

/// The agents of Troupe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentKind {
    /// Plans, assigns, supervises, assembles.
    Director,
    /// Finds and states facts.
    Research,
    /// Writes code.
    Code,
    /// Checks work.
    Qa,
}

impl AgentKind {
    /// The specialists, in the order they usually work.
    pub const SPECIALISTS: [AgentKind; 3] = [AgentKind::Research, AgentKind::Code, AgentKind::Qa];

    /// The stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentKind::Director => "director",
            AgentKind::Research => "research",
            AgentKind::Code => "code",
            AgentKind::Qa => "qa",
        }
    }

    /// Whether the Director supervises it.
    pub fn is_specialist(self) -> bool {
        self != AgentKind::Director
    }
}

impl fmt::Display for AgentKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not an agent.
#[derive(Debug, thiserror::Error)]
#[error("unknown agent '{0}'")]
pub struct UnknownAgent(pub String);

impl FromStr for AgentKind {
    type Err = UnknownAgent;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        [
            AgentKind::Director,
            AgentKind::Research,
            AgentKind::Code,
            AgentKind::Qa,
        ]
        .into_iter()
        .find(|kind| kind.as_str() == text)
        .ok_or_else(|| UnknownAgent(text.to_owned()))
    }
}

/// A step failed inside an agent.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AgentError {
    /// The agent's work panicked (caught); the supervisor restarts the agent.
    #[error("agent panicked: {0}")]
    Panicked(String),
    /// The model call failed.
    #[error(transparent)]
    Llm(#[from] LlmError),
    /// The model's output is unusable.
    #[error("malformed model output: {0}")]
    MalformedOutput(String),
    /// A tool the agent called failed (the sandbox refused, a write failed, a call was malformed).
    #[error("tool: {0}")]
    Tool(String),
    /// The task was cancelled.
    #[error("cancelled")]
    Cancelled,
}

/// Deliberate faults, to watch supervision work: each agent listed panics once per process.
#[derive(Debug, Default)]
pub struct Chaos {
    armed: HashMap<AgentKind, AtomicBool>,
}

impl Chaos {
    /// Arms a single panic for each agent in `agents`.
    pub fn panic_once(agents: &[AgentKind]) -> Self {
        Chaos {
            armed: agents
                .iter()
                .map(|agent| (*agent, AtomicBool::new(true)))
                .collect(),
        }
    }

    /// True exactly once for an armed agent.
    pub fn take(&self, agent: AgentKind) -> bool {
        self.armed
            .get(&agent)
            .is_some_and(|armed| armed.swap(false, Ordering::SeqCst))
    }
}

/// What every agent needs.
#[derive(Clone)]
pub struct AgentDeps {
    /// Where events and records go.
    pub events: EventLog,
    /// Metrics.
    pub metrics: Metrics,
    /// Token budgets.
    pub limits: LlmLimits,
    /// Deliberate faults.
    pub chaos: Arc<Chaos>,
    /// Short-term, long-term and semantic memory.
    pub memory: Memory,
    /// The tool registry (sandbox, workspace files, memory search).
    pub tools: Tools,
}

/// A count as a span attribute value: OpenTelemetry attributes are signed 64-bit integers.
fn as_int(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

/// Makes one model call on behalf of `agent` for `task_id`: a `chat {model}` span with the GenAI
/// attributes, every streamed piece an `llm.token` event, the call stored (prompt, output, usage, duration)
/// for inspection and replay, an `llm.finished` event, and the token and latency metrics.
pub async fn call_llm(
    deps: &AgentDeps,
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
        let writer = deps.events.writer().clone();
        let token_purpose = purpose.clone();
        let started = Instant::now();
        let first_token = deps
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
        deps.metrics
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
                let tokens = &deps.metrics.llm_tokens;
                tokens
                    .with_label_values(&[provider, &model, "input"])
                    .inc_by(output.usage.input_tokens);
                tokens
                    .with_label_values(&[provider, &model, "output"])
                    .inc_by(output.usage.output_tokens);
                // Added even when zero, so that a local model's cost shows as 0 rather than absent.
                deps.metrics
                    .llm_cost
                    .with_label_values(&[provider, &model])
                    .inc_by(
                        llm.price_per_million_tokens()
                            .cost(output.usage.input_tokens, output.usage.output_tokens),
                    );
                deps.events.writer().send(WriteOp::LlmCall(LlmCallRecord {
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
                deps.events.emit(
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
                deps.metrics
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

/// How a specialist turns a step into a model request and the model's output into a step output.
pub trait Specialist: 'static {
    /// Which agent this is.
    const KIND: AgentKind;
    /// The model request for `step`.
    fn request(step: &StepSpec, limits: &LlmLimits) -> LlmRequest;
    /// The step output from the model's output for a step of `kind`.
    fn interpret(kind: StepKind, output: LlmOutput) -> Result<StepOutput, AgentError>;
    /// What to recall from long-term memory before working on `step` (nothing by default).
    fn recall(_step: &StepSpec) -> Option<RecallSpec> {
        None
    }
    /// What the work on `step` leaves in long-term memory (nothing by default).
    fn remember(_step: &StepSpec, _output: &StepOutput) -> Vec<MemoryDraft> {
        Vec::new()
    }
    /// Acts on the interpreted output, with tools (nothing by default): Code writes its files, QA runs
    /// tests.
    fn act<'a>(
        _deps: &'a AgentDeps,
        _task_id: TaskId,
        _step: &'a StepSpec,
        output: StepOutput,
    ) -> futures_util::future::BoxFuture<'a, Result<StepOutput, AgentError>> {
        Box::pin(std::future::ready(Ok(output)))
    }
}

/// The actor of specialist role `S` (see `agents/research.rs`, `code.rs`, `qa.rs` for the roles). Its state
/// (steps handled) is lost on restart, by design: a restart is a fresh instance.
pub struct SpecialistAgent<S: Specialist> {
    deps: AgentDeps,
    steps_handled: u64,
    role: PhantomData<fn() -> S>,
}

impl<S: Specialist> SpecialistAgent<S> {
    /// A fresh agent.
    pub fn new(deps: AgentDeps) -> Self {
        SpecialistAgent {
            deps,
            steps_handled: 0,
            role: PhantomData,
        }
    }
}

impl<S: Specialist> Actor for SpecialistAgent<S> {
    type Context = Context<Self>;
}

impl<S: Specialist> Handler<Envelope<RunStep>> for SpecialistAgent<S> {
    type Result = ResponseFuture<Result<StepOutput, AgentError>>;

    fn handle(&mut self, envelope: Envelope<RunStep>, _ctx: &mut Context<Self>) -> Self::Result {
        self.steps_handled += 1;
        tracing::debug!(agent = %S::KIND, steps_handled = self.steps_handled, "step received");
        Box::pin(run_step::<S>(&self.deps, envelope))
    }
}

/// Runs one step for specialist `S`: the `invoke_agent` span (child of the envelope's context), mailbox and
/// latency metrics, `agent.started`/`agent.finished` events, the model call, and a panic barrier that turns
/// a panic in the work into [`AgentError::Panicked`] for the supervisor.
pub fn run_step<S: Specialist>(
    deps: &AgentDeps,
    mut envelope: Envelope<RunStep>,
) -> impl Future<Output = Result<StepOutput, AgentError>> + 'static {
    envelope.ticket.received();
    let agent = S::KIND;
    deps.metrics
        .message_latency
        .with_label_values(&[agent.as_str()])
        .observe(envelope.sent_at.elapsed().as_secs_f64());
    let task_id = envelope.task_id;
    let span = tracing::info_span!(
        "invoke_agent",
        otel.name = %format!("invoke_agent {agent}"),
        gen_ai.operation.name = "invoke_agent",
        gen_ai.agent.name = agent.as_str(),
        gen_ai.agent.id = agent.as_str(),
        gen_ai.conversation.id = %task_id,
        troupe.step = envelope.payload.step.idx,
        troupe.attempt = i64::from(envelope.payload.step.attempt),
        troupe.revision = i64::from(envelope.payload.step.revision),
    );
    propagation::set_parent(&span, envelope.trace.clone());
    let deps = deps.clone();
    let in_flight = deps
        .metrics
        .agent_in_flight
        .with_label_values(&[agent.as_str()]);
    in_flight.inc();
    let started = Instant::now();
    let step_duration = deps.metrics.step_duration.clone();
    let work = async move {
        let RunStep {
            mut step,
            llm,
            cancel,
        } = envelope.payload;
        deps.events.emit(
            task_id,
            EventKind::AgentStarted,
            Some(agent),
            json!({
                "step": step.idx,
                "kind": step.kind.as_str(),
                "instruction": step.instruction,
                "attempt": step.attempt,
                "revision": step.revision,
            }),
        );
        if deps.chaos.take(agent) {
            // A real unwind, caught below like any panic, but without the panic hook: a deliberate panic
            // prints no message or backtrace into the logs (and the test output) of a run that asked for it.
            std::panic::resume_unwind(Box::new(format!(
                "chaos: {agent} panics once, as configured by chaos.panic_once"
            )));
        }
        step.earlier = earlier_work_from(&deps.memory, task_id).await;
        if let Some(spec) = S::recall(&step) {
            step.recalled = deps.memory.recall(task_id, agent, step.idx, &spec).await;
        }
        let request = S::request(&step, &deps.limits);
        let mut result = match call_llm(&deps, llm.as_ref(), task_id, agent, request, cancel).await
        {
            Ok(output) => S::interpret(step.kind, output),
            Err(LlmError::Cancelled) => Err(AgentError::Cancelled),
            Err(error) => Err(AgentError::Llm(error)),
        };
        if let Ok(output) = result {
            result = S::act(&deps, task_id, &step, output).await;
        }
        if let Ok(output) = &mut result {
            output.memories = S::remember(&step, output);
            let entry = WindowEntry {
                agent,
                step: step.idx,
                text: shorten(&output.text, EARLIER_OUTPUT_CHARS),
            };
            if let Ok(entry) = serde_json::to_string(&entry) {
                // A failed push is counted and logged by the short-term tier; the step still succeeds.
                let _ = deps.memory.short_term().push(task_id, &entry).await;
            }
            deps.events.emit(
                task_id,
                EventKind::AgentFinished,
                Some(agent),
                json!({
                    "step": step.idx,
                    "output": output.text,
                    "duration_seconds": started.elapsed().as_secs_f64(),
                }),
            );
        }
        result
    }
    .instrument(span);
    async move {
        let result = match AssertUnwindSafe(work).catch_unwind().await {
            Ok(result) => result,
            Err(panic) => Err(AgentError::Panicked(panic_message(panic.as_ref()))),
        };
        in_flight.dec();
        // The same outcome names as tasks; a panicked step counts as failed.
        let outcome = match &result {
            Ok(_) => TaskStatus::Completed,
            Err(AgentError::Cancelled) => TaskStatus::Cancelled,
            Err(_) => TaskStatus::Failed,
        };
        step_duration
            .with_label_values(&[agent.as_str(), outcome.as_str()])
            .observe(started.elapsed().as_secs_f64());
        result
    }
}

/// The text of a caught panic.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = panic.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text.clone()
    } else {
        "panic with a non-text payload".to_owned()
    }
}

/// The model-call purpose of attempt `revision` of a loop call (`kind` "work" or "test") for step `idx`:
/// `work.2` for the first attempt, `work.2.r3` for the third, so that a replay answers every attempt.
pub fn attempt_purpose(kind: &str, idx: i32, revision: u32) -> String {
    if revision <= 1 {
        format!("{kind}.{idx}")
    } else {
        format!("{kind}.{idx}.r{revision}")
    }
}

/// Longest earlier output passed on to the next step, in characters.
pub const EARLIER_OUTPUT_CHARS: usize = 300;

/// One entry of a task's conversation window in short-term memory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WindowEntry {
    /// Who said it.
    pub agent: AgentKind,
    /// In which step.
    pub step: i32,
    /// What, shortened.
    pub text: String,
}

/// The earlier outputs of task `task_id`, oldest first, from its conversation window (empty when short-term
/// memory fails: the failure is counted and logged there).
async fn earlier_work_from(memory: &Memory, task_id: crate::task::TaskId) -> Vec<String> {
    match memory.short_term().window(task_id).await {
        Ok(entries) => entries
            .iter()
            .filter_map(|entry| serde_json::from_str::<WindowEntry>(entry).ok())
            .map(|entry| entry.text)
            .collect(),
        Err(error) => {
            tracing::warn!(task_id = %task_id, %error, "short-term memory unavailable; the step sees no earlier work");
            Vec::new()
        }
    }
}

/// The free-text request of a work step: the role's instructions, then the task, the step and earlier work.
pub fn work_request(step: &StepSpec, limits: &LlmLimits, instructions: &str) -> LlmRequest {
    LlmRequest {
        purpose: format!("work.{}", step.idx),
        messages: vec![
            crate::llm::ChatMessage::system(instructions),
            crate::llm::ChatMessage::user(format!(
                "Task: {}\nStep: {}{}{}",
                step.prompt,
                step.instruction,
                recalled_memories(step),
                earlier_work(step)
            )),
        ],
        max_tokens: limits.work_tokens,
        output: crate::llm::OutputSpec::Text,
    }
}

/// A free-text step output; empty text is malformed (`what` names what was missing: "code", "review").
pub fn text_output(output: LlmOutput, what: &str) -> Result<StepOutput, AgentError> {
    let text = output.text.trim();
    if text.is_empty() {
        return Err(AgentError::MalformedOutput(format!(
            "the model produced no {what}"
        )));
    }
    Ok(StepOutput {
        text: text.to_owned(),
        ..StepOutput::default()
    })
}

/// Longest recalled memory shown in a prompt, in characters.
const RECALLED_CHARS: usize = 200;

/// The lines a specialist adds for the memories it recalled, best first.
pub fn recalled_memories(step: &StepSpec) -> String {
    if step.recalled.is_empty() {
        return String::new();
    }
    let mut text = String::from("\nFrom memory:\n");
    for hit in &step.recalled {
        text.push_str("- ");
        text.push_str(&shorten(&hit.memory.content, RECALLED_CHARS));
        text.push('\n');
    }
    text
}

/// The context lines a specialist adds to its prompt: earlier outputs, most recent last, shortened.
pub fn earlier_work(step: &StepSpec) -> String {
    if step.earlier.is_empty() {
        return String::new();
    }
    let mut text = String::from("\nEarlier work:\n");
    for output in &step.earlier {
        text.push_str("- ");
        text.push_str(output);
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_names_round_trip() {
        for kind in [
            AgentKind::Director,
            AgentKind::Research,
            AgentKind::Code,
            AgentKind::Qa,
        ] {
            assert_eq!(kind.as_str().parse::<AgentKind>().unwrap(), kind);
        }
        assert!("planner".parse::<AgentKind>().is_err());
    }

    #[test]
    fn chaos_fires_once_per_armed_agent() {
        let chaos = Chaos::panic_once(&[AgentKind::Research]);
        assert!(!chaos.take(AgentKind::Code));
        assert!(chaos.take(AgentKind::Research));
        assert!(!chaos.take(AgentKind::Research));
    }

    #[test]
    fn panic_messages_are_recovered() {
        let payload: Box<dyn std::any::Any + Send> = Box::new("boom");
        assert_eq!(panic_message(payload.as_ref()), "boom");
        let payload: Box<dyn std::any::Any + Send> = Box::new(String::from("bang"));
        assert_eq!(panic_message(payload.as_ref()), "bang");
    }
}
