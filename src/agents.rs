//! What the specialists share: their dependencies ([`AgentDeps`]), the chaos switch, the [`Specialist`]
//! trait, the one actor type every specialist is ([`SpecialistAgent`]) and the step runner its handler
//! uses ([`run_step`]). One file per specialist under `agents/`. Their names are `domain::AgentKind`,
//! their errors `messages::AgentError`, the model call they make `llm::recorded`.
//!
//! Agents never touch HTTP or the database directly: they emit events through the event log and send
//! records to the storage writer.

pub mod code;
pub mod qa;
pub mod research;

use std::collections::HashMap;
use std::future::Future;
use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use actix::{Actor, Context, Handler, ResponseFuture};
use futures_util::FutureExt;
use serde_json::json;
use tracing::Instrument;

use crate::config::LlmLimits;
use crate::debug;
use crate::domain::{shorten, AgentKind, EventKind, TaskId, TaskStatus};
use crate::events::EventLog;
use crate::llm::recorded::Recorder;
use crate::llm::{LlmError, LlmOutput, LlmRequest};
use crate::memory::short_term::WindowEntry;
use crate::memory::{recalled_list, Memory, MemoryDraft, RecallLayout, RecallSpec};
use crate::messages::{AgentError, Envelope, RunStep, StepKind, StepOutput, StepSpec};
use crate::storage::writer::Writer;
use crate::telemetry::metrics::Metrics;
use crate::telemetry::propagation;
use crate::tools::Tools;

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

/// Which tasks each specialist is working for right now: a step's run enters it when it starts and leaves
/// it when it ends (however it ends). Shared by every incarnation of the agents through [`AgentDeps`]; the
/// Director reads it for `GetAgents`. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Working {
    steps: Arc<Mutex<HashMap<(AgentKind, TaskId), usize>>>,
}

impl Working {
    /// Records that `agent` works a step for `task_id` until the returned guard is dropped.
    pub fn enter(&self, agent: AgentKind, task_id: TaskId) -> WorkingOn {
        let mut steps = self.steps.lock().unwrap_or_else(|p| p.into_inner());
        *steps.entry((agent, task_id)).or_default() += 1;
        WorkingOn {
            working: self.clone(),
            key: (agent, task_id),
        }
    }

    /// The tasks `agent` works for now, in id (creation) order.
    pub fn tasks(&self, agent: AgentKind) -> Vec<TaskId> {
        let steps = self.steps.lock().unwrap_or_else(|p| p.into_inner());
        let mut tasks: Vec<TaskId> = steps
            .keys()
            .filter(|(kind, _)| *kind == agent)
            .map(|(_, task_id)| *task_id)
            .collect();
        tasks.sort();
        tasks
    }
}

/// A step in progress in [`Working`]; dropping it ends it.
#[derive(Debug)]
pub struct WorkingOn {
    working: Working,
    key: (AgentKind, TaskId),
}

impl Drop for WorkingOn {
    fn drop(&mut self) {
        let mut steps = self.working.steps.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = steps.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                steps.remove(&self.key);
            }
        }
    }
}

/// What every agent needs.
#[derive(Clone)]
pub struct AgentDeps {
    /// The task's event log (append events).
    pub events: EventLog,
    /// The write path of every other record (steps, decisions, model calls).
    pub writer: Writer,
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
    /// The tasks each specialist works for now.
    pub working: Working,
}

