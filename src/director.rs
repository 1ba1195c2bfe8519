//! The Director actor: owns the task lifecycle (queue, start, cancel, finish) and supervises the
//! specialists. Each running task is a [`flow::TaskFlow`] future spawned in the Director's context; the flow
//! reaches specialists only through [`Dispatch`] messages to the Director, which routes them to the current
//! incarnation of the agent and restarts agents that panic, die or hang.
//!
//! Runtime guarantees (see ARCHITECTURE.md): the Director handles one message at a time, but task flows
//! run concurrently (up to `director.max_concurrent_tasks`; the rest wait in a FIFO queue), and so do the
//! steps of one task whose dependencies are done. Each specialist is a pool of supervised instances
//! (`agents.<agent>.instances`); a step goes to the least busy one, and each instance's steps run
//! concurrently too (each step is its own future). A restart replaces that instance with a fresh
//! incarnation; the step that saw the failure is retried up to `director.step_retries` times.

pub mod calibration;
pub mod flow;
pub mod plan;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::agents::code::CodeAgent;
use crate::agents::qa::QaAgent;
use crate::agents::research::ResearchAgent;
use crate::agents::AgentDeps;
use crate::config::{AgentsSettings, DirectorSettings};
use crate::domain::{AgentKind, EventKind, TaskId, TaskStatus};
use crate::llm::models::{Models, Policy};
use crate::llm::replay::ReplayProvider;
use crate::messages::{
    AgentError, AgentStatus, CancelTask, Envelope, GetAgents, NotRunning, RunStep, StartTask,
    StepOutput,
};
use crate::storage::records::{PendingEvent, TaskEnd, WriteOp};
use crate::storage::Storage;
use crate::supervision::{AgentFactory, GaveUp, Pool, RestartPolicy, RestartReason, Restarted};
use crate::telemetry::propagation;

/// A step could not be run on its agent.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DispatchError {
    /// The agent failed and was restarted; the step may be retried.
    #[error("{agent} failed ({reason}: {detail}) and was restarted")]
    Restarted {
        /// The agent.
        agent: AgentKind,
        /// Why.
        reason: RestartReason,
        /// The failure.
        detail: String,
    },
    /// The agent keeps failing; the supervisor gave up.
    #[error(transparent)]
    GaveUp(#[from] GaveUp),
    /// The agent reported an error that a restart would not fix (a model error, malformed output).
    #[error(transparent)]
    Agent(AgentError),
    /// The task was cancelled.
    #[error("cancelled")]
    Cancelled,
    /// No such specialist.
    #[error("no specialist named {0}")]
    NoSuchAgent(AgentKind),
}

/// Task flow to Director: run a step on a supervised specialist.
#[derive(Message)]
#[rtype(result = "Result<StepOutput, DispatchError>")]
pub struct Dispatch {
    /// The specialist.
    pub agent: AgentKind,
    /// The step.
    pub run: RunStep,
}

/// What the Director and its task flows need.
#[derive(Clone)]
pub struct DirectorDeps {
    /// Shared agent dependencies (events, metrics, limits, chaos).
    pub agent: AgentDeps,
    /// Reads (replay recordings).
    pub storage: Storage,
    /// Lifecycle settings.
    pub settings: DirectorSettings,
    /// Specialists' restart policy.
    pub policy: RestartPolicy,
    /// How many instances of each specialist run.
    pub pools: AgentsSettings,
    /// The configured models (the primary and per-agent ones, the fallback, the downgrade).
    pub llm: Models,
    /// The budget and fallback policy of every task (a task's `options.budget` over its limits).
    pub model_policy: Policy,
    /// Complete recordings already read, for replays.
    pub replays: ReplayCache,
    /// Content-free scores of the routing decision, per model and prompt template.
    pub calibrations: calibration::CalibrationCache,
}

/// Replay providers of complete recordings, by source task; bounded (cleared when full).
#[derive(Clone, Default)]
pub struct ReplayCache(Arc<std::sync::Mutex<HashMap<TaskId, Arc<ReplayProvider>>>>);

impl ReplayCache {
    /// Most recordings kept.
    const CAPACITY: usize = 64;

    /// The cached provider replaying `source`.
    pub fn get(&self, source: TaskId) -> Option<Arc<ReplayProvider>> {
        let cache = self.0.lock().ok()?;
        cache.get(&source).map(Arc::clone)
    }

