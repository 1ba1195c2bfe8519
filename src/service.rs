//! The service without HTTP: [`Core`] assembles storage, the writer and event log, the model, memory, the
//! sandbox and tools, the Director and its agents, and is the only way in for tasks ([`Core::submit`],
//! [`Core::cancel`]). The CLI's `run` uses it alone; the HTTP API (`api`) and the application (`app`) are
//! built on it.
//!
//! It must be built inside an actix `System`: the actors live on its arbiter.

use std::sync::Arc;

use actix::Addr;
use serde_json::json;
use tracing::Instrument;

use crate::agents::{AgentDeps, Chaos, Working};
use crate::config::Settings;
use crate::debug::Debugger;
use crate::director::calibration::CalibrationCache;
use crate::director::{Director, DirectorDeps, ReplayCache};
use crate::domain::{
    AgentKind, BreakOn, BreakpointSpec, EventKind, TaskId, TaskOptions, TaskStatus,
};
use crate::events::remote::{self, Announcer};
use crate::events::{EventLog, Hub};
use crate::llm::budget::Limits;
use crate::llm::confirm::Confirmations;
use crate::llm::models::{Models, Policy};
use crate::llm::LlmError;
use crate::memory::{Memory, MemoryParts, MemoryStartError};
use crate::messages::{CancelTask, Envelope, StartTask};
use crate::queue::{QueueError, TaskQueue};
use crate::sandbox::Sandbox;
use crate::storage::records::{NewTask, PendingEvent};
use crate::storage::writer::{failed_by_storage, Writer};
use crate::storage::{Storage, StorageError};
use crate::supervision::RestartPolicy;
use crate::telemetry::history::{History, Sampler};
use crate::telemetry::metrics::{Metrics, MetricsError};
use crate::telemetry::propagation;
use crate::tools::{Tools, Workspaces};

pub mod breakpoints;
pub mod compare;
mod consumer;
mod control;
mod debugging;
mod durability;
pub mod experiments;
mod fork;
mod known_series;
mod learning;
pub mod retention;
pub mod tool_replay;

pub use breakpoints::{Breakpoints, BreakpointsError};
pub use compare::CompareError;
pub use consumer::{ConsumerHandle, DELIVERY_OUTCOMES};
pub use debugging::{ResumeError, TaskState};
pub use durability::{LeaseKeeper, TakenOver, RESUME_OUTCOMES};
pub use fork::ForkRequest;
pub use tool_replay::{Replayed, ToolReplayError};

