//! The service without HTTP: [`Core`] assembles storage, the writer and event log, the model, memory, the
//! sandbox and tools, the Director and its agents, and is the only way in for tasks ([`Core::submit`],
//! [`Core::cancel`]). The CLI's `run` uses it alone; the HTTP API (`api`) and the application (`app`) are
//! built on it.
//!
//! It must be built inside an actix `System`: the actors live on its arbiter.

use std::sync::Arc;

use actix::Addr;
use serde_json::json;

use crate::agents::{AgentDeps, Chaos, Working};
use crate::config::Settings;
use crate::debug::Debugger;
use crate::director::calibration::CalibrationCache;
use crate::director::{Director, DirectorDeps, ReplayCache};
use crate::domain::limits::MAX_PLAN_STEPS;
use crate::domain::{
    AgentKind, BreakOn, BreakpointSpec, EventKind, TaskId, TaskOptions, TaskStatus,
};
use crate::events::{EventLog, Hub};
use crate::llm::budget::Limits;
use crate::llm::confirm::Confirmations;
use crate::llm::models::{Models, Policy};
use crate::llm::LlmError;
use crate::memory::{Memory, MemoryParts, MemoryStartError};
use crate::messages::{CancelTask, Envelope, StartTask};
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
mod debugging;
mod durability;
mod fork;
mod known_series;
pub mod retention;
pub mod tool_replay;

pub use breakpoints::{Breakpoints, BreakpointsError};
pub use compare::CompareError;
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
}

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
        let llm = crate::llm::start_models(&settings.llm, &settings.budget, &metrics).await?;
        let sandbox = Sandbox::start(settings.sandbox.clone(), metrics.clone()).await;
        let mut core = Self::assemble(settings, storage, metrics, llm, memory, sandbox);
        core.lease = Some(lease);
        // Before any task is taken over: a resumed task pauses at the breakpoints set before the restart.
        core.breakpoints.load().await?;
        core.take_over_orphans().await?;
        if let Some(take_over) = core.take_over() {
            let watch = take_over.watch();
            if let Some(keeper) = core.lease.as_mut() {
                keeper.keep_watch(watch);
            }
        }
        Ok(core)
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
        let publish = {
            let hub = hub.clone();
            let director_cell = Arc::clone(&director_cell);
            move |event: Arc<crate::domain::Event>| {
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
        let events = EventLog::new(writer.clone(), hub, storage.clone());
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
        let breakpoints = Breakpoints::new(
            storage.clone(),
            writer.clone(),
            metrics.clone(),
            tools.specs().iter().map(|spec| spec.name).collect(),
        );
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
        }
    }

    /// Validates and stores a task (status `queued`, event `task.queued`, committed before this returns),
    /// then hands it to the Director. The task joins the current trace.
    pub async fn submit(&self, prompt: &str, options: TaskOptions) -> Result<TaskId, SubmitError> {
        self.submit_pausing(prompt, options, &[]).await
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
        let prompt = prompt.trim();
        if prompt.is_empty() {
            return Err(SubmitError::EmptyPrompt);
        }
        let chars = prompt.chars().count();
        let max = self.settings.server.max_prompt_chars;
        if chars > max {
            return Err(SubmitError::PromptTooLarge { chars, max });
        }
        if let Some(max_steps) = options.max_steps {
            if !(1..=MAX_PLAN_STEPS).contains(&max_steps) {
                return Err(SubmitError::InvalidOption(format!(
                    "options.max_steps must be within 1..={MAX_PLAN_STEPS}, got {max_steps}"
                )));
            }
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
        self.check_rerun(prompt, &options).await?;
        // A place among the admitted tasks before anything is stored: a refused submission leaves no row.
        let admission = Arc::clone(&self.admission)
            .try_acquire_owned()
            .map_err(|_| SubmitError::Busy {
                admitted: self.settings.director.max_concurrent_tasks
                    + self.settings.director.max_queued_tasks,
            })?;
        let id = TaskId::new();
        let (trace_id, _) = propagation::ids(&propagation::current());
        let options_json = serde_json::to_value(&options).unwrap_or_else(|_| json!({}));

        let queued = PendingEvent::now(
            id,
            EventKind::TaskQueued,
            None,
            json!({ "prompt": prompt, "options": options_json }),
        );
        self.writer
            .create_task(
                NewTask {
                    id,
                    prompt: prompt.to_owned(),
                    options: options_json,
                    trace_id,
                    replay_of: options.replay_of,
                    created_at: queued.at,
                    owner: self.lease_id().map(str::to_owned),
                },
                queued,
            )
            .await?;
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
                    admission: Some(admission),
                    resume: None,
                },
            )
            .counted(depth),
        );
        Ok(id)
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

    /// Cancels a queued or running task.
    pub async fn cancel(&self, id: TaskId) -> Result<(), CancelError> {
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
        match self.director.send(Envelope::new(id, CancelTask)).await {
            Ok(Ok(())) => Ok(()),
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
                Err(ConfirmError::NotWaiting {
                    id,
                    status: task.status,
                })
            }
        }
    }
}