    /// Keeps `provider` for later replays of `source`.
    pub fn insert(&self, source: TaskId, provider: Arc<ReplayProvider>) {
        if let Ok(mut cache) = self.0.lock() {
            if cache.len() >= Self::CAPACITY {
                cache.clear();
            }
            cache.insert(source, provider);
        }
    }
}

/// The Director actor.
pub struct Director {
    deps: DirectorDeps,
    agents: HashMap<AgentKind, Pool>,
    running: HashMap<TaskId, CancellationToken>,
    queue: VecDeque<Envelope<StartTask>>,
}

impl Director {
    /// Starts the Director and the pools of its three specialists on the current arbiter.
    pub fn start(deps: DirectorDeps) -> Addr<Director> {
        let mut agents = HashMap::new();
        for kind in AgentKind::SPECIALISTS {
            let factory = || -> AgentFactory {
                let agent_deps = deps.agent.clone();
                match kind {
                    AgentKind::Research => {
                        Box::new(move || ResearchAgent::new(agent_deps.clone()).start().recipient())
                    }
                    AgentKind::Code => {
                        Box::new(move || CodeAgent::new(agent_deps.clone()).start().recipient())
                    }
                    _ => Box::new(move || QaAgent::new(agent_deps.clone()).start().recipient()),
                }
            };
            let instances = deps.pools.instances(kind);
            agents.insert(kind, Pool::start(kind, instances, deps.policy, factory));
        }
        Director {
            deps,
            agents,
            running: HashMap::new(),
            queue: VecDeque::new(),
        }
        .start()
    }

    /// Takes a message out of the Director's mailbox count and records its hop latency.
    fn received<M>(&self, envelope: &mut Envelope<M>) {
        envelope.ticket.received();
        self.deps
            .agent
            .metrics
            .message_latency
            .with_label_values(&[AgentKind::Director.as_str()])
            .observe(envelope.sent_at.elapsed().as_secs_f64());
    }

    fn launch(&mut self, mut envelope: Envelope<StartTask>, ctx: &mut Context<Self>) {
        let task_id = envelope.task_id;
        // Held until the flow has ended (its terminal state committed), then the place is free again.
        let admission = envelope.payload.admission.take();
        let cancel = CancellationToken::new();
        self.running.insert(task_id, cancel.clone());
        self.deps
            .agent
            .metrics
            .tasks_running
            .set(self.running.len() as i64);
        let span = tracing::info_span!(
            "invoke_workflow",
            otel.name = "invoke_workflow troupe",
            gen_ai.operation.name = "invoke_workflow",
            gen_ai.conversation.id = %task_id,
            troupe.task.id = %task_id,
        );
        propagation::set_parent(&span, envelope.trace);
        let flow = flow::TaskFlow::new(
            task_id,
            envelope.payload,
            self.deps.clone(),
            ctx.address(),
            cancel,
        );
        ctx.spawn(
            flow.run()
                .instrument(span)
                .into_actor(self)
                .map(move |(), director, ctx| {
                    drop(admission);
                    director.running.remove(&task_id);
                    director
                        .deps
                        .agent
                        .metrics
                        .tasks_running
                        .set(director.running.len() as i64);
                    director.launch_queued(ctx);
                }),
        );
    }

    fn launch_queued(&mut self, ctx: &mut Context<Self>) {
        while self.running.len() < self.deps.settings.max_concurrent_tasks {
            let Some(next) = self.queue.pop_front() else {
                break;
            };
            self.launch(next, ctx);
        }
        self.deps
            .agent
            .metrics
            .task_queue_depth
            .set(self.queue.len() as i64);
    }