impl AgentDeps {
    /// Where a model call made with these dependencies is recorded.
    pub fn recorder(&self) -> Recorder<'_> {
        Recorder {
            writer: &self.writer,
            metrics: &self.metrics,
        }
    }
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
    /// Gathers what the model is shown besides the step: by default the memories [`Specialist::recall`]
    /// asks for, recalled directly. Research recalls through the `search_memory` tool instead, and Code
    /// also reads earlier steps' files with `list_files`/`read_file`.
    fn prepare<'a>(
        deps: &'a AgentDeps,
        task_id: TaskId,
        step: &'a mut StepSpec,
    ) -> futures_util::future::BoxFuture<'a, ()> {
        Box::pin(async move {
            if let Some(spec) = Self::recall(step) {
                step.recalled = deps
                    .memory
                    .recall(task_id, Self::KIND, step.idx, &spec)
                    .await;
            }
        })
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
    // The instance of the agent's pool that runs the step: `code-2`.
    let instance = envelope.payload.instance;
    let span = tracing::info_span!(
        "invoke_agent",
        otel.name = %format!("invoke_agent {agent}"),
        gen_ai.operation.name = "invoke_agent",
        gen_ai.agent.name = agent.as_str(),
        gen_ai.agent.id = %format!("{agent}-{instance}"),
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
    // Held by the future below, so the step leaves the registry however it ends (done, failed, panicked,
    // cancelled or dropped by a timeout).
    let working = deps.working.enter(agent, task_id);
    let started = Instant::now();
    let step_duration = deps.metrics.step_duration.clone();
    let work = async move {
        let RunStep {
            mut step,
            llm,
            cancel,
            instance,
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
                "instance": instance,
                "after": step.after,
            }),
        );
        if deps.chaos.take(agent) {
            // A real unwind, caught below like any panic, but without the panic hook: a deliberate panic
            // prints no message or backtrace into the logs (and the test output) of a run that asked for it.
            std::panic::resume_unwind(Box::new(format!(
                "chaos: {agent} panics once, as configured by chaos.panic_once"
            )));
        }
        step.earlier = earlier_work_from(&deps.memory, task_id, &step.after).await;
        S::prepare(&deps, task_id, &mut step).await;
        let mut request = S::request(&step, &deps.limits);
        request.purpose = step.own(request.purpose);
        // Debug mode: the task may pause before the model is called (`on = "llm"`).
        let at_call = || debug::llm_point(agent, Some(step.idx), &request);
        if deps
            .tools
            .debugger()
            .at(task_id, at_call, &cancel)
            .await
            .is_err()
        {
            return Err(AgentError::Cancelled);
        }
        let called = deps
            .recorder()
            .call(&llm, task_id, agent, request, cancel)
            .await;
        let mut result = match called {
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
        drop(working);
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

/// The model-call purpose of attempt `revision` of a loop call (`kind` "work" or "test") for step `idx` in
/// QA round `round`: `work.2` for the first attempt, `work.2.r3` for the third, and `work.2.q2`, `work.2.q2.r2`
/// once QA's `fail` verdict sent the work back, so that a replay answers every attempt of every round.
pub fn attempt_purpose(kind: &str, idx: i32, round: u32, revision: u32) -> String {
    let mut purpose = format!("{kind}.{idx}");
    if round > 1 {
        purpose.push_str(&format!(".q{round}"));
    }
    if revision > 1 {
        purpose.push_str(&format!(".r{revision}"));
    }
    purpose
}

/// The purpose of QA's verification in round `round`: `verify`, then `verify.q2`, ...
pub fn verify_purpose(round: u32) -> String {
    if round > 1 {
        format!("verify.q{round}")
    } else {
        "verify".to_owned()
    }
}

/// Longest earlier output passed on to the next step, in characters.
pub const EARLIER_OUTPUT_CHARS: usize = 300;

/// The outputs of the steps `after` of task `task_id` from its conversation window, in step order (a step's
/// own entries oldest first); empty when short-term memory fails (the failure is counted and logged there).
/// Steps that ran beside each other may have finished in either order: sorting by step makes what a step
/// is shown the same whichever ended first, so a replay asks what was recorded.
async fn earlier_work_from(memory: &Memory, task_id: TaskId, after: &[i32]) -> Vec<String> {
    match memory.short_term().window(task_id).await {
        Ok(entries) => {
            let mut shown: Vec<WindowEntry> = entries
                .iter()
                .filter_map(|entry| serde_json::from_str::<WindowEntry>(entry).ok())
                .filter(|entry| after.contains(&entry.step))
                .collect();
            shown.sort_by_key(|entry| entry.step);
            shown.into_iter().map(|entry| entry.text).collect()
        }
        Err(error) => {
            tracing::warn!(task_id = %task_id, %error, "short-term memory unavailable; the step sees no earlier work");
            Vec::new()
        }
    }
}

/// The free-text request of a work step: the role's instructions, then the task, the step and earlier work.
pub fn work_request(step: &StepSpec, limits: &LlmLimits, instructions: &str) -> LlmRequest {
    LlmRequest {
        purpose: attempt_purpose("work", step.idx, step.round, 1),
        messages: vec![
            crate::llm::ChatMessage::system(instructions),
            crate::llm::ChatMessage::user(format!(
                "Task: {}\nStep: {}{}{}{}",
                step.prompt,
                step.instruction,
                recalled_memories(step),
                earlier_work(step),
                revision_request(step)
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

/// The lines a specialist adds for the memories it recalled, best first (as written: a snippet is code).
pub fn recalled_memories(step: &StepSpec) -> String {
    if step.recalled.is_empty() {
        return String::new();
    }
    format!(
        "\nFrom memory:\n{}",
        recalled_list(&step.recalled, RECALLED_CHARS, RecallLayout::AsWritten)
    )
}

/// Longest rejected answer or QA feedback shown back to an agent, in characters.
const REJECTED_CHARS: usize = 600;

/// For a free-text step that QA's `fail` verdict sent back: the rejected answer, QA's feedback and the
/// request to revise it (empty otherwise).
pub fn revision_request(step: &StepSpec) -> String {
    match &step.feedback {
        Some(feedback) => format!(
            "\nYour previous answer:\n{}\nQA rejected it: {}\nRevise the answer for the step.",
            shorten(&feedback.code, REJECTED_CHARS),
            shorten(&feedback.failure, REJECTED_CHARS)
        ),
        None => String::new(),
    }
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
    fn chaos_fires_once_per_armed_agent() {
        let chaos = Chaos::panic_once(&[AgentKind::Research]);
        assert!(!chaos.take(AgentKind::Code));
        assert!(chaos.take(AgentKind::Research));
        assert!(!chaos.take(AgentKind::Research));
    }

    #[test]
    fn every_attempt_of_every_round_has_its_own_purpose() {
        assert_eq!(attempt_purpose("work", 2, 1, 1), "work.2");
        assert_eq!(attempt_purpose("work", 2, 1, 3), "work.2.r3");
        assert_eq!(attempt_purpose("test", 1, 2, 1), "test.1.q2");
        assert_eq!(attempt_purpose("work", 1, 2, 2), "work.1.q2.r2");
        assert_eq!(verify_purpose(1), "verify");
        assert_eq!(verify_purpose(2), "verify.q2");
    }

    #[test]
    fn panic_messages_are_recovered() {
        let payload: Box<dyn std::any::Any + Send> = Box::new("boom");
        assert_eq!(panic_message(payload.as_ref()), "boom");
        let payload: Box<dyn std::any::Any + Send> = Box::new(String::from("bang"));
        assert_eq!(panic_message(payload.as_ref()), "bang");
    }
}