/// The system could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Metrics could not be registered.
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    /// The database could not be opened or migrated.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The model could not be started.
    #[error("start the model: {0}")]
    Model(#[from] LlmError),
    /// Memory could not be started.
    #[error("start memory: {0}")]
    Memory(#[from] MemoryStartError),
    /// The task queue could not be set up (`queue.backend = "redis"`).
    #[error("start the task queue: {0}")]
    Queue(#[from] QueueError),
    /// `troupe serve` was asked to listen beyond loopback without an auth token (the HTTP application,
    /// `app`); refused before binding.
    #[error("refusing to serve on {address} without an auth token: it is not a loopback address, so anyone who can reach it could use the API; set {variable} (at least 16 characters) or bind 127.0.0.1")]
    Unprotected {
        /// The address.
        address: String,
        /// The variable that sets the token.
        variable: &'static str,
    },
    /// The listen address could not be bound (the HTTP application, `app`).
    #[error("bind {address}")]
    Bind {
        /// The address.
        address: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A task could not be submitted; every variant is the client's to fix except `Storage`.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The prompt is empty or only whitespace.
    #[error("prompt is empty")]
    EmptyPrompt,
    /// The prompt is longer than allowed.
    #[error("prompt has {chars} characters; at most {max} are allowed")]
    PromptTooLarge {
        /// Its length.
        chars: usize,
        /// The limit.
        max: usize,
    },
    /// An option is out of range.
    #[error("{0}")]
    InvalidOption(String),
    /// `options.replay_of` names no task.
    #[error("task {0} (options.replay_of) does not exist")]
    ReplaySourceNotFound(TaskId),
    /// `options.fork_of.task` names no task.
    #[error("task {0} (the fork's source) does not exist")]
    ForkSourceNotFound(TaskId),
    /// The fork's source has not finished: its recording is not complete.
    #[error("task {id} is {status}; only a finished task can be forked")]
    ForkSourceUnfinished {
        /// The source.
        id: TaskId,
        /// Its status.
        status: TaskStatus,
    },
    /// As many tasks as may run and wait are admitted and unfinished; nothing was stored.
    #[error("{admitted} tasks are running or waiting, the most allowed (director.max_concurrent_tasks + director.max_queued_tasks); try again when one has finished")]
    Busy {
        /// Running plus waiting places.
        admitted: usize,
    },
    /// A breakpoint asked for with the task could not be set (the task was not started).
    #[error(transparent)]
    Breakpoint(BreakpointsError),
    /// The task queue holds as many unread tasks as allowed (`queue.max_waiting`); nothing was stored.
    #[error("{waiting} tasks wait in the queue, the most allowed (queue.max_waiting); try again when workers have taken some")]
    QueueFull {
        /// Entries waiting.
        waiting: u64,
    },
    /// The task queue (Redis) did not take the task; it was stored and failed with this reason.
    #[error("{0}")]
    QueueUnavailable(QueueError),
    /// Storing the task failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// A confirmation could not be given.
#[derive(Debug, thiserror::Error)]
pub enum ConfirmError {
    /// No such task.
    #[error("task {0} does not exist")]
    NotFound(TaskId),
    /// The task waits for no confirmation.
    #[error("task {id} is {status} and is not waiting for a confirmation")]
    NotWaiting {
        /// The task.
        id: TaskId,
        /// Its status.
        status: TaskStatus,
    },
    /// The task is held by another process on the database (the Redis queue), which holds its wait.
    #[error("{0}")]
    HeldElsewhere(String),
    /// Reading the task failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// A task could not be deleted.
#[derive(Debug, thiserror::Error)]
pub enum DeleteError {
    /// No such task.
    #[error("task {0} does not exist")]
    NotFound(TaskId),
    /// The task has not finished.
    #[error("task {id} is {status}; only a finished task can be deleted (cancel it first)")]
    Unfinished {
        /// The task.
        id: TaskId,
        /// Its status.
        status: TaskStatus,
    },
    /// Reading or deleting failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// A task could not be cancelled.
#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    /// No such task.
    #[error("task {0} does not exist")]
    NotFound(TaskId),
    /// The task is already over.
    #[error("task {id} is already {status}")]
    Finished {
        /// The task.
        id: TaskId,
        /// Its terminal status.
        status: TaskStatus,
    },
    /// Reading the task failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The Director is gone (shutting down).
    #[error("director unavailable")]
    DirectorGone,
}

/// Everything but HTTP.
pub struct Core {
    /// The settings it was built from.
    pub settings: Settings,
    /// Reads.
    pub storage: Storage,
    /// The event log (append, subscribe).
    pub events: EventLog,
    /// The write path of every record.
    pub writer: Writer,
    /// Metrics.
    pub metrics: Metrics,
    /// The configured models (the primary and per-agent ones).
    pub llm: Models,
    /// The Director.
    pub director: Addr<Director>,
    /// Short-term, long-term and semantic memory.
    pub memory: Memory,
    /// The tool registry, and through it the sandbox.
    pub tools: Tools,
    /// Tasks waiting for a person's yes (a cloud fallback in `confirm` mode).
    pub confirmations: Confirmations,
    /// The debug mode's breakpoints in force (loaded at start, changed through it); the pause engine asks
    /// it at every point a task could pause at.
    pub breakpoints: Breakpoints,
    /// One permit per task admitted and not yet ended: `director.max_concurrent_tasks` + `max_queued_tasks`.
    admission: Arc<tokio::sync::Semaphore>,
    /// The in-process history of a few metrics (the dashboard's charts), sampled while the core lives.
    pub history: History,
    /// The sampling task of `history`; dropped (stopped) with the core.
    _sampler: Sampler,
    /// The retention sweep (`[retention]`), also callable at once.
    pub retention: retention::Retention,
    /// Its periodic task; dropped (stopped) with the core.
    _sweeper: retention::Sweeper,
    /// This process's lease, the owner of the tasks it creates (`None` for a core assembled without
    /// `start`: its tasks are nobody's, and a process that starts on the same database takes them over).
    lease: Option<LeaseKeeper>,
    /// The task queue between processes (`queue.backend = "redis"`): submissions go to it, and a worker
    /// reads from it.
    pub queue: Option<TaskQueue>,
    /// The tasks whose committed end a queue consumer waits for (fired by the writer's publish).
    ends: consumer::Ends,
    /// This process's queue consumer (a worker or all node on the Redis queue); dropped (stopped) with the
    /// core.
    consumer: Option<ConsumerHandle>,
    /// Listening for the events other processes commit (the Redis queue on PostgreSQL); stopped with the
    /// core.
    _following: Option<remote::Following>,
    /// This process's asks to the node holding a pause, waiting for their answers (`control.rs`).
    asks: control::Asks,
}

/// How long a subscription to a task whose events another process may commit waits for an announcement
/// before it looks at the stored log (an announcement sent while a listener reconnects is lost).
const REMOTE_POLL: std::time::Duration = std::time::Duration::from_secs(2);

/// The budget and fallback policy of every task, from `[budget]` and `[llm]` (0 is no limit).
fn model_policy(settings: &Settings, confirmations: &Confirmations) -> Policy {
    let budget = &settings.budget;
    Policy {
        limits: Limits {
            max_tokens: (budget.max_tokens > 0).then_some(budget.max_tokens),
            max_cost_usd: (budget.max_cost_usd > 0.0).then_some(budget.max_cost_usd),
        },
        on_exceed: budget.on_exceed,
        fallback_mode: settings.llm.fallback_mode,
        confirm_timeout: std::time::Duration::from_secs(settings.llm.confirm_timeout_seconds),
        confirmations: confirmations.clone(),
    }
}

impl Core {
    /// Opens and migrates storage, acquires this process's lease, starts the event-log writer, the model
    /// and the actors, then takes over the unfinished tasks of processes whose lease expired (resumed from
    /// their records, see `durability.rs`).
    pub async fn start(settings: Settings) -> Result<Core, StartError> {
        let metrics = Metrics::new()?;
        let storage = Storage::connect(&settings.database).await?;
        storage.migrate().await?;
        let lease = LeaseKeeper::start(&storage, &settings.durability).await?;
        let memory = MemoryParts::start(&settings.memory, &settings.redis, &metrics).await?;
        // A node that runs no tasks loads no model (its tasks run on the workers).
        let llm = if settings.server.role.runs_tasks() {
            crate::llm::start_models(&settings.llm, &settings.budget, &metrics).await?
        } else {
            crate::llm::models::Models::single(Arc::new(crate::llm::absent::Absent))
        };
        let sandbox = Sandbox::start(settings.sandbox.clone(), metrics.clone()).await;
        let queue = if settings.queue.is_redis() {
            let consumer = if settings.queue.consumer.is_empty() {
                lease.lease().host.clone()
            } else {
                settings.queue.consumer.clone()
            };
            let queue = TaskQueue::connect(
                settings.queue.redis_url(&settings.redis.url),
                &settings.redis.key_prefix,
                &settings.queue.stream,
                &settings.queue.group,
                &consumer,
            )?;
            // An unreachable Redis does not stop the start: the API refuses submissions (503) and the
            // consumer retries until it answers.
            match queue.ensure_group().await {
                Ok(()) => metrics.queue_up.set(1),
                Err(error) => {
                    metrics.queue_up.set(0);
                    tracing::warn!(%error, "the task queue is not reachable yet");
                }
            }
            Some(queue)
        } else {
            None
        };
        let mut core = Self::assemble(settings, storage, metrics, llm, memory, sandbox);
        core.lease = Some(lease);
        // Before any task is taken over: a resumed task pauses at the breakpoints set before the restart.
        core.breakpoints.load().await?;
        match queue {
            // The queue hands a dead worker's tasks to a live one (`consumer.rs`); the lease-based
            // take-over would run a task that waits in the queue.
            Some(queue) => {
                if core.settings.server.role.runs_tasks() {
                    core.consumer = Some(core.consumer_for(queue.clone()).start());
                }
                core.queue = Some(queue);
            }
            None => {
                core.take_over_orphans().await?;
                if let Some(take_over) = core.take_over() {
                    let watch = take_over.watch();
                    if let Some(keeper) = core.lease.as_mut() {
                        keeper.keep_watch(watch);
                    }
                }
            }
        }
        Ok(core)
    }

    /// The consumer of `queue` for this core: its tasks run in `director.max_concurrent_tasks` places.
    fn consumer_for(&self, queue: TaskQueue) -> consumer::Consumer {
        consumer::Consumer::new(
            queue,
            self.settings.queue.clone(),
            self.settings.durability.clone(),
            self.lease_id().unwrap_or_default().to_owned(),
            self.storage.clone(),
            self.writer.clone(),
            self.metrics.clone(),
            self.director.clone(),
            self.ends.clone(),
            self.breakpoints.clone(),
            self.settings.director.max_concurrent_tasks,
        )
    }

    /// This process's lease id, the owner of the tasks it runs (`None` for an assembled core).
    pub fn lease_id(&self) -> Option<&str> {
        self.lease.as_ref().map(|keeper| keeper.lease().id.as_str())
    }

    /// A clean stop: releases the lease, so that the tasks still unfinished here can be taken over at once
    /// by the next process to start (they are resumed from their records, nothing is lost).
    pub async fn stop(&self) {
        if let Some(keeper) = &self.lease {
            keeper.release().await;
        }
    }

    /// Assembles a core around an already started model (benchmarks and tests that share one).
    pub fn assemble(
        settings: Settings,
        storage: Storage,
        metrics: Metrics,
        llm: Models,
        memory: MemoryParts,
        sandbox: Sandbox,
    ) -> Core {
        let hub = Hub::new();
        // A task failed by the storage writer (a write of it could not be stored) must stop: the writer
        // says so with the task's terminal event, and the Director, started below, cancels its flow (whose
        // own end is then dropped as a late write).
        let director_cell: Arc<std::sync::OnceLock<Addr<Director>>> = Arc::default();
        let ends = consumer::Ends::default();
        // Several processes on one database (the Redis queue): each announces the events it commits and
        // follows the others', so a WebSocket on any node streams a task running on any worker.
        let node = uuid::Uuid::now_v7().to_string();
        let remote = settings.queue.is_redis() && storage.can_notify();
        let announcer = remote.then(|| Announcer::start(storage.clone(), node.clone()));
        let publish = {
            let hub = hub.clone();
            let director_cell = Arc::clone(&director_cell);
            let ends = ends.clone();
            move |event: Arc<crate::domain::Event>| {
                if let Some(announcer) = &announcer {
                    announcer.committed(&event);
                }
                if event.kind.is_terminal() {
                    // Its end is committed: a queue consumer may acknowledge its entry now.
                    ends.ended(event.task_id);
                }
                if failed_by_storage(&event) {
                    if let Some(director) = director_cell.get() {
                        // do_send: the task has ended already; a flow that finished meanwhile answers
                        // NotRunning, which is fine.
                        director.do_send(Envelope::new(event.task_id, CancelTask));
                    }
                }
                hub.publish(event);
            }
        };
        let writer = Writer::spawn_with(
            storage.clone(),
            publish,
            metrics.clone(),
            settings.database.writer_queue,
        );
        let mut events = EventLog::new(writer.clone(), hub.clone(), storage.clone());
        if remote {
            events = events.polling(REMOTE_POLL);
        }
        let memory = Memory::new(
            settings.memory.clone(),
            memory,
            storage.clone(),
            writer.clone(),
            metrics.clone(),
        );
        let debugger = Debugger::new(writer.clone(), metrics.clone());
        let tools = Tools::new(
            sandbox,
            memory.clone(),
            Workspaces::new(settings.sandbox.workspaces.clone()),
            events.clone(),
            metrics.clone(),
            debugger,
        );
        known_series::export(&metrics, &settings, &llm, &tools);
        let agent = AgentDeps {
            events: events.clone(),
            writer: writer.clone(),
            metrics: metrics.clone(),
            limits: settings.llm.limits,
            chaos: Arc::new(Chaos::panic_once(&settings.chaos_agents())),
            memory: memory.clone(),
            tools: tools.clone(),
            working: Working::default(),
        };
        let confirmations = Confirmations::default();
        let director = Director::start(DirectorDeps {
            agent,
            storage: storage.clone(),
            settings: settings.director.clone(),
            policy: RestartPolicy::from(&settings.supervision),
            pools: settings.agents.clone(),
            llm: llm.clone(),
            model_policy: model_policy(&settings, &confirmations),
            replays: ReplayCache::default(),
            calibrations: CalibrationCache::default(),
        });
        // Set once, before any task is submitted.
        let _ = director_cell.set(director.clone());
        let history = History::new(
            metrics.registry().clone(),
            std::time::Duration::from_secs(settings.dashboard.sample_seconds),
            settings.dashboard.history_samples,
        );
        let sampler = history.start();
        let mut breakpoints = Breakpoints::new(
            storage.clone(),
            writer.clone(),
            metrics.clone(),
            tools.specs().iter().map(|spec| spec.name).collect(),
        );
        if remote {
            breakpoints = breakpoints.shared_between_processes();
        }
        let asks = control::Asks::default();
        let following = remote.then(|| {
            remote::follow(
                storage.clone(),
                hub.clone(),
                node,
                control::handler(control::Holder {
                    director: director.clone(),
                    breakpoints: breakpoints.clone(),
                    debugger: tools.debugger().clone(),
                    confirmations: confirmations.clone(),
                    storage: storage.clone(),
                    asks: asks.clone(),
                }),
            )
        });
        tools.debugger().watch(Arc::new(breakpoints.clone()));
        let retention = retention::Retention::new(
            settings.retention.clone(),
            storage.clone(),
            writer.clone(),
            metrics.clone(),
            breakpoints.clone(),
        );
        let sweeper = retention.clone().start();
        let admitted = settings.director.max_concurrent_tasks + settings.director.max_queued_tasks;
        Core {
            settings,
            storage,
            events,
            writer,
            metrics,
            llm,
            director,
            memory,
            tools,
            confirmations,
            breakpoints,
            admission: Arc::new(tokio::sync::Semaphore::new(admitted)),
            history,
            _sampler: sampler,
            retention,
            _sweeper: sweeper,
            lease: None,
            queue: None,
            ends,
            consumer: None,
            _following: following,
            asks,
        }
    }

    /// Validates and stores a task (status `queued`, event `task.queued`, committed before this returns),
    /// then hands it to the Director. The task joins the current trace.
    pub async fn submit(&self, prompt: &str, options: TaskOptions) -> Result<TaskId, SubmitError> {
        self.submit_pausing(prompt, options, &[]).await
    }

    /// Checks a submission as [`Core::submit`] does before it stores anything: the prompt (trimmed: not
    /// empty, not too long) and the options (bounds, a replay's source, a rerun's rules). Returns the
    /// trimmed prompt. An experiment checks each of its runs with it before it submits any.
    pub async fn check_submission(
        &self,
        prompt: &str,
        options: &TaskOptions,
    ) -> Result<String, SubmitError> {
        let prompt = prompt.trim();
        if prompt.is_empty() {
            return Err(SubmitError::EmptyPrompt);
        }
        let chars = prompt.chars().count();
        let max = self.settings.server.max_prompt_chars;
        if chars > max {
            return Err(SubmitError::PromptTooLarge { chars, max });
        }
        // The configured `director.max_steps` is the plan grammar's bound: a task asking for more is told so,
        // not planned with fewer steps than it asked for.
        if let Some(max_steps) = options.max_steps {
            let most = self.settings.director.max_steps;
            if !(1..=most).contains(&max_steps) {
                return Err(SubmitError::InvalidOption(format!(
                    "options.max_steps must be within 1..={most} (director.max_steps), got {max_steps}"
                )));
            }
        }
        if let Some(consensus) = options.consensus {
            let most = crate::domain::consensus::MAX_VOTERS;
            if !(1..=most).contains(&consensus.voters) {
                return Err(SubmitError::InvalidOption(format!(
                    "options.consensus.voters must be within 1..={most}, got {}",
                    consensus.voters
                )));
            }
        }
        if let Some(model) = &options.model {
            let names = self.llm.names();
            if !names.contains(model) {
                return Err(SubmitError::InvalidOption(format!(
                    "options.model '{}' is not a configured model; [llm.models.<name>] names: {}",
                    crate::domain::shorten(model, 64),
                    if names.is_empty() {
                        "none".to_owned()
                    } else {
                        names.join(", ")
                    }
                )));
            }
        }
        if let Some(problem) = options
            .director
            .and_then(|director| director.problems("options.director").into_iter().next())
        {
            return Err(SubmitError::InvalidOption(problem));
        }
        if let Some(budget) = options.budget {
            if budget.max_tokens == Some(0) {
                return Err(SubmitError::InvalidOption(
                    "options.budget.max_tokens must be positive (leave it out for the configured limit)"
                        .into(),
                ));
            }
            if let Some(cost) = budget.max_cost_usd {
                if !(cost.is_finite() && cost > 0.0) {
                    return Err(SubmitError::InvalidOption(format!(
                        "options.budget.max_cost_usd must be a positive number of US dollars, got {cost}"
                    )));
                }
            }
        }
        if let Some(source) = options.replay_of {
            if self.storage.task(source).await?.is_none() {
                return Err(SubmitError::ReplaySourceNotFound(source));
            }
        }
        self.check_rerun(prompt, options).await?;
        Ok(prompt.to_owned())
    }

    /// [`Core::submit`] with a breakpoint on every point of each kind in `break_on` attached to the new
    /// task before it starts (`troupe run --break decision`), so that it cannot pass a point before they are
    /// set. Should one not be stored, the task ends `cancelled` before it starts, saying why.
    pub async fn submit_pausing(
        &self,
        prompt: &str,
        options: TaskOptions,
        break_on: &[BreakOn],
    ) -> Result<TaskId, SubmitError> {
        let prompt = self.check_submission(prompt, &options).await?;
        let prompt = prompt.as_str();
        // A place before anything is stored: a refused submission leaves no row. On the Redis queue the
        // place is in the queue (bounded by queue.max_waiting); a worker takes one of its own to run it.
        let admission = match &self.queue {
            Some(queue) => {
                let depth = queue.depth().await.map_err(|error| {
                    self.metrics.queue_up.set(0);
                    SubmitError::QueueUnavailable(error)
                })?;
                if depth.waiting >= self.settings.queue.max_waiting {
                    return Err(SubmitError::QueueFull {
                        waiting: depth.waiting,
                    });
                }
                None
            }
            None => Some(
                Arc::clone(&self.admission)
                    .try_acquire_owned()
                    .map_err(|_| SubmitError::Busy {
                        admitted: self.settings.director.max_concurrent_tasks
                            + self.settings.director.max_queued_tasks,
                    })?,
            ),
        };
        let id = TaskId::new();
        let (trace_id, _) = propagation::ids(&propagation::current());
        let options_json = serde_json::to_value(&options).unwrap_or_else(|_| json!({}));

        let queued = PendingEvent::now(
            id,
            EventKind::TaskQueued,
            None,
            json!({ "prompt": prompt, "options": options_json }),
        );
        let task = NewTask {
            id,
            prompt: prompt.to_owned(),
            options: options_json,
            trace_id,
            replay_of: options.replay_of,
            created_at: queued.at,
            // A queued task is nobody's until a worker claims it.
            owner: match self.queue {
                Some(_) => None,
                None => self.lease_id().map(str::to_owned),
            },
        };
        match self.queue {
            Some(_) => self.writer.create_handed_off(task, queued).await?,
            None => self.writer.create_task(task, queued).await?,
        }
        for &on in break_on {
            let spec = BreakpointSpec {
                task_id: Some(id),
                ..BreakpointSpec::on(on)
            };
            if let Err(error) = self.breakpoints.add(spec).await {
                let reason = format!("its breakpoints could not be set: {error}");
                durability::end_unstarted(
                    &self.writer,
                    &self.metrics,
                    id,
                    TaskStatus::Cancelled,
                    &reason,
                )
                .await?;
                return Err(SubmitError::Breakpoint(error));
            }
        }
        if let Some(fork) = &options.fork_of {
            let overridden = fork
                .decision_override
                .as_ref()
                .map_or("none", |decision| decision.decision.as_str());
            self.metrics.forks.with_label_values(&[overridden]).inc();
        }
        if let Some(queue) = &self.queue {
            self.enqueue(queue, id).await?;
            return Ok(id);
        }
        let depth = self
            .metrics
            .mailbox_depth
            .with_label_values(&[AgentKind::Director.as_str()]);
        // do_send: the task is stored; should the Director be gone (shutdown), the next start takes it over
        // once this process's lease is released or expired.
        self.director.do_send(
            Envelope::new(
                id,
                StartTask {
                    prompt: prompt.to_owned(),
                    options,
                    admission,
                    resume: None,
                },
            )
            .counted(depth),
        );
        Ok(id)
    }

    /// Puts stored task `id` on the queue under a `send` span, its context in the entry (the worker's
    /// spans are its children). Should Redis not take it, the task fails with the reason (one commit).
    async fn enqueue(&self, queue: &TaskQueue, id: TaskId) -> Result<(), SubmitError> {
        let span = tracing::info_span!(
            "send",
            otel.name = %format!("send {}", queue.stream()),
            otel.kind = "producer",
            messaging.system = "redis",
            messaging.operation.type = "send",
            messaging.destination.name = %queue.stream(),
            task_id = %id,
        );
        let carrier = span.in_scope(|| propagation::to_w3c(&propagation::current()));
        let added = queue.enqueue(id, &carrier).instrument(span).await;
        match added {
            Ok(_) => {
                self.metrics.queue_up.set(1);
                Ok(())
            }
            Err(error) => {
                self.metrics.queue_up.set(0);
                let reason = format!("the task queue did not take the task: {error}");
                durability::end_unstarted(
                    &self.writer,
                    &self.metrics,
                    id,
                    TaskStatus::Failed,
                    &reason,
                )
                .await?;
                Err(SubmitError::QueueUnavailable(error))
            }
        }
    }

    /// Removes a finished task with its events, steps, decisions, model calls and breakpoints, in one
    /// commit; its memories stay, with their provenance. Counted in
    /// `troupe_tasks_deleted_total{reason="request"}`.
    pub async fn delete(&self, id: TaskId) -> Result<(), DeleteError> {
        let task = self
            .storage
            .task(id)
            .await?
            .ok_or(DeleteError::NotFound(id))?;
        if !task.status.is_terminal() {
            return Err(DeleteError::Unfinished {
                id,
                status: task.status,
            });
        }
        // A finished task stays finished, so the writer's own check (finished rows only) agrees; a second
        // delete racing this one finds nothing.
        if !self.writer.delete_task(id).await? {
            return Err(DeleteError::NotFound(id));
        }
        self.breakpoints.forget_task(id).await;
        self.metrics
            .tasks_deleted
            .with_label_values(&["request"])
            .inc();
        Ok(())
    }

    /// Whether task `id` exists and has not ended (what a cancel needs), as the error a cancel answers.
    async fn unfinished(&self, id: TaskId) -> Result<(), CancelError> {
        let task = self
            .storage
            .task(id)
            .await?
            .ok_or(CancelError::NotFound(id))?;
        if task.status.is_terminal() {
            return Err(CancelError::Finished {
                id,
                status: task.status,
            });
        }
        Ok(())
    }

    /// Cancels a queued or running task.
    pub async fn cancel(&self, id: TaskId) -> Result<(), CancelError> {
        self.unfinished(id).await?;
        match self.director.send(Envelope::new(id, CancelTask)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_not_running)) if self.queue.is_some() => self.cancel_elsewhere(id).await,
            Ok(Err(_not_running)) => {
                // It ended between the read and the message.
                let status = self
                    .storage
                    .task(id)
                    .await?
                    .map_or(TaskStatus::Failed, |task| task.status);
                Err(CancelError::Finished { id, status })
            }
            Err(_) => Err(CancelError::DirectorGone),
        }
    }

    /// Which other live process holds a task owned by `owner` (the Redis queue only): `worker on host H
    /// (pid P, lease L)`; `None` when it is this process's, nobody's, or its lease is gone.
    pub(crate) async fn held_elsewhere(&self, owner: Option<&str>) -> Option<String> {
        let owner = owner?;
        if self.queue.is_none() || Some(owner) == self.lease_id() {
            return None;
        }
        let lease = self.storage.lease(owner).await.ok()??;
        Some(format!(
            "another process (host {}, pid {}, lease {})",
            lease.host, lease.pid, lease.id
        ))
    }

    /// Cancels a task this process does not run (the Redis queue): one still waiting in the queue is
    /// claimed here and cancelled (the worker that reads its entry finds it ended); one a worker holds is
    /// cancelled there, by a control message.
    async fn cancel_elsewhere(&self, id: TaskId) -> Result<(), CancelError> {
        let me = self.lease_id().unwrap_or_default();
        if self.storage.claim_task(id, None, me).await? {
            durability::end_unstarted(
                &self.writer,
                &self.metrics,
                id,
                TaskStatus::Cancelled,
                "cancelled while it waited in the queue",
            )
            .await?;
            return Ok(());
        }
        self.unfinished(id).await?;
        control::Control::Cancel(id).send(&self.storage).await?;
        Ok(())
    }

    /// Answers a task's wait for a confirmation (a cloud fallback in `confirm` mode): `allow` lets its call
    /// go to the fallback, otherwise the task fails with that reason.
    pub async fn confirm(&self, id: TaskId, allow: bool) -> Result<(), ConfirmError> {
        match self.confirmations.answer(id, allow) {
            Ok(()) => Ok(()),
            Err(_not_waiting) => {
                let task = self
                    .storage
                    .task(id)
                    .await?
                    .ok_or(ConfirmError::NotFound(id))?;
                if task.status == TaskStatus::Paused {
                    if let Some(held) = self.held_elsewhere(task.owner.as_deref()).await {
                        // The process holding the wait takes the answer.
                        return match self.asks.ask(&self.storage, id, control::Ask::Confirm(allow)).await? {
                            Some(control::Answer::Done) => Ok(()),
                            _ => Err(ConfirmError::HeldElsewhere(format!(
                                "task {id} is paused on {held}, which did not take the confirmation within {:?}",
                                control::ASK_TIMEOUT
                            ))),
                        };
                    }
                }
                Err(ConfirmError::NotWaiting {
                    id,
                    status: task.status,
                })
            }
        }
    }
}