    /// Handles a failed step: restarts that instance of the agent (once per incarnation) and tells the flow.
    #[allow(clippy::too_many_arguments)]
    fn restart(
        &mut self,
        agent: AgentKind,
        instance: u32,
        generation: u64,
        reason: RestartReason,
        detail: String,
        task_id: TaskId,
        trace: &opentelemetry::Context,
    ) -> DispatchError {
        let Some(restarted) = self
            .agents
            .get_mut(&agent)
            .and_then(|pool| pool.restart(instance, generation, reason, Instant::now()))
        else {
            return DispatchError::NoSuchAgent(agent);
        };
        match restarted {
            Ok(Restarted::Fresh { restarts }) => {
                self.deps
                    .agent
                    .metrics
                    .supervisor_restarts
                    .with_label_values(&[agent.as_str(), reason.as_str()])
                    .inc();
                tracing::warn!(%agent, instance, %reason, %detail, restarts, task_id = %task_id, "agent restarted");
                self.deps
                    .agent
                    .writer
                    .send(WriteOp::Event(PendingEvent::now_in(
                        trace,
                        task_id,
                        EventKind::AgentRestarted,
                        Some(agent),
                        json!({
                            "reason": reason.as_str(),
                            "detail": detail,
                            "restarts": restarts,
                            "instance": instance,
                        }),
                    )));
                DispatchError::Restarted {
                    agent,
                    reason,
                    detail,
                }
            }
            Ok(Restarted::AlreadyReplaced) => DispatchError::Restarted {
                agent,
                reason,
                detail,
            },
            Err(gave_up) => {
                tracing::error!(error = %gave_up, task_id = %task_id, "supervisor gave up");
                DispatchError::GaveUp(gave_up)
            }
        }
    }
}

impl Actor for Director {
    type Context = Context<Self>;
}

impl Handler<Envelope<StartTask>> for Director {
    type Result = ();

    fn handle(&mut self, mut envelope: Envelope<StartTask>, ctx: &mut Context<Self>) {
        self.received(&mut envelope);
        if self.running.len() < self.deps.settings.max_concurrent_tasks {
            self.launch(envelope, ctx);
        } else {
            self.queue.push_back(envelope);
            self.deps
                .agent
                .metrics
                .task_queue_depth
                .set(self.queue.len() as i64);
        }
    }
}

impl Handler<Envelope<CancelTask>> for Director {
    type Result = Result<(), NotRunning>;

    fn handle(
        &mut self,
        mut envelope: Envelope<CancelTask>,
        ctx: &mut Context<Self>,
    ) -> Self::Result {
        self.received(&mut envelope);
        let task_id = envelope.task_id;
        if let Some(cancel) = self.running.get(&task_id) {
            cancel.cancel();
            // A task paused where no cancellation token is held (a tool call) is released too.
            self.deps.agent.tools.debugger().release(task_id);
            return Ok(());
        }
        let Some(position) = self
            .queue
            .iter()
            .position(|queued| queued.task_id == task_id)
        else {
            return Err(NotRunning);
        };
        // A queued task never started: end it here.
        if let Some(queued) = self.queue.remove(position) {
            self.deps
                .agent
                .metrics
                .task_queue_depth
                .set(self.queue.len() as i64);
            let span = tracing::info_span!("task.cancel", troupe.task.id = %task_id);
            propagation::set_parent(&span, queued.trace);
            let writer = self.deps.agent.writer.clone();
            let metrics = self.deps.agent.metrics.clone();
            let end = span.in_scope(|| TaskEnd {
                task_id,
                status: TaskStatus::Cancelled,
                result: None,
                error: None,
                event: PendingEvent::now(
                    task_id,
                    EventKind::TaskCancelled,
                    Some(AgentKind::Director),
                    json!({ "while": "queued" }),
                ),
                memories: Vec::new(),
            });
            ctx.spawn(
                async move {
                    metrics.tasks_total.with_label_values(&["cancelled"]).inc();
                    if let Err(error) = writer.finish_task(end).await {
                        tracing::error!(%error, "store cancellation of a queued task");
                    }
                }
                .into_actor(self),
            );
        }
        Ok(())
    }
}

impl Handler<Envelope<Dispatch>> for Director {
    type Result = ResponseActFuture<Self, Result<StepOutput, DispatchError>>;

    fn handle(
        &mut self,
        mut envelope: Envelope<Dispatch>,
        _ctx: &mut Context<Self>,
    ) -> Self::Result {
        self.received(&mut envelope);
        let task_id = envelope.task_id;
        let trace = envelope.trace;
        let Dispatch { agent, mut run } = envelope.payload;
        let models = Arc::clone(&run.llm);
        let Some(picked) = self.agents.get_mut(&agent).and_then(Pool::pick) else {
            return Box::pin(actix::fut::ready(Err(DispatchError::NoSuchAgent(agent))));
        };
        let (recipient, generation, instance) =
            (picked.recipient, picked.generation, picked.instance);
        run.instance = instance;
        let depth = self
            .deps
            .agent
            .metrics
            .mailbox_depth
            .with_label_values(&[agent.as_str()]);
        let step = Envelope::<RunStep> {
            trace: trace.clone(),
            task_id,
            sent_at: Instant::now(),
            ticket: crate::messages::MailboxTicket::none(),
            payload: run,
        }
        .counted(depth);
        let timeout = Duration::from_secs(self.deps.settings.step_timeout_seconds);
        let debugger = self.deps.agent.tools.debugger().clone();
        let paused = move || models.paused_for() + debugger.paused_for(task_id);
        let reply = answer_within(recipient.send(step), timeout, paused);
        Box::pin(
            reply
                .into_actor(self)
                .map(move |result, director, _ctx| {
                    if let Some(pool) = director.agents.get_mut(&agent) {
                        pool.release(instance);
                    }
                    result
                })
                .map(move |result, director, _ctx| match result {
                    Ok(Ok(output)) => Ok(output),
                    Ok(Err(AgentError::Cancelled)) => Err(DispatchError::Cancelled),
                    Ok(Err(AgentError::Panicked(detail))) => Err(director.restart(
                        agent,
                        instance,
                        generation,
                        RestartReason::Panic,
                        detail,
                        task_id,
                        &trace,
                    )),
                    Ok(Err(error)) => Err(DispatchError::Agent(error)),
                    Err(MailboxError::Closed) => Err(director.restart(
                        agent,
                        instance,
                        generation,
                        RestartReason::Crash,
                        "mailbox closed".to_owned(),
                        task_id,
                        &trace,
                    )),
                    Err(MailboxError::Timeout) => Err(director.restart(
                        agent,
                        instance,
                        generation,
                        RestartReason::Timeout,
                        format!("no answer within {} s", timeout.as_secs()),
                        task_id,
                        &trace,
                    )),
                }),
        )
    }
}

/// Waits for a step's answer at most `timeout`, not counting the time the task spends paused (`paused`: so
/// far, waiting for a person's yes to a cloud fallback or at a breakpoint), so that a pause that takes longer
/// than the step timeout does not restart the agent.
async fn answer_within<F, T>(
    reply: F,
    timeout: Duration,
    paused: impl Fn() -> Duration,
) -> Result<T, MailboxError>
where
    F: std::future::Future<Output = Result<T, MailboxError>>,
{
    let started = tokio::time::Instant::now();
    tokio::pin!(reply);
    loop {
        let deadline = started + timeout + paused();
        match tokio::time::timeout_at(deadline, &mut reply).await {
            Ok(result) => return result,
            // A pause that began or went on meanwhile moved the deadline: wait again.
            Err(_) if started + timeout + paused() > tokio::time::Instant::now() => {}
            Err(_) => return Err(MailboxError::Timeout),
        }
    }
}

impl Handler<GetAgents> for Director {
    type Result = Vec<AgentStatus>;

    fn handle(&mut self, _query: GetAgents, _ctx: &mut Context<Self>) -> Vec<AgentStatus> {
        let metrics = &self.deps.agent.metrics;
        let mut running: Vec<TaskId> = self.running.keys().copied().collect();
        running.sort();
        let mut agents = vec![AgentStatus {
            name: AgentKind::Director,
            status: "running",
            restarts: 0,
            instances: 1,
            busy: vec![self.running.len()],
            mailbox_depth: 0,
            in_flight: self.running.len() as i64,
            tasks: running,
        }];
        for kind in AgentKind::SPECIALISTS {
            let pool = self.agents.get(&kind);
            let restarts = pool.map_or(0, Pool::restarts);
            agents.push(AgentStatus {
                name: kind,
                status: "running",
                restarts,
                instances: pool.map_or(0, Pool::len),
                busy: pool.map(|pool| pool.busy().to_vec()).unwrap_or_default(),
                mailbox_depth: metrics
                    .mailbox_depth
                    .with_label_values(&[kind.as_str()])
                    .get(),
                in_flight: metrics
                    .agent_in_flight
                    .with_label_values(&[kind.as_str()])
                    .get(),
                tasks: self.deps.agent.working.tasks(kind),
            });
        }
        agents
    }
}
